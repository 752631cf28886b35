//! The engine: applies events and registry records to the state, keeps the
//! write-back cache of changed users, and commits it to the [`Store`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pulse_model::{
    parse, parse_org, parse_target, Event, InputFormat, Millis, OrgRecord, OrgUpdate, Parsed, Rejection, TargetRecord,
    TargetUpdate, TimeRules,
};
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use crate::changelog::{changes, Change, ChangeLog};
use crate::codec;
use crate::filter::SeenFilter;
use crate::registry::Registry;
use crate::report::Snapshot;
use crate::rollup::OrgView;
use crate::state::{CourseTotals, Totals, UserState};
use crate::store::{Batch, SeenIds, SeenKey, SeenLog, ShardId, Store, StoreError, StoreWriter, StreamPosition};
use crate::table::{FastMap, FastSet, Interner, Table};

const HOUR_MS: i64 = 3_600_000;

/// Remembered ids per changelog record (24 bytes each: under half of
/// Kafka's default 1 MB message limit). One record per shard and commit,
/// not one per id: per-record costs dominated the changelog (docs/BENCHMARKS.md).
const SEEN_PER_RECORD: usize = 20_000;

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Event ids are remembered at least until the newest event time of their
    /// shard is this far past their own event time (default 7 days).
    pub dedup_horizon_ms: i64,
    /// `users_meeting_hours_fy` counts users with at least this many learning
    /// minutes in the year (default 240).
    pub meeting_minutes: u32,
    pub time_rules: TimeRules,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { dedup_horizon_ms: 7 * 24 * HOUR_MS, meeting_minutes: 240, time_rules: TimeRules::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "`{key}` is {configured} but the state in this data directory was built with {stored}; \
         set it back, or rebuild the state with `pulse replay` into an empty data directory"
    )]
    ConfigMismatch { key: &'static str, stored: String, configured: String },
    #[error(
        "the state directory holds {stored} shards but the input topics have {partitions} partitions; \
         a shard is a partition, so point store.data_dir at an empty directory (the state is restored \
         from the changelog) or give the topics {stored} partitions"
    )]
    PartitionMismatch { stored: ShardId, partitions: ShardId },
    #[error("an earlier store operation failed, so memory and storage may differ; recover (or restart) to reload the stored state")]
    Poisoned,
    #[error("a commit is already in flight; finish it before preparing the next (a bug in the caller)")]
    CommitInFlight,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Applied,
    Duplicate,
    /// A valid message the contract skips; the string names the rule.
    Ignored(&'static str),
    /// Goes to the dead-letter topic.
    Dead(Rejection),
}

/// Counts of dispositions, as `pulse replay` prints them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub ignored: u64,
    pub dead_letters: BTreeMap<&'static str, u64>,
}

impl IngestStats {
    pub fn record(&mut self, d: &Disposition) {
        match d {
            Disposition::Applied => self.accepted += 1,
            Disposition::Duplicate => self.duplicates += 1,
            Disposition::Ignored(_) => self.ignored += 1,
            Disposition::Dead(r) => *self.dead_letters.entry(r.reason.code()).or_default() += 1,
        }
    }
}

/// A commit between [`Engine::prepare_commit`] and [`Engine::finish_commit`].
#[derive(Debug)]
pub struct PendingCommit {
    batch: Batch,
    /// Its users, shared with the engine (which reads them until the store
    /// has them): encoded into the batch by the thread that writes it.
    users: Vec<(ShardId, Committing)>,
}

impl PendingCommit {
    /// Its changelog records, by shard.
    pub fn changes(&mut self) -> BTreeMap<ShardId, Vec<Change>> {
        self.encode_users();
        changes(&self.batch)
    }

    /// Encoded once, for the changelog and the store alike.
    fn encode_users(&mut self) {
        for (shard, users) in self.users.drain(..) {
            self.batch.users.extend(users.iter().map(|(user, state)| (shard, user.clone(), codec::encode(state))));
        }
    }

