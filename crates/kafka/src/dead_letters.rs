//! The dead-letter producer: the original key and value, untouched, with
//! headers naming the reason and the source. `send` returns only once the
//! broker acknowledged the record, so the caller can then pass the offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pulse_model::Rejection;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::warn;

use crate::{client_config, kafka_err, Error, Settings};

/// Dead-letter header names.
pub const REASON: &str = "pulse.reason";
pub const DETAIL: &str = "pulse.detail";
pub const SOURCE_TOPIC: &str = "pulse.source.topic";
pub const SOURCE_PARTITION: &str = "pulse.source.partition";
pub const SOURCE_OFFSET: &str = "pulse.source.offset";

#[derive(Default)]
struct Acks {
    last: Mutex<Option<Result<(), String>>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }
}

pub(crate) struct DeadLetters {
    producer: BaseProducer<Acks>,
    topic: String,
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
            // Each dead letter is awaited on its own: do not wait to batch it.
            .set("linger.ms", "0")
            .create_with_context(Acks::default())
            .map_err(kafka_err("failed to create the dead-letter producer"))?;
        Ok(DeadLetters { producer, topic: settings.dlq_topic.clone() })
    }

    /// Writes one dead letter and waits for its acknowledgement, retrying
    /// while the broker is away. Gives up only when `stop` is set; the
    /// message's offset then stays where it was and it is read again later.
    pub(crate) fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        why: &Rejection,
        source: &Source<'_>,
        stop: &AtomicBool,
    ) -> Result<(), Error> {
        let (partition, offset) = (source.partition.to_string(), source.offset.to_string());
        let mut backoff = Duration::from_millis(100);
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header { key: REASON, value: Some(why.reason.code()) })
                .insert(Header { key: DETAIL, value: Some(why.detail.as_str()) })
                .insert(Header { key: SOURCE_TOPIC, value: Some(source.topic) })
                .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_str()) });
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(v) = value {
                record = record.payload(v);
            }
            *self.producer.context().last.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let outcome = match self.producer.send(record) {
                Err((e, _)) => Err(e.to_string()),
                Ok(()) => {
                    let _ = self.producer.flush(Duration::from_secs(10));
                    self.producer
                        .context()
                        .last
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .unwrap_or_else(|| Err("no acknowledgement within 10s".into()))
                }
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "dead letter not acknowledged; retrying");
                    if stop.load(Ordering::Relaxed) {
                        return Err(Error::Setup(format!(
                            "stopped before the dead-letter topic `{}` acknowledged",
                            self.topic
                        )));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
