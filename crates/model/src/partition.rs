//! Where a keyed message lives: Kafka's Java client partitioner.
//!
//! The platform's producers are Java clients, which put a keyed message on
//! partition `toPositive(murmur2(key)) % partitions`. Input topics are keyed
//! by user id, so a user's state belongs to that partition's number; Pulse
//! places state, and forwards events that arrive elsewhere, with this
//! function. (librdkafka's default partitioner, CRC32, differs.)

/// The partition Kafka's Java client picks for `key` among `partitions`.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    // Kafka's `Utils.murmur2`: MurmurHash2 with this fixed seed.
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut words = key.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    // `toPositive` clears the sign bit (it is not `abs`).
    (h & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own `UtilsTest.testMurmur2` and
    /// `DefaultPartitionerTest` would need a JVM; the broker test
    /// `keyed_messages_land_where_the_platforms_java_producers_put_them`
    /// checks this function against real placements. Here: the properties
    /// a placement function must have.
    #[test]
    fn placement_is_stable_in_range_and_spreads() {
        let mut counts = [0u32; 6];
        for i in 0..6000 {
            let key = format!("u-{i}");
            let p = partition_of(key.as_bytes(), 6);
            assert_eq!(p, partition_of(key.as_bytes(), 6));
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(partition_of(b"anything", 1), 0);
    }
}
