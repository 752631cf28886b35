//! Small admin and produce helpers for tests, scripts and the load generator.
//! They block the calling thread; do not use them on an async worker.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{client_config, kafka_err, Error};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A message to produce: key and value (`None` value: a tombstone).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

fn config(brokers: &str) -> rdkafka::ClientConfig {
    let mut c = client_config(brokers, &BTreeMap::new());
    // Needed by `assign` in librdkafka; these readers never join or commit.
    c.set("group.id", "pulse.tools").set("enable.auto.commit", "false");
    c
}

type Admin = AdminClient<rdkafka::client::DefaultClientContext>;

/// Runs one admin request on a new client and checks every topic's result
/// (`fine`: an error code that counts as success); `verb` names the request
/// in errors ("create", "delete").
fn admin_request<F: std::future::Future<Output = rdkafka::error::KafkaResult<Vec<rdkafka::admin::TopicResult>>>>(
    client: rdkafka::ClientConfig,
    name: &str,
    verb: &str,
    fine: Option<RDKafkaErrorCode>,
    request: impl FnOnce(&Admin) -> F,
) -> Result<(), Error> {
    let admin: Admin = client.create().map_err(kafka_err("failed to create an admin client"))?;
    let results =
        futures_executor::block_on(request(&admin)).map_err(kafka_err(format!("failed to {verb} topic `{name}`")))?;
    for r in results {
        match r {
            Err((_, code)) if Some(code) == fine => {}
            r => r.map(drop).map_err(|(t, code)| Error::Setup(format!("failed to {verb} topic `{t}`: {code}")))?,
        }
    }
    Ok(())
}

/// Creates a topic (replication factor 1); `compacted` for registry topics.
pub fn create_topic(brokers: &str, name: &str, partitions: i32, compacted: bool) -> Result<(), Error> {
    create(config(brokers), name, partitions, TopicReplication::Fixed(1), compacted, None)
}

/// Creates one of Pulse's own topics with the broker's default replication
/// factor (`default.replication.factor`), with the client settings of Pulse.
/// Instances starting together race to create it, with the same partition
/// count: one that finds it created meanwhile goes on.
pub(crate) fn create_internal_topic(
    s: &crate::Settings,
    name: &str,
    partitions: i32,
    compacted: bool,
) -> Result<(), Error> {
    let client = client_config(&s.brokers, &s.options);
    let exists = Some(RDKafkaErrorCode::TopicAlreadyExists);
    create(client, name, partitions, TopicReplication::Fixed(-1), compacted, exists)
}

fn create(
    client: rdkafka::ClientConfig,
    name: &str,
    partitions: i32,
    replication: TopicReplication<'_>,
    compacted: bool,
    fine: Option<RDKafkaErrorCode>,
) -> Result<(), Error> {
    let mut topic = NewTopic::new(name, partitions, replication);
    if compacted {
        topic = topic.set("cleanup.policy", "compact");
    }
    admin_request(client, name, "create", fine, |admin| admin.create_topics([&topic], &AdminOptions::new()))
}

/// Deletes a topic (tests of a topic deleted under a running Pulse).
pub fn delete_topic(brokers: &str, name: &str) -> Result<(), Error> {
    admin_request(config(brokers), name, "delete", None, |admin| admin.delete_topics(&[name], &AdminOptions::new()))
}

/// Deletes every topic whose name starts with `prefix` (a bench's topics,
/// and the internal topics of the groups it ran, so that a broker reused
/// by the next run is not compacting them meanwhile).
pub fn delete_topics_with_prefix(brokers: &str, prefix: &str) -> Result<(), Error> {
    let consumer: BaseConsumer = config(brokers).create().map_err(kafka_err("failed to create a client"))?;
    let md = consumer.fetch_metadata(None, TIMEOUT).map_err(kafka_err("failed to list the topics"))?;
    for topic in md.topics().iter().map(|t| t.name()).filter(|t| t.starts_with(prefix)) {
        delete_topic(brokers, topic)?;
    }
    Ok(())
}

