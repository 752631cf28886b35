//! Process plumbing the commands share: the clock, logging, signals,
//! opening a state directory read-only, and the HTTP server with what it
//! serves ([`Served`], the one place that builds the HTTP state).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use pulse_engine::{Engine, EngineConfig, Snapshot, Store};
use pulse_http::{AppState, Exposition, Group, Readiness, SnapshotCell, UserLookup};
use pulse_metrics::Collect;
use pulse_model::Millis;
use pulse_store::{RocksStore, StoreMetrics};
use tracing::info;

pub(crate) fn wall_clock() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// Logs to stderr at `default` unless `RUST_LOG` says otherwise.
pub(crate) fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// SIGTERM and SIGINT set the returned flag.
pub(crate) fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("failed to install a signal handler")?;
    }
    Ok(stop)
}

/// Opens the state of a data directory read-only: also while `pulse run` holds it.
pub(crate) fn open_engine_read_only(data_dir: &Path) -> anyhow::Result<Engine<RocksStore>> {
    let store = RocksStore::open_read_only(data_dir)?;
    // The stored threshold is the one to report with.
    let meeting_minutes = store.load()?.meeting_minutes.unwrap_or(EngineConfig::default().meeting_minutes);
    Ok(Engine::open(store, EngineConfig { meeting_minutes, ..EngineConfig::default() })?)
}

/// What the HTTP server shows of an engine: the published snapshot and the
/// store's sizes. The owner of the engine publishes committed state into it.
#[derive(Debug, Default)]
pub(crate) struct Served {
    snapshot: Arc<SnapshotCell>,
    store: Arc<StoreMetrics>,
}

/// How the server is reached and what else it answers.
pub(crate) struct Serving {
    pub listen: SocketAddr,
    /// The setting `listen` came from, named when it cannot be bound.
    pub listen_key: &'static str,
    pub users: Arc<dyn UserLookup>,
    /// The group's members, for cluster-wide reads (`None`: this process holds every shard).
    pub group: Option<Arc<dyn Group>>,
    /// Service metrics besides the store's (the consumer loop's).
    pub collectors: Vec<Arc<dyn Collect>>,
    pub readiness: Readiness,
    pub token: Option<String>,
    pub exposition: Exposition,
}

impl Served {
    /// Publishes a snapshot of committed state, and the store's sizes.
    pub(crate) fn publish(&self, snapshot: Snapshot, store: &RocksStore) {
        self.snapshot.set(snapshot);
        self.store.record(store);
    }

    /// Publishes the engine's state (the caller makes sure it is committed).
    pub(crate) fn publish_engine(&self, engine: &Engine<RocksStore>) {
        self.publish(engine.snapshot(), engine.store());
    }

    pub(crate) fn snapshot(&self) -> &SnapshotCell {
        &self.snapshot
    }

    /// Binds `listen` now, so that a taken port fails at start, then serves
    /// on a thread of its own until the process exits.
    pub(crate) fn start(&self, s: Serving) -> anyhow::Result<()> {
        let mut collectors = s.collectors;
        collectors.push(self.store.clone());
        let state = AppState {
            snapshot: Arc::clone(&self.snapshot),
            users: s.users,
            collectors,
            readiness: s.readiness,
            token: s.token,
            exposition: s.exposition,
            clock: wall_clock,
            group: s.group,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(s.listen)).with_context(|| {
            format!("`{}` = {}: cannot listen there (is another process using the port?)", s.listen_key, s.listen)
        })?;
        info!(listen = %s.listen, "serving /metrics, /healthz, /readyz and /api/v1");
        std::thread::Builder::new().name("pulse-http".into()).spawn(move || {
            if let Err(e) = runtime.block_on(pulse_http::serve(listener, Arc::new(state), std::future::pending())) {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        })?;
        Ok(())
    }
}
