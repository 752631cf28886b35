//! Where each input partition stands: the next offset and the newest event
//! time, pending, in flight and committed, and the event-time watermark the
//! dedup ids are kept against.

use std::collections::BTreeSet;

use pulse_model::Millis;

use super::Engine;
use crate::store::{Store, StreamPosition};

impl<S: Store> Engine<S> {
    /// The next offset to consume from a partition, including messages
    /// applied but not yet committed; `None` if nothing was ever consumed.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.position(&(topic.to_owned(), partition)).map(|p| p.next)
    }

    pub(super) fn position(&self, key: &(String, i32)) -> Option<StreamPosition> {
        let pending = self.pending_offsets.get(key).or_else(|| self.committing_offsets.get(key));
        pending.or_else(|| self.offsets.get(key)).copied()
    }

    /// The next offset of a partition as stored (a commit in flight not included).
    pub fn stored_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(&(topic.to_owned(), partition)).map(|p| p.next)
    }

    /// Records that every message of a partition before `next` has been
    /// applied (the event times since the last call included); the next
    /// commit writes it together with their effect.
    pub fn set_next_offset(&mut self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        let newest = self.position(&key).and_then(|p| p.newest_event).max(self.last_event.take());
        self.pending_offsets.insert(key, StreamPosition { next, newest_event: newest });
    }

    /// Records that the dead letters of a registry partition (read whole
    /// by every instance) are written up to `next`, by this shard's owner;
    /// stored like an input partition's position, without event time.
    pub fn set_letters_written(&mut self, topic: &str, partition: i32, next: i64) {
        self.pending_offsets.insert((topic.to_owned(), partition), StreamPosition { next, newest_event: None });
    }

    /// The event-time watermark of consumed partitions: the oldest of their
    /// newest event times. Partitions are consumed at different speeds (a
    /// backlog, a rebalance), so an id is forgotten only once every partition
    /// is past its horizon: a duplicate arrives in its original's partition,
    /// which may lag far behind the others. `None` outside Kafka (replay).
    pub(super) fn watermark(&self) -> Option<Millis> {
        let keys: BTreeSet<&(String, i32)> =
            self.offsets.keys().chain(self.committing_offsets.keys()).chain(self.pending_offsets.keys()).collect();
        keys.into_iter().filter(|k| !self.at_end.contains(*k)).filter_map(|k| self.position(k)?.newest_event).min()
    }

    /// The partitions now read to their end (the caller knows their ends):
    /// a partition that receives nothing more must not keep every shard's
    /// ids remembered forever.
    pub fn set_at_end(&mut self, partitions: BTreeSet<(String, i32)>) {
        self.at_end = partitions;
    }
}
