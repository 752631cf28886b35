//! One round of the consumer loop: the messages the consumer has ready
//! (up to [`BATCH`], one engine lock), each routed (parsed and applied,
//! found dead or ignored, or handed back to be forwarded to its user's
//! shard), and each run of one partition's messages noting its next offset
//! once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pulse_engine::{Disposition, Engine, Store};
use pulse_model::{InputFormat, Millis, Reason, Rejection};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use crate::changelog::{Forward, FORMAT_HEADER};
use crate::dead_letters::{Letter, Source};
use crate::group::{fatal, log_transient};
use crate::rebalance::GroupContext;
use crate::Error;

/// Messages taken from the consumer per round (one lock of the engine).
const BATCH: usize = 1024;

/// One round's messages: what the consumer had ready, up to [`BATCH`],
/// after waiting for the first at most 100 ms.
pub(crate) struct Polled<'c> {
    pub(crate) messages: Vec<BorrowedMessage<'c>>,
    /// A poll returned an error (logged; librdkafka retries).
    pub(crate) errored: bool,
    pub(crate) fatal: Option<Error>,
}

pub(crate) fn poll_batch<S: Store + Send + 'static>(consumer: &BaseConsumer<GroupContext<S>>) -> Polled<'_> {
    let mut polled = Polled { messages: Vec::new(), errored: false, fatal: None };
    let rebalances = &consumer.context().rebalances;
    let mut wait = Duration::from_millis(100);
    while polled.messages.len() < BATCH {
        let before = rebalances.load(Ordering::Relaxed);
        let next = consumer.poll(wait);
        if rebalances.load(Ordering::Relaxed) != before {
            // Polled before a rebalance: persisted-and-released or resumed
            // at the stored offsets, so read again by whoever owns them.
            polled.messages.clear();
        }
        match next {
            None => break,
            Some(Ok(msg)) => polled.messages.push(msg),
            Some(Err(e)) => {
                polled.fatal = fatal(consumer);
                polled.errored = true;
                log_transient(&e);
                break;
            }
        }
        wait = Duration::ZERO;
    }
    polled
}

/// Consecutive messages of one partition in a round: its next offset is
/// looked up once and recorded once, not per message (each took copies of
/// the topic name and lookups by it in three maps).
pub(crate) struct Run<'m> {
    pub(crate) topic: &'m str,
    pub(crate) partition: i32,
    /// Co-partitioned with the shards: the engine keeps its offset.
    pub(crate) aligned: bool,
    /// The next offset to handle (`None`: nothing consumed yet).
    pub(crate) next: Option<i64>,
    /// Whether a message of the run was handled (its offset moves).
    pub(crate) handled: bool,
}

impl<'m> Run<'m> {
    pub(crate) fn start<S: Store>(engine: &Engine<S>, topic: &'m str, partition: i32, aligned: bool) -> Run<'m> {
        Run { topic, partition, aligned, next: engine.next_offset(topic, partition), handled: false }
    }

    pub(crate) fn finish<S: Store>(self, engine: &mut Engine<S>) {
        if let (true, true, Some(next)) = (self.aligned, self.handled, self.next) {
            engine.set_next_offset(self.topic, self.partition, next);
        }
    }
}

/// What became of one input message.
pub(crate) struct Routed {
    /// Its format (for the counts).
    pub(crate) format: InputFormat,
    /// `None` if it was forwarded.
    pub(crate) disposition: Option<Disposition>,
    pub(crate) forward: Option<Forward>,
    /// Its dead letter, if it is one.
    pub(crate) letter: Option<Letter>,
}

/// Parses one input message and applies it, or finds it dead or ignored,
/// or hands it back to be forwarded to its user's shard: always when its
/// partition is not `aligned` with the shards (the owner of partition `p`
/// of such a topic need not own shard `p`).
pub(crate) fn route<S: Store + Send + 'static>(
    engine: &mut Engine<S>,
    msg: &BorrowedMessage<'_>,
    format: Option<InputFormat>,
    now: Millis,
    aligned: bool,
) -> Result<Routed, pulse_engine::EngineError> {
    let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
    // The repartition topic carries each message's format in a header.
    let format = format.map_or_else(|| repartitioned_format(msg), Ok);
    let label = *format.as_ref().unwrap_or(&InputFormat::PulseV1);
    let payload = msg.payload().unwrap_or_default();
    let disposition = match format.map_err(Disposition::Dead).and_then(|f| engine.accept(f, msg.key(), payload, now)) {
        Err(disposition) => disposition,
        Ok(ev) if aligned && i32::from(engine.shard_of(&ev.user)) == partition => engine.apply(&ev)?,
        Ok(ev) => {
            if aligned {
                // Its time counts in this partition's newest event time, as
                // an applied one's would (the dedup watermark).
                engine.forwarded(&ev);
            }
            let to = i32::from(engine.shard_of(&ev.user));
            let forward = Forward { user: ev.user.to_string(), to, format: label, value: payload.to_vec() };
            return Ok(Routed { format: label, disposition: None, forward: Some(forward), letter: None });
        }
    };
    let letter = match &disposition {
        Disposition::Dead(why) => {
            Some(Letter::new(msg.key(), msg.payload(), why, Source { topic: topic.to_owned(), partition, offset }))
        }
        _ => None,
    };
    Ok(Routed { format: label, disposition: Some(disposition), forward: None, letter })
}

/// The format of a message on the repartition topic, from its header.
fn repartitioned_format(msg: &BorrowedMessage<'_>) -> Result<InputFormat, Rejection> {
    let header = msg.headers().and_then(|h| h.iter().find(|h| h.key == FORMAT_HEADER)).and_then(|h| h.value);
    let name = header.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
    name.parse().map_err(|_| {
        Rejection::new(Reason::InvalidField, format!("no valid `{FORMAT_HEADER}` header on a repartitioned message"))
    })
}
