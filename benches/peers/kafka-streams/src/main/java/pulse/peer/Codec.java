package pulse.peer;

import java.util.Arrays;

/** Varint (LEB128, zigzag for signed) binary encoding for the state stores' values. */
final class Codec {
    private Codec() {}

    /** A growable output buffer, reused; {@link #toBytes} copies the written part out. */
    static final class Writer {
        byte[] b = new byte[256];
        int n;

        Writer clear() {
            n = 0;
            return this;
        }

        private void room(int k) {
            if (n + k > b.length) b = Arrays.copyOf(b, Math.max(b.length * 2, n + k));
        }

        void u8(int v) {
            room(1);
            b[n++] = (byte) v;
        }

        void uvar(long v) {
            room(10);
            while ((v & ~0x7FL) != 0) {
                b[n++] = (byte) ((v & 0x7F) | 0x80);
                v >>>= 7;
            }
            b[n++] = (byte) v;
        }

        void svar(long v) {
            uvar((v << 1) ^ (v >> 63));
        }

        void f64(double d) {
            room(8);
            long v = Double.doubleToRawLongBits(d);
            for (int i = 0; i < 8; i++) b[n++] = (byte) (v >>> (8 * i));
        }

        void bytes(byte[] a, int off, int len) {
            uvar(len);
            room(len);
            System.arraycopy(a, off, b, n, len);
            n += len;
        }

        byte[] toBytes() {
            return Arrays.copyOf(b, n);
        }
    }

    /** Reads a value written by {@link Writer}. */
    static final class Reader {
        byte[] b;
        int p;

        Reader reset(byte[] buf) {
            b = buf;
            p = 0;
            return this;
        }

        int u8() {
            return b[p++] & 0xFF;
        }

        long uvar() {
            long v = 0;
            int shift = 0;
            while (true) {
                byte c = b[p++];
                v |= (long) (c & 0x7F) << shift;
                if (c >= 0) return v;
                shift += 7;
            }
        }

        long svar() {
            long v = uvar();
            return (v >>> 1) ^ -(v & 1);
        }

        double f64() {
            long v = 0;
            for (int i = 0; i < 8; i++) v |= (long) (b[p++] & 0xFF) << (8 * i);
            return Double.longBitsToDouble(v);
        }

        /** Reads a length-prefixed byte string; returns its length, its offset is {@link #p} minus it. */
        int bytes() {
            int len = (int) uvar();
            p += len;
            return len;
        }
    }
}
