package pulse.peer;

import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The per-partition work of Pulse's engine for one {@code pulse-v1} event:
 * parse, deduplicate by id, apply to the user's state, and move the user's
 * share of the org (and course) totals. One instance per task; every bit of
 * state lives in the task's changelogged stores.
 */
final class KpiProcessor implements Processor<byte[], byte[], Void, Void> {
    static final String USERS = "users";
    static final String DEDUP = "dedup";
    static final String ORG_TOTALS = "org-totals";
    static final String COURSE_TOTALS = "course-totals";
    /** The org-totals key of this task's counters (no org id is empty). */
    static final Bytes META = Bytes.wrap(new byte[0]);
    private static final byte[] SEEN = {1};
    private static final Logger log = LoggerFactory.getLogger(KpiProcessor.class);

    private final long meetingMs;
    private KeyValueStore<Bytes, byte[]> users, orgTotals, courseTotals;
    private WindowStore<Bytes, byte[]> dedup;

    private final Event ev = new Event();
    private final UserState user = new UserState();
    private final Totals before = new Totals(), after = new Totals(), delta = new Totals(), agg = new Totals();
    private final long[] courseBefore = new long[UserState.C_FIELDS], courseAfter = new long[UserState.C_FIELDS],
            courseAgg = new long[UserState.C_FIELDS];
    private final Codec.Writer w = new Codec.Writer();
    private final Codec.Reader r = new Codec.Reader();
    /** This task's counters, mirrored from the META record (re-read by init after any restore). */
    private long events, duplicates, invalid;

    KpiProcessor(long meetingMinutes) {
        this.meetingMs = meetingMinutes * 60_000L;
    }

    @Override
    public void init(ProcessorContext<Void, Void> context) {
        users = context.getStateStore(USERS);
        dedup = context.getStateStore(DEDUP);
        orgTotals = context.getStateStore(ORG_TOTALS);
        courseTotals = context.getStateStore(COURSE_TOTALS);
        byte[] m = orgTotals.get(META);
        events = duplicates = invalid = 0;
        if (m != null) {
            r.reset(m);
            events = r.uvar();
            duplicates = r.uvar();
            invalid = r.uvar();
        }
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Event e = ev;
        if (!e.parse(record.value())) {
            invalid++;
            if (invalid <= 10) log.warn("skipping an invalid event ({})", e.error);
            putMeta();
            return;
        }
        // Dedup: the id's window starts at its event hour (as Pulse's seen key);
        // the segmented store drops ids once the newest event time put is past
        // their hour by the retention (horizon + 1 h).
        Bytes idKey = Bytes.wrap(e.id.copy());
        long bucket = Math.floorDiv(e.ts, Time.HOUR_MS) * Time.HOUR_MS;
        if (dedup.fetch(idKey, bucket) != null) {
            duplicates++;
            putMeta();
            return;
        }
        Bytes userKey = Bytes.wrap(e.user.copy());
        byte[] stored = users.get(userKey);
        UserState u = user;
        byte[] oldOrg = null;
        if (stored == null) {
            u.clear();
        } else {
            u.decode(stored);
            u.totals(before, meetingMs);
            oldOrg = u.orgKey();
        }
        dedup.put(idKey, SEEN, bucket);

        int course = u.apply(e, courseBefore, courseAfter);
        u.totals(after, meetingMs);
        // The user's share moves out of the totals it counted in before the
        // event and into those it counts in after (another org if it moved).
        if (oldOrg != null && u.sameOrg(oldOrg)) {
            delta.copyFrom(after);
            delta.add(before, -1);
            if (!delta.isZero()) addToOrg(oldOrg, delta, 1);
        } else {
            if (oldOrg != null) addToOrg(oldOrg, before, -1);
            addToOrg(u.orgKey(), after, 1);
        }
        if (course >= 0) addToCourse(course);

        w.clear();
        u.encode(w);
        users.put(userKey, w.toBytes());
        events++;
        putMeta();
    }

    private void addToOrg(byte[] org, Totals t, int sign) {
        Bytes key = Bytes.wrap(org);
        agg.decode(orgTotals.get(key), r);
        agg.add(t, sign);
        if (agg.isZero()) {
            orgTotals.delete(key);
        } else {
            w.clear();
            agg.encode(w);
            orgTotals.put(key, w.toBytes());
        }
    }

    private void addToCourse(int c) {
        boolean changed = false;
        for (int i = 0; i < UserState.C_FIELDS; i++) changed |= courseBefore[i] != courseAfter[i];
        if (!changed) return;
        UserState u = user;
        Bytes key = Bytes.wrap(java.util.Arrays.copyOfRange(u.cA[c], u.cOff[c], u.cOff[c] + u.cLen[c]));
        Totals.decodeCourse(courseTotals.get(key), r, courseAgg);
        boolean zero = true;
        for (int i = 0; i < UserState.C_FIELDS; i++) {
            courseAgg[i] += courseAfter[i] - courseBefore[i];
            zero &= courseAgg[i] == 0;
        }
        if (zero) {
            courseTotals.delete(key);
        } else {
            w.clear();
            Totals.encodeCourse(courseAgg, w);
            courseTotals.put(key, w.toBytes());
        }
    }

    private void putMeta() {
        w.clear();
        w.uvar(events);
        w.uvar(duplicates);
        w.uvar(invalid);
        orgTotals.put(META, w.toBytes());
    }
}
