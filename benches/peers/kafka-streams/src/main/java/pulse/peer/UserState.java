package pulse.peer;

import java.util.Arrays;

/**
 * Everything kept about one user (Pulse's {@code UserState}), decoded from and
 * encoded to a compact binary value. One instance per processor is reused for
 * every event (struct of arrays, no per-course objects); its strings are
 * slices of the stored value or of the event being applied, both alive until
 * the state is encoded again.
 *
 * <pre>
 * value   = 0x01 flags[bit0: org] (org-ts:svar org-id:bytes org:bytes)?
 *           n:uvar course*n  nfy:uvar (fy:svar ms:svar)*nfy  nact:uvar fy:svar*nact
 * course  = id:bytes flags[1 enrolled, 2 completed, 4 percent, 8 rating]
 *           enrolled-at:svar? completed-at:svar? minutes-ms:svar percent:f64?
 *           (rating-ts:svar rating-id:bytes stars-milli:svar)?
 * bytes   = len:uvar utf8
 * </pre>
 */
final class UserState {
    static final long NONE = Long.MIN_VALUE;
    static final byte[] UNASSIGNED = "unassigned".getBytes(java.nio.charset.StandardCharsets.UTF_8);
    /** Course totals fields (Pulse's {@code CourseTotals}). */
    static final int C_ENROL = 0, C_COMPL = 1, C_MS = 2, C_RATINGS = 3, C_STARS = 4, C_FIELDS = 5;

    boolean hasOrg;
    long orgTs;
    byte[] orgIdA, orgA;
    int orgIdOff, orgIdLen, orgOff, orgLen;

    int n;
    byte[][] cA = new byte[8][];
    int[] cOff = new int[8], cLen = new int[8];
    long[] enrolledAt = new long[8], completedAt = new long[8], minutesMs = new long[8];
    double[] percent = new double[8];
    boolean[] rated = new boolean[8];
    long[] rTs = new long[8], rStars = new long[8];
    byte[][] rIdA = new byte[8][];
    int[] rIdOff = new int[8], rIdLen = new int[8];

    int nFyMin;
    int[] fyMinFy = new int[4];
    long[] fyMinMs = new long[4];
    int nAct;
    int[] act = new int[4];

    private final Codec.Reader r = new Codec.Reader();

    void clear() {
        hasOrg = false;
        n = nFyMin = nAct = 0;
    }

    void decode(byte[] v) {
        clear();
        Codec.Reader r = this.r.reset(v);
        if (r.u8() != 1) throw new IllegalStateException("unknown user state version");
        int flags = r.u8();
        if ((flags & 1) != 0) {
            hasOrg = true;
            orgTs = r.svar();
            orgIdA = v;
            orgIdLen = r.bytes();
            orgIdOff = r.p - orgIdLen;
            orgA = v;
            orgLen = r.bytes();
            orgOff = r.p - orgLen;
        }
        int courses = (int) r.uvar();
        for (int i = 0; i < courses; i++) {
            int len = r.bytes();
            int c = addCourse(v, r.p - len, len);
            int cf = r.u8();
            if ((cf & 1) != 0) enrolledAt[c] = r.svar();
            if ((cf & 2) != 0) completedAt[c] = r.svar();
            minutesMs[c] = r.svar();
            if ((cf & 4) != 0) percent[c] = r.f64();
            if ((cf & 8) != 0) {
                rated[c] = true;
                rTs[c] = r.svar();
                rIdA[c] = v;
                rIdLen[c] = r.bytes();
                rIdOff[c] = r.p - rIdLen[c];
                rStars[c] = r.svar();
            }
        }
        int fy = (int) r.uvar();
        for (int i = 0; i < fy; i++) {
            int at = fyMinutes((int) r.svar());
            fyMinMs[at] = r.svar();
        }
        int a = (int) r.uvar();
        for (int i = 0; i < a; i++) activate((int) r.svar());
    }

