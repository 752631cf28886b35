//! The handlers. JSON bodies are the `pulse report` shapes; errors are
//! `{"error": "..."}` with a message that says what to do.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_engine::{MonthsReport, PlanReport, Report, UserReport};
use pulse_metrics::{Encoder, Format};
use pulse_model::Fy;
use serde::{Deserialize, Serialize};

use crate::group::group_snapshot;
use crate::{encode_kpis, encode_service, AppState, Lookup};

pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.1 }));
        if self.0 == StatusCode::UNAUTHORIZED {
            (self.0, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.0, body).into_response()
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn not_found(msg: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg)
}

#[derive(Debug, Deserialize)]
pub(crate) struct FyQuery {
    fy: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TargetsQuery {
    fy: Option<String>,
    status: Option<String>,
}

/// The `fy` query parameter, or the financial year of `now`.
fn fy(param: Option<&str>, now: pulse_model::Millis) -> ApiResult<Fy> {
    match param {
        None => Ok(Fy::of(now)),
        Some(s) => s.parse().map_err(|_| {
            ApiError(StatusCode::BAD_REQUEST, format!("`fy` = \"{s}\" is not a financial year like 2025-26"))
        }),
    }
}

/// The whole exposition document.
pub fn render(state: &AppState, format: Format) -> String {
    let mut enc = Encoder::new(format);
    encode_service(&mut enc, (state.readiness)().is_ok());
    encode_kpis(&mut enc, &state.snapshot.get(), (state.clock)(), state.exposition);
    for c in &state.collectors {
        c.collect(&mut enc);
    }
    enc.finish()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("request task failed: {e}")))
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // Rendering thousands of series is CPU work: keep it off the async workers.
    let body = blocking(move || render(&state, format)).await?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

pub(crate) async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("page.html"))
}

/// One node of the hierarchy, as `/api/v1/nodes` lists it.
#[derive(Debug, Serialize)]
pub(crate) struct NodeInfo {
    id: String,
    name: String,
    parent: Option<String>,
    kind: String,
    depth: u32,
}

/// Every node (`national`, `unassigned`, the registered orgs) with its place
/// in the hierarchy, so that clients can name and nest what the KPI answers key by id.
pub(crate) async fn nodes(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let snapshot = state.snapshot.get();
    let nodes: Vec<NodeInfo> = snapshot
        .view
        .nodes()
        .iter()
        .map(|n| NodeInfo {
            id: n.id.clone(),
            name: n.name.clone(),
            parent: n.parent.clone(),
            kind: n.kind.clone(),
            depth: n.depth,
        })
        .collect();
    Json(serde_json::json!({ "nodes": nodes }))
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match (state.readiness)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

pub(crate) async fn node(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    Query(q): Query<FyQuery>,
) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let report = group_snapshot(&state).await?.node_report(&org, fy(q.fy.as_deref(), now)?, now);
    report.map(Json).ok_or_else(|| no_node(&org))
}

fn no_node(org: &str) -> ApiError {
    not_found(format!("no node `{org}`: it is not `national`, `unassigned` or a registered org"))
}

pub(crate) async fn children(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    Query(q): Query<FyQuery>,
) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let report = group_snapshot(&state).await?.children_report(&org, fy(q.fy.as_deref(), now)?, now);
    report.map(Json).ok_or_else(|| no_node(&org))
}

/// The monthly series of one node for one financial year (contract v2 section 13).
pub(crate) async fn months(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    Query(q): Query<FyQuery>,
) -> ApiResult<Json<MonthsReport>> {
    let fy = fy(q.fy.as_deref(), (state.clock)())?;
    group_snapshot(&state).await?.months_report(fy, Some(&org)).map(Json).ok_or_else(|| no_node(&org))
}

/// Every provider the catalogue names, and `unlisted` (contract v2 section 11).
pub(crate) async fn providers(State(state): State<Arc<AppState>>, Query(q): Query<FyQuery>) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let providers = group_snapshot(&state).await?.providers();
    Ok(Json(Report { providers: Some(providers), ..Report::header(fy(q.fy.as_deref(), now)?, now) }))
}

