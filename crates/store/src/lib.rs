//! Pulse's durable state: the engine's [`Store`] trait on RocksDB.
//!
//! This crate owns the on-disk layout: column families ([`CF_USERS`],
//! [`CF_SEEN`], [`CF_TOTALS`], [`CF_META`]), the key encoding ([`keys`]), the
//! versioned value encoding, and the atomic commit: one `WriteBatch` carries
//! every change of a commit interval together with the next offset of every
//! partition it covers. Forgetting dedup ids past the horizon is a range
//! delete of whole time buckets, never a scan. Memory is bounded by the block
//! cache and write buffer sizes of [`StoreOptions`], not by the number of users.
//!
//! `rocksdb::` appears in this crate only. It must not depend on Kafka or HTTP.

pub mod keys;
mod metrics;

pub use metrics::{StoreMetrics, StoreUsage};

use std::path::Path;
use std::sync::Arc;

use pulse_engine::codec::{decode, encode};
use pulse_engine::{Batch, LoadedState, SeenIds, SeenKey, SeenLog, ShardId, Store, StoreError, StoreWriter, UserState};
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};

/// Users by (shard, user id).
pub const CF_USERS: &str = "users";
/// Remembered event ids by (shard, hour bucket, id hash).
pub const CF_SEEN: &str = "seen";
/// Org and course totals by (shard, key).
pub const CF_TOTALS: &str = "totals";
/// Registry, targets, offsets, newest event times and the store's format.
pub const CF_META: &str = "meta";
const FAMILIES: [&str; 4] = [CF_USERS, CF_SEEN, CF_TOTALS, CF_META];

/// Version of the directory layout, stored under [`keys::FORMAT`]. 2: a
/// partition's offset is stored with its newest event time. 3: users are
/// sharded by their Kafka partition (murmur2), with changelog positions.
/// 4: the index of users by leaf org, and each shard's plan re-evaluation.
const LAYOUT_VERSION: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Shards of a new state directory (an existing one keeps its own).
    pub shards: ShardId,
    /// RocksDB's memory: one block cache shared by all column families,
    /// index and filter blocks included, which the memtables are charged
    /// to as well, so it bounds the store's memory as a whole.
    pub block_cache_bytes: usize,
    /// The memtables of every column family together (inside
    /// `block_cache_bytes`): past it, the largest is flushed.
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    /// The shares of the default `store.memory_budget_mib` (256).
    fn default() -> Self {
        StoreOptions { shards: 16, block_cache_bytes: 128 << 20, write_buffer_bytes: 32 << 20 }
    }
}

/// The engine's state in a RocksDB directory.
pub struct RocksStore {
    /// Shared with the writers of commits in flight ([`RocksWriter`]);
    /// none is alive when the store reopens ([`Store::recover`]).
    db: Arc<DB>,
    shards: ShardId,
    /// How it was opened, to reopen it the same way ([`Store::recover`]).
    options: StoreOptions,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.db.path()).field("shards", &self.shards).finish()
    }
}

fn err(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> StoreError {
    let context = context.into();
    move |e| StoreError::new(context, e)
}

/// Opens (or creates) the database for reading and writing, taking its lock.
fn open_writer(path: &Path, opts: &StoreOptions) -> Result<DB, StoreError> {
    let cache = Cache::new_lru_cache(opts.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Index and filters in 4 KiB partitions under a small pinned top level:
    // a point get reads one filter partition, not a whole file's filter (a
    // megabyte and more once the state holds a million users), which random
    // reads of user states kept evicting from the block cache and reading
    // back, checksum and all (docs/BENCHMARKS.md, "plan re-evaluation").
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    let mut cf_opts = Options::default();
    cf_opts.set_block_based_table_factory(&table);
    // A busy family (users, ids) may take half of the memtables' share
    // before it is flushed; the manager flushes the largest once all of
    // them together reach the share, and charges them to the cache.
    cf_opts.set_write_buffer_size((opts.write_buffer_bytes / 2).max(64 << 10));
    cf_opts.set_max_write_buffer_number(2);
    // Most point gets miss (a new event id, a user not seen yet): a bloom
    // filter over the memtable's whole keys answers those without walking
    // its skip list (docs/BENCHMARKS.md, catch-up profile).
    cf_opts.set_memtable_whole_key_filtering(true);
    cf_opts.set_memtable_prefix_bloom_ratio(0.1);
    cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut db_opts = cf_opts.clone();
    db_opts.set_write_buffer_manager(&rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
        opts.write_buffer_bytes,
        false,
        cache.clone(),
    ));
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    let families = FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()));
    DB::open_cf_descriptors(&db_opts, path, families).map_err(|e| open_error(path, e))
}

