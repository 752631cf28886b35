//! `pulse run` and `pulse serve`: the RocksDB state, the Kafka consumer loop
//! or a read-only refresher, the HTTP server beside them, and the signals
//! that stop them cleanly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pulse_engine::{Engine, EngineConfig};
use pulse_http::{AppState, Lookup, SnapshotCell, UserLookup};
use pulse_kafka::{IngestMetrics, Owner, Ownership, Shared};
use pulse_model::{Millis, TimeRules};
use pulse_store::{RocksStore, StoreMetrics, StoreOptions};
use tracing::info;

use crate::config::{Config, RawConfig};

pub(crate) fn wall_clock() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

pub(crate) fn engine_config(c: &Config) -> EngineConfig {
    EngineConfig {
        dedup_horizon_ms: c.dedup_horizon.as_millis() as i64,
        meeting_minutes: c.meeting_minutes,
        time_rules: TimeRules { max_age_ms: c.max_age.as_millis() as i64 },
    }
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

/// Binds `listen` now, so that a taken port fails at start, then serves on a
/// thread of its own until the process exits.
pub(crate) fn start_http(listen: SocketAddr, key: &str, state: AppState) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("`{key}` = {listen}: cannot listen there (is another process using the port?)"))?;
    info!(%listen, "serving /metrics, /healthz, /readyz and /api/v1");
    std::thread::Builder::new().name("pulse-http".into()).spawn(move || {
        if let Err(e) = runtime.block_on(pulse_http::serve(listener, Arc::new(state), std::future::pending())) {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    })?;
    Ok(())
}

pub(crate) fn run(config_path: &Path) -> anyhow::Result<()> {
    init_logging("info,librdkafka=warn");
    let config = RawConfig::load(config_path, std::env::vars())?.validate()?;
    let options = StoreOptions {
        shards: config.shards,
        block_cache_bytes: config.block_cache_bytes,
        write_buffer_bytes: config.write_buffer_bytes,
    };
    let store = RocksStore::open(&config.data_dir, &options)?;
    let engine = Arc::new(Mutex::new(Engine::open(store, engine_config(&config))?));
    let stop = stop_on_signals()?;

    let ingest = Arc::new(IngestMetrics::default());
    let ownership = Arc::new(Ownership::default());
    let store_metrics = Arc::new(StoreMetrics::default());
    let snapshot = Arc::new(SnapshotCell::default());
    let http = &config.http;
    let readiness = {
        let (ingest, max_lag) = (Arc::clone(&ingest), http.ready_max_lag);
        Box::new(move || ingest.readiness(max_lag))
    };
    let state = AppState {
        snapshot: Arc::clone(&snapshot),
        users: Arc::new(OwnedUsers { engine: engine.clone(), ownership: ownership.clone() }),
        collectors: vec![ingest.clone(), store_metrics.clone()],
        readiness,
        token: http.token.clone(),
        exposition: http.exposition,
        clock: wall_clock,
    };
    start_http(http.listen, "http.listen", state)?;

    let settings = &config.kafka;
    info!(brokers = %settings.brokers, data_dir = %config.data_dir.display(), "pulse run starting");
    let mut publish = |engine: &Engine<RocksStore>| {
        snapshot.set(engine.snapshot());
        store_metrics.record(engine.store());
    };
    let shared = Shared { engine, metrics: ingest, ownership, publish: &mut publish };
    let stats = pulse_kafka::run(settings, shared, &stop, wall_clock)?;
    info!(
        accepted = stats.events.accepted,
        duplicates = stats.events.duplicates,
        ignored = stats.events.ignored,
        dead_letters = ?stats.events.dead_letters,
        registry = stats.registry.accepted,
        "stopped cleanly"
    );
    Ok(())
}

/// User lookups of one instance among several: the user's partition is
/// looked up here if this instance owns it, else pointed to its owner.
struct OwnedUsers {
    engine: Arc<Mutex<Engine<RocksStore>>>,
    ownership: Arc<Ownership>,
}

impl UserLookup for OwnedUsers {
    fn user(&self, id: &str) -> Result<Lookup, String> {
        let shard = self.engine.lock().unwrap_or_else(|p| p.into_inner()).shard_of(id);
        match self.ownership.owner(shard) {
            Owner::Here => self.engine.user(id),
            Owner::At(address) => Ok(Lookup::Elsewhere(address)),
            Owner::Unknown => Ok(Lookup::Unowned),
        }
    }
}

/// What `pulse serve` needs.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    pub data_dir: std::path::PathBuf,
    pub listen: SocketAddr,
    pub refresh: Duration,
    pub exposition: pulse_http::Exposition,
}

/// Serves the state of a data directory without consuming, reopening it
/// read-only every `refresh` so that it follows a `pulse run` beside it.
pub(crate) fn serve(s: &ServeSettings) -> anyhow::Result<()> {
    init_logging("info,librdkafka=warn");
    let stop = stop_on_signals()?;
    let engine = Arc::new(Mutex::new(crate::cli::open_engine_read_only(&s.data_dir)?));
    let snapshot = Arc::new(SnapshotCell::default());
    let store_metrics = Arc::new(StoreMetrics::default());
    let publish = |engine: &Engine<RocksStore>| {
        snapshot.set(engine.snapshot());
        store_metrics.record(engine.store());
    };
    publish(&engine.lock().unwrap_or_else(|p| p.into_inner()));
    let state = AppState {
        snapshot: Arc::clone(&snapshot),
        users: engine.clone(),
        collectors: vec![store_metrics.clone()],
        readiness: Box::new(|| Ok(())),
        token: std::env::var("PULSE_HTTP__TOKEN").ok().filter(|t| !t.trim().is_empty()),
        exposition: s.exposition,
        clock: wall_clock,
    };
    start_http(s.listen, "--listen", state)?;
    info!(data_dir = %s.data_dir.display(), refresh = ?s.refresh, "pulse serve: serving the state read-only");
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited >= s.refresh {
            waited = Duration::ZERO;
            let fresh = crate::cli::open_engine_read_only(&s.data_dir)?;
            publish(&fresh);
            *engine.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
    }
    Ok(())
}
