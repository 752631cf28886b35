//! Catch-up against the consume ceiling, in one run, on a local broker
//! (`scripts/kafka start`): (a) a bare rdkafka consume loop that does nothing
//! with the messages, (b) Pulse's consumer loop (parse, apply, RocksDB
//! commits with offsets, dead letters) from empty state until caught up.
//!
//! Run: `cargo bench --bench catchup` (`PULSE_BENCH_EVENTS`, default 10,000,000;
//! `PULSE_BENCH_PARTITIONS`, default 16; `KAFKA_PORT`, default 9092).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_engine::{Engine, EngineConfig};
use pulse_kafka::{tools, Settings};
use pulse_loadgen::{World, WorldSpec};
use pulse_model::{Fy, InputFormat, TimeRules};
use pulse_store::{RocksStore, StoreOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wall_clock() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter here.
    let n: u64 = env("PULSE_BENCH_EVENTS", 10_000_000);
    let partitions: i32 = env("PULSE_BENCH_PARTITIONS", 16);
    let brokers = format!("127.0.0.1:{}", env("KAFKA_PORT", 9092u16));
    let id = wall_clock();
    let (events, orgs, targets, dlq) = (
        format!("bench.events.{id}"),
        format!("bench.orgs.{id}"),
        format!("bench.targets.{id}"),
        format!("bench.dlq.{id}"),
    );
    tools::create_topic(&brokers, &events, partitions, false)
        .expect("create topic (is `scripts/kafka start` running?)");
    for t in [&orgs, &targets] {
        tools::create_topic(&brokers, t, 1, true).expect("create topic");
    }
    tools::create_topic(&brokers, &dlq, 1, false).expect("create topic");

    // Two whole financial years before the current one: every event lies in the past.
    let world = World::new(WorldSpec { first_fy: Fy(Fy::of(wall_clock()).0 - 2), ..WorldSpec::default() });
    let org_msgs: Vec<_> = world
        .orgs
        .iter()
        .zip(world.org_lines())
        .map(|(o, l)| (Some(o.id.clone().into_bytes()), Some(l.into_bytes())))
        .collect();
    tools::produce(&brokers, &orgs, &org_msgs).expect("produce orgs");
    let started = Instant::now();
    let mut line = String::new();
    let mut chunk = Vec::with_capacity(100_000);
    let mut bytes = 0usize;
    for e in world.events().spread_over(n).take(n as usize) {
        world.pulse_v1(&e, &mut line);
        bytes += line.len();
        chunk.push((Some(format!("u-{}", e.user).into_bytes()), Some(line.as_bytes().to_vec())));
        if chunk.len() == 100_000 {
            tools::produce(&brokers, &events, &chunk).expect("produce events");
            chunk.clear();
        }
    }
    tools::produce(&brokers, &events, &chunk).expect("produce events");
    eprintln!(
        "preloaded {n} pulse-v1 events ({:.0} bytes each) into {partitions} partitions in {:.1}s",
        bytes as f64 / n as f64,
        started.elapsed().as_secs_f64()
    );

    // (a) The ceiling.
    let t = Instant::now();
    let read = tools::consume_all(&brokers, &events).expect("bare consume");
    let bare = read as f64 / t.elapsed().as_secs_f64();

    // (b) Pulse from empty state to caught up.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RocksStore::open(dir.path(), &StoreOptions::default()).expect("open state");
    // Events span two financial years; accept all of them.
    let config = EngineConfig { time_rules: TimeRules { max_age_ms: 1000 * 86_400_000 }, ..EngineConfig::default() };
    let engine = Engine::open(store, config).expect("engine");
    let group = format!("bench.group.{id}");
    let settings = Settings {
        brokers: brokers.clone(),
        group_id: group.clone(),
        inputs: vec![(events.clone(), InputFormat::PulseV1)],
        orgs_topic: orgs,
        targets_topic: targets,
        dlq_topic: dlq,
        changelog_topic: format!("{group}.changelog"),
        repartition_topic: format!("{group}.repartition"),
        advertise: "127.0.0.1:9464".into(),
        session_timeout: Duration::from_secs(45),
        max_poll_interval: Duration::from_secs(300),
        commit_interval: Duration::from_millis(env("PULSE_BENCH_COMMIT_MS", 100)),
        commit_messages: 20_000,
        instance_id: None,
        shards: None,
        options: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // As `pulse run` does: publish the org-level snapshot at every commit.
            let snapshot = pulse_http::SnapshotCell::default();
            let metrics = Arc::new(pulse_kafka::IngestMetrics::default());
            let ownership = Arc::new(pulse_kafka::Ownership::default());
            let mut publish = |s, _: &RocksStore| snapshot.set(s);
            let engine = Arc::new(std::sync::Mutex::new(engine));
            let shared = pulse_kafka::Shared { engine, metrics, ownership, publish: &mut publish };
            pulse_kafka::run(&settings, shared, &stop, wall_clock)
        })
    };
    let high = tools::high_watermarks(&brokers, &events).expect("watermarks");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let committed = tools::committed_offsets(&brokers, &group, &events).unwrap_or_default();
        if high.iter().all(|(p, h)| committed.get(p).is_some_and(|c| c >= h)) {
            break;
        }
        assert!(!worker.is_finished(), "the consumer loop stopped early");
    }
    let pulse = n as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let stats = worker.join().expect("consumer thread").expect("consumer loop");
    println!("bare rdkafka consume: {bare:>10.0} events/s");
    println!(
        "pulse run catch-up:   {pulse:>10.0} events/s  (accepted {}, duplicates {})",
        stats.events.accepted, stats.events.duplicates
    );
    println!("ratio pulse/bare:     {:>10.3}", pulse / bare);
}
