//! Any record on the orgs topic, null key and tombstone included: an update
//! or a rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_model::parse_org;

#[path = "split.rs"]
mod split;

fuzz_target!(|data: &[u8]| {
    let (key, value) = split::record(data);
    assert_eq!(parse_org(key, value), parse_org(key, value));
});
