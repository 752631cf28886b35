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
//!   input partitions' next offsets, the events its input partitions
//!   forwarded to the repartition topic, and their dead letters. Only then
//!   does the local store take the batch, with the changelog offset after it;
//! - on assignment, and after any failed commit, each owned shard catches
//!   up from its changelog (`restore.rs`) before any event is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use pulse_engine::{Change, ShardId, StoreError};
use pulse_model::InputFormat;
use rdkafka::consumer::{BaseConsumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::info;

use crate::dead_letters::Letter;
use crate::registry::{partitions, METADATA_TIMEOUT};
use crate::{client_config, kafka_err, Error, Settings};

/// Header of a repartitioned message: the input format of its value.
pub const FORMAT_HEADER: &str = "pulse.format";

/// How long a transaction may take before the broker aborts it.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The changelog's records are compressed by the producer (and stored so):
/// user states and id records compress well, and the broker on the same
/// cores writes fewer bytes.
const CHANGELOG_COMPRESSION: &str = "lz4";

/// One shard's producer's queue, in KiB: its share of `outgoing`, and
/// never less than the largest record (an id record is under 0.5 MB).
fn queue_kib(outgoing: usize, shards: usize) -> usize {
    ((outgoing / shards.max(1)) >> 10).max(2048)
}

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

/// What a shard's next transaction writes besides its changes: the
/// messages its partitions passed that go elsewhere.
#[derive(Default)]
struct Outgoing {
    forwards: Vec<Forward>,
    letters: Vec<Letter>,
}

/// What the loop passed since the last commit that the next commit's
/// transactions carry besides the shards' changes.
#[derive(Default)]
pub(crate) struct Outbox {
    /// By source shard: forwards and dead letters.
    outgoing: BTreeMap<ShardId, Outgoing>,
    /// Partitions of input topics that are not co-partitioned with the
    /// shards: their forwards and dead letters, and their next offsets.
    /// No shard holds these offsets: they are committed to the consumer
    /// group inside the transaction that carries the forwards (Kafka's
    /// exactly-once v2: the group coordinator refuses them from a member
    /// of an older generation, so a zombie cannot commit them).
    carried: Outgoing,
    carried_offsets: BTreeMap<(String, i32), i64>,
}

impl Outbox {
    /// Queues a forward or a dead letter (or neither) for the transaction
    /// of shard `from` (its source partition's).
    pub(crate) fn pass(&mut self, from: ShardId, forward: Option<Forward>, letter: Option<Letter>) {
        if forward.is_some() || letter.is_some() {
            let out = self.outgoing.entry(from).or_default();
            out.forwards.extend(forward);
            out.letters.extend(letter);
        }
    }

    /// A message of a partition not co-partitioned with the shards was
    /// handled (its event, if valid, forwarded; if not, its dead letter
    /// queued): `next` is the offset to commit for its partition.
    pub(crate) fn carry(
        &mut self,
        topic: &str,
        partition: i32,
        next: i64,
        forward: Option<Forward>,
        letter: Option<Letter>,
    ) {
        self.carried.forwards.extend(forward);
        self.carried.letters.extend(letter);
        self.carried_offsets.insert((topic.to_owned(), partition), next);
    }

    /// The next offset of such a partition, if one was handled since the last commit.
    pub(crate) fn carried_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.carried_offsets.get(&(topic.to_owned(), partition)).copied()
    }

    /// The carried partitions' offsets this outbox commits to the group.
    pub(crate) fn carried_offsets(&self) -> BTreeMap<(String, i32), i64> {
        self.carried_offsets.clone()
    }

    /// Drops the forwards and dead letters of a batch that was never
    /// committed (its messages are consumed again).
    pub(crate) fn discard(&mut self) {
        *self = Outbox::default();
    }
}

/// The changelog writer of the shards this instance owns.
pub(crate) struct Changelog {
    settings: Settings,
    producers: BTreeMap<ShardId, BaseProducer<Delivered>>,
}

fn store_err(context: String) -> impl FnOnce(KafkaError) -> StoreError {
    move |e| StoreError::new(context, e)
}

impl Changelog {
    pub(crate) fn new(settings: &Settings) -> Changelog {
        Changelog { settings: settings.clone(), producers: BTreeMap::new() }
    }

