//! Restoring a shard's state from its changelog partition, on the instance
//! that takes the shard over (docs/ARCHITECTURE.md, "Changelog and
//! restore"): read `read_committed` from the local changelog offset, or
//! from the start when there is none or it is from another changelog, to
//! the partition's end, once every transaction on it is decided.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulse_engine::{restore_into, Batch, Engine, EngineError, ShardId, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::changelog::TRANSACTION_TIMEOUT;
use crate::metrics::IngestMetrics;
use crate::registry::METADATA_TIMEOUT;
use crate::{client_config, kafka_err, Error, Settings};

/// Restored records written to the store per batch.
const RESTORE_CHUNK: usize = 20_000;

/// A restore that reads nothing for this long gives up (the brokers are
/// away); the stalled loop tries the take-over again. Also how long a
/// restore waits for the partition's transactions to settle.
const RESTORE_STALL: Duration = Duration::from_secs(30);

/// How often a restore logs how far it is.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How often a restore asks again whether the partition has settled.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// The changelog reader's context: reaching the end of the partition is
/// how a restore knows it is done, not an error to log.
struct EndIsNoError;

impl ClientContext for EndIsNoError {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            warn!(%error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNoError {}

/// Brings the local state of `shard` up to its changelog's end: from the
/// local changelog offset when it is valid, else (no local state, or one
/// from another changelog) from the start after dropping the local copy.
/// The shard's changelog producer must be initialized first, so that no
/// earlier owner can still write to the partition. Returns the records read.
/// Gives up when `stop` is set, when the partition's transactions do not
/// settle within [`RESTORE_STALL`], or when nothing arrives for as long.
/// What was restored so far stays, under the old changelog position: the
/// next attempt reads those records again, which is harmless, as every
/// record is a whole value.
pub(crate) fn catch_up<S: Store>(
    settings: &Settings,
    engine: &Mutex<Engine<S>>,
    shard: ShardId,
    metrics: &IngestMetrics,
    stop: &AtomicBool,
) -> Result<u64, Error> {
    let outcome = restore(settings, engine, shard, metrics, stop);
    metrics.restored(shard, *outcome.as_ref().unwrap_or(&0));
    outcome
}

fn restore<S: Store>(
    settings: &Settings,
    engine: &Mutex<Engine<S>>,
    shard: ShardId,
    metrics: &IngestMetrics,
    stop: &AtomicBool,
) -> Result<u64, Error> {
    let lock = || engine.lock().unwrap_or_else(|p| p.into_inner());
    let reader = |isolation: &str| {
        client_config(&settings.brokers, &settings.options)
            .set("group.id", format!("{}.restore", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true")
            // Never skip ahead: a start below the log's would read from its start.
            .set("auto.offset.reset", "earliest")
            // A partition read to its end ends with a commit marker and no
            // data: do not let the broker wait for more before answering.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(EndIsNoError)
            .map_err(kafka_err("failed to create the changelog reader"))
    };
    let consumer: BaseConsumer<EndIsNoError> = reader("read_committed")?;
    let topic = &settings.changelog_topic;
    let partition = i32::from(shard);
    let local = lock().changelog_position(shard);
    let (low, high) = settled_end(&consumer, &reader("read_uncommitted")?, topic, partition, local, stop)?;
    let start = match local {
        Some(at) if (low..=high).contains(&at) => at,
        _ => {
            if local.is_some() {
                warn!(shard, ?local, low, high, "the local state is not from this changelog; restoring from the start");
            }
            lock().restore(Batch { drop_shards: vec![shard], ..Batch::default() })?;
            low
        }
    };
    if start >= high {
        return Ok(0);
    }
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka_err("failed to build an assignment"))?;
    consumer.assign(&tpl).map_err(kafka_err("failed to assign the changelog partition"))?;
    let (mut batch, mut in_batch, mut total) = (Batch::default(), 0usize, 0u64);
    let (mut last_read, mut last_progress) = (Instant::now(), Instant::now());
    metrics.restoring(shard, high - start);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Stopped("restoring a partition from the changelog"));
        }
        if last_read.elapsed() > RESTORE_STALL {
            return Err(Error::Timeout(format!(
                "restoring changelog partition {shard}: nothing read for {}s after {total} records; \
                 the brokers may be away",
                RESTORE_STALL.as_secs()
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, shard, "reading the changelog; librdkafka retries"),
            Some(Ok(m)) => {
                last_read = Instant::now();
                restore_into(&mut batch, shard, m.key().unwrap_or_default(), m.payload()).map_err(EngineError::from)?;
                (in_batch, total) = (in_batch + 1, total + 1);
                if in_batch >= RESTORE_CHUNK {
                    lock().restore(std::mem::take(&mut batch))?;
                    in_batch = 0;
                    let remaining = (high - m.offset() - 1).max(0);
                    metrics.restoring(shard, remaining);
                    if last_progress.elapsed() >= PROGRESS_INTERVAL {
                        last_progress = Instant::now();
                        let per_second = total as f64 / started.elapsed().as_secs_f64().max(1e-3);
                        info!(
                            shard,
                            records = total,
                            per_second = per_second.round(),
                            offsets_to_go = remaining,
                            seconds_left = (remaining as f64 / per_second).round(),
                            "restoring from the changelog"
                        );
                    }
                }
            }
        }
    }
    // Read to the end: every transaction up to `high` is decided (see
    // `settled_end`), so the `read_committed` end is `high`.
    batch.changelog.push((shard, high));
    lock().restore(batch)?;
    let per_second = (total as f64 / started.elapsed().as_secs_f64().max(1e-3)).round();
    info!(shard, records = total, from = start, to = high, elapsed = ?started.elapsed(), per_second, "restored from the changelog");
    Ok(total)
}

/// The changelog partition's start and end once it has settled: every
/// transaction on it decided, and the end at or past the local position.
///
/// The take-over fenced the partition's producer, so nothing new is written
/// to it, but what was written need not be readable yet. A transaction the
/// coordinator has committed gets its markers afterwards (a broker restart
/// delays them), and until they land, the end a `read_committed` reader
/// sees (the last stable offset) stops at its first record, below the
/// offset the local store may already hold; a leader that has just taken
/// over may report a high watermark behind the log it holds. Treating
/// either as the end would restore an older state under a position the
/// log then passes: the committed records between would later be read
/// over a state that never had them. So this waits until the stable end
/// is the log's end (`read_uncommitted`) and the log's end is not below the
/// local position. A local position still past the end after
/// [`RESTORE_STALL`] is from another changelog (one deleted and recreated);
/// an open transaction after as long is an error, which the stalled loop
/// retries: one that never closes is hanging, and the error says how an
/// operator aborts it (Pulse cannot: librdkafka has no such admin call).
fn settled_end(
    committed: &BaseConsumer<EndIsNoError>,
    uncommitted: &BaseConsumer<EndIsNoError>,
    topic: &str,
    partition: i32,
    local: Option<i64>,
    stop: &AtomicBool,
) -> Result<(i64, i64), Error> {
    let deadline = Instant::now() + RESTORE_STALL;
    let end = |consumer: &BaseConsumer<EndIsNoError>| {
        consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(kafka_err(format!("failed to read the end of changelog partition {partition}")))
    };
    loop {
        let (low, high) = end(uncommitted)?;
        let (_, stable) = end(committed)?;
        let past_local = local.is_none_or(|at| at <= high);
        if stable >= high && (past_local || Instant::now() >= deadline) {
            return Ok((low, high));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "changelog partition {partition} has a transaction still open at offset {stable} (its end is \
                 {high}) after {}s; the brokers may still be recovering. Open past its transaction timeout \
                 ({}s), it is hanging (a broker that stopped while completing it can lose its markers): \
                 `kafka-transactions.sh abort --topic {topic} --partition {partition} --start-offset {stable}` \
                 ends it",
                RESTORE_STALL.as_secs(),
                TRANSACTION_TIMEOUT.as_secs()
            )));
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Stopped("waiting for the changelog's transactions to settle"));
        }
        std::thread::sleep(SETTLE_POLL);
    }
}