/// A producer for tools and tests: keys pick partitions as Kafka's Java
/// client does; `send` waits only when the local queue is full. A message
/// whose delivery fails (a broker restart can fail one) is sent again at
/// `flush`, so that what a test or the load generator says it produced is
/// what the topic holds.
pub struct Producer {
    inner: BaseProducer<Undelivered>,
}

/// Keeps the messages whose delivery failed, to be sent again.
#[derive(Default)]
struct Undelivered(std::sync::Mutex<Vec<Resend>>);

/// A message to send again: (topic, key, value).
type Resend = (String, Option<Vec<u8>>, Option<Vec<u8>>);

impl rdkafka::ClientContext for Undelivered {}

impl rdkafka::producer::ProducerContext for Undelivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            tracing::warn!(error = %e, topic = m.topic(), "a message was not delivered; it is sent again at flush");
            let resend = (m.topic().to_owned(), m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(resend);
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer that compresses with lz4.
    pub fn new(brokers: &str) -> Result<Producer, Error> {
        Producer::compressing(brokers, "lz4")
    }

    /// A producer that compresses with `codec` (`compression.type`: none,
    /// gzip, snappy, lz4, zstd).
    pub fn compressing(brokers: &str, codec: &str) -> Result<Producer, Error> {
        let inner = config(brokers)
            // Retries across a broker restart neither duplicate nor reorder.
            .set("enable.idempotence", "true")
            // A key lands where the platform's Java producers put it (murmur2,
            // not librdkafka's default CRC32); null keys spread at random.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", codec)
            .create_with_context(Undelivered::default())
            .map_err(kafka_err("failed to create a producer"))?;
        Ok(Producer { inner })
    }

    /// Queues one message (`None` value: a tombstone).
    pub fn send(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), Error> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => {
                    self.inner.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.inner.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(kafka_err(format!("failed to produce to `{topic}`"))(e)),
            }
        }
    }

    /// Waits for every queued message's acknowledgement, sending again
    /// those whose delivery failed (a few times, then it says how many).
    pub fn flush(&self) -> Result<(), Error> {
        for _ in 0..5 {
            self.inner.flush(Duration::from_secs(120)).map_err(kafka_err("failed to flush the producer"))?;
            let failed = std::mem::take(&mut *self.inner.context().0.lock().unwrap_or_else(|p| p.into_inner()));
            if failed.is_empty() {
                return Ok(());
            }
            for (topic, key, value) in &failed {
                self.send(topic, key.as_deref(), value.as_deref())?;
            }
        }
        Err(Error::Setup("messages were still not delivered after 5 attempts; is the broker up?".into()))
    }
}

/// Produces messages (key, value; `None` value is a tombstone) and waits for
/// every acknowledgement.
pub fn produce(brokers: &str, topic: &str, messages: &[KeyValue]) -> Result<(), Error> {
    produce_compressed(brokers, topic, messages, "lz4")
}

/// [`produce`], compressed with `codec`.
pub fn produce_compressed(brokers: &str, topic: &str, messages: &[KeyValue], codec: &str) -> Result<(), Error> {
    let producer = Producer::compressing(brokers, codec)?;
    for (key, value) in messages {
        producer.send(topic, key.as_deref(), value.as_deref())?;
    }
    producer.flush()
}

/// A transaction left open on one partition, as a producer that stopped
/// between its records and its commit leaves one (or a committed one whose
/// markers a broker restart delays): `read_committed` readers see the
/// partition's end stop at its record until it is aborted.
pub struct OpenTransaction {
    producer: BaseProducer,
}

impl std::fmt::Debug for OpenTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTransaction").finish_non_exhaustive()
    }
}