    /// Writes it to the store, on any thread (the engine goes on applying
    /// meanwhile): `logged` is where its changelog records were written
    /// (`None`: no changelog), so the store holds those positions with it.
    pub fn store(
        mut self,
        writer: &impl StoreWriter,
        logged: Option<Vec<(ShardId, i64)>>,
    ) -> Result<Stored, StoreError> {
        self.encode_users();
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
type Committing = Arc<FastMap<String, UserState>>;

/// In-memory state of one shard: its totals (always current) and what changed
/// since the last commit.
#[derive(Debug, Default)]
struct Shard {
    /// Totals by interned leaf org key.
    orgs: Table<Totals>,
    /// Totals by interned course id.
    courses: Table<CourseTotals>,
    max_ts: Millis,
    /// Write-back cache: every user changed since the last commit.
    users: FastMap<String, UserState>,
    /// The users of the commit in flight (prepared, not yet stored):
    /// read before the store, which does not have them yet.
    committing: Committing,
    /// Ids since the last commit, and those of the commit in flight.
    seen: FastSet<u128>,
    seen_committing: FastSet<u128>,
    seen_keys: Vec<SeenKey>,
    /// Answers "certainly new" for most new ids without asking the store.
    filter: SeenFilter,
    /// The forget bound (an hour bucket) last written for this shard:
    /// the store's range delete is written only when it moves.
    forgotten_before: Option<i64>,
}

#[derive(Debug)]
pub struct Engine<S> {
    store: S,
    config: EngineConfig,
    meeting_ms: i64,
    registry: Registry,
    targets: BTreeMap<String, TargetRecord>,
    shards: Vec<Shard>,
    org_keys: Interner,
    course_keys: Interner,
    pending_orgs: BTreeMap<String, Option<OrgRecord>>,
    pending_targets: BTreeMap<String, Option<TargetRecord>>,
    /// Partition positions, committed and pending, by (topic, partition).
    offsets: BTreeMap<(String, i32), StreamPosition>,
    pending_offsets: BTreeMap<(String, i32), StreamPosition>,
    /// The positions of the commit in flight.
    committing_offsets: BTreeMap<(String, i32), StreamPosition>,
    /// Partitions read to their end: nothing older can arrive from them
    /// before something newer, so they do not hold the watermark back.
    at_end: BTreeSet<(String, i32)>,
    /// Per shard: the changelog offset after the last record the store holds.
    changelog: BTreeMap<ShardId, i64>,
    /// The newest time of the valid events since `set_next_offset` last
    /// filed it under its partition (the caller may file a run of one
    /// partition's messages at once).
    last_event: Option<Millis>,
    /// Set until the threshold is first written to a fresh store.
    record_meeting_minutes: bool,
    /// Messages applied since the last commit was stored, and how many of
    /// them the commit in flight holds (`None`: no commit in flight).
    uncommitted: usize,
    in_flight: Option<usize>,
    poisoned: bool,
}

impl<S: Store> Engine<S> {
    /// Loads the committed state of `store`.
    pub fn open(store: S, config: EngineConfig) -> Result<Engine<S>, EngineError> {
        let mut engine = Engine {
            meeting_ms: i64::from(config.meeting_minutes) * pulse_model::Minutes::MS_PER_MINUTE,
            record_meeting_minutes: false,
            config,
            registry: Registry::new(BTreeMap::new()),
            targets: BTreeMap::new(),
            shards: Vec::new(),
            org_keys: Interner::default(),
            course_keys: Interner::default(),
            pending_orgs: BTreeMap::new(),
            pending_targets: BTreeMap::new(),
            offsets: BTreeMap::new(),
            pending_offsets: BTreeMap::new(),
            committing_offsets: BTreeMap::new(),
            at_end: BTreeSet::new(),
            changelog: BTreeMap::new(),
            last_event: None,
            uncommitted: 0,
            in_flight: None,
            poisoned: false,
            store,
        };
        engine.reload()?;
        Ok(engine)
    }

    /// Drops everything not committed and loads what the store holds, as a
    /// restart would.
    pub fn reload(&mut self) -> Result<(), EngineError> {
        let loaded = self.store.load()?;
        if let Some(stored) = loaded.meeting_minutes.filter(|&m| m != self.config.meeting_minutes) {
            return Err(EngineError::ConfigMismatch {
                key: "engine.meeting_minutes",
                stored: stored.to_string(),
                configured: self.config.meeting_minutes.to_string(),
            });
        }
        let (mut org_keys, mut course_keys) = (Interner::default(), Interner::default());
        let mut shards: Vec<Shard> = (0..self.store.shards()).map(|_| Shard::default()).collect();
        for (i, shard) in shards.iter_mut().enumerate() {
            for (org, t) in loaded.org_totals.get(i).into_iter().flatten() {
                shard.orgs.load(org_keys.id(org), t.clone());
            }
            for (course, t) in loaded.course_totals.get(i).into_iter().flatten() {
                shard.courses.load(course_keys.id(course), *t);
            }
            shard.max_ts = loaded.max_ts.get(i).copied().unwrap_or(Millis::MIN);
            shard.filter = SeenFilter::new(self.store.newest_seen_bucket(i as ShardId)?);
        }
        self.record_meeting_minutes = loaded.meeting_minutes.is_none();
        self.registry = Registry::new(loaded.orgs);
        self.targets = loaded.targets;
        (self.shards, self.org_keys, self.course_keys) = (shards, org_keys, course_keys);
        self.pending_orgs.clear();
        self.pending_targets.clear();
        self.offsets = loaded.offsets;
        self.pending_offsets.clear();
        self.committing_offsets.clear();
        self.changelog = loaded.changelog;
        (self.last_event, self.uncommitted, self.in_flight, self.poisoned) = (None, 0, None, false);
        Ok(())
    }

    /// After a failed store operation (a full disk): once the store can
    /// write again, drops everything not committed and reloads the committed
    /// state. The caller rewinds its inputs to [`Engine::next_offset`].
    pub fn recover(&mut self) -> Result<(), EngineError> {
        self.store.recover()?;
        self.reload()
    }

    /// Marks memory as possibly different from the store (taking a
    /// partition over failed half-way): nothing is applied or committed
    /// until [`Engine::recover`] reloads it.
    pub fn invalidate(&mut self) {
        self.poisoned = true;
    }

    /// Whether a store operation failed since the last (re)load: until
    /// [`Engine::recover`], nothing more can be committed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Gives the store back, dropping everything not committed (as a crash would).
    pub fn into_store(self) -> S {
        self.store
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The event time of the newest event applied, if any.
    pub fn newest_event(&self) -> Option<Millis> {
        self.shards.iter().map(|s| s.max_ts).max().filter(|&ts| ts != Millis::MIN)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn targets(&self) -> &BTreeMap<String, TargetRecord> {
        &self.targets
    }

    /// Messages applied since the last commit was stored (those of a
    /// commit in flight included).
    pub fn uncommitted(&self) -> usize {
        self.uncommitted
    }

    /// Whether a commit is prepared and not yet finished.
    pub fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The shard that holds a user's state: the partition a Java producer
    /// puts a message keyed by the user id on.
    pub fn shard_of(&self, user: &str) -> ShardId {
        pulse_model::partition_of(user.as_bytes(), self.shards.len() as u32) as ShardId
    }

    pub fn shards(&self) -> ShardId {
        self.shards.len() as ShardId
    }

    /// Makes the shard count the input topics' partition count: a store
    /// that holds no shard state yet takes it; one built for another count
    /// is refused.
    pub fn adopt_shards(&mut self, partitions: ShardId) -> Result<(), EngineError> {
        if partitions == self.shards() {
            return Ok(());
        }
        let empty = self.offsets.is_empty()
            && self.changelog.is_empty()
            && self.shards.iter().all(|s| s.orgs.iter().next().is_none() && s.max_ts == Millis::MIN);
        if !empty || self.uncommitted > 0 {
            return Err(EngineError::PartitionMismatch { stored: self.shards(), partitions });
        }
        self.store.set_shards(partitions)?;
        self.reload()
    }

    /// The changelog offset after the last record the local state of a
    /// shard includes; `None` when it holds none.
    pub fn changelog_position(&self, shard: ShardId) -> Option<i64> {
        self.changelog.get(&shard).copied()
    }

    /// Keeps the state of the given shards only (the partitions this
    /// instance owns): every other shard's state is deleted, so that no
    /// instance holds, or exports, a shard another one owns. Everything
    /// applied must be committed first.
    pub fn keep_only(&mut self, shards: &BTreeSet<ShardId>) -> Result<(), EngineError> {
        let drop: Vec<ShardId> = (0..self.shards()).filter(|s| !shards.contains(s)).collect();
        self.restore(Batch { drop_shards: drop, ..Batch::default() })?;
        self.reload()
    }

    /// Writes a batch of restored shard state (from the changelog) straight
    /// to the store. The caller [`Engine::reload`]s once every batch is in.
    pub fn restore(&mut self, batch: Batch) -> Result<(), EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        self.store.writer().commit(batch).map_err(|e| {
            self.poisoned = true;
            e.into()
        })
    }

    /// Parses, checks and applies one message of an input topic.
    pub fn ingest(&mut self, format: InputFormat, value: &[u8], now: Millis) -> Result<Disposition, EngineError> {
        match self.accept(format, value, now) {
            Err(disposition) => Ok(disposition),
            Ok(ev) => self.apply(&ev),
        }
    }

    /// Parses and checks one message: the valid event, or what becomes of
    /// a message that is not one (ignored, or a dead letter).
    pub fn accept<'a>(&self, format: InputFormat, value: &'a [u8], now: Millis) -> Result<Event<'a>, Disposition> {
        match parse(format, value) {
            Err(rejection) => Err(Disposition::Dead(rejection)),
            Ok(Parsed::Ignored(why)) => Err(Disposition::Ignored(why)),
            Ok(Parsed::Event(ev)) => match self.config.time_rules.check(ev.ts, now) {
                Err(rejection) => Err(Disposition::Dead(rejection)),
                Ok(()) => Ok(ev),
            },
        }
    }

    /// Notes a valid event that is applied elsewhere (in its user's shard,
    /// through the repartition topic): its time counts in the newest event
    /// time of the partition it arrived on, as an applied one's does, so
    /// that the watermark waits for that partition.
    pub fn forwarded(&mut self, ev: &Event<'_>) {
        self.last_event = self.last_event.max(Some(ev.ts));
    }

    /// Applies one valid event: `Applied`, or `Duplicate` if its id was seen.
    pub fn apply(&mut self, ev: &Event<'_>) -> Result<Disposition, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        let shard_id = self.shard_of(&ev.user);
        self.last_event = self.last_event.max(Some(ev.ts));
        let Engine { store, shards, org_keys, course_keys, meeting_ms, .. } = self;
        let shard = &mut shards[usize::from(shard_id)];
        let key = SeenKey { bucket: ev.ts.div_euclid(HOUR_MS), hash: xxh3_128(ev.id.as_bytes()) };
        if shard.filter.may_contain(key.bucket, key.hash)
            && (shard.seen.contains(&key.hash)
                || shard.seen_committing.contains(&key.hash)
                || store.is_seen(shard_id, key)?)
        {
            return Ok(Disposition::Duplicate);
        }
        // Read before the id is marked seen: a failed read leaves no trace.
        let (user, is_new) = match shard.users.get_mut(&*ev.user) {
            Some(u) => (u, false),
            None => {
                let known = match shard.committing.get(&*ev.user) {
                    Some(u) => Some(u.clone()),
                    None => store.user(shard_id, &ev.user)?,
                };
                let is_new = known.is_none();
                (shard.users.entry(ev.user.to_string()).or_insert(known.unwrap_or_default()), is_new)
            }
        };
        shard.seen.insert(key.hash);
        shard.filter.insert(key.bucket, key.hash);
        shard.seen_keys.push(key);

        // The user's share moves: out of the totals it counted in before the
        // event, into those it counts in after (a different org if it moved).
        let before = (!is_new).then(|| (org_keys.id(user.org_key()), user.totals(*meeting_ms)));
        let course_change = user.apply(ev);
        let after = (org_keys.id(user.org_key()), user.totals(*meeting_ms));
        if let Some((org, totals)) = before {
            shard.orgs.update(org, |t| t.add(&totals, -1));
        }
        shard.orgs.update(after.0, |t| t.add(&after.1, 1));
        if let (Some(c), Some((before, after))) = (ev.kind.course(), course_change) {
            shard.courses.update(course_keys.id(c), |t| {
                t.add(&before, -1);
                t.add(&after, 1);
            });
        }
        shard.max_ts = shard.max_ts.max(ev.ts);
        self.uncommitted += 1;
        Ok(Disposition::Applied)
    }

    /// Applies one message of the org registry topic (`None` value: tombstone).
    pub fn apply_org_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_org(key, value).and_then(|update| match update {
            OrgUpdate::Upsert(rec) => {
                self.registry.upsert(rec.clone())?;
                self.pending_orgs.insert(rec.org.clone(), Some(rec));
                Ok(())
            }
            OrgUpdate::Remove(org) => {
                self.registry.remove(&org);
                self.pending_orgs.insert(org, None);
                Ok(())
            }
        });
        self.registry_outcome(outcome)
    }

