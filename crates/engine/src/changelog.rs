//! A shard's changes as changelog records: compactable key/value pairs, one
//! changelog partition per shard, from which any instance can rebuild the
//! shard (its users, remembered ids, totals, newest event time and input
//! offsets).
//!
//! Every value is written in full (a later record for a key replaces the
//! earlier), so a suffix of the log applied onto the state of its prefix
//! gives the state of the whole log, and compaction keeps that true. The
//! only tombstones are for forgotten ids; a restore also applies the
//! shard's forget bound by range, so a tombstone compaction has since
//! removed changes nothing. Totals that become zero are written as zero,
//! never as a tombstone, so that no restore can miss their deletion.

use std::collections::BTreeMap;

use pulse_model::Millis;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::state::{CourseTotals, Totals, UserOrg};
use crate::store::{Batch, OrgUser, SeenIds, SeenKey, SeenLog, ShardId, StoreError, StreamPosition};

/// One changelog record; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Where the engine writes each commit's changes before the store takes
/// them (so that the changelog is never behind a local state).
pub trait ChangeLog {
    /// Writes each shard's changes atomically (all of a shard's or none)
    /// and returns, per shard, the changelog offset after them.
    fn write(&mut self, changes: BTreeMap<ShardId, Vec<Change>>) -> Result<Vec<(ShardId, i64)>, StoreError>;
}

const USER: u8 = b'u';
/// Remembered ids, one record per shard and commit (key: [`SeenLog`]).
const SEEN_IDS: u8 = b'i';
/// One record per remembered id: the layout before Pulse 0.2, refused.
const SEEN_BEFORE_0_2: u8 = b's';
/// Bytes per remembered id in a [`SEEN_IDS`] value: bucket, then hash.
const ID_BYTES: usize = 24;
const ORG_TOTALS: u8 = b'o';
const COURSE_TOTALS: u8 = b'c';
const NEWEST: u8 = b'w';
const FORGET: u8 = b'f';
const OFFSET: u8 = b'x';
/// The shard's plan re-evaluation ([`crate::PlanWork`]). The index of users by
/// leaf org has no records: a restore derives it from the user records.
const PLAN_WORK: u8 = b'e';

fn key(kind: u8, text: &[u8]) -> Vec<u8> {
    [&[kind], text].concat()
}

fn value<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    Some(codec::encode(v))
}

fn seen_key(log: &SeenLog) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(SEEN_IDS);
    out.extend_from_slice(&log.bucket.to_be_bytes());
    out.extend_from_slice(&log.first.to_be_bytes());
    out
}

fn seen_value(ids: &[SeenKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * ID_BYTES);
    for k in ids {
        out.extend_from_slice(&k.bucket.to_be_bytes());
        out.extend_from_slice(&k.hash.to_be_bytes());
    }
    out
}

/// The bucket (8 bytes) and hash (16) that start `bytes`.
fn bucket_and_hash(bytes: &[u8]) -> (i64, u128) {
    let bucket = i64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
    let hash = u128::from_be_bytes(bytes[8..ID_BYTES].try_into().unwrap_or_default());
    (bucket, hash)
}

/// Splits a batch into its shards' changelog records. The registry and
/// targets are not in it: every instance reads them from their own topics.
pub fn changes(batch: &Batch) -> BTreeMap<ShardId, Vec<Change>> {
    let mut out: BTreeMap<ShardId, Vec<Change>> = BTreeMap::new();
    let mut put = |shard: ShardId, key: Vec<u8>, value: Option<Vec<u8>>| {
        out.entry(shard).or_default().push(Change { key, value });
    };
    for (shard, user, state) in &batch.users {
        put(*shard, key(USER, user.as_bytes()), Some(state.clone()));
    }
    for (shard, seen) in &batch.seen {
        put(*shard, seen_key(&seen.log), Some(seen_value(&seen.ids)));
    }
    for (shard, log) in &batch.forgotten {
        put(*shard, seen_key(log), None);
    }
    for (shard, bucket) in &batch.forget_before {
        put(*shard, vec![FORGET], value(bucket));
    }
    for (shard, org, t) in &batch.org_totals {
        put(*shard, key(ORG_TOTALS, org.as_bytes()), t.clone().or_else(|| value(&Totals::default())));
    }
    for (shard, course, t) in &batch.course_totals {
        put(*shard, key(COURSE_TOTALS, course.as_bytes()), value(&t.unwrap_or_default()));
    }
    for (shard, ts) in &batch.max_ts {
        put(*shard, vec![NEWEST], value(ts));
    }
    for (shard, work) in &batch.plan_work {
        put(*shard, vec![PLAN_WORK], value(work));
    }
    for ((topic, partition), position) in &batch.offsets {
        put(*partition as ShardId, key(OFFSET, topic.as_bytes()), value(position));
    }
    out
}

