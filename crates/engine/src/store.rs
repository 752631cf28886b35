//! The storage trait the engine works on, and its in-memory implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use pulse_model::{CourseRecord, Millis, OrgRecord, PlanRecord, TargetRecord};
use serde::{Deserialize, Serialize};

use crate::plan_work::PlanWork;
use crate::state::{CourseTotals, Totals, UserState};
use crate::table::FastMap;

/// A shard of user state: the number of the input partition its users'
/// events are keyed to ([`pulse_model::partition_of`] of the user id).
pub type ShardId = u16;

/// A remembered event id: its event-time bucket (hours since the epoch, used
/// to forget ids past the dedup horizon without a scan) and a 128-bit hash of
/// the id (a fixed-size key; a collision needs ~2^64 ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeenKey {
    pub bucket: i64,
    pub hash: u128,
}

/// The name of the changelog record that carries a batch of one shard's
/// remembered ids: the newest bucket among them and the first id's hash
/// (unique, as an id is remembered once). The store keeps these names so
/// that a record can be tombstoned once the forget bound passes its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeenLog {
    pub bucket: i64,
    pub first: u128,
}

/// Remembered ids committed together, with the name of their changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenIds {
    pub log: SeenLog,
    pub ids: Vec<SeenKey>,
}

/// Error of a storage backend, boxed so the engine stays backend-agnostic.
/// Its message includes the cause, which is therefore not also a `source`
/// (printing the chain would say it twice).
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub struct StoreError {
    pub context: String,
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    pub fn new(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError { context: context.into(), cause: source.into() }
    }
}

/// Everything of size O(orgs + courses) that the engine keeps in memory,
/// as last committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadedState {
    pub shards: ShardId,
    /// The `users_meeting_hours` threshold the stored totals were built with.
    pub meeting_minutes: Option<u32>,
    pub orgs: BTreeMap<String, OrgRecord>,
    pub targets: BTreeMap<String, TargetRecord>,
    /// The course catalogue.
    pub catalogue: BTreeMap<String, CourseRecord>,
    /// The capacity-building plans.
    pub plans: BTreeMap<String, PlanRecord>,
    /// Per shard: totals by leaf org key, totals by course, newest event time.
    pub org_totals: Vec<HashMap<String, Totals>>,
    pub course_totals: Vec<HashMap<String, CourseTotals>>,
    pub max_ts: Vec<Millis>,
    /// Where each (topic, partition) stands, as committed with the state it
    /// produced. A partition's number is its shard's.
    pub offsets: BTreeMap<(String, i32), StreamPosition>,
    /// Per shard: the changelog offset after the last record this state includes.
    pub changelog: BTreeMap<ShardId, i64>,
    /// Per shard: where the re-evaluation of its users' plans stands
    /// (absent: never written).
    pub plan_work: BTreeMap<ShardId, PlanWork>,
}

/// Where an input partition stands: the next offset to consume, and the
/// newest event time among the messages before it (`None` until one carried
/// a valid event). The oldest of those newest times over all partitions is
/// the event-time watermark that dedup ids are kept against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub next: i64,
    pub newest_event: Option<Millis>,
}

/// An entry of a shard's index of users by leaf org (`present: false`
/// removes it): how a plan change finds the users of a subtree without a
/// scan of every user. An entry may outlive a user's move (a restore from
/// a compacted changelog cannot remove it); re-evaluating that user is
/// harmless, as it reads the user's own org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUser {
    pub shard: ShardId,
    pub org: String,
    pub user: String,
    pub present: bool,
}

/// One atomic commit: every change since the previous one. `None` deletes.
#[derive(Debug, Default)]
pub struct Batch {
    pub meeting_minutes: Option<u32>,
    /// Changed users, their state encoded ([`crate::codec`]).
    pub users: Vec<(ShardId, String, Vec<u8>)>,
    /// Changes to the index of users by leaf org, in order.
    pub org_users: Vec<OrgUser>,
    pub seen: Vec<(ShardId, SeenIds)>,
    /// Per shard: forget every id (and every id record name) whose bucket
    /// is below this one.
    pub forget_before: Vec<(ShardId, i64)>,
    /// The id records whose ids are all forgotten by `forget_before`,
    /// listed for the changelog (whose compaction needs a tombstone per
    /// record); the store drops them by range.
    pub forgotten: Vec<(ShardId, SeenLog)>,
    /// Changed org totals, encoded ([`crate::codec`]).
    pub org_totals: Vec<(ShardId, String, Option<Vec<u8>>)>,
    pub course_totals: Vec<(ShardId, String, Option<CourseTotals>)>,
    pub max_ts: Vec<(ShardId, Millis)>,
    pub plan_work: Vec<(ShardId, PlanWork)>,
    pub orgs: Vec<(String, Option<OrgRecord>)>,
    pub targets: Vec<(String, Option<TargetRecord>)>,
    pub catalogue: Vec<(String, Option<CourseRecord>)>,
    pub plans: Vec<(String, Option<PlanRecord>)>,
    /// The position of every (topic, partition) this batch covers.
    pub offsets: Vec<((String, i32), StreamPosition)>,
    /// Per shard: the changelog offset after this batch's records.
    pub changelog: Vec<(ShardId, i64)>,
    /// Shards whose whole state is deleted (users, ids, totals, newest
    /// event time, offsets, changelog position), before the rest of the batch.
    pub drop_shards: Vec<ShardId>,
}

