//! KPIs as the contract's report shapes (section 9), derived from the view.
//! `pulse report`, the HTTP API and the metrics all read these.

use std::collections::BTreeMap;

use pulse_model::time::format_ist;
use pulse_model::{Fy, Millis, Minutes, Stars, TargetKpi, TargetRecord};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::rollup::{NodeView, OrgView};
use crate::state::{CourseTotals, UserState};

/// A ratio, `None` (JSON null) when the denominator is 0.
fn ratio(num: f64, den: f64) -> Option<f64> {
    (den != 0.0).then(|| num / den)
}

fn minutes(ms: i64) -> f64 {
    Minutes(ms).as_minutes()
}

fn average_stars(sum_milli: i64, count: i64) -> Option<f64> {
    ratio(Stars(sum_milli).as_f64(), count as f64)
}

/// Every KPI of contract section 7 for one node, in the contract's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeKpis {
    pub registered_users: i64,
    pub employees: u64,
    pub onboarding_ratio: Option<f64>,
    pub learners: i64,
    /// enrolments .. average_rating: the KPIs that courses have too.
    #[serde(flatten)]
    pub course_kpis: CourseKpis,
    pub enrolments_fy: i64,
    pub completions_fy: i64,
    pub learning_minutes_fy: f64,
    pub learning_minutes_per_user_fy: Option<f64>,
    pub active_users_fy: i64,
    pub users_meeting_hours_fy: i64,
    pub users_meeting_hours_ratio: Option<f64>,
}

impl NodeKpis {
    pub fn of(node: &NodeView, fy: Fy) -> NodeKpis {
        let t = &node.totals;
        let f = t.for_fy(fy);
        let users = t.registered_users as f64;
        NodeKpis {
            registered_users: t.registered_users,
            employees: node.employees,
            onboarding_ratio: ratio(users, node.employees as f64),
            learners: t.learners,
            course_kpis: CourseKpis::of(&CourseTotals {
                enrolments: t.enrolments,
                completions: t.completions,
                minutes_ms: t.minutes_ms,
                ratings: t.ratings,
                rating_milli_sum: t.rating_milli_sum,
            }),
            enrolments_fy: f.enrolments,
            completions_fy: f.completions,
            learning_minutes_fy: minutes(f.minutes_ms),
            learning_minutes_per_user_fy: ratio(minutes(f.minutes_ms), users),
            active_users_fy: f.active_users,
            users_meeting_hours_fy: f.users_meeting_hours,
            users_meeting_hours_ratio: ratio(f.users_meeting_hours as f64, users),
        }
    }

    /// The value a target on `kpi` is measured against.
    pub fn target_actual(&self, kpi: TargetKpi) -> Option<f64> {
        match kpi {
            TargetKpi::EnrolmentsFy => Some(self.enrolments_fy as f64),
            TargetKpi::CompletionsFy => Some(self.completions_fy as f64),
            TargetKpi::LearningMinutesFy => Some(self.learning_minutes_fy),
            TargetKpi::LearningMinutesPerUserFy => self.learning_minutes_per_user_fy,
            TargetKpi::UsersMeetingHoursRatio => self.users_meeting_hours_ratio,
            TargetKpi::OnboardingRatio => self.onboarding_ratio,
            TargetKpi::CompletionRatio => self.course_kpis.completion_ratio,
            TargetKpi::AverageRating => self.course_kpis.average_rating,
        }
    }
}

/// The course-level KPIs ("course too" in contract section 7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CourseKpis {
    pub enrolments: i64,
    pub completions: i64,
    pub in_progress: i64,
    pub completion_ratio: Option<f64>,
    pub learning_minutes: f64,
    pub ratings: i64,
    pub average_rating: Option<f64>,
}