pub(crate) async fn provider(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<FyQuery>,
) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let fy = fy(q.fy.as_deref(), now)?;
    let mut providers = group_snapshot(&state).await?.providers();
    let one = providers.remove_entry(&id).ok_or_else(|| {
        not_found(format!("no provider `{id}`: no catalogue record names it (see /api/v1/providers)"))
    })?;
    Ok(Json(Report { providers: Some([one].into()), ..Report::header(fy, now) }))
}

pub(crate) async fn course(
    State(state): State<Arc<AppState>>,
    Path(course): Path<String>,
    Query(q): Query<FyQuery>,
) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let report = group_snapshot(&state).await?.course_report(&course, fy(q.fy.as_deref(), now)?, now);
    report.map(Json).ok_or_else(|| not_found(format!("no course `{course}` has any accepted event")))
}

pub(crate) async fn targets(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TargetsQuery>,
) -> ApiResult<Json<Report>> {
    let now = (state.clock)();
    let behind = behind_only(q.status.as_deref())?;
    Ok(Json(group_snapshot(&state).await?.targets_report(behind, fy(q.fy.as_deref(), now)?, now)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusQuery {
    status: Option<String>,
}

/// The plans, as `pulse report --all` has them, and whether they are still
/// converging after a plan or registry change (then a KPI may be between
/// its old and new value).
#[derive(Debug, Serialize)]
pub(crate) struct PlansAnswer {
    now: String,
    converging: bool,
    pending_users: i64,
    plans: std::collections::BTreeMap<String, PlanReport>,
}

/// Whether `?status=behind` keeps only the nodes behind their plan.
fn behind_only(status: Option<&str>) -> ApiResult<bool> {
    match status {
        None | Some("all") => Ok(false),
        Some("behind") => Ok(true),
        Some(other) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("`status` = \"{other}\" is not `all` or `behind`")))
        }
    }
}

async fn plans_answer(state: &AppState, status: Option<&str>, only: Option<&str>) -> ApiResult<PlansAnswer> {
    let behind = behind_only(status)?;
    let now = (state.clock)();
    let snapshot = group_snapshot(state).await?;
    let mut plans = snapshot.plans_report(now);
    if let Some(id) = only {
        plans = plans.remove_entry(id).into_iter().collect();
        if plans.is_empty() {
            return Err(not_found(format!("no plan `{id}` (see /api/v1/plans)")));
        }
    }
    if behind {
        for plan in plans.values_mut() {
            plan.nodes.retain(|_, k| k.is_behind());
        }
        plans.retain(|_, p| !p.nodes.is_empty());
    }
    Ok(PlansAnswer {
        now: pulse_model::time::format_ist(now),
        converging: snapshot.plans_converging,
        pending_users: snapshot.plan_users_pending,
        plans,
    })
}

/// Every plan with its nodes (contract v2 section 14).
pub(crate) async fn plans(
    State(state): State<Arc<AppState>>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<PlansAnswer>> {
    plans_answer(&state, q.status.as_deref(), None).await.map(Json)
}

pub(crate) async fn plan(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<PlansAnswer>> {
    plans_answer(&state, q.status.as_deref(), Some(&id)).await.map(Json)
}

/// Checks `Authorization: Bearer TOKEN` against the configured token.
fn authorize(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &state.token else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "user lookups are off: set http.token (or PULSE_HTTP__TOKEN) to turn them on".into(),
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <http.token>`".into())),
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn user(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    Query(q): Query<FyQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let now = (state.clock)();
    let fy = fy(q.fy.as_deref(), now)?;
    let users = Arc::clone(&state.users);
    let id = user.clone();
    let found = blocking(move || users.user(&id))
        .await?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to read user state: {e}")))?;
    match found {
        Lookup::Here(Some(state)) => Ok(Json(UserReport::of(&user, &state, fy)).into_response()),
        Lookup::Here(None) => Err(not_found(format!("no user `{user}` has any accepted event"))),
        // The owner answers the same request (a client sends its token on,
        // e.g. `curl --location-trusted`).
        Lookup::Elsewhere(owner) => {
            let location = format!("http://{owner}{}", uri.path_and_query().map_or(uri.path(), |p| p.as_str()));
            Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response())
        }
        Lookup::Unowned => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no instance owns the partition of user `{user}` right now (a rebalance is under way); retry shortly"
            ),
        )),
    }
}
