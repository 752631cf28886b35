//! Pulse's HTTP side: `/metrics` (Prometheus text or OpenMetrics),
//! `/healthz`, `/readyz`, the query API under `/api/v1`, and a live page at
//! `/` (plain HTML and JS compiled into the binary, reading the API).
//!
//! This crate owns the routes, their JSON and error shapes, the bearer-token
//! check of the user endpoints and the KPI metric families. It reads only
//! what others publish: the latest [`Snapshot`] (org level, O(orgs)), the
//! [`Collect`]ors of the other crates, a readiness check, a user lookup and
//! the group's membership ([`Group`]): with several instances, every KPI
//! read answers the whole group, summing the owners' shares ([`pulse_engine::Partial`]s,
//! served under `/internal/v1/partial`).
//! [`router`] builds the routes without binding a socket, so tests drive it
//! with `oneshot`. It must not depend on Kafka or RocksDB.

mod api;
mod group;
mod metrics;

use std::sync::{Arc, RwLock};

use axum::routing::{get, MethodRouter};
use axum::Router;
use pulse_engine::{Engine, Snapshot, Store, UserState};
use pulse_metrics::Collect;
use pulse_model::Millis;

pub use api::render;
pub use group::{Group, ShardOwner};
pub use metrics::{encode_kpis, encode_service, Exposition};

/// The latest published org-level snapshot, swapped whole at every commit.
#[derive(Debug, Default)]
pub struct SnapshotCell(RwLock<Arc<Snapshot>>);

impl SnapshotCell {
    pub fn set(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    pub fn get(&self) -> Arc<Snapshot> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Where a user's state is, as seen by this instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// This instance owns the user's partition; `None`: no accepted event.
    Here(Option<UserState>),
    /// Another instance owns it and serves HTTP at this `host:port`.
    Elsewhere(String),
    /// No instance owns it right now (a rebalance is under way).
    Unowned,
}

/// Looks one user up (blocking; called off the async workers).
pub trait UserLookup: Send + Sync {
    fn user(&self, id: &str) -> Result<Lookup, String>;
}

/// An engine that holds every user (a served state directory, the demo):
/// a short lock, then one store read.
impl<S: Store + Send> UserLookup for std::sync::Mutex<Engine<S>> {
    fn user(&self, id: &str) -> Result<Lookup, String> {
        let engine = self.lock().unwrap_or_else(|p| p.into_inner());
        engine.user(id).map(Lookup::Here).map_err(|e| e.to_string())
    }
}

pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Everything the routes read.
pub struct AppState {
    pub snapshot: Arc<SnapshotCell>,
    pub users: Arc<dyn UserLookup>,
    /// Service metrics of the other crates (ingest, store).
    pub collectors: Vec<Arc<dyn Collect>>,
    pub readiness: Readiness,
    /// Bearer token of the user endpoints; `None` turns them off.
    pub token: Option<String>,
    pub exposition: Exposition,
    pub clock: fn() -> Millis,
    /// The group's members; `None` when this instance holds every shard.
    pub group: Option<Arc<dyn Group>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("exposition", &self.exposition).finish_non_exhaustive()
    }
}

/// Every route with its handler: the one list that [`router`] serves and
/// the OpenAPI test compares with `schemas/openapi.yaml`.
pub fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/", get(api::page)),
        ("/metrics", get(api::metrics)),
        ("/healthz", get(api::healthz)),
        ("/readyz", get(api::readyz)),
        ("/api/v1/nodes", get(api::nodes)),
        ("/api/v1/nodes/{org}", get(api::node)),
        ("/api/v1/nodes/{org}/children", get(api::children)),
        ("/api/v1/nodes/{org}/months", get(api::months)),
        ("/api/v1/courses/{course}", get(api::course)),
        ("/api/v1/providers", get(api::providers)),
        ("/api/v1/providers/{provider}", get(api::provider)),
        ("/api/v1/targets", get(api::targets)),
        ("/api/v1/plans", get(api::plans)),
        ("/api/v1/plans/{plan}", get(api::plan)),
        ("/api/v1/users/{user}", get(api::user)),
        ("/internal/v1/partial", get(group::partial)),
    ]
}

pub fn router(state: Arc<AppState>) -> Router {
    routes().into_iter().fold(Router::new(), |r, (path, route)| r.route(path, route)).with_state(state)
}

/// Serves `router` on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
