package pulse.peer;

import java.nio.charset.StandardCharsets;

/**
 * A small strict JSON tokenizer over a byte array, for reading the few fields
 * of one flat object in a single pass without building a tree. Strings come
 * back as slices of the input (or of a scratch buffer when they hold escapes);
 * numbers as a long when they are plain integers, else as a double.
 */
final class Json {
    /** Thrown for malformed JSON (the message is for humans). */
    static final class Malformed extends Exception {
        Malformed(String what) {
            super(what, null, false, false);
        }
    }

    /** A view of UTF-8 bytes: {@code a[off .. off+len)}. */
    static final class Slice {
        byte[] a;
        int off;
        int len;
        /** Owned buffer for strings with escapes; reused across messages. */
        byte[] scratch = new byte[64];

        boolean equalsAscii(String s) {
            if (s.length() != len) return false;
            for (int i = 0; i < len; i++) if (a[off + i] != (byte) s.charAt(i)) return false;
            return true;
        }

        /** Number of characters (UTF-8 code points). */
        int chars() {
            int n = 0;
            for (int i = 0; i < len; i++) if ((a[off + i] & 0xC0) != 0x80) n++;
            return n;
        }

        byte[] copy() {
            return java.util.Arrays.copyOfRange(a, off, off + len);
        }

        @Override
        public String toString() {
            return new String(a, off, len, StandardCharsets.UTF_8);
        }
    }

    static final int T_STRING = 1, T_INT = 2, T_FLOAT = 3, T_NULL = 4, T_BOOL = 5, T_OTHER = 6;

    byte[] b;
    int p;
    int end;
    /** The last number read. */
    long longValue;
    double doubleValue;

    void reset(byte[] buf) {
        b = buf;
        p = 0;
        end = buf.length;
    }

    void ws() {
        while (p < end) {
            byte c = b[p];
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') p++;
            else return;
        }
    }

    boolean at(char c) throws Malformed {
        ws();
        return p < end && b[p] == c;
    }

    void expect(char c) throws Malformed {
        ws();
        if (p >= end || b[p] != c) throw new Malformed("expected '" + c + "' at byte " + p);
        p++;
    }

    void expectEnd() throws Malformed {
        ws();
        if (p != end) throw new Malformed("trailing characters at byte " + p);
    }

    /** Reads a string (the opening quote is next) into {@code out}. */
    void string(Slice out) throws Malformed {
        ws();
        if (p >= end || b[p] != '"') throw new Malformed("expected a string at byte " + p);
        int start = ++p;
        while (p < end) {
            byte c = b[p];
            if (c == '"') {
                out.a = b;
                out.off = start;
                out.len = p - start;
                p++;
                return;
            }
            if (c == '\\') {
                escaped(out, start);
                return;
            }
            if ((c & 0xFF) < 0x20) throw new Malformed("control character in a string");
            p++;
        }
        throw new Malformed("unterminated string");
    }

