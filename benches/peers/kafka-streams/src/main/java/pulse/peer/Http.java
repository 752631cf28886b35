package pulse.peer;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executors;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;

/**
 * A tiny read API over interactive queries of this instance's stores (all its
 * tasks): {@code GET /national}, {@code GET /org/ID} (registry rollup at read
 * time, as Pulse does), {@code GET /state}.
 */
final class Http {
    static final String NATIONAL = "national";
    static final String UNASSIGNED = "unassigned";
    private final KafkaStreams streams;
    private final long meetingMs;
    private HttpServer server;

    Http(KafkaStreams streams, long meetingMinutes) {
        this.streams = streams;
        this.meetingMs = meetingMinutes * 60_000L;
    }

    void start(int port) throws IOException {
        server = HttpServer.create(new InetSocketAddress("0.0.0.0", port), 16);
        server.setExecutor(Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "pulse-peer-http");
            t.setDaemon(true);
            return t;
        }));
        server.createContext("/", this::handle);
        server.start();
    }

    void stop() {
        if (server != null) server.stop(0);
    }

    private void handle(HttpExchange x) throws IOException {
        String path = x.getRequestURI().getPath();
        int status = 200;
        String body;
        try {
            if (!"GET".equals(x.getRequestMethod())) {
                status = 405;
                body = "{\"error\":\"GET only\"}";
            } else if (path.equals("/state")) {
                body = "{\"state\":\"" + streams.state() + "\"}";
            } else if (path.equals("/national")) {
                body = node(NATIONAL);
            } else if (path.startsWith("/org/") && path.length() > 5) {
                body = node(java.net.URLDecoder.decode(path.substring(5), StandardCharsets.UTF_8));
            } else {
                status = 404;
                body = "{\"error\":\"unknown path; try /national, /org/ID, /state\"}";
            }
        } catch (InvalidStateStoreException e) {
            status = 503;
            body = "{\"error\":\"stores not queryable now (state " + streams.state() + ")\"}";
        } catch (RuntimeException e) {
            status = 500;
            body = "{\"error\":" + quote(String.valueOf(e)) + "}";
        }
        byte[] out = body.getBytes(StandardCharsets.UTF_8);
        x.getResponseHeaders().set("Content-Type", "application/json");
        x.sendResponseHeaders(status, out.length);
        try (OutputStream os = x.getResponseBody()) {
            os.write(out);
        }
    }

    private static final class Org {
        String parent;
        long employees;
    }

    /** The registry as it is now, from the global store. */
    private Map<String, Org> registry() {
        ReadOnlyKeyValueStore<Bytes, byte[]> s = streams.store(
                StoreQueryParameters.fromNameAndType(RegistryUpdater.STORE, QueryableStoreTypes.keyValueStore()));
        Map<String, Org> orgs = new HashMap<>();
        Json j = new Json();
        Json.Slice k = new Json.Slice(), v = new Json.Slice();
        try (KeyValueIterator<Bytes, byte[]> it = s.all()) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                Org o = new Org();
                try {
                    j.reset(kv.value);
                    j.expect('{');
                    while (!j.at('}')) {
                        j.string(k);
                        j.expect(':');
                        int t = j.value(v);
                        if (k.equalsAscii("parent") && t == Json.T_STRING) o.parent = v.toString();
                        if (k.equalsAscii("employees") && (t == Json.T_INT || t == Json.T_FLOAT)) o.employees = (long) j.doubleValue;
                        if (j.at(',')) j.p++;
                    }
                } catch (Json.Malformed e) {
                    continue; // not a valid record: as if absent
                }
                orgs.put(new String(kv.key.get(), StandardCharsets.UTF_8), o);
            }
        }
        return orgs;
    }

    /** The nodes a leaf org key counts under: itself and its ancestors, or unassigned. */
    private static List<String> chain(String leaf, Map<String, Org> orgs) {
        List<String> out = new ArrayList<>();
        out.add(NATIONAL);
        Set<String> seen = new HashSet<>();
        String at = leaf;
        while (at != null) {
            Org o = orgs.get(at);
            if (o == null || !seen.add(at)) {
                out.add(UNASSIGNED); // unknown org, unknown parent, or a cycle
                return out;
            }
            out.add(at);
            at = o.parent;
        }
        return out;
    }

    /** Every KPI of one node, summed over the local tasks' partial totals. */
    String node(String id) {
        ReadOnlyKeyValueStore<Bytes, byte[]> s = streams.store(
                StoreQueryParameters.fromNameAndType(KpiProcessor.ORG_TOTALS, QueryableStoreTypes.keyValueStore()));
        boolean national = id.equals(NATIONAL);
        Map<String, Org> orgs = national ? Map.of() : registry();
        Map<String, Boolean> under = new HashMap<>();
        Totals sum = new Totals(), t = new Totals();
        Codec.Reader r = new Codec.Reader();
        long events = 0, duplicates = 0, invalid = 0;
        try (KeyValueIterator<Bytes, byte[]> it = s.all()) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                byte[] key = kv.key.get();
                if (key.length == 0) {
                    r.reset(kv.value);
                    events += r.uvar();
                    duplicates += r.uvar();
                    invalid += r.uvar();
                    continue;
                }
                if (!national) {
                    String leaf = new String(key, StandardCharsets.UTF_8);
                    if (!under.computeIfAbsent(leaf, l -> chain(l, orgs).contains(id))) continue;
                }
                t.decode(kv.value, r);
                sum.add(t, 1);
            }
        }
        long employees = 0;
        for (Map.Entry<String, Org> e : (national ? registry() : orgs).entrySet()) {
            if (national || chain(e.getKey(), orgs).contains(id)) employees += e.getValue().employees;
        }
        StringBuilder b = new StringBuilder(512);
        b.append("{\"node\":").append(quote(id));
        b.append(",\"registered_users\":").append(sum.registered);
        b.append(",\"employees\":").append(employees);
        b.append(",\"learners\":").append(sum.learners);
        b.append(",\"enrolments\":").append(sum.enrolments);
        b.append(",\"completions\":").append(sum.completions);
        b.append(",\"in_progress\":").append(sum.enrolments - sum.completions);
        b.append(",\"learning_minutes\":").append(minutes(sum.minutesMs));
        b.append(",\"ratings\":").append(sum.ratings);
        b.append(",\"average_rating\":").append(sum.ratings == 0 ? "null" : num(sum.starsMilli / 1000.0 / sum.ratings));
        if (national) {
            b.append(",\"events\":").append(events);
            b.append(",\"duplicates\":").append(duplicates);
            b.append(",\"invalid\":").append(invalid);
        }
        b.append(",\"fy\":{");
        for (int k = 0; k < sum.nFy; k++) {
            int at = k * Totals.FY_FIELDS;
            if (k > 0) b.append(',');
            b.append(quote(Time.fyName(sum.fys[k]))).append(":{");
            b.append("\"enrolments\":").append(sum.fyv[at + Totals.FY_ENROL]);
            b.append(",\"completions\":").append(sum.fyv[at + Totals.FY_COMPL]);
            b.append(",\"learning_minutes\":").append(minutes(sum.fyv[at + Totals.FY_MS]));
            b.append(",\"active_users\":").append(sum.fyv[at + Totals.FY_ACTIVE]);
            b.append(",\"users_meeting_hours\":").append(sum.fyv[at + Totals.FY_MEETING]);
            b.append('}');
        }
        b.append("},\"meeting_minutes\":").append(meetingMs / 60_000L).append('}');
        return b.toString();
    }

    private static String minutes(long ms) {
        return num(ms / 60_000.0);
    }

    private static String num(double d) {
        if (d == Math.rint(d) && Math.abs(d) < 1e15) return String.format(Locale.ROOT, "%.1f", d);
        return Double.toString(d);
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }
}