    void encode(Codec.Writer w) {
        w.u8(1);
        w.u8(hasOrg ? 1 : 0);
        if (hasOrg) {
            w.svar(orgTs);
            w.bytes(orgIdA, orgIdOff, orgIdLen);
            w.bytes(orgA, orgOff, orgLen);
        }
        w.uvar(n);
        for (int c = 0; c < n; c++) {
            w.bytes(cA[c], cOff[c], cLen[c]);
            int cf = (enrolledAt[c] != NONE ? 1 : 0) | (completedAt[c] != NONE ? 2 : 0)
                    | (!Double.isNaN(percent[c]) ? 4 : 0) | (rated[c] ? 8 : 0);
            w.u8(cf);
            if (enrolledAt[c] != NONE) w.svar(enrolledAt[c]);
            if (completedAt[c] != NONE) w.svar(completedAt[c]);
            w.svar(minutesMs[c]);
            if (!Double.isNaN(percent[c])) w.f64(percent[c]);
            if (rated[c]) {
                w.svar(rTs[c]);
                w.bytes(rIdA[c], rIdOff[c], rIdLen[c]);
                w.svar(rStars[c]);
            }
        }
        w.uvar(nFyMin);
        for (int i = 0; i < nFyMin; i++) {
            w.svar(fyMinFy[i]);
            w.svar(fyMinMs[i]);
        }
        w.uvar(nAct);
        for (int i = 0; i < nAct; i++) w.svar(act[i]);
    }

    private int addCourse(byte[] a, int off, int len) {
        if (n == cA.length) {
            int m = n * 2;
            cA = Arrays.copyOf(cA, m);
            cOff = Arrays.copyOf(cOff, m);
            cLen = Arrays.copyOf(cLen, m);
            enrolledAt = Arrays.copyOf(enrolledAt, m);
            completedAt = Arrays.copyOf(completedAt, m);
            minutesMs = Arrays.copyOf(minutesMs, m);
            percent = Arrays.copyOf(percent, m);
            rated = Arrays.copyOf(rated, m);
            rTs = Arrays.copyOf(rTs, m);
            rStars = Arrays.copyOf(rStars, m);
            rIdA = Arrays.copyOf(rIdA, m);
            rIdOff = Arrays.copyOf(rIdOff, m);
            rIdLen = Arrays.copyOf(rIdLen, m);
        }
        int c = n++;
        cA[c] = a;
        cOff[c] = off;
        cLen[c] = len;
        enrolledAt[c] = NONE;
        completedAt[c] = NONE;
        minutesMs[c] = 0;
        percent[c] = Double.NaN;
        rated[c] = false;
        return c;
    }

    private int findCourse(Json.Slice s) {
        for (int c = 0; c < n; c++) {
            if (cLen[c] == s.len && Arrays.equals(cA[c], cOff[c], cOff[c] + cLen[c], s.a, s.off, s.off + s.len)) return c;
        }
        return -1;
    }

    private int fyMinutes(int fy) {
        int i = 0;
        while (i < nFyMin && fyMinFy[i] < fy) i++;
        if (i < nFyMin && fyMinFy[i] == fy) return i;
        if (nFyMin == fyMinFy.length) {
            fyMinFy = Arrays.copyOf(fyMinFy, nFyMin * 2);
            fyMinMs = Arrays.copyOf(fyMinMs, nFyMin * 2);
        }
        System.arraycopy(fyMinFy, i, fyMinFy, i + 1, nFyMin - i);
        System.arraycopy(fyMinMs, i, fyMinMs, i + 1, nFyMin - i);
        fyMinFy[i] = fy;
        fyMinMs[i] = 0;
        nFyMin++;
        return i;
    }

    private void activate(int fy) {
        int i = 0;
        while (i < nAct && act[i] < fy) i++;
        if (i < nAct && act[i] == fy) return;
        if (nAct == act.length) act = Arrays.copyOf(act, nAct * 2);
        System.arraycopy(act, i, act, i + 1, nAct - i);
        act[i] = fy;
        nAct++;
    }

    /** (ts, id) later than (thanTs, than id), ids in byte order. */
    private static boolean later(long ts, Json.Slice id, long thanTs, byte[] a, int off, int len) {
        if (ts != thanTs) return ts > thanTs;
        return Arrays.compareUnsigned(id.a, id.off, id.off + id.len, a, off, off + len) > 0;
    }