/// Says which of the three ways opening fails this is, and what to do.
fn open_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let context = format!("failed to open state directory {}", path.display());
    let advice = match e.kind() {
        rocksdb::ErrorKind::Corruption => {
            "the state is corrupt: move the directory away and start with an empty one; \
             Pulse rebuilds it from the topics' retained history"
        }
        // RocksDB reports its lock file held by another process as an IO error on `LOCK`.
        rocksdb::ErrorKind::IOError if e.as_ref().contains("LOCK") => {
            "another `pulse run` holds it; stop that one, or give this one its own store.data_dir"
        }
        _ => "check that the directory is readable and writable and its disk has space",
    };
    StoreError::new(context, format!("{advice} (RocksDB: {e})"))
}

/// A stored key's shard as an index; a shard the state directory does not
/// have means damage (or a layout this build does not know), never data to
/// fold into another shard.
fn shard_index(shard: ShardId, shards: usize) -> Result<usize, StoreError> {
    let i = usize::from(shard);
    if i >= shards {
        return Err(StoreError::new(
            "failed to load the state",
            format!(
                "a stored key names shard {shard} but the state directory has {shards}; it is damaged: \
                 move it away and let Pulse rebuild it from the changelog"
            ),
        ));
    }
    Ok(i)
}

fn key_err(e: keys::KeyError) -> StoreError {
    StoreError::new("the state directory holds a key Pulse did not write", e)
}

impl RocksStore {
    /// Opens (or creates) the state in `path` for reading and writing. Only
    /// one process can hold it this way; RocksDB's lock file refuses another.
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<RocksStore, StoreError> {
        let fresh = match std::fs::read_dir(path) {
            Err(_) => true,
            Ok(mut entries) => entries.next().is_none(),
        };
        if !fresh && !path.join("CURRENT").exists() {
            return Err(StoreError::new(
                format!("failed to open state directory {}", path.display()),
                "it is not empty and holds no Pulse state; point store.data_dir at an empty directory or at one Pulse wrote",
            ));
        }
        let db = open_writer(path, opts)?;
        let mut store = RocksStore { db: Arc::new(db), shards: opts.shards.max(1), options: opts.clone() };
        store.check_format(fresh, opts.shards.max(1))?;
        Ok(store)
    }

