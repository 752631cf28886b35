package pulse.peer;

/**
 * Summable org-level totals (Pulse's {@code Totals}): the sum over the users
 * counted under one org key, per task. Per financial year: enrolments,
 * completions, learning ms, active users, users meeting the hours.
 */
final class Totals {
    static final int FY_FIELDS = 5;
    static final int FY_ENROL = 0, FY_COMPL = 1, FY_MS = 2, FY_ACTIVE = 3, FY_MEETING = 4;

    long registered, learners, enrolments, completions, minutesMs, ratings, starsMilli;
    /** Financial years, sorted; values in {@link #fyv} at {@code i * FY_FIELDS}. */
    int nFy;
    int[] fys = new int[4];
    long[] fyv = new long[4 * FY_FIELDS];

    void clear() {
        registered = learners = enrolments = completions = minutesMs = ratings = starsMilli = 0;
        nFy = 0;
    }

    /** The value index base of a year, inserted (zeroed) if missing. */
    int fy(int fy) {
        int i = 0;
        while (i < nFy && fys[i] < fy) i++;
        if (i < nFy && fys[i] == fy) return i * FY_FIELDS;
        if (nFy == fys.length) {
            fys = java.util.Arrays.copyOf(fys, nFy * 2);
            fyv = java.util.Arrays.copyOf(fyv, nFy * 2 * FY_FIELDS);
        }
        System.arraycopy(fys, i, fys, i + 1, nFy - i);
        System.arraycopy(fyv, i * FY_FIELDS, fyv, (i + 1) * FY_FIELDS, (nFy - i) * FY_FIELDS);
        fys[i] = fy;
        java.util.Arrays.fill(fyv, i * FY_FIELDS, (i + 1) * FY_FIELDS, 0);
        nFy++;
        return i * FY_FIELDS;
    }

    /** Adds ({@code sign} 1) or subtracts (-1) another total; years that reach zero are dropped. */
    void add(Totals o, int sign) {
        registered += sign * o.registered;
        learners += sign * o.learners;
        enrolments += sign * o.enrolments;
        completions += sign * o.completions;
        minutesMs += sign * o.minutesMs;
        ratings += sign * o.ratings;
        starsMilli += sign * o.starsMilli;
        for (int k = 0; k < o.nFy; k++) {
            int at = fy(o.fys[k]);
            for (int f = 0; f < FY_FIELDS; f++) fyv[at + f] += sign * o.fyv[k * FY_FIELDS + f];
        }
        dropZeroYears();
    }

    void copyFrom(Totals o) {
        clear();
        add(o, 1);
    }

    private void dropZeroYears() {
        int w = 0;
        for (int k = 0; k < nFy; k++) {
            boolean zero = true;
            for (int f = 0; f < FY_FIELDS; f++) zero &= fyv[k * FY_FIELDS + f] == 0;
            if (zero) continue;
            if (w != k) {
                fys[w] = fys[k];
                System.arraycopy(fyv, k * FY_FIELDS, fyv, w * FY_FIELDS, FY_FIELDS);
            }
            w++;
        }
        nFy = w;
    }

    boolean isZero() {
        return registered == 0 && learners == 0 && enrolments == 0 && completions == 0 && minutesMs == 0
                && ratings == 0 && starsMilli == 0 && nFy == 0;
    }

    void encode(Codec.Writer w) {
        w.svar(registered);
        w.svar(learners);
        w.svar(enrolments);
        w.svar(completions);
        w.svar(minutesMs);
        w.svar(ratings);
        w.svar(starsMilli);
        w.uvar(nFy);
        for (int k = 0; k < nFy; k++) {
            w.svar(fys[k]);
            for (int f = 0; f < FY_FIELDS; f++) w.svar(fyv[k * FY_FIELDS + f]);
        }
    }

    /** Replaces this with a value written by {@link #encode} (null: zero). */
    void decode(byte[] value, Codec.Reader r) {
        clear();
        if (value == null) return;
        r.reset(value);
        registered = r.svar();
        learners = r.svar();
        enrolments = r.svar();
        completions = r.svar();
        minutesMs = r.svar();
        ratings = r.svar();
        starsMilli = r.svar();
        int n = (int) r.uvar();
        for (int k = 0; k < n; k++) {
            int at = fy((int) r.svar());
            for (int f = 0; f < FY_FIELDS; f++) fyv[at + f] = r.svar();
        }
    }

    /** Course totals (Pulse's {@code CourseTotals}): 5 longs, encoded alike. */
    static void encodeCourse(long[] c, Codec.Writer w) {
        for (long v : c) w.svar(v);
    }

    static void decodeCourse(byte[] value, Codec.Reader r, long[] into) {
        if (value == null) {
            java.util.Arrays.fill(into, 0);
            return;
        }
        r.reset(value);
        for (int i = 0; i < into.length; i++) into[i] = r.svar();
    }
}
