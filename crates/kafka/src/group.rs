//! The consumer loop: the consumer group on the input topics, feeding the
//! engine on this (blocking, dedicated) thread. One round of messages is in
//! [`crate::round`], the rebalance protocol in [`crate::rebalance`], the
//! stalled loop in [`crate::stall`].
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
//! - after each store commit, and after a take-over or a recovery (which
//!   can move the stored offsets without a commit of this loop's), the
//!   offsets are also committed to the group, asynchronously, only so that
//!   lag tools see progress; topics not co-partitioned with the shards are
//!   the exception: their group offsets are the stored ones, committed in
//!   the changelog transactions;
//! - when a commit is refused (a full disk, the brokers away) or a take-over
//!   fails, nothing of that batch is persisted and no offset moved: the
//!   loop stalls ([`crate::stall`]) and resumes from the last commit;
//! - what is published (the snapshot behind `/metrics` and the API) is
//!   always committed state: it is built only when nothing is applied
//!   beyond the last commit;
//! - scale-out: the unit of state is the partition number (a shard); see
//!   [`crate::changelog`] for how a shard's state moves with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_engine::{Engine, IngestStats, ShardId, Snapshot, Store};
use pulse_model::{InputFormat, Millis};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::changelog::{Changelog, Outbox, TRANSACTION_TIMEOUT};
use crate::metrics::{IngestCounts, IngestMetrics, Position};
use crate::ownership::{client_id, Ownership};
use crate::publication::{Publication, PUBLISH_INTERVAL};
use crate::rebalance::{lock, GroupContext};
use crate::registry::{exists, partitions, RegistryReader};
use crate::retry::retry_while_transient;
use crate::round::{poll_batch, route, Routed, Run};
use crate::stall::Stalled;
use crate::{client_config, kafka_err, Error, Settings};

/// What the loop did, by message source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    pub events: IngestStats,
    pub registry: IngestStats,
}

/// The longest the loop waits on the brokers without polling the group:
/// a changelog transaction's flush and commit. `kafka.max_poll_interval` must exceed it, or the group
/// would drop this member in the middle of a commit.
pub const LONGEST_DRAIN: Duration = Duration::from_secs(2 * TRANSACTION_TIMEOUT.as_secs());

/// How often librdkafka reports partition ends (and so how fresh lag is).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What the loop shares with the rest of the process.
pub struct Shared<'a, S> {
    /// The engine; other threads may lock it briefly (user lookups).
    pub engine: Arc<Mutex<Engine<S>>>,
    pub metrics: Arc<IngestMetrics>,
    /// Which instance owns which partition, kept current by the loop.
    pub ownership: Arc<Ownership>,
    /// Publishes committed state (the org-level snapshot, with the store
    /// for its sizes): a commit's, once it is stored, at most once per
    /// [`PUBLISH_INTERVAL`], and the last commit's.
    pub publish: &'a mut dyn FnMut(Snapshot, &S),
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
    stop: &Arc<AtomicBool>,
    clock: fn() -> Millis,
) -> Result<RunStats, Error> {
    let Shared { engine, metrics, ownership, publish } = shared;
    loop {
        match consume(settings, &engine, &metrics, &ownership, &mut *publish, stop, clock) {
            // librdkafka gives up on a consumer after a fatal error (e.g. a
            // static member fenced after a coordinator moved): a new
            // consumer, from the last commit, is the way on.
            Err(Error::Fatal(reason)) if !stop.load(Ordering::Relaxed) => {
                error!(%reason, "the Kafka consumer hit a fatal error; starting a new one from the last commit");
                lock(&engine).reload()?;
                ownership.set_mine(BTreeSet::new());
                std::thread::sleep(Duration::from_secs(1));
            }
            // A SIGTERM while waiting (on the brokers, a restore, the
            // registry) is a clean stop: the last commit stands, and a
            // restart goes on from it, as after any stop.
            Err(Error::Stopped(what)) => {
                info!("stopped while {what}; the last commit stands");
                return Ok(RunStats::default());
            }
            other => return other,
        }
    }
}

