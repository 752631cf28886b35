//! Shared support for the workspace-level tests and benches.

use pulse_engine::{Disposition, Engine, EngineError, Store};
use pulse_oracle::Message;
use serde_json::Value;

/// Delivers one message to the engine as the consumer loop would.
pub fn deliver<S: Store>(engine: &mut Engine<S>, m: &Message, now: i64) -> Result<Disposition, EngineError> {
    match m {
        Message::Event { format, value } => engine.ingest(*format, value, now),
        Message::Org { key, value } => Ok(engine.apply_org_message(key.as_deref(), value.as_deref())),
        Message::Target { key, value } => Ok(engine.apply_target_message(key.as_deref(), value.as_deref())),
    }
}

/// Compares two JSON documents; numbers may differ by a relative 1e-9.
/// Returns the path and both values of the first difference.
pub fn json_diff(actual: &Value, expected: &Value) -> Option<String> {
    fn walk(path: &str, a: &Value, e: &Value) -> Option<String> {
        match (a, e) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys()) {
                    let (va, ve) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                    if x.contains_key(k) != y.contains_key(k) {
                        return Some(format!("{path}.{k}: present in only one ({va} vs {ve})"));
                    }
                    if let Some(d) = walk(&format!("{path}.{k}"), va, ve) {
                        return Some(d);
                    }
                }
                None
            }
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
                let close = x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
                (!close).then(|| format!("{path}: {x} vs expected {y}"))
            }
            _ => (a != e).then(|| format!("{path}: {a} vs expected {e}")),
        }
    }
    walk("$", actual, expected)
}
