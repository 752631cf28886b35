//! The consumer loop: the consumer group on the input topics, feeding the
//! engine on this (blocking, dedicated) thread.
//!
//! Offset protocol, in one place:
//! - the stored offset of a partition is the *next* offset to consume; it is
//!   written in the same store batch as the effect of every message before it;
//! - on assignment, each partition is assigned at its stored offset (the
//!   earliest offset when none is stored), inside the rebalance callback, so
//!   no message is fetched from anywhere else;
//! - a message below the stored offset is skipped (its effect is already in);
//! - on revocation, the state and offsets are committed before the partitions
//!   are released;
//! - after each store commit, the offsets are also committed to the group,
//!   asynchronously, only so that lag tools see progress;
//! - when the store refuses a commit (a full disk), nothing of that batch is
//!   persisted and no offset moved: the loop pauses every partition, keeps
//!   the group membership alive, retries, and once the store takes writes
//!   again reloads the committed state and rewinds each partition to it;
//! - scale-out: the unit of state is the partition number (a shard); see
//!   [`crate::changelog`] for how a shard's state moves with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pulse_engine::{Disposition, Engine, EngineError, IngestStats, ShardId, Store};
use pulse_model::{InputFormat, Millis, Reason, Rejection};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::changelog::{catch_up, Changelog, Forward, FORMAT_HEADER};
use crate::dead_letters::{DeadLetters, Source};
use crate::metrics::{IngestCounts, IngestMetrics, Position};
use crate::ownership::{client_id, Ownership};
use crate::registry::{exists, partitions, RegistryReader, METADATA_TIMEOUT};
use crate::{client_config, kafka_err, Error, Settings};

/// What the loop did, by message source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    pub events: IngestStats,
    pub registry: IngestStats,
}

fn lock<S>(engine: &Mutex<Engine<S>>) -> MutexGuard<'_, Engine<S>> {
    // A panic while holding the lock aborts the loop anyway; the state in
    // the store is still consistent, so recovering the guard is safe.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the rebalance protocol against the engine that owns the offsets.
struct GroupContext<S> {
    engine: Arc<Mutex<Engine<S>>>,
    /// Whether the group has given this member its partitions (maybe none).
    assigned: AtomicBool,
    /// Each partition's end offset, from librdkafka's statistics (no
    /// broker round trip; refreshed every `STATS_INTERVAL`).
    ends: Mutex<BTreeMap<(String, i32), i64>>,
    /// A failure inside a callback, reported by the loop after `poll` returns.
    failure: Mutex<Option<String>>,
    /// Dead letters, settled before every commit (the revocation's too).
    dead: Mutex<DeadLetters>,
    /// The owned shards' changelog producers, written at every commit.
    changelog: Mutex<Changelog>,
    /// Set by an assignment: the ownership view is refreshed.
    reassigned: AtomicBool,
    ownership: Arc<Ownership>,
    metrics: Arc<IngestMetrics>,
    settings: Settings,
}

impl<S> GroupContext<S> {
    fn dead(&self) -> MutexGuard<'_, DeadLetters> {
        self.dead.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changelog(&self) -> MutexGuard<'_, Changelog> {
        self.changelog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Store> GroupContext<S> {
    /// Makes the local state exactly the given shards', each caught up
    /// with its changelog: takes over their changelog partitions (fencing
    /// the previous owners), drops every other shard, restores, reloads.
    fn take_over(&self, shards: &BTreeSet<ShardId>) -> Result<(), Error> {
        self.changelog().own(shards)?;
        // Registry records read since the last commit: the reload below
        // would drop them, and their topic is not read again.
        lock(&self.engine).commit_logged(Some(&mut *self.changelog()))?;
        lock(&self.engine).keep_only(shards)?;
        for &shard in shards {
            catch_up(&self.settings, &self.engine, shard, &self.metrics)?;
        }
        lock(&self.engine).reload()?;
        self.ownership.set_mine(shards.clone());
        Ok(())
    }
}

impl<S: Store + Send + 'static> ClientContext for GroupContext<S> {
    fn stats(&self, statistics: Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &statistics.topics {
            // Partition -1 is librdkafka's internal "unassigned" queue.
            for (p, part) in t.partitions.iter().filter(|(p, part)| **p >= 0 && part.hi_offset >= 0) {
                ends.insert((topic.clone(), *p), part.hi_offset);
            }
        }
    }
}

