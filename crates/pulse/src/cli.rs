//! The command line: `pulse demo`, `replay`, `report`, `run` and `serve`.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pulse_engine::{Engine, EngineConfig, IngestStats, UserReport};
use pulse_model::time::parse_rfc3339;
use pulse_model::{Fy, InputFormat, Millis, TimeRules};
use serde::Serialize;

use pulse_store::{RocksStore, StoreOptions};

use crate::files::{replay_file, Source};
use crate::runtime::{open_engine_read_only, wall_clock};

#[derive(Parser, Debug)]
#[command(name = "pulse", version, about = "Pulse: live KPIs for Mission Karmayogi")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply messages from files to the state in --data-dir, then print a summary.
    Replay(ReplayArgs),
    /// Print KPIs from the state in --data-dir as JSON.
    Report(ReportArgs),
    /// Consume the Kafka topics of --config and keep the state up to date until
    /// SIGTERM, serving /metrics and the API meanwhile.
    Run(RunArgs),
    /// Pulse with no external services: a generated world feeds the engine and
    /// RocksDB in this process while the page, /metrics and the API are served.
    Demo(DemoArgs),
    /// Serve /metrics and the API from the state in --data-dir, without consuming
    /// (after a `pulse replay`, or read-only beside a running `pulse run`).
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Address of the page, /metrics and the API.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: std::net::SocketAddr,
    /// Users of the generated world (its registry has ~3,200 nodes).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Events applied before serving, spread over last year and this one up to now.
    #[arg(long, default_value_t = 300_000)]
    backfill: u64,
    /// Live events per second after the backfill.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Keep the state here (default: a temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Address to serve on. User endpoints need PULSE_HTTP__TOKEN set.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: std::net::SocketAddr,
    /// How often to reopen the state to pick up new commits.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    refresh: std::time::Duration,
    /// Add the per-course families to /metrics.
    #[arg(long)]
    course_metrics: bool,
    /// The `_fy` families on /metrics cover this many of the latest financial years with data.
    #[arg(long, default_value_t = 2)]
    metrics_fys: usize,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration; `PULSE_SECTION__KEY` environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// An input file, one message value per line, as FORMAT=PATH with FORMAT one
    /// of pulse-v1, sunbird-telemetry, igot-rating, user-profile (whose lines are
    /// as for --orgs). Repeatable.
    #[arg(long = "input", value_name = "FORMAT=PATH", value_parser = parse_input)]
    inputs: Vec<(InputFormat, PathBuf)>,
    /// Org registry records: a JSON record or KEY<TAB>VALUE per line (empty VALUE: tombstone).
    #[arg(long, value_name = "PATH")]
    orgs: Option<PathBuf>,
    /// Target records, in the same line format as --orgs.
    #[arg(long, value_name = "PATH")]
    targets: Option<PathBuf>,
    /// The course catalogue, in the same line format as --orgs.
    #[arg(long, value_name = "PATH")]
    courses: Option<PathBuf>,
    /// Capacity-building plans, in the same line format as --orgs.
    #[arg(long, value_name = "PATH")]
    plans: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// The wall clock the time rules compare events with (RFC 3339; default: now).
    #[arg(long, value_parser = parse_time)]
    now: Option<Millis>,
    /// Events older than this many days are dead letters (`too_old`).
    #[arg(long, default_value_t = 400)]
    max_age_days: u32,
}

#[derive(Args, Debug)]
struct StateArgs {
    /// The state directory.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = true)]
struct Scope {
    /// Every node, course, provider and target.
    #[arg(long, conflicts_with_all = ["org", "user", "course", "months"])]
    all: bool,
    /// One node (an org id, `national` or `unassigned`); with --months, its monthly series.
    #[arg(long, value_name = "ID", conflicts_with_all = ["user", "course"])]
    org: Option<String>,
    /// One user (the individual level).
    #[arg(long, value_name = "ID", conflicts_with_all = ["course", "months"])]
    user: Option<String>,
    /// One course.
    #[arg(long, value_name = "ID", conflicts_with = "months")]
    course: Option<String>,
    /// The monthly series of the financial year, for every node (or --org's).
    #[arg(long)]
    months: bool,
}

#[derive(Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    state: StateArgs,
    /// Financial year of the `_fy` KPIs, like 2025-26 (default: the one containing --now).
    #[arg(long, value_parser = parse_fy)]
    fy: Option<Fy>,
    /// The clock for target pace (RFC 3339; default: the wall clock).
    #[arg(long, value_parser = parse_time)]
    now: Option<Millis>,
}

