//! KPIs as the contract's report shapes (section 9), derived from the view.
//! `pulse report`, the HTTP API and the metrics all read these.

use std::collections::BTreeMap;

use pulse_model::time::format_ist;
use pulse_model::{CourseRecord, Day, Fy, Millis, Minutes, Month, PlanRecord, Stars, TargetKpi, TargetRecord};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::plans::PlanReport;
use crate::rollup::{NodeView, OrgView};
use crate::state::{CourseTotals, PeriodTotals, UserState};

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
    pub assessments_passed_fy: i64,
    /// The windows of contract section 13; null when the report's `now` is
    /// too far before the newest event for them to be exact.
    #[serde(flatten)]
    pub windows: Windows,
}

/// The day a report's windows end on: `today`, or `None` when `now` is
/// more than 30 days before the day of the newest event (the days kept
/// do not reach back that far; the monthly series do).
pub fn windows_today(now: Millis, newest: Option<Millis>) -> Option<Day> {
    let today = Day::of(now);
    match newest {
        Some(newest) if today.0 < Day::of(newest).0 - 30 => None,
        _ => Some(today),
    }
}

/// The 1, 7 and 30-day windows of one node (contract section 13).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Windows {
    pub active_users_1d: Option<i64>,
    pub active_users_7d: Option<i64>,
    pub active_users_30d: Option<i64>,
    pub enrolments_1d: Option<i64>,
    pub enrolments_7d: Option<i64>,
    pub enrolments_30d: Option<i64>,
    pub completions_1d: Option<i64>,
    pub completions_7d: Option<i64>,
    pub completions_30d: Option<i64>,
    pub learning_minutes_1d: Option<f64>,
    pub learning_minutes_7d: Option<f64>,
    pub learning_minutes_30d: Option<f64>,
}

impl Windows {
    fn of(node: &NodeView, today: Option<Day>) -> Windows {
        let Some(today) = today else { return Windows::default() };
        let [d1, d7, d30] = [1, 7, 30].map(|w| node.totals.since(Day(today.0 - (w - 1))));
        Windows {
            active_users_1d: Some(d1.active_users),
            active_users_7d: Some(d7.active_users),
            active_users_30d: Some(d30.active_users),
            enrolments_1d: Some(d1.enrolments),
            enrolments_7d: Some(d7.enrolments),
            enrolments_30d: Some(d30.enrolments),
            completions_1d: Some(d1.completions),
            completions_7d: Some(d7.completions),
            completions_30d: Some(d30.completions),
            learning_minutes_1d: Some(minutes(d1.minutes_ms)),
            learning_minutes_7d: Some(minutes(d7.minutes_ms)),
            learning_minutes_30d: Some(minutes(d30.minutes_ms)),
        }
    }
}

impl NodeKpis {
    /// `today`: the day the windows end on ([`windows_today`]).
    pub fn of(node: &NodeView, fy: Fy, today: Option<Day>) -> NodeKpis {
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
                assessed: t.assessed,
                assessments_passed: t.assessments_passed,
            }),
            enrolments_fy: f.enrolments,
            completions_fy: f.completions,
            learning_minutes_fy: minutes(f.minutes_ms),
            learning_minutes_per_user_fy: ratio(minutes(f.minutes_ms), users),
            active_users_fy: f.active_users,
            users_meeting_hours_fy: f.users_meeting_hours,
            users_meeting_hours_ratio: ratio(f.users_meeting_hours as f64, users),
            assessments_passed_fy: f.assessments_passed,
            windows: Windows::of(node, today),
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

/// The course-level KPIs ("course too" in contract section 7, and the
/// assessments of section 12), which nodes and providers have too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CourseKpis {
    pub enrolments: i64,
    pub completions: i64,
    pub in_progress: i64,
    pub completion_ratio: Option<f64>,
    pub learning_minutes: f64,
    pub ratings: i64,
    pub average_rating: Option<f64>,
    pub assessed: i64,
    pub assessments_passed: i64,
    pub assessment_pass_ratio: Option<f64>,
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
            assessed: t.assessed,
            assessments_passed: t.assessments_passed,
            assessment_pass_ratio: ratio(t.assessments_passed as f64, t.assessed as f64),
        }
    }
}

/// One course as reports and the API show it: its catalogue name and
/// provider (null for a course the catalogue does not know) and its KPIs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CourseReport {
    pub name: Option<String>,
    pub provider: Option<String>,
    #[serde(flatten)]
    pub kpis: CourseKpis,
}

impl CourseReport {
    pub fn of(record: Option<&CourseRecord>, t: &CourseTotals) -> CourseReport {
        CourseReport {
            name: record.map(|r| r.name.clone()),
            provider: record.and_then(|r| Some(r.provider.as_ref()?.id.clone())),
            kpis: CourseKpis::of(t),
        }
    }
}

/// The pseudo-provider of courses with activity that no catalogue record
/// gives a provider (contract section 11).
pub const UNLISTED: &str = "unlisted";

