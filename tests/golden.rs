//! Golden tests: every input format's parse results, and hand-checked
//! `pulse replay` + `pulse report` scenarios. `UPDATE_GOLDEN=1 cargo test
//! --test golden` rewrites the parse goldens; read the diff before committing.
//! The scenario's expected report was computed by hand (see its README).

// Test helpers unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use pulse_model::time::format_ist;
use pulse_model::{
    parse, parse_course, parse_org, parse_plan, parse_target, Assign, CourseUpdate, EventKind, InputFormat, OrgUpdate,
    Parsed, PlanUpdate, TargetUpdate,
};
use pulse_oracle::json_diff;
use pulse_tests::{pulse_json as pulse, replay_scenario, scenario_dir, SCENARIO_NOW};
use serde_json::{json, Value};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN.
fn check_golden(path: &Path, actual: &Value) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        return;
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(actual, &expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}

fn parsed_json(result: Result<Parsed<'_>, pulse_model::Rejection>) -> Value {
    match result {
        Err(r) => json!({"dead_letter": {"reason": r.reason.code(), "detail": r.detail}}),
        Ok(Parsed::Ignored(why)) => json!({"ignored": why}),
        Ok(Parsed::Event(e)) => {
            let mut v = json!({"id": e.id, "ts": e.ts, "ts_ist": format_ist(e.ts), "user": e.user, "org": e.org,
                "type": e.kind.name(), "course": e.kind.course()});
            match e.kind {
                EventKind::Progress { minutes, percent, .. } => {
                    v["minutes"] = json!(minutes.as_minutes());
                    v["percent"] = json!(percent);
                }
                EventKind::Rating { stars, .. } => v["stars"] = json!(stars.as_f64()),
                EventKind::Assessment { score, pass, .. } => {
                    v["score"] = json!(score);
                    v["pass"] = json!(pass);
                }
                EventKind::Profile { designation } => v["designation"] = json!(designation),
                _ => {}
            }
            json!({"event": v})
        }
    }
}

#[test]
fn every_input_format_parses_as_golden() {
    for format in InputFormat::ALL {
        let dir = golden_dir().join("parse");
        let results: Vec<Value> = lines(&dir.join(format!("{format}.ndjson")))
            .iter()
            .map(|line| json!({"input": line, "result": parsed_json(parse(format, None, line.as_bytes()))}))
            .collect();
        check_golden(&dir.join(format!("{format}.golden.json")), &Value::Array(results));
    }
}

#[test]
fn registry_records_parse_as_golden() {
    let dir = golden_dir().join("parse");
    let orgs: Vec<Value> = lines(&dir.join("orgs.ndjson"))
        .iter()
        .map(|line| {
            let result = match parse_org(None, Some(line.as_bytes())) {
                Ok(OrgUpdate::Upsert(r)) => {
                    json!({"org": r.org, "name": r.name, "parent": r.parent, "kind": r.kind, "employees": r.employees})
                }
                Ok(OrgUpdate::Remove(id)) => json!({"remove": id}),
                Err(r) => json!({"dead_letter": {"reason": r.reason.code(), "detail": r.detail}}),
            };
            json!({"input": line, "result": result})
        })
        .collect();
    check_golden(&dir.join("orgs.golden.json"), &Value::Array(orgs));
    let targets: Vec<Value> = lines(&dir.join("targets.ndjson"))
        .iter()
        .map(|line| {
            let result = match parse_target(None, Some(line.as_bytes())) {
                Ok(TargetUpdate::Upsert(t)) => json!({"id": t.id, "org": t.org, "kpi": t.kpi.name(), "value": t.value, "fy": t.fy.to_string(), "paced": t.kpi.is_paced()}),
                Ok(TargetUpdate::Remove(id)) => json!({"remove": id}),
                Err(r) => json!({"dead_letter": {"reason": r.reason.code(), "detail": r.detail}}),
            };
            json!({"input": line, "result": result})
        })
        .collect();
    check_golden(&dir.join("targets.golden.json"), &Value::Array(targets));
    let courses: Vec<Value> = lines(&dir.join("courses.ndjson"))
        .iter()
        .map(|line| {
            let result = match parse_course(None, Some(line.as_bytes())) {
                Ok(CourseUpdate::Upsert(c)) => json!({"course": c.course, "name": c.name,
                    "provider": c.provider.as_ref().map(|p| &p.id), "provider_name": c.provider.as_ref().map(|p| &p.name)}),
                Ok(CourseUpdate::Remove(id)) => json!({"remove": id}),
                Err(r) => json!({"dead_letter": {"reason": r.reason.code(), "detail": r.detail}}),
            };
            json!({"input": line, "result": result})
        })
        .collect();
    check_golden(&dir.join("courses.golden.json"), &Value::Array(courses));
    let plans: Vec<Value> = lines(&dir.join("plans.ndjson"))
        .iter()
        .map(|line| {
            let result = match parse_plan(None, Some(line.as_bytes())) {
                Ok(PlanUpdate::Upsert(p)) => {
                    let assign = match &p.assign {
                        Assign::All => json!({"to": "all"}),
                        Assign::Designations(d) => json!({"to": "designations", "designations": d}),
                        Assign::Users(u) => json!({"to": "users", "users": u}),
                    };
                    json!({"id": p.id, "org": p.org, "courses": p.courses, "assign": assign,
                        "start": format_ist(p.start), "due": format_ist(p.due), "min_share": p.min_share,
                        "courses_to_comply": p.courses_to_comply()})
                }
                Ok(PlanUpdate::Remove(id)) => json!({"remove": id}),
                Err(r) => json!({"dead_letter": {"reason": r.reason.code(), "detail": r.detail}}),
            };
            json!({"input": line, "result": result})
        })
        .collect();
    check_golden(&dir.join("plans.golden.json"), &Value::Array(plans));
}

