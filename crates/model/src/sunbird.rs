//! `sunbird-telemetry`: the Sunbird Telemetry v3 envelope (contract section 3.1).

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{percent, Event, EventKind, Minutes, Parsed, Stars};
use crate::reject::{Reason, Rejection};
use crate::scalar::{json_object, number, text, Scalar};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    eid: Option<Scalar<'a>>,
    #[serde(borrow)]
    ets: Option<Scalar<'a>>,
    #[serde(borrow)]
    ver: Option<Scalar<'a>>,
    #[serde(borrow)]
    mid: Option<Scalar<'a>>,
    #[serde(borrow)]
    actor: Option<Actor<'a>>,
    #[serde(borrow)]
    context: Option<Context<'a>>,
    #[serde(borrow)]
    object: Option<Object<'a>>,
    #[serde(borrow)]
    edata: Option<Edata<'a>>,
}

#[derive(Deserialize)]
struct Actor<'a> {
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow)]
    channel: Option<Scalar<'a>>,
    #[serde(borrow)]
    cdata: Option<First<Cdata<'a>>>,
}

#[derive(Deserialize)]
struct Cdata<'a> {
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Object<'a> {
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow)]
    rollup: Option<Rollup<'a>>,
}

#[derive(Deserialize)]
struct Rollup<'a> {
    #[serde(borrow)]
    l1: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Edata<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Scalar<'a>>,
    #[serde(borrow)]
    duration: Option<Scalar<'a>>,
    #[serde(borrow)]
    summary: Option<First<SummaryEntry<'a>>>,
    #[serde(borrow)]
    rating: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct SummaryEntry<'a> {
    #[serde(borrow)]
    progress: Option<Scalar<'a>>,
}

/// The first entry of an array that [`Wanted`] picks, read without
/// collecting the array (this is the hot path of the platform's own format).
struct First<T>(Option<T>);

trait Wanted {
    fn wanted(&self) -> bool;
}

/// The course entry of `context.cdata`.
impl Wanted for Cdata<'_> {
    fn wanted(&self) -> bool {
        matches!(&self.kind, Some(Scalar::Str(k)) if k == "Course")
    }
}

/// The first `edata.summary` entry with a progress.
impl Wanted for SummaryEntry<'_> {
    fn wanted(&self) -> bool {
        self.progress.is_some()
    }
}

impl<'de, T: Deserialize<'de> + Wanted> Deserialize<'de> for First<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Wanted> serde::de::Visitor<'de> for Entries<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // As serde's own reader of a `Vec` says it.
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let mut first = None;
                while let Some(entry) = seq.next_element::<T>()? {
                    if first.is_none() && entry.wanted() {
                        first = Some(entry);
                    }
                }
                Ok(First(first))
            }
        }
        d.deserialize_seq(Entries(std::marker::PhantomData))
    }
}

/// What an envelope maps to, before its fields are checked.
enum Mapping {
    Enrolment,
    Completion,
    Progress,
    Rating,
}

pub(crate) fn parse(value: &[u8]) -> Result<Parsed<'_>, Rejection> {
    let env: Envelope<'_> = json_object(value)?;
    match env.ver {
        None => return Err(Rejection::missing("ver")),
        Some(Scalar::Str(v)) if v == "3.0" || v == "3.1" => {}
        Some(Scalar::Str(v)) => {
            return Err(Rejection::new(
                Reason::UnsupportedVersion,
                format!("`ver` is \"{v}\", this Pulse reads Telemetry v3 (\"3.0\" or \"3.1\")"),
            ))
        }
        Some(other) => {
            return Err(Rejection::invalid(
                "ver",
                format_args!("must be the string \"3.0\" or \"3.1\", not {}", other.kind()),
            ))
        }
    }
    let eid = text("eid", env.eid)?;
    let edata = env.edata;
    let edata_type = edata.as_ref().and_then(|e| match &e.kind {
        Some(Scalar::Str(s)) => Some(&**s),
        _ => None,
    });
    let mapping = match (&*eid, edata_type) {
        ("AUDIT", Some("enrol")) => Mapping::Enrolment,
        ("AUDIT", Some("enrol-complete")) => Mapping::Completion,
        ("END", _)
            if edata.as_ref().and_then(|e| e.duration.as_ref()).and_then(Scalar::as_f64).is_some_and(|d| d > 0.0) =>
        {
            Mapping::Progress
        }
        ("FEEDBACK", _) if edata.as_ref().is_some_and(|e| e.rating.is_some()) => Mapping::Rating,
        ("AUDIT", _) => return Ok(Parsed::Ignored("sunbird AUDIT event with an unmapped edata.type")),
        ("END", _) => return Ok(Parsed::Ignored("sunbird END event without a positive edata.duration")),
        ("FEEDBACK", _) => return Ok(Parsed::Ignored("sunbird FEEDBACK event without edata.rating")),
        _ => return Ok(Parsed::Ignored("sunbird event with an unmapped eid")),
    };

    let id = text("mid", env.mid)?;
    let ts = match env.ets {
        None => return Err(Rejection::missing("ets")),
        Some(Scalar::Int(ms)) => ms,
        Some(other) => {
            return Err(Rejection::invalid(
                "ets",
                format_args!("must be integer epoch milliseconds, not {}", other.kind()),
            ))
        }
    };
    let user = text("actor.id", env.actor.and_then(|a| a.id))?;
    let (channel, cdata) = match env.context {
        Some(c) => (c.channel, c.cdata),
        None => (None, None),
    };
    let org = text("context.channel", channel)?;
    let (object_id, rollup_l1) = match env.object {
        Some(o) => (o.id, o.rollup.and_then(|r| r.l1)),
        None => (None, None),
    };
    let edata = edata.unwrap_or(Edata { kind: None, duration: None, summary: None, rating: None });

    let kind = match mapping {
        Mapping::Enrolment => EventKind::Enrolment { course: audit_course(cdata, rollup_l1)? },
        Mapping::Completion => EventKind::Completion { course: audit_course(cdata, rollup_l1)? },
        Mapping::Progress => {
            let seconds = number("edata.duration", edata.duration)?;
            let progress = edata.summary.and_then(|s| s.0).and_then(|s| s.progress);
            EventKind::Progress {
                course: match rollup_l1 {
                    Some(l1) => text("object.rollup.l1", Some(l1))?,
                    None => text("object.id", object_id)?,
                },
                minutes: Minutes::new("edata.duration", seconds / 60.0)?,
                percent: progress
                    .map(|p| percent("edata.summary.progress", number("edata.summary.progress", Some(p))?))
                    .transpose()?,
            }
        }
        Mapping::Rating => EventKind::Rating {
            course: text("object.id", object_id)?,
            stars: Stars::new("edata.rating", number("edata.rating", edata.rating)?)?,
        },
    };
    Ok(Parsed::Event(Event { id, ts, user, org: Some(org), kind }))
}

/// An AUDIT event's course: the `context.cdata` entry of type `Course`, else
/// `object.rollup.l1`.
fn audit_course<'a>(cdata: Option<First<Cdata<'a>>>, rollup_l1: Option<Scalar<'a>>) -> Result<Cow<'a, str>, Rejection> {
    match (cdata.and_then(|c| c.0), rollup_l1) {
        (Some(c), _) => text("context.cdata[type=Course].id", c.id),
        (None, Some(l1)) => text("object.rollup.l1", Some(l1)),
        (None, None) => Err(Rejection::missing("context.cdata[type=Course].id or object.rollup.l1")),
    }
}