/// One provider's KPIs: sums over its courses, ratios recomputed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderKpis {
    pub name: String,
    /// Catalogue records naming the provider (0 for `unlisted`).
    pub courses: i64,
    #[serde(flatten)]
    pub kpis: CourseKpis,
    /// The sum of the current ratings, in stars (for `/metrics`, whose
    /// recording rules recompute the average over instances).
    #[serde(skip)]
    pub rated_stars: f64,
}

/// One month of a node's monthly series (contract section 13).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthKpis {
    pub enrolments: i64,
    pub completions: i64,
    pub learning_minutes: f64,
    pub active_users: i64,
}

impl MonthKpis {
    fn of(t: &PeriodTotals) -> MonthKpis {
        MonthKpis {
            enrolments: t.enrolments,
            completions: t.completions,
            learning_minutes: minutes(t.minutes_ms),
            active_users: t.active_users,
        }
    }
}

/// `pulse report --months`: every month of one financial year, per node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthsReport {
    pub fy: String,
    #[serde(serialize_with = "ordered_map")]
    pub nodes: Option<Vec<(String, BTreeMap<String, MonthKpis>)>>,
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
        let actual = view.node(&target.org).and_then(|n| NodeKpis::of(n, target.fy, None).target_actual(target.kpi));
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
    pub courses: Option<BTreeMap<String, CourseReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<BTreeMap<String, ProviderKpis>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<BTreeMap<String, TargetStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plans: Option<BTreeMap<String, PlanReport>>,
}

impl Report {
    pub fn header(fy: Fy, now: Millis) -> Report {
        Report {
            fy: fy.to_string(),
            now: format_ist(now),
            nodes: None,
            courses: None,
            providers: None,
            targets: None,
            plans: None,
        }
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
    pub assessment: Option<UserAssessment>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserAssessment {
    pub best_score: f64,
    pub passed: bool,
}

/// The individual level: `pulse report --user ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserReport {
    pub user: String,
    /// The current org as the events and the profile name it (registered or not).
    pub org: Option<String>,
    /// The current profile's designation.
    pub designation: Option<String>,
    pub fy: String,
    pub enrolments: i64,
    pub completions: i64,
    pub in_progress: i64,
    pub learning_minutes: f64,
    pub learning_minutes_fy: f64,
    pub ratings: i64,
    pub assessments_passed: i64,
    pub courses: BTreeMap<String, UserCourse>,
    /// The plans assigned to the user, with its standing in each.
    pub plans: BTreeMap<String, UserPlan>,
}

/// A user's standing in one plan assigned to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserPlan {
    pub courses: i64,
    pub completed: i64,
    pub on_time: i64,
    pub compliant: bool,
}

