//! `user-profile`: the user service's profiles (contract section 10), keyed
//! by user id on a compacted topic. A record becomes an [`EventKind::Profile`]
//! with the empty id; an empty value is a tombstone.

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{Event, EventKind, Parsed};
use crate::reject::Rejection;
use crate::scalar::{check_text, json_object, text, version_1, Scalar, MAX_TEXT_CHARS};
use crate::v1::event_time;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    user: Option<Scalar<'a>>,
    #[serde(borrow)]
    org: Option<Scalar<'a>>,
    #[serde(borrow)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow)]
    designation: Option<Scalar<'a>>,
}

pub(crate) fn parse<'a>(key: Option<&'a [u8]>, value: &'a [u8]) -> Result<Parsed<'a>, Rejection> {
    if value.is_empty() {
        let user = crate::records::tombstone_key(key)?;
        let user = check_text("key", Cow::Owned(user))?;
        return Ok(Parsed::Event(Event {
            id: Cow::Borrowed(""),
            ts: i64::MIN,
            user,
            org: None,
            kind: EventKind::ProfileRemoved,
        }));
    }
    let raw: Raw<'a> = json_object(value)?;
    version_1("v", raw.v)?;
    let user = text("user", raw.user)?;
    crate::records::check_key(key, &user, "user")?;
    let org = text("org", raw.org)?;
    let ts = event_time(raw.ts)?;
    let designation = match raw.designation {
        None => None,
        Some(Scalar::Str(d)) if d.is_empty() => None,
        Some(Scalar::Str(d)) if d.chars().count() <= MAX_TEXT_CHARS => Some(d),
        Some(Scalar::Str(_)) => {
            return Err(Rejection::invalid(
                "designation",
                format_args!("must have at most {MAX_TEXT_CHARS} characters"),
            ))
        }
        Some(other) => {
            return Err(Rejection::invalid("designation", format_args!("must be a string, not {}", other.kind())))
        }
    };
    Ok(Parsed::Event(Event {
        id: Cow::Borrowed(""),
        ts,
        user,
        org: Some(org),
        kind: EventKind::Profile { designation },
    }))
}
