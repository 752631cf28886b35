//! Capacity-building plans (contract section 14): who is assigned a plan,
//! and a user's standing in it. A user's standings are part of its share of
//! its org's totals, added and removed like the rest of it; they depend on
//! the plans, the registry and the profile as they are now, so a change to
//! any of these re-evaluates the users it can affect.

use std::collections::BTreeMap;

use pulse_model::time::format_ist;
use pulse_model::{Millis, PlanRecord};
use serde::Serialize;

use crate::registry::Registry;
use crate::rollup::OrgView;
use crate::state::{PlanCounts, Summable, UserState};
use crate::vecmap::VecMap;
use crate::NATIONAL;

/// Whether a plan's org is a node a plan may cover: a registered org or `national`.
fn covers(plan: &PlanRecord, registry: &Registry) -> bool {
    plan.org == NATIONAL || registry.get(&plan.org).is_some()
}

/// The standing of user `id` in every plan assigned to it: its current org
/// is the plan's org or under it (the registry as it is now), and the plan
/// assigns it (everyone, its designation, or its id).
pub(crate) fn standings(
    id: &str,
    user: &UserState,
    plans: &BTreeMap<String, PlanRecord>,
    registry: &Registry,
) -> VecMap<String, PlanCounts> {
    if !user.is_registered() || plans.is_empty() {
        return VecMap::default();
    }
    let node = registry.node_of(user.org_key());
    let designation = user.profile.as_ref().and_then(|p| p.designation.as_deref());
    plans
        .values()
        .filter(|p| covers(p, registry) && registry.ancestry(node).any(|n| n == p.org) && p.assigns(id, designation))
        .map(|p| {
            let completions =
                p.courses.iter().filter_map(|c| user.courses.get(c.as_str()).and_then(|c| c.completed_at));
            let (mut completed, mut on_time) = (0, 0);
            for at in completions {
                completed += 1;
                on_time += i64::from(at <= p.due);
            }
            let compliant = on_time >= i64::from(p.courses_to_comply());
            let counts = PlanCounts {
                users: 1,
                courses: p.courses.len() as i64,
                completed,
                on_time,
                compliant: i64::from(compliant),
            };
            (p.id.clone(), counts)
        })
        .collect()
}

/// `new - old`, entry by entry (what moves a total from one to the other).
pub(crate) fn change(old: &VecMap<String, PlanCounts>, new: &VecMap<String, PlanCounts>) -> Vec<(String, PlanCounts)> {
    let mut out: BTreeMap<&String, PlanCounts> = BTreeMap::new();
    for (sign, side) in [(-1, old), (1, new)] {
        for (id, c) in side.iter() {
            out.entry(id).or_default().add(c, sign);
        }
    }
    out.into_iter().filter(|(_, c)| *c != PlanCounts::default()).map(|(id, c)| (id.clone(), c)).collect()
}

/// One plan in `pulse report --all` (contract section 14).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    pub org: String,
    pub start: String,
    pub due: String,
    pub min_share: f64,
    pub courses: usize,
    pub nodes: BTreeMap<String, PlanKpis>,
}

/// A plan's KPIs at one node, over the assigned users of its subtree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanKpis {
    pub users: i64,
    pub courses_assigned: i64,
    pub courses_completed: i64,
    pub courses_completed_on_time: i64,
    pub courses_overdue: i64,
    pub users_compliant: i64,
    pub compliance_ratio: Option<f64>,
    pub completion_ratio: Option<f64>,
    pub expected_ratio: f64,
    pub progress: Option<f64>,
}

fn ratio(a: i64, b: i64) -> Option<f64> {
    (b != 0).then(|| a as f64 / b as f64)
}

impl PlanKpis {
    /// Behind its plan: completion below the pace, or courses overdue.
    pub fn is_behind(&self) -> bool {
        self.courses_overdue > 0 || self.progress.is_some_and(|p| p < 1.0)
    }

    /// From the rolled-up counts of a node; overdue, expected and progress at `now`.
    pub fn of(plan: &PlanRecord, c: &PlanCounts, now: Millis) -> PlanKpis {
        let completion_ratio = ratio(c.completed, c.courses);
        let expected_ratio = plan.expected_ratio(now);
        PlanKpis {
            users: c.users,
            courses_assigned: c.courses,
            courses_completed: c.completed,
            courses_completed_on_time: c.on_time,
            courses_overdue: if now > plan.due { c.courses - c.completed } else { 0 },
            users_compliant: c.compliant,
            compliance_ratio: ratio(c.compliant, c.users),
            completion_ratio,
            expected_ratio,
            progress: completion_ratio.filter(|_| expected_ratio > 0.0).map(|r| r / expected_ratio),
        }
    }
}

/// Every plan with its nodes: the plan's org and every node under it.
pub(crate) fn plans_report(
    plans: &BTreeMap<String, PlanRecord>,
    view: &OrgView,
    now: Millis,
) -> BTreeMap<String, PlanReport> {
    plans
        .iter()
        .map(|(id, p)| {
            let nodes = view
                .nodes()
                .iter()
                .filter(|n| view.node(&p.org).is_some() && view.is_under(&n.id, &p.org))
                .map(|n| {
                    let counts = n.totals.plans.iter().find(|(pid, _)| pid == id).map(|(_, c)| *c).unwrap_or_default();
                    (n.id.clone(), PlanKpis::of(p, &counts, now))
                })
                .collect();
            let report = PlanReport {
                org: p.org.clone(),
                start: format_ist(p.start),
                due: format_ist(p.due),
                min_share: p.min_share,
                courses: p.courses.len(),
                nodes,
            };
            (id.clone(), report)
        })
        .collect()
}
