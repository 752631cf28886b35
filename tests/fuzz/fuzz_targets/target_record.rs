//! Any record on the targets topic, null key and tombstone included: an update
//! or a rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_model::parse_target;

#[path = "split.rs"]
mod split;

fuzz_target!(|data: &[u8]| {
    let (key, value) = split::record(data);
    assert_eq!(parse_target(key, value), parse_target(key, value));
});
