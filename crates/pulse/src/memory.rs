//! The one memory budget (`store.memory_budget_mib`) and where each of its
//! bytes goes: the only place the shares are decided.

/// The budget's default, in MiB: with the fixed overhead beside it
/// (docs/ARCHITECTURE.md, "Memory"), a catch-up peaks well under 1 GiB.
pub const DEFAULT_MIB: usize = 256;

/// The smallest budget that works: librdkafka's and RocksDB's floors.
pub const MIN_MIB: usize = 16;

/// The budget, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// RocksDB's block cache, which also holds the memtables (charged to
    /// it by a write-buffer manager), index and filter blocks: a half.
    pub store_cache: usize,
    /// Of `store_cache`, the memtables of every column family together: an eighth of the budget.
    pub store_write_buffers: usize,
    /// The loop's shares (prefetch an eighth, outgoing records an eighth,
    /// uncommitted users and ids a quarter).
    pub loop_memory: pulse_kafka::Memory,
}

impl Budget {
    pub fn of_mib(mib: usize) -> Budget {
        let bytes = mib << 20;
        Budget {
            store_cache: bytes / 2,
            store_write_buffers: bytes / 8,
            loop_memory: pulse_kafka::Memory { prefetch: bytes / 8, outgoing: bytes / 8, uncommitted: bytes / 4 },
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::of_mib(DEFAULT_MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_add_up_to_the_budget() {
        let b = Budget::of_mib(512);
        let m = b.loop_memory;
        assert_eq!(b.store_cache + m.prefetch + m.outgoing + m.uncommitted, 512 << 20);
        assert!(b.store_write_buffers < b.store_cache, "the memtables are inside the cache");
    }
}
