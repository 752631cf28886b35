//! The binaries end to end, without Kafka: the page at `/` in headless
//! Chromium (Debian's `chromium` package), served by `pulse serve` on the
//! hand-checked scenario (it must show the same numbers as the API, and
//! drill-down must show a node's children); `pulse demo`; and
//! `pulse-loadgen`'s files in every format, replayed, against its expected report.
#![allow(clippy::unwrap_used)]

#[path = "common/http.rs"]
mod http;
#[path = "common/page.rs"]
mod page;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{free_port, http_get, wait_for_ok};
use page::{attributes, cells, rendered};
use serde_json::Value;

const NOW: &str = "2026-01-15T00:00:00+05:30";

fn pulse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pulse"))
}

/// `pulse serve` on the scenario replayed into `dir`.
fn serve_scenario(dir: &Path) -> (Child, String) {
    let s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/scenario");
    let status = pulse()
        .args(["replay", "--now", NOW, "--data-dir"])
        .arg(dir)
        .arg("--orgs")
        .arg(s.join("orgs.ndjson"))
        .arg("--targets")
        .arg(s.join("targets.ndjson"))
        .arg("--courses")
        .arg(s.join("courses.ndjson"))
        .arg("--plans")
        .arg(s.join("plans.ndjson"))
        .arg(format!("--input=pulse-v1={}", s.join("events.ndjson").display()))
        .arg(format!("--input=user-profile={}", s.join("profiles.ndjson").display()))
        .arg(format!("--input=igot-rating={}", s.join("igot.ndjson").display()))
        .arg(format!("--input=sunbird-telemetry={}", s.join("sunbird.ndjson").display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let addr = format!("127.0.0.1:{}", free_port());
    let child =
        pulse().args(["serve", "--listen", &addr, "--data-dir"]).arg(dir).stderr(Stdio::null()).spawn().unwrap();
    wait_for_ok(&addr, "/healthz", Duration::from_secs(30));
    (child, addr)
}

fn api(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every cell the page shows for `org` equals the API's value.
fn assert_cells_match(cells: &BTreeMap<String, Value>, org: &str, kpis: &Value) -> usize {
    let prefix = format!("{org}/");
    let mine: Vec<_> = cells.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
    for (key, shown) in &mine {
        let kpi = &key[prefix.len()..];
        // JavaScript has one number type: compare values, not spellings.
        assert_eq!(shown.as_f64(), kpis[kpi].as_f64(), "{key}: the page shows {shown}, the API says {}", kpis[kpi]);
        assert_eq!(shown.is_null(), kpis[kpi].is_null(), "{key}");
    }
    mine.len()
}

/// The page's monthly chart of `org`: one bar per month and series, each the API's value.
fn assert_months_match(cells: &BTreeMap<String, Value>, addr: &str, org: &str) {
    let months = api(addr, &format!("/api/v1/nodes/{org}/months?fy=2025-26"));
    let mut bars = 0;
    for (month, kpis) in months["nodes"][org].as_object().unwrap() {
        for kpi in ["enrolments", "completions", "learning_minutes", "active_users"] {
            let shown =
                cells.get(&format!("{org}@{month}/{kpi}")).unwrap_or_else(|| panic!("no bar {org} {month} {kpi}"));
            assert_eq!(shown.as_f64(), kpis[kpi].as_f64(), "{org} {month} {kpi}");
            bars += 1;
        }
    }
    assert_eq!(bars, 48, "12 months × 4 series");
}

#[test]
#[cfg_attr(not(feature = "services"), ignore = "needs Chromium: scripts/test runs it (--features services)")]
fn the_page_shows_the_api_numbers_and_drills_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, addr) = serve_scenario(dir.path());

    let dom = rendered(&format!("http://{addr}/?fy=2025-26"));
    assert_eq!(attributes(&dom, "data-shown"), ["national"], "the page did not finish loading");
    let shown = cells(&dom);
    let national = api(&addr, "/api/v1/nodes/national?fy=2025-26");
    // 11 FY and all-time cards, 6 windows.
    assert_eq!(assert_cells_match(&shown, "national", &national["nodes"]["national"]), 17);
    assert_months_match(&shown, &addr, "national");
    // Providers: every one the API lists, its numbers, lowest rating first.
    let providers = api(&addr, "/api/v1/providers?fy=2025-26");
    let providers = providers["providers"].as_object().unwrap();
    let rows = attributes(&dom, "data-provider");
    // P_7 is rated (3.33); unlisted and P_9 are not, and unlisted has the
    // lower completion rate (0 against none).
    assert_eq!(rows, ["P_7", "unlisted", "P_9"]);
    for (id, kpis) in providers {
        assert_eq!(assert_cells_match(&shown, &format!("provider:{id}"), kpis), 6, "{id}");
    }
    let children = api(&addr, "/api/v1/nodes/national/children?fy=2025-26");
    let mut rows = attributes(&dom, "data-org");
    rows.sort_unstable();
    let expected: Vec<&String> = children["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(rows, expected);
    for (id, kpis) in children["nodes"].as_object().unwrap() {
        assert_eq!(assert_cells_match(&shown, id, kpis), 6, "{id}");
        assert!(dom.contains(&format!("href=\"#/node/{id}\"")), "no drill-down link to {id}");
    }
    let behind = api(&addr, "/api/v1/targets?status=behind&fy=2025-26");
    let targets = behind["targets"].as_object().unwrap();
    assert!(!targets.is_empty());
    for (id, status) in targets {
        assert_eq!(assert_cells_match(&shown, id, status), 3, "{id}");
    }

    // The one plan covering national, with its numbers there.
    let plans = api(&addr, "/api/v1/plans");
    assert_eq!(attributes(&dom, "data-plan"), ["acbp-so"]);
    assert_eq!(assert_cells_match(&shown, "plan:acbp-so@national", &plans["plans"]["acbp-so"]["nodes"]["national"]), 6);
    // Marked behind as `?status=behind` says (a course overdue there).
    assert!(dom.contains(r#"data-cell="plan:acbp-so@national/progress=0.5" class="behind""#), "not marked behind");

    // Drill-down: the ministry's page lists its department.
    let dom = rendered(&format!("http://{addr}/?fy=2025-26#/node/M_12"));
    assert_eq!(attributes(&dom, "data-shown"), ["M_12"]);
    let shown = cells(&dom);
    let m12 = api(&addr, "/api/v1/nodes/M_12?fy=2025-26");
    assert_eq!(assert_cells_match(&shown, "M_12", &m12["nodes"]["M_12"]), 17);
    assert_months_match(&shown, &addr, "M_12");
    assert_eq!(attributes(&dom, "data-org"), ["M_12_D_3"]);
    let d3 = api(&addr, "/api/v1/nodes/M_12_D_3?fy=2025-26");
    assert_eq!(assert_cells_match(&shown, "M_12_D_3", &d3["nodes"]["M_12_D_3"]), 6);
    assert!(dom.contains("Ministry of Personnel"), "the breadcrumb names the ministry");
    // Both plans cover M_12, furthest behind first: progress 0 (acbp-so),
    // then 1/6 (acbp-m12).
    assert_eq!(attributes(&dom, "data-plan"), ["acbp-so", "acbp-m12"]);
    for id in ["acbp-so", "acbp-m12"] {
        let kpis = &plans["plans"][id]["nodes"]["M_12"];
        assert_eq!(assert_cells_match(&shown, &format!("plan:{id}@M_12"), kpis), 6, "{id}");
    }

    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[test]
fn pulse_demo_runs_with_no_external_services() {
    let addr = format!("127.0.0.1:{}", free_port());
    let demo = pulse()
        .args([
            "demo",
            "--listen",
            &addr,
            "--users",
            "5000",
            "--backfill",
            "20000",
            "--rate",
            "500",
            "--duration",
            "4s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let national: Value =
        serde_json::from_str(&wait_for_ok(&addr, "/api/v1/nodes/national", Duration::from_secs(60))).unwrap();
    let kpis = &national["nodes"]["national"];
    assert!(kpis["registered_users"].as_i64().unwrap() > 0, "{national}");
    // Contract v2 is visible: recent activity, assessments, providers, months.
    assert!(kpis["active_users_7d"].as_i64().unwrap() > 0, "{national}");
    assert!(kpis["assessed"].as_i64().unwrap() > 0, "{national}");
    let providers: Value = serde_json::from_str(&http_get(&addr, "/api/v1/providers").unwrap().1).unwrap();
    assert!(providers["providers"].as_object().unwrap().len() > 2, "{providers}");
    let (status, _) = http_get(&addr, "/api/v1/nodes/national/months").unwrap();
    assert_eq!(status, 200);
    let plans: Value = serde_json::from_str(&http_get(&addr, "/api/v1/plans").unwrap().1).unwrap();
    assert!(plans["plans"]["acbp-national"]["nodes"]["national"]["users"].as_i64().unwrap() > 0, "{plans}");
    let (status, page) = http_get(&addr, "/").unwrap();
    assert!(status == 200 && page.contains("<title>Pulse"));
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(metrics.contains("pulse_kpi_registered_users{org=\"national\"}"));
    let out = demo.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(&format!("Pulse is live at http://{addr}/")), "{stdout}");
    let summary = stdout.lines().rfind(|l| l.starts_with("national FY")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(summary.contains("events/s live") && summary.contains("plans behind pace"), "{summary}");
}

#[test]
fn loadgen_files_in_every_format_replay_to_its_expected_report() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("load");
    let expected = dir.path().join("expected.json");
    let now = "2026-03-31T23:00:00+05:30";
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-loadgen"))
        .args(["--seed", "7", "--users", "3000", "--events", "30000", "--top-level", "8", "--departments", "20"])
        .args(["--organisations", "60", "--courses", "80", "--first-fy", "2024-25", "--mix", "mixed"])
        .args(["--duplicates", "0.02", "--out-of-order", "0.05", "--migrations", "0.01", "--malformed", "0.01"])
        // Contract v2: assessments, profiles, and events up to `now` (recent activity for the windows).
        .args(["--assessments", "0.3", "--profiles", "0.4", "--recent", "--plans"])
        .args(["--now", now, "--fy", "2025-26", "--max-age-days", "800", "--out"])
        .arg(&files)
        .arg("--expected")
        .arg(&expected)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = dir.path().join("data");
    let file = |name: &str| files.join(format!("{name}.ndjson")).display().to_string();
    let replay = pulse()
        .args(["replay", "--now", now, "--max-age-days", "800", "--data-dir"])
        .arg(&data)
        .args(["--orgs", &file("orgs"), "--targets", &file("targets"), "--courses", &file("courses")])
        .args(["--plans", &file("plans")])
        .arg(format!("--input=pulse-v1={}", file("pulse-v1")))
        .arg(format!("--input=user-profile={}", file("user-profile")))
        .arg(format!("--input=sunbird-telemetry={}", file("sunbird-telemetry")))
        .arg(format!("--input=igot-rating={}", file("igot-rating")))
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let summary: Value = serde_json::from_slice(&replay.stdout).unwrap();
    let events = &summary["events"];
    assert!(events["duplicates"].as_u64().unwrap() > 300, "{summary}");
    assert!(events["dead_letters"]["invalid_json"].as_u64().unwrap() > 100, "{summary}");
    let report =
        pulse().args(["report", "--all", "--now", now, "--fy", "2025-26", "--data-dir"]).arg(&data).output().unwrap();
    assert!(report.status.success());
    let actual: Value = serde_json::from_slice(&report.stdout).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
    if let Some(d) = pulse_oracle::json_diff(&actual, &expected) {
        panic!("pulse differs from the loadgen's expected report: {d}");
    }
    // The v2 inputs are there to be compared: windows, assessments, providers.
    let national = &actual["nodes"]["national"];
    assert!(national["active_users_7d"].as_i64().unwrap() > 0, "{national}");
    assert!(national["assessed"].as_i64().unwrap() > 100, "{national}");
    assert!(actual["providers"].as_object().unwrap().len() > 1);
    // Plans of every assignment type (everyone; designations, per
    // ministry; users, per department), with users assigned and completions.
    let plans = actual["plans"].as_object().unwrap();
    assert_eq!(plans.len(), 1 + 8 + 5);
    let busy = |id: &String| {
        let root = &plans[id]["nodes"][plans[id]["org"].as_str().unwrap()];
        root["users"].as_i64().unwrap() > 0 && root["courses_completed"].as_i64().unwrap() > 0
    };
    assert!(busy(&"acbp-national".to_owned()) && busy(&"acbp-M_0".to_owned()));
    assert!(plans.keys().filter(|id| id.contains("_D_")).any(busy), "a plan by user ids");
}

/// With the brokers unreachable, `pulse run` stays up and says so: it
/// retries with backoff, `/healthz` answers, `/readyz` says why it is not ready.
#[test]
fn pulse_run_waits_for_unreachable_brokers_and_is_not_ready_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("pulse.toml");
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[store]\ndata_dir = \"{}\"\n[http]\nlisten = \"{http}\"\n",
        free_port(),
        dir.path().join("data").display()
    );
    std::fs::write(&config, toml).unwrap();
    let log = std::fs::File::create(dir.path().join("pulse.log")).unwrap();
    let mut run = pulse().args(["run", "--config"]).arg(&config).stderr(log).spawn().unwrap();
    wait_for_ok(&http, "/healthz", Duration::from_secs(30));
    let (status, body) = http_get(&http, "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (503, "not ready: reading the org registry and targets\n"));
    let log = dir.path().join("pulse.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap().contains("Kafka is unreachable; retrying") {
        assert!(std::time::Instant::now() < deadline, "no retry logged:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(run.try_wait().unwrap().is_none(), "pulse run exited instead of retrying");
    run.kill().unwrap();
    run.wait().unwrap();
}
