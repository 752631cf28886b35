//! State that moves with its partition: the changelog, the repartition
//! topic, and restoring a partition's state on the instance that owns it.
//!
//! Protocol (docs/ARCHITECTURE.md, "Changelog and restore"):
//! - a shard is an input partition number; the changelog topic has one
//!   partition per shard, compacted;
//! - each owned shard has its own transactional producer, whose
//!   `transactional.id` names the shard: the next owner's
//!   `init_transactions` fences the previous one and aborts its open
//!   transaction, so a zombie can never write to a shard it lost;
//! - a commit writes, per shard, one transaction: the shard's changes, its
//!   input partitions' next offsets, and the events its input partitions
//!   forwarded to the repartition topic. Only then does the local store
//!   take the batch, with the changelog offset after it;
//! - on assignment, and after any failed commit, each owned shard catches
//!   up from its local changelog offset (or from the start, when it holds
//!   none) to the end, read `read_committed`, before any event is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulse_engine::{restore_into, Batch, Change, ChangeLog, Engine, EngineError, ShardId, Store, StoreError};
use pulse_model::InputFormat;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::metrics::IngestMetrics;
use crate::registry::{partitions, METADATA_TIMEOUT};
use crate::{client_config, kafka_err, Error, Settings};

/// Header of a repartitioned message: the input format of its value.
pub const FORMAT_HEADER: &str = "pulse.format";

/// How long a transaction may take before the broker aborts it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Restored records written to the store per batch.
const RESTORE_CHUNK: usize = 20_000;

/// Offsets of the changelog records a producer wrote, and the first refusal.
struct Delivered {
    changelog: String,
    last: Mutex<Option<i64>>,
    refused: Mutex<Option<KafkaError>>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.changelog => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                *last = Some(last.map_or(m.offset(), |l| l.max(m.offset())));
            }
            Ok(_) => {}
            Err((e, _)) => {
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.clone());
            }
        }
    }
}

/// A valid event that arrived on a partition other than its user's,
/// waiting for its source partition's next transaction.
pub(crate) struct Forward {
    pub user: String,
    pub to: i32,
    pub format: InputFormat,
    pub value: Vec<u8>,
}

/// The changelog writer of the shards this instance owns.
pub(crate) struct Changelog {
    settings: Settings,
    producers: BTreeMap<ShardId, BaseProducer<Delivered>>,
    /// By source shard: forwards since the last commit.
    forwards: BTreeMap<ShardId, Vec<Forward>>,
}

fn store_err(context: String) -> impl FnOnce(KafkaError) -> StoreError {
    move |e| StoreError::new(context, e)
}

impl Changelog {
    pub(crate) fn new(settings: &Settings) -> Changelog {
        Changelog { settings: settings.clone(), producers: BTreeMap::new(), forwards: BTreeMap::new() }
    }

