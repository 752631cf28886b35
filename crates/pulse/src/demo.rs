//! `pulse demo`: Pulse with no external services. The load generator's
//! iGOT-shaped world feeds the same engine and RocksDB state as `pulse run`,
//! in this process: the course catalogue, capacity-building plans and a
//! third of the users' profiles,
//! then a backfill of the two financial years up to now (with assessments),
//! then a live stream at `--rate` events/s stamped with the wall clock, while
//! the page, `/metrics` and the API are served and a one-line summary is
//! printed every few seconds.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use pulse_engine::{Engine, EngineConfig, IngestStats, NodeKpis};
use pulse_http::Exposition;
use pulse_loadgen::{World, WorldSpec};
use pulse_model::{Fy, InputFormat, TimeRules};
use pulse_store::{RocksStore, StoreOptions};

use crate::runtime::{init_logging, stop_on_signals, wall_clock, Served, Serving};

#[derive(Debug)]
pub(crate) struct DemoSettings {
    pub listen: SocketAddr,
    pub users: u64,
    pub backfill: u64,
    pub rate: u32,
    pub duration: Option<Duration>,
    pub data_dir: Option<PathBuf>,
}

const TICK: Duration = Duration::from_millis(100);
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn demo(s: &DemoSettings, out: &mut dyn Write) -> anyhow::Result<()> {
    init_logging("warn");
    let stop = stop_on_signals()?;
    let temp;
    let dir = match &s.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("failed to make a temporary state directory")?;
            temp.path().to_owned()
        }
    };
    let now = wall_clock();
    let this_fy = Fy::of(now);
    let world =
        World::new(WorldSpec { users: s.users, first_fy: Fy(this_fy.0 - 1), assessments: 0.3, ..WorldSpec::default() });
    // The backfill reaches back to the start of last year.
    let config = EngineConfig { time_rules: TimeRules { max_age_ms: 800 * 86_400_000 }, ..EngineConfig::default() };
    let engine = Engine::open(RocksStore::open(&dir, &StoreOptions::default())?, config)?;
    let engine = Arc::new(Mutex::new(engine));
    {
        let mut e = lock(&engine);
        for (org, line) in world.orgs.iter().zip(world.org_lines()) {
            e.apply_org_message(Some(org.id.as_bytes()), Some(line.as_bytes()));
        }
        // The M&E framework's targets: four hours per user in every ministry
        // and state, and enrolments nationally.
        let mut targets: Vec<serde_json::Value> = world
            .orgs
            .iter()
            .filter(|o| o.parent.is_none())
            .map(|o| {
                serde_json::json!({"v": 1, "id": format!("hours-{}", o.id), "org": o.id,
                    "kpi": "learning_minutes_per_user_fy", "value": 240, "fy": this_fy.to_string()})
            })
            .collect();
        targets.push(serde_json::json!({"v": 1, "id": "enrolments-national", "org": "national",
            "kpi": "enrolments_fy", "value": s.users * 2, "fy": this_fy.to_string()}));
        for t in targets {
            e.apply_target_message(None, Some(t.to_string().as_bytes()));
        }
        for (course, line) in world.course_lines() {
            e.apply_course_message(Some(course.as_bytes()), Some(line.as_bytes()));
        }
        // Capacity-building plans due this year: national, per ministry by
        // designation, per department by user id.
        for (plan, line) in world.plan_lines() {
            e.apply_plan_message(Some(plan.as_bytes()), Some(line.as_bytes()));
        }
        let mut line = String::new();
        for user in (0..s.users).step_by(3) {
            world.profile_line(user, &mut line);
            e.ingest(InputFormat::UserProfile, Some(format!("u-{user}").as_bytes()), line.as_bytes(), now)?;
        }
    }
    writeln!(
        out,
        "pulse demo: {} orgs, {} users; backfilling {} events up to now into {}",
        world.orgs.len(),
        s.users,
        s.backfill,
        dir.display()
    )?;
    // Event time advances linearly from the start of last year to now.
    let mut events = world.events().spread_over(s.backfill).until(now);
    let mut stats = IngestStats::default();
    let mut line = String::new();
    let started = Instant::now();
    {
        let mut e = lock(&engine);
        for (i, ev) in events.by_ref().take(s.backfill as usize).enumerate() {
            world.pulse_v1(&ev, &mut line);
            stats.record(&e.ingest(InputFormat::PulseV1, None, line.as_bytes(), now)?);
            if i % 50_000 == 49_999 {
                e.commit()?;
            }
        }
        e.commit()?;
    }
    writeln!(out, "backfill: {} events applied in {:.1}s", stats.accepted, started.elapsed().as_secs_f64())?;

    let served = Served::default();
    served.publish_engine(&lock(&engine));
    let token = std::env::var("PULSE_HTTP__TOKEN").unwrap_or_else(|_| "demo".into());
    served.start(Serving {
        listen: s.listen,
        listen_key: "--listen",
        users: engine.clone(),
        group: None,
        collectors: Vec::new(),
        readiness: Box::new(|| Ok(())),
        token: Some(token.clone()),
        exposition: Exposition { fys: 2, courses: false },
    })?;
    let base = format!("http://{}", s.listen);
    writeln!(
        out,
        "\nPulse is live at {base}/  (the page: national KPIs and windows, month by month, drill-down, providers, targets behind)"
    )?;
    writeln!(out, "  metrics   {base}/metrics")?;
    writeln!(out, "  API       {base}/api/v1/nodes/national   {base}/api/v1/targets?status=behind")?;
    writeln!(out, "            {base}/api/v1/nodes/national/months   {base}/api/v1/providers")?;
    writeln!(out, "  a user    curl -H 'Authorization: Bearer {token}' {base}/api/v1/users/u-1")?;
    writeln!(out, "streaming {} events/s with event time = now; Ctrl-C stops\n", s.rate)?;

    let per_tick = (u64::from(s.rate) * TICK.as_millis() as u64 / 1000).max(1);
    let live_start = Instant::now();
    let mut last_summary = Instant::now();
    let mut last_publish = Instant::now();
    let mut live = 0u64;
    while !stop.load(Ordering::Relaxed) && s.duration.is_none_or(|d| live_start.elapsed() < d) {
        let tick = Instant::now();
        {
            let mut e = lock(&engine);
            for mut ev in events.by_ref().take(per_tick as usize) {
                ev.ts = wall_clock();
                world.pulse_v1(&ev, &mut line);
                stats.record(&e.ingest(InputFormat::PulseV1, None, line.as_bytes(), ev.ts)?);
                live += 1;
            }
            e.commit()?;
            if last_publish.elapsed() >= pulse_kafka::PUBLISH_INTERVAL {
                served.publish_engine(&e);
                last_publish = Instant::now();
            }
        }
        if last_summary.elapsed() >= SUMMARY_EVERY {
            summary(out, served.snapshot(), live, live_start.elapsed())?;
            last_summary = Instant::now();
        }
        std::thread::sleep(TICK.saturating_sub(tick.elapsed()));
    }
    served.publish_engine(&lock(&engine));
    summary(out, served.snapshot(), live, live_start.elapsed())?;
    Ok(())
}

