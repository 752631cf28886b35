//! One conformance suite for every implementation of the engine's `Store`:
//! the in-memory store and the RocksDB store must answer alike, and the
//! RocksDB store must answer alike again after it is closed and reopened.

// Test helpers unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use pulse_engine::codec::encode;
use pulse_engine::{
    Batch, CourseTotals, LoadedState, MemStore, OrgStamp, OrgUser, PlanWork, Profile, SeenIds, SeenKey, SeenLog,
    ShardId, Store, StoreWriter, StreamPosition, Totals, UserState,
};
use pulse_model::{Assign, CourseRecord, Day, Fy, Month, OrgRecord, PlanRecord, ProviderRef, TargetKpi, TargetRecord};
use pulse_store::{RocksStore, StoreOptions};

fn pos(next: i64, newest_event: Option<i64>) -> StreamPosition {
    StreamPosition { next, newest_event }
}

fn user(org: &str) -> UserState {
    UserState {
        org: Some(OrgStamp { ts: 5, id: "e".into(), org: org.into() }),
        profile: Some(Profile { ts: 3, org: "P".into(), designation: Some("Section Officer".into()) }),
        months: [(Month(2025 * 12 + 3), 60_000)].into(),
        days: [(Day(20_200), 60_000)].into(),
        last_active: Some(5),
        ..UserState::default()
    }
}

fn org(id: &str) -> OrgRecord {
    OrgRecord { org: id.into(), name: id.into(), parent: None, kind: "ministry".into(), employees: 7 }
}

fn target(id: &str) -> TargetRecord {
    TargetRecord { id: id.into(), org: "A".into(), kpi: TargetKpi::CompletionsFy, value: 3.0, fy: Fy(2025) }
}

fn catalogued(id: &str) -> CourseRecord {
    CourseRecord {
        course: id.into(),
        name: format!("{id} name"),
        provider: Some(ProviderRef { id: "P".into(), name: "ISTM".into() }),
    }
}

fn plan(id: &str) -> PlanRecord {
    PlanRecord {
        id: id.into(),
        org: "A".into(),
        courses: vec!["k1".into()],
        assign: Assign::Designations(["Section Officer".to_owned()].into()),
        start: 0,
        due: 1_000,
        min_share: 0.5,
    }
}

fn seen(bucket: i64, hash: u128) -> SeenKey {
    SeenKey { bucket, hash }
}

/// Ids committed as one changelog record, named by their newest bucket and first hash.
fn record(ids: &[SeenKey]) -> SeenIds {
    let bucket = ids.iter().map(|k| k.bucket).max().unwrap();
    SeenIds { log: SeenLog { bucket, first: ids[0].hash }, ids: ids.to_vec() }
}

fn indexed(shard: ShardId, org: &str, user: &str, present: bool) -> OrgUser {
    OrgUser { shard, org: org.into(), user: user.into(), present }
}

fn work(view: u64, orgs: &[&str]) -> PlanWork {
    PlanWork { view, orgs: orgs.iter().map(|o| o.to_string()).collect(), under_way: None }
}

fn totals(users: i64) -> Totals {
    Totals { registered_users: users, minutes_ms: 9, ..Totals::default() }
}

fn course(enrolments: i64) -> CourseTotals {
    CourseTotals { enrolments, ..CourseTotals::default() }
}

