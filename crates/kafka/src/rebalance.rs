//! The rebalance protocol: what happens when the group gives this member
//! partitions (take them over: fence their previous owners, restore their
//! state from the changelog, resume at the stored offsets) or takes them
//! away (persist first, then let go), and the one way state is persisted.
//!
//! A take-over that fails on a transient fault (a broker restarting) does
//! not end the process: the partitions are assigned anyway, the engine is
//! marked as not matching the store, and the loop stalls and retries the
//! take-over as it does for a full disk ([`crate::stall`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use pulse_engine::{Engine, ShardId, Snapshot, Store};
use pulse_model::Millis;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::changelog::{Changelog, Outbox};
use crate::committer::{Committer, Writing};
use crate::dead_letters::{Letter, Source};
use crate::metrics::IngestMetrics;
use crate::ownership::Ownership;
use crate::registry::METADATA_TIMEOUT;
use crate::restore::catch_up;
use crate::{Error, Settings};

pub(crate) fn lock<S>(engine: &Mutex<Engine<S>>) -> MutexGuard<'_, Engine<S>> {
    // A panic while holding the lock aborts the loop anyway; the state in
    // the store is still consistent, so recovering the guard is safe.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's context: the rebalance protocol against the engine that
/// owns the offsets, and what the loop shares with it.
pub(crate) struct GroupContext<S> {
    pub(crate) engine: Arc<Mutex<Engine<S>>>,
    /// Whether the group has given this member its partitions (maybe none).
    pub(crate) assigned: AtomicBool,
    /// Each partition's end offset, from librdkafka's statistics (no
    /// broker round trip; refreshed every `STATS_INTERVAL`).
    pub(crate) ends: Mutex<BTreeMap<(String, i32), i64>>,
    /// A local failure inside a callback (librdkafka refused an
    /// assignment), reported by the loop after `poll` returns.
    pub(crate) failure: Mutex<Option<String>>,
    /// A take-over, or a revocation's commit, that failed inside a
    /// rebalance callback: the loop stalls with it and recovers.
    pub(crate) rebalance_failed: Mutex<Option<Error>>,
    /// The registry topics' dead letters since they were last read from
    /// the start, until a commit of their shard has written them
    /// ([`crate::dead_letters`]).
    pub(crate) registry_letters: Mutex<Vec<Letter>>,
    /// The owned shards' changelog producers, written at every commit (by
    /// the commit's own thread).
    pub(crate) changelog: Arc<Mutex<Changelog>>,
    /// What the loop passed since the last commit for its transactions.
    pub(crate) outbox: Mutex<Outbox>,
    /// The commit being written, and the thread that writes it.
    pub(crate) in_flight: Mutex<Option<InFlight>>,
    pub(crate) committer: Mutex<Committer>,
    /// The group's offsets of the partitions not co-partitioned with the
    /// shards (read at assignment, moved by every commit).
    pub(crate) carried_committed: Mutex<BTreeMap<(String, i32), i64>>,
    /// Set by an assignment: the ownership view is refreshed.
    pub(crate) reassigned: AtomicBool,
    /// Rebalance callbacks so far: messages the loop polled before one
    /// are not applied (their partitions were persisted and let go, or
    /// are resumed at their stored offsets, where they are read again).
    pub(crate) rebalances: AtomicU64,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) metrics: Arc<IngestMetrics>,
    pub(crate) settings: Settings,
    /// SIGTERM/SIGINT: a restore or a wait on the brokers stops early.
    pub(crate) stop: Arc<AtomicBool>,
    /// The topics co-partitioned with the shards (set once the topics are
    /// known, before the group is joined): partition `p` of one of these
    /// is owned with shard `p`; the others' offsets are the group's.
    pub(crate) aligned: OnceLock<BTreeSet<String>>,
}