    /// Opens the state read-only, also while `pulse run` holds it; it sees
    /// what was committed when it opened.
    pub fn open_read_only(path: &Path) -> Result<RocksStore, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::new(
                format!("failed to open state directory {}", path.display()),
                "it holds no Pulse state; run `pulse replay` or `pulse run` with this data directory first",
            ));
        }
        let db = DB::open_cf_for_read_only(&Options::default(), path, FAMILIES, false)
            .map_err(err(format!("failed to open state directory {} read-only", path.display())))?;
        let mut store = RocksStore { db: Arc::new(db), shards: 1, options: StoreOptions::default() };
        store.check_format(false, 1)?;
        Ok(store)
    }

    /// Reads (or, in a new directory, writes) the layout version and shard count.
    fn check_format(&mut self, fresh: bool, shards: ShardId) -> Result<(), StoreError> {
        let meta = self.cf(CF_META);
        let ctx = "failed to read the state's format";
        match self.db.get_cf(meta, [keys::FORMAT]).map_err(err(ctx))? {
            Some(v) if v.len() == 3 && v[0] == LAYOUT_VERSION => {
                self.shards = ShardId::from_be_bytes([v[1], v[2]]);
                Ok(())
            }
            Some(v) => Err(StoreError::new(
                ctx,
                format!(
                    "layout version {:?} is not {LAYOUT_VERSION}; this state was written by another Pulse version",
                    v.first()
                ),
            )),
            None if fresh => {
                let [a, b] = shards.to_be_bytes();
                self.db.put_cf(meta, [keys::FORMAT], [LAYOUT_VERSION, a, b]).map_err(err(ctx))?;
                self.shards = shards;
                Ok(())
            }
            None => Err(StoreError::new(ctx, "the directory holds a RocksDB database that Pulse did not create")),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf(&self.db, name)
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("every column family is opened with the database")
}

impl Store for RocksStore {
    type Writer = RocksWriter;

    fn shards(&self) -> ShardId {
        self.shards
    }

    fn load(&self) -> Result<LoadedState, StoreError> {
        let n = usize::from(self.shards);
        let mut state = LoadedState {
            shards: self.shards,
            org_totals: vec![Default::default(); n],
            course_totals: vec![Default::default(); n],
            max_ts: vec![i64::MIN; n],
            ..LoadedState::default()
        };
        let ctx = "failed to load the state";
        for item in self.db.iterator_cf(self.cf(CF_TOTALS), IteratorMode::Start) {
            let (k, v) = item.map_err(err(ctx))?;
            let space = k.first().copied().unwrap_or_default();
            let (shard, key) = keys::decode_sharded_text(space, &k).map_err(key_err)?;
            let shard = shard_index(shard, n)?;
            match space {
                keys::ORG_TOTALS => {
                    state.org_totals[shard].insert(key.to_owned(), decode("org totals", &v)?);
                }
                keys::COURSE_TOTALS => {
                    state.course_totals[shard].insert(key.to_owned(), decode("course totals", &v)?);
                }
                other => return Err(key_err(keys::KeyError::WrongKeyspace(other, keys::ORG_TOTALS))),
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_META), IteratorMode::Start) {
            let (k, v) = item.map_err(err(ctx))?;
            match k.first().copied() {
                Some(keys::ORG) => {
                    state
                        .orgs
                        .insert(keys::decode_text(keys::ORG, &k).map_err(key_err)?.to_owned(), decode("an org", &v)?);
                }
                Some(keys::TARGET) => {
                    let id = keys::decode_text(keys::TARGET, &k).map_err(key_err)?.to_owned();
                    state.targets.insert(id, decode("a target", &v)?);
                }
                Some(keys::COURSE) => {
                    let id = keys::decode_text(keys::COURSE, &k).map_err(key_err)?.to_owned();
                    state.catalogue.insert(id, decode("a catalogue course", &v)?);
                }
                Some(keys::PLAN) => {
                    let id = keys::decode_text(keys::PLAN, &k).map_err(key_err)?.to_owned();
                    state.plans.insert(id, decode("a plan", &v)?);
                }
                Some(keys::OFFSET) => {
                    let (topic, partition) = keys::decode_offset(&k).map_err(key_err)?;
                    state.offsets.insert((topic.to_owned(), partition), decode("a partition position", &v)?);
                }
                Some(keys::MAX_TS) => {
                    let shard = shard_index(keys::decode_shard(keys::MAX_TS, &k).map_err(key_err)?, n)?;
                    state.max_ts[shard] = keys::decode_i64(&v).map_err(key_err)?;
                }
                Some(keys::PLAN_WORK) => {
                    let shard = keys::decode_shard(keys::PLAN_WORK, &k).map_err(key_err)?;
                    state.plan_work.insert(shard, decode("a shard's plan re-evaluation", &v)?);
                }
                Some(keys::CHANGELOG) => {
                    let shard = keys::decode_shard(keys::CHANGELOG, &k).map_err(key_err)?;
                    state.changelog.insert(shard, keys::decode_i64(&v).map_err(key_err)?);
                }
                Some(keys::MEETING_MINUTES) => state.meeting_minutes = Some(decode("the hours threshold", &v)?),
                Some(keys::FORMAT) => {}
                other => return Err(key_err(keys::KeyError::WrongKeyspace(other.unwrap_or_default(), keys::ORG))),
            }
        }
        Ok(state)
    }

    fn user(&self, shard: ShardId, user: &str) -> Result<Option<UserState>, StoreError> {
        let key = keys::sharded_text(keys::USER, shard, user);
        match self.db.get_pinned_cf(self.cf(CF_USERS), key).map_err(err("failed to read a user"))? {
            Some(v) => Ok(Some(decode("a user", &v)?)),
            None => Ok(None),
        }
    }

    fn users_of(
        &self,
        shard: ShardId,
        org: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = keys::org_users(shard, org);
        // The smallest key above `after`'s: that key and a zero byte.
        let start = match after {
            Some(user) => [keys::org_user(shard, org, user).as_slice(), &[0]].concat(),
            None => prefix.clone(),
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_range(keys::ORG_USER, shard).1);
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(CF_USERS), opts, mode) {
            let (k, _) = item.map_err(err("failed to list the users of an org"))?;
            if !k.starts_with(&prefix) || out.len() == limit {
                break;
            }
            out.push(keys::decode_org_user(&prefix, &k).map_err(key_err)?.to_owned());
        }
        Ok(out)
    }

    fn is_seen(&self, shard: ShardId, key: SeenKey) -> Result<bool, StoreError> {
        let k = keys::seen(keys::SEEN, shard, key.bucket, key.hash);
        Ok(self.db.get_pinned_cf(self.cf(CF_SEEN), k).map_err(err("failed to read an event id"))?.is_some())
    }

    fn newest_seen_bucket(&self, shard: ShardId) -> Result<Option<i64>, StoreError> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(keys::seen_bucket_start(keys::SEEN, shard, i64::MIN));
        opts.set_iterate_upper_bound(keys::shard_range(keys::SEEN, shard).1);
        match self.db.iterator_cf_opt(self.cf(CF_SEEN), opts, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item.map_err(err("failed to read the newest event id"))?;
                Ok(Some(keys::decode_seen(keys::SEEN, &k).map_err(key_err)?.0))
            }
        }
    }

    fn seen_logs_before(&self, shard: ShardId, bucket: i64) -> Result<Vec<SeenLog>, StoreError> {
        let start = keys::seen_bucket_start(keys::SEEN_LOG, shard, i64::MIN);
        let end = keys::seen_bucket_start(keys::SEEN_LOG, shard, bucket);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(CF_SEEN), opts, mode) {
            let (k, _) = item.map_err(err("failed to list the records of expired event ids"))?;
            let (bucket, first) = keys::decode_seen(keys::SEEN_LOG, &k).map_err(key_err)?;
            out.push(SeenLog { bucket, first });
        }
        Ok(out)
    }

    fn set_shards(&mut self, shards: ShardId) -> Result<(), StoreError> {
        let [a, b] = shards.max(1).to_be_bytes();
        let meta = self.cf(CF_META);
        self.db.put_cf(meta, [keys::FORMAT], [LAYOUT_VERSION, a, b]).map_err(err("failed to set the shard count"))?;
        self.shards = shards.max(1);
        Ok(())
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        // After a failed WAL write (a full disk) RocksDB refuses every write
        // until it is reopened. Close the writer behind a read-only instance,
        // which keeps reads (user lookups) answering and stays in place if
        // the writer cannot open yet; reopening replays the WAL, dropping
        // the failed write's torn tail.
        let path = self.db.path().to_owned();
        let reader = DB::open_cf_for_read_only(&Options::default(), &path, FAMILIES, false)
            .map_err(err(format!("failed to reopen state directory {} read-only", path.display())))?;
        drop(std::mem::replace(&mut self.db, Arc::new(reader)));
        self.db = Arc::new(open_writer(&path, &self.options)?);
        // Opening writes little; a write of an unchanged value proves the store takes writes.
        let meta = self.cf(CF_META);
        let format = self.db.get_cf(meta, [keys::FORMAT]).map_err(err("failed to read the layout version"))?;
        self.db.put_cf(meta, [keys::FORMAT], format.unwrap_or_default()).map_err(err("the store still refuses writes"))
    }

    fn writer(&self) -> RocksWriter {
        RocksWriter { db: Arc::clone(&self.db) }
    }

    /// Restored records without the write-ahead log (a restore writes a
    /// shard's whole history, which the log wrote a second time); before a batch
    /// that carries a changelog position or drops shards, the memtables
    /// are flushed, so that what it leads to is on disk before it is.
    fn restore(&self, batch: Batch) -> Result<(), StoreError> {
        let ctx = "failed to write restored state to the state directory";
        let wb = write_batch(&self.db, &batch)?;
        if batch.changelog.is_empty() && batch.drop_shards.is_empty() {
            let mut unlogged = rocksdb::WriteOptions::default();
            unlogged.disable_wal(true);
            return self.db.write_opt(wb, &unlogged).map_err(err(ctx));
        }
        let families: Vec<_> = FAMILIES.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&families, &rocksdb::FlushOptions::default()).map_err(err(ctx))?;
        self.db.write(wb).map_err(err(ctx))
    }
}

