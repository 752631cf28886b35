//! Records of the `pulse.plans` topic: Annual Capacity Building Plans
//! (contract section 14), and who they are assigned to.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::records::{check_key, tombstone_key};
use crate::reject::Rejection;
use crate::scalar::{check_text, json_object, number, text, version_1, Scalar};
use crate::time::{Fy, Millis};
use crate::v1::time_field;

/// A plan record may be up to 1 MiB (up to 50,000 user ids), past the
/// 64 KiB of other messages.
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;
const MAX_COURSES: usize = 1000;
const MAX_DESIGNATIONS: usize = 100;
const MAX_USERS: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub id: String,
    /// A registered org or `national`: the plan covers that node's subtree.
    pub org: String,
    /// Distinct, sorted.
    pub courses: Vec<String>,
    pub assign: Assign,
    pub start: Millis,
    pub due: Millis,
    /// In (0, 1].
    pub min_share: f64,
}

/// Whom, under the plan's org, the plan is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assign {
    All,
    Designations(BTreeSet<String>),
    Users(BTreeSet<String>),
}

impl PlanRecord {
    /// Whether a user under the plan's org is assigned the plan.
    pub fn assigns(&self, user: &str, designation: Option<&str>) -> bool {
        match &self.assign {
            Assign::All => true,
            Assign::Designations(d) => designation.is_some_and(|d2| d.contains(d2)),
            Assign::Users(u) => u.contains(user),
        }
    }

    /// The courses a user must complete on time to comply:
    /// `ceil(min_share * n)`, where a product that binary fractions make a
    /// hair over a whole number (0.3 * 10 = 3.0000000000000004) counts as
    /// that number (docs/CONTRACT-NOTES.md).
    pub fn courses_to_comply(&self) -> u32 {
        (self.min_share * self.courses.len() as f64 - 1e-9).ceil().max(0.0) as u32
    }

    /// `(now - start) / (due - start)`, clamped to 0..=1.
    pub fn expected_ratio(&self, now: Millis) -> f64 {
        ((now - self.start) as f64 / (self.due - self.start) as f64).clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanUpdate {
    Upsert(PlanRecord),
    Remove(String),
}

#[derive(Deserialize)]
struct RawPlan<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow)]
    org: Option<Scalar<'a>>,
    courses: Option<Value>,
    assign: Option<Value>,
    #[serde(borrow)]
    start: Option<Scalar<'a>>,
    #[serde(borrow)]
    due: Option<Scalar<'a>>,
    #[serde(borrow)]
    min_share: Option<Scalar<'a>>,
}

/// Parses one `pulse.plans` message; the key, when present, must equal `id`.
pub fn parse_plan(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<PlanUpdate, Rejection> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(PlanUpdate::Remove(tombstone_key(key)?));
    };
    crate::check_size_at_most(value, MAX_PLAN_BYTES)?;
    let raw: RawPlan<'_> = json_object(value)?;
    version_1("v", raw.v)?;
    let id = text("id", raw.id)?.into_owned();
    check_key(key, &id, "id")?;
    let org = text("org", raw.org)?.into_owned();
    let courses: Vec<String> = strings("courses", raw.courses, 1..=MAX_COURSES)?.into_iter().collect();
    let assign = assign(raw.assign)?;
    let due = time_field("due", raw.due)?;
    let start = match raw.start {
        None => Fy::of(due).start(),
        Some(s) => time_field("start", Some(s))?,
    };
    if start >= due {
        return Err(Rejection::invalid("start", "must be before `due`"));
    }
    let min_share = match raw.min_share {
        None => 0.5,
        Some(v) => match number("min_share", Some(v))? {
            x if x > 0.0 && x <= 1.0 => x,
            x => return Err(Rejection::invalid("min_share", format_args!("must be in (0, 1], it is {x}"))),
        },
    };
    Ok(PlanUpdate::Upsert(PlanRecord { id, org, courses, assign, start, due, min_share }))
}

fn assign(v: Option<Value>) -> Result<Assign, Rejection> {
    let Value::Object(mut a) = v.ok_or_else(|| Rejection::missing("assign"))? else {
        return Err(Rejection::invalid("assign", "must be an object with `to`"));
    };
    match a.remove("to") {
        None => Err(Rejection::missing("assign.to")),
        Some(Value::String(to)) if to == "all" => Ok(Assign::All),
        Some(Value::String(to)) if to == "designations" => {
            Ok(Assign::Designations(strings("assign.designations", a.remove("designations"), 1..=MAX_DESIGNATIONS)?))
        }
        Some(Value::String(to)) if to == "users" => {
            Ok(Assign::Users(strings("assign.users", a.remove("users"), 1..=MAX_USERS)?))
        }
        Some(other) => Err(Rejection::invalid(
            "assign.to",
            format_args!("must be \"all\", \"designations\" or \"users\", not {other}"),
        )),
    }
}

