use std::fmt;

/// The contract's dead-letter reason codes (section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidJson,
    UnsupportedVersion,
    MissingField,
    InvalidField,
    TooLarge,
    FutureTimestamp,
    TooOld,
    OrgCycle,
}

impl Reason {
    /// Every reason, in the contract's order.
    pub const ALL: [Reason; 8] = [
        Reason::InvalidJson,
        Reason::UnsupportedVersion,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::TooLarge,
        Reason::FutureTimestamp,
        Reason::TooOld,
        Reason::OrgCycle,
    ];

    /// The code as written in dead-letter headers and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::TooLarge => "too_large",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooOld => "too_old",
            Reason::OrgCycle => "org_cycle",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a message cannot become a valid event or record: a reason code for
/// machines and a detail for the person reading the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }

    pub(crate) fn missing(field: &str) -> Self {
        Rejection::new(Reason::MissingField, format!("field `{field}` is required"))
    }

    pub(crate) fn invalid(field: &str, why: impl fmt::Display) -> Self {
        Rejection::new(Reason::InvalidField, format!("field `{field}` {why}"))
    }

    /// Maps a serde_json error: broken syntax is `invalid_json`, a well-formed
    /// document of the wrong shape (e.g. a duplicate key) is `invalid_field`.
    pub(crate) fn from_json(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => Rejection::new(Reason::InvalidField, err.to_string()),
            Category::Io | Category::Syntax | Category::Eof => Rejection::new(Reason::InvalidJson, err.to_string()),
        }
    }
}
