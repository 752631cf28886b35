//! The consumer loop's metrics. The loop counts into [`IngestCounts`] on its
//! own thread, without locks, and publishes a copy to [`IngestMetrics`] at
//! every commit (and every 500 ms while idle), which `/metrics` and
//! `/readyz` read.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pulse_engine::{Disposition, IngestStats, ShardId};
use pulse_metrics::{Collect, Encoder, Histogram, Kind, COUNT_BUCKETS, SECONDS_BUCKETS};
use pulse_model::{InputFormat, Millis};

/// Where the loop stands on one assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The next offset to apply (stored with the state).
    pub next: i64,
    /// The partition's end as last fetched; `None` until the first fetch.
    pub high: Option<i64>,
}

impl Position {
    pub fn lag(&self) -> Option<i64> {
        self.high.map(|h| (h - self.next).max(0))
    }
}

/// Everything the loop counts, cumulative since the process started.
#[derive(Debug, Clone)]
pub struct IngestCounts {
    /// By topic (each input topic has one format).
    messages: BTreeMap<String, (InputFormat, u64)>,
    events: IngestStats,
    positions: BTreeMap<(String, i32), Position>,
    flush_seconds: Histogram,
    flush_messages: Histogram,
    persist_latency: Histogram,
    event_time_lag_ms: Option<i64>,
    registry_read: bool,
    assigned: bool,
    /// Why the store refused the last commit, until it takes one again.
    store_failure: Option<String>,
    store_failures: u64,
    /// Input topics the broker no longer knows (deleted under Pulse).
    missing_topics: Vec<String>,
    /// Valid events sent on to their user's partition.
    forwarded: u64,
}

impl Default for IngestCounts {
    fn default() -> Self {
        IngestCounts {
            messages: BTreeMap::new(),
            events: IngestStats::default(),
            positions: BTreeMap::new(),
            flush_seconds: Histogram::new(SECONDS_BUCKETS),
            flush_messages: Histogram::new(COUNT_BUCKETS),
            persist_latency: Histogram::new(SECONDS_BUCKETS),
            event_time_lag_ms: None,
            registry_read: false,
            assigned: false,
            store_failure: None,
            store_failures: 0,
            missing_topics: Vec::new(),
            forwarded: 0,
        }
    }
}

impl IngestCounts {
    pub(crate) fn message(&mut self, topic: &str, format: InputFormat, disposition: &Disposition) {
        self.consumed(topic, format);
        self.events.record(disposition);
    }

    /// A valid event forwarded to the partition of its user.
    pub(crate) fn forwarded(&mut self, topic: &str, format: InputFormat) {
        self.consumed(topic, format);
        self.forwarded += 1;
    }

    fn consumed(&mut self, topic: &str, format: InputFormat) {
        match self.messages.get_mut(topic) {
            Some((_, n)) => *n += 1,
            None => {
                self.messages.insert(topic.to_owned(), (format, 1));
            }
        }
    }

    /// A commit persisted `messages` messages; `arrivals` are their Kafka
    /// timestamps, `newest_event` the newest event time applied so far.
    pub(crate) fn flushed(&mut self, took: Duration, arrivals: &[Millis], now: Millis, newest_event: Option<Millis>) {
        self.flush_seconds.observe(took.as_secs_f64());
        self.flush_messages.observe(arrivals.len() as f64);
        for ts in arrivals {
            self.persist_latency.observe((now - ts).max(0) as f64 / 1000.0);
        }
        self.event_time_lag_ms = newest_event.map(|ts| (now - ts).max(0));
    }

    pub(crate) fn events(&self) -> &IngestStats {
        &self.events
    }

    pub(crate) fn registry_read(&mut self) {
        self.registry_read = true;
    }

    /// The partitions now assigned, replacing the previous assignment.
    pub(crate) fn positions(&mut self, positions: BTreeMap<(String, i32), Position>) {
        self.assigned = true;
        self.positions = positions;
    }

    pub(crate) fn unassigned(&mut self) {
        self.assigned = false;
        self.positions.clear();
    }

    /// The store refused a commit; ingestion waits until it takes one.
    pub(crate) fn store_failed(&mut self, error: String) {
        self.store_failures += 1;
        self.store_failure = Some(error);
    }

    pub(crate) fn store_recovered(&mut self) {
        self.store_failure = None;
    }

    pub(crate) fn missing_topics(&mut self, topics: Vec<String>) {
        self.missing_topics = topics;
    }