fn decode<T: DeserializeOwned>(value: Option<&[u8]>) -> Result<T, StoreError> {
    codec::decode("a changelog value", value.unwrap_or_default())
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::new("bad changelog key", e))
}

/// Adds one changelog record of `shard` to a batch that restores it.
pub fn restore_into(batch: &mut Batch, shard: ShardId, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    let Some((&kind, rest)) = key.split_first() else {
        return Err(StoreError::new("bad changelog key", "empty key"));
    };
    match kind {
        USER => {
            // Its version and org are checked here, so that a record of
            // another version fails the restore, not a later read; the rest
            // is not decoded: a restore reads every user of a shard, and
            // the whole decode was most of its cost (docs/BENCHMARKS.md).
            let user = text(rest)?;
            let org = codec::decode_prefix::<UserOrg>("a changelog value", value.unwrap_or_default())?;
            let org = org.org_key().to_owned();
            batch.org_users.push(OrgUser { shard, org, user: user.clone(), present: true });
            batch.users.push((shard, user, value.unwrap_or_default().to_vec()))
        }
        SEEN_IDS => {
            if rest.len() != ID_BYTES {
                return Err(StoreError::new("bad changelog key", "an id record's key is 25 bytes"));
            }
            // A tombstone needs nothing: the forget bound after it drops the ids.
            if let Some(value) = value {
                if value.len() % ID_BYTES != 0 {
                    return Err(StoreError::new("bad changelog value", "an id record holds 24 bytes per id"));
                }
                let (bucket, first) = bucket_and_hash(rest);
                let ids = value.chunks(ID_BYTES).map(bucket_and_hash).map(|(bucket, hash)| SeenKey { bucket, hash });
                batch.seen.push((shard, SeenIds { log: SeenLog { bucket, first }, ids: ids.collect() }));
            }
        }
        SEEN_BEFORE_0_2 => {
            return Err(StoreError::new(
                "changelog written by a Pulse before 0.2 (one record per event id)",
                "give the group a new changelog topic (kafka.changelog_topic) and an empty store.data_dir: \
                 the state is rebuilt from the inputs' retained history",
            ))
        }
        FORGET => batch.forget_before.push((shard, decode(value)?)),
        ORG_TOTALS => {
            let t: Totals = decode(value)?;
            batch.org_totals.push((shard, text(rest)?, (!t.is_zero()).then(|| value.unwrap_or_default().to_vec())));
        }
        COURSE_TOTALS => {
            let t: CourseTotals = decode(value)?;
            batch.course_totals.push((shard, text(rest)?, (!t.is_zero()).then_some(t)));
        }
        NEWEST => batch.max_ts.push((shard, decode::<Millis>(value)?)),
        PLAN_WORK => batch.plan_work.push((shard, decode(value)?)),
        OFFSET => {
            let position: StreamPosition = decode(value)?;
            batch.offsets.push(((text(rest)?, i32::from(shard)), position));
        }
        other => {
            return Err(StoreError::new(
                "bad changelog key",
                format!("unknown record kind {other:#04x}; was it written by a newer Pulse?"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pulse_model::{parse, InputFormat, Parsed};
    use xxhash_rust::xxh3::xxh3_128;

    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::store::{LoadedState, MemStore, Store, StoreWriter};

    /// Keeps every record, by shard, as a changelog topic would.
    #[derive(Default)]
    struct Recorded(BTreeMap<ShardId, Vec<Change>>);

    impl ChangeLog for Recorded {
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

    /// What Kafka's compaction may leave: the last record of each key.
    fn compacted(log: &[Change]) -> Vec<Change> {
        let mut last: BTreeMap<&[u8], usize> = BTreeMap::new();
        for (i, c) in log.iter().enumerate() {
            last.insert(&c.key, i);
        }
        log.iter().enumerate().filter(|(i, c)| last[c.key.as_slice()] == *i).map(|(_, c)| c.clone()).collect()
    }

    fn restored(log: &Recorded, compact: bool) -> MemStore {
        let store = MemStore::new(3);
        for (&shard, records) in &log.0 {
            let records = if compact { compacted(records) } else { records.clone() };
            let mut batch = Batch::default();
            for c in &records {
                restore_into(&mut batch, shard, &c.key, c.value.as_deref()).unwrap();
            }
            batch.changelog.push((shard, records.len() as i64));
            store.writer().commit(batch).unwrap();
        }
        store
    }

    #[test]
    fn a_shard_restored_from_its_changelog_equals_the_original_even_after_compaction() {
        let day = 86_400_000;
        let t0 = 1_750_000_000_000;
        let mut engine = Engine::open(MemStore::new(3), EngineConfig::default()).unwrap();
        let mut log = Recorded::default();
        let mut users = Vec::new();
        for i in 0..120i64 {
            let (user, org) = (format!("u{}", i % 17), format!("O{}", i % 5));
            let line = format!(
                r#"{{"v":1,"id":"e{i}","type":"progress","ts":{},"user":"{user}","org":"{org}","course":"c{}","minutes":5}}"#,
                t0 + i * day / 6,
                i % 4
            );
            let Ok(Parsed::Event(ev)) = parse(InputFormat::PulseV1, None, line.as_bytes()) else { panic!("{line}") };
            engine.apply(&ev).unwrap();
            let shard = engine.shard_of(&user);
            engine.set_next_offset("in", i32::from(shard), i);
            users.push(user);
            // Commits of a few events each; ids 8+ days old are forgotten on the way.
            if i % 7 == 6 {
                engine.commit_logged(Some(&mut log)).unwrap();
            }
        }
        engine.commit_logged(Some(&mut log)).unwrap();
        let tombstones = log.0.values().flatten().filter(|c| c.value.is_none()).count();
        assert!(tombstones > 0, "records of forgotten ids are logged as tombstones");
        let original = engine.into_store();
        // The hours threshold is configuration, not shard state.
        let expected = LoadedState { meeting_minutes: None, ..original.load().unwrap() };
        for compact in [false, true] {
            let copy = restored(&log, compact);
            // Positions count records, which compaction removes.
            let loaded = LoadedState { changelog: expected.changelog.clone(), ..copy.load().unwrap() };
            assert_eq!(loaded, expected, "compacted: {compact}");
            for user in &users {
                let shard = pulse_model::partition_of(user.as_bytes(), 3) as ShardId;
                assert_eq!(copy.user(shard, user).unwrap(), original.user(shard, user).unwrap());
            }
            // The index of users by leaf org, derived from the user records:
            // from a compacted log, exactly; from one that still holds a
            // user's older records, with entries for its older orgs too
            // (which re-evaluation visits, and drops).
            for (shard, org) in (0..3).flat_map(|s| (0..5).map(move |o| (s, format!("O{o}")))) {
                let index = |store: &MemStore| store.users_of(shard, &org, None, usize::MAX).unwrap();
                let (copied, kept) = (index(&copy), index(&original));
                match compact {
                    true => assert_eq!(copied, kept, "{org}"),
                    false => {
                        assert!(kept.iter().all(|u| copied.contains(u)), "{org}: {copied:?} lacks some of {kept:?}")
                    }
                }
            }
            assert!((0..3).any(|s| !original.users_of(s, "O0", None, 100).unwrap().is_empty()));
            for shard in 0..3 {
                let logs = |store: &MemStore| store.seen_logs_before(shard, i64::MAX).unwrap();
                assert_eq!(logs(&copy), logs(&original), "compacted: {compact}");
            }
            for i in 0..120i64 {
                let key = SeenKey {
                    bucket: (t0 + i * day / 6).div_euclid(3_600_000),
                    hash: xxh3_128(format!("e{i}").as_bytes()),
                };
                let shard = pulse_model::partition_of(format!("u{}", i % 17).as_bytes(), 3) as ShardId;
                assert_eq!(copy.is_seen(shard, key).unwrap(), original.is_seen(shard, key).unwrap(), "id e{i}");
            }
        }
    }
}
