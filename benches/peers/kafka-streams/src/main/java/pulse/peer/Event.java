package pulse.peer;

/**
 * One {@code pulse-v1} event (contract section 2), parsed in one pass into
 * this reusable holder: the strings are slices of the message value, nothing
 * is copied for the common case of strings without escapes.
 */
final class Event {
    static final int REGISTRATION = 0, ENROLMENT = 1, PROGRESS = 2, COMPLETION = 3, RATING = 4;
    static final int MAX_MESSAGE_BYTES = 64 * 1024;
    private static final int MAX_TEXT_CHARS = 128;

    final Json.Slice id = new Json.Slice();
    final Json.Slice user = new Json.Slice();
    final Json.Slice org = new Json.Slice();
    final Json.Slice course = new Json.Slice();
    private final Json.Slice typeName = new Json.Slice();
    private final Json.Slice tsText = new Json.Slice();
    private final Json.Slice key = new Json.Slice();
    private final Json.Slice ignored = new Json.Slice();
    private final Json json = new Json();

    int type;
    long ts;
    /** Learning time in ms, rounded as Pulse rounds it (progress only). */
    long minutesMs;
    /** Progress percentage, NaN when absent. */
    double percent;
    /** Thousandths of a star (rating only). */
    long starsMilli;

    /** Why the last {@link #parse} failed, for logs. */
    String error;

    private static final int F_V = 1, F_ID = 2, F_TYPE = 4, F_TS = 8, F_USER = 16, F_ORG = 32, F_COURSE = 64,
            F_MINUTES = 128, F_PERCENT = 256, F_STARS = 512;

    /** Parses and checks one message value; false (with {@link #error}) if it is not a valid event. */
    boolean parse(byte[] value) {
        if (value == null) return fail("no value");
        if (value.length > MAX_MESSAGE_BYTES) return fail("too_large");
        Json j = json;
        j.reset(value);
        int seen = 0;
        long v = 0;
        long tsInt = 0;
        int tsType = 0;
        double minutes = 0, pct = 0, stars = 0;
        try {
            j.expect('{');
            if (j.at('}')) {
                j.p++;
            } else {
                while (true) {
                    j.string(key);
                    j.expect(':');
                    int f = field(key);
                    Json.Slice into = f == F_ID ? id : f == F_TYPE ? typeName : f == F_USER ? user
                            : f == F_ORG ? org : f == F_COURSE ? course : f == F_TS ? tsText : ignored;
                    int t = j.value(into);
                    if (f != 0 && t != Json.T_NULL) {
                        boolean isString = t == Json.T_STRING, isNumber = t == Json.T_INT || t == Json.T_FLOAT;
                        switch (f) {
                            case F_V:
                                if (!isNumber) return fail("invalid_field v");
                                v = t == Json.T_INT ? j.longValue : (j.doubleValue == 1.0 ? 1 : 0);
                                break;
                            case F_TS:
                                if (isString) tsType = 1;
                                else if (t == Json.T_INT) { tsType = 2; tsInt = j.longValue; }
                                else if (t == Json.T_FLOAT && j.doubleValue == Math.rint(j.doubleValue)
                                        && Math.abs(j.doubleValue) < 9.0e18) { tsType = 2; tsInt = (long) j.doubleValue; }
                                else return fail("invalid_field ts");
                                break;
                            case F_MINUTES:
                                if (!isNumber) return fail("invalid_field minutes");
                                minutes = j.doubleValue;
                                break;
                            case F_PERCENT:
                                if (!isNumber) return fail("invalid_field percent");
                                pct = j.doubleValue;
                                break;
                            case F_STARS:
                                if (!isNumber) return fail("invalid_field stars");
                                stars = j.doubleValue;
                                break;
                            default: // a text field
                                if (!isString) return fail("invalid_field (not a string)");
                        }
                        seen |= f;
                    }
                    j.ws();
                    if (j.p < j.end && j.b[j.p] == ',') {
                        j.p++;
                        continue;
                    }
                    j.expect('}');
                    break;
                }
            }
            j.expectEnd();
        } catch (Json.Malformed e) {
            return fail("invalid_json: " + e.getMessage());
        }
        if ((seen & F_V) == 0) return fail("missing_field v");
        if (v != 1) return fail("unsupported_version");
        if (!text(seen, F_ID, id) || !text(seen, F_TYPE, typeName)) return false;
        if ((seen & F_TS) == 0) return fail("missing_field ts");
        if (tsType == 1) {
            ts = Time.parseRfc3339(tsText.a, tsText.off, tsText.len);
            if (ts == Long.MIN_VALUE) return fail("invalid_field ts");
        } else {
            ts = tsInt;
        }
        if (!text(seen, F_USER, user) || !text(seen, F_ORG, org)) return false;
        if (typeName.equalsAscii("registration")) {
            type = REGISTRATION;
            return true;
        }
        if (typeName.equalsAscii("enrolment")) type = ENROLMENT;
        else if (typeName.equalsAscii("progress")) type = PROGRESS;
        else if (typeName.equalsAscii("completion")) type = COMPLETION;
        else if (typeName.equalsAscii("rating")) type = RATING;
        else return fail("invalid_field type");
        if (!text(seen, F_COURSE, course)) return false;
        if (type == PROGRESS) {
            if ((seen & F_MINUTES) == 0) return fail("missing_field minutes");
            if (!(minutes > 0.0 && minutes <= 1440.0)) return fail("invalid_field minutes");
            minutesMs = Math.max(1L, Math.round(minutes * 60_000.0));
            if ((seen & F_PERCENT) != 0) {
                if (!(pct >= 0.0 && pct <= 100.0)) return fail("invalid_field percent");
                percent = pct;
            } else {
                percent = Double.NaN;
            }
        } else if (type == RATING) {
            if ((seen & F_STARS) == 0) return fail("missing_field stars");
            if (!(stars >= 1.0 && stars <= 5.0)) return fail("invalid_field stars");
            starsMilli = Math.round(stars * 1000.0);
        }
        return true;
    }

    private static int field(Json.Slice k) {
        switch (k.len) {
            case 1: return k.a[k.off] == 'v' ? F_V : 0;
            case 2: return k.equalsAscii("id") ? F_ID : k.equalsAscii("ts") ? F_TS : 0;
            case 3: return k.equalsAscii("org") ? F_ORG : 0;
            case 4: return k.equalsAscii("type") ? F_TYPE : k.equalsAscii("user") ? F_USER : 0;
            case 5: return k.equalsAscii("stars") ? F_STARS : 0;
            case 6: return k.equalsAscii("course") ? F_COURSE : 0;
            case 7: return k.equalsAscii("minutes") ? F_MINUTES : k.equalsAscii("percent") ? F_PERCENT : 0;
            default: return 0;
        }
    }

    private boolean text(int seen, int f, Json.Slice s) {
        if ((seen & f) == 0) return fail("missing_field");
        if (s.len == 0 || (s.len > MAX_TEXT_CHARS && s.chars() > MAX_TEXT_CHARS)) return fail("invalid_field (length)");
        return true;
    }

    private boolean fail(String why) {
        error = why;
        return false;
    }
}
