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

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{Datelike, NaiveDate};
use pulse_model::{
    parse, parse_org, parse_target, Event, EventKind, InputFormat, OrgRecord, OrgUpdate, Parsed, TargetKpi,
    TargetRecord, TargetUpdate, TimeRules,
};
use serde_json::{json, Map, Value};

/// One message as it arrives on a topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event { format: InputFormat, value: Vec<u8> },
    Org { key: Option<Vec<u8>>, value: Option<Vec<u8>> },
    Target { key: Option<Vec<u8>>, value: Option<Vec<u8>> },
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

/// Accepted events, the final registry and the final targets.
struct World {
    events: Vec<Event<'static>>,
    orgs: BTreeMap<String, OrgRecord>,
    targets: BTreeMap<String, TargetRecord>,
}

fn world(messages: &[Message], s: &Settings) -> World {
    let mut w = World { events: vec![], orgs: BTreeMap::new(), targets: BTreeMap::new() };
    let mut ids = HashSet::new();
    for m in messages {
        match m {
            Message::Event { format, value } => {
                if let Ok(Parsed::Event(ev)) = parse(*format, value) {
                    if s.time_rules.check(ev.ts, s.ingest_now).is_ok() && ids.insert(ev.id.to_string()) {
                        w.events.push(ev.into_owned());
                    }
                }
            }
            Message::Org { key, value } => match parse_org(key.as_deref(), value.as_deref()) {
                Ok(OrgUpdate::Upsert(rec)) => {
                    if !closes_cycle(&w.orgs, &rec) {
                        w.orgs.insert(rec.org.clone(), rec);
                    }
                }
                Ok(OrgUpdate::Remove(org)) => {
                    w.orgs.remove(&org);
                }
                Err(_) => {}
            },
            Message::Target { key, value } => match parse_target(key.as_deref(), value.as_deref()) {
                Ok(TargetUpdate::Upsert(t)) => {
                    w.targets.insert(t.id.clone(), t);
                }
                Ok(TargetUpdate::Remove(id)) => {
                    w.targets.remove(&id);
                }
                Err(_) => {}
            },
        }
    }
    w
}

/// Would `rec` make its org its own ancestor?
fn closes_cycle(orgs: &BTreeMap<String, OrgRecord>, rec: &OrgRecord) -> bool {
    let mut seen = BTreeSet::new();
    let mut at = rec.parent.clone();
    while let Some(p) = at {
        if p == rec.org {
            return true;
        }
        if !seen.insert(p.clone()) {
            return false;
        }
        at = orgs.get(&p).and_then(|o| o.parent.clone());
    }
    false
}

/// The chain of nodes from `node` up to `national`, both included.
fn chain(orgs: &BTreeMap<String, OrgRecord>, node: &str) -> Vec<String> {
    let mut out = vec![node.to_string()];
    let mut at = node.to_string();
    while at != "national" {
        at = match orgs.get(&at) {
            None => "national".to_string(), // `unassigned`
            Some(rec) => match &rec.parent {
                None => "national".to_string(),
                Some(p) if orgs.contains_key(p) => p.clone(),
                Some(_) => "unassigned".to_string(),
            },
        };
        out.push(at.clone());
    }
    out
}

/// Everything about one user, recomputed from the user's events.
#[derive(Default)]
struct UserFacts {
    org: Option<String>,
    /// course -> (enrolment time, completion time, minutes ms, max percent, (ts, id, stars))
    courses: BTreeMap<String, CourseFacts>,
    minutes_by_fy: BTreeMap<i32, i64>,
    active_fys: BTreeSet<i32>,
}

#[derive(Default)]
struct CourseFacts {
    enrolled: Option<i64>,
    completed: Option<i64>,
    minutes: i64,
    percent: Option<f64>,
    rating: Option<(i64, String, i64)>,
}

