//! The records of the topics every instance reads whole: the org registry,
//! the targets and the course catalogue.

use std::collections::BTreeMap;

use pulse_model::{
    parse_course, parse_org, parse_plan, parse_target, CourseUpdate, OrgUpdate, PlanUpdate, Rejection, TargetUpdate,
};

use super::{Disposition, Engine};
use crate::store::Store;

impl<S: Store> Engine<S> {
    /// Applies one message of the org registry topic (`None` value: tombstone).
    pub fn apply_org_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_org(key, value).and_then(|update| match update {
            OrgUpdate::Upsert(rec) => {
                self.registry.upsert(rec.clone())?;
                self.pending_orgs.insert(rec.org.clone(), Some(rec));
                Ok(())
            }
            OrgUpdate::Remove(org) => {
                self.registry.remove(&org);
                self.pending_orgs.insert(org, None);
                Ok(())
            }
        });
        // The registry decides which users a plan covers.
        self.plans_stale |= outcome.is_ok();
        self.registry_outcome(outcome)
    }

    /// Applies one message of the targets topic (`None` value: tombstone).
    pub fn apply_target_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_target(key, value).map(|update| match update {
            TargetUpdate::Upsert(rec) => keep(&mut self.targets, &mut self.pending_targets, rec.id.clone(), Some(rec)),
            TargetUpdate::Remove(id) => keep(&mut self.targets, &mut self.pending_targets, id, None),
        });
        self.registry_outcome(outcome)
    }

    /// Applies one message of the course catalogue topic (`None` value: tombstone).
    pub fn apply_course_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_course(key, value).map(|update| match update {
            CourseUpdate::Upsert(rec) => {
                keep(&mut self.catalogue, &mut self.pending_catalogue, rec.course.clone(), Some(rec))
            }
            CourseUpdate::Remove(id) => keep(&mut self.catalogue, &mut self.pending_catalogue, id, None),
        });
        self.registry_outcome(outcome)
    }

    /// Applies one message of the plans topic (`None` value: tombstone).
    pub fn apply_plan_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Disposition {
        let outcome = parse_plan(key, value).map(|update| match update {
            PlanUpdate::Upsert(rec) => keep(&mut self.plans, &mut self.pending_plans, rec.id.clone(), Some(rec)),
            PlanUpdate::Remove(id) => keep(&mut self.plans, &mut self.pending_plans, id, None),
        });
        self.plans_stale |= outcome.is_ok();
        self.registry_outcome(outcome)
    }

    fn registry_outcome(&mut self, outcome: Result<(), Rejection>) -> Disposition {
        match outcome {
            Ok(()) => {
                self.uncommitted += 1;
                Disposition::Applied
            }
            Err(rejection) => Disposition::Dead(rejection),
        }
    }

    /// Forgets the registry, the targets and the catalogue (in memory and, at the next
    /// commit, in the store), before they are read again from the start of
    /// their compacted topics: replaying the topic onto an empty registry
    /// gives exactly the registry the topic describes.
    pub fn clear_registry(&mut self) {
        let orgs: Vec<String> = self.registry.orgs().map(|o| o.org.clone()).collect();
        for org in orgs {
            self.registry.remove(&org);
            self.pending_orgs.insert(org, None);
        }
        for id in std::mem::take(&mut self.targets).into_keys() {
            self.pending_targets.insert(id, None);
        }
        for id in std::mem::take(&mut self.catalogue).into_keys() {
            self.pending_catalogue.insert(id, None);
        }
        for id in std::mem::take(&mut self.plans).into_keys() {
            self.pending_plans.insert(id, None);
        }
    }
}

/// Sets (`Some`) or removes (`None`) a record read whole by every instance,
/// and notes it for the next commit.
fn keep<T: Clone>(
    live: &mut BTreeMap<String, T>,
    pending: &mut BTreeMap<String, Option<T>>,
    id: String,
    record: Option<T>,
) {
    match &record {
        Some(r) => live.insert(id.clone(), r.clone()),
        None => live.remove(&id),
    };
    pending.insert(id, record);
}
