//! The org-level view: every node's totals over its subtree, rolled up over
//! the registry as it is now. Built from the per-shard leaf totals, so its cost
//! grows with the number of orgs and shards, never with the number of users.

use std::collections::HashMap;

use crate::registry::Registry;
use crate::state::Totals;
use crate::{NATIONAL, UNASSIGNED};

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    /// The parent node (`None` for `national`).
    pub parent: Option<String>,
    pub kind: String,
    /// `national` is 0, top-level nodes and `unassigned` are 1.
    pub depth: u32,
    /// Sanctioned strength over the subtree.
    pub employees: u64,
    pub totals: Totals,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrgView {
    /// `national`, `unassigned`, then registered orgs by id.
    nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
}

impl OrgView {
    /// Builds the view from leaf totals: (a user's current org key, the sum
    /// over those users), possibly several per key (one per shard).
    pub fn build<'a>(registry: &Registry, leaves: impl IntoIterator<Item = (&'a str, &'a Totals)>) -> OrgView {
        let synthetic = [(NATIONAL, "National", None, 0), (UNASSIGNED, "Unassigned", Some(NATIONAL), 1)];
        let mut nodes: Vec<NodeView> = synthetic
            .into_iter()
            .map(|(id, name, parent, depth)| NodeView {
                id: id.to_owned(),
                name: name.to_owned(),
                parent: parent.map(str::to_owned),
                kind: id.to_owned(),
                depth,
                employees: 0,
                totals: Totals::default(),
            })
            .collect();
        nodes.extend(registry.orgs().map(|rec| NodeView {
            id: rec.org.clone(),
            name: rec.name.clone(),
            parent: registry.parent_of(&rec.org).map(str::to_owned),
            kind: rec.kind.clone(),
            depth: registry.ancestry(&rec.org).count() as u32 - 1,
            employees: 0,
            totals: Totals::default(),
        }));
        let index: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();

        for rec in registry.orgs() {
            for node in registry.ancestry(&rec.org) {
                nodes[index[node]].employees += rec.employees;
            }
        }
        // Each leaf into its node, then every node into its parent, deepest
        // first: one addition per node, whatever the depth of the tree.
        for (leaf, totals) in leaves {
            nodes[index[registry.node_of(leaf)]].totals.add(totals, 1);
        }
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(nodes[i].depth));
        for i in order {
            let Some(parent) = nodes[i].parent.as_deref().map(|p| index[p]) else { continue };
            let totals = std::mem::take(&mut nodes[i].totals);
            nodes[parent].totals.add(&totals, 1);
            nodes[i].totals = totals;
        }
        OrgView { nodes, index }
    }

    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Whether `node` is `ancestor` or under it.
    pub fn is_under(&self, node: &str, ancestor: &str) -> bool {
        std::iter::successors(self.node(node), |n| n.parent.as_deref().and_then(|p| self.node(p)))
            .any(|n| n.id == ancestor)
    }

    /// Adds totals to the nodes they name (already rolled up); unknown
    /// nodes are skipped.
    pub(crate) fn add_totals<'a>(&mut self, totals: impl IntoIterator<Item = (&'a str, &'a Totals)>) {
        for (id, t) in totals {
            if let Some(&i) = self.index.get(id) {
                self.nodes[i].totals.add(t, 1);
            }
        }
    }
}
