//! `pulse run` and `pulse serve`: the RocksDB state, the Kafka consumer loop
//! or a read-only refresher, the HTTP server beside them, and the signals
//! that stop them cleanly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pulse_engine::{Engine, EngineConfig};
use pulse_http::{Group, Lookup, ShardOwner, UserLookup};
use pulse_kafka::{IngestMetrics, Owner, Ownership, Shared};
use pulse_model::TimeRules;
use pulse_store::{RocksStore, StoreOptions};
use tracing::info;

use crate::config::{Config, RawConfig};
use crate::runtime::{init_logging, open_engine_read_only, stop_on_signals, wall_clock, Served, Serving};

pub(crate) fn engine_config(c: &Config) -> EngineConfig {
    EngineConfig {
        dedup_horizon_ms: c.dedup_horizon.as_millis() as i64,
        meeting_minutes: c.meeting_minutes,
        time_rules: TimeRules { max_age_ms: c.max_age.as_millis() as i64 },
        plan_slice_users: c.plan_slice_users,
    }
}

pub(crate) fn run(config_path: &Path) -> anyhow::Result<()> {
    init_logging("info,librdkafka=warn");
    let config = RawConfig::load(config_path, std::env::vars())?.validate()?;
    let options = StoreOptions {
        // A fresh directory takes the shard count once the topics are known.
        shards: config.kafka.shards.unwrap_or(StoreOptions::default().shards),
        block_cache_bytes: config.memory.store_cache,
        write_buffer_bytes: config.memory.store_write_buffers,
    };
    let store = RocksStore::open(&config.data_dir, &options)?;
    let engine = Arc::new(Mutex::new(Engine::open(store, engine_config(&config))?));
    let stop = stop_on_signals()?;

    let ingest = Arc::new(IngestMetrics::default());
    let ownership = Arc::new(Ownership::default());
    let served = Served::default();
    let http = &config.http;
    let readiness = {
        let (ingest, max_lag, max_stall) = (Arc::clone(&ingest), http.ready_max_lag, http.ready_max_stall);
        Box::new(move || ingest.readiness(max_lag, max_stall))
    };
    let members = Arc::new(OwnedUsers { engine: engine.clone(), ownership: ownership.clone() });
    served.start(Serving {
        listen: http.listen,
        listen_key: "http.listen",
        users: members.clone(),
        group: Some(members),
        collectors: vec![ingest.clone()],
        readiness,
        token: http.token.clone(),
        exposition: http.exposition,
    })?;

    let settings = &config.kafka;
    info!(brokers = %settings.brokers, data_dir = %config.data_dir.display(), "pulse run starting");
    let mut publish = |snapshot, store: &RocksStore| served.publish(snapshot, store);
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
/// looked up here if this instance owns it, else pointed to its owner; and
/// the owners of every partition, for reads of the whole group's KPIs.
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

impl Group for OwnedUsers {
    fn owners(&self) -> Vec<ShardOwner> {
        let shards = self.engine.lock().unwrap_or_else(|p| p.into_inner()).shards();
        (0..shards)
            .map(|shard| match self.ownership.owner(shard) {
                Owner::Here => ShardOwner::Here,
                Owner::At(address) => ShardOwner::At(address),
                Owner::Unknown => ShardOwner::Unknown,
            })
            .collect()
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
    let engine = Arc::new(Mutex::new(open_engine_read_only(&s.data_dir)?));
    let served = Served::default();
    served.publish_engine(&engine.lock().unwrap_or_else(|p| p.into_inner()));
    served.start(Serving {
        listen: s.listen,
        listen_key: "--listen",
        users: engine.clone(),
        group: None,
        collectors: Vec::new(),
        readiness: Box::new(|| Ok(())),
        token: std::env::var("PULSE_HTTP__TOKEN").ok().filter(|t| !t.trim().is_empty()),
        exposition: s.exposition,
    })?;
    info!(data_dir = %s.data_dir.display(), refresh = ?s.refresh, "pulse serve: serving the state read-only");
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited >= s.refresh {
            waited = Duration::ZERO;
            let fresh = open_engine_read_only(&s.data_dir)?;
            served.publish_engine(&fresh);
            *engine.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
    }
    Ok(())
}
