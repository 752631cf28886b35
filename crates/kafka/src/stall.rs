//! The loop while ingestion is stalled: the store refused a write (a full
//! disk), the changelog refused a commit (brokers away, fenced), or taking
//! partitions over failed (brokers restarting). Every such fault is waited
//! out here, never by exiting: the loop pauses every partition, keeps its
//! group membership by polling, retries every 5 s, and once the store
//! takes writes and the take-over succeeds, re-reads the registry and
//! rewinds each partition to its stored offset. Nothing applied since the
//! last commit survives, and no offset moved past it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_engine::{Engine, IngestStats, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;
use tracing::{error, info, warn};

use crate::group::{fatal, read_registry};
use crate::metrics::{IngestCounts, IngestMetrics};
use crate::rebalance::{lock, GroupContext};
use crate::registry::{RegistryReader, METADATA_TIMEOUT};
use crate::retry::Backoff;
use crate::{kafka_err, Error, Settings};

/// How long a stalled loop waits between attempts to resume.
const STALL_RETRY: Duration = Duration::from_secs(5);

pub(crate) struct Stalled<'a, S: Store + Send + 'static> {
    pub consumer: &'a BaseConsumer<GroupContext<S>>,
    pub engine: &'a Arc<Mutex<Engine<S>>>,
    pub metrics: &'a IngestMetrics,
    pub stop: &'a AtomicBool,
}

impl<S: Store + Send + 'static> Stalled<'_, S> {
    /// Returns `error` unless waiting can cure it (it is transient, or the
    /// engine no longer matches the store). Otherwise: says so (log,
    /// metric, readiness) and retries until ingestion can resume; returns
    /// the registry reader to go on with, or `None` if `stop` was set first.
    pub fn wait(
        &self,
        error: Error,
        counts: &mut IngestCounts,
        settings: &Settings,
        registry_stats: &mut IngestStats,
    ) -> Result<Option<RegistryReader>, Error> {
        if !error.is_transient() && !lock(self.engine).is_poisoned() {
            return Err(error);
        }
        // A commit still in flight ends first: its thread writes the store
        // that recovering reopens and reloads. Its outcome is in the store.
        let _ = self.consumer.context().complete();
        error!(%error, "ingestion stopped: the store or the brokers refused a write; retrying until they take writes again");
        counts.store_failed(error.to_string());
        self.metrics.publish(counts);
        // Not sooner: reopening a store on a full disk can free a little
        // (an old log), enough for one write and not the next.
        let mut backoff = Backoff::new(STALL_RETRY, STALL_RETRY);
        loop {
            let until = Instant::now() + backoff.next_delay();
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                self.metrics.beat();
                if let Ok(assignment) = self.consumer.assignment() {
                    // Cheap, and covers partitions a rebalance just assigned.
                    let _ = self.consumer.pause(&assignment);
                }
                // Anything still delivered is dropped: the rewind below refetches it.
                if let Some(Err(_)) = self.consumer.poll(Duration::from_millis(100)) {
                    if let Some(fatal) = fatal(self.consumer) {
                        return Err(fatal);
                    }
                }
            }
            let recovered = lock(self.engine).recover().map_err(Error::from);
            match recovered.and_then(|()| self.resume(settings, registry_stats)) {
                Ok(registry) => {
                    info!("ingestion resumed from the stored offsets");
                    // What failed inside a rebalance was just recovered from.
                    self.consumer.context().rebalance_failed.lock().unwrap_or_else(|p| p.into_inner()).take();
                    counts.store_recovered();
                    self.metrics.publish(counts);
                    return Ok(Some(registry));
                }
                // A broker coming back may answer some requests and not
                // others yet: every step is tried again next round.
                Err(e) => warn!(error = %e, "the store or the brokers still refuse; retrying"),
            }
        }
    }

    /// Once the store takes writes: catches the assigned shards up with
    /// their changelogs (a failed commit may have reached some of them and
    /// not the store), re-reads the registry, rewinds every partition.
    /// Revoked meanwhile, and not assigned again yet: the assignment to
    /// come takes its shards over, and finds the local state of those it
    /// had (taking over none now would drop them all, to be restored whole).
    fn resume(&self, settings: &Settings, registry_stats: &mut IngestStats) -> Result<RegistryReader, Error> {
        let context = self.consumer.context();
        context.outbox().discard();
        let assignment = self.consumer.assignment().map_err(kafka_err("failed to read the assignment"))?;
        let assigned = context.assigned.load(Ordering::Relaxed);
        if let Err(e) = assigned.then(|| context.take_over(&context.shards_of(&assignment))).transpose() {
            // Memory may hold part of a restore: recover reloads it next round.
            lock(self.engine).invalidate();
            return Err(e);
        }
        let registry = read_registry(settings, self.consumer, self.engine, registry_stats)?;
        self.rewind()?;
        Ok(registry)
    }

    /// Seeks every assigned (paused) partition to its stored offset (the
    /// group's, for a topic not co-partitioned with the shards), then
    /// resumes it.
    fn rewind(&self) -> Result<(), Error> {
        let assignment = self.consumer.assignment().map_err(kafka_err("failed to read the assignment"))?;
        let context = self.consumer.context();
        let committed = context.group_offsets(self.consumer, &assignment);
        *context.carried_committed.lock().unwrap_or_else(|p| p.into_inner()) = committed.clone();
        let mut targets = Vec::new();
        {
            let engine = lock(self.engine);
            for e in assignment.elements() {
                let key = (e.topic().to_owned(), e.partition());
                let stored = match context.is_aligned(e.topic()) {
                    true => engine.next_offset(e.topic(), e.partition()),
                    false => committed.get(&key).copied(),
                };
                targets.push((key.0, key.1, stored.map_or(Offset::Beginning, Offset::Offset)));
            }
        }
        for (topic, partition, offset) in targets {
            self.consumer
                .seek(&topic, partition, offset, METADATA_TIMEOUT)
                .map_err(kafka_err(format!("failed to rewind {topic}/{partition}")))?;
        }
        self.consumer.resume(&assignment).map_err(kafka_err("failed to resume the partitions"))
    }
}