/// How often librdkafka reports partition ends (and so how fresh lag is).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

impl<S: Store + Send + 'static> ConsumerContext for GroupContext<S> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                let shards: BTreeSet<ShardId> = assigned.iter().map(|(_, p)| *p as ShardId).collect();
                info!(?shards, "assigned; restoring their state from the changelog where the local one is behind");
                // While the store refuses writes, the stalled loop takes
                // the partitions over once it recovers.
                let poisoned = lock(&self.engine).is_poisoned();
                let taken = if poisoned { Ok(()) } else { self.take_over(&shards) };
                taken.map_err(|e| e.to_string()).and_then(|()| {
                    let engine = lock(&self.engine);
                    let mut resume = Vec::new();
                    for (topic, p) in &assigned {
                        // The stored offset is already the next one to read.
                        let offset = engine.next_offset(topic, *p).map_or(Offset::Beginning, Offset::Offset);
                        resume.push(format!("{topic}/{p}@{offset:?}"));
                        tpl.set_partition_offset(topic, *p, offset).map_err(|e| e.to_string())?;
                    }
                    info!(partitions = ?resume, "resuming at the stored offsets");
                    self.assigned.store(true, Ordering::Relaxed);
                    self.reassigned.store(true, Ordering::Relaxed);
                    consumer.assign(tpl).map_err(|e| e.to_string())
                })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if lock(&self.engine).is_poisoned() => {
                // The store refuses writes: what it holds is the last commit,
                // where the next owner resumes; nothing more can be persisted.
                info!("revoked while the store refuses writes; the next owner resumes from the last commit");
                self.changelog().discard_forwards();
                self.revoked();
                consumer.unassign().map_err(|e| e.to_string())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Bounded: the group waits for this member only so long.
                let deadline = Instant::now() + Duration::from_secs(10);
                let persisted =
                    self.dead().settle(&AtomicBool::new(false), Some(deadline)).map_err(|e| e.to_string()).and_then(
                        |()| lock(&self.engine).commit_logged(Some(&mut *self.changelog())).map_err(|e| e.to_string()),
                    );
                match persisted {
                    Ok(()) => info!("revoked; state, changelog and offsets persisted first"),
                    Err(e) => {
                        // Fenced by the partitions' next owner (this member
                        // was paused past its session), or the store refuses
                        // writes: what was applied since the last commit is
                        // dropped; the next owner resumes from that commit.
                        error!(error = %e, "revoked, but the state could not be persisted; dropping what the last commit lacks");
                        self.changelog().discard_forwards();
                        if let Err(e) = lock(&self.engine).reload() {
                            error!(error = %e, "reloading the committed state failed; the next commit retries");
                        }
                    }
                }
                self.revoked();
                consumer.unassign().map_err(|e| e.to_string())
            }
            other => {
                warn!(error = ?other, "rebalance failed; dropping the assignment");
                consumer.unassign().map_err(|e| e.to_string())
            }
        };
        if let Err(e) = outcome {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    }
}

impl<S> GroupContext<S> {
    fn revoked(&self) {
        self.assigned.store(false, Ordering::Relaxed);
        self.ownership.set_mine(BTreeSet::new());
    }
}

/// What the loop shares with the rest of the process.
pub struct Shared<'a, S> {
    /// The engine; other threads may lock it briefly (user lookups).
    pub engine: Arc<Mutex<Engine<S>>>,
    pub metrics: Arc<IngestMetrics>,
    /// Which instance owns which partition, kept current by the loop.
    pub ownership: Arc<Ownership>,
    /// Publishes the committed state (e.g. the org-level snapshot), with the
    /// lock held: after a commit, at most once per [`PUBLISH_INTERVAL`], and
    /// after the last commit.
    pub publish: &'a mut dyn FnMut(&Engine<S>),
}

