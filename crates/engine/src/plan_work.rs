//! Which users a change of the plans or the registry can affect, and where
//! a shard's re-evaluation of them stands.
//!
//! A user's plan standings depend on the plans, the registry (the ancestry
//! of its org) and its own state. Its own changes re-evaluate it on the
//! event path; a change of the plans or the registry puts the leaf orgs
//! whose users it can affect on the shard's [`PlanWork`], which bounded
//! slices drain between batches (`engine/reevaluate.rs`).

use std::collections::{BTreeMap, BTreeSet};

use pulse_model::PlanRecord;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::codec;
use crate::registry::Registry;

/// A shard's re-evaluation: stored and logged with the shard, so a crash
/// or a take-over resumes it where the last commit left it. Re-evaluating
/// a user is idempotent, so a user done twice counts once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWork {
    /// The [`view`] of the plans and registry that the shard's users hold
    /// their standings against once `orgs` are done (0: none yet).
    pub view: u64,
    /// Leaf orgs whose users are still to re-evaluate.
    pub orgs: BTreeSet<String>,
    /// The org under way (one of `orgs`) and the last user done in it.
    pub under_way: Option<(String, String)>,
}

impl PlanWork {
    pub fn is_done(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Puts leaf orgs (back) on the work: one under way starts over, as
    /// its users done so far were evaluated against what just changed.
    pub(crate) fn add<'a>(&mut self, orgs: impl IntoIterator<Item = &'a str>) {
        for org in orgs {
            if self.under_way.as_ref().is_some_and(|(o, _)| o == org) {
                self.under_way = None;
            }
            self.orgs.insert(org.to_owned());
        }
    }
}

/// A digest of what plan standings depend on besides the user: the plans
/// and every org's parent link. A shard whose work holds another view (one
/// restored from a changelog another instance wrote) re-evaluates all of
/// its users, as what changed since is not known.
pub(crate) fn view(plans: &BTreeMap<String, PlanRecord>, registry: &Registry) -> u64 {
    let parents: Vec<(&str, Option<&str>)> = registry.orgs().map(|o| (o.org.as_str(), o.parent.as_deref())).collect();
    xxh3_64(&codec::encode(&(parents, plans))).max(1)
}

/// The nodes where a change starts: a changed plan's org (before and
/// after), a changed org's (its parent link, or its being registered).
#[derive(Debug, Default)]
pub(crate) struct Changed {
    before: BTreeSet<String>,
    after: BTreeSet<String>,
}

impl Changed {
    pub(crate) fn between(
        (old_plans, old_registry): (&BTreeMap<String, PlanRecord>, &Registry),
        (plans, registry): (&BTreeMap<String, PlanRecord>, &Registry),
    ) -> Changed {
        let mut changed = Changed::default();
        for id in old_plans.keys().chain(plans.keys()) {
            let (old, new) = (old_plans.get(id), plans.get(id));
            if old != new {
                changed.before.extend(old.map(|p| p.org.clone()));
                changed.after.extend(new.map(|p| p.org.clone()));
            }
        }
        let parent = |r: &Registry, org: &str| r.get(org).map(|o| o.parent.clone());
        for org in old_registry.orgs().chain(registry.orgs()).map(|o| &o.org) {
            if parent(old_registry, org) != parent(registry, org) {
                changed.before.insert(org.clone());
                changed.after.insert(org.clone());
            }
        }
        changed
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }

    /// Whether the users of leaf org `leaf` can stand differently: it is
    /// under a node where the change starts, before or after it.
    pub(crate) fn reaches(&self, leaf: &str, old_registry: &Registry, registry: &Registry) -> bool {
        let under = |r: &Registry, roots: &BTreeSet<String>| r.ancestry(r.node_of(leaf)).any(|n| roots.contains(n));
        under(old_registry, &self.before) || under(registry, &self.after)
    }
}

#[cfg(test)]
mod tests {
    use pulse_model::{OrgRecord, PlanRecord};

    use super::*;

    fn registry(links: &[(&str, Option<&str>)]) -> Registry {
        let org = |(id, parent): &(&str, Option<&str>)| OrgRecord {
            org: id.to_string(),
            name: id.to_string(),
            parent: parent.map(str::to_owned),
            kind: "org".into(),
            employees: 0,
        };
        Registry::new(links.iter().map(|l| (l.0.to_string(), org(l))).collect())
    }

    fn plan(org: &str) -> BTreeMap<String, PlanRecord> {
        let line = format!(
            r#"{{"v":1,"id":"p","org":"{org}","courses":["c"],"assign":{{"to":"all"}},"due":"2026-03-31T00:00:00+05:30"}}"#
        );
        match pulse_model::parse_plan(Some(b"p"), Some(line.as_bytes())).unwrap() {
            pulse_model::PlanUpdate::Upsert(p) => BTreeMap::from([("p".to_string(), p)]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_change_reaches_exactly_the_leaves_under_where_it_starts() {
        let r = registry(&[("M", None), ("D", Some("M")), ("O", Some("D")), ("X", None)]);
        let leaves = ["M", "D", "O", "X", "stray"];
        let reached = |c: &Changed, old: &Registry, new: &Registry| -> Vec<&str> {
            leaves.iter().copied().filter(|l| c.reaches(l, old, new)).collect()
        };
        // A plan on D: D and O, before and after.
        let c = Changed::between((&BTreeMap::new(), &r), (&plan("D"), &r));
        assert_eq!(reached(&c, &r, &r), ["D", "O"]);
        // Moved from D to X: both subtrees.
        let c = Changed::between((&plan("D"), &r), (&plan("X"), &r));
        assert_eq!(reached(&c, &r, &r), ["D", "O", "X"]);
        // National: every leaf, unregistered ones too.
        let c = Changed::between((&BTreeMap::new(), &r), (&plan("national"), &r));
        assert_eq!(reached(&c, &r, &r), leaves);
        // O re-parented under X: O only, whatever plans there are.
        let moved = registry(&[("M", None), ("D", Some("M")), ("O", Some("X")), ("X", None)]);
        let c = Changed::between((&plan("M"), &r), (&plan("M"), &moved));
        assert_eq!(reached(&c, &r, &moved), ["O"]);
        // A rename changes nothing.
        let mut renamed = r.clone();
        let mut d = renamed.get("D").unwrap().clone();
        d.name = "Dept".into();
        renamed.upsert(d).unwrap();
        assert!(Changed::between((&plan("M"), &r), (&plan("M"), &renamed)).is_empty());
        assert_eq!(view(&plan("M"), &r), view(&plan("M"), &renamed));
        assert_ne!(view(&plan("M"), &r), view(&plan("M"), &moved));
    }

    #[test]
    fn an_org_under_way_starts_over_when_put_back() {
        let mut work = PlanWork { view: 1, orgs: ["A", "B"].map(String::from).into(), under_way: None };
        work.under_way = Some(("B".into(), "u7".into()));
        work.add(["C"]);
        assert_eq!(work.under_way, Some(("B".into(), "u7".into())));
        work.add(["B"]);
        assert_eq!(work.under_way, None);
        assert_eq!(work.orgs.len(), 3);
    }
}
