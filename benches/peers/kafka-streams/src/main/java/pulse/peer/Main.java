package pulse.peer;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.BytesDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of Pulse: the same KPIs from the same {@code pulse-v1}
 * topic. See README.md.
 */
public final class Main {
    /** Pulse's default dedup horizon: 7 days of event time. */
    static final Duration HORIZON = Duration.ofDays(7);

    private static final String USAGE = String.join("\n",
            "usage: java -jar pulse-peer.jar --bootstrap HOST:PORT --input TOPIC --orgs TOPIC",
            "         --application-id ID --state-dir DIR --guarantee exactly_once_v2|at_least_once",
            "         [--threads N] [--commit-ms N] [--cache-mb N] [--http PORT] [--meeting-minutes N]",
            "         [--config KEY=VALUE]...",
            "  --threads          num.stream.threads (default 2: measured best on 2 cores shared with the broker)",
            "  --commit-ms        commit.interval.ms (default: Kafka Streams' own, 30000 at_least_once, 100 exactly_once_v2)",
            "  --cache-mb         statestore.cache.max.bytes in MiB (default 64)",
            "  --http             serve GET /national, /org/ID, /state on this port",
            "  --config           any other Streams/client config (repeatable)");

    public static void main(String[] args) throws Exception {
        Map<String, String> a = new HashMap<>();
        Properties extra = new Properties();
        for (int i = 0; i < args.length; i++) {
            String k = args[i];
            if (k.equals("-h") || k.equals("--help")) {
                System.out.println(USAGE);
                return;
            }
            if (!k.startsWith("--") || i + 1 >= args.length) die("bad argument `" + k + "`");
            String v = args[++i];
            if (k.equals("--config")) {
                int eq = v.indexOf('=');
                if (eq <= 0) die("--config wants KEY=VALUE");
                extra.put(v.substring(0, eq), v.substring(eq + 1));
            } else {
                a.put(k.substring(2), v);
            }
        }
        for (String req : new String[] {"bootstrap", "input", "orgs", "application-id", "state-dir", "guarantee"}) {
            if (!a.containsKey(req)) die("--" + req + " is required");
        }
        String guarantee = a.get("guarantee");
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            die("--guarantee must be exactly_once_v2 or at_least_once");
        }
        long meetingMinutes = Long.parseLong(a.getOrDefault("meeting-minutes", "240"));

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, a.get("application-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(a.getOrDefault("threads", "2")));
        if (a.containsKey("commit-ms")) p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(a.get("commit-ms")));
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.parseLong(a.getOrDefault("cache-mb", "64")) << 20);
        p.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedRocksDb.class);
        // A new application reads its input from the beginning.
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        p.putAll(extra);

        KafkaStreams streams = new KafkaStreams(topology(a.get("input"), a.get("orgs"), meetingMinutes), p);
        CountDownLatch done = new CountDownLatch(1);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("pulse-peer: stream thread failed: " + e);
            e.printStackTrace();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, was) -> {
            System.err.println("pulse-peer: " + was + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) done.countDown();
        });
        Http http = null;
        if (a.containsKey("http")) {
            http = new Http(streams, meetingMinutes);
            http.start(Integer.parseInt(a.get("http")));
        }
        final Http server = http;
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (server != null) server.stop();
            streams.close(Duration.ofSeconds(60));
            done.countDown();
        }, "pulse-peer-shutdown"));
        streams.start();
        done.await();
        if (streams.state() == KafkaStreams.State.ERROR) System.exit(1);
    }

    static Topology topology(String input, String orgsTopic, long meetingMinutes) {
        Topology t = new Topology();
        // The org registry: a global store read whole by every instance (no
        // changelog: the compacted topic is its own changelog).
        t.addGlobalStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(RegistryUpdater.STORE), Serdes.Bytes(), Serdes.ByteArray())
                        .withLoggingDisabled(),
                "orgs-source", new BytesDeserializer(), new ByteArrayDeserializer(), orgsTopic,
                "orgs-updater", RegistryUpdater::new);

        t.addSource("events", new ByteArrayDeserializer(), new ByteArrayDeserializer(), input);
        t.addProcessor("kpi", () -> new KpiProcessor(meetingMinutes), "events");
        // Per-user state: read and written once per event; the record cache
        // coalesces a user's consecutive events within a commit interval.
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(KpiProcessor.USERS),
                Serdes.Bytes(), Serdes.ByteArray()).withCachingEnabled(), "kpi");
        // Seen event ids: window start = the event's hour, retention = horizon + 1 h,
        // so an id lives at least until the newest event time put is a horizon past it.
        // Every id is written once and read (almost) never again: caching would not
        // coalesce anything, so it is off.
        Duration retention = HORIZON.plus(Duration.ofHours(1)).plusMillis(1);
        t.addStateStore(Stores.windowStoreBuilder(
                Stores.persistentWindowStore(KpiProcessor.DEDUP, retention, Duration.ofHours(1), false),
                Serdes.Bytes(), Serdes.ByteArray()).withCachingDisabled(), "kpi");
        // Per-task partial totals by org leaf and by course: small and hot, the cache
        // turns thousands of updates per commit into one changelog record per key.
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(KpiProcessor.ORG_TOTALS),
                Serdes.Bytes(), Serdes.ByteArray()).withCachingEnabled(), "kpi");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(KpiProcessor.COURSE_TOTALS),
                Serdes.Bytes(), Serdes.ByteArray()).withCachingEnabled(), "kpi");
        return t;
    }

    private static void die(String msg) {
        System.err.println("pulse-peer: " + msg + "\n" + USAGE);
        System.exit(2);
    }
}
