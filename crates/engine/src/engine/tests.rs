use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pulse_model::{parse, Fy, Parsed};

use super::*;
use crate::store::{LoadedState, MemStore, MemWriter, SeenLog, StoreWriter};

fn progress(id: &str, ts: Millis) -> Event<'static> {
    let line =
        format!(r#"{{"v":1,"id":"{id}","type":"progress","ts":{ts},"user":"u","org":"O","course":"c","minutes":10}}"#);
    match parse(InputFormat::PulseV1, None, line.as_bytes()) {
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

/// A take-over reloads its shards with the plan records read since the last
/// commit still to be evaluated: the users it brings back are assigned a
/// plan that arrived before it.
#[test]
fn a_plan_read_before_a_take_over_reaches_the_users_it_reloads() {
    let mut engine = Engine::open(MemStore::new(2), EngineConfig::default()).unwrap();
    engine.apply_org_message(Some(b"O"), Some(br#"{"v":1,"org":"O","parent":null}"#.as_slice()));
    engine.apply(&progress("a", 1_750_000_000_000)).unwrap();
    engine.commit().unwrap();
    let plan =
        br#"{"v":1,"id":"p","org":"national","courses":["c"],"assign":{"to":"all"},"due":"2026-03-31T23:59:59+05:30"}"#;
    engine.apply_plan_message(Some(b"p"), Some(plan.as_slice()));
    engine.reload_shards().unwrap();
    engine.commit().unwrap();
    let report = engine.snapshot().report(Fy(2025), 1_750_000_000_000);
    let users = report.plans.unwrap().get("p").map(|p| p.nodes["national"].users);
    assert_eq!(users, Some(1));
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
    fn users_of(
        &self,
        shard: ShardId,
        org: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.users_of(shard, org, after, limit)
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
    let minutes = |e: &Engine<Refusing>| e.user("u").unwrap().map(|u| u.months.values().sum::<i64>());
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
