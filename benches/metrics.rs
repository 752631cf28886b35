//! `/metrics` render time for the full iGOT-shaped registry (~3,200 nodes:
//! 90 ministries and states, 600 departments, 2,500 organisations), every KPI
//! of one financial year with the contract v2 ones (windows, assessments,
//! providers of a 4,000-course catalogue), at 100k and 1M users: rendering
//! reads the org-level snapshot only, so its cost must not grow with the users.
//!
//! Run: `cargo bench --bench metrics`. Prints, per user count: the events
//! applied, the nodes, the series and bytes of one scrape, the time to build
//! the snapshot (paid at every commit) and the median and worst render time;
//! then the stored bytes per user: before v2 (the same users re-encoded
//! without the v2 fields, with the fixed-width integers stored then), the v2
//! layout with those integers (what the new rules add), and as stored now.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use pulse_engine::codec::encode;
use pulse_engine::{Engine, EngineConfig, MemStore, UserState};
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

/// The bytes of a value stored with the fixed-width integers of the value
/// format before v2: a version byte, then plain bincode.
macro_rules! fixed_width {
    ($v:expr) => {
        1 + bincode::serialized_size($v).expect("plain data") as usize
    };
}

/// A user's state as stored before contract v2 (bincode encodes a struct as
/// the tuple of its fields): minutes per FY and active FYs instead of
/// months and days, and no profile, assessments or latest activity.
fn before_v2(u: &UserState) -> usize {
    let mut fy_minutes_ms: BTreeMap<Fy, i64> = BTreeMap::new();
    for (m, ms) in u.months.iter().filter(|(_, ms)| **ms > 0) {
        *fy_minutes_ms.entry(m.fy()).or_insert(0) += ms;
    }
    let mut active_fys: Vec<Fy> = u.months.iter().map(|(m, _)| m.fy()).collect();
    active_fys.dedup();
    let courses: BTreeMap<&str, _> = u
        .courses
        .iter()
        .map(|(id, c)| (id.as_str(), (c.enrolled_at, c.completed_at, c.minutes_ms, c.percent, &c.rating)))
        .collect();
    fixed_width!(&(&u.org, courses, fy_minutes_ms, active_fys))
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
    let mut state_sizes = Vec::new();
    for users in [100_000u64, 1_000_000] {
        let world = World::new(WorldSpec { users, assessments: 0.3, ..WorldSpec::default() });
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
        for (course, line) in world.course_lines() {
            engine.apply_course_message(Some(course.as_bytes()), Some(line.as_bytes()));
        }
        // A third of the users have a profile.
        let mut line = String::new();
        for user in (0..users).step_by(3) {
            world.profile_line(user, &mut line);
            engine
                .ingest(InputFormat::UserProfile, Some(format!("u-{user}").as_bytes()), line.as_bytes(), now())
                .expect("apply");
        }
        // Three events per user on average, over the two years.
        let n = users * 3;
        // Up to `now`, so that the windows hold the last days' activity.
        for (i, e) in world.events().spread_over(n).until(now()).take(n as usize).enumerate() {
            world.pulse_v1(&e, &mut line);
            engine.ingest(InputFormat::PulseV1, None, line.as_bytes(), now()).expect("apply");
            if i % 100_000 == 0 {
                engine.commit().expect("commit");
            }
        }
        engine.commit().expect("commit");
        let (mut registered, mut sizes) = (0u64, [0usize; 3]);
        for user in 0..users {
            if let Some(state) = engine.user(&format!("u-{user}")).expect("read") {
                registered += 1;
                for (sum, size) in sizes.iter_mut().zip([before_v2(&state), fixed_width!(&state), encode(&state).len()])
                {
                    *sum += size;
                }
            }
        }
        state_sizes.push((users, sizes.map(|b| b as f64 / registered.max(1) as f64)));

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
    println!(
        "\n{:>9} {:>21} {:>22} {:>8} {:>21}",
        "users", "bytes/user before v2", "v2 rules, same codec", "growth", "v2 as stored (varint)"
    );
    for (users, [before, rules, stored]) in state_sizes {
        println!("{users:>9} {before:>21.1} {rules:>22.1} {:>8.1} {stored:>21.1}", rules - before);
    }
}