/// Runs the suite; `reopen` closes and reopens the store (identity in memory).
fn conformance<S: Store>(store: S, reopen: impl Fn(S) -> S) {
    assert_eq!(store.shards(), 2);
    let empty = store.load().unwrap();
    assert!(empty.orgs.is_empty() && empty.offsets.is_empty() && empty.meeting_minutes.is_none());
    assert_eq!(store.user(0, "u1").unwrap(), None);

    store
        .writer()
        .commit(Batch {
            meeting_minutes: Some(240),
            users: vec![(0, "u1".into(), encode(&user("A"))), (1, "u2".into(), encode(&user("B")))],
            seen: vec![
                (0, record(&[seen(-3, 1), seen(10, 2)])),
                (0, record(&[seen(11, 3)])),
                (1, record(&[seen(10, 4)])),
            ],
            org_totals: vec![(0, "A".into(), Some(encode(&totals(1)))), (1, "B".into(), Some(encode(&totals(2))))],
            course_totals: vec![(0, "c1".into(), Some(course(1)))],
            max_ts: vec![(0, 1_000), (1, -5)],
            orgs: vec![("A".into(), Some(org("A"))), ("B".into(), Some(org("B")))],
            targets: vec![("t1".into(), Some(target("t1"))), ("t2".into(), Some(target("t2")))],
            catalogue: vec![("k1".into(), Some(catalogued("k1"))), ("k2".into(), Some(catalogued("k2")))],
            plans: vec![("p1".into(), Some(plan("p1"))), ("p2".into(), Some(plan("p2")))],
            org_users: vec![
                indexed(0, "A", "u1", true),
                indexed(0, "A", "u3", true),
                indexed(0, "AB", "u0", true),
                indexed(1, "B", "u2", true),
                // Moved away and back within the batch: indexed once.
                indexed(0, "A", "u4", true),
                indexed(0, "A", "u4", false),
                indexed(0, "B", "u4", true),
                indexed(0, "B", "u4", false),
                indexed(0, "A", "u4", true),
            ],
            plan_work: vec![(0, work(7, &["A"])), (1, work(3, &[]))],
            offsets: vec![
                (("events".into(), 0), pos(10, Some(900))),
                (("events".into(), -1), pos(1, None)),
                (("other".into(), 3), pos(7, Some(-5))),
                (("other".into(), 1), pos(4, None)),
            ],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.user(0, "u1").unwrap(), Some(user("A")));
    assert_eq!(store.user(1, "u1").unwrap(), None, "users are per shard");
    assert!(store.is_seen(0, seen(10, 2)).unwrap());
    assert!(!store.is_seen(1, seen(10, 2)).unwrap(), "ids are per shard");

    store
        .writer()
        .commit(Batch {
            users: vec![(0, "u1".into(), encode(&user("C")))],
            seen: vec![(0, record(&[seen(20, 5)]))],
            // Forget shard 0's buckets below 11: -3 and 10 go, 11 and 20 stay
            // (with the records named by 11 and 20); shard 1 keeps its 10.
            forget_before: vec![(0, 11)],
            org_totals: vec![(0, "A".into(), None), (0, "C".into(), Some(encode(&totals(1))))],
            course_totals: vec![(0, "c1".into(), None), (1, "c2".into(), Some(course(2)))],
            max_ts: vec![(0, 2_000)],
            orgs: vec![("B".into(), None)],
            targets: vec![("t2".into(), None)],
            catalogue: vec![("k2".into(), None)],
            plans: vec![("p2".into(), None)],
            org_users: vec![indexed(0, "A", "u3", false), indexed(0, "C", "u1", true), indexed(0, "A", "u1", false)],
            plan_work: vec![(0, work(9, &["A", "C"]))],
            offsets: vec![(("events".into(), 0), pos(12, Some(1_000)))],
            changelog: vec![(0, 40), (1, 7)],
            ..Batch::default()
        })
        .unwrap();

    // A restore's batch may hold a user many times: the last one wins.
    store
        .writer()
        .commit(Batch {
            users: (0..60).map(|i| (0, format!("v{}", i % 5), encode(&user(&format!("O{i}"))))).collect(),
            ..Batch::default()
        })
        .unwrap();
    for k in 0..5 {
        assert_eq!(store.user(0, &format!("v{k}")).unwrap(), Some(user(&format!("O{}", 55 + k))), "v{k}");
    }

    let expected = LoadedState {
        shards: 2,
        meeting_minutes: Some(240),
        orgs: [("A".to_owned(), org("A"))].into(),
        targets: [("t1".to_owned(), target("t1"))].into(),
        catalogue: [("k1".to_owned(), catalogued("k1"))].into(),
        plans: [("p1".to_owned(), plan("p1"))].into(),
        org_totals: vec![HashMap::from([("C".to_owned(), totals(1))]), HashMap::from([("B".to_owned(), totals(2))])],
        course_totals: vec![HashMap::new(), HashMap::from([("c2".to_owned(), course(2))])],
        max_ts: vec![2_000, -5],
        offsets: BTreeMap::from([
            (("events".to_owned(), -1), pos(1, None)),
            (("events".to_owned(), 0), pos(12, Some(1_000))),
            (("other".to_owned(), 1), pos(4, None)),
            (("other".to_owned(), 3), pos(7, Some(-5))),
        ]),
        changelog: BTreeMap::from([(0, 40), (1, 7)]),
        plan_work: BTreeMap::from([(0, work(9, &["A", "C"])), (1, work(3, &[]))]),
    };
    let check = |store: &S| {
        assert_eq!(store.load().unwrap(), expected);
        let users_of = |shard, org, after, limit| store.users_of(shard, org, after, limit).unwrap();
        assert_eq!(users_of(0, "A", None, 10), ["u4"], "u1 moved to C; u3 left");
        assert_eq!(users_of(0, "C", None, 10), ["u1"]);
        assert_eq!(users_of(0, "AB", None, 10), ["u0"], "an org is not a prefix of another");
        assert_eq!(users_of(0, "B", None, 10), Vec::<String>::new(), "the index is per shard");
        assert_eq!(users_of(1, "B", None, 10), ["u2"]);
        assert_eq!(store.user(0, "u1").unwrap(), Some(user("C")));
        assert_eq!(store.user(1, "u2").unwrap(), Some(user("B")));
        let seen_now: Vec<bool> =
            [(0, seen(-3, 1)), (0, seen(10, 2)), (0, seen(11, 3)), (0, seen(20, 5)), (1, seen(10, 4))]
                .iter()
                .map(|(shard, k)| store.is_seen(*shard, *k).unwrap())
                .collect();
        assert_eq!(seen_now, [false, false, true, true, true]);
        let log = |bucket, first| SeenLog { bucket, first };
        assert_eq!(store.seen_logs_before(0, 20).unwrap(), [log(11, 3)], "the records a forget bound of 20 drops");
        assert_eq!(store.seen_logs_before(0, 21).unwrap(), [log(11, 3), log(20, 5)]);
        assert_eq!(store.seen_logs_before(1, 11).unwrap(), [log(10, 4)], "records are per shard");
        assert_eq!((store.newest_seen_bucket(0).unwrap(), store.newest_seen_bucket(1).unwrap()), (Some(20), Some(10)));
    };
    check(&store);
    let store = reopen(store);
    check(&store);

    // Dropping a shard (its partition went to another instance) deletes
    // all of its state and nothing of the other shard's.
    store.writer().commit(Batch { drop_shards: vec![1], ..Batch::default() }).unwrap();
    let mut left = expected.clone();
    left.org_totals[1].clear();
    left.course_totals[1].clear();
    left.max_ts[1] = i64::MIN;
    left.offsets.retain(|(_, p), _| *p != 1);
    left.changelog.remove(&1);
    left.plan_work.remove(&1);
    let store = reopen(store);
    assert_eq!(store.load().unwrap(), left);
    assert!(store.users_of(1, "B", None, 10).unwrap().is_empty(), "the dropped shard's index too");
    assert_eq!((store.user(1, "u2").unwrap(), store.is_seen(1, seen(10, 4)).unwrap()), (None, false));
    assert!(store.seen_logs_before(1, i64::MAX).unwrap().is_empty(), "the dropped shard's record names too");
    assert_eq!(store.newest_seen_bucket(1).unwrap(), None);
    assert_eq!(store.user(0, "u1").unwrap(), Some(user("C")));
    assert!(store.is_seen(0, seen(11, 3)).unwrap());

    // A restore's batches (RocksDB writes them without its log, flushing
    // before the one that moves the position) read back as committed ones.
    store.restore(Batch { users: vec![(1, "u5".into(), encode(&user("D")))], ..Batch::default() }).unwrap();
    store.restore(Batch { changelog: vec![(1, 42)], max_ts: vec![(1, 7)], ..Batch::default() }).unwrap();
    assert_eq!(store.user(1, "u5").unwrap(), Some(user("D")));
    let store = reopen(store);
    assert_eq!(store.user(1, "u5").unwrap(), Some(user("D")));
    let restored = store.load().unwrap();
    assert_eq!((restored.changelog.get(&1), restored.max_ts[1]), (Some(&42), 7));
}

#[test]
fn the_in_memory_store_conforms() {
    conformance(MemStore::new(2), |s| s);
}

#[test]
fn the_rocksdb_store_conforms_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { shards: 2, ..StoreOptions::default() };
    let store = RocksStore::open(dir.path(), &options).unwrap();
    conformance(store, |s| {
        drop(s);
        // A reopened directory keeps its shard count, whatever is configured now.
        RocksStore::open(dir.path(), &StoreOptions { shards: 9, ..StoreOptions::default() }).unwrap()
    });
}

