//! `pulse run`: configuration, the RocksDB state, the Kafka consumer loop,
//! and the signals that stop it cleanly.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use pulse_engine::{Engine, EngineConfig};
use pulse_model::{Millis, TimeRules};
use pulse_store::{RocksStore, StoreOptions};
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

pub(crate) fn run(config_path: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = RawConfig::load(config_path, std::env::vars())?.validate()?;
    let options = StoreOptions {
        shards: config.shards,
        block_cache_bytes: config.block_cache_bytes,
        write_buffer_bytes: config.write_buffer_bytes,
    };
    let store = RocksStore::open(&config.data_dir, &options)?;
    let engine = Engine::open(store, engine_config(&config))?;

    // SIGTERM and SIGINT: stop fetching, persist, commit, exit 0.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("failed to install a signal handler")?;
    }
    let settings = &config.kafka;
    info!(brokers = %settings.brokers, data_dir = %config.data_dir.display(), "pulse run starting");
    let stats = pulse_kafka::run(settings, engine, &stop, wall_clock)?;
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
