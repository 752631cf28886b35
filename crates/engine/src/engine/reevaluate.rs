//! Re-evaluation of the users' plans after a plan or registry change.
//!
//! Work in progress (issue 16): every user of every shard, at once, before
//! the next commit. The design it grows into: a per-shard index from leaf org
//! to users finds only the users a change can affect, and bounded slices
//! between batches drain a stored queue of them.

use std::collections::BTreeSet;

use super::{Engine, EngineError};
use crate::state::Totals;
use crate::store::{ShardId, Store};

impl<S: Store> Engine<S> {
    /// Recomputes every user's plan standings if a plan or the registry
    /// changed, moving each difference into its org's totals.
    pub fn reevaluate_plans(&mut self) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.plans_stale) {
            return Ok(());
        }
        // Org totals sum every user's standings: with no plan and none
        // counted anywhere, no user holds one, and there is nothing to scan
        // (a registry re-read at start, in a deployment without plans).
        if self.plans.is_empty() && self.shards.iter().all(|s| s.orgs.iter().all(|(_, t)| t.plans.is_empty())) {
            return Ok(());
        }
        for i in 0..self.shards.len() {
            let shard_id = i as ShardId;
            let mut ids: BTreeSet<String> = self.store.user_ids(shard_id)?.into_iter().collect();
            ids.extend(self.shards[i].users.keys().cloned());
            ids.extend(self.shards[i].committing.keys().cloned());
            for id in ids {
                let shard = &mut self.shards[i];
                let known = shard.users.get(&id).or_else(|| shard.committing.get(&id)).cloned();
                let Some(mut user) = (match known {
                    Some(u) => Some(u),
                    None => self.store.user(shard_id, &id)?,
                }) else {
                    continue;
                };
                let fresh = crate::plans::standings(&id, &user, &self.plans, &self.registry);
                if fresh == user.plans {
                    continue;
                }
                let moved = Totals { plans: crate::plans::change(&user.plans, &fresh), ..Totals::default() };
                user.plans = fresh;
                let (org, horizon) = (self.org_keys.id(user.org_key()), shard.horizon);
                shard.orgs.update(org, |t| t.add_kept(&moved, 1, horizon));
                shard.users.insert(id, user);
            }
        }
        Ok(())
    }
}