/// What the engine needs from durable storage. A [`Batch`] is applied
/// atomically: after a crash the store holds either all of it or none.
pub trait Store {
    type Writer: StoreWriter;
    /// The shard count, fixed when the store is created.
    fn shards(&self) -> ShardId;
    fn load(&self) -> Result<LoadedState, StoreError>;
    fn user(&self, shard: ShardId, user: &str) -> Result<Option<UserState>, StoreError>;
    /// Up to `limit` users of leaf org `org` in a shard's index, in id
    /// order, from the first after `after`.
    fn users_of(&self, shard: ShardId, org: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<String>, StoreError>;
    fn is_seen(&self, shard: ShardId, key: SeenKey) -> Result<bool, StoreError>;
    /// The newest hour bucket among a shard's remembered ids (`None`: none).
    fn newest_seen_bucket(&self, shard: ShardId) -> Result<Option<i64>, StoreError>;
    /// The names of a shard's id records whose newest bucket is below `bucket`.
    fn seen_logs_before(&self, shard: ShardId, bucket: i64) -> Result<Vec<SeenLog>, StoreError>;
    /// The one way to write: a handle that commits batches, also from
    /// another thread (a commit's own) while this store keeps answering
    /// reads. A read sees a batch wholly or not at all.
    fn writer(&self) -> Self::Writer;
    /// Writes a batch of state restored from a changelog: a store may
    /// write one that carries no changelog position and drops no shard
    /// without making it durable at once (a crash loses it with the
    /// position it leads to, and the restore reads it again), as long as
    /// every earlier one is durable before one that does.
    fn restore(&self, batch: Batch) -> Result<(), StoreError> {
        self.writer().commit(batch)
    }
    /// Changes the shard count of a store that holds no shard state yet
    /// (the count follows the input topics' partitions).
    fn set_shards(&mut self, shards: ShardId) -> Result<(), StoreError>;
    /// After a failed write: succeeds once the store can write again (say,
    /// space was freed), with what it held before the failure.
    fn recover(&mut self) -> Result<(), StoreError>;
}

/// Writes batches to a [`Store`], atomically each.
pub trait StoreWriter: Send + 'static {
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
}

/// The in-memory store, for tests: what it holds is exactly what was
/// committed. Its writers share its state.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Clone, Default)]
struct MemState {
    state: LoadedState,
    /// Users encoded, as a store on disk holds them: decoded when read, so
    /// that a commit costs a copy of bytes, not a rebuild of every user.
    users: Vec<FastMap<String, Vec<u8>>>,
    /// Per shard: the index of users by leaf org.
    org_users: Vec<BTreeSet<(String, String)>>,
    /// Per shard: id hash -> bucket, and bucket -> id hashes (for forgetting).
    seen: Vec<FastMap<u128, i64>>,
    seen_buckets: Vec<BTreeMap<i64, Vec<u128>>>,
    seen_logs: Vec<BTreeSet<SeenLog>>,
}

impl MemStore {
    pub fn new(shards: ShardId) -> MemStore {
        MemStore { state: Arc::new(Mutex::new(MemState::new(shards))) }
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`MemStore`]'s writer.
#[derive(Debug)]
pub struct MemWriter {
    state: Arc<Mutex<MemState>>,
}

impl StoreWriter for MemWriter {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).commit(batch)
    }
}

impl MemState {
    fn new(shards: ShardId) -> MemState {
        let n = usize::from(shards.max(1));
        MemState {
            state: LoadedState {
                shards: shards.max(1),
                org_totals: vec![HashMap::new(); n],
                course_totals: vec![HashMap::new(); n],
                max_ts: vec![Millis::MIN; n],
                ..LoadedState::default()
            },
            users: vec![FastMap::default(); n],
            org_users: vec![BTreeSet::new(); n],
            seen: vec![FastMap::default(); n],
            seen_buckets: vec![BTreeMap::new(); n],
            seen_logs: vec![BTreeSet::new(); n],
        }
    }
}

fn put<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

impl Store for MemStore {
    type Writer = MemWriter;

    fn shards(&self) -> ShardId {
        self.state().state.shards
    }

    fn load(&self) -> Result<LoadedState, StoreError> {
        Ok(self.state().state.clone())
    }

