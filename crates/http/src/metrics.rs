//! The KPI families of `/metrics`, rendered from a [`Snapshot`] (never from
//! user state), plus the service's own build and readiness gauges.
//!
//! Every KPI is a gauge labelled by `org` (and `fy` for the `_fy` ones,
//! `window` for the 1, 7 and 30-day windows, computed at the scrape's
//! clock), or by `provider`, or by `course`. Monthly series are not
//! families: Prometheus keeps its own history.
//! Learning time is exported in seconds, the Prometheus base unit; ratios are
//! 0..1 and left out when their denominator is 0 (the contract's null).
//! Alongside each ratio the summable parts are exported too
//! (`rating_stars_sum`, the counts), so that recording rules can recompute
//! every ratio exactly when several instances each export a share.

use pulse_engine::{CourseKpis, NodeKpis, NodeView, PlanKpis, ProviderKpis, Snapshot, Windows};
use pulse_metrics::{Encoder, Kind};
use pulse_model::{Fy, Millis, Stars};

/// One gauge family over the nodes.
struct NodeFamily {
    name: &'static str,
    help: &'static str,
    value: fn(&NodeView, &NodeKpis) -> Option<f64>,
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

const NODE_FAMILIES: &[NodeFamily] = &[
    NodeFamily {
        name: "pulse_kpi_registered_users",
        help: "Users with an accepted event whose current org is in the subtree.",
        value: |_, k| Some(k.registered_users as f64),
    },
    NodeFamily {
        name: "pulse_kpi_employees",
        help: "Sanctioned strength over the subtree's registry records.",
        value: |_, k| Some(k.employees as f64),
    },
    NodeFamily {
        name: "pulse_kpi_onboarding_ratio",
        help: "registered_users / employees.",
        value: |_, k| k.onboarding_ratio,
    },
    NodeFamily {
        name: "pulse_kpi_learners",
        help: "Users with at least one enrolment.",
        value: |_, k| Some(k.learners as f64),
    },
    NodeFamily {
        name: "pulse_kpi_enrolments",
        help: "(user, course) pairs enrolled.",
        value: |_, k| Some(k.course_kpis.enrolments as f64),
    },
    NodeFamily {
        name: "pulse_kpi_completions",
        help: "(user, course) pairs completed.",
        value: |_, k| Some(k.course_kpis.completions as f64),
    },
    NodeFamily {
        name: "pulse_kpi_in_progress",
        help: "(user, course) pairs enrolled but not completed.",
        value: |_, k| Some(k.course_kpis.in_progress as f64),
    },
    NodeFamily {
        name: "pulse_kpi_completion_ratio",
        help: "completions / enrolments.",
        value: |_, k| k.course_kpis.completion_ratio,
    },
    NodeFamily {
        name: "pulse_kpi_learning_seconds",
        help: "Sum of progress time (the contract's learning_minutes, in seconds).",
        value: |n, _| Some(seconds(n.totals.minutes_ms)),
    },
    NodeFamily {
        name: "pulse_kpi_ratings",
        help: "Current ratings.",
        value: |_, k| Some(k.course_kpis.ratings as f64),
    },
    NodeFamily {
        name: "pulse_kpi_rated_stars",
        help: "Sum of the current ratings, in stars (average = this / ratings).",
        value: |n, _| Some(Stars(n.totals.rating_milli_sum).as_f64()),
    },
    NodeFamily {
        name: "pulse_kpi_average_rating_stars",
        help: "Mean of the current ratings, in stars.",
        value: |_, k| k.course_kpis.average_rating,
    },
    NodeFamily {
        name: "pulse_kpi_assessed",
        help: "(user, course) pairs with at least one assessment attempt.",
        value: |_, k| Some(k.course_kpis.assessed as f64),
    },
    NodeFamily {
        name: "pulse_kpi_assessments_passed",
        help: "(user, course) pairs with a passing attempt.",
        value: |_, k| Some(k.course_kpis.assessments_passed as f64),
    },
    NodeFamily {
        name: "pulse_kpi_assessment_pass_ratio",
        help: "assessments_passed / assessed.",
        value: |_, k| k.course_kpis.assessment_pass_ratio,
    },
];

/// One gauge family over the nodes' windows, labelled `window`.
struct WindowFamily {
    name: &'static str,
    help: &'static str,
    /// The 1, 7 and 30-day values (`None` while the windows are not exact).
    value: fn(&Windows) -> [Option<f64>; 3],
}

const WINDOWS: [&str; 3] = ["1d", "7d", "30d"];

const WINDOW_FAMILIES: &[WindowFamily] = &[
    WindowFamily {
        name: "pulse_kpi_active_users_window",
        help: "Users whose latest activity is within the window (IST days back from today, today included).",
        value: |w| [w.active_users_1d, w.active_users_7d, w.active_users_30d].map(|v| v.map(|v| v as f64)),
    },
    WindowFamily {
        name: "pulse_kpi_enrolments_window",
        help: "Enrolments whose time is within the window.",
        value: |w| [w.enrolments_1d, w.enrolments_7d, w.enrolments_30d].map(|v| v.map(|v| v as f64)),
    },
    WindowFamily {
        name: "pulse_kpi_completions_window",
        help: "Completions whose time is within the window.",
        value: |w| [w.completions_1d, w.completions_7d, w.completions_30d].map(|v| v.map(|v| v as f64)),
    },
    WindowFamily {
        name: "pulse_kpi_learning_seconds_window",
        help: "Progress time whose event time is within the window, in seconds.",
        value: |w| [w.learning_minutes_1d, w.learning_minutes_7d, w.learning_minutes_30d].map(|v| v.map(|m| m * 60.0)),
    },
];

const FY_FAMILIES: &[NodeFamily] = &[
    NodeFamily {
        name: "pulse_kpi_enrolments_fy",
        help: "Enrolments whose time falls in the financial year.",
        value: |_, k| Some(k.enrolments_fy as f64),
    },
    NodeFamily {
        name: "pulse_kpi_completions_fy",
        help: "Completions whose time falls in the financial year.",
        value: |_, k| Some(k.completions_fy as f64),
    },
    NodeFamily {
        name: "pulse_kpi_learning_seconds_fy",
        help: "Progress time in the financial year, in seconds.",
        value: |_, k| Some(k.learning_minutes_fy * 60.0),
    },
    NodeFamily {
        name: "pulse_kpi_learning_seconds_per_user_fy",
        help: "learning_seconds_fy / registered_users.",
        value: |_, k| k.learning_minutes_per_user_fy.map(|m| m * 60.0),
    },
    NodeFamily {
        name: "pulse_kpi_active_users_fy",
        help: "Users with a non-registration event in the financial year.",
        value: |_, k| Some(k.active_users_fy as f64),
    },
    NodeFamily {
        name: "pulse_kpi_users_meeting_learning_goal_fy",
        help: "Users with at least the configured learning time in the financial year.",
        value: |_, k| Some(k.users_meeting_hours_fy as f64),
    },
    NodeFamily {
        name: "pulse_kpi_users_meeting_learning_goal_ratio",
        help: "users_meeting_hours_fy / registered_users.",
        value: |_, k| k.users_meeting_hours_ratio,
    },
    NodeFamily {
        name: "pulse_kpi_assessments_passed_fy",
        help: "(user, course) pairs whose first passing attempt is in the financial year.",
        value: |_, k| Some(k.assessments_passed_fy as f64),
    },
];

/// One gauge family over the courses (`K` = [`CourseKpis`]), the
/// providers (`K` = [`ProviderKpis`]), labelled by their id, or a plan's
/// nodes (`K` = [`PlanKpis`]).
struct Family<K> {
    name: &'static str,
    help: &'static str,
    value: fn(&K) -> Option<f64>,
}

const COURSE_FAMILIES: &[Family<CourseKpis>] = &[
    Family { name: "pulse_course_enrolments", help: "Enrolments in the course.", value: |k| Some(k.enrolments as f64) },
    Family {
        name: "pulse_course_completions",
        help: "Completions of the course.",
        value: |k| Some(k.completions as f64),
    },
    Family {
        name: "pulse_course_in_progress",
        help: "Enrolled but not completed.",
        value: |k| Some(k.in_progress as f64),
    },
    Family { name: "pulse_course_completion_ratio", help: "completions / enrolments.", value: |k| k.completion_ratio },
    Family {
        name: "pulse_course_learning_seconds",
        help: "Progress time on the course, in seconds.",
        value: |k| Some(k.learning_minutes * 60.0),
    },
    Family { name: "pulse_course_ratings", help: "Current ratings of the course.", value: |k| Some(k.ratings as f64) },
    Family {
        name: "pulse_course_average_rating_stars",
        help: "Mean current rating of the course, in stars.",
        value: |k| k.average_rating,
    },
    Family {
        name: "pulse_course_assessed",
        help: "(user, course) pairs with an assessment attempt.",
        value: |k| Some(k.assessed as f64),
    },
    Family {
        name: "pulse_course_assessments_passed",
        help: "(user, course) pairs with a passing attempt.",
        value: |k| Some(k.assessments_passed as f64),
    },
];

/// A provider's KPIs are sums over its courses, so the summable parts of
/// each ratio are exported too (the recording rules sum them over instances).
const PROVIDER_FAMILIES: &[Family<ProviderKpis>] = &[
    Family {
        name: "pulse_provider_courses",
        help: "Catalogue records naming the provider (0 for unlisted).",
        value: |p| Some(p.courses as f64),
    },
    Family {
        name: "pulse_provider_enrolments",
        help: "(user, course) pairs enrolled in the provider's courses.",
        value: |p| Some(p.kpis.enrolments as f64),
    },
    Family {
        name: "pulse_provider_completions",
        help: "(user, course) pairs completed.",
        value: |p| Some(p.kpis.completions as f64),
    },
    Family {
        name: "pulse_provider_completion_ratio",
        help: "completions / enrolments.",
        value: |p| p.kpis.completion_ratio,
    },
    Family {
        name: "pulse_provider_learning_seconds",
        help: "Progress time on the provider's courses, in seconds.",
        value: |p| Some(p.kpis.learning_minutes * 60.0),
    },
    Family {
        name: "pulse_provider_ratings",
        help: "Current ratings of the provider's courses.",
        value: |p| Some(p.kpis.ratings as f64),
    },
    Family {
        name: "pulse_provider_rated_stars",
        help: "Sum of those ratings, in stars (average = this / ratings).",
        value: |p| Some(p.rated_stars),
    },
    Family {
        name: "pulse_provider_average_rating_stars",
        help: "Mean current rating of the provider's courses, in stars.",
        value: |p| p.kpis.average_rating,
    },
    Family {
        name: "pulse_provider_assessed",
        help: "(user, course) pairs with an assessment attempt.",
        value: |p| Some(p.kpis.assessed as f64),
    },
    Family {
        name: "pulse_provider_assessments_passed",
        help: "(user, course) pairs with a passing attempt.",
        value: |p| Some(p.kpis.assessments_passed as f64),
    },
    Family {
        name: "pulse_provider_assessment_pass_ratio",
        help: "assessments_passed / assessed.",
        value: |p| p.kpis.assessment_pass_ratio,
    },
];

/// A plan's counts at a node: summable over instances, so the recording
/// rules rebuild every plan ratio, and compute overdue, expected and
/// progress at the rule's clock from the plan's start and due times.
const PLAN_FAMILIES: &[Family<PlanKpis>] = &[
    Family {
        name: "pulse_plan_users",
        help: "Users assigned the plan whose current org is in the subtree.",
        value: |k| Some(k.users as f64),
    },
    Family {
        name: "pulse_plan_courses_assigned",
        help: "The plan's courses, once per assigned user.",
        value: |k| Some(k.courses_assigned as f64),
    },
    Family {
        name: "pulse_plan_courses_completed",
        help: "Of those, the ones completed (any time).",
        value: |k| Some(k.courses_completed as f64),
    },
    Family {
        name: "pulse_plan_courses_completed_on_time",
        help: "Of those, the ones completed by the due time.",
        value: |k| Some(k.courses_completed_on_time as f64),
    },
    Family {
        name: "pulse_plan_users_compliant",
        help: "Assigned users who completed at least min_share of the courses on time.",
        value: |k| Some(k.users_compliant as f64),
    },
];

/// Every plan's counts at its org and each node under it (zeros included,
/// so that the alerts see a node nobody there has started), and each
/// plan's own record.
fn encode_plans(enc: &mut Encoder, snapshot: &Snapshot, now: Millis) {
    let plans = snapshot.plans_report(now);
    for fam in PLAN_FAMILIES {
        let mut f = enc.family(fam.name, fam.help, Kind::Gauge);
        for (id, plan) in &plans {
            for (org, k) in &plan.nodes {
                if let Some(v) = (fam.value)(k) {
                    f.sample(&[("plan", id), ("org", org)], v);
                }
            }
        }
    }
    let mut f = enc.family(
        "pulse_plan_info",
        "One series per plan, carrying the node it covers and its due time (IST).",
        Kind::Gauge,
    );
    for (id, plan) in &plans {
        f.sample(&[("plan", id), ("org", &plan.org), ("due", &plan.due)], 1.0);
    }
    type Value = fn(&pulse_model::PlanRecord) -> f64;
    let records: [(&'static str, &str, Value); 3] = [
        ("pulse_plan_start_timestamp_seconds", "When the plan's pace starts.", |p| seconds(p.start)),
        ("pulse_plan_due_timestamp_seconds", "When the plan's courses are due.", |p| seconds(p.due)),
        ("pulse_plan_min_share", "The share of its courses a user completes on time to comply.", |p| p.min_share),
    ];
    for (name, help, value) in records {
        let mut f = enc.family(name, help, Kind::Gauge);
        for (id, p) in &snapshot.plans {
            f.sample(&[("plan", id)], value(p));
        }
    }
    enc.family(
        "pulse_plan_reevaluation_pending_users",
        "Users still to re-evaluate after a plan or registry change, at most (plan KPIs converge as it drains).",
        Kind::Gauge,
    )
    .sample(&[], snapshot.plan_users_pending as f64);
}

/// What `/metrics` carries beyond the always-present node KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposition {
    /// The `_fy` families cover this many of the latest financial years with
    /// data (older years stay in the API), so series do not grow with history.
    pub fys: usize,
    /// The per-course families (one series per course and KPI).
    pub courses: bool,
}

/// Writes every KPI family of the snapshot. `now` paces the targets.
pub fn encode_kpis(enc: &mut Encoder, snapshot: &Snapshot, now: Millis, exposition: Exposition) {
    let nodes = snapshot.view.nodes();
    let all_fys: Vec<Fy> = snapshot.fys().collect();
    let fys = &all_fys[all_fys.len().saturating_sub(exposition.fys)..];
    // The year-independent KPIs read the same from any year's NodeKpis.
    let base_fy = fys.last().copied().unwrap_or_else(|| Fy::of(now));
    let base: Vec<NodeKpis> = nodes.iter().map(|n| NodeKpis::of(n, base_fy, snapshot.windows_today(now))).collect();
    for fam in NODE_FAMILIES {
        let mut f = enc.family(fam.name, fam.help, Kind::Gauge);
        for (n, k) in nodes.iter().zip(&base) {
            if let Some(v) = (fam.value)(n, k) {
                f.sample(&[("org", &n.id)], v);
            }
        }
    }
    let per_fy: Vec<(String, Vec<NodeKpis>)> =
        fys.iter().map(|fy| (fy.to_string(), nodes.iter().map(|n| NodeKpis::of(n, *fy, None)).collect())).collect();
    for fam in FY_FAMILIES {
        let mut f = enc.family(fam.name, fam.help, Kind::Gauge);
        for (fy, kpis) in &per_fy {
            for (n, k) in nodes.iter().zip(kpis) {
                if let Some(v) = (fam.value)(n, k) {
                    f.sample(&[("org", &n.id), ("fy", fy)], v);
                }
            }
        }
    }
    let mut f = enc.family(
        "pulse_org_info",
        "One series per node, carrying its name, parent, kind and depth (join with group_left).",
        Kind::Gauge,
    );
    for n in nodes {
        let depth = n.depth.to_string();
        let labels = [
            ("org", n.id.as_str()),
            ("name", &n.name),
            ("parent", n.parent.as_deref().unwrap_or("")),
            ("kind", &n.kind),
            ("depth", &depth),
        ];
        f.sample(&labels, 1.0);
    }
    enc.family("pulse_registry_unknown_orgs", "Org ids named by events but not in the registry.", Kind::Gauge)
        .sample(&[], snapshot.unknown_orgs as f64);
    encode_targets(enc, snapshot, now);
    encode_windows(enc, nodes, &base);
    encode_providers(enc, snapshot);
    encode_plans(enc, snapshot, now);
    if exposition.courses {
        let kpis: Vec<(&String, CourseKpis)> = snapshot.courses.iter().map(|(c, t)| (c, CourseKpis::of(t))).collect();
        encode_families(enc, COURSE_FAMILIES, "course", &kpis);
        let mut f = enc.family(
            "pulse_course_info",
            "One series per course with activity, carrying its catalogue name and provider (empty when unknown).",
            Kind::Gauge,
        );
        for course in snapshot.courses.keys() {
            let record = snapshot.catalogue.get(course);
            let name = record.map_or("", |r| r.name.as_str());
            f.sample(&[("course", course), ("name", name), ("provider", snapshot.provider_of(course))], 1.0);
        }
    }
}

fn encode_windows(enc: &mut Encoder, nodes: &[NodeView], kpis: &[NodeKpis]) {
    for fam in WINDOW_FAMILIES {
        let mut f = enc.family(fam.name, fam.help, Kind::Gauge);
        for (n, k) in nodes.iter().zip(kpis) {
            for (window, v) in WINDOWS.iter().zip((fam.value)(&k.windows)) {
                if let Some(v) = v {
                    f.sample(&[("org", &n.id), ("window", window)], v);
                }
            }
        }
    }
}

/// Families over items labelled by their id.
fn encode_families<K, I: std::borrow::Borrow<K>>(
    enc: &mut Encoder,
    families: &[Family<K>],
    label: &str,
    items: &[(&String, I)],
) {
    for fam in families {
        let mut f = enc.family(fam.name, fam.help, Kind::Gauge);
        for (id, item) in items {
            if let Some(v) = (fam.value)(item.borrow()) {
                f.sample(&[(label, id)], v);
            }
        }
    }
}

/// Providers are few (those the catalogue names), so they are always exported.
fn encode_providers(enc: &mut Encoder, snapshot: &Snapshot) {
    let providers = snapshot.providers();
    let items: Vec<(&String, &ProviderKpis)> = providers.iter().collect();
    encode_families(enc, PROVIDER_FAMILIES, "provider", &items);
    let mut f = enc.family("pulse_provider_info", "One series per provider, carrying its name.", Kind::Gauge);
    for (id, p) in &providers {
        f.sample(&[("provider", id), ("name", &p.name)], 1.0);
    }
}

fn encode_targets(enc: &mut Encoder, snapshot: &Snapshot, now: Millis) {
    let statuses: Vec<_> = snapshot.targets.iter().map(|(id, t)| (id, snapshot.target_status(t, now))).collect();
    type Value = fn(&pulse_engine::TargetStatus) -> Option<f64>;
    let families: [(&'static str, &str, Value); 3] = [
        ("pulse_target_value", "The target, in the unit of its KPI (minutes for learning_minutes_*).", |s| {
            Some(s.value)
        }),
        ("pulse_target_expected", "Where the KPI should be by now: value × elapsed part of the FY when paced.", |s| {
            Some(s.expected)
        }),
        ("pulse_target_progress_ratio", "Actual / expected; below 1 is behind.", |s| s.progress),
    ];
    for (name, help, value) in families {
        let mut f = enc.family(name, help, Kind::Gauge);
        for (id, s) in &statuses {
            if let Some(v) = value(s) {
                f.sample(&[("target", id), ("org", &s.org), ("kpi", s.kpi.name()), ("fy", &s.fy)], v);
            }
        }
    }
}

/// `pulse_build_info` and `pulse_ready`.
pub fn encode_service(enc: &mut Encoder, ready: bool) {
    enc.family("pulse_build_info", "The running build (always 1).", Kind::Gauge)
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    enc.family("pulse_ready", "1 when /readyz answers ready.", Kind::Gauge).sample(&[], if ready { 1.0 } else { 0.0 });
}