    /// Ready once the registry was read, partitions were assigned, and
    /// every assigned partition is within `max_lag` messages of its end;
    /// never while the store refuses writes or an input topic is missing.
    pub fn readiness(&self, max_lag: i64) -> Result<(), String> {
        if let Some(e) = &self.store_failure {
            return Err(format!(
                "ingestion stopped: the store or the changelog refused a commit ({e}); Pulse retries by \
                 itself (a full disk: free space under store.data_dir; the changelog: the brokers must be reachable)"
            ));
        }
        if let Some(topic) = self.missing_topics.first() {
            return Err(format!(
                "input topic `{topic}` does not exist (deleted?); recreate it or remove it from kafka.inputs"
            ));
        }
        if !self.registry_read {
            return Err("reading the org registry and targets".into());
        }
        if !self.assigned {
            return Err("waiting for the consumer group to assign partitions".into());
        }
        for ((topic, p), pos) in &self.positions {
            if let Some(high) = pos.high.filter(|&h| pos.next > h) {
                return Err(format!(
                    "{topic}/{p}: the stored offset {} is past the end {high}; was the topic deleted and \
                     recreated? Pulse skips offsets below the stored one: rebuild the state in an empty data_dir",
                    pos.next
                ));
            }
            match pos.lag() {
                None => return Err(format!("{topic}/{p}: end offset not fetched yet")),
                Some(lag) if lag > max_lag => {
                    return Err(format!("{topic}/{p}: {lag} messages behind (max {max_lag})"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Changelog restores: updated directly by the restore (it runs inside the
/// rebalance callback, while the loop waits).
#[derive(Debug, Default, Clone)]
struct Restores {
    /// Changelog offsets left to read, by shard being restored.
    remaining: BTreeMap<ShardId, i64>,
    records: u64,
}

/// The published copy of the loop's counts; shared with the HTTP server.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    published: Mutex<IngestCounts>,
    restores: Mutex<Restores>,
    /// When the consumer loop last went round (`None` before it started).
    /// Read at request time, so a loop stuck waiting on the network shows
    /// even though it publishes nothing meanwhile.
    beat: Mutex<Option<Instant>>,
    /// When the commit being written started (`None`: none is): the loop
    /// goes on meanwhile, so a commit stuck on the brokers shows here.
    commit_started: Mutex<Option<Instant>>,
}

impl IngestMetrics {
    /// The loop went round: it is not stuck.
    pub(crate) fn beat(&self) {
        *self.beat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A commit started being written (`true`), or is done (`false`).
    pub(crate) fn committing(&self, started: bool) {
        *self.commit_started.lock().unwrap_or_else(|p| p.into_inner()) = started.then(Instant::now);
    }

    pub(crate) fn publish(&self, counts: &IngestCounts) {
        self.lock().clone_from(counts);
    }

    fn restores(&self) -> MutexGuard<'_, Restores> {
        self.restores.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn restoring(&self, shard: ShardId, remaining: i64) {
        self.restores().remaining.insert(shard, remaining);
    }

    pub(crate) fn restored(&self, shard: ShardId, records: u64) {
        let mut r = self.restores();
        r.remaining.remove(&shard);
        r.records += records;
    }

    /// See [`IngestCounts::readiness`]; never ready while restoring, nor
    /// while the loop has not gone round, or a commit has been written, for
    /// longer than `max_stall` (it waits on a broker that does not answer).
    pub fn readiness(&self, max_lag: i64, max_stall: Duration) -> Result<(), String> {
        if let Some((shard, left)) = self.restores().remaining.first_key_value() {
            return Err(format!("restoring partition {shard} from the changelog: {left} offsets to go"));
        }
        let beat = *self.beat.lock().unwrap_or_else(|p| p.into_inner());
        let commit = *self.commit_started.lock().unwrap_or_else(|p| p.into_inner());
        let waited = beat.map(|b| b.elapsed()).max(commit.map(|c| c.elapsed()));
        if let Some(since) = waited.filter(|&e| e > max_stall) {
            return Err(format!(
                "the consumer loop has made no progress for {}s (max {}s): it is waiting on the brokers \
                 (a commit or a take-over); check that they are reachable",
                since.as_secs(),
                max_stall.as_secs()
            ));
        }
        self.lock().readiness(max_lag)
    }

    fn lock(&self) -> MutexGuard<'_, IngestCounts> {
        // Counts are plain data: a panic elsewhere cannot leave them torn.
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collect for IngestMetrics {
    fn collect(&self, enc: &mut Encoder) {
        let c = self.lock().clone();
        let restores = self.restores().clone();
        let mut f = enc.family(
            "pulse_kafka_restore_remaining_offsets",
            "Changelog offsets left to read, per partition being restored.",
            Kind::Gauge,
        );
        for (shard, left) in &restores.remaining {
            f.sample(&[("partition", &shard.to_string())], *left as f64);
        }
        enc.family("pulse_kafka_restored_records", "Changelog records restored into the local state.", Kind::Counter)
            .sample(&[], restores.records as f64);
        enc.family(
            "pulse_ingest_forwarded",
            "Valid events forwarded to the partition of their user (the repartition topic).",
            Kind::Counter,
        )
        .sample(&[], c.forwarded as f64);
        let mut f = enc.family("pulse_ingest_messages", "Messages consumed from the input topics.", Kind::Counter);
        for (topic, (format, n)) in &c.messages {
            f.sample(&[("topic", topic), ("format", format.name())], *n as f64);
        }
        let e = &c.events;
        enc.family("pulse_ingest_events_applied", "Events applied to the KPI state.", Kind::Counter)
            .sample(&[], e.accepted as f64);
        enc.family(
            "pulse_ingest_duplicates",
            "Events skipped as duplicates of an id seen within the horizon.",
            Kind::Counter,
        )
        .sample(&[], e.duplicates as f64);
        enc.family("pulse_ingest_ignored", "Valid messages the contract skips (e.g. other telemetry).", Kind::Counter)
            .sample(&[], e.ignored as f64);
        let mut f = enc.family(
            "pulse_ingest_dead_letters",
            "Input messages sent to the dead-letter topic, by reason.",
            Kind::Counter,
        );
        for (reason, n) in &e.dead_letters {
            f.sample(&[("reason", reason)], *n as f64);
        }
        let partitions: Vec<(String, String, &Position)> =
            c.positions.iter().map(|((t, p), pos)| (t.clone(), p.to_string(), pos)).collect();
        let mut f = enc.family(
            "pulse_kafka_partition_next_offset",
            "Next offset to apply, as stored with the state.",
            Kind::Gauge,
        );
        for (t, p, pos) in &partitions {
            f.sample(&[("topic", t), ("partition", p)], pos.next as f64);
        }
        let mut f = enc.family(
            "pulse_kafka_partition_high_watermark",
            "End offset of the partition as last fetched.",
            Kind::Gauge,
        );
        for (t, p, pos) in &partitions {
            if let Some(high) = pos.high {
                f.sample(&[("topic", t), ("partition", p)], high as f64);
            }
        }
        let mut f = enc.family(
            "pulse_kafka_partition_lag",
            "Messages between the next offset to apply and the end.",
            Kind::Gauge,
        );
        for (t, p, pos) in &partitions {
            if let Some(lag) = pos.lag() {
                f.sample(&[("topic", t), ("partition", p)], lag as f64);
            }
        }
        enc.family(
            "pulse_store_write_failures",
            "Commits the store refused (a full disk, an I/O error); each stops ingestion until one succeeds.",
            Kind::Counter,
        )
        .sample(&[], c.store_failures as f64);
        enc.family("pulse_store_stalled", "1 while ingestion waits for the store to take writes again.", Kind::Gauge)
            .sample(&[], f64::from(u8::from(c.store_failure.is_some())));
        let mut f = enc.family(
            "pulse_kafka_input_topic_missing",
            "1 for each configured input topic the broker does not know.",
            Kind::Gauge,
        );
        for topic in &c.missing_topics {
            f.sample(&[("topic", topic)], 1.0);
        }
        enc.family(
            "pulse_store_flush_duration_seconds",
            "Time to persist one batch of state and offsets.",
            Kind::Histogram,
        )
        .histogram(&[], &c.flush_seconds);
        enc.family("pulse_store_flush_messages", "Messages whose effect one batch persisted.", Kind::Histogram)
            .histogram(&[], &c.flush_messages);
        enc.family(
            "pulse_ingest_persist_latency_seconds",
            "Time from a message's Kafka timestamp to its effect being persisted.",
            Kind::Histogram,
        )
        .histogram(&[], &c.persist_latency);
        let mut f = enc.family(
            "pulse_ingest_event_time_lag_seconds",
            "Wall clock minus the event time of the newest applied event, at the last commit.",
            Kind::Gauge,
        );
        if let Some(ms) = c.event_time_lag_ms {
            f.sample(&[], ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(next: i64, high: Option<i64>) -> Position {
        Position { next, high }
    }

    #[test]
    fn readiness_waits_for_registry_assignment_and_every_partition() {
        let mut c = IngestCounts::default();
        assert!(c.readiness(10).unwrap_err().contains("registry"));
        c.registry_read();
        assert!(c.readiness(10).unwrap_err().contains("assign"));
        c.positions([(("t".to_owned(), 0), pos(5, Some(20))), (("t".to_owned(), 1), pos(0, None))].into());
        assert_eq!(c.readiness(10).unwrap_err(), "t/0: 15 messages behind (max 10)");
        c.positions([(("t".to_owned(), 0), pos(15, Some(20))), (("t".to_owned(), 1), pos(0, None))].into());
        assert_eq!(c.readiness(10).unwrap_err(), "t/1: end offset not fetched yet");
        c.positions([(("t".to_owned(), 0), pos(15, Some(20)))].into());
        assert_eq!(c.readiness(10), Ok(()));
        c.unassigned();
        assert!(c.readiness(10).is_err());
    }

    #[test]
    fn a_refusing_store_a_missing_topic_or_an_offset_past_the_end_is_not_ready() {
        let mut c = IngestCounts::default();
        c.registry_read();
        c.positions([(("t".to_owned(), 0), pos(5, Some(5)))].into());
        assert_eq!(c.readiness(10), Ok(()));
        c.store_failed("IO error: No space left on device".into());
        assert!(c.readiness(10).unwrap_err().contains("No space left on device"));
        c.store_recovered();
        c.missing_topics(vec!["t".into()]);
        assert!(c.readiness(10).unwrap_err().contains("input topic `t` does not exist"));
        c.missing_topics(Vec::new());
        c.positions([(("t".to_owned(), 0), pos(50, Some(5)))].into());
        assert!(c.readiness(10).unwrap_err().contains("past the end"));
        let metrics = IngestMetrics::default();
        c.store_failed("full".into());
        metrics.publish(&c);
        let mut enc = Encoder::new(pulse_metrics::Format::Text);
        metrics.collect(&mut enc);
        let text = enc.finish();
        assert!(text.contains("pulse_store_write_failures_total 2\n"), "{text}");
        assert!(text.contains("pulse_store_stalled 1\n"), "{text}");
    }

    #[test]
    fn a_loop_that_stopped_going_round_or_a_commit_stuck_on_the_brokers_is_not_ready() {
        let metrics = IngestMetrics::default();
        let mut c = IngestCounts::default();
        c.registry_read();
        c.positions([(("t".to_owned(), 0), pos(5, Some(5)))].into());
        metrics.publish(&c);
        let bound = Duration::from_millis(50);
        assert_eq!(metrics.readiness(10, bound), Ok(()), "not started yet: the other checks decide");
        metrics.beat();
        assert_eq!(metrics.readiness(10, bound), Ok(()));
        std::thread::sleep(bound * 2);
        assert!(metrics.readiness(10, bound).unwrap_err().contains("no progress"));
        metrics.beat();
        assert_eq!(metrics.readiness(10, bound), Ok(()));
        // The loop goes round while a commit waits on the brokers.
        metrics.committing(true);
        std::thread::sleep(bound * 2);
        metrics.beat();
        assert!(metrics.readiness(10, bound).unwrap_err().contains("no progress"), "a commit stuck on the brokers");
        metrics.committing(false);
        assert_eq!(metrics.readiness(10, bound), Ok(()));
    }

    #[test]
    fn revoked_partitions_vanish_from_the_exposition() {
        let metrics = IngestMetrics::default();
        let mut c = IngestCounts::default();
        c.positions([(("in".to_owned(), 3), pos(7, Some(9)))].into());
        metrics.publish(&c);
        let mut enc = Encoder::new(pulse_metrics::Format::Text);
        metrics.collect(&mut enc);
        assert!(enc.finish().contains("pulse_kafka_partition_lag{topic=\"in\",partition=\"3\"} 2\n"));
        c.unassigned();
        metrics.publish(&c);
        let mut enc = Encoder::new(pulse_metrics::Format::Text);
        metrics.collect(&mut enc);
        assert!(!enc.finish().contains("partition=\"3\""));
    }

    #[test]
    fn flush_records_latency_from_kafka_time_and_the_event_time_lag() {
        let mut c = IngestCounts::default();
        c.flushed(Duration::from_millis(3), &[1_000, 1_500, 2_100], 2_000, Some(500));
        assert_eq!(c.persist_latency.count(), 3);
        assert_eq!(c.flush_messages.count(), 1);
        assert_eq!(c.event_time_lag_ms, Some(1_500));
    }
}
