//! A deliberately naive reference model of Pulse's KPIs.
//!
//! It recomputes everything from the full list of messages, every time, with
//! the simplest code that states each rule of the contract: no incremental
//! state, no shards, no store. Tests compare the engine against it; the load
//! generator uses it to write the expected report of what it produced.
//!
//! It shares only the parsers and record types with the engine (the parsers
//! have golden tests of their own); the KPI rules, the calendar and the
//! rollups are written again here on purpose. It must not depend on the
//! engine.

use std::collections::BTreeMap;

use chrono::{Datelike, Days, NaiveDate};
use pulse_model::{InputFormat, TargetKpi, TimeRules};
use serde_json::{json, Map, Value};

mod facts;
mod plans;
mod world;

use facts::{users, CourseFacts};
use world::{chain, world, World};

/// One message as it arrives on a topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A message of an input topic; `key` is read by `user-profile` only.
    Event {
        format: InputFormat,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    Org {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
    Target {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
    Course {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
    Plan {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub meeting_minutes: u32,
    pub time_rules: TimeRules,
    /// The wall clock at ingestion, for the time rules.
    pub ingest_now: i64,
}

const IST_MS: i64 = 19_800_000;

/// The financial year (by first calendar year) of an instant, via the IST date.
fn fy_of(ts: i64) -> i32 {
    let date = chrono::DateTime::from_timestamp_millis(ts + IST_MS).expect("timestamp in range").date_naive();
    if date.month() >= 4 {
        date.year()
    } else {
        date.year() - 1
    }
}

/// The IST calendar date of an instant.
fn ist_date(ts: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ts + IST_MS).expect("timestamp in range").date_naive()
}

/// The first instant of an IST date.
fn ist_midnight(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis() - IST_MS
}

/// The IST month of an instant, named like `2025-04`.
fn month_of(ts: i64) -> String {
    let d = ist_date(ts);
    format!("{}-{:02}", d.year(), d.month())
}

fn april_first(year: i32) -> i64 {
    let d = NaiveDate::from_ymd_opt(year, 4, 1).expect("valid date");
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis() - IST_MS
}

fn fy_name(fy: i32) -> String {
    format!("{}-{:02}", fy, (fy + 1) % 100)
}

fn ratio(a: f64, b: f64) -> Value {
    if b == 0.0 {
        Value::Null
    } else {
        json!(a / b)
    }
}

#[derive(Default, Clone)]
struct Sums {
    users: i64,
    learners: i64,
    enrolments: i64,
    completions: i64,
    minutes: i64,
    ratings: i64,
    stars: i64,
    assessed: i64,
    passed: i64,
    enrolments_fy: i64,
    completions_fy: i64,
    minutes_fy: i64,
    active_fy: i64,
    meeting_fy: i64,
    passed_fy: i64,
    /// Per window of 1, 7 and 30 days: active users, enrolments, completions, minutes.
    windows: [[i64; 4]; 3],
}

const WINDOWS: [u64; 3] = [1, 7, 30];

fn minutes(ms: i64) -> f64 {
    ms as f64 / 60_000.0
}

/// The KPIs that nodes, courses and providers share.
fn course_json(s: &Sums) -> Value {
    json!({
        "enrolments": s.enrolments,
        "completions": s.completions,
        "in_progress": s.enrolments - s.completions,
        "completion_ratio": ratio(s.completions as f64, s.enrolments as f64),
        "learning_minutes": minutes(s.minutes),
        "ratings": s.ratings,
        "average_rating": ratio(s.stars as f64 / 1000.0, s.ratings as f64),
        "assessed": s.assessed,
        "assessments_passed": s.passed,
        "assessment_pass_ratio": ratio(s.passed as f64, s.assessed as f64),
    })
}

fn merge(into: &mut Value, more: Value) {
    if let (Value::Object(into), Value::Object(more)) = (into, more) {
        into.extend(more);
    }
}

/// `windows`: whether the report's `now` lets the windows be exact.
fn node_json(s: &Sums, employees: u64, windows: bool) -> Value {
    let users = s.users as f64;
    let mut node = course_json(s);
    merge(
        &mut node,
        json!({
            "registered_users": s.users,
            "employees": employees,
            "onboarding_ratio": ratio(users, employees as f64),
            "learners": s.learners,
            "enrolments_fy": s.enrolments_fy,
            "completions_fy": s.completions_fy,
            "learning_minutes_fy": minutes(s.minutes_fy),
            "learning_minutes_per_user_fy": ratio(minutes(s.minutes_fy), users),
            "active_users_fy": s.active_fy,
            "users_meeting_hours_fy": s.meeting_fy,
            "users_meeting_hours_ratio": ratio(s.meeting_fy as f64, users),
            "assessments_passed_fy": s.passed_fy,
        }),
    );
    for (w, [active, enrolments, completions, ms]) in WINDOWS.iter().zip(s.windows) {
        let v = |x: Value| if windows { x } else { Value::Null };
        merge(
            &mut node,
            json!({
                format!("active_users_{w}d"): v(json!(active)),
                format!("enrolments_{w}d"): v(json!(enrolments)),
                format!("completions_{w}d"): v(json!(completions)),
                format!("learning_minutes_{w}d"): v(json!(minutes(ms))),
            }),
        );
    }
    node
}

/// The first instant of the window of `days` days at `now`: the start of
/// the IST day `days - 1` days before today.
fn window_start(now: i64, days: u64) -> i64 {
    ist_midnight(ist_date(now) - Days::new(days - 1))
}

/// Whether the windows are exact at `now`: no earlier than the start of
/// the IST day of the newest accepted event, minus 30 days.
fn windows_exact(w: &World, now: i64) -> bool {
    w.events.iter().map(|e| e.ts).max().is_none_or(|newest| now >= ist_midnight(ist_date(newest)) - 30 * 86_400_000)
}

/// Node sums for one financial year: for every user, its facts added to every
/// node of its chain.
fn node_sums(w: &World, fy: i32, meeting_minutes: u32, now: i64) -> BTreeMap<String, Sums> {
    let mut nodes: BTreeMap<String, Sums> = BTreeMap::new();
    for id in ["national", "unassigned"].into_iter().map(String::from).chain(w.orgs.keys().cloned()) {
        nodes.insert(id, Sums::default());
    }
    for f in users(w).values() {
        let place = match &f.org {
            Some(o) if w.orgs.contains_key(o) => o.clone(),
            _ => "unassigned".to_string(),
        };
        let enrolled: Vec<i64> = f.courses.values().filter_map(|c| c.enrolled).collect();
        let completed: Vec<i64> = f.courses.values().filter_map(|c| c.completed).collect();
        let ratings: Vec<i64> = f.courses.values().filter_map(|c| c.rating.as_ref().map(|r| r.2)).collect();
        let passed: Vec<i64> = f.courses.values().filter_map(CourseFacts::passed).collect();
        let minutes_fy = f.minutes_in_fy(fy);
        let windows = WINDOWS.map(|days| {
            let start = window_start(now, days);
            let since = |ts: &Vec<i64>| ts.iter().filter(|&&t| t >= start).count() as i64;
            let latest_activity = f.activity.iter().max().is_some_and(|&t| t >= start);
            let ms = f.sessions.iter().filter(|(t, _)| *t >= start).map(|(_, ms)| ms).sum();
            [i64::from(latest_activity), since(&enrolled), since(&completed), ms]
        });
        for node in chain(&w.orgs, &place) {
            let s = nodes.get_mut(&node).expect("every chain node is a node");
            s.users += 1;
            s.learners += i64::from(!enrolled.is_empty());
            s.enrolments += enrolled.len() as i64;
            s.completions += completed.len() as i64;
            s.minutes += f.courses.values().map(|c| c.minutes).sum::<i64>();
            s.ratings += ratings.len() as i64;
            s.stars += ratings.iter().sum::<i64>();
            s.assessed += f.courses.values().filter(|c| !c.attempts.is_empty()).count() as i64;
            s.passed += passed.len() as i64;
            s.enrolments_fy += enrolled.iter().filter(|&&t| fy_of(t) == fy).count() as i64;
            s.completions_fy += completed.iter().filter(|&&t| fy_of(t) == fy).count() as i64;
            s.minutes_fy += minutes_fy;
            s.active_fy += i64::from(f.activity.iter().any(|&t| fy_of(t) == fy));
            s.meeting_fy += i64::from(minutes_fy > 0 && minutes_fy >= i64::from(meeting_minutes) * 60_000);
            s.passed_fy += passed.iter().filter(|&&t| fy_of(t) == fy).count() as i64;
            for (sum, user) in s.windows.iter_mut().zip(windows) {
                for (a, b) in sum.iter_mut().zip(user) {
                    *a += b;
                }
            }
        }
    }
    nodes
}

fn employees(w: &World, node: &str) -> u64 {
    w.orgs.values().filter(|o| chain(&w.orgs, &o.org).iter().any(|n| n == node)).map(|o| o.employees).sum()
}

/// Course sums over every user.
fn course_sums(w: &World) -> BTreeMap<String, Sums> {
    let mut courses: BTreeMap<String, Sums> = BTreeMap::new();
    for f in users(w).into_values() {
        for (id, c) in f.courses {
            let s = courses.entry(id).or_default();
            s.enrolments += i64::from(c.enrolled.is_some());
            s.completions += i64::from(c.completed.is_some());
            s.minutes += c.minutes;
            s.ratings += i64::from(c.rating.is_some());
            s.stars += c.rating.as_ref().map_or(0, |r| r.2);
            s.assessed += i64::from(!c.attempts.is_empty());
            s.passed += i64::from(c.passed().is_some());
        }
    }
    courses
}

/// Providers: every one a catalogue record names, and `unlisted`.
fn providers_json(w: &World, courses: &BTreeMap<String, Sums>) -> Map<String, Value> {
    // id -> (name of its first record by course id, records, sums)
    let mut providers: BTreeMap<String, (String, i64, Sums)> = BTreeMap::new();
    providers.insert("unlisted".into(), ("unlisted".into(), 0, Sums::default()));
    for rec in w.catalogue.values() {
        if let Some(p) = &rec.provider {
            providers.entry(p.id.clone()).or_insert((p.name.clone(), 0, Sums::default())).1 += 1;
        }
    }
    for (course, c) in courses {
        let provider = w.catalogue.get(course).and_then(|r| r.provider.as_ref()).map_or("unlisted", |p| &p.id);
        let s = &mut providers.get_mut(provider).expect("every provider is listed").2;
        s.enrolments += c.enrolments;
        s.completions += c.completions;
        s.minutes += c.minutes;
        s.ratings += c.ratings;
        s.stars += c.stars;
        s.assessed += c.assessed;
        s.passed += c.passed;
    }
    providers
        .into_iter()
        .map(|(id, (name, records, s))| {
            let mut v = course_json(&s);
            merge(&mut v, json!({"name": name, "courses": records}));
            (id, v)
        })
        .collect()
}

/// The `pulse report --all` document for these messages.
pub fn report(messages: &[Message], s: &Settings, fy: i32, now: i64) -> Value {
    let w = world(messages, s);
    let sums = node_sums(&w, fy, s.meeting_minutes, now);
    let exact = windows_exact(&w, now);
    let mut nodes = Map::new();
    for (id, sum) in &sums {
        nodes.insert(id.clone(), node_json(sum, employees(&w, id), exact));
    }

    let course_sums = course_sums(&w);
    let providers = providers_json(&w, &course_sums);
    let courses: Map<String, Value> = course_sums
        .iter()
        .map(|(id, s)| {
            let mut v = course_json(s);
            let rec = w.catalogue.get(id);
            merge(
                &mut v,
                json!({"name": rec.map(|r| &r.name), "provider": rec.and_then(|r| r.provider.as_ref()).map(|p| &p.id)}),
            );
            (id.clone(), v)
        })
        .collect();

    let mut targets = Map::new();
    for (id, t) in &w.targets {
        let target_fy = t.fy.0;
        let actual = if sums.contains_key(&t.org) {
            let node = node_sums(&w, target_fy, s.meeting_minutes, now).remove(&t.org).unwrap_or_default();
            let kpis = node_json(&node, employees(&w, &t.org), exact);
            kpis[t.kpi.name()].as_f64()
        } else {
            None
        };
        let expected =
            if matches!(t.kpi, TargetKpi::OnboardingRatio | TargetKpi::CompletionRatio | TargetKpi::AverageRating) {
                t.value
            } else {
                let (start, end) = (april_first(target_fy), april_first(target_fy + 1));
                t.value * ((now - start) as f64 / (end - start) as f64).clamp(0.0, 1.0)
            };
        let progress = match actual {
            Some(a) if expected != 0.0 => json!(a / expected),
            _ => Value::Null,
        };
        targets.insert(
            id.clone(),
            json!({"org": t.org, "kpi": t.kpi.name(), "fy": fy_name(target_fy), "value": t.value,
                   "actual": actual, "expected": expected, "progress": progress}),
        );
    }
    let plans = plans::plans_json(&w, &users(&w), now);
    json!({"fy": fy_name(fy), "nodes": nodes, "courses": courses, "providers": providers, "targets": targets,
           "plans": plans})
}

/// The `pulse report --months` document: every node's twelve months of `fy`.
pub fn months_report(messages: &[Message], s: &Settings, fy: i32) -> Value {
    let w = world(messages, s);
    let months: Vec<String> = (0..12)
        .map(|i| {
            let (y, m) = if i < 9 { (fy, i + 4) } else { (fy + 1, i - 8) };
            format!("{y}-{m:02}")
        })
        .collect();
    let mut nodes: BTreeMap<String, BTreeMap<String, [i64; 4]>> = BTreeMap::new();
    for id in ["national", "unassigned"].into_iter().map(String::from).chain(w.orgs.keys().cloned()) {
        nodes.insert(id, months.iter().map(|m| (m.clone(), [0; 4])).collect());
    }
    for f in users(&w).values() {
        let place = match &f.org {
            Some(o) if w.orgs.contains_key(o) => o.clone(),
            _ => "unassigned".to_string(),
        };
        for month in &months {
            let in_month = |ts: &i64| month_of(*ts) == *month;
            let enrolments = f.courses.values().filter(|c| c.enrolled.as_ref().is_some_and(in_month)).count() as i64;
            let completions = f.courses.values().filter(|c| c.completed.as_ref().is_some_and(in_month)).count() as i64;
            let ms = f.sessions.iter().filter(|(t, _)| in_month(t)).map(|(_, ms)| ms).sum();
            let active = i64::from(f.activity.iter().any(in_month));
            for node in chain(&w.orgs, &place) {
                let sum = nodes.get_mut(&node).and_then(|n| n.get_mut(month)).expect("every node has every month");
                for (a, b) in sum.iter_mut().zip([enrolments, completions, ms, active]) {
                    *a += b;
                }
            }
        }
    }
    let nodes: Map<String, Value> = nodes
        .into_iter()
        .map(|(id, months)| {
            let months: Map<String, Value> = months
                .into_iter()
                .map(|(m, [e, c, ms, a])| {
                    (m, json!({"enrolments": e, "completions": c, "learning_minutes": minutes(ms), "active_users": a}))
                })
                .collect();
            (id, Value::Object(months))
        })
        .collect();
    json!({"fy": fy_name(fy), "nodes": nodes})
}

/// The `pulse report --user ID` document, or `None` for a user not registered.
pub fn user_report(messages: &[Message], s: &Settings, user: &str, fy: i32) -> Option<Value> {
    let w = world(messages, s);
    let f = users(&w).remove(user)?;
    let count = |p: fn(&CourseFacts) -> bool| f.courses.values().filter(|c| p(c)).count() as i64;
    let courses: Map<String, Value> = f
        .courses
        .iter()
        .map(|(id, c)| {
            let assessment = c.best_score().map(|best| json!({"best_score": best, "passed": c.passed().is_some()}));
            let v = json!({"enrolled": c.enrolled.is_some(), "completed": c.completed.is_some(),
                "percent": c.percent, "minutes": minutes(c.minutes),
                "rating": c.rating.as_ref().map(|r| r.2 as f64 / 1000.0), "assessment": assessment});
            (id.clone(), v)
        })
        .collect();
    Some(json!({
        "user": user,
        "org": f.org,
        "designation": f.designation,
        "fy": fy_name(fy),
        "enrolments": count(|c| c.enrolled.is_some()),
        "completions": count(|c| c.completed.is_some()),
        "in_progress": count(|c| c.enrolled.is_some() && c.completed.is_none()),
        "learning_minutes": minutes(f.courses.values().map(|c| c.minutes).sum()),
        "learning_minutes_fy": minutes(f.minutes_in_fy(fy)),
        "ratings": count(|c| c.rating.is_some()),
        "assessments_passed": count(|c| c.passed().is_some()),
        "courses": courses,
        "plans": plans::user_plans_json(&w, user, &f),
    }))
}

/// Compares two JSON documents; numbers may differ by a relative 1e-9.
/// Returns the path and both values of the first difference.
pub fn json_diff(actual: &Value, expected: &Value) -> Option<String> {
    fn walk(path: &str, a: &Value, e: &Value) -> Option<String> {
        match (a, e) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys()) {
                    let (va, ve) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                    if x.contains_key(k) != y.contains_key(k) {
                        return Some(format!("{path}.{k}: present in only one ({va} vs {ve})"));
                    }
                    if let Some(d) = walk(&format!("{path}.{k}"), va, ve) {
                        return Some(d);
                    }
                }
                None
            }
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
                let close = x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
                (!close).then(|| format!("{path}: {x} vs expected {y}"))
            }
            _ => (a != e).then(|| format!("{path}: {a} vs expected {e}")),
        }
    }
    walk("$", actual, expected)
}
