//! Dead letters: the original key and value, untouched, with headers naming
//! the reason and the source. They are written in the changelog
//! transaction of the shard whose offsets pass them
//! ([`crate::changelog`]), so that for `read_committed` readers each bad
//! message is on the dead-letter topic exactly once, whatever crashes:
//! a transaction that does not commit takes its letters and its offsets
//! back together, and the messages are read again.
//!
//! The registry topics are read whole by every instance at every start,
//! so their letters are written by one instance only, the owner of the
//! shard numbered like the registry partition, and that shard stores how
//! far its letters were written (a registry "offset", without events).

use pulse_model::Rejection;
use rdkafka::message::{Header, OwnedHeaders};

/// Dead-letter header names.
pub const REASON: &str = "pulse.reason";
pub const DETAIL: &str = "pulse.detail";
pub const SOURCE_TOPIC: &str = "pulse.source.topic";
pub const SOURCE_PARTITION: &str = "pulse.source.partition";
pub const SOURCE_OFFSET: &str = "pulse.source.offset";

/// Where a dead letter came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One dead letter, waiting for its transaction.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: &'static str,
    pub detail: String,
    pub source: Source,
}

impl Letter {
    pub(crate) fn new(key: Option<&[u8]>, value: Option<&[u8]>, why: &Rejection, source: Source) -> Letter {
        Letter {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            reason: why.reason.code(),
            detail: why.detail.clone(),
            source,
        }
    }

    pub(crate) fn headers(&self) -> OwnedHeaders {
        let (partition, offset) = (self.source.partition.to_string(), self.source.offset.to_string());
        OwnedHeaders::new()
            .insert(Header { key: REASON, value: Some(self.reason) })
            .insert(Header { key: DETAIL, value: Some(self.detail.as_str()) })
            .insert(Header { key: SOURCE_TOPIC, value: Some(self.source.topic.as_str()) })
            .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_str()) })
    }
}
