package pulse.peer;

import java.io.BufferedReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Helpers for the checks (check/run), so that they need nothing but this jar:
 *
 * <pre>
 * java -cp pulse-peer.jar pulse.peer.Tool BOOTSTRAP create TOPIC PARTITIONS [compact]
 * java -cp pulse-peer.jar pulse.peer.Tool BOOTSTRAP load TOPIC FILE      (lines KEY\tVALUE)
 * java -cp pulse-peer.jar pulse.peer.Tool BOOTSTRAP lag GROUP TOPIC     (prints end - committed)
 * java -cp pulse-peer.jar pulse.peer.Tool BOOTSTRAP delete-prefix PREFIX
 * java -cp pulse-peer.jar pulse.peer.Tool BOOTSTRAP delete TOPIC...
 * </pre>
 */
public final class Tool {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        switch (args[1]) {
            case "create": {
                try (Admin admin = Admin.create(ap)) {
                    NewTopic t = new NewTopic(args[2], Integer.parseInt(args[3]), (short) 1);
                    if (args.length > 4 && args[4].equals("compact")) t.configs(Map.of("cleanup.policy", "compact"));
                    else t.configs(Map.of("retention.ms", "-1"));
                    try {
                        admin.createTopics(List.of(t)).all().get();
                    } catch (ExecutionException e) {
                        if (!(e.getCause() instanceof TopicExistsException)) throw e;
                    }
                }
                break;
            }
            case "load": {
                Properties pp = new Properties();
                pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
                pp.put(ProducerConfig.LINGER_MS_CONFIG, 20);
                pp.put(ProducerConfig.BATCH_SIZE_CONFIG, 256 * 1024);
                pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
                long n = 0;
                try (KafkaProducer<byte[], byte[]> p = new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer());
                     BufferedReader in = Files.newBufferedReader(Paths.get(args[3]), StandardCharsets.UTF_8)) {
                    String line;
                    while ((line = in.readLine()) != null) {
                        int tab = line.indexOf('\t');
                        byte[] k = line.substring(0, tab).getBytes(StandardCharsets.UTF_8);
                        byte[] v = line.substring(tab + 1).getBytes(StandardCharsets.UTF_8);
                        p.send(new ProducerRecord<>(args[2], k, v), (md, e) -> {
                            if (e != null) {
                                System.err.println("load: " + e);
                                System.exit(1);
                            }
                        });
                        n++;
                    }
                    p.flush();
                }
                System.out.println(n);
                break;
            }
            case "lag": {
                try (Admin admin = Admin.create(ap)) {
                    String topic = args[3];
                    int parts = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
                    Map<TopicPartition, OffsetSpec> spec = new HashMap<>();
                    for (int i = 0; i < parts; i++) spec.put(new TopicPartition(topic, i), OffsetSpec.latest());
                    Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> ends = admin.listOffsets(spec).all().get();
                    Map<TopicPartition, OffsetAndMetadata> committed =
                            admin.listConsumerGroupOffsets(args[2]).partitionsToOffsetAndMetadata().get();
                    long lag = 0;
                    for (TopicPartition tp : spec.keySet()) {
                        OffsetAndMetadata c = committed.get(tp);
                        lag += ends.get(tp).offset() - (c == null ? 0 : c.offset());
                    }
                    System.out.println(lag);
                }
                break;
            }
            case "delete-prefix":
            case "delete": {
                try (Admin admin = Admin.create(ap)) {
                    Set<String> all = admin.listTopics().names().get();
                    List<String> drop = new ArrayList<>();
                    for (int i = 2; i < args.length; i++) {
                        String a = args[i];
                        if (args[1].equals("delete")) {
                            if (all.contains(a)) drop.add(a);
                        } else {
                            drop.addAll(all.stream().filter(t -> t.startsWith(a)).collect(Collectors.toList()));
                        }
                    }
                    if (!drop.isEmpty()) admin.deleteTopics(drop).all().get();
                    List<String> groups = new ArrayList<>();
                    if (args[1].equals("delete-prefix")) {
                        admin.listGroups().all().get().forEach(g -> {
                            if (g.groupId().startsWith(args[2])) groups.add(g.groupId());
                        });
                        if (!groups.isEmpty()) admin.deleteConsumerGroups(groups).all().get();
                    }
                    System.out.println("deleted topics " + drop + " groups " + groups);
                }
                break;
            }
            default:
                throw new IllegalArgumentException("unknown command " + args[1]);
        }
    }
}
