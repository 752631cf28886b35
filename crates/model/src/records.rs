//! Records of the compacted registry topics: orgs (contract section 4),
//! targets (section 5) and the course catalogue (section 11). All arrive as a key and a value, where an empty or
//! absent value is a tombstone for the key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::reject::Rejection;
use crate::scalar::{json_object, number, text, version_1, Scalar};
use crate::time::Fy;

/// Node ids that Pulse defines itself; no registry record may take them.
pub const RESERVED_NODES: [&str; 2] = ["national", "unassigned"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    pub org: String,
    pub name: String,
    /// `None` for a top-level node (a ministry or a state), under `national`.
    pub parent: Option<String>,
    pub kind: String,
    /// Sanctioned strength; absent counts as 0.
    pub employees: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrgUpdate {
    Upsert(OrgRecord),
    Remove(String),
}

#[derive(Deserialize)]
struct RawOrg<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    org: Option<Scalar<'a>>,
    #[serde(borrow)]
    name: Option<Scalar<'a>>,
    #[serde(borrow)]
    parent: Option<Scalar<'a>>,
    #[serde(borrow)]
    kind: Option<Scalar<'a>>,
    #[serde(borrow)]
    employees: Option<Scalar<'a>>,
}

/// Parses one `pulse.orgs` message. When a key is present the record's `org`
/// must equal it, so that topic compaction keeps the right record.
pub fn parse_org(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OrgUpdate, Rejection> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(OrgUpdate::Remove(tombstone_key(key)?));
    };
    crate::check_size(value)?;
    let raw: RawOrg<'_> = json_object(value)?;
    version_1("v", raw.v)?;
    let org = text("org", raw.org)?.into_owned();
    check_key(key, &org, "org")?;
    if RESERVED_NODES.contains(&org.as_str()) {
        return Err(Rejection::invalid("org", format_args!("`{org}` is a node Pulse defines itself")));
    }
    let parent = match raw.parent {
        None => None,
        Some(p) => Some(text("parent", Some(p))?.into_owned()).filter(|p| p != "national"),
    };
    let name = match raw.name {
        None => org.clone(),
        Some(n) => text("name", Some(n))?.into_owned(),
    };
    let kind = match raw.kind {
        None => String::new(),
        Some(k) => text("kind", Some(k))?.into_owned(),
    };
    let employees = match raw.employees {
        None => 0,
        Some(e) => match e.as_integer() {
            Some(n) if n >= 0 => n as u64,
            _ => {
                return Err(Rejection::invalid("employees", format_args!("must be a non-negative integer, it is {e}")))
            }
        },
    };
    Ok(OrgUpdate::Upsert(OrgRecord { org, name, parent, kind, employees }))
}

/// The KPIs a target can be set on (contract section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKpi {
    EnrolmentsFy,
    CompletionsFy,
    LearningMinutesFy,
    LearningMinutesPerUserFy,
    UsersMeetingHoursRatio,
    OnboardingRatio,
    CompletionRatio,
    AverageRating,
}

impl TargetKpi {
    pub const ALL: [TargetKpi; 8] = [
        TargetKpi::EnrolmentsFy,
        TargetKpi::CompletionsFy,
        TargetKpi::LearningMinutesFy,
        TargetKpi::LearningMinutesPerUserFy,
        TargetKpi::UsersMeetingHoursRatio,
        TargetKpi::OnboardingRatio,
        TargetKpi::CompletionRatio,
        TargetKpi::AverageRating,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKpi::EnrolmentsFy => "enrolments_fy",
            TargetKpi::CompletionsFy => "completions_fy",
            TargetKpi::LearningMinutesFy => "learning_minutes_fy",
            TargetKpi::LearningMinutesPerUserFy => "learning_minutes_per_user_fy",
            TargetKpi::UsersMeetingHoursRatio => "users_meeting_hours_ratio",
            TargetKpi::OnboardingRatio => "onboarding_ratio",
            TargetKpi::CompletionRatio => "completion_ratio",
            TargetKpi::AverageRating => "average_rating",
        }
    }

    /// Paced KPIs grow linearly over the financial year; level KPIs do not.
    pub fn is_paced(self) -> bool {
        !matches!(self, TargetKpi::OnboardingRatio | TargetKpi::CompletionRatio | TargetKpi::AverageRating)
    }
}