/// About the size of a batch's `WriteBatch`: users and ids, the bulk of
/// it, with RocksDB's few bytes of framing per entry.
fn batch_bytes(batch: &Batch) -> usize {
    const FRAMING: usize = 8;
    let users: usize = batch.users.iter().map(|(_, user, state)| 3 + user.len() + state.len() + FRAMING).sum();
    let ids: usize = batch.seen.iter().map(|(_, s)| (s.ids.len() + 1) * (keys::SEEN_KEY_LEN + FRAMING)).sum();
    users + ids + 4096
}

/// Commits to a [`RocksStore`] from any thread: RocksDB applies each
/// `WriteBatch` atomically, and readers see it whole or not at all.
pub struct RocksWriter {
    db: Arc<DB>,
}

impl std::fmt::Debug for RocksWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksWriter").field("path", &self.db.path()).finish()
    }
}

impl StoreWriter for RocksWriter {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // No fsync: the write-ahead log survives a killed process; a machine
        // crash may lose the last commits, whose offsets are lost with them,
        // so those messages are consumed again.
        let wb = write_batch(&self.db, &batch)?;
        self.db.write(wb).map_err(err("failed to commit a batch to the state directory"))
    }
}

/// Registry records by id under `space` (`None` deletes).
fn put_records<T: serde::Serialize>(
    wb: &mut WriteBatch,
    meta: &rocksdb::ColumnFamily,
    space: u8,
    records: &[(String, Option<T>)],
) {
    for (id, record) in records {
        match record {
            Some(r) => wb.put_cf(meta, keys::text(space, id), encode(r)),
            None => wb.delete_cf(meta, keys::text(space, id)),
        }
    }
}