/// A commit prepared and handed to the commit thread, which writes its
/// changelog transactions, then (once they are committed) its store batch,
/// while the loop applies the next events; [`GroupContext::complete`]
/// tells the engine.
pub(crate) struct InFlight {
    writing: Writing,
    started: Instant,
    /// The Kafka timestamps of its messages.
    arrived: Vec<Millis>,
    /// The carried partitions' offsets it commits to the group.
    carried: BTreeMap<(String, i32), i64>,
    /// The state it commits, to publish once it is stored.
    snapshot: Option<Snapshot>,
}

/// A commit the store now holds, for the loop's counts and publication.
pub(crate) struct Completed {
    /// Its snapshot, if one was taken: to publish (it is persisted now).
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) started: Instant,
    pub(crate) arrived: Vec<Millis>,
}

impl<S> Drop for GroupContext<S> {
    fn drop(&mut self) {
        // A commit's thread may still be writing the store, which the
        // engine reloads from next (a new consumer, a stop): it ends first.
        if let Some(flight) = self.in_flight().take() {
            let _ = flight.writing.wait();
        }
    }
}

impl<S> GroupContext<S> {
    pub(crate) fn changelog(&self) -> MutexGuard<'_, Changelog> {
        self.changelog.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> MutexGuard<'_, Option<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the commit in flight has been written (or failed), so that
    /// [`GroupContext::complete`] does not wait.
    pub(crate) fn written(&self) -> bool {
        self.in_flight().as_mut().is_some_and(|f| f.writing.is_done())
    }

    /// Whether a commit is in flight and still being written.
    pub(crate) fn writing(&self) -> bool {
        self.in_flight().as_mut().is_some_and(|f| !f.writing.is_done())
    }

    fn revoked(&self) {
        self.assigned.store(false, Ordering::Relaxed);
        self.ownership.set_mine(BTreeSet::new());
    }

    pub(crate) fn is_aligned(&self, topic: &str) -> bool {
        self.aligned.get().is_some_and(|a| a.contains(topic))
    }

    /// The shards an assignment gives: the partition numbers of its
    /// co-partitioned topics.
    pub(crate) fn shards_of(&self, tpl: &TopicPartitionList) -> BTreeSet<ShardId> {
        tpl.elements().iter().filter(|e| self.is_aligned(e.topic())).map(|e| e.partition() as ShardId).collect()
    }
}