    /// Takes over the given shards' changelog partitions (fencing any
    /// previous owner) and lets go of every other.
    pub(crate) fn own(&mut self, shards: &BTreeSet<ShardId>) -> Result<(), Error> {
        self.producers.retain(|s, _| shards.contains(s));
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
                .set("compression.type", CHANGELOG_COMPRESSION)
                // The budget's share for outgoing records, split over the
                // shards; a full queue waits for deliveries (`send`).
                .set("queue.buffering.max.kbytes", queue_kib(s.memory.outgoing, shards.len()).to_string())
                .create_with_context(context)
                .map_err(kafka_err("failed to create a changelog producer"))?;
            producer
                .init_transactions(METADATA_TIMEOUT)
                .map_err(kafka_err(format!("failed to take over changelog partition {shard}")))?;
            self.producers.insert(shard, producer);
        }
        Ok(())
    }

    /// Whether this instance owns `shard` now (holds its producer).
    pub(crate) fn owns(&self, shard: ShardId) -> bool {
        self.producers.contains_key(&shard)
    }

    /// The owned shard whose transaction carries the partitions that are
    /// not co-partitioned: the lowest (any owned one would do).
    fn carrier(&self) -> Result<ShardId, StoreError> {
        self.producers.keys().next().copied().ok_or_else(|| {
            StoreError::new(
                "failed to commit the offsets of partitions not co-partitioned with the shards",
                "this instance owns no shard to carry them (a rebalance is under way)",
            )
        })
    }

    fn producer(&self, shard: ShardId) -> Result<&BaseProducer<Delivered>, StoreError> {
        self.producers.get(&shard).ok_or_else(|| {
            StoreError::new(
                format!("failed to write changelog partition {shard}"),
                "this instance does not own the partition now (a rebalance took it)",
            )
        })
    }

    /// Opens a shard's transaction and hands it the shard's changes,
    /// forwards and dead letters (not yet acknowledged), and `offsets` for the group.
    fn begin(
        &self,
        shard: ShardId,
        changes: &[Change],
        out: &Outgoing,
        offsets: Option<(&TopicPartitionList, Option<&ConsumerGroupMetadata>)>,
    ) -> Result<(), StoreError> {
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
        for f in &out.forwards {
            let headers = OwnedHeaders::new().insert(Header { key: FORMAT_HEADER, value: Some(f.format.name()) });
            let record = BaseRecord::to(&s.repartition_topic)
                .partition(f.to)
                .key(f.user.as_bytes())
                .payload(f.value.as_slice())
                .headers(headers);
            send(producer, record).map_err(store_err(what.clone()))?;
        }
        for l in &out.letters {
            let mut record = BaseRecord::to(&s.dlq_topic).headers(l.headers());
            if let Some(k) = &l.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &l.value {
                record = record.payload(v.as_slice());
            }
            send(producer, record).map_err(store_err(what.clone()))?;
        }
        if let Some((offsets, group)) = offsets {
            let group = group.ok_or_else(|| StoreError::new(what.clone(), "not in a consumer group"))?;
            producer.send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT).map_err(store_err(what))?;
        }
        Ok(())
    }

    /// Waits for a begun transaction's acknowledgements and commits it;
    /// returns the changelog offset after its records (`None` when it held
    /// none: a carrier of forwards and group offsets only).
    fn finish(&self, shard: ShardId, records: usize) -> Result<Option<i64>, StoreError> {
        let what = format!("failed to write changelog partition {shard}");
        let producer = self.producer(shard)?;
        producer.flush(TRANSACTION_TIMEOUT).map_err(store_err(what.clone()))?;
        if let Some(e) = producer.context().refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(StoreError::new(what, e));
        }
        producer.commit_transaction(TRANSACTION_TIMEOUT).map_err(store_err(what.clone()))?;
        let last = producer.context().last.lock().unwrap_or_else(|p| p.into_inner()).take();
        if records == 0 {
            return Ok(None);
        }
        // The stored position is the next offset after this transaction's records.
        last.map(|l| Some(l + 1)).ok_or_else(|| StoreError::new(what, "no changelog record was acknowledged"))
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