impl<S> std::fmt::Debug for Shared<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Consumes until `stop` is set, then persists, commits and returns.
pub fn run<S: Store + Send + 'static>(
    settings: &Settings,
    shared: Shared<'_, S>,
    stop: &AtomicBool,
    clock: fn() -> Millis,
) -> Result<RunStats, Error> {
    let Shared { engine: cell, metrics: shared_metrics, ownership, publish } = shared;
    let metrics = &*shared_metrics;
    let context = GroupContext {
        engine: Arc::clone(&cell),
        assigned: AtomicBool::new(false),
        ends: Mutex::new(BTreeMap::new()),
        failure: Mutex::new(None),
        dead: Mutex::new(DeadLetters::new(settings)?),
        changelog: Mutex::new(Changelog::new(settings)),
        reassigned: AtomicBool::new(false),
        ownership: Arc::clone(&ownership),
        metrics: Arc::clone(&shared_metrics),
        settings: settings.clone(),
    };
    let mut config = client_config(&settings.brokers, &settings.options);
    if let Some(id) = &settings.instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: BaseConsumer<GroupContext<S>> = config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
        .set("statistics.interval.ms", STATS_INTERVAL.as_millis().to_string())
        // Range gives a member the same partition numbers of every topic
        // (they are co-partitioned): a member owns whole shards.
        .set("partition.assignment.strategy", "range")
        .set("isolation.level", "read_committed")
        .set("client.id", client_id(&settings.advertise))
        .create_with_context(context)
        .map_err(kafka_err("failed to create the consumer"))?;
    let formats: BTreeMap<String, InputFormat> = settings.inputs.iter().cloned().collect();
    let topics = [&settings.orgs_topic, &settings.targets_topic, &settings.dlq_topic];
    retry_while_unreachable(stop, || {
        formats.keys().chain(topics).try_for_each(|topic| partitions(&consumer, topic).map(drop))
    })?;
    // A broker just restarted may know its topics before it leads their partitions.
    let shards = retry_while_unreachable(stop, || crate::changelog::prepare_topics(settings, &consumer))?;
    lock(&cell).adopt_shards(shards)?;
    let mut registry_stats = IngestStats::default();
    let mut counts = IngestCounts::default();
    // Kafka timestamps of the messages applied since the last commit.
    let mut arrivals: Vec<Millis> = Vec::new();
    let mut registry = retry_while_unreachable(stop, || {
        read_registry(settings, &consumer, &mut lock(&cell), &mut registry_stats, stop)
    })?;
    counts.registry_read();
    publish(&lock(&cell));
    metrics.publish(&counts);
    let topics: Vec<&str> = formats.keys().map(String::as_str).chain([settings.repartition_topic.as_str()]).collect();
    consumer.subscribe(&topics).map_err(kafka_err("failed to subscribe to the input topics"))?;

    let mut since_commit = 0usize;
    let mut last_commit = Instant::now();
    let mut last_publish = Instant::now();
    let mut last_topic_check = Instant::now();
    // A commit whose state is not published yet.
    let mut unpublished = false;
    while !stop.load(Ordering::Relaxed) {
        // A store failure, applying or committing, stalls the loop below.
        let mut failed: Option<Error> = None;
        if registry.poll(&mut lock(&cell), &mut consumer.context().dead(), &mut registry_stats, Duration::ZERO)? > 0 {
            since_commit += 1;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => since_commit += skip_markers(&consumer, &mut lock(&cell)),
            Some(Err(e)) => log_transient(&e),
            Some(Ok(msg)) => {
                let mut engine = lock(&cell);
                let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
                if engine.next_offset(topic, partition).is_some_and(|next| offset < next) {
                    continue;
                }
                let now = clock();
                // The repartition topic carries each message's format in a header.
                let format = formats.get(topic).copied().map_or_else(|| repartitioned_format(&msg), Ok);
                let label = *format.as_ref().unwrap_or(&InputFormat::PulseV1);
                let payload = msg.payload().unwrap_or_default();
                let outcome = match format.map_err(Disposition::Dead).and_then(|f| engine.accept(f, payload, now)) {
                    Err(disposition) => Ok(Some(disposition)),
                    Ok(ev) if i32::from(engine.shard_of(&ev.user)) == partition => engine.apply(&ev).map(Some),
                    Ok(ev) => {
                        // Not this user's partition: forwarded in this
                        // partition's next transaction, with its offset.
                        engine.forwarded(&ev);
                        let to = i32::from(engine.shard_of(&ev.user));
                        let forward = Forward { user: ev.user.to_string(), to, format: label, value: payload.to_vec() };
                        consumer.context().changelog().forward(partition as ShardId, forward);
                        counts.forwarded(topic, label);
                        Ok(None)
                    }
                };
                match outcome {
                    Err(e) => failed = Some(e.into()),
                    Ok(disposition) => {
                        if let Some(disposition) = &disposition {
                            if let Disposition::Dead(why) = disposition {
                                let source = Source { topic, partition, offset };
                                consumer.context().dead().send(msg.key(), msg.payload(), why, &source);
                            }
                            counts.message(topic, label, disposition);
                        }
                        arrivals.push(msg.timestamp().to_millis().unwrap_or(now));
                        // `offset` is applied: the next one to read is `offset + 1`.
                        engine.set_next_offset(topic, partition, offset + 1);
                        since_commit += 1;
                    }
                }
            }
        }
        if let Some(failure) = consumer.context().failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Setup(format!("rebalance failed: {failure}")));
        }
        let due = since_commit >= settings.commit_messages
            || (since_commit > 0 && last_commit.elapsed() >= settings.commit_interval);
        if due && failed.is_none() {
            let mut engine = lock(&cell);
            let started = Instant::now();
            match commit(&consumer, &mut engine, CommitMode::Async, stop) {
                Err(e) => failed = Some(e),
                Ok(()) => {
                    counts.flushed(started.elapsed(), &arrivals, clock(), engine.newest_event());
                    arrivals.clear();
                    record_positions(&consumer, &engine, &mut counts);
                    metrics.publish(&counts);
                    (since_commit, last_commit, unpublished) = (0, Instant::now(), true);
                }
            }
        }
        if let Some(e) = failed {
            let store = StalledStore { consumer: &consumer, engine: &cell, metrics, stop };
            registry = store.wait(e, &mut counts, settings, &mut registry_stats)?;
            // Everything since the last commit is dropped, to be consumed again.
            (since_commit, last_commit) = (0, Instant::now());
            arrivals.clear();
        }
        let reassigned = consumer.context().reassigned.swap(false, Ordering::Relaxed);
        if reassigned {
            // The owned shards changed (restored, or dropped): what this
            // instance exports must change with them, traffic or not.
            unpublished = true;
        }
        if reassigned || last_topic_check.elapsed() >= TOPIC_CHECK_INTERVAL {
            ownership.refresh(&consumer, &settings.group_id, &settings.repartition_topic);
        }
        if last_topic_check.elapsed() >= TOPIC_CHECK_INTERVAL {
            if let Some(missing) = missing_topics(&consumer, formats.keys()) {
                if !missing.is_empty() {
                    error!(topics = ?missing, "input topics do not exist (deleted?); not ready until they do");
                }
                counts.missing_topics(missing);
            }
            last_topic_check = Instant::now();
        }
        if last_publish.elapsed() >= PUBLISH_INTERVAL {
            let engine = lock(&cell);
            if unpublished {
                publish(&engine);
                unpublished = false;
            }
            record_positions(&consumer, &engine, &mut counts);
            metrics.publish(&counts);
            last_publish = Instant::now();
        }
    }
    info!("stopping: persisting state and offsets");
    let mut engine = lock(&cell);
    commit(&consumer, &mut engine, CommitMode::Sync, stop)?;
    publish(&engine);
    consumer.unsubscribe();
    Ok(RunStats { events: counts.events().clone(), registry: registry_stats })
}