/// One line: the national KPIs of this financial year and the live rate.
fn summary(out: &mut dyn Write, snapshot: &pulse_http::SnapshotCell, live: u64, over: Duration) -> anyhow::Result<()> {
    let snap = snapshot.get();
    let now = wall_clock();
    let Some(national) = snap.view.node(pulse_engine::NATIONAL) else { return Ok(()) };
    let k = NodeKpis::of(national, Fy::of(now), snap.windows_today(now));
    let behind = snap.targets.values().filter(|t| snap.target_status(t, now).is_behind()).count();
    let plans = snap.plans_report(now);
    let plans_behind = plans.values().filter(|p| p.nodes.get(&p.org).is_some_and(|k| k.is_behind())).count();
    let pct = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r));
    writeln!(
        out,
        "national FY {}: {} users ({} onboarded), {} enrolments, {} completions, {:.0} learning hours, {} meeting 4h, {} assessments passed; active today {}, 7 days {}; {} of {} targets behind; {} of {} plans behind pace; {:.0} events/s live",
        Fy::of(now),
        k.registered_users,
        pct(k.onboarding_ratio),
        k.enrolments_fy,
        k.completions_fy,
        k.learning_minutes_fy / 60.0,
        pct(k.users_meeting_hours_ratio),
        pct(k.course_kpis.assessment_pass_ratio),
        k.windows.active_users_1d.unwrap_or(0),
        k.windows.active_users_7d.unwrap_or(0),
        behind,
        snap.targets.len(),
        plans_behind,
        plans.len(),
        live as f64 / over.as_secs_f64().max(0.001),
    )?;
    Ok(())
}