impl Changelog {
    /// Writes one commit: each shard's changes with what the outbox holds
    /// for it, one transaction per shard, and the carried partitions'
    /// offsets to the group (`group`: its metadata at the commit) in the
    /// carrier's. Returns each shard's changelog offset after its records.
    ///
    /// Every shard's transaction is opened and filled first; then all are
    /// committed at once, one thread each: a commit waits for the broker to
    /// write its markers, and one shard after another would add those waits up.
    pub(crate) fn write(
        &mut self,
        mut changes: BTreeMap<ShardId, Vec<Change>>,
        outbox: Outbox,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<Vec<(ShardId, i64)>, StoreError> {
        // Every forward and letter moved its source partition's offset, so
        // its shard has changes; the carrier may have none of its own.
        let Outbox { mut outgoing, carried, carried_offsets } = outbox;
        let mut offsets = None;
        if !carried_offsets.is_empty() {
            let carrier = self.carrier()?;
            changes.entry(carrier).or_default();
            let Outgoing { mut forwards, mut letters } = carried;
            let out = outgoing.entry(carrier).or_default();
            out.forwards.append(&mut forwards);
            out.letters.append(&mut letters);
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in &carried_offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(store_err("failed to list the offsets to commit".into()))?;
            }
            offsets = Some((carrier, tpl));
        }
        // Per shard: how many records it wrote. Each shard's records are
        // dropped once produced (the producer holds its own copies).
        let mut begun: Vec<(ShardId, usize)> = Vec::with_capacity(changes.len());
        for (shard, records) in changes {
            begun.push((shard, records.len()));
            let group_offsets = offsets.as_ref().filter(|(c, _)| *c == shard).map(|(_, tpl)| (tpl, group.as_ref()));
            if let Err(e) = self.begin(shard, &records, &outgoing.remove(&shard).unwrap_or_default(), group_offsets) {
                self.abort(&begun.iter().map(|(s, _)| *s).collect::<Vec<_>>());
                return Err(e);
            }
        }
        let finished: Vec<(ShardId, Result<Option<i64>, StoreError>)> = std::thread::scope(|scope| {
            let this = &*self;
            let running: Vec<_> = begun
                .iter()
                .map(|&(shard, records)| (shard, scope.spawn(move || this.finish(shard, records))))
                .collect();
            let joined = running.into_iter().map(|(shard, t)| {
                (shard, t.join().unwrap_or_else(|_| Err(StoreError::new("commit", "a commit thread panicked"))))
            });
            joined.collect()
        });
        let mut positions = Vec::with_capacity(finished.len());
        let mut failed = None;
        for (shard, outcome) in finished {
            match outcome {
                Ok(next) => positions.extend(next.map(|n| (shard, n))),
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

/// The shard layout: how many shards, and which topics are co-partitioned
/// with them (as many partitions as shards, so that partition `p` of each
/// is owned with shard `p`: the group's `range` assignor gives a member the
/// same partition numbers of every topic of one count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub shards: ShardId,
    /// The input topics with `shards` partitions, and the repartition topic.
    pub aligned: BTreeSet<String>,
}

/// Decides the shard count (`settings.shards`, default the largest input
/// partition count; never fewer, so that a member given a partition of any
/// input also owns a shard) and creates the changelog (compacted) and
/// repartition topics with that count when they are missing.
pub(crate) fn prepare_topics(
    settings: &Settings,
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
) -> Result<Layout, Error> {
    let mut counts = BTreeMap::new();
    for (topic, _) in &settings.inputs {
        counts.insert(topic.as_str(), partitions(consumer, topic)?.len());
    }
    let largest = counts.values().copied().max().unwrap_or(1);
    let n = settings.shards.map_or(largest, usize::from);
    if n < largest {
        return Err(Error::Setup(format!(
            "`store.shards` is {n}, fewer than the input topics' partitions ({counts:?}); it must be at least \
             {largest}, or be left unset"
        )));
    }
    let shards = ShardId::try_from(n).map_err(|_| {
        Error::Setup(format!("{n} shards (the input topics' partitions); Pulse supports at most 65535"))
    })?;
    for (topic, compacted) in [(&settings.changelog_topic, true), (&settings.repartition_topic, false)] {
        match partitions(consumer, topic) {
            Ok(p) if p.len() == n => {}
            Ok(p) => {
                return Err(Error::Setup(format!(
                    "topic `{topic}` has {} partitions but Pulse runs {n} shards; it must have as many \
                     (delete it to let Pulse recreate it, which rebuilds the state from the inputs' retained history)",
                    p.len()
                )))
            }
            Err(Error::MissingTopic(_)) => {
                info!(topic, partitions = n, compacted, "creating an internal topic");
                crate::tools::create_internal_topic(settings, topic, n as i32, compacted)?;
            }
            Err(e) => return Err(e),
        }
    }
    let mut aligned: BTreeSet<String> =
        counts.into_iter().filter(|&(_, c)| c == n).map(|(t, _)| t.to_owned()).collect();
    aligned.insert(settings.repartition_topic.clone());
    if aligned.len() <= settings.inputs.len() {
        info!(
            shards = n,
            ?aligned,
            "input topics with another partition count reach their users' shards through the repartition topic"
        );
    }
    Ok(Layout { shards, aligned })
}