/// Rebuilds the registry and targets from their topics (on every start, and
/// after the store recovers), before any event is applied, and commits them.
fn read_registry<S: Store + Send + 'static>(
    settings: &Settings,
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &mut Engine<S>,
    stats: &mut IngestStats,
    stop: &AtomicBool,
) -> Result<RegistryReader, Error> {
    let mut registry = RegistryReader::new(settings)?;
    engine.clear_registry();
    registry.catch_up(engine, &mut consumer.context().dead(), stats)?;
    consumer.context().dead().settle(stop, None)?;
    engine.commit()?;
    info!(orgs = engine.registry().len(), targets = engine.targets().len(), "registry read");
    Ok(registry)
}

/// How long a stalled loop waits between attempts to write to the store.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// The loop while the store refuses writes.
struct StalledStore<'a, S: Store + Send + 'static> {
    consumer: &'a BaseConsumer<GroupContext<S>>,
    engine: &'a Arc<Mutex<Engine<S>>>,
    metrics: &'a IngestMetrics,
    stop: &'a AtomicBool,
}

impl<S: Store + Send + 'static> StalledStore<'_, S> {
    /// Returns `error` unless it is the store's. Otherwise: says so (log,
    /// metric, readiness), pauses every partition while polling to keep the
    /// group membership, and every [`STORE_RETRY`] asks the engine to
    /// recover. Once it has, re-reads the registry, rewinds every assigned
    /// partition to its stored offset and resumes. Nothing applied since the
    /// last commit survives, and no offset moved past it.
    fn wait(
        &self,
        error: Error,
        counts: &mut IngestCounts,
        settings: &Settings,
        registry_stats: &mut IngestStats,
    ) -> Result<RegistryReader, Error> {
        if !matches!(error, Error::Engine(EngineError::Store(_) | EngineError::Poisoned)) {
            return Err(error);
        }
        error!(%error, retry_every = ?STORE_RETRY, "the store refused a write; ingestion stopped until it takes one");
        counts.store_failed(error.to_string());
        self.metrics.publish(counts);
        loop {
            let until = Instant::now() + STORE_RETRY;
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    return Err(error);
                }
                if let Ok(assignment) = self.consumer.assignment() {
                    // Cheap, and covers partitions a rebalance just assigned.
                    let _ = self.consumer.pause(&assignment);
                }
                // Anything still delivered is dropped: the rewind below refetches it.
                let _ = self.consumer.poll(Duration::from_millis(100));
            }
            let recovered = lock(self.engine).recover().map_err(Error::from);
            match recovered.and_then(|()| self.resume(settings, registry_stats)) {
                Ok(registry) => {
                    info!("the store takes writes again; resumed from the stored offsets");
                    counts.store_recovered();
                    self.metrics.publish(counts);
                    return Ok(registry);
                }
                // A broker coming back may answer some requests and not
                // others yet: every step is tried again next round.
                Err(e) => warn!(error = %e, "the store or the changelog still refuses writes; retrying"),
            }
        }
    }

    /// Once the store takes writes: catches the assigned shards up with
    /// their changelogs (a failed commit may have reached some of them and
    /// not the store), re-reads the registry, rewinds every partition.
    fn resume(&self, settings: &Settings, registry_stats: &mut IngestStats) -> Result<RegistryReader, Error> {
        let context = self.consumer.context();
        context.changelog().discard_forwards();
        let assignment = self.consumer.assignment().map_err(kafka_err("failed to read the assignment"))?;
        context.take_over(&assignment.elements().iter().map(|e| e.partition() as ShardId).collect())?;
        let mut engine = lock(self.engine);
        let registry = read_registry(settings, self.consumer, &mut engine, registry_stats, self.stop)?;
        self.rewind(&engine)?;
        Ok(registry)
    }

    /// Seeks every assigned (paused) partition to its stored offset, then resumes it.
    fn rewind(&self, engine: &Engine<S>) -> Result<(), Error> {
        let assignment = self.consumer.assignment().map_err(kafka_err("failed to read the assignment"))?;
        for e in assignment.elements() {
            let offset = engine.next_offset(e.topic(), e.partition()).map_or(Offset::Beginning, Offset::Offset);
            self.consumer.seek(e.topic(), e.partition(), offset, METADATA_TIMEOUT).map_err(kafka_err(format!(
                "failed to rewind {}/{}",
                e.topic(),
                e.partition()
            )))?;
        }
        self.consumer.resume(&assignment).map_err(kafka_err("failed to resume the partitions"))
    }
}