    /// Applies one message of the targets topic (`None` value: tombstone).
    pub fn apply_target_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_target(key, value).map(|update| match update {
            TargetUpdate::Upsert(rec) => {
                self.targets.insert(rec.id.clone(), rec.clone());
                self.pending_targets.insert(rec.id.clone(), Some(rec));
            }
            TargetUpdate::Remove(id) => {
                self.targets.remove(&id);
                self.pending_targets.insert(id, None);
            }
        });
        self.registry_outcome(outcome)
    }

    fn registry_outcome(&mut self, outcome: Result<(), Rejection>) -> Disposition {
        match outcome {
            Ok(()) => {
                self.uncommitted += 1;
                Disposition::Applied
            }
            Err(rejection) => Disposition::Dead(rejection),
        }
    }

    /// The next offset to consume from a partition, including messages
    /// applied but not yet committed; `None` if nothing was ever consumed.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.position(&(topic.to_owned(), partition)).map(|p| p.next)
    }

    fn position(&self, key: &(String, i32)) -> Option<StreamPosition> {
        let pending = self.pending_offsets.get(key).or_else(|| self.committing_offsets.get(key));
        pending.or_else(|| self.offsets.get(key)).copied()
    }

    /// The next offset of a partition as stored (a commit in flight not included).
    pub fn stored_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(&(topic.to_owned(), partition)).map(|p| p.next)
    }

    /// Records that every message of a partition before `next` has been
    /// applied (the event times since the last call included); the next
    /// commit writes it together with their effect.
    pub fn set_next_offset(&mut self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        let newest = self.position(&key).and_then(|p| p.newest_event).max(self.last_event.take());
        self.pending_offsets.insert(key, StreamPosition { next, newest_event: newest });
    }

    /// Records that the dead letters of a registry partition (read whole
    /// by every instance) are written up to `next`, by this shard's owner;
    /// stored like an input partition's position, without event time.
    pub fn set_letters_written(&mut self, topic: &str, partition: i32, next: i64) {
        self.pending_offsets.insert((topic.to_owned(), partition), StreamPosition { next, newest_event: None });
    }

    /// The event-time watermark of consumed partitions: the oldest of their
    /// newest event times. Partitions are consumed at different speeds (a
    /// backlog, a rebalance), so an id is forgotten only once every partition
    /// is past its horizon: a duplicate arrives in its original's partition,
    /// which may lag far behind the others. `None` outside Kafka (replay).
    fn watermark(&self) -> Option<Millis> {
        let keys: BTreeSet<&(String, i32)> =
            self.offsets.keys().chain(self.committing_offsets.keys()).chain(self.pending_offsets.keys()).collect();
        keys.into_iter().filter(|k| !self.at_end.contains(*k)).filter_map(|k| self.position(k)?.newest_event).min()
    }

    /// The partitions now read to their end (the caller knows their ends):
    /// a partition that receives nothing more must not keep every shard's
    /// ids remembered forever.
    pub fn set_at_end(&mut self, partitions: BTreeSet<(String, i32)>) {
        self.at_end = partitions;
    }

    /// Forgets the registry and the targets (in memory and, at the next
    /// commit, in the store), before they are read again from the start of
    /// their compacted topics: replaying the topic onto an empty registry
    /// gives exactly the registry the topic describes.
    pub fn clear_registry(&mut self) {
        let orgs: Vec<String> = self.registry.orgs().map(|o| o.org.clone()).collect();
        for org in orgs {
            self.registry.remove(&org);
            self.pending_orgs.insert(org, None);
        }
        for id in std::mem::take(&mut self.targets).into_keys() {
            self.pending_targets.insert(id, None);
        }
    }

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
        let mut batch = Batch {
            meeting_minutes: self.record_meeting_minutes.then_some(self.config.meeting_minutes),
            orgs: std::mem::take(&mut self.pending_orgs).into_iter().collect(),
            targets: std::mem::take(&mut self.pending_targets).into_iter().collect(),
            offsets: self.pending_offsets.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            ..Batch::default()
        };
        let watermark = self.watermark().unwrap_or(Millis::MAX);
        let mut users = Vec::new();
        for (i, shard) in self.shards.iter_mut().enumerate() {
            let id = i as ShardId;
            if shard.seen_keys.is_empty() {
                continue;
            }
            let newest = shard.max_ts.min(watermark);
            let forget = newest.saturating_sub(self.config.dedup_horizon_ms).div_euclid(HOUR_MS);
            shard.committing = Arc::new(std::mem::take(&mut shard.users));
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
            batch.org_totals.extend(shard.orgs.drain_dirty().map(|(k, t)| (id, self.org_keys.name(k).to_owned(), t)));
            batch
                .course_totals
                .extend(shard.courses.drain_dirty().map(|(k, t)| (id, self.course_keys.name(k).to_owned(), t)));
            batch.max_ts.push((id, shard.max_ts));
        }
        self.committing_offsets = std::mem::take(&mut self.pending_offsets);
        self.in_flight = Some(self.uncommitted);
        Ok(PendingCommit { batch, users })
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
            shard.seen_committing.clear();
        }
        self.record_meeting_minutes = false;
        self.uncommitted -= self.in_flight.take().unwrap_or(0);
        Ok(())
    }

    /// One user's state, including changes not yet committed.
    pub fn user(&self, user: &str) -> Result<Option<UserState>, EngineError> {
        let shard = self.shard_of(user);
        let s = &self.shards[usize::from(shard)];
        match s.users.get(user).or_else(|| s.committing.get(user)) {
            Some(u) => Ok(Some(u.clone())),
            None => Ok(self.store.user(shard, user)?),
        }
    }

    /// The org-level state as it is now (including uncommitted changes).
    /// Shards are summed per interned key first, so the rollup and the
    /// course map see each org and course once.
    pub fn snapshot(&self) -> Snapshot {
        let mut orgs: Vec<Option<Totals>> = vec![None; self.org_keys.names().len()];
        let mut courses = vec![CourseTotals::default(); self.course_keys.names().len()];
        for shard in &self.shards {
            for (k, t) in shard.orgs.iter() {
                orgs[k as usize].get_or_insert_with(Totals::default).add(t, 1);
            }
            for (k, t) in shard.courses.iter() {
                courses[k as usize].add(t, 1);
            }
        }
        let leaves: Vec<(&str, &Totals)> =
            self.org_keys.names().filter_map(|(k, name)| Some((name, orgs[k as usize].as_ref()?))).collect();
        let unknown = leaves.iter().filter(|(o, _)| *o != crate::UNASSIGNED && self.registry.get(o).is_none());
        Snapshot {
            unknown_orgs: unknown.count(),
            view: OrgView::build(&self.registry, leaves.iter().copied()),
            courses: self
                .course_keys
                .names()
                .filter(|(k, _)| !courses[*k as usize].is_zero())
                .map(|(k, name)| (name.to_owned(), courses[k as usize]))
                .collect(),
            targets: self.targets.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use pulse_model::{parse, Fy, Parsed};

    use super::*;
    use crate::store::{LoadedState, MemStore, MemWriter};

    fn progress(id: &str, ts: Millis) -> Event<'static> {
        let line = format!(
            r#"{{"v":1,"id":"{id}","type":"progress","ts":{ts},"user":"u","org":"O","course":"c","minutes":10}}"#
        );
        match parse(InputFormat::PulseV1, line.as_bytes()) {
            Ok(Parsed::Event(e)) => e.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_are_remembered_within_the_horizon_and_forgotten_after_it() {
        let day = 24 * HOUR_MS;
        let mut engine = Engine::open(MemStore::new(1), EngineConfig::default()).unwrap();
        let t0 = 1_750_000_000_000;
        assert_eq!(engine.apply(&progress("a", t0)).unwrap(), Disposition::Applied);
        engine.commit().unwrap();
        // Newest event time 6 days past `a`: still inside the 7-day horizon.
        engine.apply(&progress("b", t0 + 6 * day)).unwrap();
        engine.commit().unwrap();
        assert_eq!(engine.apply(&progress("a", t0)).unwrap(), Disposition::Duplicate);
        // 8 days past: `a` may be forgotten, and is, without a scan of all ids.
        engine.apply(&progress("c", t0 + 8 * day)).unwrap();
        engine.commit().unwrap();
        assert_eq!(engine.apply(&progress("a", t0)).unwrap(), Disposition::Applied);
        assert_eq!(engine.apply(&progress("b", t0 + 6 * day)).unwrap(), Disposition::Duplicate);
    }

    /// Applies one event as consumed from partition `partition` of topic
    /// `in` at `offset`, and commits.
    fn consume(engine: &mut Engine<MemStore>, partition: i32, offset: i64, id: &str, ts: Millis) -> Disposition {
        let d = engine.apply(&progress(id, ts)).unwrap();
        engine.set_next_offset("in", partition, offset + 1);
        engine.commit().unwrap();
        d
    }

    #[test]
    fn a_lagging_partition_holds_its_ids_until_it_passes_the_horizon_too() {
        let day = 24 * HOUR_MS;
        let mut engine = Engine::open(MemStore::new(1), EngineConfig::default()).unwrap();
        let t0 = 1_750_000_000_000;
        // Partition 1 lags a month of event time behind partition 0 (a backlog).
        assert_eq!(consume(&mut engine, 1, 0, "a", t0), Disposition::Applied);
        consume(&mut engine, 0, 0, "x", t0 + 30 * day);
        // `a`'s copy arrives in its own partition: still a duplicate.
        assert_eq!(consume(&mut engine, 1, 1, "a", t0), Disposition::Duplicate);
        // Once partition 1 too is past the horizon, `a` is forgotten.
        consume(&mut engine, 1, 2, "y", t0 + 8 * day);
        assert_eq!(consume(&mut engine, 1, 3, "a", t0), Disposition::Applied);
        // The positions carry the newest event time through a restart.
        let engine = Engine::open(engine.into_store(), EngineConfig::default()).unwrap();
        assert_eq!(engine.watermark(), Some(t0 + 8 * day));
    }

    #[test]
    fn a_partition_read_to_its_end_does_not_hold_the_ids_of_the_others() {
        let day = 24 * HOUR_MS;
        let mut engine = Engine::open(MemStore::new(1), EngineConfig::default()).unwrap();
        let t0 = 1_750_000_000_000;
        // Partition 1 received one event, then nothing more; partition 0 moves on.
        consume(&mut engine, 1, 0, "quiet", t0);
        consume(&mut engine, 0, 0, "a", t0);
        consume(&mut engine, 0, 1, "b", t0 + 30 * day);
        assert_eq!(consume(&mut engine, 0, 2, "a", t0), Disposition::Duplicate, "held back by partition 1");
        // Partition 1 is at its end: the watermark is partition 0's alone.
        engine.set_at_end([("in".to_owned(), 1)].into());
        consume(&mut engine, 0, 3, "c", t0 + 30 * day);
        assert_eq!(consume(&mut engine, 0, 4, "a", t0), Disposition::Applied);
    }

    #[test]
    fn the_forget_range_is_written_only_when_the_bound_moves() {
        let day = 24 * HOUR_MS;
        let mut engine = Engine::open(MemStore::new(1), EngineConfig::default()).unwrap();
        let t0 = 1_750_000_000_000;
        let mut bounds = Vec::new();
        for (i, ts) in [t0, t0 + 1000, t0 + 2000, t0 + 8 * day].into_iter().enumerate() {
            engine.apply(&progress(&format!("e{i}"), ts)).unwrap();
            let pending = engine.prepare_commit(false).unwrap();
            bounds.push(pending.batch.forget_before.len());
            let stored = pending.store(&engine.store.writer(), None);
            engine.finish_commit(stored).unwrap();
        }
        assert_eq!(bounds, [1, 0, 0, 1], "written at the first commit and when it moved");
    }

    fn registered(engine: &Engine<impl Store>, node: &str) -> Option<i64> {
        let report = engine.snapshot().report(Fy(2025), 1_750_000_000_000);
        report.nodes?.into_iter().find(|(id, _)| id == node).map(|(_, k)| k.registered_users)
    }

    /// The defined outcome for a valid event whose org the registry later
    /// deletes: the user counts under `unassigned` until the org is back.
    #[test]
    fn a_user_of_an_org_the_registry_later_deletes_counts_under_unassigned() {
        let mut engine = Engine::open(MemStore::new(2), EngineConfig::default()).unwrap();
        let org = br#"{"v":1,"org":"O","parent":null}"#.as_slice();
        engine.apply_org_message(Some(b"O"), Some(org));
        engine.apply(&progress("a", 1_750_000_000_000)).unwrap();
        assert_eq!((registered(&engine, "O"), registered(&engine, "unassigned")), (Some(1), Some(0)));
        engine.apply_org_message(Some(b"O"), None);
        assert_eq!((registered(&engine, "O"), registered(&engine, "unassigned")), (None, Some(1)));
        assert_eq!(registered(&engine, "national"), Some(1));
        engine.apply_org_message(Some(b"O"), Some(org));
        assert_eq!((registered(&engine, "O"), registered(&engine, "unassigned")), (Some(1), Some(0)));
    }

    /// A store that can be made to refuse writes, like a full disk.
    struct Refusing {
        inner: MemStore,
        refuse: Arc<AtomicBool>,
    }

    struct RefusingWriter {
        inner: MemWriter,
        refuse: Arc<AtomicBool>,
    }

    fn refused<T>(
        refuse: &AtomicBool,
        context: &str,
        then: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match refuse.load(Ordering::Relaxed) {
            true => Err(StoreError::new(context, "No space left on device")),
            false => then(),
        }
    }

    impl StoreWriter for RefusingWriter {
        fn commit(&self, batch: Batch) -> Result<(), StoreError> {
            refused(&self.refuse, "commit", || self.inner.commit(batch))
        }
    }

    impl Store for Refusing {
        type Writer = RefusingWriter;
        fn shards(&self) -> ShardId {
            self.inner.shards()
        }
        fn load(&self) -> Result<LoadedState, StoreError> {
            self.inner.load()
        }
        fn user(&self, shard: ShardId, user: &str) -> Result<Option<UserState>, StoreError> {
            self.inner.user(shard, user)
        }
        fn is_seen(&self, shard: ShardId, key: SeenKey) -> Result<bool, StoreError> {
            self.inner.is_seen(shard, key)
        }
        fn newest_seen_bucket(&self, shard: ShardId) -> Result<Option<i64>, StoreError> {
            self.inner.newest_seen_bucket(shard)
        }
        fn seen_logs_before(&self, shard: ShardId, bucket: i64) -> Result<Vec<SeenLog>, StoreError> {
            self.inner.seen_logs_before(shard, bucket)
        }
        fn set_shards(&mut self, shards: ShardId) -> Result<(), StoreError> {
            self.inner.set_shards(shards)
        }
        fn writer(&self) -> RefusingWriter {
            RefusingWriter { inner: self.inner.writer(), refuse: Arc::clone(&self.refuse) }
        }
        fn recover(&mut self) -> Result<(), StoreError> {
            refused(&self.refuse, "recover", || Ok(()))
        }
    }

    #[test]
    fn after_a_refused_commit_recover_reloads_exactly_the_committed_state() {
        let store = Refusing { inner: MemStore::new(2), refuse: Arc::default() };
        let mut engine = Engine::open(store, EngineConfig::default()).unwrap();
        let t0 = 1_750_000_000_000;
        engine.apply(&progress("a", t0)).unwrap();
        engine.set_next_offset("in", 0, 1);
        engine.commit().unwrap();
        engine.apply(&progress("b", t0)).unwrap();
        engine.set_next_offset("in", 0, 2);
        engine.store.refuse.store(true, Ordering::Relaxed);
        assert!(engine.commit().is_err());
        assert!(engine.is_poisoned());
        assert!(matches!(engine.apply(&progress("c", t0)), Err(EngineError::Poisoned)));
        assert!(engine.recover().is_err(), "the store still refuses");
        engine.store.refuse.store(false, Ordering::Relaxed);
        engine.recover().unwrap();
        assert!(!engine.is_poisoned());
        assert_eq!(engine.next_offset("in", 0), Some(1), "rewinds to the committed offset");
        let minutes = |e: &Engine<Refusing>| e.user("u").unwrap().map(|u| u.fy_minutes_ms.values().sum::<i64>());
        assert_eq!(minutes(&engine), Some(10 * 60_000), "only `a` was committed");
        assert_eq!(engine.apply(&progress("b", t0)).unwrap(), Disposition::Applied, "`b` was never persisted");
        engine.commit().unwrap();
        assert_eq!(minutes(&engine), Some(20 * 60_000));
    }

    #[test]
    fn a_changed_hours_threshold_is_refused_at_open() {
        let mut engine = Engine::open(MemStore::new(2), EngineConfig::default()).unwrap();
        engine.apply(&progress("a", 1_750_000_000_000)).unwrap();
        engine.commit().unwrap();
        let config = EngineConfig { meeting_minutes: 300, ..EngineConfig::default() };
        let err = Engine::open(engine.into_store(), config).unwrap_err();
        assert!(err.to_string().contains("engine.meeting_minutes"), "{err}");
    }
}
