//! The engine against the naive reference model: random histories, shuffled
//! arrival, duplicates, crashes and restarts (also onto a new instance that
//! restores every shard from a compacted changelog, or on a store a crash
//! left behind its changelog); every KPI of every
//! node, course, target and user must be equal.

// Test helpers unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use pulse_engine::{
    restore_into, Batch, Change, ChangeLog, Engine, EngineConfig, MemStore, PendingCommit, ShardId, Store, StoreError,
    StoreWriter, Stored,
};
use pulse_model::{InputFormat, TimeRules};
use pulse_oracle::json_diff;
use pulse_oracle::{Message, Settings};
use pulse_store::{RocksStore, StoreOptions};
use pulse_tests::deliver;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// 1 April 2025 00:00 IST: histories straddle this financial-year boundary.
const FY_BOUNDARY: i64 = 1_743_445_800_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Days from the boundary an event is placed near: months (March, April,
/// May), the edges of the 30-day window and of the days kept for it.
const DAYS: [i64; 10] = [-62, -31, -30, -8, -1, 0, 1, 29, 30, 31];
const USERS: u8 = 6;
const ORGS: [&str; 6] = ["A", "B", "C", "D", "E", "Z"];

#[derive(Debug, Clone)]
enum Kind {
    Registration,
    Enrolment,
    Progress { seconds: u32, percent: Option<u8> },
    Completion,
    Rating { half_stars: u8 },
    Assessment { score: u8, pass: bool },
}

#[derive(Debug, Clone)]
struct EventSpec {
    user: u8,
    org: u8,
    course: u8,
    /// Event time: a day of [`DAYS`], then 5-hour steps from it: few
    /// values, so ties happen.
    day: u8,
    step: i8,
    kind: Kind,
    /// 0 pulse-v1 with RFC 3339 ts, 1 pulse-v1 with epoch ms, 2 sunbird, 3 igot-rating.
    format: u8,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Registration),
        3 => Just(Kind::Enrolment),
        4 => (prop::sample::select(vec![30u32, 1800, 7200, 15000, 86_400]), prop::option::of(0u8..=100))
            .prop_map(|(seconds, percent)| Kind::Progress { seconds, percent }),
        2 => Just(Kind::Completion),
        2 => (2u8..=10).prop_map(|half_stars| Kind::Rating { half_stars }),
        2 => (prop::sample::select(vec![0u8, 40, 85, 100]), any::<bool>())
            .prop_map(|(score, pass)| Kind::Assessment { score, pass }),
    ]
}

fn event() -> impl Strategy<Value = EventSpec> {
    (0..USERS, 0..ORGS.len() as u8, 0u8..3, 0..DAYS.len() as u8, -8i8..=8, kind(), 0u8..4).prop_map(
        |(user, org, course, day, step, kind, format)| EventSpec { user, org, course, day, step, kind, format },
    )
}

fn ts(day: u8, step: i8) -> i64 {
    FY_BOUNDARY + DAYS[usize::from(day)] * DAY + i64::from(step) * 5 * HOUR
}

/// A message of the profile topic: a record, or a tombstone.
#[derive(Debug, Clone)]
struct ProfileSpec {
    user: u8,
    org: u8,
    day: u8,
    step: i8,
    designation: Option<u8>,
    remove: bool,
}