/// An array of 1..=128-character strings, with `count` distinct ones.
fn strings(
    field: &str,
    v: Option<Value>,
    count: std::ops::RangeInclusive<usize>,
) -> Result<BTreeSet<String>, Rejection> {
    let Value::Array(items) = v.ok_or_else(|| Rejection::missing(field))? else {
        return Err(Rejection::invalid(field, "must be an array of strings"));
    };
    let mut set = BTreeSet::new();
    for item in items {
        let Value::String(s) = item else {
            return Err(Rejection::invalid(field, format_args!("must hold strings only, not {item}")));
        };
        set.insert(check_text(field, s.into())?.into_owned());
    }
    if !count.contains(&set.len()) {
        return Err(Rejection::invalid(
            field,
            format_args!("must hold {} to {} distinct strings, it holds {}", count.start(), count.end(), set.len()),
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    fn plan(json: &str) -> Result<PlanRecord, Rejection> {
        match parse_plan(None, Some(json.as_bytes()))? {
            PlanUpdate::Upsert(p) => Ok(p),
            PlanUpdate::Remove(_) => unreachable!(),
        }
    }

    #[test]
    fn a_plan_reads_with_its_defaults() {
        let p = plan(r#"{"v":1,"id":"p","org":"M_1","courses":["b","a","b"],"assign":{"to":"all"},"due":"2026-03-31T23:59:59+05:30"}"#)
            .unwrap();
        assert_eq!(p.courses, ["a", "b"]);
        assert_eq!(p.start, Fy(2025).start());
        assert_eq!((p.min_share, p.courses_to_comply()), (0.5, 1));
        assert!(p.assigns("anyone", None));
    }

    #[test]
    fn compliance_rounds_up_but_not_past_a_whole_product() {
        let mut p = plan(r#"{"v":1,"id":"p","org":"M_1","courses":["a"],"assign":{"to":"all"},"due":1000,"start":0,"min_share":0.3}"#).unwrap();
        p.courses = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(p.courses_to_comply(), 3);
        p.courses.truncate(7);
        assert_eq!(p.courses_to_comply(), 3, "0.3 * 7 = 2.1 rounds up");
        assert_eq!((p.expected_ratio(-5), p.expected_ratio(250), p.expected_ratio(5000)), (0.0, 0.25, 1.0));
    }

    #[test]
    fn bad_plans_name_the_field() {
        let base = r#""v":1,"id":"p","org":"M_1","courses":["a"],"due":1000"#;
        for (json, reason, field) in [
            (format!(r#"{{{base}}}"#), Reason::MissingField, "assign"),
            (format!(r#"{{{base},"assign":{{"to":"some"}}}}"#), Reason::InvalidField, "assign.to"),
            (format!(r#"{{{base},"assign":{{"to":"designations"}}}}"#), Reason::MissingField, "assign.designations"),
            (format!(r#"{{{base},"assign":{{"to":"users","users":[]}}}}"#), Reason::InvalidField, "assign.users"),
            (format!(r#"{{{base},"assign":{{"to":"all"}},"start":2000}}"#), Reason::InvalidField, "start"),
            (format!(r#"{{{base},"assign":{{"to":"all"}},"min_share":0}}"#), Reason::InvalidField, "min_share"),
            (
                r#"{"v":1,"id":"p","org":"M_1","courses":[1],"assign":{"to":"all"},"due":1}"#.to_owned(),
                Reason::InvalidField,
                "courses",
            ),
            (
                r#"{"v":1,"id":"p","org":"M_1","courses":["a"],"assign":{"to":"all"},"due":"soon"}"#.to_owned(),
                Reason::InvalidField,
                "due",
            ),
        ] {
            let e = plan(&json).unwrap_err();
            assert_eq!(e.reason, reason, "{json}: {e:?}");
            assert!(e.detail.contains(field), "{json}: {}", e.detail);
        }
        let many = format!(
            r#"{{"v":1,"id":"p","org":"M","courses":["{}"],"assign":{{"to":"all"}},"due":1}}"#,
            "x".repeat(MAX_PLAN_BYTES)
        );
        assert_eq!(plan(&many).unwrap_err().reason, Reason::TooLarge);
    }

    #[test]
    fn a_tombstone_and_a_key_name_the_plan() {
        assert_eq!(parse_plan(Some(b"p"), None).unwrap(), PlanUpdate::Remove("p".into()));
        let e = parse_plan(
            Some(b"q"),
            Some(br#"{"v":1,"id":"p","org":"M","courses":["a"],"assign":{"to":"all"},"due":1}"#),
        );
        assert_eq!(e.unwrap_err().reason, Reason::InvalidField);
    }
}