#[test]
fn a_profile_keyed_by_another_user_is_a_dead_letter_and_an_empty_value_its_tombstone() {
    let record = br#"{"v":1,"user":"u-17","org":"M_12","ts":1748851200000}"#;
    let err = parse(InputFormat::UserProfile, Some(b"u-18"), record).unwrap_err();
    assert_eq!(err.reason.code(), "invalid_field", "{err}");
    assert!(matches!(parse(InputFormat::UserProfile, Some(b"u-17"), record), Ok(Parsed::Event(_))));
    match parse(InputFormat::UserProfile, Some(b"u-17"), b"") {
        Ok(Parsed::Event(e)) => assert_eq!((e.user.as_ref(), e.kind), ("u-17", EventKind::ProfileRemoved)),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse(InputFormat::UserProfile, None, b"").unwrap_err().reason.code(), "missing_field");
}

fn assert_json(actual: &Value, expected_file: &Path) {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(expected_file).unwrap()).unwrap();
    if let Some(d) = json_diff(actual, &expected) {
        panic!("{}: {d}\nactual: {}", expected_file.display(), serde_json::to_string_pretty(actual).unwrap());
    }
}

#[test]
fn hand_checked_scenario_reports_as_expected() {
    let dir = scenario_dir();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let now = SCENARIO_NOW;
    let summary = replay_scenario(data.path());
    assert_eq!(
        summary["events"],
        json!({"accepted": 28, "duplicates": 1, "ignored": 1,
        "dead_letters": {"future_timestamp": 1, "invalid_field": 1, "invalid_json": 1, "too_old": 1}})
    );
    assert_eq!(summary["courses"]["accepted"], 6);
    assert_eq!(summary["plans"]["accepted"], 4);
    assert_eq!(summary["plans"]["dead_letters"], json!({"invalid_field": 1}));
    assert_eq!(summary["orgs"]["dead_letters"], json!({"org_cycle": 1}));
    assert_eq!(summary["targets"]["dead_letters"], json!({"invalid_field": 1}));
    let dead = std::fs::read_to_string(data.path().join("dead-letters.ndjson")).unwrap();
    assert_eq!(dead.lines().count(), 7, "every dead letter is kept with its value: {dead}");

    let report = |scope: &[&str]| {
        let mut args = vec!["report", "--data-dir", data_dir, "--now", now, "--fy", "2025-26"];
        args.extend_from_slice(scope);
        pulse(&args)
    };
    assert_json(&report(&["--all"]), &dir.join("expected-report.json"));
    assert_json(&report(&["--user", "u2"]), &dir.join("expected-user-u2.json"));
    assert_json(&report(&["--org", "S_5_O_1"]), &dir.join("expected-org-S_5_O_1.json"));
    assert_json(&report(&["--course", "c3"]), &dir.join("expected-course-c3.json"));
    assert_json(&report(&["--months", "--org", "M_12"]), &dir.join("expected-months-M_12.json"));
}

#[test]
fn real_sunbird_samples_map_and_old_ones_are_dead_letters() {
    let dir = golden_dir().join("sunbird");
    let input = tempfile::NamedTempFile::new().unwrap();
    let body: String = ["end-with-progress.json", "feedback-with-rating.json", "preprocessor-numeric-ver.json"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_owned() + "\n")
        .collect();
    std::fs::write(input.path(), body).unwrap();
    let input_arg = format!("--input=sunbird-telemetry={}", input.path().display());
    let now = "2026-01-15T00:00:00+05:30";

    // 2018 events are older than the default maximum age of 400 days.
    let data = tempfile::tempdir().unwrap();
    let summary = pulse(&["replay", "--data-dir", data.path().to_str().unwrap(), &input_arg, "--now", now]);
    assert_eq!(summary["events"]["dead_letters"], json!({"too_old": 2, "invalid_field": 1}));

    // With a larger maximum age they map as contract section 3.1 says.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let summary = pulse(&["replay", "--data-dir", data_dir, &input_arg, "--now", now, "--max-age-days", "4000"]);
    assert_eq!(summary["events"]["accepted"], 2);
    assert_eq!(summary["events"]["dead_letters"], json!({"invalid_field": 1}));
    let user = pulse(&["report", "--data-dir", data_dir, "--user", "test-user", "--now", now, "--fy", "2017-18"]);
    assert_eq!(user["org"], "test-channel");
    assert_eq!(
        user["courses"]["test-content"],
        json!({"enrolled": false, "completed": false, "percent": 50.0, "minutes": 0.35, "rating": null, "assessment": null})
    );
    assert_eq!(user["courses"]["test-content1"]["rating"], 2.0);
    assert_eq!(user["learning_minutes_fy"], 0.35);
}