fn profile() -> impl Strategy<Value = ProfileSpec> {
    (
        0..USERS + 1,
        0..ORGS.len() as u8,
        0..DAYS.len() as u8,
        -8i8..=8,
        prop::option::of(0u8..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(user, org, day, step, designation, remove)| ProfileSpec {
            user,
            org,
            day,
            step,
            designation,
            remove,
        })
}

#[derive(Debug, Clone)]
enum RegistryOp {
    Org {
        org: u8,
        parent: Option<u8>,
        employees: u16,
    },
    RemoveOrg(u8),
    Target {
        id: u8,
        org: u8,
        kpi: u8,
        value: u16,
        fy: bool,
    },
    RemoveTarget(u8),
    /// A catalogue record for course `c{course}` (provider `P{p}` if any).
    Course {
        course: u8,
        provider: Option<u8>,
    },
    RemoveCourse(u8),
    /// Plan `p{id}` of org `ORGS[org]` (6: `national`) over the courses of
    /// the bits of `courses`, assigned to all (0), a designation (1) or two
    /// users (2), due at a day of [`DAYS`].
    Plan {
        id: u8,
        org: u8,
        courses: u8,
        assign: u8,
        due: u8,
        min_share: u8,
    },
    RemovePlan(u8),
}

fn registry_op() -> impl Strategy<Value = RegistryOp> {
    prop_oneof![
        6 => (0u8..5, prop::option::of(0u8..5), 0u16..50)
            .prop_map(|(org, parent, employees)| RegistryOp::Org { org, parent, employees }),
        1 => (0u8..5).prop_map(RegistryOp::RemoveOrg),
        3 => (0u8..3, 0u8..7, 0u8..8, 1u16..500, any::<bool>())
            .prop_map(|(id, org, kpi, value, fy)| RegistryOp::Target { id, org, kpi, value, fy }),
        1 => (0u8..3).prop_map(RegistryOp::RemoveTarget),
        3 => (0u8..4, prop::option::of(0u8..2)).prop_map(|(course, provider)| RegistryOp::Course { course, provider }),
        1 => (0u8..4).prop_map(RegistryOp::RemoveCourse),
        3 => (0u8..2, 0u8..7, 1u8..16, 0u8..3, 0..DAYS.len() as u8, 0u8..3)
            .prop_map(|(id, org, courses, assign, due, min_share)| RegistryOp::Plan { id, org, courses, assign, due, min_share }),
        1 => (0u8..2).prop_map(RegistryOp::RemovePlan),
    ]
}

const KPIS: [&str; 8] = [
    "enrolments_fy",
    "completions_fy",
    "learning_minutes_fy",
    "learning_minutes_per_user_fy",
    "users_meeting_hours_ratio",
    "onboarding_ratio",
    "completion_ratio",
    "average_rating",
];

fn uuid_v1(ts: i64, seq: u64) -> String {
    let ticks = (ts as u64) * 10_000 + 0x01B2_1DD2_1381_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        ticks & 0xffff_ffff,
        (ticks >> 32) & 0xffff,
        ((ticks >> 48) & 0x0fff) | 0x1000,
        0x8000 | (seq & 0x3fff),
        seq
    )
}

fn render(i: usize, e: &EventSpec) -> Message {
    let ts = ts(e.day, e.step);
    let (user, org, course, id) =
        (format!("u{}", e.user), ORGS[usize::from(e.org)], format!("c{}", e.course), format!("e{i}"));
    let v1 = |extra: serde_json::Value, kind: &str| {
        let mut m = json!({"v": 1, "id": id, "type": kind, "user": user, "org": org, "course": course});
        m["ts"] = if e.format == 0 { json!(pulse_model::time::format_ist(ts)) } else { json!(ts) };
        if let serde_json::Value::Object(extra) = extra {
            m.as_object_mut().unwrap().extend(extra);
        }
        (InputFormat::PulseV1, m)
    };
    let sunbird = |eid: &str, edata: serde_json::Value, object: serde_json::Value, cdata: serde_json::Value| {
        let m = json!({"eid": eid, "ets": ts, "ver": "3.1", "mid": id, "actor": {"id": user, "type": "User"},
            "context": {"channel": org, "cdata": cdata}, "object": object, "edata": edata});
        (InputFormat::SunbirdTelemetry, m)
    };
    let (format, value) = match (&e.kind, e.format) {
        (Kind::Registration, _) => v1(json!({}), "registration"),
        (Kind::Enrolment, 2) => {
            sunbird("AUDIT", json!({"type": "enrol"}), json!({"id": "x"}), json!([{"id": course, "type": "Course"}]))
        }
        (Kind::Completion, 2) => {
            sunbird("AUDIT", json!({"type": "enrol-complete"}), json!({"id": "x", "rollup": {"l1": course}}), json!([]))
        }
        (Kind::Progress { seconds, percent }, 2) => {
            let summary = percent.map_or(json!([]), |p| json!([{"progress": p}]));
            sunbird(
                "END",
                json!({"duration": seconds, "summary": summary}),
                json!({"id": "x", "rollup": {"l1": course}}),
                json!([]),
            )
        }
        (Kind::Rating { half_stars }, 2) => {
            sunbird("FEEDBACK", json!({"rating": f64::from(*half_stars) / 2.0}), json!({"id": course}), json!([]))
        }
        (Kind::Rating { half_stars }, 3) => (
            InputFormat::IgotRating,
            json!({"version": 1, "action": "ratingUpdate", "activity_id": course, "activity_Type": "Course",
                "user_id": user, "updatedValues": {"updatedOn": uuid_v1(ts, i as u64), "rating": f64::from(*half_stars) / 2.0}}),
        ),
        (Kind::Enrolment, _) => v1(json!({}), "enrolment"),
        (Kind::Completion, _) => v1(json!({}), "completion"),
        (Kind::Progress { seconds, percent }, _) => {
            v1(json!({"minutes": f64::from(*seconds) / 60.0, "percent": percent}), "progress")
        }
        (Kind::Rating { half_stars }, _) => v1(json!({"stars": f64::from(*half_stars) / 2.0}), "rating"),
        (Kind::Assessment { score, pass }, _) => v1(json!({"score": score, "pass": pass}), "assessment"),
    };
    // `"percent": null` means absent to the parser; drop it to keep the input clean.
    let mut value = value;
    if value.get("percent") == Some(&serde_json::Value::Null) {
        value.as_object_mut().unwrap().remove("percent");
    }
    Message::Event { format, key: None, value: value.to_string().into_bytes() }
}

