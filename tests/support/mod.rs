//! Shared support for the workspace-level tests and benches.

use pulse_engine::{Disposition, Engine, EngineError, Store};
use pulse_oracle::Message;

/// Delivers one message to the engine as the consumer loop would.
pub fn deliver<S: Store>(engine: &mut Engine<S>, m: &Message, now: i64) -> Result<Disposition, EngineError> {
    match m {
        Message::Event { format, key, value } => engine.ingest(*format, key.as_deref(), value, now),
        Message::Org { key, value } => Ok(engine.apply_org_message(key.as_deref(), value.as_deref())),
        Message::Target { key, value } => Ok(engine.apply_target_message(key.as_deref(), value.as_deref())),
        Message::Course { key, value } => Ok(engine.apply_course_message(key.as_deref(), value.as_deref())),
        Message::Plan { key, value } => Ok(engine.apply_plan_message(key.as_deref(), value.as_deref())),
    }
}

/// The hand-checked scenario's directory (`tests/golden/scenario`).
pub fn scenario_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/scenario")
}

/// The scenario's report clock (its README says why).
pub const SCENARIO_NOW: &str = "2026-01-15T00:00:00+05:30";

/// Runs the `pulse` command line in-process and returns its JSON output.
pub fn pulse_json(args: &[&str]) -> serde_json::Value {
    let mut out = Vec::new();
    pulse::cli::run(std::iter::once("pulse").chain(args.iter().copied()), &mut out)
        .unwrap_or_else(|e| panic!("pulse {args:?} failed: {e:#}"));
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("pulse {args:?} printed no JSON ({e})"))
}

/// `pulse replay` of the whole scenario into `data_dir`; returns its summary.
pub fn replay_scenario(data_dir: &std::path::Path) -> serde_json::Value {
    let file = |name: &str| scenario_dir().join(name).display().to_string();
    pulse_json(&[
        "replay",
        "--data-dir",
        &data_dir.display().to_string(),
        "--orgs",
        &file("orgs.ndjson"),
        "--targets",
        &file("targets.ndjson"),
        "--courses",
        &file("courses.ndjson"),
        "--plans",
        &file("plans.ndjson"),
        &format!("--input=pulse-v1={}", file("events.ndjson")),
        &format!("--input=user-profile={}", file("profiles.ndjson")),
        &format!("--input=igot-rating={}", file("igot.ndjson")),
        &format!("--input=sunbird-telemetry={}", file("sunbird.ndjson")),
        "--now",
        SCENARIO_NOW,
    ])
}
