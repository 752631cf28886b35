//! The dead-letter producer: the original key and value, untouched, with
//! headers naming the reason and the source. `send` queues a letter without
//! waiting; `settle` returns only once the broker acknowledged every letter
//! queued since the last settle, and the loop settles before each commit, so
//! a partition's stored offset never passes an unacknowledged dead letter.
//! (Waiting for each acknowledgement in turn capped a bad stream at ~10
//! messages/s.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulse_model::Rejection;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::warn;

use crate::retry::Backoff;
use crate::{client_config, kafka_err, Error, Settings};

/// The longest a commit waits for the dead letters' acknowledgements.
pub(crate) const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Dead-letter header names.
pub const REASON: &str = "pulse.reason";
pub const DETAIL: &str = "pulse.detail";
pub const SOURCE_TOPIC: &str = "pulse.source.topic";
pub const SOURCE_PARTITION: &str = "pulse.source.partition";
pub const SOURCE_OFFSET: &str = "pulse.source.offset";

/// Delivery reports: how many letters the broker acknowledged, and which
/// (by index) it refused.
#[derive(Default)]
struct Acks {
    acked: AtomicUsize,
    failed: Mutex<Vec<usize>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, letter: usize) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                warn!(error = %e, "dead letter refused; it is sent again before the next commit");
                self.failed.lock().unwrap_or_else(|p| p.into_inner()).push(letter);
            }
        }
    }
}

/// One dead letter, kept until the broker acknowledged it.
struct Letter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
    detail: String,
    topic: String,
    partition: String,
    offset: String,
}

pub(crate) struct DeadLetters {
    producer: BaseProducer<Acks>,
    topic: String,
    /// Letters queued since the last `settle`.
    pending: Vec<Letter>,
}

/// Where a dead letter came from.
pub(crate) struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DeadLetters {
    pub(crate) fn new(settings: &Settings) -> Result<DeadLetters, Error> {
        let producer = client_config(&settings.brokers, &settings.options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(Acks::default())
            .map_err(kafka_err("failed to create the dead-letter producer"))?;
        Ok(DeadLetters { producer, topic: settings.dlq_topic.clone(), pending: Vec::new() })
    }

    /// Queues one dead letter; `settle` waits for its acknowledgement.
    pub(crate) fn send(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, why: &Rejection, source: &Source<'_>) {
        self.pending.push(Letter {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            reason: why.reason.code(),
            detail: why.detail.clone(),
            topic: source.topic.to_owned(),
            partition: source.partition.to_string(),
            offset: source.offset.to_string(),
        });
        self.produce(self.pending.len() - 1);
    }

    /// Hands letter `i` to librdkafka, waiting while its queue is full.
    fn produce(&self, i: usize) {
        let l = &self.pending[i];
        let headers = OwnedHeaders::new()
            .insert(Header { key: REASON, value: Some(l.reason) })
            .insert(Header { key: DETAIL, value: Some(l.detail.as_str()) })
            .insert(Header { key: SOURCE_TOPIC, value: Some(l.topic.as_str()) })
            .insert(Header { key: SOURCE_PARTITION, value: Some(l.partition.as_str()) })
            .insert(Header { key: SOURCE_OFFSET, value: Some(l.offset.as_str()) });
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, i).headers(headers);
        if let Some(k) = &l.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &l.value {
            record = record.payload(v.as_slice());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => {
                    warn!(error = %e, "dead letter not queued; it is sent again before the next commit");
                    self.producer.context().failed.lock().unwrap_or_else(|p| p.into_inner()).push(i);
                    return;
                }
            }
        }
    }

    /// Waits until the broker acknowledged every queued letter, sending
    /// refused ones again with backoff while the broker is away. Gives up
    /// when `deadline` passes, or when `stop` is set and a round did not
    /// settle them: the caller must then not commit, and the messages are
    /// read again.
    pub(crate) fn settle(&mut self, stop: &AtomicBool, deadline: Instant) -> Result<(), Error> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let acks = self.producer.context();
        loop {
            if acks.acked.load(Ordering::Relaxed) == self.pending.len() {
                acks.acked.store(0, Ordering::Relaxed);
                self.pending.clear();
                return Ok(());
            }
            let _ = self.producer.flush(deadline.saturating_duration_since(Instant::now()).min(FLUSH_ROUND));
            let failed = std::mem::take(&mut *acks.failed.lock().unwrap_or_else(|p| p.into_inner()));
            if failed.is_empty() && acks.acked.load(Ordering::Relaxed) == self.pending.len() {
                continue;
            }
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the dead-letter topic `{}` did not acknowledge {} of {} letters; not committing past them",
                    self.topic,
                    self.pending.len() - acks.acked.load(Ordering::Relaxed),
                    self.pending.len()
                )));
            }
            std::thread::sleep(backoff.next_delay().min(deadline.saturating_duration_since(Instant::now())));
            for i in failed {
                self.produce(i);
            }
        }
    }
}

/// The longest one round of waiting for acknowledgements takes.
const FLUSH_ROUND: Duration = Duration::from_secs(10);