fn render_registry(op: &RegistryOp) -> Message {
    let b = |s: String| Some(s.into_bytes());
    match op {
        RegistryOp::Org { org, parent, employees } => Message::Org {
            key: b(ORGS[usize::from(*org)].into()),
            value: b(json!({"v": 1, "org": ORGS[usize::from(*org)], "name": "n", "kind": "k",
                "parent": parent.map(|p| ORGS[usize::from(p)]), "employees": employees})
            .to_string()),
        },
        RegistryOp::RemoveOrg(org) => Message::Org { key: b(ORGS[usize::from(*org)].into()), value: None },
        RegistryOp::Target { id, org, kpi, value, fy } => {
            let org = if *org == 6 { "national" } else { ORGS[usize::from(*org)] };
            Message::Target {
                key: b(format!("t{id}")),
                value: b(json!({"v": 1, "id": format!("t{id}"), "org": org, "kpi": KPIS[usize::from(*kpi)],
                    "value": value, "fy": if *fy { "2025-26" } else { "2024-25" }})
                .to_string()),
            }
        }
        RegistryOp::RemoveTarget(id) => Message::Target { key: b(format!("t{id}")), value: None },
        RegistryOp::Course { course, provider } => Message::Course {
            key: b(format!("c{course}")),
            value: b(json!({"v": 1, "course": format!("c{course}"), "name": format!("Course {course}"),
                "provider": provider.map(|p| format!("P{p}")), "provider_name": provider.map(|p| format!("Provider {p}"))})
            .to_string()),
        },
        RegistryOp::RemoveCourse(course) => Message::Course { key: b(format!("c{course}")), value: None },
        RegistryOp::Plan { id, org, courses, assign, due, min_share } => {
            let org = if *org == 6 { "national" } else { ORGS[usize::from(*org)] };
            let courses: Vec<String> = (0..4).filter(|c| courses & (1 << c) != 0).map(|c| format!("c{c}")).collect();
            let assign = match assign {
                0 => json!({"to": "all"}),
                1 => json!({"to": "designations", "designations": ["Section Officer"]}),
                _ => json!({"to": "users", "users": ["u0", "u3"]}),
            };
            let min_share = [0.3, 0.5, 1.0][usize::from(*min_share)];
            Message::Plan {
                key: b(format!("p{id}")),
                value: b(json!({"v": 1, "id": format!("p{id}"), "org": org, "courses": courses, "assign": assign,
                    "due": ts(*due, 1), "min_share": min_share})
                .to_string()),
            }
        }
        RegistryOp::RemovePlan(id) => Message::Plan { key: b(format!("p{id}")), value: None },
    }
}

fn render_profile(p: &ProfileSpec) -> Message {
    let user = format!("u{}", p.user);
    let value = if p.remove {
        Vec::new()
    } else {
        let mut v = json!({"v": 1, "user": user, "org": ORGS[usize::from(p.org)], "ts": ts(p.day, p.step)});
        if let Some(d) = p.designation {
            v["designation"] = json!(["Section Officer", "Under Secretary", ""][usize::from(d)]);
        }
        v.to_string().into_bytes()
    };
    Message::Event { format: InputFormat::UserProfile, key: Some(user.into_bytes()), value }
}