/// One commit's `WriteBatch`.
fn write_batch(db: &DB, batch: &Batch) -> Result<WriteBatch, StoreError> {
    let (users, seen, totals, meta) = (cf(db, CF_USERS), cf(db, CF_SEEN), cf(db, CF_TOTALS), cf(db, CF_META));
    // Sized up front: grown by doubling, a large commit's batch held
    // up to twice its size (peak memory, docs/BENCHMARKS.md).
    let mut wb = WriteBatch::with_capacity_bytes(batch_bytes(batch));
    for &shard in &batch.drop_shards {
        for (cf, space) in [
            (users, keys::USER),
            (users, keys::ORG_USER),
            (seen, keys::SEEN),
            (seen, keys::SEEN_LOG),
            (totals, keys::ORG_TOTALS),
            (totals, keys::COURSE_TOTALS),
        ] {
            let (start, end) = keys::shard_range(space, shard);
            wb.delete_range_cf(cf, start, end);
        }
        wb.delete_cf(meta, keys::shard(keys::MAX_TS, shard));
        wb.delete_cf(meta, keys::shard(keys::CHANGELOG, shard));
        wb.delete_cf(meta, keys::shard(keys::PLAN_WORK, shard));
        for item in db.prefix_iterator_cf(meta, [keys::OFFSET]) {
            let (k, _) = item.map_err(err("failed to list the partition positions"))?;
            // Without a prefix extractor the iterator runs on past its prefix.
            if k.first() != Some(&keys::OFFSET) {
                break;
            }
            if keys::decode_offset(&k).map_err(key_err)?.1 == i32::from(shard) {
                wb.delete_cf(meta, &k);
            }
        }
    }
    if let Some(m) = batch.meeting_minutes {
        wb.put_cf(meta, [keys::MEETING_MINUTES], encode(&m));
    }
    // In key order: the memtable's skip list then finds each insert's
    // place next to the previous one instead of searching from the top
    // (the largest write cost of a commit, docs/BENCHMARKS.md). A stable
    // sort: a restored batch may hold a user twice, and the later wins.
    let mut user_rows: Vec<(Vec<u8>, &[u8])> = batch
        .users
        .iter()
        .map(|(shard, user, state)| (keys::sharded_text(keys::USER, *shard, user), state.as_slice()))
        .collect();
    user_rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, state) in user_rows {
        wb.put_cf(users, key, state);
    }
    // In order: a user who moves away and back within a batch is indexed once.
    for e in &batch.org_users {
        let key = keys::org_user(e.shard, &e.org, &e.user);
        match e.present {
            true => wb.put_cf(users, key, []),
            false => wb.delete_cf(users, key),
        }
    }
    let mut seen_keys: Vec<[u8; keys::SEEN_KEY_LEN]> = Vec::new();
    for (shard, SeenIds { log, ids }) in &batch.seen {
        wb.put_cf(seen, keys::seen(keys::SEEN_LOG, *shard, log.bucket, log.first), []);
        seen_keys.extend(ids.iter().map(|k| keys::seen_array(keys::SEEN, *shard, k.bucket, k.hash)));
    }
    seen_keys.sort_unstable();
    for key in &seen_keys {
        wb.put_cf(seen, key, []);
    }
    for (shard, before) in &batch.forget_before {
        for space in [keys::SEEN, keys::SEEN_LOG] {
            wb.delete_range_cf(
                seen,
                keys::seen_bucket_start(space, *shard, i64::MIN),
                keys::seen_bucket_start(space, *shard, *before),
            );
        }
    }
    for (shard, key, t) in &batch.org_totals {
        let k = keys::sharded_text(keys::ORG_TOTALS, *shard, key);
        match t {
            Some(t) => wb.put_cf(totals, k, t),
            None => wb.delete_cf(totals, k),
        }
    }
    for (shard, key, t) in &batch.course_totals {
        let k = keys::sharded_text(keys::COURSE_TOTALS, *shard, key);
        match t {
            Some(t) => wb.put_cf(totals, k, encode(t)),
            None => wb.delete_cf(totals, k),
        }
    }
    for (shard, ts) in &batch.max_ts {
        wb.put_cf(meta, keys::shard(keys::MAX_TS, *shard), keys::encode_i64(*ts));
    }
    for (shard, work) in &batch.plan_work {
        wb.put_cf(meta, keys::shard(keys::PLAN_WORK, *shard), encode(work));
    }
    for (shard, position) in &batch.changelog {
        wb.put_cf(meta, keys::shard(keys::CHANGELOG, *shard), keys::encode_i64(*position));
    }
    put_records(&mut wb, meta, keys::ORG, &batch.orgs);
    put_records(&mut wb, meta, keys::TARGET, &batch.targets);
    put_records(&mut wb, meta, keys::COURSE, &batch.catalogue);
    put_records(&mut wb, meta, keys::PLAN, &batch.plans);
    for ((topic, partition), position) in &batch.offsets {
        wb.put_cf(meta, keys::offset(topic, *partition), encode(position));
    }
    Ok(wb)
}