impl fmt::Display for TargetKpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TargetKpi {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        TargetKpi::ALL.into_iter().find(|k| k.name() == s).ok_or(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub id: String,
    pub org: String,
    pub kpi: TargetKpi,
    pub value: f64,
    pub fy: Fy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetUpdate {
    Upsert(TargetRecord),
    Remove(String),
}

#[derive(Deserialize)]
struct RawTarget<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow)]
    org: Option<Scalar<'a>>,
    #[serde(borrow)]
    kpi: Option<Scalar<'a>>,
    #[serde(borrow)]
    value: Option<Scalar<'a>>,
    #[serde(borrow)]
    fy: Option<Scalar<'a>>,
}

/// Parses one `pulse.targets` message; the key, when present, must equal `id`.
pub fn parse_target(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<TargetUpdate, Rejection> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(TargetUpdate::Remove(tombstone_key(key)?));
    };
    crate::check_size(value)?;
    let raw: RawTarget<'_> = json_object(value)?;
    version_1("v", raw.v)?;
    let id = text("id", raw.id)?.into_owned();
    check_key(key, &id, "id")?;
    let org = text("org", raw.org)?.into_owned();
    let kpi_name = text("kpi", raw.kpi)?;
    let kpi = kpi_name.parse().map_err(|()| {
        let names: Vec<_> = TargetKpi::ALL.iter().map(|k| k.name()).collect();
        Rejection::invalid("kpi", format_args!("`{kpi_name}` cannot carry a target; use one of {}", names.join(", ")))
    })?;
    let value = number("value", raw.value)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(Rejection::invalid("value", format_args!("must be a finite number >= 0, it is {value}")));
    }
    let fy_name = text("fy", raw.fy)?;
    let fy = fy_name.parse().map_err(|e| Rejection::invalid("fy", e))?;
    Ok(TargetUpdate::Upsert(TargetRecord { id, org, kpi, value, fy }))
}

/// A course of the catalogue (contract section 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseRecord {
    pub course: String,
    /// Defaults to the course id.
    pub name: String,
    pub provider: Option<ProviderRef>,
}

/// The provider a catalogue record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRef {
    pub id: String,
    /// Defaults to the provider id.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CourseUpdate {
    Upsert(CourseRecord),
    Remove(String),
}

#[derive(Deserialize)]
struct RawCourse<'a> {
    #[serde(borrow)]
    v: Option<Scalar<'a>>,
    #[serde(borrow)]
    course: Option<Scalar<'a>>,
    #[serde(borrow)]
    name: Option<Scalar<'a>>,
    #[serde(borrow)]
    provider: Option<Scalar<'a>>,
    #[serde(borrow)]
    provider_name: Option<Scalar<'a>>,
}

/// Parses one `pulse.courses` message; the key, when present, must equal `course`.
pub fn parse_course(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<CourseUpdate, Rejection> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(CourseUpdate::Remove(tombstone_key(key)?));
    };
    crate::check_size(value)?;
    let raw: RawCourse<'_> = json_object(value)?;
    version_1("v", raw.v)?;
    let course = text("course", raw.course)?.into_owned();
    check_key(key, &course, "course")?;
    let optional =
        |field: &str, v: Option<Scalar<'_>>| v.map(|v| text(field, Some(v)).map(|t| t.into_owned())).transpose();
    let name = optional("name", raw.name)?.unwrap_or_else(|| course.clone());
    let provider_name = optional("provider_name", raw.provider_name)?;
    let provider = optional("provider", raw.provider)?
        .map(|id| ProviderRef { name: provider_name.unwrap_or_else(|| id.clone()), id });
    Ok(CourseUpdate::Upsert(CourseRecord { course, name, provider }))
}

pub(crate) fn tombstone_key(key: Option<&[u8]>) -> Result<String, Rejection> {
    let key = key.ok_or_else(|| Rejection::missing("key (a tombstone names its record by its key)"))?;
    std::str::from_utf8(key).map(str::to_owned).map_err(|_| Rejection::invalid("key", "is not UTF-8"))
}

pub(crate) fn check_key(key: Option<&[u8]>, id: &str, field: &str) -> Result<(), Rejection> {
    match key {
        Some(k) if k != id.as_bytes() => Err(Rejection::invalid(
            field,
            format_args!("`{id}` differs from the message key `{}`", String::from_utf8_lossy(k)),
        )),
        _ => Ok(()),
    }
}