#[test]
fn a_foreign_directory_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not pulse").unwrap();
    let err = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap_err().to_string();
    assert!(err.contains("holds no Pulse state"), "{err}");
    let err = RocksStore::open_read_only(tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
    assert!(err.contains("run `pulse replay` or `pulse run`"), "{err}");
}

#[test]
fn a_second_writer_is_refused_but_a_reader_may_join() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let err = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap_err().to_string();
    assert!(err.contains("another `pulse run`"), "{err}");
    let reader = RocksStore::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.shards(), 16);
}

/// A stored key naming a shard the directory does not have is damage: the
/// load says so, rather than adding that shard's totals to another.
#[test]
fn a_key_of_a_shard_the_directory_does_not_have_fails_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RocksStore::open(dir.path(), &StoreOptions { shards: 4, ..StoreOptions::default() }).unwrap();
    let batch = Batch { org_totals: vec![(3, "O_1".into(), Some(encode(&totals(2))))], ..Batch::default() };
    store.writer().commit(batch).unwrap();
    store.set_shards(2).unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("shard 3") && err.contains("has 2"), "{err}");
}

#[test]
fn a_corrupted_directory_fails_at_open_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), &StoreOptions::default()).unwrap());
    let manifest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
        .unwrap();
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    std::fs::write(&manifest, vec![0x5a; len]).unwrap();
    let err = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap_err().to_string();
    assert!(err.contains("the state is corrupt: move the directory away"), "{err}");
}