/// One consumer's life: joins the group and consumes until `stop` is set
/// (then persists and returns), or until the consumer is beyond repair.
fn consume<S: Store + Send + 'static>(
    settings: &Settings,
    cell: &Arc<Mutex<Engine<S>>>,
    shared_metrics: &Arc<IngestMetrics>,
    ownership: &Arc<Ownership>,
    publish: &mut dyn FnMut(Snapshot, &S),
    stop: &Arc<AtomicBool>,
    clock: fn() -> Millis,
) -> Result<RunStats, Error> {
    let metrics = &**shared_metrics;
    let context = GroupContext {
        engine: Arc::clone(cell),
        assigned: AtomicBool::new(false),
        ends: Mutex::new(BTreeMap::new()),
        failure: Mutex::new(None),
        rebalance_failed: Mutex::new(None),
        registry_letters: Mutex::new(Vec::new()),
        changelog: Arc::new(Mutex::new(Changelog::new(settings))),
        outbox: Mutex::new(Outbox::default()),
        in_flight: Mutex::new(None),
        committer: Mutex::default(),
        carried_committed: Mutex::new(BTreeMap::new()),
        reassigned: AtomicBool::new(false),
        rebalances: std::sync::atomic::AtomicU64::new(0),
        ownership: Arc::clone(ownership),
        metrics: Arc::clone(shared_metrics),
        settings: settings.clone(),
        stop: Arc::clone(stop),
        aligned: std::sync::OnceLock::new(),
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
        .set("max.poll.interval.ms", settings.max_poll_interval.as_millis().to_string())
        .set("statistics.interval.ms", STATS_INTERVAL.as_millis().to_string())
        // Range gives a member the same partition numbers of every topic
        // (they are co-partitioned): a member owns whole shards.
        .set("partition.assignment.strategy", "range")
        .set("isolation.level", "read_committed")
        // Prefetch, bounded per partition by messages and by bytes (the
        // budget's share): librdkafka keeps each assigned partition's queue
        // topped up, so its memory grows with the partitions assigned (an
        // instance of five inputs of 16 and the repartition topic has 96:
        // at 10,000 messages each, up to a million messages held);
        // 2,000 per partition caught up as fast as 10,000 over 16
        // (docs/BENCHMARKS.md, "Memory at catch-up"). A partition whose
        // prefetch is full is fetched again after 10 ms (librdkafka's
        // default, 1 s, starved the loop: it waited in poll for a fifth of
        // a catch-up).
        .set("queued.max.messages.kbytes", (settings.memory.prefetch >> 10).max(1024).to_string())
        .set("queued.min.messages", "2000")
        .set("fetch.queue.backoff.ms", "10")
        .set("client.id", client_id(&settings.advertise))
        .create_with_context(context)
        .map_err(kafka_err("failed to create the consumer"))?;
    let formats: BTreeMap<String, InputFormat> = settings.inputs.iter().cloned().collect();
    let topics = [
        &settings.orgs_topic,
        &settings.targets_topic,
        &settings.courses_topic,
        &settings.plans_topic,
        &settings.dlq_topic,
    ];
    retry_while_transient(stop, || {
        formats.keys().chain(topics).try_for_each(|topic| partitions(&consumer, topic).map(drop))
    })?;
    // A broker just restarted may know its topics before it leads their partitions.
    let layout = retry_while_transient(stop, || crate::changelog::prepare_topics(settings, &consumer))?;
    lock(cell).adopt_shards(layout.shards)?;
    let aligned = consumer.context().aligned.get_or_init(|| layout.aligned.clone());
    let mut registry_stats = IngestStats::default();
    let mut counts = IngestCounts::default();
    // Kafka timestamps of the messages applied since the last commit.
    let mut arrivals: Vec<Millis> = Vec::new();
    let mut registry = retry_while_transient(stop, || read_registry(settings, &consumer, cell, &mut registry_stats))?;
    counts.registry_read();
    {
        let engine = lock(cell);
        publish(engine.snapshot(), engine.store());
    }
    metrics.publish(&counts);
    let topics: Vec<&str> = formats.keys().map(String::as_str).chain([settings.repartition_topic.as_str()]).collect();
    consumer.subscribe(&topics).map_err(kafka_err("failed to subscribe to the input topics"))?;

    let mut since_commit = 0usize;
    let mut last_commit = Instant::now();
    let mut last_publish = Instant::now();
    let mut last_topic_check = Instant::now();
    let mut publication = Publication::default();
    while !stop.load(Ordering::Relaxed) {
        metrics.beat();
        // A store failure, applying or committing, stalls the loop below.
        let mut failed: Option<Error> = None;
        if registry.poll(cell, &consumer.context().registry_letters, &mut registry_stats, Duration::ZERO)? > 0 {
            since_commit += 1;
        }
        let polled = poll_batch(&consumer);
        if let Some(fatal) = polled.fatal {
            return Err(fatal);
        }
        if polled.messages.is_empty() {
            if !polled.errored {
                since_commit += skip_markers(&consumer, &mut lock(cell));
            }
        } else {
            // One lock and one clock read for the whole batch: readers wait
            // at most one batch (at most `BATCH` messages, no network wait).
            let mut engine = lock(cell);
            let mut outbox = consumer.context().outbox();
            let now = clock();
            let mut run: Option<Run<'_>> = None;
            for msg in &polled.messages {
                let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
                if engine.is_poisoned() {
                    // A take-over failed in this poll's rebalance: nothing is
                    // applied until the stalled loop has done it.
                    failed = Some(pulse_engine::EngineError::Poisoned.into());
                    break;
                }
                let run = match &mut run {
                    Some(r) if r.topic == topic && r.partition == partition => r,
                    _ => {
                        if let Some(done) = run.take() {
                            done.finish(&mut engine);
                        }
                        run.insert(Run::start(&engine, topic, partition, aligned.contains(topic)))
                    }
                };
                if run.next.is_some_and(|next| offset < next) {
                    continue;
                }
                let aligned = run.aligned;
                match route(&mut engine, msg, formats.get(topic).copied(), now, aligned) {
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                    Ok(Routed { format, disposition, forward, letter }) => {
                        match &disposition {
                            None => counts.forwarded(topic, format),
                            Some(d) => counts.message(topic, format, d),
                        }
                        arrivals.push(msg.timestamp().to_millis().unwrap_or(now));
                        // `offset` is handled: the next one to read is `offset + 1`.
                        if aligned {
                            // Forwarded, or dead-lettered, in this partition's
                            // (its shard's) next transaction, which also holds its offset.
                            outbox.pass(partition as ShardId, forward, letter);
                        } else {
                            outbox.carry(topic, partition, offset + 1, forward, letter);
                        }
                        run.next = Some(offset + 1);
                        run.handled = true;
                        since_commit += 1;
                    }
                }
            }
            if let Some(done) = run {
                done.finish(&mut engine);
            }
        }
        if let Some(failure) = consumer.context().failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Setup(format!("librdkafka refused the group's assignment: {failure}")));
        }
        if let Some(e) = consumer.context().rebalance_failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            failed = Some(e);
        }
        let interval_passed = last_commit.elapsed() >= settings.commit_interval;
        let (new_bytes, committing_bytes) = lock(cell).memory_bytes();
        let memory_full = new_bytes >= settings.memory.uncommitted / 3;
        // Plan re-evaluation drains a slice per commit, traffic or not.
        let due = since_commit >= settings.commit_messages
            || memory_full
            || (since_commit > 0 && interval_passed)
            || (interval_passed && consumer.context().registry_letters_due(&lock(cell)))
            || (interval_passed && lock(cell).plans_converging());
        // Far behind the ends, commits are spaced out.
        let catching = due && catching_up(&consumer, &lock(cell));
        let due = due && (!catching || memory_full || last_commit.elapsed() >= CATCH_UP_COMMIT_INTERVAL);
        // A commit is not started while the one in flight is still being
        // written (that would wait for it): the next one grows meanwhile,
        // up to a bound, and starts once the first is done.
        let context = consumer.context();
        let due = due && (!context.writing() || new_bytes + committing_bytes >= settings.memory.uncommitted);
        // The commit in flight is finished as soon as it is written, and
        // always before the next one starts.
        if failed.is_none() && (due || context.written()) {
            match context.complete() {
                Err(e) => failed = Some(e),
                Ok(None) => {}
                Ok(Some(done)) => {
                    let engine = lock(cell);
                    counts.flushed(done.started.elapsed(), &done.arrived, clock(), engine.newest_event());
                    advise_group(&consumer, &engine, CommitMode::Async);
                    match done.snapshot {
                        Some(snapshot) => publish(snapshot, engine.store()),
                        // Published once nothing more is applied (or at the next commit).
                        None => publication.changed(),
                    }
                    record_positions(&consumer, &engine, &mut counts);
                    metrics.publish(&counts);
                }
            }
        }
        if due && failed.is_none() {
            note_ends(&consumer, cell);
            match context.start_commit(&consumer, publication.snapshot_due(catching), std::mem::take(&mut arrivals)) {
                Err(e) => failed = Some(e),
                Ok(()) => (since_commit, last_commit) = (0, Instant::now()),
            }
        }
        if let Some(e) = failed {
            let stalled = Stalled { consumer: &consumer, engine: cell, metrics, stop };
            match stalled.wait(e, &mut counts, settings, &mut registry_stats)? {
                Some(resumed) => registry = resumed,
                None => break,
            }
            // Everything since the last commit is dropped, to be consumed
            // again; the shards were caught up from their changelogs, which
            // may hold the very batch the store refused.
            (since_commit, last_commit) = (0, Instant::now());
            publication.changed();
            advise_group(&consumer, &lock(cell), CommitMode::Async);
            arrivals.clear();
        }
        let reassigned = consumer.context().reassigned.swap(false, Ordering::Relaxed);
        if reassigned {
            // The owned shards changed (restored, or dropped): what this
            // instance exports must change with them, traffic or not; and
            // lag tools see where the restored state stands.
            publication.changed();
            advise_group(&consumer, &lock(cell), CommitMode::Async);
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
        {
            let engine = lock(cell);
            if publication.due(engine.uncommitted()) {
                publish(engine.snapshot(), engine.store());
            }
        }
        if last_publish.elapsed() >= PUBLISH_INTERVAL {
            let engine = lock(cell);
            record_positions(&consumer, &engine, &mut counts);
            metrics.publish(&counts);
            last_publish = Instant::now();
        }
    }
    if lock(cell).is_poisoned() {
        info!("stopping while ingestion is stalled: the last commit stands");
    } else {
        info!("stopping: persisting state and offsets");
        note_ends(&consumer, cell);
        consumer.context().persist(&consumer)?;
        let engine = lock(cell);
        advise_group(&consumer, &engine, CommitMode::Sync);
        publish(engine.snapshot(), engine.store());
    }
    consumer.unsubscribe();
    Ok(RunStats { events: counts.events().clone(), registry: registry_stats })
}

