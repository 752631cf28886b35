//! The commit protocol: every change since the last commit taken out of
//! memory ([`Engine::prepare_commit`]), written by any thread
//! ([`PendingCommit::store`]: the changelog first, then the store), and
//! noted as stored ([`Engine::finish_commit`]); or all three at once
//! ([`Engine::commit`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use pulse_model::Millis;

use super::{Engine, EngineError, HOUR_MS};
use crate::changelog::{changes, Change, ChangeLog};
use crate::codec;
use crate::state::{Totals, UserState};
use crate::store::{Batch, OrgUser, SeenIds, SeenKey, SeenLog, ShardId, Store, StoreError, StoreWriter};
use crate::table::FastMap;

/// Remembered ids per changelog record (24 bytes each: under half of
/// Kafka's default 1 MB message limit). One record per shard and commit,
/// not one per id: per-record costs dominated the changelog (docs/BENCHMARKS.md).
const SEEN_PER_RECORD: usize = 20_000;

/// A commit between [`Engine::prepare_commit`] and [`Engine::finish_commit`].
#[derive(Debug)]
pub struct PendingCommit {
    pub(super) batch: Batch,
    /// Its users, shared with the engine (which reads them until the store
    /// has them): encoded into the batch by the thread that writes it.
    users: Vec<(ShardId, Committing)>,
    /// Copies of its changed org totals (`None`: absent), encoded into the
    /// batch by the thread that writes it, each dropped once encoded: an
    /// org's totals hold its months and days, several times their encoding.
    org_totals: Vec<(ShardId, String, Option<Totals>)>,
}

impl PendingCommit {
    /// Its changelog records, by shard.
    pub fn changes(&mut self) -> BTreeMap<ShardId, Vec<Change>> {
        self.encode();
        changes(&self.batch)
    }

    /// Encoded once, for the changelog and the store alike.
    fn encode(&mut self) {
        for (shard, users) in self.users.drain(..) {
            self.batch.users.extend(users.iter().map(|(user, state)| (shard, user.clone(), codec::encode(state))));
        }
        let totals = self.org_totals.drain(..).map(|(shard, org, t)| (shard, org, t.as_ref().map(codec::encode)));
        self.batch.org_totals.extend(totals);
    }

    /// Writes it to the store, on any thread (the engine goes on applying
    /// meanwhile): `logged` is where its changelog records were written
    /// (`None`: no changelog), so the store holds those positions with it.
    pub fn store(
        mut self,
        writer: &impl StoreWriter,
        logged: Option<Vec<(ShardId, i64)>>,
    ) -> Result<Stored, StoreError> {
        self.encode();
        let mut batch = self.batch;
        if let Some(positions) = logged {
            batch.changelog = positions;
        }
        let changelog = batch.changelog.clone();
        writer.commit(batch)?;
        Ok(Stored { changelog })
    }
}

/// A commit the store holds, for [`Engine::finish_commit`].
#[derive(Debug)]
pub struct Stored {
    changelog: Vec<(ShardId, i64)>,
}

/// The users of a commit in flight: read by the engine, encoded by the
/// thread that writes the commit.
pub(super) type Committing = Arc<FastMap<String, UserState>>;

