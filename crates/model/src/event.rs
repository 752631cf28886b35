use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::reject::{Reason, Rejection};
use crate::time::{format_ist, Millis};

/// Largest message value accepted on an input topic (contract section 2).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The input formats of contract sections 2 and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputFormat {
    PulseV1,
    SunbirdTelemetry,
    IgotRating,
    /// The user service's profiles (contract section 10): keyed records
    /// on a compacted topic, not events.
    UserProfile,
}

impl InputFormat {
    pub const ALL: [InputFormat; 4] =
        [InputFormat::PulseV1, InputFormat::SunbirdTelemetry, InputFormat::IgotRating, InputFormat::UserProfile];

    pub fn name(self) -> &'static str {
        match self {
            InputFormat::PulseV1 => "pulse-v1",
            InputFormat::SunbirdTelemetry => "sunbird-telemetry",
            InputFormat::IgotRating => "igot-rating",
            InputFormat::UserProfile => "user-profile",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown input format `{0}`: expected one of pulse-v1, sunbird-telemetry, igot-rating, user-profile")]
pub struct UnknownFormat(pub String);

impl FromStr for InputFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// What a parser makes of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<'a> {
    Event(Event<'a>),
    /// A well-formed message the contract does not turn into an event (counted,
    /// not dead-lettered); the string says which rule skipped it.
    Ignored(&'static str),
}

/// Learning time, held as whole milliseconds so that sums are exact and do not
/// depend on the order in which sessions arrive. Contract minutes are rounded
/// to the nearest millisecond (1/60,000 of a minute) at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Minutes(pub i64);

impl Minutes {
    pub const MS_PER_MINUTE: i64 = 60_000;

    /// Checks the contract range (`> 0` and `<= 1440`) and converts.
    pub fn new(field: &str, minutes: f64) -> Result<Minutes, Rejection> {
        if !(minutes > 0.0 && minutes <= 1440.0) {
            return Err(Rejection::invalid(field, format_args!("must be > 0 and <= 1440 minutes, it is {minutes}")));
        }
        Ok(Minutes((minutes * Self::MS_PER_MINUTE as f64).round().max(1.0) as i64))
    }

    pub fn as_minutes(self) -> f64 {
        self.0 as f64 / Self::MS_PER_MINUTE as f64
    }
}

/// A rating, held in thousandths of a star so that sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Stars(pub i64);

impl Stars {
    pub const SCALE: i64 = 1000;

    /// Checks the contract range (1..=5) and converts.
    pub fn new(field: &str, stars: f64) -> Result<Stars, Rejection> {
        if !(1.0..=5.0).contains(&stars) {
            return Err(Rejection::invalid(field, format_args!("must be between 1 and 5, it is {stars}")));
        }
        Ok(Stars((stars * Self::SCALE as f64).round() as i64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }
}

/// Checks a course-progress percentage (0..=100).
pub(crate) fn percent(field: &str, p: f64) -> Result<f64, Rejection> {
    if !(0.0..=100.0).contains(&p) {
        return Err(Rejection::invalid(field, format_args!("must be between 0 and 100, it is {p}")));
    }
    Ok(p)
}

/// The one normalized event every input format becomes. A user profile
/// (contract section 10) is one too: an org-carrying item with the empty
/// id, which takes part in the current-org rule but is never a duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Unique event id; the same id twice is applied once. Empty for a
    /// profile, so that an event with the same `ts` is the later.
    pub id: Cow<'a, str>,
    /// Event time.
    pub ts: Millis,
    pub user: Cow<'a, str>,
    /// The user's org when the event happened; `None` for formats that carry
    /// none (`igot-rating`).
    pub org: Option<Cow<'a, str>>,
    pub kind: EventKind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind<'a> {
    Registration,
    Enrolment {
        course: Cow<'a, str>,
    },
    Progress {
        course: Cow<'a, str>,
        minutes: Minutes,
        percent: Option<f64>,
    },
    Completion {
        course: Cow<'a, str>,
    },
    Rating {
        course: Cow<'a, str>,
        stars: Stars,
    },
    /// `score` is 0..=100.
    Assessment {
        course: Cow<'a, str>,
        score: f64,
        pass: bool,
    },
    /// The user's profile as of `ts` (the event's org is the profile's).
    Profile {
        designation: Option<Cow<'a, str>>,
    },
    /// A profile tombstone: the user has no profile any more.
    ProfileRemoved,
}

impl EventKind<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Registration => "registration",
            EventKind::Enrolment { .. } => "enrolment",
            EventKind::Progress { .. } => "progress",
            EventKind::Completion { .. } => "completion",
            EventKind::Rating { .. } => "rating",
            EventKind::Assessment { .. } => "assessment",
            EventKind::Profile { .. } => "profile",
            EventKind::ProfileRemoved => "profile tombstone",
        }
    }

    /// A profile record or tombstone: applied in topic order, no id, not activity.
    pub fn is_profile(&self) -> bool {
        matches!(self, EventKind::Profile { .. } | EventKind::ProfileRemoved)
    }

    pub fn course(&self) -> Option<&str> {
        match self {
            EventKind::Registration | EventKind::Profile { .. } | EventKind::ProfileRemoved => None,
            EventKind::Enrolment { course }
            | EventKind::Progress { course, .. }
            | EventKind::Completion { course }
            | EventKind::Rating { course, .. }
            | EventKind::Assessment { course, .. } => Some(course),
        }
    }
}

fn owned(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

impl Event<'_> {
    /// Copies the borrowed strings, for keeping an event past its message.
    pub fn into_owned(self) -> Event<'static> {
        let kind = match self.kind {
            EventKind::Registration => EventKind::Registration,
            EventKind::Enrolment { course } => EventKind::Enrolment { course: owned(course) },
            EventKind::Progress { course, minutes, percent } => {
                EventKind::Progress { course: owned(course), minutes, percent }
            }
            EventKind::Completion { course } => EventKind::Completion { course: owned(course) },
            EventKind::Rating { course, stars } => EventKind::Rating { course: owned(course), stars },
            EventKind::Assessment { course, score, pass } => {
                EventKind::Assessment { course: owned(course), score, pass }
            }
            EventKind::Profile { designation } => EventKind::Profile { designation: designation.map(owned) },
            EventKind::ProfileRemoved => EventKind::ProfileRemoved,
        };
        Event { id: owned(self.id), ts: self.ts, user: owned(self.user), org: self.org.map(owned), kind }
    }
}