/// Commits while catching up: the configured interval is for live traffic
/// (freshness); while the assigned partitions are [`CATCH_UP_LAG`] or more
/// behind their ends, nobody waits for each batch, and a longer interval
/// (or a third of the memory budget's share for uncommitted state) writes
/// each busy user's state to the changelog once instead of many times, in
/// fewer transactions (docs/BENCHMARKS.md, "What each change bought").
const CATCH_UP_LAG: i64 = 50_000;
const CATCH_UP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the assigned partitions are [`CATCH_UP_LAG`] or more behind their
/// (last reported) ends.
fn catching_up<S: Store + Send + 'static>(consumer: &BaseConsumer<GroupContext<S>>, engine: &Engine<S>) -> bool {
    let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner());
    let behind: i64 = ends
        .iter()
        .filter_map(|((topic, p), high)| Some(high - engine.next_offset(topic, *p)?))
        .filter(|l| *l > 0)
        .sum();
    behind >= CATCH_UP_LAG
}

/// Rebuilds the registry and targets from their topics (on every start, and
/// after the store recovers), before any event is applied, and commits them.
pub(crate) fn read_registry<S: Store + Send + 'static>(
    settings: &Settings,
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &Mutex<Engine<S>>,
    stats: &mut IngestStats,
) -> Result<RegistryReader, Error> {
    let mut registry = RegistryReader::new(settings, lock(engine).shards())?;
    lock(engine).clear_registry();
    let context = consumer.context();
    // Read from the start again: the letters of its records come again too.
    context.registry_letters.lock().unwrap_or_else(|p| p.into_inner()).clear();
    registry.catch_up(engine, &context.registry_letters, stats, &context.stop)?;
    // Only the records: the shards may not be caught up with their changelogs yet.
    let mut engine = lock(engine);
    engine.commit_records()?;
    info!(
        orgs = engine.registry().len(),
        targets = engine.targets().len(),
        courses = engine.catalogue().len(),
        "registry read"
    );
    Ok(registry)
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

/// Each assigned partition's next offset and last fetched end.
fn record_positions<S: Store + Send + 'static>(
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &Engine<S>,
    counts: &mut IngestCounts,
) {
    let context = consumer.context();
    if !context.assigned.load(Ordering::Relaxed) {
        counts.unassigned();
        return;
    }
    let Ok(assignment) = consumer.assignment() else { return };
    let ends = context.ends.lock().unwrap_or_else(|p| p.into_inner());
    let outbox = context.outbox();
    let carried = context.carried_committed.lock().unwrap_or_else(|p| p.into_inner());
    let positions = assignment
        .elements()
        .iter()
        .map(|e| {
            let key = (e.topic().to_owned(), e.partition());
            // With nothing stored yet, the loop starts at the beginning.
            let next = match context.is_aligned(&key.0) {
                true => engine.next_offset(&key.0, key.1),
                // The group's offset trails by the commit in flight, if any.
                false => outbox.carried_offset(&key.0, key.1).or_else(|| carried.get(&key).copied()),
            };
            let high = ends.get(&key).copied();
            (key, Position { next: next.unwrap_or(0), high })
        })
        .collect();
    counts.positions(positions);
}

