//! Any config file and `PULSE_*` environment: a checked config or an error
//! naming the key, never a panic. The input is the file, then NUL-separated
//! `NAME=VALUE` environment entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\0');
    let file = parts.next().unwrap_or_default();
    let env = parts.filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned()));
    if let Ok(raw) = RawConfig::parse(file, env) {
        let _ = raw.validate();
    }
});