#[path = "common/tmpfs.rs"]
mod tmpfs;

/// A full disk: the commit fails and persists nothing of its batch; the
/// store refuses to recover while the disk is full, recovers once space is
/// freed, and holds exactly the batches committed before the failure.
#[test]
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs root to mount a tmpfs: scripts/test runs it (--features services)"
)]
fn a_full_disk_fails_the_commit_and_the_store_recovers_once_space_is_freed() {
    let disk = tmpfs::Tmpfs::mount(32);
    let dir = disk.path().join("data");
    // RocksDB preallocates its WAL in blocks of about a memtable (here 32
    // MiB, the disk's whole size): they never fit, so no WAL holds space
    // that closing it frees for the next writer to write into, and a full
    // disk refuses every writer alike (with 512 KiB memtables the reopened
    // writer sometimes wrote into its predecessor's freed block).
    let options = StoreOptions { shards: 2, write_buffer_bytes: 64 << 20, ..StoreOptions::default() };
    let mut store = RocksStore::open(&dir, &options).unwrap();
    let batch = |next: i64| {
        let mut b = Batch::default();
        b.offsets.push((("in".into(), 0), pos(next, None)));
        b.users.extend((0..200).map(|i| (0, format!("u{next}-{i}"), encode(&user("A")))));
        b
    };
    store.writer().commit(batch(1)).unwrap();
    let filler = disk.fill();
    let mut next = 2;
    let error = loop {
        match store.writer().commit(batch(next)) {
            Ok(()) => next += 1,
            Err(e) => break e.to_string(),
        }
        assert!(next < 10_000, "the commits never failed on a full disk");
    };
    assert!(error.contains("No space left on device"), "{error}");
    let committed = next - 1;
    // Closing the writer frees the WAL's preallocated tail; take that too.
    let _ = store.recover();
    let second = disk.fill_as("filler-2");
    assert!(store.recover().is_err(), "the disk is still full");
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(second).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = store.recover() {
        assert!(std::time::Instant::now() < deadline, "not recovered 60s after space was freed: {e}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(store.load().unwrap().offsets[&("in".to_owned(), 0)], pos(committed, None));
    assert_eq!(store.user(0, &format!("u{next}-0")).unwrap(), None, "nothing of the failed batch persisted");
    store.writer().commit(batch(next)).unwrap();
    drop(store);
    let store = RocksStore::open(&dir, &options).unwrap();
    assert_eq!(store.load().unwrap().offsets[&("in".to_owned(), 0)], pos(next, None));
    assert_eq!(store.user(0, &format!("u{committed}-7")).unwrap(), Some(user("A")));
}

#[test]
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs root to mount a tmpfs: scripts/test runs it (--features services)"
)]
fn a_full_disk_at_start_fails_at_open_saying_so() {
    let disk = tmpfs::Tmpfs::mount(4);
    disk.fill();
    let err = RocksStore::open(&disk.path().join("data"), &StoreOptions::default()).unwrap_err().to_string();
    assert!(err.contains("its disk has space"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}