impl<S: Store> GroupContext<S> {
    /// Starts a commit of everything applied so far (`arrived`: the Kafka
    /// timestamps of its messages): under the engine lock, takes the
    /// changes out (with the registry letters due, and the state's
    /// snapshot if `snapshot`); then the commit thread writes it while the
    /// loop goes on. A commit still in flight is completed first (what it
    /// would publish is dropped): one at a time.
    pub(crate) fn start_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        snapshot: bool,
        arrived: Vec<Millis>,
    ) -> Result<(), Error>
    where
        S: Send + 'static,
    {
        self.complete()?;
        let (pending, writer, snapshot) = {
            let mut engine = lock(&self.engine);
            self.pass_registry_letters(&mut engine);
            let pending = engine.prepare_commit(true)?;
            (pending, engine.store().writer(), snapshot.then(|| engine.snapshot()))
        };
        let outbox = std::mem::take(&mut *self.outbox());
        let carried = outbox.carried_offsets();
        let (changelog, group) = (Arc::clone(&self.changelog), consumer.group_metadata());
        // The changelog first: a crash between the two leaves the store
        // behind the changelog, which the next take-over catches up.
        let write = move || {
            let mut pending = pending;
            let changes = pending.changes();
            let logged = changelog.lock().unwrap_or_else(|p| p.into_inner()).write(changes, outbox, group)?;
            pending.store(&writer, Some(logged))
        };
        let writing = match self.committer.lock().unwrap_or_else(|p| p.into_inner()).write(write) {
            Ok(writing) => writing,
            Err(e) => return Ok(lock(&self.engine).finish_commit(Err(e))?),
        };
        self.metrics.committing(true);
        *self.in_flight() = Some(InFlight { writing, started: Instant::now(), arrived, carried, snapshot });
        Ok(())
    }

    /// Waits for the commit in flight, if any, to be written to the
    /// changelog and the store, then tells the engine. The engine is locked
    /// only for that, so user lookups keep answering meanwhile.
    pub(crate) fn complete(&self) -> Result<Option<Completed>, Error> {
        let Some(InFlight { writing, started, arrived, carried, snapshot }) = self.in_flight().take() else {
            return Ok(None);
        };
        let written = writing.wait();
        self.metrics.committing(false);
        if written.is_ok() {
            self.carried_committed.lock().unwrap_or_else(|p| p.into_inner()).extend(carried);
        }
        let mut engine = lock(&self.engine);
        engine.finish_commit(written)?;
        // Written: what is below the stored positions now is done with.
        let mut letters = self.registry_letters.lock().unwrap_or_else(|p| p.into_inner());
        letters.retain(|l| l.source.offset >= engine.next_offset(&l.source.topic, l.source.partition).unwrap_or(0));
        Ok(Some(Completed { snapshot, started, arrived }))
    }

    /// Persists everything applied so far and waits for it (a revocation,
    /// a take-over, a stop).
    pub(crate) fn persist(&self, consumer: &BaseConsumer<Self>) -> Result<(), Error>
    where
        S: Send + 'static,
    {
        self.start_commit(consumer, false, Vec::new())?;
        self.complete().map(drop)
    }

    /// The registry letters that this instance writes at its next commit:
    /// those of the shards it owns that their stored positions do not pass.
    fn registry_letters_to_write(&self, engine: &Engine<S>) -> Vec<Letter> {
        let letters = self.registry_letters.lock().unwrap_or_else(|p| p.into_inner());
        let changelog = self.changelog();
        let due = |l: &&Letter| {
            let Source { topic, partition, offset } = &l.source;
            changelog.owns(*partition as ShardId) && *offset >= engine.next_offset(topic, *partition).unwrap_or(0)
        };
        letters.iter().filter(due).cloned().collect()
    }

    /// Whether registry letters wait for a commit (none may be due
    /// otherwise); not while one is in flight (its thread holds the changelog).
    pub(crate) fn registry_letters_due(&self, engine: &Engine<S>) -> bool {
        self.in_flight().is_none() && !self.registry_letters_to_write(engine).is_empty()
    }

    /// Hands those registry letters to their shards' next transactions,
    /// and moves the positions past them (in the same commit).
    fn pass_registry_letters(&self, engine: &mut Engine<S>) {
        let letters = self.registry_letters_to_write(engine);
        let mut written: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut outbox = self.outbox();
        for l in letters {
            let next = written.entry((l.source.topic.clone(), l.source.partition)).or_default();
            *next = (*next).max(l.source.offset + 1);
            outbox.pass(l.source.partition as ShardId, None, Some(l));
        }
        for ((topic, partition), next) in written {
            engine.set_letters_written(&topic, partition, next);
        }
    }

    /// Makes the local state exactly the given shards', each caught up
    /// with its changelog: takes over their changelog partitions (fencing
    /// the previous owners), drops every other shard, restores, reloads.
    pub(crate) fn take_over(&self, shards: &BTreeSet<ShardId>) -> Result<(), Error>
    where
        S: Send + 'static,
    {
        self.changelog().own(shards)?;
        // Nothing is applied since the last commit (a take-over follows a
        // revocation's commit, a recovery's reload, or a start) but
        // registry records, which the reloads keep. Nothing is committed
        // before the shards are caught up: a shard the store holds behind
        // its changelog (a crash between the two) would be written stale.
        self.complete()?;
        lock(&self.engine).keep_only(shards)?;
        for &shard in shards {
            catch_up(&self.settings, &self.engine, shard, &self.metrics, &self.stop)?;
        }
        lock(&self.engine).reload_shards()?;
        self.ownership.set_mine(shards.clone());
        Ok(())
    }

    /// Takes the assigned partitions over and resumes each at its stored
    /// offset. A failed take-over still assigns them (so the group sees
    /// this member consume), but the engine refuses every event until the
    /// stalled loop has taken them over.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) -> Result<(), String>
    where
        S: Send + 'static,
    {
        let assigned: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let shards = self.shards_of(tpl);
        info!(?shards, "assigned; restoring their state from the changelog where the local one is behind");
        // While the engine refuses events, the stalled loop takes the
        // partitions over once it recovers.
        if !lock(&self.engine).is_poisoned() {
            if let Err(e) = self.take_over(&shards) {
                error!(error = %e, "taking the assigned partitions over failed; ingestion waits and retries it");
                lock(&self.engine).invalidate();
                *self.rebalance_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
        // A topic not co-partitioned resumes at the group's offset,
        // committed in the transactions that carried its forwards.
        let committed = self.group_offsets(consumer, tpl);
        *self.carried_committed.lock().unwrap_or_else(|p| p.into_inner()) = committed.clone();
        let engine = lock(&self.engine);
        let mut resume = Vec::new();
        for (topic, p) in &assigned {
            // The stored offset is already the next one to read.
            let offset = match self.is_aligned(topic) {
                true => engine.next_offset(topic, *p).map_or(Offset::Beginning, Offset::Offset),
                false => committed.get(&(topic.clone(), *p)).map_or(Offset::Stored, |&o| Offset::Offset(o)),
            };
            resume.push(format!("{topic}/{p}@{offset:?}"));
            tpl.set_partition_offset(topic, *p, offset).map_err(|e| e.to_string())?;
        }
        info!(partitions = ?resume, "resuming at the stored offsets");
        let stalled = engine.is_poisoned();
        drop(engine);
        self.assigned.store(true, Ordering::Relaxed);
        self.reassigned.store(true, Ordering::Relaxed);
        consumer.assign(tpl).map_err(|e| e.to_string())?;
        // librdkafka keeps a partition's pause across assignments: one
        // paused by an earlier stall would never be fetched again.
        if stalled { consumer.pause(tpl) } else { consumer.resume(tpl) }.map_err(|e| e.to_string())
    }

    /// The group's committed offsets of the assigned partitions that are
    /// not co-partitioned (empty if the coordinator cannot say now: they
    /// are then assigned at `Stored`, which asks it again).
    pub(crate) fn group_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> BTreeMap<(String, i32), i64>
    where
        S: Send + 'static,
    {
        let mut others = TopicPartitionList::new();
        for e in tpl.elements().iter().filter(|e| !self.is_aligned(e.topic())) {
            others.add_partition(e.topic(), e.partition());
        }
        if others.count() == 0 {
            return BTreeMap::new();
        }
        match consumer.committed_offsets(others, METADATA_TIMEOUT) {
            Ok(c) => c
                .elements()
                .iter()
                .filter_map(|e| Some(((e.topic().to_owned(), e.partition()), e.offset().to_raw().filter(|&o| o >= 0)?)))
                .collect(),
            Err(e) => {
                warn!(error = %e, "the group's offsets could not be read; the consumer asks again");
                BTreeMap::new()
            }
        }
    }

    /// Persists, then lets the partitions go. What cannot be persisted
    /// (fenced by the partitions' next owner, a full disk, brokers away) is
    /// dropped by the stalled loop's recovery: the next owner resumes from
    /// the last commit.
    fn revoke(&self, consumer: &BaseConsumer<Self>)
    where
        S: Send + 'static,
    {
        if lock(&self.engine).is_poisoned() {
            // What the store holds is the last commit, where the next
            // owner resumes; nothing more can be persisted.
            info!("revoked while ingestion is stalled; the next owner resumes from the last commit");
            self.outbox().discard();
        } else if let Err(e) = self.persist(consumer) {
            error!(error = %e, "revoked, but the state could not be persisted; ingestion stalls and resumes from the last commit");
            self.outbox().discard();
            // The stalled loop drops what the last commit lacks and reads the
            // registry topics again. Dropping it here would drop the registry
            // records read since the last commit too, and the registry
            // reader, past them, would never deliver them again.
            lock(&self.engine).invalidate();
            *self.rebalance_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        } else {
            info!("revoked; state, changelog and offsets persisted first");
        }
        self.revoked();
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

impl<S: Store + Send + 'static> ConsumerContext for GroupContext<S> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer);
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