#[derive(Debug, Clone)]
struct History {
    events: Vec<EventSpec>,
    /// Indices of events delivered twice (exact copies).
    duplicates: Vec<prop::sample::Index>,
    registry: Vec<RegistryOp>,
    /// The profile topic, in its order.
    profiles: Vec<ProfileSpec>,
    /// Malformed or ignored messages mixed in.
    noise: u8,
    seed: u64,
    shards: u16,
    /// The clock for target pace and windows, in days from the boundary.
    now_days: i16,
}

fn history() -> impl Strategy<Value = History> {
    (
        prop::collection::vec(event(), 0..40),
        prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        prop::collection::vec(registry_op(), 0..10),
        prop::collection::vec(profile(), 0..8),
        0u8..4,
        any::<u64>(),
        1u16..=4,
        prop_oneof![4 => -75i16..=40, 1 => 40i16..400],
    )
        .prop_map(|(events, duplicates, registry, profiles, noise, seed, shards, now_days)| History {
            events,
            duplicates,
            registry,
            profiles,
            noise,
            seed,
            shards,
            now_days,
        })
}

fn noise(i: u8) -> Message {
    let value: &[u8] = match i % 4 {
        0 => b"{not json",
        1 => br#"{"v":1,"id":"bad","type":"progress","ts":0,"user":"u1","org":"A","course":"c1","minutes":5}"#, // too_old
        2 => br#"{"eid":"LOG","ets":1743445800000,"ver":"3.0","mid":"log-1"}"#, // ignored
        _ => br#"{"v":1,"id":"x","type":"progress","ts":1743445800000,"user":"u1","org":"A","course":"c","minutes":0}"#,
    };
    let format = if i % 4 == 2 { InputFormat::SunbirdTelemetry } else { InputFormat::PulseV1 };
    Message::Event { format, key: None, value: value.to_vec() }
}

fn settings() -> Settings {
    Settings { meeting_minutes: 240, time_rules: TimeRules::default(), ingest_now: FY_BOUNDARY + 40 * DAY }
}

/// An arrival order: events and duplicates shuffled; registry, catalogue
/// and profile messages interleaved at random places but in their own
/// order (compacted topics, one user's profiles on one partition).
fn arrival(h: &History, events: &[Message], ordered: &[Message], rng: &mut impl Rng) -> Vec<Message> {
    let mut stream: Vec<(bool, Message)> = events.iter().map(|m| (false, m.clone())).collect();
    stream.extend(
        h.duplicates.iter().filter(|_| !events.is_empty()).map(|i| (false, events[i.index(events.len())].clone())),
    );
    stream.extend((0..h.noise).map(|i| (false, noise(i))));
    stream.shuffle(rng);
    for m in ordered {
        let at = rng.gen_range(0..=stream.len());
        // Keep their order: insert after every earlier one.
        let last = stream.iter().rposition(|(ordered, _)| *ordered).map_or(0, |p| p + 1);
        stream.insert(at.max(last), (true, m.clone()));
    }
    stream.into_iter().map(|(_, m)| m).collect()
}

/// Where the engine keeps its state in a run, and what a crash does to it.
trait Backend {
    type S: Store;
    fn fresh(&mut self, shards: u16) -> Self::S;
    /// The process dies: everything not committed is gone; the engine that
    /// goes on opens the store (or a new one) and reads the registry
    /// topics whole: `records`, every one the stream has reached, which
    /// its replay from the last commit skips.
    fn crash(&mut self, store: Self::S, records: &[Message], config: &EngineConfig) -> Engine<Self::S>;
    /// Where commits log their changes, if anywhere.
    fn log(&mut self) -> Option<&mut dyn ChangeLog> {
        None
    }
}

struct Memory;

impl Backend for Memory {
    type S = MemStore;
    fn fresh(&mut self, shards: u16) -> MemStore {
        MemStore::new(shards)
    }
    fn crash(&mut self, store: MemStore, records: &[Message], config: &EngineConfig) -> Engine<MemStore> {
        start(store, records, config)
    }
}

/// A changelog in memory: each shard's records in order.
#[derive(Default)]
struct Log(BTreeMap<ShardId, Vec<Change>>);

