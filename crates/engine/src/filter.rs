//! An in-memory filter in front of the store's remembered ids: most events
//! are new, and asking the store about a new id costs a memtable search and
//! a bloom probe of every SST file (the largest cost of a catch-up in the
//! profile, docs/BENCHMARKS.md). The filter answers "certainly new" for an
//! id whose hour bucket is newer than every id the store held when the
//! engine loaded it (`complete_after`), since every id remembered after
//! that went through [`SeenFilter::insert`]. Anything else, and a filter hit
//! (about 1 in 100 for a new id), is asked of the store.
//!
//! One blocked bloom filter per day of buckets, so forgetting drops whole
//! days; about 10 bits per id.

use std::collections::BTreeMap;

/// Hour buckets per filter day.
const BUCKETS_PER_DAY: i64 = 24;
/// Ids per bloom before a day adds another (512-bit blocks, ~10 bits an id).
const IDS_PER_BLOOM: usize = 1 << 14;
const BLOCKS_PER_BLOOM: usize = IDS_PER_BLOOM * 10 / 512;

#[derive(Debug, Clone, Default)]
struct Bloom {
    blocks: Vec<[u64; 8]>,
    ids: usize,
}

impl Bloom {
    fn new() -> Bloom {
        Bloom { blocks: vec![[0; 8]; BLOCKS_PER_BLOOM], ids: 0 }
    }

    /// The block (from the hash's low half) and six bit positions in it
    /// (nine bits each from the high half).
    fn probes(&self, hash: u128) -> (usize, [u32; 6]) {
        let block = ((hash as u64 as u128 * self.blocks.len() as u128) >> 64) as usize;
        let high = (hash >> 64) as u64;
        (block, std::array::from_fn(|i| ((high >> (i * 9)) & 511) as u32))
    }

    fn insert(&mut self, hash: u128) {
        let (block, bits) = self.probes(hash);
        for b in bits {
            self.blocks[block][(b / 64) as usize] |= 1 << (b % 64);
        }
        self.ids += 1;
    }

    fn may_contain(&self, hash: u128) -> bool {
        let (block, bits) = self.probes(hash);
        bits.iter().all(|b| self.blocks[block][(*b / 64) as usize] & (1 << (b % 64)) != 0)
    }
}

/// One shard's filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeenFilter {
    /// The newest bucket among the ids the store held at load: the filter
    /// knows nothing of ids up to it.
    complete_after: Option<i64>,
    days: BTreeMap<i64, Vec<Bloom>>,
}

impl SeenFilter {
    /// A filter for a store whose newest remembered id is in bucket `newest` (if any).
    pub(crate) fn new(newest: Option<i64>) -> SeenFilter {
        SeenFilter { complete_after: newest, days: BTreeMap::new() }
    }

    fn day(bucket: i64) -> i64 {
        bucket.div_euclid(BUCKETS_PER_DAY)
    }

    pub(crate) fn insert(&mut self, bucket: i64, hash: u128) {
        let blooms = self.days.entry(Self::day(bucket)).or_default();
        match blooms.last_mut() {
            Some(b) if b.ids < IDS_PER_BLOOM => b.insert(hash),
            _ => {
                let mut b = Bloom::new();
                b.insert(hash);
                blooms.push(b);
            }
        }
    }

    /// False only if the id is certainly not remembered.
    pub(crate) fn may_contain(&self, bucket: i64, hash: u128) -> bool {
        if self.complete_after.is_some_and(|newest| bucket <= newest) {
            return true;
        }
        self.days.get(&Self::day(bucket)).is_some_and(|blooms| blooms.iter().any(|b| b.may_contain(hash)))
    }

    /// Drops the days whose every bucket is below `bucket` (forgotten).
    pub(crate) fn forget_before(&mut self, bucket: i64) {
        // Day d holds buckets [24d, 24d + 23]: all below `bucket` iff 24d + 24 <= bucket.
        let first_kept = bucket.div_euclid(BUCKETS_PER_DAY);
        self.days = self.days.split_off(&first_kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes())
    }

    #[test]
    fn it_never_misses_an_inserted_id_and_rarely_claims_a_new_one() {
        let mut f = SeenFilter::new(None);
        for i in 0..50_000u64 {
            f.insert(1_000 + (i % 48) as i64, hash(i));
        }
        assert!((0..50_000u64).all(|i| f.may_contain(1_000 + (i % 48) as i64, hash(i))));
        let false_positives = (50_000..150_000u64).filter(|&i| f.may_contain(1_000 + (i % 48) as i64, hash(i))).count();
        assert!(false_positives < 3_000, "{false_positives} of 100,000 new ids claimed");
        assert!(!f.may_contain(5_000, hash(1)), "a day it holds nothing of");
    }

    #[test]
    fn ids_up_to_the_stores_newest_bucket_are_asked_of_the_store_and_forgetting_drops_whole_days() {
        let mut f = SeenFilter::new(Some(100));
        assert!(f.may_contain(100, hash(1)) && f.may_contain(-7, hash(2)));
        assert!(!f.may_contain(101, hash(1)));
        f.insert(130, hash(3));
        f.insert(150, hash(4));
        f.forget_before(144);
        assert!(!f.may_contain(130, hash(3)), "day 5 (buckets 120-143) is forgotten");
        assert!(f.may_contain(150, hash(4)), "day 6 is kept");
        f.forget_before(145);
        assert!(f.may_contain(150, hash(4)), "a day partly past the bound is kept");
    }
}