/// How often the input topics' existence is checked (a deleted topic makes
/// Pulse not ready, naming it).
const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The input topics the broker does not know; `None` when it cannot be asked.
fn missing_topics<'t>(
    consumer: &BaseConsumer<impl ConsumerContext>,
    topics: impl Iterator<Item = &'t String>,
) -> Option<Vec<String>> {
    let md = consumer.fetch_metadata(None, Duration::from_secs(2)).ok()?;
    let known: BTreeSet<&str> = md.topics().iter().filter(|t| exists(t)).map(|t| t.name()).collect();
    Some(topics.filter(|t| !known.contains(t.as_str())).cloned().collect())
}

/// Runs `attempt` until it succeeds, retrying with backoff while Kafka is
/// unreachable (`/readyz` says not ready meanwhile, `/healthz` stays up);
/// any other error, such as a missing topic, is returned at once.
fn retry_while_unreachable<T>(stop: &AtomicBool, mut attempt: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match attempt() {
            Err(e @ Error::Kafka { .. }) if !stop.load(Ordering::Relaxed) => {
                warn!(error = %e, retry_in = ?backoff, "Kafka is unreachable; retrying (not ready meanwhile)");
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// How often committed state is published (building the org-level
/// snapshot costs O(orgs x shards), docs/BENCHMARKS.md) and positions and
/// lag are refreshed while no commit happens.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Each assigned partition's next offset and last fetched end.
fn record_positions<S: Store + Send + 'static>(
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &Engine<S>,
    counts: &mut IngestCounts,
) {
    if !consumer.context().assigned.load(Ordering::Relaxed) {
        counts.unassigned();
        return;
    }
    let Ok(assignment) = consumer.assignment() else { return };
    let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner());
    let positions = assignment
        .elements()
        .iter()
        .map(|e| {
            let key = (e.topic().to_owned(), e.partition());
            // With nothing stored yet, the loop starts at the beginning.
            let next = engine.next_offset(&key.0, key.1).unwrap_or(0);
            let high = ends.get(&key).copied();
            (key, Position { next, high })
        })
        .collect();
    counts.positions(positions);
}
/// Waits for the dead letters' acknowledgements, persists state and
/// offsets, then tells the group (advisory).
fn commit<S: Store + Send + 'static>(
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &mut Engine<S>,
    mode: CommitMode,
    stop: &AtomicBool,
) -> Result<(), Error> {
    consumer.context().dead().settle(stop, None)?;
    engine.commit_logged(Some(&mut *consumer.context().changelog()))?;
    let Ok(assignment) = consumer.assignment() else { return Ok(()) };
    let mut tpl = TopicPartitionList::new();
    for e in assignment.elements() {
        if let Some(next) = engine.next_offset(e.topic(), e.partition()) {
            let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Only lag dashboards read these; Pulse resumes from its own store.
            warn!(error = %e, "group offset commit failed (advisory only)");
        }
    }
    Ok(())
}