/// The time rules of contract section 6, which need the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    /// Events older than this (against the wall clock) are `too_old`.
    pub max_age_ms: i64,
}

impl Default for TimeRules {
    fn default() -> Self {
        TimeRules { max_age_ms: 400 * 86_400_000 }
    }
}

impl TimeRules {
    /// Events further ahead of the wall clock than this are `future_timestamp`.
    pub const MAX_AHEAD_MS: i64 = 86_400_000;

    /// Checks an event's time against the wall clock. A profile's `ts` has
    /// no maximum age (contract section 10), and a tombstone has none.
    pub fn check_event(&self, ev: &Event<'_>, now: Millis) -> Result<(), Rejection> {
        match ev.kind {
            EventKind::ProfileRemoved => Ok(()),
            EventKind::Profile { .. } => TimeRules { max_age_ms: i64::MAX }.check(ev.ts, now),
            _ => self.check(ev.ts, now),
        }
    }

    pub fn check(&self, ts: Millis, now: Millis) -> Result<(), Rejection> {
        if ts > now.saturating_add(Self::MAX_AHEAD_MS) {
            return Err(Rejection::new(
                Reason::FutureTimestamp,
                format!("event time {} is more than 24 hours ahead of the clock ({})", format_ist(ts), format_ist(now)),
            ));
        }
        if ts < now.saturating_sub(self.max_age_ms) {
            return Err(Rejection::new(
                Reason::TooOld,
                format!(
                    "event time {} is older than the maximum age of {} days",
                    format_ist(ts),
                    self.max_age_ms / 86_400_000
                ),
            ));
        }
        Ok(())
    }
}
