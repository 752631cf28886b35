//! The Pulse telemetry contract as types, and the parsers of every input format.
//!
//! This crate owns: the normalized [`Event`] that every input format becomes
//! (user profiles included), the org, target and course records of the
//! registry topics, the contract's dead-letter
//! [`Reason`]s, financial years and IST calendar rules ([`time`]), and one parser
//! per input format ([`InputFormat`]). Parsing borrows from the message bytes
//! (no `serde_json::Value` on the hot path).
//!
//! It must not depend on I/O of any kind: no Kafka, no RocksDB, no files, no
//! clocks (callers pass `now` in).

mod event;
mod flat;
mod igot;
mod partition;
mod plan;
mod profile;
mod records;
mod reject;
mod scalar;
mod sunbird;
pub mod time;
mod v1;

pub use event::{Event, EventKind, InputFormat, Minutes, Parsed, Stars, TimeRules, MAX_MESSAGE_BYTES};
pub use partition::partition_of;
pub use plan::{parse_plan, Assign, PlanRecord, PlanUpdate, MAX_PLAN_BYTES};
pub use records::{
    parse_course, parse_org, parse_target, CourseRecord, CourseUpdate, OrgRecord, OrgUpdate, ProviderRef, TargetKpi,
    TargetRecord, TargetUpdate, RESERVED_NODES,
};
pub use reject::{Reason, Rejection};
pub use time::{Day, Fy, Millis, Month};

/// Parses one message value of the given input format into a normalized event.
///
/// Every message, events and registry records alike (plans apart: up to
/// [`MAX_PLAN_BYTES`]), is at most
/// [`MAX_MESSAGE_BYTES`] (contract section 2): `too_large` otherwise.
pub(crate) fn check_size(value: &[u8]) -> Result<(), Rejection> {
    check_size_at_most(value, MAX_MESSAGE_BYTES)
}

/// [`check_size`] for records with a limit of their own.
pub(crate) fn check_size_at_most(value: &[u8], limit: usize) -> Result<(), Rejection> {
    if value.len() > limit {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("message is {} bytes, the limit is {limit}", value.len()),
        ));
    }
    Ok(())
}

/// Returns `Ok(Parsed::Ignored)` for messages the contract says to skip (e.g. a
/// Sunbird `LOG` event), and a [`Rejection`] naming the dead-letter reason for
/// everything that cannot become a valid event. Time rules that need the wall
/// clock are checked separately by [`TimeRules::check_event`]. Only
/// `user-profile` reads the key (a record's `user` must equal it; an empty
/// value is a tombstone for it).
pub fn parse<'a>(format: InputFormat, key: Option<&'a [u8]>, value: &'a [u8]) -> Result<Parsed<'a>, Rejection> {
    check_size(value)?;
    match format {
        InputFormat::PulseV1 => v1::parse(value),
        InputFormat::SunbirdTelemetry => sunbird::parse(value),
        InputFormat::IgotRating => igot::parse(value),
        InputFormat::UserProfile => profile::parse(key, value),
    }
}
