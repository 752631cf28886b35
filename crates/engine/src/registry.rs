//! The org registry as it is now: a forest under `national`, kept acyclic by
//! refusing any record whose parent link would close a cycle.

use std::collections::BTreeMap;

use pulse_model::{OrgRecord, Reason, Rejection};

use crate::{NATIONAL, UNASSIGNED};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    orgs: BTreeMap<String, OrgRecord>,
}

impl Registry {
    pub fn new(orgs: BTreeMap<String, OrgRecord>) -> Registry {
        Registry { orgs }
    }

    pub fn get(&self, org: &str) -> Option<&OrgRecord> {
        self.orgs.get(org)
    }

    /// Registered orgs, by id.
    pub fn orgs(&self) -> impl Iterator<Item = &OrgRecord> {
        self.orgs.values()
    }

    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Adds or replaces a record, unless its parent link would close a cycle;
    /// then the org keeps its previous record.
    pub fn upsert(&mut self, rec: OrgRecord) -> Result<(), Rejection> {
        let mut at = rec.parent.as_deref();
        while let Some(p) = at {
            if p == rec.org {
                return Err(Rejection::new(
                    Reason::OrgCycle,
                    format!(
                        "parent `{}` of org `{}` is already below it; the org keeps its previous record",
                        rec.parent.as_deref().unwrap_or_default(),
                        rec.org
                    ),
                ));
            }
            at = self.orgs.get(p).and_then(|o| o.parent.as_deref());
        }
        self.orgs.insert(rec.org.clone(), rec);
        Ok(())
    }

    pub fn remove(&mut self, org: &str) -> Option<OrgRecord> {
        self.orgs.remove(org)
    }

    /// The node a leaf key (a user's current org) counts under: the org itself
    /// when registered, else `unassigned`.
    pub fn node_of<'a>(&self, org: &'a str) -> &'a str {
        if self.orgs.contains_key(org) {
            org
        } else {
            UNASSIGNED
        }
    }

    /// The parent node of a node: `None` for `national`.
    pub fn parent_of(&self, node: &str) -> Option<&str> {
        if node == NATIONAL {
            return None;
        }
        let Some(rec) = self.orgs.get(node) else {
            // `unassigned` and anything unregistered hang under `national`.
            return Some(NATIONAL);
        };
        match rec.parent.as_deref() {
            None => Some(NATIONAL),
            Some(p) if self.orgs.contains_key(p) => Some(p),
            Some(_) => Some(UNASSIGNED),
        }
    }

    /// A node and all its ancestors, up to and including `national`.
    pub fn ancestry<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        std::iter::successors(Some(node), move |n| self.parent_of(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(id: &str, parent: Option<&str>) -> OrgRecord {
        OrgRecord { org: id.into(), name: id.into(), parent: parent.map(Into::into), kind: String::new(), employees: 0 }
    }

    #[test]
    fn refuses_cycles_and_keeps_the_previous_record() {
        let mut r = Registry::default();
        r.upsert(org("M", None)).unwrap();
        r.upsert(org("D", Some("M"))).unwrap();
        r.upsert(org("O", Some("D"))).unwrap();
        let err = r.upsert(org("M", Some("O"))).unwrap_err();
        assert_eq!(err.reason, Reason::OrgCycle);
        assert_eq!(r.get("M").unwrap().parent, None);
        assert_eq!(r.upsert(org("X", Some("X"))).unwrap_err().reason, Reason::OrgCycle);
        assert!(r.get("X").is_none());
    }

    #[test]
    fn unknown_orgs_and_parents_hang_under_unassigned() {
        let mut r = Registry::default();
        r.upsert(org("D", Some("M"))).unwrap();
        assert_eq!(r.ancestry("D").collect::<Vec<_>>(), ["D", UNASSIGNED, NATIONAL]);
        assert_eq!(r.node_of("nobody"), UNASSIGNED);
        r.upsert(org("M", None)).unwrap();
        assert_eq!(r.ancestry("D").collect::<Vec<_>>(), ["D", "M", NATIONAL]);
    }
}
