//! One instance's share of the group's KPIs, for cluster-wide reads: every
//! instance owns some shards, and its snapshot's totals are sums over their
//! users only. Totals are plain sums, and rollups are linear, so the group's
//! KPIs are the sums of every owner's node and course totals: the instance
//! asked merges the others' [`Partial`]s into its own [`Snapshot`].

use std::collections::BTreeMap;

use pulse_model::Millis;
use serde::{Deserialize, Serialize};

use crate::report::Snapshot;
use crate::state::{CourseTotals, Totals};
use crate::store::ShardId;

/// The additive part of a snapshot, and the shards it covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    pub shards: Vec<ShardId>,
    /// Every node's totals over its subtree (rolled up).
    pub nodes: BTreeMap<String, Totals>,
    pub courses: BTreeMap<String, CourseTotals>,
    pub newest: Option<Millis>,
    pub plans_converging: bool,
    pub plan_users_pending: i64,
}

impl Snapshot {
    /// This snapshot's share, covering `shards`.
    pub fn partial(&self, shards: Vec<ShardId>) -> Partial {
        Partial {
            shards,
            nodes: self.view.nodes().iter().map(|n| (n.id.clone(), n.totals.clone())).collect(),
            courses: self.courses.clone(),
            newest: self.newest,
            plans_converging: self.plans_converging,
            plan_users_pending: self.plan_users_pending,
        }
    }

    /// Adds another instance's share. Nodes this instance's registry does
    /// not have are left out: the registry is read whole by every instance,
    /// so they differ only while a registry change is on its way.
    pub fn merge(&mut self, other: &Partial) {
        self.view.add_totals(other.nodes.iter().map(|(id, t)| (id.as_str(), t)));
        for (course, t) in &other.courses {
            self.courses.entry(course.clone()).or_default().add(t, 1);
        }
        self.newest = self.newest.max(other.newest);
        self.plans_converging |= other.plans_converging;
        self.plan_users_pending += other.plan_users_pending;
    }
}

#[cfg(test)]
mod tests {
    use pulse_model::{Fy, InputFormat};

    use crate::{Engine, EngineConfig, MemStore};

    fn engine_with(users: &[&str]) -> Engine<MemStore> {
        let mut e = Engine::open(MemStore::new(1), EngineConfig::default()).unwrap();
        e.apply_org_message(None, Some(br#"{"v":1,"org":"M","name":"M"}"#));
        e.apply_org_message(None, Some(br#"{"v":1,"org":"O","name":"O","parent":"M"}"#));
        for user in users {
            // Each user's own course and org, so that shares differ.
            let org = if *user == "b" { "M" } else { "O" };
            for (kind, extra) in [("enrolment", ""), ("progress", r#","minutes":30"#), ("rating", r#","stars":4"#)] {
                let line = format!(
                    r#"{{"v":1,"id":"{user}-{kind}","type":"{kind}","ts":1750000000000,"user":"{user}","org":"{org}","course":"c-{user}"{extra}}}"#
                );
                e.ingest(InputFormat::PulseV1, None, line.as_bytes(), 1_750_000_000_000).unwrap();
            }
        }
        e
    }

    #[test]
    fn merged_shares_equal_the_whole() {
        let now = 1_750_100_000_000;
        let whole = engine_with(&["a", "b", "c"]).snapshot();
        let mut mine = engine_with(&["a", "b"]).snapshot();
        let theirs = engine_with(&["c"]).snapshot().partial(vec![1]);
        assert_ne!(mine.report(Fy(2025), now), whole.report(Fy(2025), now));
        mine.merge(&theirs);
        assert_eq!(mine.report(Fy(2025), now), whole.report(Fy(2025), now));
        // A partial survives JSON, as it travels between instances.
        let json = serde_json::to_string(&theirs).unwrap();
        assert_eq!(serde_json::from_str::<super::Partial>(&json).unwrap(), theirs);
    }
}