impl OpenTransaction {
    /// Writes a record (key and value: a compacted topic takes none
    /// without a key) to `partition` of `topic` in a new transaction of
    /// `transactional_id` and leaves it open (for up to a minute).
    pub fn begin(
        brokers: &str,
        transactional_id: &str,
        topic: &str,
        partition: i32,
        (key, value): (&[u8], &[u8]),
    ) -> Result<Self, Error> {
        let producer: BaseProducer = config(brokers)
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000")
            .create()
            .map_err(kafka_err("failed to create a transactional producer"))?;
        producer.init_transactions(TIMEOUT).map_err(kafka_err("failed to initialize transactions"))?;
        producer.begin_transaction().map_err(kafka_err("failed to begin a transaction"))?;
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).partition(partition).key(key).payload(value))
            .map_err(|(e, _)| kafka_err(format!("failed to produce to `{topic}`"))(e))?;
        producer.flush(TIMEOUT).map_err(kafka_err("failed to flush the producer"))?;
        Ok(OpenTransaction { producer })
    }

    /// Aborts the transaction: its record is never read `read_committed`.
    pub fn abort(self) -> Result<(), Error> {
        self.producer.abort_transaction(TIMEOUT).map_err(kafka_err("failed to abort the transaction"))
    }
}

/// The high watermark (next offset) of every partition of a topic.
pub fn high_watermarks(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, Error> {
    let consumer: BaseConsumer = config(brokers).create().map_err(kafka_err("failed to create a consumer"))?;
    let mut out = BTreeMap::new();
    for p in crate::registry::partitions(&consumer, topic)? {
        let (_, high) =
            consumer.fetch_watermarks(topic, p, TIMEOUT).map_err(kafka_err("failed to fetch watermarks"))?;
        out.insert(p, high);
    }
    Ok(out)
}

/// The offsets a group committed on a topic's partitions (absent: none).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>, Error> {
    let consumer: BaseConsumer =
        config(brokers).set("group.id", group).create().map_err(kafka_err("failed to create a consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in crate::registry::partitions(&consumer, topic)? {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT).map_err(kafka_err("failed to read committed offsets"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some((e.partition(), n)),
            _ => None,
        })
        .collect())
}

/// One message read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every committed message of a topic (`read_committed`: what Pulse wrote
/// in transactions that aborted is not there), partition by partition.
pub fn read_all(brokers: &str, topic: &str) -> Result<Vec<Record>, Error> {
    let ends = high_watermarks(brokers, topic)?;
    let consumer: BaseConsumer = config(brokers)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(kafka_err("failed to create a consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).map_err(kafka_err("failed to build an assignment"))?;
    }
    consumer.assign(&tpl).map_err(kafka_err("failed to assign"))?;
    // A partition's end counts transaction markers and aborted records,
    // which are never delivered: it is read when the consumer says so.
    let mut unread: std::collections::BTreeSet<i32> =
        ends.iter().filter(|(_, high)| **high > 0).map(|(p, _)| *p).collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !unread.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!("reading `{topic}`: partitions {unread:?} not read to their end")));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(KafkaError::PartitionEOF(p))) => {
                unread.remove(&p);
            }
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The consume ceiling: reads every message of a topic from the beginning
/// with one plain consumer and does nothing with them. Returns the count.
pub fn consume_all(brokers: &str, topic: &str) -> Result<u64, Error> {
    let ends = high_watermarks(brokers, topic)?;
    let consumer: BaseConsumer = config(brokers)
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .create()
        .map_err(kafka_err("failed to create a consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).map_err(kafka_err("failed to build an assignment"))?;
    }
    consumer.assign(&tpl).map_err(kafka_err("failed to assign"))?;
    let total: i64 = ends.values().sum();
    let mut read = 0i64;
    while read < total {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => return Err(kafka_err("failed while consuming")(e)),
            None => return Err(Error::Setup(format!("no message for 10s after {read} of {total}"))),
        }
    }
    Ok(read as u64)
}
