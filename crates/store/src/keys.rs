//! The one key encoding of Pulse's RocksDB state.
//!
//! Every key starts with a keyspace byte; integers are big-endian and
//! fixed-width (signed ones with the sign bit flipped, so byte order is numeric
//! order); a string that is not last is length-prefixed. Decoding returns a
//! typed error instead of panicking on foreign bytes.

use pulse_engine::ShardId;

/// Keyspace bytes. Each column family holds one or more keyspaces.
pub const USER: u8 = b'u';
pub const SEEN: u8 = b's';
/// The names of the changelog records of remembered ids ([`pulse_engine::SeenLog`]).
pub const SEEN_LOG: u8 = b'i';
pub const ORG_TOTALS: u8 = b'o';
pub const COURSE_TOTALS: u8 = b'c';
pub const ORG: u8 = b'r';
pub const TARGET: u8 = b't';
/// A course record of the catalogue.
pub const COURSE: u8 = b'k';
/// A capacity-building plan record.
pub const PLAN: u8 = b'p';
pub const OFFSET: u8 = b'x';
/// The index of users by leaf org ([`org_user`]).
pub const ORG_USER: u8 = b'n';
/// A shard's plan re-evaluation ([`pulse_engine::PlanWork`]).
pub const PLAN_WORK: u8 = b'e';
pub const MAX_TS: u8 = b'w';
/// A shard's changelog position.
pub const CHANGELOG: u8 = b'l';
/// The store's own description: format version and shard count.
pub const FORMAT: u8 = b'f';
pub const MEETING_MINUTES: u8 = b'h';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is {0} bytes, too short for its keyspace")]
    TooShort(usize),
    #[error("key starts with keyspace byte {0:#04x}, expected {1:#04x}")]
    WrongKeyspace(u8, u8),
    #[error("key holds a string that is not UTF-8")]
    NotUtf8,
}

fn flip_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn with_shard(space: u8, shard: ShardId, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + extra);
    k.push(space);
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

/// `[space][shard u16][text]`: users, and org and course totals.
pub fn sharded_text(space: u8, shard: ShardId, text: &str) -> Vec<u8> {
    let mut k = with_shard(space, shard, text.len());
    k.extend_from_slice(text.as_bytes());
    k
}

pub fn decode_sharded_text(space: u8, key: &[u8]) -> Result<(ShardId, &str), KeyError> {
    let rest = check_space(space, key, 3)?;
    let shard = ShardId::from_be_bytes([rest[0], rest[1]]);
    let text = std::str::from_utf8(&rest[2..]).map_err(|_| KeyError::NotUtf8)?;
    Ok((shard, text))
}

/// The length of a [`seen`] key.
pub const SEEN_KEY_LEN: usize = 27;

/// `[SEEN or SEEN_LOG][shard u16][bucket i64][hash u128]`: ordered by bucket
/// within a shard, so forgetting old buckets is one range delete.
pub fn seen(space: u8, shard: ShardId, bucket: i64, hash: u128) -> Vec<u8> {
    seen_array(space, shard, bucket, hash).to_vec()
}

/// A [`seen`] key without an allocation (a commit writes one per new id).
pub fn seen_array(space: u8, shard: ShardId, bucket: i64, hash: u128) -> [u8; SEEN_KEY_LEN] {
    let mut k = [0; SEEN_KEY_LEN];
    k[0] = space;
    k[1..3].copy_from_slice(&shard.to_be_bytes());
    k[3..11].copy_from_slice(&flip_i64(bucket));
    k[11..].copy_from_slice(&hash.to_be_bytes());
    k
}

/// The bucket and hash of a [`seen`] key.
pub fn decode_seen(space: u8, key: &[u8]) -> Result<(i64, u128), KeyError> {
    let rest = check_space(space, key, SEEN_KEY_LEN)?;
    let bucket = unflip_i64(rest[2..10].try_into().map_err(|_| KeyError::TooShort(key.len()))?);
    let hash = u128::from_be_bytes(rest[10..26].try_into().map_err(|_| KeyError::TooShort(key.len()))?);
    Ok((bucket, hash))
}

/// The first [`seen`] key of a bucket (inclusive range bound).
pub fn seen_bucket_start(space: u8, shard: ShardId, bucket: i64) -> Vec<u8> {
    let mut k = with_shard(space, shard, 8);
    k.extend_from_slice(&flip_i64(bucket));
    k
}

/// `[space][text]`: registry and target records.
pub fn text(space: u8, text: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + text.len());
    k.push(space);
    k.extend_from_slice(text.as_bytes());
    k
}

pub fn decode_text(space: u8, key: &[u8]) -> Result<&str, KeyError> {
    std::str::from_utf8(check_space(space, key, 1)?).map_err(|_| KeyError::NotUtf8)
}

/// `[ORG_USER][shard u16][org length u16][org]`: the prefix of an org's
/// index entries, in user order.
pub fn org_users(shard: ShardId, org: &str) -> Vec<u8> {
    let mut k = with_shard(ORG_USER, shard, 2 + org.len());
    k.extend_from_slice(&(org.len() as u16).to_be_bytes());
    k.extend_from_slice(org.as_bytes());
    k
}

/// `[ORG_USER][shard u16][org length u16][org][user]`.
pub fn org_user(shard: ShardId, org: &str, user: &str) -> Vec<u8> {
    let mut k = org_users(shard, org);
    k.extend_from_slice(user.as_bytes());
    k
}

