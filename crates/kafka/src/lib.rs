//! Pulse's Kafka side: the consumer loop that feeds the engine.
//!
//! This crate owns: the consumer group on the input topics (no auto-commit;
//! on assignment every partition resumes at the offset stored with the state;
//! on revocation the state and offsets are persisted before the partitions
//! go), the readers of the org registry and targets topics (all partitions,
//! from the beginning, no group), dead letters (written in the transaction
//! that passes their offsets: exactly once), and the advisory group commits
//! that let lag tools see progress; and scale-out: the changelog (one
//! transactional producer per owned shard, written with the store's batch
//! on the commit thread while the loop goes on: `committer`), restoring a
//! shard on assignment, the repartition topic for events off their user's
//! partition, and who owns which partition ([`Ownership`]). By job: `group`
//! is the loop, `round` one round of its messages, `rebalance` what an
//! assignment or a revocation does, `committer` the thread that writes each
//! commit, `stall` the loop while a fault is waited out (never an exit),
//! `changelog` the state that moves with a shard, `publication` when
//! committed state is shown. [`tools`] has the small admin and produce
//! helpers that tests and the load generator use.
//!
//! `rdkafka::` appears in this crate only. It must not depend on RocksDB or
//! HTTP: it sees the engine through `pulse_engine::Store`.

mod changelog;
mod committer;
mod dead_letters;
mod group;
mod metrics;
mod ownership;
mod publication;
mod rebalance;
mod registry;
mod restore;
mod retry;
mod round;
mod stall;
pub mod tools;

use std::collections::BTreeMap;
use std::time::Duration;

pub use group::{run, RunStats, Shared, LONGEST_DRAIN};
pub use metrics::IngestMetrics;
pub use ownership::{Owner, Ownership};
pub use publication::PUBLISH_INTERVAL;
use pulse_engine::ShardId;
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
    /// The course catalogue (compacted, read whole like the registry).
    pub courses_topic: String,
    /// The capacity-building plans (compacted, read whole like the registry).
    pub plans_topic: String,
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
    /// `max.poll.interval.ms`: longer than [`LONGEST_DRAIN`], the longest
    /// the loop waits on the brokers without polling.
    pub max_poll_interval: Duration,
    /// Longest time between two commits of state and offsets.
    pub commit_interval: Duration,
    /// Messages after which a commit happens sooner.
    pub commit_messages: usize,
    /// `group.instance.id`: static membership, so a restarted instance is
    /// given its partitions back without waiting for the session timeout.
    pub instance_id: Option<String>,
    /// The shard count: partitions of the changelog and repartition topics
    /// (`None`: the largest input partition count; never fewer).
    pub shards: Option<ShardId>,
    /// Raw librdkafka settings, applied last (e.g. SASL/SSL).
    pub options: BTreeMap<String, String>,
    /// The loop's shares of the memory budget.
    pub memory: Memory,
}

/// The memory the loop may hold, in bytes: its shares of the one budget
/// (`store.memory_budget_mib`; docs/ARCHITECTURE.md, "Memory").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Messages the consumer prefetched (`queued.max.messages.kbytes`).
    pub prefetch: usize,
    /// Changelog records, forwards and dead letters on their way to the
    /// brokers, over every shard's producer (`queue.buffering.max.kbytes`).
    pub outgoing: usize,
    /// The users and ids applied since the last commit, with those of the
    /// commit in flight: a commit falls due at a third of it, and the loop
    /// waits for the commit in flight once both together reach it.
    pub uncommitted: usize,
}

/// What can go wrong on the Kafka side. The loop decides by variant what
/// to do: [`Error::is_transient`] ones stall ingestion and are retried, the
/// others stop Pulse at start with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A broker did not answer, or refused a request.
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A wait on the brokers ran past its bound.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Engine(#[from] pulse_engine::EngineError),
    /// A topic Pulse reads does not exist.
    #[error(
        "topic `{0}` does not exist; create it (the registry and targets topics compacted, with any partition count)"
    )]
    MissingTopic(String),
    /// The topics or settings contradict each other; what to change is in the message.
    #[error("{0}")]
    Setup(String),
    /// librdkafka declared the consumer unusable (e.g. a static member
    /// fenced); the loop starts a new one.
    #[error("the Kafka consumer hit a fatal error: {0}")]
    Fatal(String),
    /// SIGTERM or SIGINT arrived while waiting on the brokers.
    #[error("stopped while {0}")]
    Stopped(&'static str),
}

impl Error {
    /// Whether waiting can cure it: the brokers or the disk come back.
    pub fn is_transient(&self) -> bool {
        use pulse_engine::EngineError;
        matches!(
            self,
            Error::Kafka { .. } | Error::Timeout(_) | Error::Engine(EngineError::Store(_) | EngineError::Poisoned)
        )
    }
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