/// Tells the engine which partitions are read to their end, before a
/// commit: they do not hold back the forgetting of ids.
fn note_ends<S: Store + Send + 'static>(consumer: &BaseConsumer<GroupContext<S>>, engine: &Mutex<Engine<S>>) {
    let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner());
    let mut engine = lock(engine);
    let at_end = ends
        .iter()
        .filter(|((topic, p), high)| engine.next_offset(topic, *p).is_some_and(|next| next >= **high))
        .map(|(key, _)| key.clone())
        .collect();
    engine.set_at_end(at_end);
}

/// Commits the stored offsets of the co-partitioned topics to the group,
/// only so that lag tools see progress (the others' group offsets are
/// committed in the transactions). Pulse resumes from its own store.
fn advise_group<S: Store + Send + 'static>(
    consumer: &BaseConsumer<GroupContext<S>>,
    engine: &Engine<S>,
    mode: CommitMode,
) {
    let Ok(assignment) = consumer.assignment() else { return };
    let mut tpl = TopicPartitionList::new();
    for e in assignment.elements().iter().filter(|e| consumer.context().is_aligned(e.topic())) {
        if let Some(next) = engine.stored_offset(e.topic(), e.partition()) {
            let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, mode) {
            warn!(error = %e, "group offset commit failed (advisory only)");
        }
    }
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

/// The consumer's fatal error, if librdkafka declared one: it will never
/// consume again, and [`run`] replaces it.
pub(crate) fn fatal<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Error> {
    consumer.client().fatal_error().map(|(code, reason)| Error::Fatal(format!("{code}: {reason}")))
}

pub(crate) fn log_transient(e: &KafkaError) {
    warn!(error = %e, "kafka error; librdkafka retries and reconnects by itself");
}