/// The user of an [`org_user`] key, given its org's prefix.
pub fn decode_org_user<'a>(prefix: &[u8], key: &'a [u8]) -> Result<&'a str, KeyError> {
    let user = key.strip_prefix(prefix).ok_or(KeyError::TooShort(key.len()))?;
    std::str::from_utf8(user).map_err(|_| KeyError::NotUtf8)
}

/// `[OFFSET][topic length u16][topic][partition i32]`.
pub fn offset(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(7 + topic.len());
    k.push(OFFSET);
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&(((partition as u32) ^ (1 << 31)).to_be_bytes()));
    k
}

pub fn decode_offset(key: &[u8]) -> Result<(&str, i32), KeyError> {
    let rest = check_space(OFFSET, key, 3)?;
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let rest = &rest[2..];
    if rest.len() != len + 4 {
        return Err(KeyError::TooShort(key.len()));
    }
    let topic = std::str::from_utf8(&rest[..len]).map_err(|_| KeyError::NotUtf8)?;
    let p = u32::from_be_bytes([rest[len], rest[len + 1], rest[len + 2], rest[len + 3]]) ^ (1 << 31);
    Ok((topic, p as i32))
}

/// `[space][shard u16]`: a shard's newest event time, its changelog position.
pub fn shard(space: u8, shard: ShardId) -> Vec<u8> {
    with_shard(space, shard, 0)
}

pub fn decode_shard(space: u8, key: &[u8]) -> Result<ShardId, KeyError> {
    let rest = check_space(space, key, 3)?;
    Ok(ShardId::from_be_bytes([rest[0], rest[1]]))
}

/// The first key of a shard's part of a sharded keyspace, and the first
/// key after it (a range-delete's bounds).
pub fn shard_range(space: u8, shard: ShardId) -> (Vec<u8>, Vec<u8>) {
    let end = match shard.checked_add(1) {
        Some(next) => with_shard(space, next, 0),
        None => vec![space + 1],
    };
    (with_shard(space, shard, 0), end)
}

pub fn decode_i64(value: &[u8]) -> Result<i64, KeyError> {
    let b: [u8; 8] = value.try_into().map_err(|_| KeyError::TooShort(value.len()))?;
    Ok(unflip_i64(b))
}

pub fn encode_i64(v: i64) -> [u8; 8] {
    flip_i64(v)
}

fn check_space(space: u8, key: &[u8], min_len: usize) -> Result<&[u8], KeyError> {
    match key.first() {
        _ if key.len() < min_len => Err(KeyError::TooShort(key.len())),
        Some(&b) if b == space => Ok(&key[1..]),
        Some(&b) => Err(KeyError::WrongKeyspace(b, space)),
        None => Err(KeyError::TooShort(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keys_sort_by_shard_then_bucket_including_negative_buckets() {
        let keys = [
            seen(SEEN, 0, -5, u128::MAX),
            seen(SEEN, 0, -1, 0),
            seen(SEEN, 0, 0, 7),
            seen(SEEN, 0, 9, 1),
            seen(SEEN, 1, -9, 0),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert!(
            seen_bucket_start(SEEN, 0, 0) <= seen(SEEN, 0, 0, 0)
                && seen(SEEN, 0, -1, u128::MAX) < seen_bucket_start(SEEN, 0, 0)
        );
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(decode_sharded_text(USER, &sharded_text(USER, 513, "u-17")).unwrap(), (513, "u-17"));
        assert_eq!(decode_seen(SEEN_LOG, &seen(SEEN_LOG, 2, -3, 7 << 100)).unwrap(), (-3, 7 << 100));
        assert_eq!(decode_text(ORG, &text(ORG, "M_12")).unwrap(), "M_12");
        assert_eq!(decode_offset(&offset("pulse.telemetry", -1)).unwrap(), ("pulse.telemetry", -1));
        assert_eq!(decode_shard(MAX_TS, &shard(MAX_TS, 7)).unwrap(), 7);
        let (start, end) = shard_range(USER, 3);
        assert!(start <= sharded_text(USER, 3, "") && sharded_text(USER, 3, "\u{10ffff}") < end);
        assert!(sharded_text(USER, 2, "\u{10ffff}") < start && end <= sharded_text(USER, 4, ""));
        for v in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert_eq!(decode_i64(&encode_i64(v)).unwrap(), v);
        }
        assert!(offset("t", -1) < offset("t", 0) && offset("t", 0) < offset("t", 1));
        let prefix = org_users(1, "O");
        assert_eq!(decode_org_user(&prefix, &org_user(1, "O", "u-1")).unwrap(), "u-1");
        // An org's entries are not mistaken for those of an org its id starts.
        assert!(!org_user(1, "OX", "u").starts_with(&prefix));
    }

    #[test]
    fn foreign_keys_are_typed_errors() {
        assert_eq!(decode_text(ORG, b"t-x"), Err(KeyError::WrongKeyspace(b't', b'r')));
        assert_eq!(decode_sharded_text(USER, b"u"), Err(KeyError::TooShort(1)));
        assert_eq!(decode_offset(&[OFFSET, 0, 9, b'x']), Err(KeyError::TooShort(4)));
        assert_eq!(decode_text(ORG, &[ORG, 0xff]), Err(KeyError::NotUtf8));
    }
}
