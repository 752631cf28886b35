//! RocksDB's size and memory as metrics, read from its properties after each
//! commit (not at scrape time, so a scrape never touches the database).

use std::sync::{Mutex, MutexGuard};

use pulse_metrics::{Collect, Encoder, Kind};

use crate::{RocksStore, CF_SEEN, FAMILIES};

/// Sizes of one state directory, summed over the column families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Every file of the state directory (SST files, write-ahead log, manifest).
    pub disk_bytes: u64,
    /// Block cache in use (data, index and filter blocks).
    pub block_cache_bytes: u64,
    /// Memtables, flushed and not.
    pub memtable_bytes: u64,
    /// Event ids remembered for deduplication (RocksDB's estimate: ids
    /// forgotten by a range delete leave it at the next compaction).
    pub remembered_ids: u64,
    /// Their size: SST files and memtables of the `seen` column family.
    pub remembered_bytes: u64,
}

impl RocksStore {
    pub fn usage(&self) -> StoreUsage {
        let sum = |property: &str| -> u64 {
            FAMILIES
                .iter()
                .map(|name| self.db.property_int_value_cf(self.cf(name), property).ok().flatten().unwrap_or(0))
                .sum()
        };
        let seen = |property: &str| -> u64 {
            self.db.property_int_value_cf(self.cf(CF_SEEN), property).ok().flatten().unwrap_or(0)
        };
        StoreUsage {
            // The directory holds a few dozen files: listing them is cheap,
            // and unlike the SST size it counts the write-ahead log.
            disk_bytes: std::fs::read_dir(self.db.path())
                .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0),
            block_cache_bytes: self.db.property_int_value("rocksdb.block-cache-usage").ok().flatten().unwrap_or(0),
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            remembered_ids: seen("rocksdb.estimate-num-keys"),
            remembered_bytes: seen("rocksdb.total-sst-files-size") + seen("rocksdb.cur-size-all-mem-tables"),
        }
    }
}

/// The usage last recorded, shared with the HTTP server.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    usage: Mutex<Option<StoreUsage>>,
}

impl StoreMetrics {
    pub fn record(&self, store: &RocksStore) {
        *self.lock() = Some(store.usage());
    }

    fn lock(&self) -> MutexGuard<'_, Option<StoreUsage>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collect for StoreMetrics {
    fn collect(&self, enc: &mut Encoder) {
        let Some(u) = *self.lock() else { return };
        enc.family("pulse_store_disk_bytes", "Size of the state directory on disk.", Kind::Gauge)
            .sample(&[], u.disk_bytes as f64);
        enc.family("pulse_store_block_cache_bytes", "RocksDB block cache in use.", Kind::Gauge)
            .sample(&[], u.block_cache_bytes as f64);
        enc.family("pulse_store_memtable_bytes", "RocksDB memtables in memory.", Kind::Gauge)
            .sample(&[], u.memtable_bytes as f64);
        enc.family(
            "pulse_store_remembered_ids",
            "Event ids remembered for deduplication (estimate; forgotten ones leave at compaction).",
            Kind::Gauge,
        )
        .sample(&[], u.remembered_ids as f64);
        enc.family(
            "pulse_store_remembered_id_bytes",
            "Size of the remembered event ids on disk and in memtables.",
            Kind::Gauge,
        )
        .sample(&[], u.remembered_bytes as f64);
    }
}
