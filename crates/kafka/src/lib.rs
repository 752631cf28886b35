//! Pulse's Kafka side: the consumer loop that feeds the engine.
//!
//! This crate owns: the consumer group on the input topics (no auto-commit;
//! on assignment every partition resumes at the offset stored with the state;
//! on revocation the state and offsets are persisted before the partitions
//! go), the readers of the org registry and targets topics (all partitions,
//! from the beginning, no group), the dead-letter producer (a partition's
//! offset passes a dead letter only once the broker acknowledged it), and the
//! advisory group commits that let lag tools see progress; and scale-out:
//! the changelog (one transactional producer per owned shard), restoring a
//! shard on assignment, the repartition topic for events off their user's
//! partition, and who owns which partition ([`Ownership`]). [`tools`] has
//! the small admin and produce helpers that tests and the load generator use.
//!
//! `rdkafka::` appears in this crate only. It must not depend on RocksDB or
//! HTTP: it sees the engine through `pulse_engine::Store`.

mod changelog;
mod dead_letters;
mod group;
mod metrics;
mod ownership;
mod registry;
pub mod tools;

use std::collections::BTreeMap;
use std::time::Duration;

pub use group::{run, RunStats, Shared, PUBLISH_INTERVAL};
pub use metrics::IngestMetrics;
pub use ownership::{Owner, Ownership};
use pulse_model::InputFormat;
use rdkafka::ClientConfig;

/// What the consumer loop needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub brokers: String,
    pub group_id: String,
    pub inputs: Vec<(String, InputFormat)>,
    pub orgs_topic: String,
    pub targets_topic: String,
    pub dlq_topic: String,
    /// Compacted, one partition per input partition: every shard's changes
    /// and offsets, from which its next owner restores it.
    pub changelog_topic: String,
    /// Valid events that arrived on a partition other than their user's,
    /// keyed by user (consumed like an input topic).
    pub repartition_topic: String,
    /// The HTTP address other instances send a user lookup to (`host:port`).
    pub advertise: String,
    pub session_timeout: Duration,
    /// Longest time between two commits of state and offsets.
    pub commit_interval: Duration,
    /// Messages after which a commit happens sooner.
    pub commit_messages: usize,
    /// `group.instance.id`: static membership, so a restarted instance is
    /// given its partitions back without waiting for the session timeout.
    pub instance_id: Option<String>,
    /// Raw librdkafka settings, applied last (e.g. SASL/SSL).
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Engine(#[from] pulse_engine::EngineError),
    #[error("{0}")]
    Setup(String),
}

pub(crate) fn kafka_err(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}

/// Client settings shared by every client Pulse makes.
pub(crate) fn client_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}
