//! `/metrics` render time for the full iGOT-shaped registry (~3,200 nodes:
//! 90 ministries and states, 600 departments, 2,500 organisations), every KPI
//! of one financial year, at 100k and 1M users: rendering reads the org-level
//! snapshot only, so its cost must not grow with the users.
//!
//! Run: `cargo bench --bench metrics`. Prints, per user count: the events
//! applied, the nodes, the series and bytes of one scrape, the time to build
//! the snapshot (paid at every commit) and the median and worst render time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_engine::{Engine, EngineConfig, MemStore};
use pulse_http::{render, AppState, Exposition, SnapshotCell};
use pulse_loadgen::{World, WorldSpec};
use pulse_metrics::Format;
use pulse_model::{Fy, InputFormat, Millis, TimeRules};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RENDERS: usize = 30;

fn now() -> Millis {
    Fy(2025).end() - 86_400_000
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>9} {:>9} {:>6} {:>8} {:>10} {:>12} {:>14} {:>11}",
        "users", "events", "nodes", "series", "bytes", "snapshot ms", "render ms p50", "render max"
    );
    for users in [100_000u64, 1_000_000] {
        let world = World::new(WorldSpec { users, ..WorldSpec::default() });
        let config =
            EngineConfig { time_rules: TimeRules { max_age_ms: 1000 * 86_400_000 }, ..EngineConfig::default() };
        let mut engine = Engine::open(MemStore::new(16), config).expect("fresh store");
        for line in world.org_lines() {
            engine.apply_org_message(None, Some(line.as_bytes()));
        }
        // A target per ministry or state, as the M&E framework sets them.
        for org in world.orgs.iter().filter(|o| o.parent.is_none()) {
            let t = format!(
                r#"{{"v":1,"id":"t-{0}","org":"{0}","kpi":"learning_minutes_per_user_fy","value":240,"fy":"2025-26"}}"#,
                org.id
            );
            engine.apply_target_message(None, Some(t.as_bytes()));
        }
        // Three events per user on average, over the two years.
        let n = users * 3;
        let mut line = String::new();
        for (i, e) in world.events().spread_over(n).take(n as usize).enumerate() {
            world.pulse_v1(&e, &mut line);
            engine.ingest(InputFormat::PulseV1, None, line.as_bytes(), now()).expect("apply");
            if i % 100_000 == 0 {
                engine.commit().expect("commit");
            }
        }
        engine.commit().expect("commit");

        let t = Instant::now();
        let snapshot = engine.snapshot();
        let snapshot_time = t.elapsed();
        let cell = Arc::new(SnapshotCell::default());
        cell.set(snapshot);
        let state = AppState {
            snapshot: cell,
            users: Arc::new(Mutex::new(engine)),
            collectors: Vec::new(),
            readiness: Box::new(|| Ok(())),
            token: None,
            exposition: Exposition { fys: 1, courses: false },
            clock: now,
            group: None,
        };
        let mut times = Vec::with_capacity(RENDERS);
        let mut body = String::new();
        for _ in 0..RENDERS {
            let t = Instant::now();
            body = render(&state, Format::Text);
            times.push(t.elapsed());
        }
        let series = body.lines().filter(|l| !l.starts_with('#')).count();
        let worst = *times.iter().max().expect("renders");
        println!(
            "{users:>9} {n:>9} {:>6} {series:>8} {:>10} {:>12.2} {:>14.2} {:>11.2}",
            state.snapshot.get().view.nodes().len(),
            body.len(),
            snapshot_time.as_secs_f64() * 1e3,
            median(times).as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3,
        );
    }
}