    /** The slow path of {@link #string}: decodes escapes into the slice's scratch buffer. */
    private void escaped(Slice out, int start) throws Malformed {
        byte[] s = out.scratch;
        int n = p - start;
        if (s.length < n + 16) s = new byte[Math.max(64, 2 * (n + 16))];
        System.arraycopy(b, start, s, 0, n);
        while (true) {
            if (p >= end) throw new Malformed("unterminated string");
            byte c = b[p++];
            if (c == '"') break;
            if (n + 4 > s.length) s = java.util.Arrays.copyOf(s, s.length * 2);
            if (c != '\\') {
                if ((c & 0xFF) < 0x20) throw new Malformed("control character in a string");
                s[n++] = c;
                continue;
            }
            if (p >= end) throw new Malformed("unterminated escape");
            byte e = b[p++];
            switch (e) {
                case '"': s[n++] = '"'; break;
                case '\\': s[n++] = '\\'; break;
                case '/': s[n++] = '/'; break;
                case 'b': s[n++] = '\b'; break;
                case 'f': s[n++] = '\f'; break;
                case 'n': s[n++] = '\n'; break;
                case 'r': s[n++] = '\r'; break;
                case 't': s[n++] = '\t'; break;
                case 'u': {
                    int cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (p + 6 > end || b[p] != '\\' || b[p + 1] != 'u') throw new Malformed("lone surrogate");
                        p += 2;
                        int lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) throw new Malformed("lone surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        throw new Malformed("lone surrogate");
                    }
                    n = utf8(s, n, cp);
                    break;
                }
                default:
                    throw new Malformed("bad escape");
            }
        }
        out.scratch = s;
        out.a = s;
        out.off = 0;
        out.len = n;
    }

    private int hex4() throws Malformed {
        if (p + 4 > end) throw new Malformed("short \\u escape");
        int v = 0;
        for (int i = 0; i < 4; i++) {
            int c = b[p++];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) throw new Malformed("bad \\u escape");
            v = v << 4 | d;
        }
        return v;
    }

    private static int utf8(byte[] s, int n, int cp) {
        if (cp < 0x80) {
            s[n++] = (byte) cp;
        } else if (cp < 0x800) {
            s[n++] = (byte) (0xC0 | cp >> 6);
            s[n++] = (byte) (0x80 | cp & 0x3F);
        } else if (cp < 0x10000) {
            s[n++] = (byte) (0xE0 | cp >> 12);
            s[n++] = (byte) (0x80 | cp >> 6 & 0x3F);
            s[n++] = (byte) (0x80 | cp & 0x3F);
        } else {
            s[n++] = (byte) (0xF0 | cp >> 18);
            s[n++] = (byte) (0x80 | cp >> 12 & 0x3F);
            s[n++] = (byte) (0x80 | cp >> 6 & 0x3F);
            s[n++] = (byte) (0x80 | cp & 0x3F);
        }
        return n;
    }

    /**
     * Reads a scalar value: a string into {@code str}, a number into
     * {@link #longValue}/{@link #doubleValue}; an object or array is skipped
     * ({@link #T_OTHER}). Returns the T_ type.
     */
    int value(Slice str) throws Malformed {
        ws();
        if (p >= end) throw new Malformed("expected a value");
        byte c = b[p];
        switch (c) {
            case '"':
                string(str);
                return T_STRING;
            case '{':
            case '[':
                skipValue();
                return T_OTHER;
            case 't':
                literal("true");
                return T_BOOL;
            case 'f':
                literal("false");
                return T_BOOL;
            case 'n':
                literal("null");
                return T_NULL;
            default:
                return number();
        }
    }

    private void literal(String word) throws Malformed {
        if (p + word.length() > end) throw new Malformed("bad literal");
        for (int i = 0; i < word.length(); i++) if (b[p + i] != word.charAt(i)) throw new Malformed("bad literal");
        p += word.length();
    }

    private int number() throws Malformed {
        int start = p;
        boolean neg = false;
        if (p < end && b[p] == '-') {
            neg = true;
            p++;
        }
        int digitsStart = p;
        long v = 0;
        while (p < end && b[p] >= '0' && b[p] <= '9') {
            v = v * 10 + (b[p] - '0');
            p++;
        }
        int digits = p - digitsStart;
        if (digits == 0) throw new Malformed("expected a value at byte " + start);
        if (digits > 1 && b[digitsStart] == '0') throw new Malformed("leading zero");
        boolean integral = true;
        if (p < end && b[p] == '.') {
            integral = false;
            p++;
            int f = p;
            while (p < end && b[p] >= '0' && b[p] <= '9') p++;
            if (p == f) throw new Malformed("bad number");
        }
        if (p < end && (b[p] == 'e' || b[p] == 'E')) {
            integral = false;
            p++;
            if (p < end && (b[p] == '+' || b[p] == '-')) p++;
            int f = p;
            while (p < end && b[p] >= '0' && b[p] <= '9') p++;
            if (p == f) throw new Malformed("bad number");
        }
        if (integral && digits <= 18) {
            longValue = neg ? -v : v;
            doubleValue = longValue;
            return T_INT;
        }
        doubleValue = Double.parseDouble(new String(b, start, p - start, StandardCharsets.ISO_8859_1));
        return T_FLOAT;
    }

    /** Skips any value, nested ones included. */
    void skipValue() throws Malformed {
        ws();
        if (p >= end) throw new Malformed("expected a value");
        byte c = b[p];
        if (c == '{') {
            p++;
            if (at('}')) {
                p++;
                return;
            }
            Slice k = new Slice();
            do {
                string(k);
                expect(':');
                skipValue();
                ws();
            } while (p < end && b[p] == ',' && ++p > 0);
            expect('}');
        } else if (c == '[') {
            p++;
            if (at(']')) {
                p++;
                return;
            }
            do {
                skipValue();
                ws();
            } while (p < end && b[p] == ',' && ++p > 0);
            expect(']');
        } else {
            value(new Slice());
        }
    }
}
