//! The HTTP API and `/metrics`, driven through `router` with `oneshot`, on
//! the hand-checked golden scenario (tests/golden/scenario) replayed into a
//! RocksDB state directory: the API answers exactly the hand-checked reports,
//! and every KPI on `/metrics` equals the report's value.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use pulse_engine::{Engine, EngineConfig};
use pulse_http::{router, AppState, Exposition, Group, Lookup, ShardOwner, SnapshotCell, UserLookup};
use pulse_model::time::parse_rfc3339;
use pulse_model::Millis;
use pulse_store::{RocksStore, StoreMetrics};
use pulse_tests::{pulse_json, replay_scenario, scenario_dir, SCENARIO_NOW};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

fn now() -> Millis {
    parse_rfc3339(SCENARIO_NOW).unwrap()
}

fn pulse(args: &[&str]) {
    pulse_json(args);
}

/// Replays the scenario into a fresh state directory.
fn replayed() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    replay_scenario(data.path());
    data
}

struct Api {
    state: Arc<AppState>,
}

impl Api {
    fn open(dir: &Path, ready: Result<(), String>) -> Api {
        Api::open_in_group(dir, ready, None)
    }

    /// As one instance of a group whose members `group` describes.
    fn open_in_group(dir: &Path, ready: Result<(), String>, group: Option<Arc<dyn Group>>) -> Api {
        let store = RocksStore::open_read_only(dir).unwrap();
        let engine = Engine::open(store, EngineConfig::default()).unwrap();
        let snapshot = Arc::new(SnapshotCell::default());
        snapshot.set(engine.snapshot());
        let store_metrics = Arc::new(StoreMetrics::default());
        store_metrics.record(engine.store());
        let state = AppState {
            snapshot,
            users: Arc::new(Mutex::new(engine)),
            collectors: vec![store_metrics],
            readiness: Box::new(move || ready.clone()),
            token: Some(TOKEN.into()),
            exposition: Exposition { fys: 2, courses: true },
            clock: now,
            group,
        };
        Api { state: Arc::new(state) }
    }

    async fn call(&self, uri: &str, headers: &[(header::HeaderName, &str)]) -> (StatusCode, String, String) {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(k, *v);
        }
        let resp = router(Arc::clone(&self.state)).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let content_type =
            resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn json(&self, uri: &str, headers: &[(header::HeaderName, &str)]) -> (StatusCode, Value) {
        let (status, _, body) = self.call(uri, headers).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {body}")))
    }
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(scenario_dir().join(name)).unwrap()).unwrap()
}

