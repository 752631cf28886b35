//! The engine: applies events and registry records to the state and keeps
//! the write-back cache of changed users; [`commit`] commits it to the
//! [`Store`].

use std::collections::{BTreeMap, BTreeSet};

use pulse_model::{
    parse, CourseRecord, Day, Event, EventKind, InputFormat, Millis, OrgRecord, Parsed, PlanRecord, Rejection,
    TargetRecord, TimeRules,
};
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

mod commit;
mod offsets;
mod records;
mod reevaluate;

pub use commit::{PendingCommit, Stored};

use crate::filter::SeenFilter;
use crate::plan_work::PlanWork;
use crate::registry::Registry;
use crate::report::Snapshot;
use crate::rollup::OrgView;
use crate::state::{CourseTotals, Totals, UserState};
use crate::store::{Batch, LoadedState, SeenKey, ShardId, Store, StoreError, StreamPosition};
use crate::table::{FastMap, FastSet, Interner, Table};
use commit::Committing;

const HOUR_MS: i64 = 3_600_000;

/// About the bytes a remembered id takes until it is committed: its hash
/// in the set (with the set's spare room) and its key in the list.
const SEEN_ID_BYTES: usize = 64;

/// About the bytes of a write-back cache entry beside the user's own: the
/// map's slot (with its spare room) and the key's `String`.
const CACHED_USER_BYTES: usize = 64;

/// IST days kept per org for the windows, back from the day of the newest
/// event time: a report may ask for any `now` from 30 days before that
/// day on (contract section 13), and its 30-day window reaches 29 more
/// days back.
const WINDOW_DAYS_KEPT: i32 = 60;

/// The first IST day whose window totals a shard keeps, given its newest
/// event time.
fn horizon(max_ts: Millis) -> Day {
    if max_ts == Millis::MIN {
        return Day(i32::MIN);
    }
    Day(Day::of(max_ts).0 - (WINDOW_DAYS_KEPT - 1))
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Event ids are remembered at least until the newest event time of their
    /// shard is this far past their own event time (default 7 days).
    pub dedup_horizon_ms: i64,
    /// `users_meeting_hours_fy` counts users with at least this many learning
    /// minutes in the year (default 240).
    pub meeting_minutes: u32,
    pub time_rules: TimeRules,
    /// Users re-evaluated per commit after a plan or registry change
    /// (default 20000): bounds the time a commit holds the loop.
    pub plan_slice_users: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            dedup_horizon_ms: 7 * 24 * HOUR_MS,
            meeting_minutes: 240,
            time_rules: TimeRules::default(),
            plan_slice_users: 20_000,
        }
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

/// In-memory state of one shard: its totals (always current) and what changed
/// since the last commit.
#[derive(Debug, Default)]
struct Shard {
    /// Totals by interned leaf org key.
    orgs: Table<Totals>,
    /// Totals by interned course id.
    courses: Table<CourseTotals>,
    max_ts: Millis,
    /// The first IST day the org totals keep for the windows, from `max_ts`.
    horizon: Day,
    /// Write-back cache: every user changed since the last commit.
    users: FastMap<String, UserState>,
    /// About the bytes `users` and `seen` hold (each user as it entered
    /// the cache), and those of the commit in flight.
    bytes: usize,
    committing_bytes: usize,
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
    /// Changes to the index of users by leaf org since the last commit:
    /// (interned org key, user, present).
    org_users: Vec<(u32, String, bool)>,
    /// The re-evaluation of the users' plans, and whether it changed since
    /// it was last written.
    plan_work: PlanWork,
    plan_work_dirty: bool,
}

