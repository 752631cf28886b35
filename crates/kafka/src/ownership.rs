//! Which instance owns which partition, for user lookups across instances.
//!
//! Learned from the consumer group itself, so it needs no extra topic or
//! service: every Pulse member's `client.id` carries its HTTP address
//! (`pulse@host:port`), and the group coordinator describes each member's
//! assignment. The loop refreshes the view after every assignment and
//! every [`crate::group`] topic check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use pulse_engine::ShardId;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Where a shard's state is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Here,
    /// Another instance, at this HTTP address.
    At(String),
    /// No instance owns it right now (a rebalance is under way).
    Unknown,
}

#[derive(Debug, Default)]
struct View {
    mine: BTreeSet<ShardId>,
    others: BTreeMap<ShardId, String>,
}

/// The shared, refreshed view of the group's ownership.
#[derive(Debug, Default)]
pub struct Ownership(RwLock<View>);

const PREFIX: &str = "pulse@";

/// The `client.id` that tells other instances where this one serves HTTP.
pub(crate) fn client_id(advertise: &str) -> String {
    format!("{PREFIX}{advertise}")
}

impl Ownership {
    pub fn owner(&self, shard: ShardId) -> Owner {
        let view = self.0.read().unwrap_or_else(|p| p.into_inner());
        if view.mine.contains(&shard) {
            return Owner::Here;
        }
        view.others.get(&shard).map_or(Owner::Unknown, |a| Owner::At(a.clone()))
    }

    pub(crate) fn set_mine(&self, mine: BTreeSet<ShardId>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).mine = mine;
    }

    /// Re-reads every member's assignment of `topic` (any input topic: they
    /// are co-partitioned) from the group coordinator; keeps the last view
    /// when the broker cannot answer.
    pub(crate) fn refresh(&self, consumer: &BaseConsumer<impl ConsumerContext>, group: &str, topic: &str) {
        let Ok(groups) = consumer.fetch_group_list(Some(group), Duration::from_secs(2)) else { return };
        let mut others = BTreeMap::new();
        for member in groups.groups().iter().flat_map(|g| g.members()) {
            let Some(address) = member.client_id().strip_prefix(PREFIX) else { continue };
            for p in member.assignment().map(|a| assigned(a, topic)).unwrap_or_default() {
                others.insert(p, address.to_owned());
            }
        }
        self.0.write().unwrap_or_else(|p| p.into_inner()).others = others;
    }
}

/// The partitions of `topic` in a consumer-protocol assignment: version
/// (i16), then topics (i32 count; each a string with an i16 length and
/// partitions as an i32 count of i32), then user data. Malformed bytes give
/// what was read so far.
fn assigned(bytes: &[u8], topic: &str) -> Vec<ShardId> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    let _version = r.take::<2>();
    for _ in 0..r.i32().unwrap_or(0) {
        let Some(len) = r.take::<2>().map(i16::from_be_bytes) else { break };
        let Some(name) = r.bytes(len.max(0) as usize) else { break };
        for _ in 0..r.i32().unwrap_or(0) {
            let Some(p) = r.i32() else { break };
            if name == topic.as_bytes() {
                out.push(p as ShardId);
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn i32(&mut self) -> Option<i32> {
        self.take::<4>().map(i32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_is_read_for_one_topic() {
        let mut b = vec![0, 1];
        b.extend_from_slice(&2i32.to_be_bytes());
        for (topic, parts) in [("a", vec![0i32, 3]), ("bb", vec![1])] {
            b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(assigned(&b, "a"), [0, 3]);
        assert_eq!(assigned(&b, "bb"), [1]);
        assert_eq!(assigned(&b[..9], "a"), Vec::<ShardId>::new());
    }
}