#[tokio::test]
async fn the_api_answers_the_hand_checked_reports() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    let (status, org) = api.json("/api/v1/nodes/S_5_O_1?fy=2025-26", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(org, expected("expected-org-S_5_O_1.json"));
    let (_, course) = api.json("/api/v1/courses/c3?fy=2025-26", &[]).await;
    assert_eq!(course, expected("expected-course-c3.json"));
    let bearer = format!("Bearer {TOKEN}");
    let (status, user) = api.json("/api/v1/users/u2?fy=2025-26", &[(header::AUTHORIZATION, &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user, expected("expected-user-u2.json"));

    // Children of `national`: the top-level nodes, with the report's numbers.
    let all = expected("expected-report.json");
    let (_, children) = api.json("/api/v1/nodes/national/children?fy=2025-26", &[]).await;
    let ids: Vec<&String> = children["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["M_12", "S_5", "unassigned"]);
    for id in ids {
        assert_eq!(children["nodes"][id], all["nodes"][id], "{id}");
    }
    let (_, targets) = api.json("/api/v1/targets?fy=2025-26", &[]).await;
    assert_eq!(targets["targets"], all["targets"]);
    // All three scenario targets are behind their pace (progress 0.71, 0.63, 0.04).
    let (_, behind) = api.json("/api/v1/targets?status=behind&fy=2025-26", &[]).await;
    assert_eq!(behind["targets"], all["targets"]);
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    let (status, body) = api.json("/api/v1/nodes/NOPE", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("no node `NOPE`"), "{body}");
    let (status, body) = api.json("/api/v1/nodes/national?fy=2025", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("like 2025-26"), "{body}");
    let (status, _) = api.json("/api/v1/targets?status=late", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.json("/api/v1/courses/nope", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = api.json("/api/v1/users/nobody", &[(header::AUTHORIZATION, &bearer)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn user_endpoints_need_the_bearer_token() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    for headers in [vec![], vec![(header::AUTHORIZATION, "Bearer wrong")], vec![(header::AUTHORIZATION, TOKEN)]] {
        let (status, body) = api.json("/api/v1/users/u2", &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    }
    // Without a configured token, user lookups are off altogether.
    let mut off = Api::open(data.path(), Ok(()));
    Arc::get_mut(&mut off.state).unwrap().token = None;
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = off.json("/api/v1/users/u2", &[(header::AUTHORIZATION, &bearer)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("http.token"), "{body}");
}

#[tokio::test]
async fn health_and_readiness() {
    let data = replayed();
    let ready = Api::open(data.path(), Ok(()));
    assert_eq!(ready.call("/healthz", &[]).await.0, StatusCode::OK);
    assert_eq!(ready.call("/readyz", &[]).await.0, StatusCode::OK);
    assert!(ready.call("/metrics", &[]).await.2.contains("\npulse_ready 1\n"));
    let behind = Api::open(data.path(), Err("in/0: 5000 messages behind (max 1000)".into()));
    let (status, _, body) = behind.call("/readyz", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: in/0: 5000 messages behind (max 1000)\n");
    assert!(behind.call("/metrics", &[]).await.2.contains("\npulse_ready 0\n"));
}

/// Samples of a text exposition: `name{labels}` -> value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The report's KPI fields and their metric names and unit factors.
const KPIS: &[(&str, &str, f64)] = &[
    ("registered_users", "pulse_kpi_registered_users", 1.0),
    ("employees", "pulse_kpi_employees", 1.0),
    ("onboarding_ratio", "pulse_kpi_onboarding_ratio", 1.0),
    ("learners", "pulse_kpi_learners", 1.0),
    ("enrolments", "pulse_kpi_enrolments", 1.0),
    ("completions", "pulse_kpi_completions", 1.0),
    ("in_progress", "pulse_kpi_in_progress", 1.0),
    ("completion_ratio", "pulse_kpi_completion_ratio", 1.0),
    ("learning_minutes", "pulse_kpi_learning_seconds", 60.0),
    ("ratings", "pulse_kpi_ratings", 1.0),
    ("average_rating", "pulse_kpi_average_rating_stars", 1.0),
    ("enrolments_fy", "pulse_kpi_enrolments_fy", 1.0),
    ("completions_fy", "pulse_kpi_completions_fy", 1.0),
    ("learning_minutes_fy", "pulse_kpi_learning_seconds_fy", 60.0),
    ("learning_minutes_per_user_fy", "pulse_kpi_learning_seconds_per_user_fy", 60.0),
    ("active_users_fy", "pulse_kpi_active_users_fy", 1.0),
    ("users_meeting_hours_fy", "pulse_kpi_users_meeting_learning_goal_fy", 1.0),
    ("users_meeting_hours_ratio", "pulse_kpi_users_meeting_learning_goal_ratio", 1.0),
    ("assessed", "pulse_kpi_assessed", 1.0),
    ("assessments_passed", "pulse_kpi_assessments_passed", 1.0),
    ("assessment_pass_ratio", "pulse_kpi_assessment_pass_ratio", 1.0),
    ("assessments_passed_fy", "pulse_kpi_assessments_passed_fy", 1.0),
];

/// The windows' report fields (with `_1d`, `_7d`, `_30d`) and their families (label `window`).
const WINDOW_KPIS: &[(&str, &str, f64)] = &[
    ("active_users", "pulse_kpi_active_users_window", 1.0),
    ("enrolments", "pulse_kpi_enrolments_window", 1.0),
    ("completions", "pulse_kpi_completions_window", 1.0),
    ("learning_minutes", "pulse_kpi_learning_seconds_window", 60.0),
];

/// The providers' report fields and their families (label `provider`).
const PROVIDER_KPIS: &[(&str, &str, f64)] = &[
    ("courses", "pulse_provider_courses", 1.0),
    ("enrolments", "pulse_provider_enrolments", 1.0),
    ("completions", "pulse_provider_completions", 1.0),
    ("completion_ratio", "pulse_provider_completion_ratio", 1.0),
    ("learning_minutes", "pulse_provider_learning_seconds", 60.0),
    ("ratings", "pulse_provider_ratings", 1.0),
    ("average_rating", "pulse_provider_average_rating_stars", 1.0),
    ("assessed", "pulse_provider_assessed", 1.0),
    ("assessments_passed", "pulse_provider_assessments_passed", 1.0),
    ("assessment_pass_ratio", "pulse_provider_assessment_pass_ratio", 1.0),
];

/// Checks one series against the report's value: present and equal, or
/// absent where the report has null.
fn check_series(got: &BTreeMap<String, f64>, series: &str, value: Option<f64>, factor: f64) -> usize {
    match value {
        None => {
            assert!(!got.contains_key(series), "{series}: null in the report, so absent");
            0
        }
        Some(v) => {
            let m = got.get(series).unwrap_or_else(|| panic!("{series} missing"));
            assert!(close(*m, v * factor), "{series} = {m}, report says {v} × {factor}");
            1
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn metrics_carry_every_kpi_of_every_node_as_the_report_says() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    let (status, content_type, body) = api.call("/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let got = samples(&body);
    let report = expected("expected-report.json");
    let mut checked = 0;
    for (node, kpis) in report["nodes"].as_object().unwrap() {
        for (field, metric, factor) in KPIS {
            let series = if field.ends_with("_fy") || field.ends_with("_ratio") && field.starts_with("users_meeting") {
                format!("{metric}{{org=\"{node}\",fy=\"2025-26\"}}")
            } else {
                format!("{metric}{{org=\"{node}\"}}")
            };
            checked += check_series(&got, &series, kpis[field].as_f64(), *factor);
        }
        for (field, metric, factor) in WINDOW_KPIS {
            for w in ["1d", "7d", "30d"] {
                let series = format!("{metric}{{org=\"{node}\",window=\"{w}\"}}");
                checked += check_series(&got, &series, kpis[format!("{field}_{w}")].as_f64(), *factor);
            }
        }
    }
    for (provider, kpis) in report["providers"].as_object().unwrap() {
        for (field, metric, factor) in PROVIDER_KPIS {
            let series = format!("{metric}{{provider=\"{provider}\"}}");
            checked += check_series(&got, &series, kpis[field].as_f64(), *factor);
        }
        assert!(got.contains_key(&format!(
            "pulse_provider_info{{provider=\"{provider}\",name=\"{}\"}}",
            kpis["name"].as_str().unwrap()
        )));
    }
    assert!(checked > 100, "{checked}");
    // The info series carries what dashboards join on.
    let info = r#"pulse_org_info{org="S_5_O_1",name="State org with an unknown parent",parent="unassigned",kind="organisation",depth="2"} 1"#;
    assert!(body.contains(info), "{info}");
    let target = "{target=\"fy26-enrol-national\",org=\"national\",kpi=\"enrolments_fy\",fy=\"2025-26\"}";
    let progress = report["targets"]["fy26-enrol-national"]["progress"].as_f64().unwrap();
    assert!(close(got[&format!("pulse_target_progress_ratio{target}")], progress));
    assert_eq!(got[&format!("pulse_target_value{target}")], 10.0);
    assert_eq!(got["pulse_course_enrolments{course=\"c3\"}"], 1.0);
    // u4's profile moved it from X_UNKNOWN to M_12_D_3: only S_5_O_2 is left.
    assert_eq!(got["pulse_registry_unknown_orgs"], 1.0, "the tombstoned S_5_O_2");
    assert!(got["pulse_store_disk_bytes"] > 0.0);
    // No user id is ever a label or a value.
    for user in ["u1", "u2", "u3", "u4", "u5", "u6", "u7"] {
        assert!(!body.contains(&format!("\"{user}\"")), "{user} appears on /metrics");
    }
}

#[tokio::test]
#[cfg_attr(not(feature = "services"), ignore = "needs promtool: scripts/test runs it (--features services)")]
async fn openmetrics_when_asked_and_promtool_finds_nothing_to_lint() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (_, content_type, om) = api.call("/metrics", &[(header::ACCEPT, accept)]).await;
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(om.ends_with("# EOF\n"));
    let (_, _, text) = api.call("/metrics", &[]).await;
    let lint = promtool_check_metrics(&text);
    assert_eq!(lint, "", "promtool check metrics:\n{lint}");
}

/// Runs `promtool check metrics` (Debian's `prometheus` package) on a body.
pub fn promtool_check_metrics(body: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's `prometheus` package (.ci/run does)");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn series_of_removed_orgs_and_targets_disappear() {
    let data = replayed();
    let dir = data.path().to_str().unwrap();
    let before = Api::open(data.path(), Ok(())).call("/metrics", &[]).await.2;
    assert!(before.contains("org=\"S_5_O_1\""));
    assert!(before.contains("target=\"fy26-onboard-S_5\""));
    let tombstones = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tombstones.path(), "S_5_O_1\t\n").unwrap();
    let target_tombstones = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(target_tombstones.path(), "fy26-onboard-S_5\t\n").unwrap();
    pulse(&[
        "replay",
        "--data-dir",
        dir,
        "--orgs",
        tombstones.path().to_str().unwrap(),
        "--targets",
        target_tombstones.path().to_str().unwrap(),
        "--now",
        SCENARIO_NOW,
    ]);
    let after = Api::open(data.path(), Ok(())).call("/metrics", &[]).await.2;
    assert!(!after.contains("org=\"S_5_O_1\""), "the removed org's series are gone");
    assert!(!after.contains("target=\"fy26-onboard-S_5\""), "the removed target's series are gone");
    // Its user now counts under `unassigned`, as the contract says.
    assert!(after.contains("pulse_registry_unknown_orgs 2\n"));
}

/// `schemas/openapi.yaml` documents exactly the routes the router serves.
#[test]
fn the_openapi_document_lists_the_routes() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for method in item.as_mapping().unwrap().keys() {
            documented.push(format!("{} {}", method.as_str().unwrap(), path.as_str().unwrap()));
        }
    }
    documented.sort();
    // Every route is a GET.
    let mut served: Vec<String> = pulse_http::routes().into_iter().map(|(p, _)| format!("get {p}")).collect();
    served.sort();
    assert_eq!(documented, served);
}

#[tokio::test]
async fn fy_families_cover_the_configured_number_of_latest_years() {
    let data = replayed();
    let mut api = Api::open(data.path(), Ok(()));
    let two = api.call("/metrics", &[]).await.2;
    assert!(two.contains("fy=\"2024-25\"") && two.contains("fy=\"2025-26\""));
    Arc::get_mut(&mut api.state).unwrap().exposition.fys = 1;
    let one = api.call("/metrics", &[]).await.2;
    assert!(!one.contains("fy=\"2024-25\"") && one.contains("fy=\"2025-26\""));
    // Older years stay in the API.
    let (_, old) = api.json("/api/v1/nodes/national?fy=2024-25", &[]).await;
    assert_eq!(old["nodes"]["national"]["enrolments_fy"], 1);
}

/// Where another instance says a user lives.
struct Away(Lookup);

impl UserLookup for Away {
    fn user(&self, _: &str) -> Result<Lookup, String> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn a_user_another_instance_owns_is_redirected_there_and_an_unowned_one_is_retried() {
    let data = replayed();
    let mut api = Api::open(data.path(), Ok(()));
    let bearer = format!("Bearer {TOKEN}");
    let auth = [(header::AUTHORIZATION, bearer.as_str())];
    Arc::get_mut(&mut api.state).unwrap().users = Arc::new(Away(Lookup::Elsewhere("10.0.0.7:9464".into())));
    let req = Request::get("/api/v1/users/u%202?fy=2025-26").header(header::AUTHORIZATION, &bearer);
    let resp = router(Arc::clone(&api.state)).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers().get(header::LOCATION).unwrap().to_str().unwrap();
    assert_eq!(location, "http://10.0.0.7:9464/api/v1/users/u%202?fy=2025-26", "the same request, on the owner");

    Arc::get_mut(&mut api.state).unwrap().users = Arc::new(Away(Lookup::Unowned));
    let (status, body) = api.json("/api/v1/users/u2", &auth).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
}

/// A group as one instance sees it: fixed owners.
struct Owners(Vec<ShardOwner>);

impl Group for Owners {
    fn owners(&self) -> Vec<ShardOwner> {
        self.0.clone()
    }
}

#[tokio::test]
async fn reads_of_the_group_answer_503_with_the_reason_while_a_share_is_missing() {
    let data = replayed();
    let unowned = Owners(vec![ShardOwner::Here, ShardOwner::Unknown]);
    let api = Api::open_in_group(data.path(), Ok(()), Some(Arc::new(unowned)));
    let (status, body) = api.json("/api/v1/nodes/national", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains("partition 1 has no owner"), "{body}");
    // /metrics stays this instance's own.
    assert_eq!(api.call("/metrics", &[]).await.0, StatusCode::OK);

    // A port nothing listens on: the OS picks it, the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let silent = format!("127.0.0.1:{port}");
    let unreachable = Owners(vec![ShardOwner::Here, ShardOwner::At(silent.clone())]);
    let api = Api::open_in_group(data.path(), Ok(()), Some(Arc::new(unreachable)));
    let (status, body) = api.json("/api/v1/providers", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains(&format!("the instance at {silent} did not send")), "{body}");

    // Every shard here: the instance's own snapshot is the group's.
    let alone = Owners(vec![ShardOwner::Here, ShardOwner::Here]);
    let api = Api::open_in_group(data.path(), Ok(()), Some(Arc::new(alone)));
    let (status, body) = api.json("/api/v1/nodes/national?fy=2025-26", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["nodes"]["national"], expected("expected-report.json")["nodes"]["national"]);
}

/// The plans of the hand-checked scenario (its README has the arithmetic),
/// through the API and `/metrics`.
#[tokio::test]
async fn plans_answer_as_the_report_has_them_and_behind_keeps_the_nodes_behind() {
    let data = replayed();
    let api = Api::open(data.path(), Ok(()));
    let report = expected("expected-report.json");
    let (status, all) = api.json("/api/v1/plans", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["plans"], report["plans"]);
    assert_eq!((&all["converging"], &all["pending_users"]), (&Value::Bool(false), &Value::from(0)));

    let (_, one) = api.json("/api/v1/plans/acbp-so", &[]).await;
    assert_eq!(one["plans"].as_object().unwrap().len(), 1);
    assert_eq!(one["plans"]["acbp-so"], report["plans"]["acbp-so"]);
    // Behind: progress below 1, or courses overdue. S_5 completed its one
    // course, late: progress 1 and nothing overdue, so it is not behind;
    // nodes nobody there is assigned have no progress, and are not either.
    let (_, behind) = api.json("/api/v1/plans/acbp-so?status=behind", &[]).await;
    let nodes: Vec<&String> = behind["plans"]["acbp-so"]["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(nodes, ["M_12", "M_12_D_3", "national"]);
    let (status, _) = api.json("/api/v1/plans/p-gone", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a tombstoned plan is gone");
    let (status, _) = api.json("/api/v1/plans?status=late", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let metrics = api.call("/metrics", &[]).await.2;
    for line in [
        "pulse_plan_users{plan=\"acbp-m12\",org=\"M_12\"} 3\n",
        "pulse_plan_courses_assigned{plan=\"acbp-m12\",org=\"M_12_D_3\"} 4\n",
        "pulse_plan_courses_completed{plan=\"acbp-so\",org=\"S_5\"} 1\n",
        "pulse_plan_courses_completed_on_time{plan=\"acbp-so\",org=\"S_5\"} 0\n",
        "pulse_plan_users_compliant{plan=\"acbp-m12\",org=\"M_12_D_3_O_7\"} 1\n",
        // Zeros too, so that an alert sees a node where nobody has started.
        "pulse_plan_users{plan=\"acbp-so\",org=\"S_5_O_1\"} 0\n",
        "pulse_plan_info{plan=\"acbp-so\",org=\"national\",due=\"2025-05-05T23:59:59+05:30\"} 1\n",
        "pulse_plan_min_share{plan=\"acbp-m12\"} 0.5\n",
        "pulse_plan_reevaluation_pending_users 0\n",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    assert!(!metrics.contains("plan=\"p-gone\""));
}
