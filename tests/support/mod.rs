//! Shared support for the workspace-level tests and benches.

use pulse_engine::{Disposition, Engine, EngineError, Store};
use pulse_oracle::Message;

/// Delivers one message to the engine as the consumer loop would.
pub fn deliver<S: Store>(engine: &mut Engine<S>, m: &Message, now: i64) -> Result<Disposition, EngineError> {
    match m {
        Message::Event { format, value } => engine.ingest(*format, value, now),
        Message::Org { key, value } => Ok(engine.apply_org_message(key.as_deref(), value.as_deref())),
        Message::Target { key, value } => Ok(engine.apply_target_message(key.as_deref(), value.as_deref())),
    }
}