impl ChangeLog for Log {
    fn write(&mut self, changes: BTreeMap<ShardId, Vec<Change>>) -> Result<Vec<(ShardId, i64)>, StoreError> {
        let mut positions = Vec::new();
        for (shard, records) in changes {
            let log = self.0.entry(shard).or_default();
            log.extend(records);
            positions.push((shard, log.len() as i64));
        }
        Ok(positions)
    }
}

/// An instance starting on `store`: it reads the registry topics whole,
/// as `pulse run` does at every start.
fn start<S: Store>(store: S, records: &[Message], config: &EngineConfig) -> Engine<S> {
    let mut engine = Engine::open(store, config.clone()).unwrap();
    engine.clear_registry();
    for m in records {
        deliver(&mut engine, m, settings().ingest_now).unwrap();
    }
    engine
}

/// An instance starting on `store`, as `pulse run` does before it owns a
/// shard: reads the registry whole and commits only those records.
fn read_registry(store: MemStore, records: &[Message], config: &EngineConfig) -> Engine<MemStore> {
    let mut reader = start(store, records, config);
    reader.commit_records().unwrap();
    reader
}

/// Every commit also goes to a changelog; a crash moves the state to a new
/// instance, which has read the registry whole, ahead of what the dead
/// one committed, and restores each shard from the changelog as Kafka's
/// compaction may have left it (the last record of each key): the shards'
/// plans were evaluated against an older registry than the new instance's.
#[derive(Default)]
struct Moved {
    log: Log,
}

impl Backend for Moved {
    type S = MemStore;
    fn fresh(&mut self, shards: u16) -> MemStore {
        self.log.0.clear();
        MemStore::new(shards)
    }
    fn crash(&mut self, dead: MemStore, records: &[Message], config: &EngineConfig) -> Engine<MemStore> {
        let store = read_registry(MemStore::new(dead.shards()), records, config).into_store();
        let mut batch = Batch::default();
        for (&shard, log) in &self.log.0 {
            let mut last: BTreeMap<&[u8], usize> = BTreeMap::new();
            for (i, c) in log.iter().enumerate() {
                last.insert(&c.key, i);
            }
            for (_, c) in log.iter().enumerate().filter(|(i, c)| last[c.key.as_slice()] == *i) {
                restore_into(&mut batch, shard, &c.key, c.value.as_deref()).unwrap();
            }
            batch.changelog.push((shard, log.len() as i64));
        }
        store.writer().commit(batch).unwrap();
        Engine::open(store, config.clone()).unwrap()
    }
    fn log(&mut self) -> Option<&mut dyn ChangeLog> {
        Some(&mut self.log)
    }
}

/// Every commit also goes to a changelog, and the instance restarts on its
/// own store, which a crash between the two leaves behind the changelog.
/// It takes its shards over as `pulse run` does: reads the registry whole
/// (ahead of the store: its users were evaluated against older records),
/// catches each shard up with the changelog records past its stored
/// position, and reloads them.
#[derive(Default)]
struct Behind {
    log: Log,
}

impl Backend for Behind {
    type S = MemStore;
    fn fresh(&mut self, shards: u16) -> MemStore {
        self.log.0.clear();
        MemStore::new(shards)
    }
    fn crash(&mut self, store: MemStore, records: &[Message], config: &EngineConfig) -> Engine<MemStore> {
        // Records read after the registry's commit, before the take-over
        // (the loop polls the registry topics): the reload keeps them.
        let (read, late) = records.split_at(records.len() / 2);
        let mut engine = read_registry(store, read, config);
        for m in late {
            deliver(&mut engine, m, settings().ingest_now).unwrap();
        }
        let mut batch = Batch::default();
        for (&shard, log) in &self.log.0 {
            let from = engine.changelog_position(shard).unwrap_or(0) as usize;
            for c in &log[from..] {
                restore_into(&mut batch, shard, &c.key, c.value.as_deref()).unwrap();
            }
            batch.changelog.push((shard, log.len() as i64));
        }
        engine.restore(batch).unwrap();
        engine.reload_shards().unwrap();
        engine
    }
    fn log(&mut self) -> Option<&mut dyn ChangeLog> {
        Some(&mut self.log)
    }
}

struct Rocks {
    dir: tempfile::TempDir,
    runs: usize,
}

impl Rocks {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(self.runs.to_string())
    }
}

