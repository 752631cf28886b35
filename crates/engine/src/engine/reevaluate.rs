//! Re-evaluation of the users' plans after a plan or registry change, in
//! bounded slices that commit with everything else (`plan_work.rs` says
//! which users, and why a crash or a take-over neither loses nor doubles one).

use std::collections::BTreeSet;

use super::{Engine, EngineError};
use crate::plan_work::{view, Changed};
use crate::state::Totals;
use crate::store::{ShardId, Store};

impl<S: Store> Engine<S> {
    /// After a change of the plans or the registry: puts the leaf orgs
    /// whose users it can affect on each shard's work (every leaf org of a
    /// shard whose users were evaluated against a view this instance did
    /// not see), and makes the current records the evaluated ones.
    pub(super) fn note_plan_changes(&mut self) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.plans_stale) {
            return Ok(());
        }
        let now = view(&self.plans, &self.registry);
        let changed =
            Changed::between((&self.evaluated.plans, &self.evaluated.registry), (&self.plans, &self.registry));
        for shard in &mut self.shards {
            let known = shard.plan_work.view == self.evaluated.view;
            if known && changed.is_empty() {
                continue;
            }
            let names = shard.orgs.iter().map(|(k, _)| self.org_keys.name(k));
            let reached: Vec<&str> = names
                .filter(|leaf| !known || changed.reaches(leaf, &self.evaluated.registry, &self.registry))
                .collect();
            shard.plan_work.add(reached);
            shard.plan_work.view = now;
            shard.plan_work_dirty = true;
        }
        self.evaluated.plans = self.plans.clone();
        self.evaluated.registry = self.registry.clone();
        self.evaluated.view = now;
        // The users changed since the last commit are done now, from
        // memory: a new user's index entry is in this very commit, not in
        // the store; and one evaluated on the event path may hold a
        // standing against records that came and went since the last
        // commit, which the difference above does not show.
        for i in 0..self.shards.len() {
            let cached: Vec<String> = self.shards[i].users.keys().cloned().collect();
            for id in cached {
                self.reevaluate_user(i, &id)?;
            }
        }
        Ok(())
    }

    /// Re-evaluates up to `plan_slice_users` users of the shards' work,
    /// moving each difference into its org's totals. Users changed or met
    /// since the last commit were evaluated on the event path; doing them
    /// again changes nothing.
    pub(super) fn reevaluate_slice(&mut self) -> Result<(), EngineError> {
        let mut budget = self.config.plan_slice_users;
        for i in 0..self.shards.len() {
            let shard_id = i as ShardId;
            while budget > 0 {
                let work = &self.shards[i].plan_work;
                let (org, after) = match (&work.under_way, work.orgs.first()) {
                    (Some((org, after)), _) => (org.clone(), Some(after.clone())),
                    (None, Some(org)) => (org.clone(), None),
                    (None, None) => break,
                };
                let ids = self.store.users_of(shard_id, &org, after.as_deref(), budget)?;
                budget -= ids.len();
                let key = self.org_keys.id(&org);
                for id in &ids {
                    if self.reevaluate_user(i, id)?.is_some_and(|now_in| now_in != key) {
                        // An entry a restore could not remove: the user moved.
                        self.shards[i].org_users.push((key, id.clone(), false));
                    }
                }
                let shard = &mut self.shards[i];
                shard.plan_work_dirty = true;
                match ids.last() {
                    Some(last) if budget == 0 => shard.plan_work.under_way = Some((org, last.clone())),
                    _ => {
                        shard.plan_work.orgs.remove(&org);
                        shard.plan_work.under_way = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Re-evaluates one user; the (interned) leaf org it is in (`None`: no such user).
    fn reevaluate_user(&mut self, shard: usize, id: &str) -> Result<Option<u32>, EngineError> {
        let s = &mut self.shards[shard];
        let known = s.users.get(id).or_else(|| s.committing.get(id)).cloned();
        let Some(mut user) = (match known {
            Some(u) => Some(u),
            None => self.store.user(shard as ShardId, id)?,
        }) else {
            return Ok(None);
        };
        let org = self.org_keys.id(user.org_key());
        let fresh = crate::plans::standings(id, &user, &self.plans, &self.registry);
        if fresh == user.plans {
            return Ok(Some(org));
        }
        let moved = Totals { plans: crate::plans::change(&user.plans, &fresh), ..Totals::default() };
        user.plans = fresh;
        let horizon = s.horizon;
        s.orgs.update(org, |t| t.add_kept(&moved, 1, horizon));
        s.users.insert(id.to_owned(), user);
        Ok(Some(org))
    }

    /// Whether a plan or registry change is still being applied to the
    /// users it affects (the plan KPIs are converging).
    pub fn plans_converging(&self) -> bool {
        self.plans_stale || self.shards.iter().any(|s| !s.plan_work.is_done())
    }

    /// The users the re-evaluation still has to visit, at most: those of
    /// the leaf orgs on the shards' work.
    pub fn plan_users_pending(&self) -> i64 {
        let mut pending = 0;
        for s in self.shards.iter().filter(|s| !s.plan_work.is_done()) {
            let orgs: BTreeSet<&str> = s.plan_work.orgs.iter().map(String::as_str).collect();
            for (k, t) in s.orgs.iter() {
                if orgs.contains(self.org_keys.name(k)) {
                    pending += t.registered_users;
                }
            }
        }
        pending
    }

    /// Commits until every plan and registry change is applied to the users
    /// it affects (`pulse replay`, and tests, before they read the plans).
    pub fn converge_plans(&mut self) -> Result<(), EngineError> {
        self.commit()?;
        while self.plans_converging() {
            self.commit()?;
        }
        Ok(())
    }
}