impl CourseKpis {
    pub fn of(t: &CourseTotals) -> CourseKpis {
        CourseKpis {
            enrolments: t.enrolments,
            completions: t.completions,
            in_progress: t.enrolments - t.completions,
            completion_ratio: ratio(t.completions as f64, t.enrolments as f64),
            learning_minutes: minutes(t.minutes_ms),
            ratings: t.ratings,
            average_rating: average_stars(t.rating_milli_sum, t.ratings),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetStatus {
    pub org: String,
    pub kpi: TargetKpi,
    pub fy: String,
    pub value: f64,
    /// The KPI of the org's subtree in the target's year; null when undefined
    /// or when the registry does not know the org.
    pub actual: Option<f64>,
    pub expected: f64,
    /// actual / expected; null while expected is 0.
    pub progress: Option<f64>,
}

impl TargetStatus {
    pub fn of(target: &TargetRecord, view: &OrgView, now: Millis) -> TargetStatus {
        let actual = view.node(&target.org).and_then(|n| NodeKpis::of(n, target.fy).target_actual(target.kpi));
        let expected =
            if target.kpi.is_paced() { target.value * target.fy.elapsed_fraction(now) } else { target.value };
        TargetStatus {
            org: target.org.clone(),
            kpi: target.kpi,
            fy: target.fy.to_string(),
            value: target.value,
            actual,
            expected,
            progress: actual.and_then(|a| ratio(a, expected)),
        }
    }

    /// Behind its pace: progress below 1, or no actual value at all while
    /// some progress is already expected.
    pub fn is_behind(&self) -> bool {
        match self.progress {
            Some(p) => p < 1.0,
            None => self.expected > 0.0,
        }
    }
}

/// The `pulse report` document. Sections left `None` are omitted, so one
/// shape serves `--all`, `--org` and `--course`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub fy: String,
    pub now: String,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ordered_map")]
    pub nodes: Option<Vec<(String, NodeKpis)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub courses: Option<BTreeMap<String, CourseKpis>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<BTreeMap<String, TargetStatus>>,
}

impl Report {
    pub fn header(fy: Fy, now: Millis) -> Report {
        Report { fy: fy.to_string(), now: format_ist(now), nodes: None, courses: None, targets: None }
    }
}

/// Serializes pairs as a JSON object in their order (`national` first).
fn ordered_map<S: Serializer, T: Serialize>(pairs: &Option<Vec<(String, T)>>, s: S) -> Result<S::Ok, S::Error> {
    let pairs = pairs.as_deref().unwrap_or_default();
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserCourse {
    pub enrolled: bool,
    pub completed: bool,
    pub percent: Option<f64>,
    pub minutes: f64,
    pub rating: Option<f64>,
}

/// The individual level: `pulse report --user ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserReport {
    pub user: String,
    /// The current org as the events name it (registered or not).
    pub org: Option<String>,
    pub fy: String,
    pub enrolments: i64,
    pub completions: i64,
    pub in_progress: i64,
    pub learning_minutes: f64,
    pub learning_minutes_fy: f64,
    pub ratings: i64,
    pub courses: BTreeMap<String, UserCourse>,
}

impl UserReport {
    pub fn of(user: &str, state: &UserState, fy: Fy) -> UserReport {
        let mut t = CourseTotals::default();
        for c in state.courses.values() {
            t.add(&c.totals(), 1);
        }
        UserReport {
            user: user.to_owned(),
            org: state.org.as_ref().map(|o| o.org.clone()),
            fy: fy.to_string(),
            enrolments: t.enrolments,
            completions: t.completions,
            in_progress: t.enrolments - t.completions,
            learning_minutes: minutes(t.minutes_ms),
            learning_minutes_fy: minutes(state.fy_minutes_ms.get(&fy).copied().unwrap_or(0)),
            ratings: t.ratings,
            courses: state
                .courses
                .iter()
                .map(|(id, c)| {
                    let course = UserCourse {
                        enrolled: c.enrolled_at.is_some(),
                        completed: c.completed_at.is_some(),
                        percent: c.percent,
                        minutes: minutes(c.minutes_ms),
                        rating: c.rating.as_ref().map(|r| Stars(r.stars).as_f64()),
                    };
                    (id.clone(), course)
                })
                .collect(),
        }
    }
}

/// The org-level state as of one commit: everything `/metrics`, the node,
/// course and target queries and `pulse report --all` read. Building one costs
/// O(orgs + courses + targets); it never touches user state, so readers on
/// other threads can share it while the engine goes on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub view: OrgView,
    pub courses: BTreeMap<String, CourseTotals>,
    pub targets: BTreeMap<String, TargetRecord>,
    /// Org ids that events name but the registry does not know (their users
    /// count under `unassigned`).
    pub unknown_orgs: usize,
}

impl Snapshot {
    /// Every financial year with a non-zero total, oldest first.
    pub fn fys(&self) -> impl Iterator<Item = Fy> + '_ {
        self.view.node(crate::NATIONAL).into_iter().flat_map(|n| n.totals.fys.iter().map(|(fy, _)| *fy))
    }

    pub fn target_status(&self, target: &TargetRecord, now: Millis) -> TargetStatus {
        TargetStatus::of(target, &self.view, now)
    }

    /// `pulse report --all`: every node, course and target.
    pub fn report(&self, fy: Fy, now: Millis) -> Report {
        Report {
            nodes: Some(self.view.nodes().iter().map(|n| (n.id.clone(), NodeKpis::of(n, fy))).collect()),
            courses: Some(self.courses.iter().map(|(c, t)| (c.clone(), CourseKpis::of(t))).collect()),
            targets: Some(self.targets.iter().map(|(id, t)| (id.clone(), self.target_status(t, now))).collect()),
            ..Report::header(fy, now)
        }
    }

    /// One node; `None` when it is not `national`, `unassigned` or registered.
    pub fn node_report(&self, org: &str, fy: Fy, now: Millis) -> Option<Report> {
        let node = self.view.node(org)?;
        Some(Report { nodes: Some(vec![(node.id.clone(), NodeKpis::of(node, fy))]), ..Report::header(fy, now) })
    }

    /// The direct children of a node, by id; `None` when the node is unknown.
    pub fn children_report(&self, org: &str, fy: Fy, now: Millis) -> Option<Report> {
        self.view.node(org)?;
        let children = self.view.nodes().iter().filter(|n| n.parent.as_deref() == Some(org));
        Some(Report {
            nodes: Some(children.map(|n| (n.id.clone(), NodeKpis::of(n, fy))).collect()),
            ..Report::header(fy, now)
        })
    }

    /// One course; `None` when no accepted event names it.
    pub fn course_report(&self, course: &str, fy: Fy, now: Millis) -> Option<Report> {
        let t = self.courses.get(course)?;
        Some(Report { courses: Some([(course.to_owned(), CourseKpis::of(t))].into()), ..Report::header(fy, now) })
    }

    /// Every target, or only those behind their pace (progress below 1).
    pub fn targets_report(&self, behind_only: bool, fy: Fy, now: Millis) -> Report {
        let statuses = self.targets.iter().map(|(id, t)| (id.clone(), self.target_status(t, now)));
        let targets = statuses.filter(|(_, s)| !behind_only || s.is_behind()).collect();
        Report { targets: Some(targets), ..Report::header(fy, now) }
    }
}
