//! The JSON Schemas in `schemas/` and the parsers must agree: every golden
//! input that the parser accepts is valid under the schema, and every input it
//! dead-letters for a field or version reason is invalid under it.

// Test helpers unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use jsonschema::{Draft, JSONSchema};
use pulse_model::{parse, parse_course, parse_org, parse_plan, parse_target, InputFormat, Parsed, Reason, Rejection};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema(name: &str) -> JSONSchema {
    let text = std::fs::read_to_string(root().join("schemas").join(name)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    JSONSchema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .compile(&doc)
        .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

/// Checks each line of a golden input file; `verdict` says whether the
/// parser accepts it, `None` when a schema cannot express the rule.
fn agree(schema_name: &str, input: &str, verdict: impl Fn(&str) -> Option<bool>) {
    let schema = schema(schema_name);
    let text = std::fs::read_to_string(root().join("tests/golden/parse").join(input)).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(accepted) = verdict(line) else {
            continue;
        };
        assert_eq!(schema.is_valid(&doc), accepted, "{schema_name} and the parser disagree on {line}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} lines of {input} were checked");
}

/// Field and version rejections are the schema's business; broken JSON,
/// duplicate keys and size limits are not.
fn schema_verdict(r: Result<(), Rejection>) -> Option<bool> {
    match r {
        Ok(()) => Some(true),
        Err(r) if r.detail.starts_with("duplicate field") => None,
        Err(r) => matches!(r.reason, Reason::MissingField | Reason::InvalidField | Reason::UnsupportedVersion)
            .then_some(false),
    }
}

#[test]
fn pulse_v1_schema_agrees_with_the_parser() {
    agree("pulse-v1.schema.json", "pulse-v1.ndjson", |line| {
        schema_verdict(
            parse(InputFormat::PulseV1, None, line.as_bytes()).map(|p| assert!(matches!(p, Parsed::Event(_)))),
        )
    });
}

#[test]
fn user_profile_schema_agrees_with_the_parser() {
    agree("user-profile.schema.json", "user-profile.ndjson", |line| {
        schema_verdict(parse(InputFormat::UserProfile, None, line.as_bytes()).map(drop))
    });
}

#[test]
fn course_schema_agrees_with_the_parser() {
    agree("course-record.schema.json", "courses.ndjson", |line| {
        schema_verdict(parse_course(None, Some(line.as_bytes())).map(drop))
    });
}

#[test]
fn plan_schema_agrees_with_the_parser() {
    agree("plan-record.schema.json", "plans.ndjson", |line| {
        // A schema cannot compare two times, nor count distinct items.
        if line.contains(r#""start":1774981799000"#) {
            return None;
        }
        schema_verdict(parse_plan(None, Some(line.as_bytes())).map(drop))
    });
}

#[test]
fn org_schema_agrees_with_the_parser() {
    agree("org-record.schema.json", "orgs.ndjson", |line| {
        schema_verdict(parse_org(None, Some(line.as_bytes())).map(drop))
    });
}

#[test]
fn target_schema_agrees_with_the_parser() {
    agree("target-record.schema.json", "targets.ndjson", |line| {
        // A pattern cannot check that the second year follows the first.
        if line.contains("2024-26") {
            return None;
        }
        schema_verdict(parse_target(None, Some(line.as_bytes())).map(drop))
    });
}