    /// Takes over the given shards' changelog partitions (fencing any
    /// previous owner) and lets go of every other.
    pub(crate) fn own(&mut self, shards: &BTreeSet<ShardId>) -> Result<(), Error> {
        self.producers.retain(|s, _| shards.contains(s));
        self.forwards.retain(|s, _| shards.contains(s));
        for &shard in shards {
            if self.producers.contains_key(&shard) {
                continue;
            }
            let s = &self.settings;
            let context =
                Delivered { changelog: s.changelog_topic.clone(), last: Mutex::new(None), refused: Mutex::new(None) };
            let producer: BaseProducer<Delivered> = client_config(&s.brokers, &s.options)
                .set("transactional.id", format!("{}.{}.{shard}", s.group_id, s.changelog_topic))
                .set("transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis().to_string())
                .set("linger.ms", "5")
                .create_with_context(context)
                .map_err(kafka_err("failed to create a changelog producer"))?;
            producer
                .init_transactions(METADATA_TIMEOUT)
                .map_err(kafka_err(format!("failed to take over changelog partition {shard}")))?;
            self.producers.insert(shard, producer);
        }
        Ok(())
    }

    pub(crate) fn forward(&mut self, from: ShardId, forward: Forward) {
        self.forwards.entry(from).or_default().push(forward);
    }

    /// Drops the forwards of a batch that was never committed (its
    /// messages are consumed again).
    pub(crate) fn discard_forwards(&mut self) {
        self.forwards.clear();
    }

    fn producer(&self, shard: ShardId) -> Result<&BaseProducer<Delivered>, StoreError> {
        self.producers.get(&shard).ok_or_else(|| {
            StoreError::new(
                format!("failed to write changelog partition {shard}"),
                "this instance does not own the partition now (a rebalance took it)",
            )
        })
    }

    /// Opens a shard's transaction and hands it the shard's changes and
    /// forwards (not yet acknowledged).
    fn begin(&self, shard: ShardId, changes: &[Change], forwards: &[Forward]) -> Result<(), StoreError> {
        let what = format!("failed to write changelog partition {shard}");
        let producer = self.producer(shard)?;
        producer.begin_transaction().map_err(store_err(what.clone()))?;
        let s = &self.settings;
        for c in changes {
            let mut record = BaseRecord::to(&s.changelog_topic).partition(i32::from(shard)).key(c.key.as_slice());
            if let Some(v) = &c.value {
                record = record.payload(v.as_slice());
            }
            send(producer, record).map_err(store_err(what.clone()))?;
        }
        for f in forwards {
            let headers = OwnedHeaders::new().insert(Header { key: FORMAT_HEADER, value: Some(f.format.name()) });
            let record = BaseRecord::to(&s.repartition_topic)
                .partition(f.to)
                .key(f.user.as_bytes())
                .payload(f.value.as_slice())
                .headers(headers);
            send(producer, record).map_err(store_err(what.clone()))?;
        }
        Ok(())
    }

    /// Waits for a begun transaction's acknowledgements and commits it;
    /// returns the changelog offset after its records.
    fn finish(&self, shard: ShardId) -> Result<i64, StoreError> {
        let what = format!("failed to write changelog partition {shard}");
        let producer = self.producer(shard)?;
        producer.flush(TRANSACTION_TIMEOUT).map_err(store_err(what.clone()))?;
        if let Some(e) = producer.context().refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(StoreError::new(what, e));
        }
        producer.commit_transaction(TRANSACTION_TIMEOUT).map_err(store_err(what.clone()))?;
        let last = producer.context().last.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The stored position is the next offset after this transaction's records.
        last.map(|l| l + 1).ok_or_else(|| StoreError::new(what, "no changelog record was acknowledged"))
    }
}