fn parse_input(s: &str) -> Result<(InputFormat, PathBuf), String> {
    let (format, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not FORMAT=PATH"))?;
    Ok((format.parse().map_err(|e| format!("{e}"))?, PathBuf::from(path)))
}

fn parse_time(s: &str) -> Result<Millis, String> {
    parse_rfc3339(s)
        .ok_or_else(|| format!("`{s}` is not an RFC 3339 time with an offset, like 2026-01-15T00:00:00+05:30"))
}

fn parse_fy(s: &str) -> Result<Fy, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Runs the command line, writing its output to `out`.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>, out: &mut dyn Write) -> anyhow::Result<()> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            write!(out, "{e}")?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match cli.command {
        Command::Replay(args) => replay(args, out),
        Command::Report(args) => report(args, out),
        Command::Run(args) => crate::run::run(&args.config),
        Command::Demo(args) => crate::demo::demo(
            &crate::demo::DemoSettings {
                listen: args.listen,
                users: args.users,
                backfill: args.backfill,
                rate: args.rate,
                duration: args.duration,
                data_dir: args.data_dir,
            },
            out,
        ),
        Command::Serve(args) => crate::run::serve(&crate::run::ServeSettings {
            data_dir: args.state.data_dir,
            listen: args.listen,
            refresh: args.refresh,
            exposition: pulse_http::Exposition { fys: args.metrics_fys.max(1), courses: args.course_metrics },
        }),
    }
}

#[derive(Serialize)]
struct ReplaySummary {
    events: IngestStats,
    orgs: IngestStats,
    targets: IngestStats,
    courses: IngestStats,
    plans: IngestStats,
    dead_letter_file: Option<PathBuf>,
}

fn replay(args: ReplayArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = EngineConfig {
        time_rules: TimeRules { max_age_ms: i64::from(args.max_age_days) * 86_400_000 },
        ..EngineConfig::default()
    };
    let store = RocksStore::open(&args.state.data_dir, &StoreOptions::default())?;
    let mut engine = Engine::open(store, config)?;
    let now = args.now.unwrap_or_else(wall_clock);
    let dead_path = args.state.data_dir.join("dead-letters.ndjson");
    let dead_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&dead_path)
        .with_context(|| format!("failed to open {}", dead_path.display()))?;
    let mut dead = BufWriter::new(dead_file);
    let mut summary = ReplaySummary {
        events: IngestStats::default(),
        orgs: IngestStats::default(),
        targets: IngestStats::default(),
        courses: IngestStats::default(),
        plans: IngestStats::default(),
        dead_letter_file: None,
    };
    let started = std::time::Instant::now();
    if let Some(path) = &args.orgs {
        replay_file(&mut engine, Source::Orgs, path, now, &mut summary.orgs, &mut dead)?;
    }
    if let Some(path) = &args.targets {
        replay_file(&mut engine, Source::Targets, path, now, &mut summary.targets, &mut dead)?;
    }
    if let Some(path) = &args.courses {
        replay_file(&mut engine, Source::Courses, path, now, &mut summary.courses, &mut dead)?;
    }
    if let Some(path) = &args.plans {
        replay_file(&mut engine, Source::Plans, path, now, &mut summary.plans, &mut dead)?;
    }
    for (format, path) in &args.inputs {
        replay_file(&mut engine, Source::Input(*format), path, now, &mut summary.events, &mut dead)?;
    }
    dead.flush().with_context(|| format!("failed to write {}", dead_path.display()))?;
    engine.converge_plans()?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let n: u64 = [&summary.events, &summary.orgs, &summary.targets, &summary.courses, &summary.plans]
            .iter()
            .map(|s| s.accepted + s.duplicates + s.ignored + s.dead_letters.values().sum::<u64>())
            .sum();
        let secs = started.elapsed().as_secs_f64();
        eprintln!("replayed {n} messages in {secs:.1}s: {:.0} messages/s", n as f64 / secs.max(1e-9));
    }
    let any_dead = [&summary.events, &summary.orgs, &summary.targets, &summary.courses, &summary.plans]
        .iter()
        .any(|s| !s.dead_letters.is_empty());
    summary.dead_letter_file = any_dead.then_some(dead_path);
    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(())
}

fn report(args: ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let engine = open_engine_read_only(&args.state.data_dir)?;
    let now = args.now.unwrap_or_else(wall_clock);
    let fy = args.fy.unwrap_or_else(|| Fy::of(now));
    let scope = args.scope;
    let unknown_node = |org: &str| {
        format!("no node `{org}`: it is not `national`, `unassigned` or a registered org (see `pulse report --all`)")
    };
    let json = if scope.months {
        let months = engine.snapshot().months_report(fy, scope.org.as_deref());
        serde_json::to_string_pretty(&months.with_context(|| unknown_node(scope.org.as_deref().unwrap_or_default()))?)?
    } else if let Some(user) = scope.user {
        let state = engine.user(&user)?.with_context(|| format!("no user `{user}` has any accepted event"))?;
        serde_json::to_string_pretty(&UserReport::of(&user, &state, fy))?
    } else {
        let snapshot = engine.snapshot();
        let report = if scope.all {
            snapshot.report(fy, now)
        } else if let Some(org) = scope.org {
            snapshot.node_report(&org, fy, now).with_context(|| unknown_node(&org))?
        } else if let Some(course) = scope.course {
            snapshot
                .course_report(&course, fy, now)
                .with_context(|| format!("no course `{course}` has any accepted event"))?
        } else {
            unreachable!("clap requires one of --all, --org, --user, --course, --months")
        };
        serde_json::to_string_pretty(&report)?
    };
    writeln!(out, "{json}")?;
    Ok(())
}