impl<S: Store> Engine<S> {
    /// Writes every change since the last commit to the store in one batch.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        self.commit_logged(None)
    }

    /// Writes every change since the last commit to the changelog, if any,
    /// then to the store in one batch with each shard's changelog position.
    /// The changelog goes first: a crash between the two leaves the local
    /// state behind the changelog, which the next assignment catches up.
    pub fn commit_logged(&mut self, log: Option<&mut dyn ChangeLog>) -> Result<(), EngineError> {
        let mut pending = self.prepare_commit(log.is_some())?;
        let logged = log.map(|log| log.write(pending.changes())).transpose();
        let stored = logged.and_then(|logged| pending.store(&self.store.writer(), logged));
        self.finish_commit(stored)
    }

    /// Writes the registry, targets, catalogue and plans read since the
    /// last commit, and nothing of any shard. On a start or a take-over,
    /// before the shards are caught up with their changelogs, the store may
    /// hold a shard behind its changelog: users re-evaluated against it
    /// would be written over the newer ones the changelog holds. The next
    /// [`Engine::prepare_commit`] re-evaluates the users the records affect.
    /// Nothing else may be uncommitted.
    pub fn commit_records(&mut self) -> Result<(), EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        if self.in_flight.is_some() {
            return Err(EngineError::CommitInFlight);
        }
        debug_assert!(self.pending_offsets.is_empty() && self.shards.iter().all(|s| s.users.is_empty()));
        let batch = self.take_records();
        if let Err(e) = self.store.writer().commit(batch) {
            self.poisoned = true;
            return Err(e.into());
        }
        (self.record_meeting_minutes, self.uncommitted) = (false, 0);
        Ok(())
    }

    /// A batch of the registry records read since the last commit (and the
    /// threshold, for a fresh store), taken out of memory.
    fn take_records(&mut self) -> Batch {
        Batch {
            meeting_minutes: self.record_meeting_minutes.then_some(self.config.meeting_minutes),
            orgs: std::mem::take(&mut self.pending_orgs).into_iter().collect(),
            targets: std::mem::take(&mut self.pending_targets).into_iter().collect(),
            catalogue: std::mem::take(&mut self.pending_catalogue).into_iter().collect(),
            plans: std::mem::take(&mut self.pending_plans).into_iter().collect(),
            ..Batch::default()
        }
    }

    /// The first half of a commit: takes every change since the last commit
    /// out of memory into a batch. Its changelog records can then be written
    /// without holding the engine, and [`Engine::finish_commit`] stores it.
    /// Events may be applied in between (the next commit's): until it is
    /// stored, the users and ids of the commit in flight are read from
    /// memory. One commit at a time. `logged`: the changelog will be
    /// written, so the id records forgotten now are listed for it.
    pub fn prepare_commit(&mut self, logged: bool) -> Result<PendingCommit, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        if self.in_flight.is_some() {
            return Err(EngineError::CommitInFlight);
        }
        self.note_plan_changes()?;
        self.reevaluate_slice()?;
        let offsets = self.pending_offsets.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut batch = Batch { offsets, ..self.take_records() };
        let watermark = self.watermark().unwrap_or(Millis::MAX);
        let (mut users, mut org_totals) = (Vec::new(), Vec::new());
        for (i, shard) in self.shards.iter_mut().enumerate() {
            let id = i as ShardId;
            // Profiles change users without an id to remember.
            // A shard with no state is not this instance's to write (its
            // owner logs it): its work is written with its first users.
            let work_due = shard.plan_work_dirty && shard.orgs.iter().next().is_some();
            if shard.seen_keys.is_empty() && shard.users.is_empty() && !work_due {
                continue;
            }
            let names = shard.org_users.drain(..).map(|(org, user, present)| OrgUser {
                shard: id,
                org: self.org_keys.name(org).to_owned(),
                user,
                present,
            });
            batch.org_users.extend(names);
            if work_due {
                shard.plan_work_dirty = false;
                batch.plan_work.push((id, shard.plan_work.clone()));
            }
            let newest = shard.max_ts.min(watermark);
            let forget = newest.saturating_sub(self.config.dedup_horizon_ms).div_euclid(HOUR_MS);
            shard.committing = Arc::new(std::mem::take(&mut shard.users));
            shard.committing_bytes = std::mem::take(&mut shard.bytes);
            users.push((id, Arc::clone(&shard.committing)));
            // An id already past the horizon is not kept (nor logged).
            let kept: Vec<SeenKey> = shard.seen_keys.drain(..).filter(|k| k.bucket >= forget).collect();
            for ids in kept.chunks(SEEN_PER_RECORD) {
                let bucket = ids.iter().map(|k| k.bucket).max().unwrap_or(forget);
                let log = SeenLog { bucket, first: ids[0].hash };
                batch.seen.push((id, SeenIds { log, ids: ids.to_vec() }));
            }
            shard.seen_committing = std::mem::take(&mut shard.seen);
            // The range delete (and its changelog record) only when the bound moves.
            if shard.forgotten_before.is_none_or(|f| forget > f) {
                shard.forgotten_before = Some(forget);
                shard.filter.forget_before(forget);
                batch.forget_before.push((id, forget));
                if logged {
                    match self.store.seen_logs_before(id, forget) {
                        Ok(keys) => batch.forgotten.extend(keys.into_iter().map(|k| (id, k))),
                        Err(e) => {
                            self.poisoned = true;
                            return Err(e.into());
                        }
                    }
                }
            }
            org_totals.extend(shard.orgs.drain_dirty().map(|(k, t)| (id, self.org_keys.name(k).to_owned(), t)));
            batch
                .course_totals
                .extend(shard.courses.drain_dirty().map(|(k, t)| (id, self.course_keys.name(k).to_owned(), t)));
            batch.max_ts.push((id, shard.max_ts));
        }
        self.committing_offsets = std::mem::take(&mut self.pending_offsets);
        self.in_flight = Some(self.uncommitted);
        Ok(PendingCommit { batch, users, org_totals })
    }

    /// The second half of a commit, once [`PendingCommit::store`] has
    /// written it (or failed to: then memory is ahead of the store, and
    /// nothing more is applied or committed until [`Engine::recover`]).
    pub fn finish_commit(&mut self, stored: Result<Stored, StoreError>) -> Result<(), EngineError> {
        let Stored { changelog } = stored.inspect_err(|_| self.poisoned = true)?;
        self.changelog.extend(changelog);
        self.offsets.append(&mut self.committing_offsets);
        for shard in &mut self.shards {
            shard.committing = Committing::default();
            shard.committing_bytes = 0;
            shard.seen_committing.clear();
        }
        self.record_meeting_minutes = false;
        self.uncommitted -= self.in_flight.take().unwrap_or(0);
        Ok(())
    }
}