impl UserReport {
    pub fn of(user: &str, state: &UserState, fy: Fy) -> UserReport {
        let mut t = CourseTotals::default();
        for c in state.courses.values() {
            t.add(&c.totals(), 1);
        }
        UserReport {
            user: user.to_owned(),
            org: state.current_org().map(str::to_owned),
            designation: state.profile.as_ref().and_then(|p| p.designation.clone()),
            fy: fy.to_string(),
            enrolments: t.enrolments,
            completions: t.completions,
            in_progress: t.enrolments - t.completions,
            learning_minutes: minutes(t.minutes_ms),
            learning_minutes_fy: minutes(state.fy_minutes_ms(fy)),
            ratings: t.ratings,
            assessments_passed: t.assessments_passed,
            plans: state
                .plans
                .iter()
                .map(|(id, c)| {
                    let plan = UserPlan {
                        courses: c.courses,
                        completed: c.completed,
                        on_time: c.on_time,
                        compliant: c.compliant > 0,
                    };
                    (id.clone(), plan)
                })
                .collect(),
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
                        assessment: c
                            .assessment
                            .as_ref()
                            .map(|a| UserAssessment { best_score: a.best_score, passed: a.passed_at.is_some() }),
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
    pub catalogue: BTreeMap<String, CourseRecord>,
    pub plans: BTreeMap<String, PlanRecord>,
    /// The newest event time applied (the windows are exact from 30 days
    /// before its day on).
    pub newest: Option<Millis>,
    /// Org ids that events name but the registry does not know (their users
    /// count under `unassigned`).
    pub unknown_orgs: usize,
    /// A plan or registry change is still being applied to the users it
    /// affects: the plan KPIs are converging.
    pub plans_converging: bool,
    /// The users that re-evaluation still has to visit, at most.
    pub plan_users_pending: i64,
}

impl Snapshot {
    /// Every financial year with a non-zero total, oldest first.
    pub fn fys(&self) -> impl Iterator<Item = Fy> + '_ {
        self.view.node(crate::NATIONAL).into_iter().flat_map(|n| n.totals.fys())
    }

    /// The day this snapshot's windows end on at `now` ([`windows_today`]).
    pub fn windows_today(&self, now: Millis) -> Option<Day> {
        windows_today(now, self.newest)
    }

    fn node_kpis(&self, node: &NodeView, fy: Fy, now: Millis) -> (String, NodeKpis) {
        (node.id.clone(), NodeKpis::of(node, fy, self.windows_today(now)))
    }

    fn course(&self, id: &str, t: &CourseTotals) -> CourseReport {
        CourseReport::of(self.catalogue.get(id), t)
    }

    /// Every provider the catalogue names, and `unlisted`: the sums of
    /// their courses' totals under the catalogue as it is now.
    pub fn providers(&self) -> BTreeMap<String, ProviderKpis> {
        // (name, catalogue records, totals); a provider's name is the one
        // its first record (by course id) gives.
        let mut sums: BTreeMap<&str, (&str, i64, CourseTotals)> = BTreeMap::new();
        sums.insert(UNLISTED, (UNLISTED, 0, CourseTotals::default()));
        for p in self.catalogue.values().filter_map(|r| r.provider.as_ref()) {
            sums.entry(&p.id).or_insert((&p.name, 0, CourseTotals::default())).1 += 1;
        }
        for (course, t) in &self.courses {
            let provider = self.provider_of(course);
            if let Some(sum) = sums.get_mut(provider) {
                sum.2.add(t, 1);
            }
        }
        sums.into_iter()
            .map(|(id, (name, courses, t))| {
                let rated_stars = Stars(t.rating_milli_sum).as_f64();
                (id.to_owned(), ProviderKpis { name: name.to_owned(), courses, kpis: CourseKpis::of(&t), rated_stars })
            })
            .collect()
    }

    /// The provider a course's activity counts under.
    pub fn provider_of(&self, course: &str) -> &str {
        self.catalogue.get(course).and_then(|r| r.provider.as_ref()).map_or(UNLISTED, |p| &p.id)
    }

    /// `pulse report --months`: every node's (or one node's) twelve months
    /// of a financial year; `None` when the node is unknown.
    pub fn months_report(&self, fy: Fy, org: Option<&str>) -> Option<MonthsReport> {
        let nodes: Vec<&NodeView> = match org {
            Some(org) => vec![self.view.node(org)?],
            None => self.view.nodes().iter().collect(),
        };
        let series = |n: &NodeView| -> BTreeMap<String, MonthKpis> {
            fy.months().map(|m: Month| (m.to_string(), MonthKpis::of(&n.totals.month(m)))).collect()
        };
        Some(MonthsReport {
            fy: fy.to_string(),
            nodes: Some(nodes.into_iter().map(|n| (n.id.clone(), series(n))).collect()),
        })
    }

    pub fn target_status(&self, target: &TargetRecord, now: Millis) -> TargetStatus {
        TargetStatus::of(target, &self.view, now)
    }

    /// Every plan, with its KPIs at its org and every node under it.
    pub fn plans_report(&self, now: Millis) -> BTreeMap<String, PlanReport> {
        crate::plans::plans_report(&self.plans, &self.view, now)
    }

    /// `pulse report --all`: every node, course and target.
    pub fn report(&self, fy: Fy, now: Millis) -> Report {
        Report {
            nodes: Some(self.view.nodes().iter().map(|n| self.node_kpis(n, fy, now)).collect()),
            courses: Some(self.courses.iter().map(|(c, t)| (c.clone(), self.course(c, t))).collect()),
            providers: Some(self.providers()),
            targets: Some(self.targets.iter().map(|(id, t)| (id.clone(), self.target_status(t, now))).collect()),
            plans: Some(self.plans_report(now)),
            ..Report::header(fy, now)
        }
    }

    /// One node; `None` when it is not `national`, `unassigned` or registered.
    pub fn node_report(&self, org: &str, fy: Fy, now: Millis) -> Option<Report> {
        let node = self.view.node(org)?;
        Some(Report { nodes: Some(vec![self.node_kpis(node, fy, now)]), ..Report::header(fy, now) })
    }

    /// The direct children of a node, by id; `None` when the node is unknown.
    pub fn children_report(&self, org: &str, fy: Fy, now: Millis) -> Option<Report> {
        self.view.node(org)?;
        let children = self.view.nodes().iter().filter(|n| n.parent.as_deref() == Some(org));
        Some(Report { nodes: Some(children.map(|n| self.node_kpis(n, fy, now)).collect()), ..Report::header(fy, now) })
    }

    /// One course; `None` when no accepted event names it.
    pub fn course_report(&self, course: &str, fy: Fy, now: Millis) -> Option<Report> {
        let t = self.courses.get(course)?;
        Some(Report { courses: Some([(course.to_owned(), self.course(course, t))].into()), ..Report::header(fy, now) })
    }

    /// Every target, or only those behind their pace (progress below 1).
    pub fn targets_report(&self, behind_only: bool, fy: Fy, now: Millis) -> Report {
        let statuses = self.targets.iter().map(|(id, t)| (id.clone(), self.target_status(t, now)));
        let targets = statuses.filter(|(_, s)| !behind_only || s.is_behind()).collect();
        Report { targets: Some(targets), ..Report::header(fy, now) }
    }
}