impl Backend for Rocks {
    type S = RocksStore;
    fn fresh(&mut self, shards: u16) -> RocksStore {
        self.runs += 1;
        RocksStore::open(
            &self.path(),
            &StoreOptions { shards, block_cache_bytes: 1 << 20, write_buffer_bytes: 1 << 20 },
        )
        .unwrap()
    }
    fn crash(&mut self, store: RocksStore, records: &[Message], config: &EngineConfig) -> Engine<RocksStore> {
        drop(store);
        start(RocksStore::open(&self.path(), &StoreOptions::default()).unwrap(), records, config)
    }
}

/// A record of a topic every instance reads whole (not an event).
fn is_record(m: &Message) -> bool {
    !matches!(m, Message::Event { .. })
}

/// A pipelined commit: prepared, then written (changelog and store, on
/// its own thread in `pulse run`) while the next events are applied, then
/// finished.
enum Flight {
    Prepared(Box<PendingCommit>),
    Stored(Result<Stored, StoreError>),
}

/// Writes a prepared commit: to the changelog, if any, then to the store.
fn write<B: Backend>(engine: &Engine<B::S>, backend: &mut B, mut pending: PendingCommit) -> Result<Stored, StoreError> {
    let logged = backend.log().map(|log| log.write(pending.changes())).transpose()?;
    pending.store(&engine.store().writer(), logged)
}

/// Runs one arrival order through the engine with random crashes (losing
/// everything not stored, then redelivering from the last stored commit,
/// as Kafka does from the stored offset) and clean restarts. Half the
/// commits are pipelined as `pulse run` does: prepared, left in flight
/// while the next events are applied, written at a random later moment
/// (events are applied while the store takes it), and finished at the next
/// commit point. A crash before it is written loses it; after, the store
/// holds it.
fn run_engine<B: Backend>(h: &History, stream: &[Message], rng: &mut impl Rng, backend: &mut B) -> Engine<B::S> {
    // Slices of a few users, so that re-evaluation spans commits and crashes.
    let plan_slice_users = rng.gen_range(1..=4);
    // The model remembers every id; histories span three months of event
    // time, past the default 7-day horizon (forgetting is the engine's own tests').
    let config = EngineConfig { dedup_horizon_ms: 400 * DAY, plan_slice_users, ..EngineConfig::default() };
    let now = settings().ingest_now;
    let mut engine = Engine::open(backend.fresh(h.shards), config.clone()).unwrap();
    let mut committed = 0;
    let mut in_flight: Option<(Flight, usize)> = None;
    let mut i = 0;
    let mut crashes = 0;
    // The stream's furthest point: the registry topics hold every record
    // before it, which an instance started at a crash reads whole, so the
    // replay does not apply them again.
    let mut read_until = 0;
    let records = |until: usize| -> Vec<Message> { stream[..until].iter().filter(|m| is_record(m)).cloned().collect() };
    let finish = |engine: &mut Engine<B::S>, backend: &mut B, flight: Flight| {
        let stored = match flight {
            Flight::Prepared(pending) => write(engine, backend, *pending),
            Flight::Stored(stored) => stored,
        };
        engine.finish_commit(stored).unwrap();
    };
    while i < stream.len() {
        if i < read_until && is_record(&stream[i]) {
            i += 1;
            continue;
        }
        deliver(&mut engine, &stream[i], now).unwrap();
        i += 1;
        match rng.gen_range(0..10) {
            0 => {
                if let Some((flight, end)) = in_flight.take() {
                    finish(&mut engine, backend, flight);
                    committed = end;
                }
                if rng.gen_bool(0.5) {
                    engine.commit_logged(backend.log()).unwrap();
                    committed = i;
                } else {
                    in_flight =
                        Some((Flight::Prepared(Box::new(engine.prepare_commit(backend.log().is_some()).unwrap())), i));
                }
            }
            1 if crashes < 3 => {
                crashes += 1;
                match in_flight.take() {
                    Some((Flight::Stored(_), end)) => committed = end,
                    // Killed between the changelog and the store: the
                    // changelog holds it, and a take-over restores it.
                    Some((Flight::Prepared(mut pending), end)) if rng.gen_bool(0.5) => {
                        if let Some(log) = backend.log() {
                            log.write(pending.changes()).unwrap();
                            committed = end;
                        }
                    }
                    _ => {}
                }
                read_until = read_until.max(i);
                engine = backend.crash(engine.into_store(), &records(read_until), &config);
                i = committed;
            }
            2 => {
                in_flight = in_flight.take().map(|(flight, end)| match flight {
                    Flight::Prepared(pending) => (Flight::Stored(write(&engine, backend, *pending)), end),
                    stored => (stored, end),
                });
            }
            _ => {}
        }
    }
    if let Some((flight, _)) = in_flight.take() {
        finish(&mut engine, backend, flight);
    }
    // As the loop does between batches: commits drain the plans'
    // re-evaluation, slice by slice; a crash on the way resumes it.
    loop {
        engine.commit_logged(backend.log()).unwrap();
        if !engine.plans_converging() {
            break;
        }
        if rng.gen_bool(0.3) {
            engine = backend.crash(engine.into_store(), &records(stream.len()), &config);
        }
    }
    if rng.gen_bool(0.5) {
        engine = backend.crash(engine.into_store(), &records(stream.len()), &config);
        engine.converge_plans().unwrap();
    }
    engine
}

