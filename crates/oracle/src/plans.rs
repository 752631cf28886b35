//! Capacity-building plans (contract section 14), recomputed from the final
//! plans, registry, profiles and events: for every plan, every node of its
//! subtree, every registered user; no index, no increments.

use std::collections::BTreeMap;

use pulse_model::time::format_ist;
use pulse_model::{Assign, PlanRecord};
use serde_json::{json, Map, Value};

use crate::facts::UserFacts;
use crate::world::{chain, World};

/// One assigned user's standing in one plan.
pub(crate) struct Standing {
    pub(crate) courses: i64,
    pub(crate) completed: i64,
    pub(crate) on_time: i64,
    pub(crate) compliant: bool,
}

/// The node a user counts under: its current org if registered, else `unassigned`.
fn place(w: &World, f: &UserFacts) -> String {
    match &f.org {
        Some(o) if w.orgs.contains_key(o) => o.clone(),
        _ => "unassigned".to_string(),
    }
}

/// Whether the plan's org is a node a plan may name: a registered org or `national`.
fn covers(w: &World, p: &PlanRecord) -> bool {
    p.org == "national" || w.orgs.contains_key(&p.org)
}

/// Whether `p` is assigned to user `id`, and its standing if so.
pub(crate) fn standing(w: &World, p: &PlanRecord, id: &str, f: &UserFacts) -> Option<Standing> {
    if !covers(w, p) || !chain(&w.orgs, &place(w, f)).contains(&p.org) {
        return None;
    }
    let assigned = match &p.assign {
        Assign::All => true,
        Assign::Designations(d) => f.designation.as_ref().is_some_and(|mine| d.contains(mine)),
        Assign::Users(u) => u.contains(id),
    };
    if !assigned {
        return None;
    }
    let completions: Vec<i64> =
        p.courses.iter().filter_map(|c| f.courses.get(c).and_then(|facts| facts.completed)).collect();
    let on_time = completions.iter().filter(|&&t| t <= p.due).count() as i64;
    let n = p.courses.len() as i64;
    // ceil(min_share * n), a product a hair over a whole number counting as
    // that number (docs/CONTRACT-NOTES.md).
    let needed = (p.min_share * n as f64 - 1e-9).ceil();
    Some(Standing { courses: n, completed: completions.len() as i64, on_time, compliant: on_time as f64 >= needed })
}

fn ratio(a: i64, b: i64) -> Value {
    if b == 0 {
        Value::Null
    } else {
        json!(a as f64 / b as f64)
    }
}

/// The report's `plans` section at `now`.
pub(crate) fn plans_json(w: &World, users: &BTreeMap<String, UserFacts>, now: i64) -> Map<String, Value> {
    let mut out = Map::new();
    for (id, p) in &w.plans {
        let nodes: Vec<String> = ["national", "unassigned"]
            .into_iter()
            .map(String::from)
            .chain(w.orgs.keys().cloned())
            .filter(|node| covers(w, p) && chain(&w.orgs, node).contains(&p.org))
            .collect();
        let expected = ((now - p.start) as f64 / (p.due - p.start) as f64).clamp(0.0, 1.0);
        let mut node_kpis = Map::new();
        for node in nodes {
            let (mut users_n, mut assigned, mut completed, mut on_time, mut compliant) = (0, 0, 0, 0, 0);
            for (uid, f) in users {
                if !chain(&w.orgs, &place(w, f)).contains(&node) {
                    continue;
                }
                let Some(s) = standing(w, p, uid, f) else { continue };
                users_n += 1;
                assigned += s.courses;
                completed += s.completed;
                on_time += s.on_time;
                compliant += i64::from(s.compliant);
            }
            let completion = ratio(completed, assigned);
            let progress = match completion.as_f64() {
                Some(c) if expected > 0.0 => json!(c / expected),
                _ => Value::Null,
            };
            node_kpis.insert(
                node,
                json!({
                    "users": users_n,
                    "courses_assigned": assigned,
                    "courses_completed": completed,
                    "courses_completed_on_time": on_time,
                    "courses_overdue": if now > p.due { assigned - completed } else { 0 },
                    "users_compliant": compliant,
                    "compliance_ratio": ratio(compliant, users_n),
                    "completion_ratio": completion,
                    "expected_ratio": expected,
                    "progress": progress,
                }),
            );
        }
        out.insert(
            id.clone(),
            json!({"org": p.org, "start": format_ist(p.start), "due": format_ist(p.due), "min_share": p.min_share,
                   "courses": p.courses.len(), "nodes": node_kpis}),
        );
    }
    out
}

