//! `igot-rating`: the iGOT rating service's events (contract section 3.2).

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{Event, EventKind, Parsed, Stars};
use crate::reject::Rejection;
use crate::scalar::{json_object, number, text, version_1, Scalar};
use crate::time::Millis;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    version: Option<Scalar<'a>>,
    #[serde(borrow)]
    action: Option<Scalar<'a>>,
    #[serde(borrow)]
    activity_id: Option<Scalar<'a>>,
    #[serde(borrow, rename = "activity_Type")]
    activity_type: Option<Scalar<'a>>,
    #[serde(borrow)]
    user_id: Option<Scalar<'a>>,
    #[serde(borrow, rename = "updatedValues")]
    updated: Option<Updated<'a>>,
}

#[derive(Deserialize)]
struct Updated<'a> {
    #[serde(borrow, rename = "updatedOn")]
    updated_on: Option<Scalar<'a>>,
    #[serde(borrow)]
    rating: Option<Scalar<'a>>,
}

pub(crate) fn parse(value: &[u8]) -> Result<Parsed<'_>, Rejection> {
    let raw: Raw<'_> = json_object(value)?;
    version_1("version", raw.version)?;
    let action = text("action", raw.action)?;
    if action != "ratingAdd" && action != "ratingUpdate" {
        return Ok(Parsed::Ignored("igot rating action other than ratingAdd or ratingUpdate"));
    }
    let activity_type = text("activity_Type", raw.activity_type)?;
    if activity_type != "Course" {
        return Ok(Parsed::Ignored("igot rating of an activity that is not a Course"));
    }
    let course = text("activity_id", raw.activity_id)?;
    let user = text("user_id", raw.user_id)?;
    let updated = raw.updated.ok_or_else(|| Rejection::missing("updatedValues"))?;
    let updated_on = text("updatedValues.updatedOn", updated.updated_on)?;
    let ts = uuid_v1_millis(&updated_on).ok_or_else(|| {
        Rejection::invalid("updatedValues.updatedOn", format_args!("`{updated_on}` is not a version-1 (time) UUID"))
    })?;
    let stars = Stars::new("updatedValues.rating", number("updatedValues.rating", updated.rating)?)?;
    // The id is derived, not a message field, so the 128-character limit of
    // contract section 2 does not apply to it.
    let id = Cow::Owned(format!("{user}|{course}|{updated_on}"));
    Ok(Parsed::Event(Event { id, ts, user, org: None, kind: EventKind::Rating { course, stars } }))
}

/// 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
const UUID_EPOCH_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

/// The time inside a version-1 UUID (RFC 9562 section 5.1), in epoch ms.
pub(crate) fn uuid_v1_millis(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let hex = |range: std::ops::Range<usize>| {
        let part = s.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(part, 16).ok()
    };
    let (time_low, time_mid, time_hi_version) = (hex(0..8)?, hex(9..13)?, hex(14..18)?);
    hex(19..23)?;
    hex(24..36)?;
    if time_hi_version >> 12 != 1 {
        return None;
    }
    let ticks = (time_hi_version & 0x0fff) << 48 | time_mid << 32 | time_low;
    let unix_ticks = ticks.checked_sub(UUID_EPOCH_OFFSET)?;
    Some((unix_ticks / 10_000) as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_of_a_version_1_uuid() {
        // Python: uuid.UUID('c232ab00-9414-11ec-b3c8-9f6bdeced846') -> 2022-02-22T19:22:22Z
        assert_eq!(uuid_v1_millis("c232ab00-9414-11ec-b3c8-9f6bdeced846"), Some(1_645_557_742_000));
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        assert_eq!(uuid_v1_millis("c232ab00-9414-41ec-b3c8-9f6bdeced846"), None);
        assert_eq!(uuid_v1_millis("c232ab00-9414-11ec-b3c8-9f6bdeced84"), None);
        assert_eq!(uuid_v1_millis("c232ab00+9414-11ec-b3c8-9f6bdeced846"), None);
        assert_eq!(uuid_v1_millis("+232ab00-9414-11ec-b3c8-9f6bdeced846"), None);
    }
}