/// While idle: moves each partition's next offset past the transaction
/// markers that end it (the repartition topic is written in transactions;
/// a marker is never delivered, so without this a partition read to its
/// end would show a lag of one). Every message before the consumer's
/// position was delivered, and so applied. Returns how many moved.
fn skip_markers<S: Store + Send + 'static>(consumer: &BaseConsumer<GroupContext<S>>, engine: &mut Engine<S>) -> usize {
    let Ok(positions) = consumer.position() else { return 0 };
    let mut moved = 0;
    for e in positions.elements() {
        if let (Offset::Offset(at), Some(next)) = (e.offset(), engine.next_offset(e.topic(), e.partition())) {
            if at > next {
                engine.set_next_offset(e.topic(), e.partition(), at);
                moved += 1;
            }
        }
    }
    moved
}

/// The format of a message on the repartition topic, from its header.
fn repartitioned_format(msg: &BorrowedMessage<'_>) -> Result<InputFormat, Rejection> {
    let header = msg.headers().and_then(|h| h.iter().find(|h| h.key == FORMAT_HEADER)).and_then(|h| h.value);
    let name = header.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
    name.parse().map_err(|_| {
        Rejection::new(Reason::InvalidField, format!("no valid `{FORMAT_HEADER}` header on a repartitioned message"))
    })
}

fn log_transient(e: &KafkaError) {
    warn!(error = %e, "kafka error; librdkafka retries and reconnects by itself");
}