#[test]
fn a_line_that_is_not_utf8_is_a_dead_letter_and_the_replay_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let input = data.path().join("in.ndjson");
    let good = |id: &str| {
        format!(
            r#"{{"v":1,"id":"{id}","type":"registration","ts":"2025-06-02T09:00:00+05:30","user":"u-{id}","org":"A"}}"#
        )
    };
    let mut body = good("a").into_bytes();
    body.extend_from_slice(b"\r\n{\"v\":1,\"id\":\"\xff\xfe\"}\n");
    body.extend_from_slice(good("b").as_bytes());
    body.push(b'\n');
    std::fs::write(&input, body).unwrap();
    let dir = data.path().join("state");
    let summary = pulse(&[
        "replay",
        "--data-dir",
        dir.to_str().unwrap(),
        &format!("--input=pulse-v1={}", input.display()),
        "--now",
        SCENARIO_NOW,
    ]);
    assert_eq!(summary["events"]["accepted"], 2, "{summary}");
    assert_eq!(summary["events"]["dead_letters"], json!({"invalid_json": 1}), "{summary}");
    let dead = std::fs::read_to_string(dir.join("dead-letters.ndjson")).unwrap();
    let letter: Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(letter["line"], 2);
    assert!(letter["value"].as_str().unwrap().contains('\u{fffd}'), "the value is kept, lossily: {letter}");
}

/// Bad input beyond the contract's list: every parser gives a dead letter
/// with a reason (or, where the contract allows, a defined outcome), and
/// never panics.
#[test]
fn hostile_input_is_a_dead_letter_for_every_parser_never_a_panic() {
    use pulse_model::MAX_MESSAGE_BYTES;
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let just_under = {
        let base = r#"{"v":1,"id":"x","type":"registration","ts":1750000000000,"user":"u","org":"A","pad":""}"#;
        let pad = "p".repeat(MAX_MESSAGE_BYTES - base.len());
        base.replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#))
    };
    assert_eq!(just_under.len(), MAX_MESSAGE_BYTES);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("whitespace", b"  \n".to_vec()),
        ("invalid UTF-8", b"{\"v\":1,\"id\":\"\xff\"}".to_vec()),
        ("deeply nested", nested.into_bytes()),
        ("huge number", br#"{"v":1,"id":"x","type":"progress","ts":1e400,"user":"u","org":"A","course":"c","minutes":1}"#.to_vec()),
        ("NaN-like", br#"{"v":1,"id":"x","type":"progress","ts":1750000000000,"user":"u","org":"A","course":"c","minutes":NaN}"#.to_vec()),
        ("minutes as a string", br#"{"v":1,"id":"x","type":"progress","ts":1750000000000,"user":"u","org":"A","course":"c","minutes":"Infinity"}"#.to_vec()),
        ("duplicate keys", br#"{"v":1,"id":"x","id":"y","type":"registration","ts":1750000000000,"user":"u","org":"A"}"#.to_vec()),
        ("null", b"null".to_vec()),
        ("array", b"[1,2]".to_vec()),
        ("just over the limit", [just_under.as_bytes(), b" "].concat()),
    ];
    // The event-shaped cases are not hostile to the registry parsers, nor to
    // the profile parser, which ignore fields they do not know; the shapeless ones are.
    let shapeless = ["whitespace", "invalid UTF-8", "deeply nested", "null", "array", "just over the limit"];
    for format in InputFormat::ALL {
        for (name, bytes) in &cases {
            if format == InputFormat::UserProfile && !shapeless.contains(name) && *name != "empty" {
                continue;
            }
            match parse(format, None, bytes) {
                Err(rejection) => assert!(!rejection.detail.is_empty(), "{format} {name}: a reason without detail"),
                Ok(other) => panic!("{format} {name}: accepted as {other:?}"),
            }
        }
    }
    // At the limit exactly, a valid event is accepted.
    assert!(matches!(parse(InputFormat::PulseV1, None, just_under.as_bytes()), Ok(Parsed::Event(_))));
    for (name, bytes) in cases.iter().filter(|(name, _)| shapeless.contains(name)) {
        let org = parse_org(Some(b"A"), Some(bytes));
        assert!(org.is_err(), "org record {name}: {org:?}");
        let target = parse_target(Some(b"t"), Some(bytes));
        assert!(target.is_err(), "target record {name}: {target:?}");
    }
    // On the registry topics an empty value under a key is a tombstone, like
    // a null one (docs/CONTRACT-NOTES.md); without a key it is a dead letter.
    assert_eq!(parse_org(Some(b"A"), Some(b"")), Ok(OrgUpdate::Remove("A".into())));
    assert!(parse_org(None, Some(b"")).is_err());
    assert_eq!(parse_target(Some(b"t"), Some(b"")), Ok(TargetUpdate::Remove("t".into())));
}