/// The plans and registry the shards' work was last brought up to date
/// with, and their [`crate::plan_work::view`].
#[derive(Debug, Default)]
struct Evaluated {
    plans: BTreeMap<String, PlanRecord>,
    registry: Registry,
    view: u64,
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
    catalogue: BTreeMap<String, CourseRecord>,
    pending_catalogue: BTreeMap<String, Option<CourseRecord>>,
    plans: BTreeMap<String, PlanRecord>,
    pending_plans: BTreeMap<String, Option<PlanRecord>>,
    /// A plan or the registry changed since the shards' work was brought
    /// up to date with them (or the work was loaded).
    plans_stale: bool,
    evaluated: Evaluated,
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
            catalogue: BTreeMap::new(),
            pending_catalogue: BTreeMap::new(),
            plans: BTreeMap::new(),
            pending_plans: BTreeMap::new(),
            plans_stale: false,
            evaluated: Evaluated::default(),
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
        let mut loaded = self.store.load()?;
        if let Some(stored) = loaded.meeting_minutes.filter(|&m| m != self.config.meeting_minutes) {
            return Err(EngineError::ConfigMismatch {
                key: "engine.meeting_minutes",
                stored: stored.to_string(),
                configured: self.config.meeting_minutes.to_string(),
            });
        }
        self.record_meeting_minutes = loaded.meeting_minutes.is_none();
        self.registry = Registry::new(std::mem::take(&mut loaded.orgs));
        self.targets = std::mem::take(&mut loaded.targets);
        self.catalogue = std::mem::take(&mut loaded.catalogue);
        self.plans = std::mem::take(&mut loaded.plans);
        self.evaluated = Evaluated {
            view: crate::plan_work::view(&self.plans, &self.registry),
            plans: self.plans.clone(),
            registry: self.registry.clone(),
        };
        self.plans_stale = false;
        self.pending_orgs.clear();
        self.pending_targets.clear();
        self.pending_catalogue.clear();
        self.pending_plans.clear();
        (self.uncommitted, self.poisoned) = (0, false);
        self.load_shards(loaded)
    }

    /// Loads every shard's state again, after a take-over wrote it in the
    /// store (restored from a changelog, or dropped). The registry, targets,
    /// catalogue and plans stay as memory holds them, with the records read
    /// since the last commit: their topics are not read again. Nothing else
    /// may be uncommitted.
    pub fn reload_shards(&mut self) -> Result<(), EngineError> {
        debug_assert!(self.in_flight.is_none() && self.pending_offsets.is_empty());
        let loaded = self.store.load()?;
        self.load_shards(loaded)
    }

    fn load_shards(&mut self, loaded: LoadedState) -> Result<(), EngineError> {
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
            shard.horizon = horizon(shard.max_ts);
            shard.filter = SeenFilter::new(self.store.newest_seen_bucket(i as ShardId)?);
            shard.plan_work = loaded.plan_work.get(&(i as ShardId)).cloned().unwrap_or_default();
        }
        // A shard restored from a changelog may have been evaluated against
        // other records (one with no state has nothing to redo).
        let view = self.evaluated.view;
        self.plans_stale |= shards.iter().any(|s| s.orgs.iter().next().is_some() && s.plan_work.view != view);
        (self.shards, self.org_keys, self.course_keys) = (shards, org_keys, course_keys);
        self.offsets = loaded.offsets;
        self.pending_offsets.clear();
        self.committing_offsets.clear();
        self.changelog = loaded.changelog;
        (self.last_event, self.in_flight) = (None, None);
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

    pub fn catalogue(&self) -> &BTreeMap<String, CourseRecord> {
        &self.catalogue
    }

    /// Messages applied since the last commit was stored (those of a
    /// commit in flight included).
    pub fn uncommitted(&self) -> usize {
        self.uncommitted
    }

    /// About the bytes the users and ids applied since the last commit
    /// hold in memory, and those of the commit in flight: what the loop
    /// bounds by the memory budget.
    pub fn memory_bytes(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(new, committing), s| (new + s.bytes, committing + s.committing_bytes))
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
    /// instance holds, or exports, a shard another one owns. Nothing but
    /// registry records may be uncommitted (they stay).
    pub fn keep_only(&mut self, shards: &BTreeSet<ShardId>) -> Result<(), EngineError> {
        let drop: Vec<ShardId> = (0..self.shards()).filter(|s| !shards.contains(s)).collect();
        self.restore(Batch { drop_shards: drop, ..Batch::default() })?;
        self.reload_shards()
    }

    /// Writes a batch of restored shard state (from the changelog) straight
    /// to the store. The caller [`Engine::reload_shards`] once every batch is in.
    pub fn restore(&mut self, batch: Batch) -> Result<(), EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        self.store.restore(batch).map_err(|e| {
            self.poisoned = true;
            e.into()
        })
    }

    /// Parses, checks and applies one message of an input topic (`key`:
    /// the message key, which only profiles read).
    pub fn ingest(
        &mut self,
        format: InputFormat,
        key: Option<&[u8]>,
        value: &[u8],
        now: Millis,
    ) -> Result<Disposition, EngineError> {
        match self.accept(format, key, value, now) {
            Err(disposition) => Ok(disposition),
            Ok(ev) => self.apply(&ev),
        }
    }

    /// Parses and checks one message: the valid event, or what becomes of
    /// a message that is not one (ignored, or a dead letter).
    pub fn accept<'a>(
        &self,
        format: InputFormat,
        key: Option<&'a [u8]>,
        value: &'a [u8],
        now: Millis,
    ) -> Result<Event<'a>, Disposition> {
        match parse(format, key, value) {
            Err(rejection) => Err(Disposition::Dead(rejection)),
            Ok(Parsed::Ignored(why)) => Err(Disposition::Ignored(why)),
            Ok(Parsed::Event(ev)) => match self.config.time_rules.check_event(&ev, now) {
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
        if !ev.kind.is_profile() {
            self.last_event = self.last_event.max(Some(ev.ts));
        }
    }

    /// Applies one valid event: `Applied`, or `Duplicate` if its id was
    /// seen. A profile has no id: it is applied, in topic order, every time.
    pub fn apply(&mut self, ev: &Event<'_>) -> Result<Disposition, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        let shard_id = self.shard_of(&ev.user);
        let profile = ev.kind.is_profile();
        if !profile {
            self.last_event = self.last_event.max(Some(ev.ts));
        }
        let Engine { store, shards, org_keys, course_keys, meeting_ms, plans, registry, .. } = self;
        let shard = &mut shards[usize::from(shard_id)];
        let key = SeenKey { bucket: ev.ts.div_euclid(HOUR_MS), hash: xxh3_128(ev.id.as_bytes()) };
        if !profile
            && shard.filter.may_contain(key.bucket, key.hash)
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
                let known = known.unwrap_or_default();
                shard.bytes += CACHED_USER_BYTES + ev.user.len() + known.memory_bytes();
                (shard.users.entry(ev.user.to_string()).or_insert(known), is_new)
            }
        };
        if !profile {
            shard.bytes += SEEN_ID_BYTES;
            shard.seen.insert(key.hash);
            shard.filter.insert(key.bucket, key.hash);
            shard.seen_keys.push(key);
            if ev.ts > shard.max_ts {
                shard.max_ts = ev.ts;
                shard.horizon = horizon(ev.ts);
            }
        }

        // The user's share changes; usually in its org, by the change the
        // event made. When the user moves (or a profile changes), its whole
        // share moves: out of the old org's totals, into the new one's.
        // Days before the horizon are left out of every share from the
        // moment it passes them, and dropped from an org's totals when the
        // org next gains a day (no scan of every org each day); until then
        // no window can ask for them (docs/ARCHITECTURE.md, "State").
        let horizon = shard.horizon;
        let org_before = (!is_new).then(|| org_keys.id(user.org_key()));
        let profile_before = profile.then(|| user.totals(*meeting_ms, horizon));
        let registered_before = user.is_registered();
        let mut applied = user.apply(ev, horizon, *meeting_ms);
        // Most events leave the user where it was: a comparison, not a lookup.
        let org_after = match org_before {
            Some(id) if org_keys.name(id) == user.org_key() => id,
            _ => org_keys.id(user.org_key()),
        };
        if org_before != Some(org_after) {
            let user = ev.user.to_string();
            shard.org_users.extend(org_before.map(|o| (o, user.clone(), false)));
            shard.org_users.push((org_after, user, true));
        }
        // The plans assigned to the user, and its standing in them, change
        // only with a completion, a move, a profile, or a user registered
        // by this event: a new one, or one whose profile was removed
        // (standings count registered users only).
        if !registered_before
            || profile
            || org_before != Some(org_after)
            || matches!(ev.kind, EventKind::Completion { .. })
        {
            let fresh = crate::plans::standings(&ev.user, user, plans, registry);
            if fresh != user.plans {
                let moved = crate::plans::change(&user.plans, &fresh);
                user.plans = fresh;
                if let Some(change) = &mut applied.change {
                    change.plans = moved;
                }
            }
        }
        match (applied.change, org_before) {
            (Some(change), org) if org.is_none_or(|o| o == org_after) => shard.orgs.update(org_after, |t| {
                t.add_kept(&change, 1, horizon);
            }),
            (change, org) => {
                let after = user.totals(*meeting_ms, horizon);
                let before = match change {
                    Some(change) => after.clone().minus(&change),
                    None => profile_before.unwrap_or_default(),
                };
                if let Some(org) = org {
                    shard.orgs.update(org, |t| {
                        t.add_kept(&before, -1, horizon);
                    });
                }
                shard.orgs.update(org_after, |t| {
                    t.add_kept(&after, 1, horizon);
                });
            }
        }
        let course_change = applied.course;
        if let (Some(c), Some((before, after))) = (ev.kind.course(), course_change) {
            shard.courses.update(course_keys.id(c), |t| {
                t.add(&before, -1);
                t.add(&after, 1);
            });
        }
        self.uncommitted += 1;
        Ok(Disposition::Applied)
    }

    /// One user's state, including changes not yet committed; `None` for
    /// a user not registered (never seen, or whose only profile was removed).
    pub fn user(&self, user: &str) -> Result<Option<UserState>, EngineError> {
        let shard = self.shard_of(user);
        let s = &self.shards[usize::from(shard)];
        let state = match s.users.get(user).or_else(|| s.committing.get(user)) {
            Some(u) => Some(u.clone()),
            None => self.store.user(shard, user)?,
        };
        Ok(state.filter(UserState::is_registered))
    }

    /// The org-level state as it is now (including uncommitted changes).
    /// Shards are summed per interned key first, so the rollup and the
    /// course map see each org and course once.
    pub fn snapshot(&self) -> Snapshot {
        let mut orgs: Vec<Option<Totals>> = vec![None; self.org_keys.names().len()];
        let mut courses = vec![CourseTotals::default(); self.course_keys.names().len()];
        for shard in &self.shards {
            for (k, t) in shard.orgs.iter() {
                let sum = orgs[k as usize].get_or_insert_with(Totals::default);
                if t.days.first().is_some_and(|(d, _)| *d < shard.horizon) {
                    // Days the org has not shed yet (it sheds them when it next gains a day).
                    let mut t = t.clone();
                    t.forget_days(shard.horizon);
                    sum.add(&t, 1);
                } else {
                    sum.add(t, 1);
                }
            }
            for (k, t) in shard.courses.iter() {
                courses[k as usize].add(t, 1);
            }
        }
        let leaves: Vec<(&str, &Totals)> = self
            .org_keys
            .names()
            .filter_map(|(k, name)| Some((name, orgs[k as usize].as_ref().filter(|t| !t.is_zero())?)))
            .collect();
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
            catalogue: self.catalogue.clone(),
            plans: self.plans.clone(),
            newest: self.newest_event(),
            plans_converging: self.plans_converging(),
            plan_users_pending: self.plan_users_pending(),
        }
    }
}

#[cfg(test)]
mod tests;