/// A user's `plans`: every plan assigned to it, with its standing.
pub(crate) fn user_plans_json(w: &World, id: &str, f: &UserFacts) -> Map<String, Value> {
    w.plans
        .iter()
        .filter_map(|(pid, p)| {
            let s = standing(w, p, id, f)?;
            Some((
                pid.clone(),
                json!({"courses": s.courses, "completed": s.completed, "on_time": s.on_time, "compliant": s.compliant}),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use pulse_model::{InputFormat, TimeRules};
    use serde_json::json;

    use crate::{report, user_report, Message, Settings};

    fn record(v: serde_json::Value) -> Option<Vec<u8>> {
        Some(v.to_string().into_bytes())
    }

    fn event(id: &str, ts: i64, user: &str, org: &str, kind: &str, course: &str) -> Message {
        let v = json!({"v": 1, "id": id, "type": kind, "ts": ts, "user": user, "org": org, "course": course});
        Message::Event { format: InputFormat::PulseV1, key: None, value: v.to_string().into_bytes() }
    }

    /// Checked by hand: plan `p` of M (two courses, due at 1000, half to
    /// comply) over u1 (M_D: both courses, one late), u2 (M: one on time,
    /// the Section Officer), u3 (another ministry).
    #[test]
    fn a_plan_counts_its_assigned_users_under_every_node_of_its_subtree() {
        let s =
            Settings { meeting_minutes: 600, time_rules: TimeRules { max_age_ms: i64::MAX / 4 }, ingest_now: 10_000 };
        let mut messages = vec![
            Message::Org { key: None, value: record(json!({"v": 1, "org": "M"})) },
            Message::Org { key: None, value: record(json!({"v": 1, "org": "M_D", "parent": "M"})) },
            Message::Org { key: None, value: record(json!({"v": 1, "org": "N"})) },
            event("e1", 100, "u1", "M_D", "completion", "a"),
            event("e2", 2000, "u1", "M_D", "completion", "b"),
            event("e3", 500, "u2", "M", "completion", "a"),
            event("e4", 100, "u3", "N", "completion", "a"),
        ];
        let plan = |assign| Message::Plan {
            key: None,
            value: record(json!({"v": 1, "id": "p", "org": "M", "courses": ["a", "b"], "assign": assign,
                                     "start": 0, "due": 1000})),
        };
        messages.push(plan(json!({"to": "all"})));
        let r = report(&messages, &s, 1970, 500);
        let m = &r["plans"]["p"]["nodes"]["M"];
        assert_eq!(r["plans"]["p"]["nodes"].as_object().unwrap().len(), 2, "M and M_D only");
        assert_eq!(
            (&m["users"], &m["courses_assigned"], &m["courses_completed"], &m["courses_completed_on_time"]),
            (&json!(2), &json!(4), &json!(3), &json!(2))
        );
        assert_eq!(
            (&m["users_compliant"], &m["expected_ratio"], &m["courses_overdue"]),
            (&json!(2), &json!(0.5), &json!(0))
        );
        assert_eq!(m["progress"], json!(0.75 / 0.5));
        let d = &r["plans"]["p"]["nodes"]["M_D"];
        assert_eq!((&d["users"], &d["courses_completed_on_time"]), (&json!(1), &json!(1)));
        let late = report(&messages, &s, 1970, 5000);
        assert_eq!(late["plans"]["p"]["nodes"]["M"]["courses_overdue"], json!(1));

        // By designation: only u2's profile names one.
        messages.push(Message::Event {
            format: InputFormat::UserProfile,
            key: None,
            value: json!({"v": 1, "user": "u2", "org": "M", "designation": "Section Officer", "ts": 1})
                .to_string()
                .into_bytes(),
        });
        messages.push(plan(json!({"to": "designations", "designations": ["Section Officer"]})));
        let r = report(&messages, &s, 1970, 500);
        assert_eq!(r["plans"]["p"]["nodes"]["M"]["users"], json!(1));
        assert_eq!(r["plans"]["p"]["nodes"]["M_D"]["users"], json!(0));
        let u2 = user_report(&messages, &s, "u2", 1970).unwrap();
        assert_eq!(u2["plans"]["p"], json!({"courses": 2, "completed": 1, "on_time": 1, "compliant": true}));
        assert_eq!(user_report(&messages, &s, "u1", 1970).unwrap()["plans"], json!({}));
    }
}