    /** The org key this user counts under: current org or {@code unassigned}. */
    byte[] orgKey() {
        return hasOrg ? Arrays.copyOfRange(orgA, orgOff, orgOff + orgLen) : UNASSIGNED.clone();
    }

    boolean sameOrg(byte[] key) {
        return hasOrg ? Arrays.equals(key, 0, key.length, orgA, orgOff, orgOff + orgLen) : Arrays.equals(key, UNASSIGNED);
    }

    /**
     * Applies one accepted (not duplicate) event, as Pulse's
     * {@code UserState::apply}. For an event on a course, returns the course's
     * index and fills its share of the course totals before and after;
     * otherwise -1.
     */
    int apply(Event e, long[] before, long[] after) {
        if (!hasOrg || later(e.ts, e.id, orgTs, orgIdA, orgIdOff, orgIdLen)) {
            hasOrg = true;
            orgTs = e.ts;
            orgIdA = e.id.a;
            orgIdOff = e.id.off;
            orgIdLen = e.id.len;
            orgA = e.org.a;
            orgOff = e.org.off;
            orgLen = e.org.len;
        }
        if (e.type == Event.REGISTRATION) return -1;
        int fy = Time.fyOf(e.ts);
        activate(fy);
        int c = findCourse(e.course);
        if (c < 0) c = addCourse(e.course.a, e.course.off, e.course.len);
        courseTotals(c, before);
        switch (e.type) {
            case Event.ENROLMENT:
                enrolledAt[c] = earliest(enrolledAt[c], e.ts);
                break;
            case Event.COMPLETION:
                enrolledAt[c] = earliest(enrolledAt[c], e.ts);
                completedAt[c] = earliest(completedAt[c], e.ts);
                break;
            case Event.PROGRESS:
                minutesMs[c] += e.minutesMs;
                fyMinMs[fyMinutes(fy)] += e.minutesMs;
                if (!Double.isNaN(e.percent)) percent[c] = Double.isNaN(percent[c]) ? e.percent : Math.max(percent[c], e.percent);
                break;
            case Event.RATING:
                if (!rated[c] || later(e.ts, e.id, rTs[c], rIdA[c], rIdOff[c], rIdLen[c])) {
                    rated[c] = true;
                    rTs[c] = e.ts;
                    rIdA[c] = e.id.a;
                    rIdOff[c] = e.id.off;
                    rIdLen[c] = e.id.len;
                    rStars[c] = e.starsMilli;
                }
                break;
            default:
                break;
        }
        courseTotals(c, after);
        return c;
    }

    private static long earliest(long cur, long ts) {
        return cur == NONE ? ts : Math.min(cur, ts);
    }

    private void courseTotals(int c, long[] t) {
        t[C_ENROL] = enrolledAt[c] != NONE ? 1 : 0;
        t[C_COMPL] = completedAt[c] != NONE ? 1 : 0;
        t[C_MS] = minutesMs[c];
        t[C_RATINGS] = rated[c] ? 1 : 0;
        t[C_STARS] = rated[c] ? rStars[c] : 0;
    }

    /** This user's share of the totals of the org it counts under. */
    void totals(Totals t, long meetingMs) {
        t.clear();
        t.registered = 1;
        for (int c = 0; c < n; c++) {
            if (enrolledAt[c] != NONE) {
                t.enrolments++;
                t.fyv[t.fy(Time.fyOf(enrolledAt[c])) + Totals.FY_ENROL]++;
            }
            if (completedAt[c] != NONE) {
                t.completions++;
                t.fyv[t.fy(Time.fyOf(completedAt[c])) + Totals.FY_COMPL]++;
            }
            t.minutesMs += minutesMs[c];
            if (rated[c]) {
                t.ratings++;
                t.starsMilli += rStars[c];
            }
        }
        t.learners = t.enrolments > 0 ? 1 : 0;
        for (int i = 0; i < nFyMin; i++) {
            int at = t.fy(fyMinFy[i]);
            t.fyv[at + Totals.FY_MS] += fyMinMs[i];
            t.fyv[at + Totals.FY_MEETING] = fyMinMs[i] >= meetingMs ? 1 : 0;
        }
        for (int i = 0; i < nAct; i++) t.fyv[t.fy(act[i]) + Totals.FY_ACTIVE] = 1;
    }
}
