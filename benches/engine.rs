//! Parse + apply throughput of the engine on the in-memory store, per input
//! format, on a generated iGOT-shaped history (2,500 organisations, 1M users).
//!
//! Run: `cargo bench --bench engine` (`PULSE_BENCH_EVENTS` sets the history
//! length, default 2,000,000). One core: the engine is single-threaded.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pulse_engine::{Engine, EngineConfig, MemStore};
use pulse_loadgen::{World, WorldSpec};
use pulse_model::{parse, Fy, InputFormat, TimeRules};

/// The allocator of the `pulse` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per commit, as `pulse replay` does.
const COMMIT_EVERY: usize = 50_000;

/// The history in one format: every event that format can carry.
fn history(world: &World, n: u64, format: InputFormat) -> Vec<Vec<u8>> {
    let mut line = String::new();
    world
        .events()
        .spread_over(n)
        .take(n as usize)
        .filter_map(|e| {
            let written = match format {
                InputFormat::PulseV1 => {
                    world.pulse_v1(&e, &mut line);
                    true
                }
                InputFormat::SunbirdTelemetry => world.sunbird(&e, world.org_of(e.user), &mut line),
                InputFormat::IgotRating => world.igot_rating(&e, &mut line),
                InputFormat::UserProfile => unreachable!("profiles are not events of the history"),
            };
            written.then(|| line.as_bytes().to_vec())
        })
        .collect()
}

fn engine_with_registry(world: &World, config: &EngineConfig) -> Engine<MemStore> {
    let mut engine = Engine::open(MemStore::new(16), config.clone()).expect("fresh store");
    for line in world.org_lines() {
        engine.apply_org_message(None, Some(line.as_bytes()));
    }
    engine
}

fn bench(c: &mut Criterion) {
    let n: u64 = std::env::var("PULSE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let world = World::new(WorldSpec::default());
    // The history spans two financial years; accept all of it.
    let config = EngineConfig { time_rules: TimeRules { max_age_ms: 1000 * 86_400_000 }, ..EngineConfig::default() };
    let now = Fy(world.spec.first_fy.0 + 1).end();
    // Each format on the same history: Sunbird carries every event but
    // registrations, igot-rating only the ratings.
    for format in [InputFormat::PulseV1, InputFormat::SunbirdTelemetry, InputFormat::IgotRating] {
        let lines = history(&world, n, format);
        let bytes: usize = lines.iter().map(Vec::len).sum();
        eprintln!(
            "{format}: {} events, {:.0} bytes/event, {} orgs, {} users",
            lines.len(),
            bytes as f64 / lines.len() as f64,
            world.orgs.len(),
            world.spec.users
        );
        let mut group = c.benchmark_group("engine");
        group.throughput(Throughput::Elements(lines.len() as u64));
        group.sample_size(10);
        group.bench_function(format!("{format} parse"), |b| {
            b.iter(|| lines.iter().filter(|l| parse(format, None, l).is_ok()).count())
        });
        group.bench_function(format!("{format} parse+apply"), |b| {
            b.iter_batched(
                || engine_with_registry(&world, &config),
                |mut engine| {
                    for line in &lines {
                        engine.ingest(format, None, line, now).expect("in-memory store");
                        if engine.uncommitted() >= COMMIT_EVERY {
                            engine.commit().expect("in-memory store");
                        }
                    }
                    engine.commit().expect("in-memory store");
                    engine
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