fn user_facts(events: &[&Event<'static>]) -> UserFacts {
    let org = events
        .iter()
        .filter(|e| e.org.is_some())
        .max_by(|a, b| (a.ts, a.id.as_bytes()).cmp(&(b.ts, b.id.as_bytes())))
        .and_then(|e| e.org.as_ref().map(|o| o.to_string()));
    let mut f = UserFacts { org, ..UserFacts::default() };
    for e in events {
        let Some(course) = e.kind.course() else {
            continue;
        };
        f.active_fys.insert(fy_of(e.ts));
        let c = f.courses.entry(course.to_string()).or_default();
        match &e.kind {
            EventKind::Enrolment { .. } => c.enrolled = Some(c.enrolled.map_or(e.ts, |t| t.min(e.ts))),
            EventKind::Completion { .. } => {
                c.enrolled = Some(c.enrolled.map_or(e.ts, |t| t.min(e.ts)));
                c.completed = Some(c.completed.map_or(e.ts, |t| t.min(e.ts)));
            }
            EventKind::Progress { minutes, percent, .. } => {
                c.minutes += minutes.0;
                *f.minutes_by_fy.entry(fy_of(e.ts)).or_default() += minutes.0;
                if let Some(p) = percent {
                    c.percent = Some(c.percent.map_or(*p, |q| q.max(*p)));
                }
            }
            EventKind::Rating { stars, .. } => {
                let newer = c.rating.as_ref().is_none_or(|(ts, id, _)| (e.ts, e.id.as_bytes()) > (*ts, id.as_bytes()));
                if newer {
                    c.rating = Some((e.ts, e.id.to_string(), stars.0));
                }
            }
            EventKind::Registration => {}
        }
    }
    f
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
    enrolments_fy: i64,
    completions_fy: i64,
    minutes_fy: i64,
    active_fy: i64,
    meeting_fy: i64,
}

fn minutes(ms: i64) -> f64 {
    ms as f64 / 60_000.0
}

/// The KPIs that nodes and courses share.
fn course_json(s: &Sums) -> Value {
    json!({
        "enrolments": s.enrolments,
        "completions": s.completions,
        "in_progress": s.enrolments - s.completions,
        "completion_ratio": ratio(s.completions as f64, s.enrolments as f64),
        "learning_minutes": minutes(s.minutes),
        "ratings": s.ratings,
        "average_rating": ratio(s.stars as f64 / 1000.0, s.ratings as f64),
    })
}

fn node_json(s: &Sums, employees: u64) -> Value {
    let users = s.users as f64;
    let mut node = course_json(s);
    let rest = json!({
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
    });
    if let (Value::Object(node), Value::Object(rest)) = (&mut node, rest) {
        node.extend(rest);
    }
    node
}

fn events_by_user<'a>(events: &'a [Event<'static>]) -> BTreeMap<String, Vec<&'a Event<'static>>> {
    let mut by_user: BTreeMap<String, Vec<&'a Event<'static>>> = BTreeMap::new();
    for e in events {
        by_user.entry(e.user.to_string()).or_default().push(e);
    }
    by_user
}

/// Node sums for one financial year: for every user, its facts added to every
/// node of its chain.
fn node_sums(w: &World, fy: i32, meeting_minutes: u32) -> BTreeMap<String, Sums> {
    let mut nodes: BTreeMap<String, Sums> = BTreeMap::new();
    for id in ["national", "unassigned"].into_iter().map(String::from).chain(w.orgs.keys().cloned()) {
        nodes.insert(id, Sums::default());
    }
    for events in events_by_user(&w.events).values() {
        let f = user_facts(events);
        let place = match &f.org {
            Some(o) if w.orgs.contains_key(o) => o.clone(),
            _ => "unassigned".to_string(),
        };
        let enrolled: Vec<i64> = f.courses.values().filter_map(|c| c.enrolled).collect();
        let completed: Vec<i64> = f.courses.values().filter_map(|c| c.completed).collect();
        let ratings: Vec<i64> = f.courses.values().filter_map(|c| c.rating.as_ref().map(|r| r.2)).collect();
        let minutes_fy = f.minutes_by_fy.get(&fy).copied().unwrap_or(0);
        for node in chain(&w.orgs, &place) {
            let s = nodes.get_mut(&node).expect("every chain node is a node");
            s.users += 1;
            s.learners += i64::from(!enrolled.is_empty());
            s.enrolments += enrolled.len() as i64;
            s.completions += completed.len() as i64;
            s.minutes += f.courses.values().map(|c| c.minutes).sum::<i64>();
            s.ratings += ratings.len() as i64;
            s.stars += ratings.iter().sum::<i64>();
            s.enrolments_fy += enrolled.iter().filter(|&&t| fy_of(t) == fy).count() as i64;
            s.completions_fy += completed.iter().filter(|&&t| fy_of(t) == fy).count() as i64;
            s.minutes_fy += minutes_fy;
            s.active_fy += i64::from(f.active_fys.contains(&fy));
            s.meeting_fy += i64::from(minutes_fy > 0 && minutes_fy >= i64::from(meeting_minutes) * 60_000);
        }
    }
    nodes
}

fn employees(w: &World, node: &str) -> u64 {
    w.orgs.values().filter(|o| chain(&w.orgs, &o.org).iter().any(|n| n == node)).map(|o| o.employees).sum()
}

/// The `pulse report --all` document for these messages.
pub fn report(messages: &[Message], s: &Settings, fy: i32, now: i64) -> Value {
    let w = world(messages, s);
    let sums = node_sums(&w, fy, s.meeting_minutes);
    let mut nodes = Map::new();
    for (id, sum) in &sums {
        nodes.insert(id.clone(), node_json(sum, employees(&w, id)));
    }

    let mut courses: BTreeMap<String, Sums> = BTreeMap::new();
    for events in events_by_user(&w.events).values() {
        for (id, c) in user_facts(events).courses {
            let s = courses.entry(id).or_default();
            s.enrolments += i64::from(c.enrolled.is_some());
            s.completions += i64::from(c.completed.is_some());
            s.minutes += c.minutes;
            s.ratings += i64::from(c.rating.is_some());
            s.stars += c.rating.map_or(0, |r| r.2);
        }
    }
    let courses: Map<String, Value> = courses
        .into_iter()
        .map(|(id, s)| {
            let v = course_json(&s);
            (id, v)
        })
        .collect();

    let mut targets = Map::new();
    for (id, t) in &w.targets {
        let target_fy = t.fy.0;
        let actual = if sums.contains_key(&t.org) {
            let node = node_sums(&w, target_fy, s.meeting_minutes).remove(&t.org).unwrap_or_default();
            let kpis = node_json(&node, employees(&w, &t.org));
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
    json!({"fy": fy_name(fy), "nodes": nodes, "courses": courses, "targets": targets})
}

/// The `pulse report --user ID` document, or `None` for a user without events.
pub fn user_report(messages: &[Message], s: &Settings, user: &str, fy: i32) -> Option<Value> {
    let w = world(messages, s);
    let by_user = events_by_user(&w.events);
    let f = user_facts(by_user.get(user)?);
    let count = |p: fn(&CourseFacts) -> bool| f.courses.values().filter(|c| p(c)).count() as i64;
    let courses: Map<String, Value> = f
        .courses
        .iter()
        .map(|(id, c)| {
            let v = json!({"enrolled": c.enrolled.is_some(), "completed": c.completed.is_some(),
                "percent": c.percent, "minutes": minutes(c.minutes),
                "rating": c.rating.as_ref().map(|r| r.2 as f64 / 1000.0)});
            (id.clone(), v)
        })
        .collect();
    Some(json!({
        "user": user,
        "org": f.org,
        "fy": fy_name(fy),
        "enrolments": count(|c| c.enrolled.is_some()),
        "completions": count(|c| c.completed.is_some()),
        "in_progress": count(|c| c.enrolled.is_some() && c.completed.is_none()),
        "learning_minutes": minutes(f.courses.values().map(|c| c.minutes).sum()),
        "learning_minutes_fy": minutes(f.minutes_by_fy.get(&fy).copied().unwrap_or(0)),
        "ratings": count(|c| c.rating.is_some()),
        "courses": courses,
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