fn check<B: Backend>(h: History, backend: &mut B) -> Result<(), TestCaseError> {
    let events: Vec<Message> = h.events.iter().enumerate().map(|(i, e)| render(i, e)).collect();
    let ordered: Vec<Message> =
        h.registry.iter().map(render_registry).chain(h.profiles.iter().map(render_profile)).collect();
    let all: Vec<Message> = events.iter().chain(&ordered).cloned().collect();
    let now = FY_BOUNDARY + i64::from(h.now_days) * DAY;
    let s = settings();
    let expected: Vec<_> = [2024, 2025].map(|fy| pulse_oracle::report(&all, &s, fy, now)).into();
    let expected_months: Vec<_> = [2024, 2025].map(|fy| pulse_oracle::months_report(&all, &s, fy)).into();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(h.seed);
    for order in 0..3 {
        let stream = arrival(&h, &events, &ordered, &mut rng);
        let engine = run_engine(&h, &stream, &mut rng, backend);
        let snapshot = engine.snapshot();
        for ((fy, expected), months) in [2024, 2025].into_iter().zip(&expected).zip(&expected_months) {
            let mut actual = serde_json::to_value(snapshot.report(pulse_model::Fy(fy), now)).unwrap();
            actual.as_object_mut().unwrap().remove("now");
            if let Some(d) = json_diff(&actual, expected) {
                return Err(TestCaseError::fail(format!("order {order}, fy {fy}: {d}")));
            }
            let actual = serde_json::to_value(snapshot.months_report(pulse_model::Fy(fy), None)).unwrap();
            if let Some(d) = json_diff(&actual, months) {
                return Err(TestCaseError::fail(format!("order {order}, months of fy {fy}: {d}")));
            }
        }
        let users: BTreeSet<String> = (0..=USERS).map(|u| format!("u{u}")).collect();
        for user in &users {
            let actual = engine.user(user).unwrap().map(|st| {
                serde_json::to_value(pulse_engine::UserReport::of(user, &st, pulse_model::Fy(2025))).unwrap()
            });
            let expected = pulse_oracle::user_report(&all, &s, user, 2025);
            match (&actual, &expected) {
                (Some(a), Some(e)) => {
                    if let Some(d) = json_diff(a, e) {
                        return Err(TestCaseError::fail(format!("order {order}, user {user}: {d}")));
                    }
                }
                (None, None) => {}
                _ => return Err(TestCaseError::fail(format!("user {user}: {actual:?} vs expected {expected:?}"))),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 2000, max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn engine_equals_reference_model(h in history()) {
        check(h, &mut Memory)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 500, max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn engine_moved_through_its_changelog_equals_reference_model(h in history()) {
        check(h, &mut Moved::default())?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 500, max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn engine_restarted_behind_its_changelog_equals_reference_model(h in history()) {
        check(h, &mut Behind::default())?;
    }
}

proptest! {
    // Fewer cases: each opens real RocksDB directories, and crashes reopen them.
    #![proptest_config(Config { cases: 64, max_shrink_iters: 500, ..Config::default() })]

    #[test]
    fn engine_on_rocksdb_equals_reference_model(h in history()) {
        check(h, &mut Rocks { dir: tempfile::tempdir().unwrap(), runs: 0 })?;
    }
}
