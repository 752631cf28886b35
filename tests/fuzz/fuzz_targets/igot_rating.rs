//! Any bytes on an `igot-rating` input topic: a parsed event or a rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_model::{parse, InputFormat};

const FORMAT: InputFormat = InputFormat::IgotRating;

fuzz_target!(|data: &[u8]| {
    // Parsing is a pure function of the bytes (and NaN never gets through).
    assert_eq!(parse(FORMAT, data), parse(FORMAT, data));
});
