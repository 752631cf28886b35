//! `pulse-v1`, the native event format (contract section 2).

use serde::Deserialize;

use crate::event::{percent, Event, EventKind, Minutes, Parsed, Stars};
use crate::flat::read_flat;
use crate::reject::Rejection;
use crate::scalar::{json_object, number, text, version_1, Scalar};
use crate::time::{parse_rfc3339, Millis};

#[derive(Default, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Scalar<'a>>,
    #[serde(borrow)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow)]
    user: Option<Scalar<'a>>,
    #[serde(borrow)]
    org: Option<Scalar<'a>>,
    #[serde(borrow)]
    course: Option<Scalar<'a>>,
    #[serde(borrow)]
    minutes: Option<Scalar<'a>>,
    #[serde(borrow)]
    percent: Option<Scalar<'a>>,
    #[serde(borrow)]
    stars: Option<Scalar<'a>>,
    #[serde(borrow)]
    score: Option<Scalar<'a>>,
    #[serde(borrow)]
    pass: Option<Scalar<'a>>,
}

/// Reads the fields, flat messages without serde (`crate::flat`).
fn read(value: &[u8]) -> Result<Raw<'_>, Rejection> {
    let mut raw = Raw::default();
    let mut seen = 0u16;
    let flat = read_flat(value, |key, v| {
        let (bit, slot) = match key {
            "v" => (0, &mut raw.v),
            "id" => (1, &mut raw.id),
            "type" => (2, &mut raw.kind),
            "ts" => (3, &mut raw.ts),
            "user" => (4, &mut raw.user),
            "org" => (5, &mut raw.org),
            "course" => (6, &mut raw.course),
            "minutes" => (7, &mut raw.minutes),
            "percent" => (8, &mut raw.percent),
            "stars" => (9, &mut raw.stars),
            "score" => (10, &mut raw.score),
            "pass" => (11, &mut raw.pass),
            // Serde skips unknown fields too.
            _ => return true,
        };
        // A repeated field is serde's to refuse.
        let first = seen & (1 << bit) == 0;
        seen |= 1 << bit;
        *slot = v;
        first
    });
    match flat {
        Some(()) => Ok(raw),
        None => json_object(value),
    }
}

pub(crate) fn parse(value: &[u8]) -> Result<Parsed<'_>, Rejection> {
    let raw = read(value)?;
    version_1("v", raw.v)?;
    let id = text("id", raw.id)?;
    let kind_name = text("type", raw.kind)?;
    let ts = event_time(raw.ts)?;
    let user = text("user", raw.user)?;
    let org = text("org", raw.org)?;
    let kind = match &*kind_name {
        "registration" => EventKind::Registration,
        "enrolment" => EventKind::Enrolment { course: text("course", raw.course)? },
        "completion" => EventKind::Completion { course: text("course", raw.course)? },
        "progress" => EventKind::Progress {
            course: text("course", raw.course)?,
            minutes: Minutes::new("minutes", number("minutes", raw.minutes)?)?,
            percent: raw.percent.map(|p| percent("percent", number("percent", Some(p))?)).transpose()?,
        },
        "rating" => EventKind::Rating {
            course: text("course", raw.course)?,
            stars: Stars::new("stars", number("stars", raw.stars)?)?,
        },
        "assessment" => EventKind::Assessment {
            course: text("course", raw.course)?,
            score: score(raw.score)?,
            pass: match raw.pass {
                None => return Err(Rejection::missing("pass")),
                Some(Scalar::Bool(b)) => b,
                Some(other) => {
                    return Err(Rejection::invalid("pass", format_args!("must be a boolean, not {}", other.kind())))
                }
            },
        },
        other => {
            return Err(Rejection::invalid(
                "type",
                format_args!(
                    "`{other}` is not one of registration, enrolment, progress, completion, rating, assessment"
                ),
            ))
        }
    };
    Ok(Parsed::Event(Event { id, ts, user, org: Some(org), kind }))
}

/// An assessment's `score`: a number from 0 to 100.
fn score(v: Option<Scalar<'_>>) -> Result<f64, Rejection> {
    let score = number("score", v)?;
    if !(0.0..=100.0).contains(&score) {
        return Err(Rejection::invalid("score", format_args!("must be between 0 and 100, it is {score}")));
    }
    Ok(score)
}

/// `ts`: an RFC 3339 string with an offset, or integer epoch milliseconds.
pub(crate) fn event_time(v: Option<Scalar<'_>>) -> Result<Millis, Rejection> {
    time_field("ts", v)
}

/// A time written as `ts` is, in the field `field`.
pub(crate) fn time_field(field: &str, v: Option<Scalar<'_>>) -> Result<Millis, Rejection> {
    match v {
        None => Err(Rejection::missing(field)),
        Some(Scalar::Str(s)) => parse_rfc3339(&s)
            .ok_or_else(|| Rejection::invalid(field, format_args!("`{s}` is not an RFC 3339 time with an offset"))),
        Some(other) => other.as_integer().ok_or_else(|| {
            Rejection::invalid(
                field,
                format_args!("must be an RFC 3339 string or integer epoch milliseconds, not {}", other.kind()),
            )
        }),
    }
}