/// Hands a record to librdkafka, waiting while its queue is full.
fn send<'a>(producer: &BaseProducer<Delivered>, mut record: BaseRecord<'a, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(10));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl ChangeLog for Changelog {
    /// Every shard's transaction is opened and filled first; then all are
    /// committed at once, one thread each: a commit waits for the broker to
    /// write its markers, and one shard after another would add those waits up.
    fn write(&mut self, changes: BTreeMap<ShardId, Vec<Change>>) -> Result<Vec<(ShardId, i64)>, StoreError> {
        // Every forward moved its source partition's offset, so its shard
        // has changes: the loop below covers every forward.
        let mut forwards = std::mem::take(&mut self.forwards);
        let mut begun = Vec::with_capacity(changes.len());
        for (shard, records) in &changes {
            begun.push(*shard);
            if let Err(e) = self.begin(*shard, records, &forwards.remove(shard).unwrap_or_default()) {
                self.abort(&begun);
                return Err(e);
            }
        }
        let finished: Vec<(ShardId, Result<i64, StoreError>)> = std::thread::scope(|scope| {
            let this = &*self;
            let running: Vec<_> = begun.iter().map(|&shard| (shard, scope.spawn(move || this.finish(shard)))).collect();
            let joined = running.into_iter().map(|(shard, t)| {
                (shard, t.join().unwrap_or_else(|_| Err(StoreError::new("commit", "a commit thread panicked"))))
            });
            joined.collect()
        });
        let mut positions = Vec::with_capacity(finished.len());
        let mut failed = None;
        for (shard, outcome) in finished {
            match outcome {
                Ok(next) => positions.push((shard, next)),
                Err(e) => {
                    self.abort(&[shard]);
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(positions), Err)
    }
}

impl Changelog {
    /// Aborts the open transactions of `shards`. A producer that cannot
    /// abort (fenced, or fatal) is done: the next assignment, or recovery,
    /// makes another.
    fn abort(&mut self, shards: &[ShardId]) {
        for shard in shards {
            if self.producers.get(shard).is_some_and(|p| p.abort_transaction(TRANSACTION_TIMEOUT).is_err()) {
                self.producers.remove(shard);
            }
        }
    }
}

/// The changelog reader's context: reaching the end of the partition is
/// how a restore knows it is done, not an error to log.
struct EndIsNoError;

impl ClientContext for EndIsNoError {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            warn!(%error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNoError {}

/// Brings the local state of `shard` up to its changelog's end: from the
/// local changelog offset when it is valid, else (no local state, or one
/// from another changelog) from the start after dropping the local copy.
/// The shard's changelog producer must be initialized first, so that no
/// transaction of an earlier owner is still open. Returns the records read.
pub(crate) fn catch_up<S: Store>(
    settings: &Settings,
    engine: &Mutex<Engine<S>>,
    shard: ShardId,
    metrics: &IngestMetrics,
) -> Result<u64, Error> {
    let lock = || engine.lock().unwrap_or_else(|p| p.into_inner());
    let consumer: BaseConsumer<EndIsNoError> = client_config(&settings.brokers, &settings.options)
        .set("group.id", format!("{}.restore", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // Never skip ahead: a start below the log's would read from its start.
        .set("auto.offset.reset", "earliest")
        // A partition read to its end ends with a commit marker and no
        // data: do not let the broker wait for more before answering.
        .set("fetch.wait.max.ms", "10")
        .create_with_context(EndIsNoError)
        .map_err(kafka_err("failed to create the changelog reader"))?;
    let topic = &settings.changelog_topic;
    let partition = i32::from(shard);
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
        .map_err(kafka_err(format!("failed to read the end of changelog partition {shard}")))?;
    let local = lock().changelog_position(shard);
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
    metrics.restoring(shard, high - start);
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, shard, "reading the changelog; librdkafka retries"),
            Some(Ok(m)) => {
                restore_into(&mut batch, shard, m.key().unwrap_or_default(), m.payload()).map_err(EngineError::from)?;
                (in_batch, total) = (in_batch + 1, total + 1);
                if in_batch >= RESTORE_CHUNK {
                    lock().restore(std::mem::take(&mut batch))?;
                    in_batch = 0;
                    metrics.restoring(shard, (high - m.offset() - 1).max(0));
                }
            }
        }
    }
    // Read to the end (`read_committed`: nothing is open on this partition).
    batch.changelog.push((shard, high));
    lock().restore(batch)?;
    metrics.restored(shard, total);
    info!(shard, records = total, from = start, to = high, elapsed = ?started.elapsed(), "restored from the changelog");
    Ok(total)
}

/// Checks that the input topics are co-partitioned (the same partition
/// count, so a user's events of every topic share a partition number) and
/// creates the changelog (compacted) and repartition topics with that count
/// when they are missing. Returns the count: the number of shards.
pub(crate) fn prepare_topics(
    settings: &Settings,
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
) -> Result<ShardId, Error> {
    let mut counts = BTreeMap::new();
    for (topic, _) in &settings.inputs {
        counts.insert(topic.as_str(), partitions(consumer, topic)?.len());
    }
    let n = counts.values().copied().max().unwrap_or(1);
    if counts.values().any(|&c| c != n) {
        return Err(Error::Setup(format!(
            "the input topics must have the same partition count, as a user's events of every topic are \
             kept by the owner of one partition number; they have {counts:?}: add partitions to the smaller ones"
        )));
    }
    for (topic, compacted) in [(&settings.changelog_topic, true), (&settings.repartition_topic, false)] {
        match partitions(consumer, topic) {
            Ok(p) if p.len() == n => {}
            Ok(p) => {
                return Err(Error::Setup(format!(
                    "topic `{topic}` has {} partitions but the input topics have {n}; it must have as many \
                     (delete it to let Pulse recreate it, which rebuilds the state from the inputs' retained history)",
                    p.len()
                )))
            }
            Err(Error::Setup(_)) => {
                info!(topic, partitions = n, compacted, "creating an internal topic");
                crate::tools::create_internal_topic(settings, topic, n as i32, compacted)?;
            }
            Err(e) => return Err(e),
        }
    }
    ShardId::try_from(n)
        .map_err(|_| Error::Setup(format!("the input topics have {n} partitions; Pulse supports at most 65535")))
}