    fn users_of(
        &self,
        shard: ShardId,
        org: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let from = match after {
            Some(user) => Excluded((org.to_owned(), user.to_owned())),
            None => Included((org.to_owned(), String::new())),
        };
        let state = self.state();
        let index = &state.org_users[usize::from(shard)];
        Ok(index.range((from, Unbounded)).take_while(|(o, _)| o == org).take(limit).map(|(_, u)| u.clone()).collect())
    }

    fn user(&self, shard: ShardId, user: &str) -> Result<Option<UserState>, StoreError> {
        let state = self.state();
        state.users[usize::from(shard)].get(user).map(|bytes| crate::codec::decode("a user", bytes)).transpose()
    }

    fn is_seen(&self, shard: ShardId, key: SeenKey) -> Result<bool, StoreError> {
        Ok(self.state().seen[usize::from(shard)].contains_key(&key.hash))
    }

    fn newest_seen_bucket(&self, shard: ShardId) -> Result<Option<i64>, StoreError> {
        Ok(self.state().seen_buckets[usize::from(shard)].keys().next_back().copied())
    }

    fn seen_logs_before(&self, shard: ShardId, bucket: i64) -> Result<Vec<SeenLog>, StoreError> {
        Ok(self.state().seen_logs[usize::from(shard)].range(..SeenLog { bucket, first: 0 }).copied().collect())
    }

    fn writer(&self) -> MemWriter {
        MemWriter { state: Arc::clone(&self.state) }
    }

    fn set_shards(&mut self, shards: ShardId) -> Result<(), StoreError> {
        let mut state = self.state();
        let kept = std::mem::take(&mut state.state);
        *state = MemState::new(shards);
        (
            state.state.meeting_minutes,
            state.state.orgs,
            state.state.targets,
            state.state.catalogue,
            state.state.plans,
        ) = (kept.meeting_minutes, kept.orgs, kept.targets, kept.catalogue, kept.plans);
        Ok(())
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl MemState {
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        for shard in batch.drop_shards {
            let s = usize::from(shard);
            self.users[s].clear();
            self.org_users[s].clear();
            self.state.plan_work.remove(&shard);
            self.seen[s].clear();
            self.seen_buckets[s].clear();
            self.seen_logs[s].clear();
            self.state.org_totals[s].clear();
            self.state.course_totals[s].clear();
            self.state.max_ts[s] = Millis::MIN;
            self.state.offsets.retain(|(_, p), _| *p != i32::from(shard));
            self.state.changelog.remove(&shard);
        }
        if batch.meeting_minutes.is_some() {
            self.state.meeting_minutes = batch.meeting_minutes;
        }
        for (shard, user, state) in batch.users {
            self.users[usize::from(shard)].insert(user, state);
        }
        for OrgUser { shard, org, user, present } in batch.org_users {
            let index = &mut self.org_users[usize::from(shard)];
            match present {
                true => index.insert((org, user)),
                false => index.remove(&(org, user)),
            };
        }
        self.state.plan_work.extend(batch.plan_work);
        for (shard, SeenIds { log, ids }) in batch.seen {
            let s = usize::from(shard);
            self.seen_logs[s].insert(log);
            for key in ids {
                if self.seen[s].insert(key.hash, key.bucket).is_none() {
                    self.seen_buckets[s].entry(key.bucket).or_default().push(key.hash);
                }
            }
        }
        for (shard, before) in batch.forget_before {
            let s = usize::from(shard);
            let keep = self.seen_buckets[s].split_off(&before);
            for hash in std::mem::replace(&mut self.seen_buckets[s], keep).into_values().flatten() {
                self.seen[s].remove(&hash);
            }
            let keep = self.seen_logs[s].split_off(&SeenLog { bucket: before, first: 0 });
            self.seen_logs[s] = keep;
        }
        for (shard, key, totals) in batch.org_totals {
            let totals = totals.map(|t| crate::codec::decode("org totals", &t)).transpose()?;
            put(&mut self.state.org_totals[usize::from(shard)], key, totals);
        }
        for (shard, key, totals) in batch.course_totals {
            put(&mut self.state.course_totals[usize::from(shard)], key, totals);
        }
        for (shard, ts) in batch.max_ts {
            self.state.max_ts[usize::from(shard)] = ts;
        }
        for (id, rec) in batch.orgs {
            match rec {
                Some(r) => self.state.orgs.insert(id, r),
                None => self.state.orgs.remove(&id),
            };
        }
        for (id, rec) in batch.targets {
            match rec {
                Some(r) => self.state.targets.insert(id, r),
                None => self.state.targets.remove(&id),
            };
        }
        for (id, rec) in batch.catalogue {
            match rec {
                Some(r) => self.state.catalogue.insert(id, r),
                None => self.state.catalogue.remove(&id),
            };
        }
        for (id, rec) in batch.plans {
            match rec {
                Some(r) => self.state.plans.insert(id, r),
                None => self.state.plans.remove(&id),
            };
        }
        self.state.offsets.extend(batch.offsets);
        self.state.changelog.extend(batch.changelog);
        Ok(())
    }
}
