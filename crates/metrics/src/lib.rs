//! Prometheus exposition for Pulse: one encoder that writes the Prometheus
//! text format (0.0.4) or OpenMetrics 1.0, the [`Collect`] trait through which
//! each crate exposes its own metrics, and a plain (non-atomic) [`Histogram`].
//!
//! Pulse's metrics are snapshots: the consumer loop counts into plain structs
//! on its own thread and publishes a copy at every commit, so nothing here
//! needs atomics or locks. This crate knows no KPI and does no I/O; it must
//! not depend on any other Pulse crate.

use std::fmt::Write;

/// The exposition formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`, the default.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name is given without `_total`, which samples get.
    Counter,
    Gauge,
    Histogram,
}

/// Something that writes metric families: one per crate that owns metrics.
pub trait Collect: Send + Sync {
    fn collect(&self, enc: &mut Encoder);
}

/// Writes one exposition document. Families are written whole, one after the
/// other; a family with no samples writes only its metadata.
#[derive(Debug)]
pub struct Encoder {
    out: String,
    format: Format,
}

impl Encoder {
    pub fn new(format: Format) -> Encoder {
        Encoder { out: String::with_capacity(1 << 16), format }
    }

    /// Starts a family. `name` carries the unit (`_seconds`, `_bytes`) and,
    /// for counters, no `_total`.
    pub fn family(&mut self, name: &'static str, help: &str, kind: Kind) -> Family<'_> {
        let (type_name, sample_name, kind_str) = match (kind, self.format) {
            (Kind::Counter, Format::Text) => (Suffixed(name, "_total"), Suffixed(name, "_total"), "counter"),
            (Kind::Counter, Format::OpenMetrics) => (Suffixed(name, ""), Suffixed(name, "_total"), "counter"),
            (Kind::Gauge, _) => (Suffixed(name, ""), Suffixed(name, ""), "gauge"),
            (Kind::Histogram, _) => (Suffixed(name, ""), Suffixed(name, ""), "histogram"),
        };
        let _ = writeln!(self.out, "# HELP {type_name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {type_name} {kind_str}");
        Family { enc: self, sample_name }
    }

    /// The document; OpenMetrics ends with `# EOF`.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

#[derive(Clone, Copy)]
struct Suffixed(&'static str, &'static str);

impl std::fmt::Display for Suffixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)?;
        f.write_str(self.1)
    }
}

/// The samples of one family.
#[derive(Debug)]
pub struct Family<'a> {
    enc: &'a mut Encoder,
    sample_name: Suffixed,
}

impl std::fmt::Debug for Suffixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl Family<'_> {
    /// One sample. Non-finite values are written as Prometheus spells them,
    /// but callers leave undefined values (a ratio over 0) out instead.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.line(self.sample_name, labels, None, value);
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of a histogram.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let name = self.sample_name.0;
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            self.line(Suffixed(name, "_bucket"), labels, Some(*bound), cumulative as f64);
        }
        self.line(Suffixed(name, "_bucket"), labels, Some(f64::INFINITY), h.count as f64);
        self.line(Suffixed(name, "_sum"), labels, None, h.sum);
        self.line(Suffixed(name, "_count"), labels, None, h.count as f64);
        self
    }

    fn line(&mut self, name: Suffixed, labels: &[(&str, &str)], le: Option<f64>, value: f64) {
        let out = &mut self.enc.out;
        let _ = write!(out, "{name}");
        if !labels.is_empty() || le.is_some() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_label(out, v);
                out.push('"');
            }
            if let Some(le) = le {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str("le=\"");
                write_value(out, le);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        write_value(out, value);
        out.push('\n');
    }
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Counts are integers: print them without an exponent or a fraction.
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Cumulative-on-read histogram with fixed upper bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last bucket is +Inf.
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// `bounds` must be sorted ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "histogram bounds must ascend");
        Histogram { bounds, counts: vec![0; bounds.len()], count: 0, sum: 0.0 }
    }

    pub fn observe(&mut self, v: f64) {
        let at = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(at) {
            *c += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Bounds for durations from 100 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bounds for sizes counted in items, 1 to 100k.
pub const COUNT_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0];

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(format: Format) -> String {
        let mut enc = Encoder::new(format);
        enc.family("pulse_test_messages", "Messages seen.", Kind::Counter).sample(&[("topic", "a\"b\\c\nd")], 3.0);
        enc.family("pulse_test_ratio", "A ratio.", Kind::Gauge).sample(&[], 0.25);
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 7.0] {
            h.observe(v);
        }
        enc.family("pulse_test_seconds", "Durations.", Kind::Histogram).histogram(&[("x", "y")], &h);
        enc.finish()
    }

    #[test]
    fn text_format_names_counters_with_total_and_escapes_labels() {
        let expected = r#"# HELP pulse_test_messages_total Messages seen.
# TYPE pulse_test_messages_total counter
pulse_test_messages_total{topic="a\"b\\c\nd"} 3
# HELP pulse_test_ratio A ratio.
# TYPE pulse_test_ratio gauge
pulse_test_ratio 0.25
# HELP pulse_test_seconds Durations.
# TYPE pulse_test_seconds histogram
pulse_test_seconds_bucket{x="y",le="0.1"} 2
pulse_test_seconds_bucket{x="y",le="1"} 3
pulse_test_seconds_bucket{x="y",le="+Inf"} 4
pulse_test_seconds_sum{x="y"} 7.65
pulse_test_seconds_count{x="y"} 4
"#;
        assert_eq!(doc(Format::Text), expected);
    }

    #[test]
    fn openmetrics_names_the_counter_family_without_total_and_ends_with_eof() {
        let om = doc(Format::OpenMetrics);
        assert!(om.starts_with("# HELP pulse_test_messages Messages seen.\n# TYPE pulse_test_messages counter\n"));
        assert!(om.contains("\npulse_test_messages_total{topic="));
        assert!(om.ends_with("pulse_test_seconds_count{x=\"y\"} 4\n# EOF\n"));
    }

    #[test]
    fn negotiation_prefers_text_unless_openmetrics_is_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(1.0);
        h.observe(2.0001);
        assert_eq!(h.counts, vec![1, 0]);
        assert_eq!(h.count(), 2);
    }
}
