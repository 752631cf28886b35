package pulse.peer;

/** Event time: RFC 3339 parsing and IST financial years (contract section 6). */
final class Time {
    static final long HOUR_MS = 3_600_000L;
    static final long DAY_MS = 24 * HOUR_MS;
    static final long IST_OFFSET_MS = (5 * 3600 + 30 * 60) * 1000L;

    private Time() {}

    /** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
    static long daysFromCivil(long y, int m, int d) {
        y -= m <= 2 ? 1 : 0;
        long era = Math.floorDiv(y, 400);
        long yoe = y - era * 400;
        long doy = (153L * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
    }

    /** The financial year (named by its first calendar year) containing the instant. */
    static int fyOf(long ms) {
        long z = Math.floorDiv(ms + IST_OFFSET_MS, DAY_MS) + 719468;
        long era = Math.floorDiv(z, 146097);
        long doe = z - era * 146097;
        long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        long mp = (5 * doy + 2) / 153;
        int m = (int) (mp < 10 ? mp + 3 : mp - 9);
        long y = yoe + era * 400 + (m <= 2 ? 1 : 0);
        return (int) (m >= 4 ? y : y - 1);
    }

    static String fyName(int fy) {
        return String.format("%d-%02d", fy, Math.floorMod(fy + 1, 100));
    }

    private static int digits(byte[] b, int at, int n) {
        int v = 0;
        for (int i = 0; i < n; i++) {
            int c = b[at + i] - '0';
            if (c < 0 || c > 9) return -1;
            v = v * 10 + c;
        }
        return v;
    }

    /**
     * Parses RFC 3339 with an offset ({@code 2025-06-02T09:00:00.5+05:30},
     * {@code ...Z}) to epoch milliseconds; {@code Long.MIN_VALUE} if invalid.
     */
    static long parseRfc3339(byte[] b, int off, int len) {
        if (len < 20) return Long.MIN_VALUE;
        int end = off + len;
        int y = digits(b, off, 4), mo = digits(b, off + 5, 2), d = digits(b, off + 8, 2);
        int h = digits(b, off + 11, 2), mi = digits(b, off + 14, 2), s = digits(b, off + 17, 2);
        byte t = b[off + 10];
        if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 60
                || b[off + 4] != '-' || b[off + 7] != '-' || (t != 'T' && t != 't' && t != ' ')
                || b[off + 13] != ':' || b[off + 16] != ':') {
            return Long.MIN_VALUE;
        }
        if (d > daysInMonth(y, mo)) return Long.MIN_VALUE;
        int p = off + 19;
        long millis = 0;
        if (b[p] == '.') {
            p++;
            int f = p;
            long scale = 100;
            while (p < end && b[p] >= '0' && b[p] <= '9') {
                millis += (b[p] - '0') * scale;
                scale /= 10;
                p++;
            }
            if (p == f) return Long.MIN_VALUE;
        }
        if (p >= end) return Long.MIN_VALUE;
        long offsetMs;
        if ((b[p] == 'Z' || b[p] == 'z') && p + 1 == end) {
            offsetMs = 0;
        } else if ((b[p] == '+' || b[p] == '-') && p + 6 == end && b[p + 3] == ':') {
            int oh = digits(b, p + 1, 2), om = digits(b, p + 4, 2);
            if (oh < 0 || oh > 23 || om < 0 || om > 59) return Long.MIN_VALUE;
            offsetMs = (oh * 60L + om) * 60_000L * (b[p] == '-' ? -1 : 1);
        } else {
            return Long.MIN_VALUE;
        }
        if (s == 60) s = 59; // a leap second counts as the second before it
        long days = daysFromCivil(y, mo, d);
        return ((days * 24 + h) * 60 + mi) * 60_000L + s * 1000L + millis - offsetMs;
    }

    private static int daysInMonth(int y, int m) {
        switch (m) {
            case 2:
                return (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28;
            case 4: case 6: case 9: case 11:
                return 30;
            default:
                return 31;
        }
    }
}
