//! `pulse-loadgen`: a deterministic (by `--seed`), iGOT-shaped load for
//! Pulse. The world (ministries and states, departments, organisations with
//! heavy-tailed sanctioned strength, Zipf-spread users and course popularity)
//! and its event mix (with the course catalogue, profiles and assessments)
//! come from `pulse-loadgen`'s library; this binary adds
//! the formats, the perturbations (exact duplicates, out-of-order arrival,
//! user migrations, malformed messages) and the sinks: NDJSON files in every
//! input format, or Kafka topics keyed by user (Sunbird telemetry by message id), at a fixed rate or as fast as
//! possible. It can write the reference model's expected report of exactly
//! what it produced.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pulse_kafka::tools::{self, Producer};
use pulse_loadgen::{GenEvent, GenKind, UserDraw, World, WorldSpec};
use pulse_model::time::parse_rfc3339;
use pulse_model::{Fy, InputFormat, TimeRules};
use pulse_oracle::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "pulse-loadgen", version, about = "A deterministic, iGOT-shaped load for Pulse")]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Events to generate (before duplicates and malformed messages are added).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Start at the stream's event N: the continuation of an earlier run
    /// with the same seed and `--events N` (new ids, same world, users
    /// registered once).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Ministries and states.
    #[arg(long, default_value_t = 90)]
    top_level: usize,
    #[arg(long, default_value_t = 600)]
    departments: usize,
    #[arg(long, default_value_t = 2_500)]
    organisations: usize,
    #[arg(long, default_value_t = 4_000)]
    courses: usize,
    /// The first of the two financial years the events span, like 2025-26
    /// (default: last year, so the events end by the end of this one).
    #[arg(long, value_parser = |s: &str| s.parse::<Fy>().map_err(|e| e.to_string()))]
    first_fy: Option<Fy>,
    /// Event time = the wall clock when produced (live load), instead of spread over the two years.
    #[arg(long)]
    live: bool,
    /// Event time drawn uniformly over this many days ending where the
    /// stream's time ends, whatever the arrival order (a backfill merged
    /// from many sources), instead of advancing with it.
    #[arg(long, value_name = "DAYS")]
    scatter_days: Option<u32>,
    /// The events end at --now instead of the end of the second year, so the
    /// last of them are recent activity (the 1, 7 and 30-day windows).
    #[arg(long)]
    recent: bool,
    /// Which users the learner journeys go to: `uniform` (2M events over 1M
    /// users touch about 270k), or `everyone` (every user within the first
    /// `users / 0.75` journeys, and a hot head).
    #[arg(long, value_enum, default_value_t = Draw::Uniform)]
    draw: Draw,
    /// Learner journeys under way at once: a journey's events lie about
    /// six times this many events apart, so it sets how recently a consumer
    /// last saw an event's user (on iGOT a course takes days to weeks).
    #[arg(long, default_value_t = 4_096)]
    journeys: usize,
    /// Share of learner journeys with an assessment attempt (pulse-v1 only).
    #[arg(long, default_value_t = 0.0)]
    assessments: f64,
    /// Write capacity-building plans of every assignment type (the world's
    /// `plan_lines`) to the plans topic.
    #[arg(long)]
    plans: bool,
    /// Share of users with a profile on the user-profile topic (with a designation).
    #[arg(long, default_value_t = 0.0)]
    profiles: f64,
    /// Which formats carry the events.
    #[arg(long, value_enum, default_value_t = Mix::PulseV1)]
    mix: Mix,
    /// Share of events sent twice (the copy a few messages later).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of events held back and sent up to 200 messages later.
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Share of events whose user moves to another organisation from then on.
    #[arg(long, default_value_t = 0.0)]
    migrations: f64,
    /// Share of messages replaced by a malformed one (a dead letter for Pulse).
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Write NDJSON files here: orgs, targets, courses and one file per input format.
    #[arg(long, value_name = "DIR", conflicts_with = "brokers", required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// Produce to Kafka here instead (topics are created if missing).
    #[arg(long)]
    brokers: Option<String>,
    /// Messages per second when producing (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Partitions of topics this tool creates.
    #[arg(long, default_value_t = 16)]
    partitions: i32,
    #[arg(long, default_value = "pulse.telemetry")]
    events_topic: String,
    #[arg(long, default_value = "pulse.sunbird")]
    sunbird_topic: String,
    #[arg(long, default_value = "pulse.ratings")]
    ratings_topic: String,
    #[arg(long, default_value = "pulse.orgs")]
    orgs_topic: String,
    #[arg(long, default_value = "pulse.targets")]
    targets_topic: String,
    #[arg(long, default_value = "pulse.courses")]
    courses_topic: String,
    #[arg(long, default_value = "pulse.plans")]
    plans_topic: String,
    #[arg(long, default_value = "pulse.users")]
    users_topic: String,
    /// Write the reference model's `pulse report --all` of what was produced
    /// (it keeps every message in memory: a few million at most).
    #[arg(long, value_name = "FILE")]
    expected: Option<PathBuf>,
    /// The report's clock (RFC 3339; default: now).
    #[arg(long)]
    now: Option<String>,
    /// The report's financial year (default: the one of --now).
    #[arg(long)]
    fy: Option<String>,
    /// The report's time rule: events older than this many days before --now
    /// are dead letters (set it as the Pulse under test is configured).
    #[arg(long, default_value_t = 400)]
    max_age_days: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Draw {
    Uniform,
    Everyone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// Everything as `pulse-v1`.
    PulseV1,
    /// Registrations as `pulse-v1`; half the course events as `sunbird-telemetry`;
    /// half the ratings as `igot-rating`; the rest `pulse-v1`.
    Mixed,
}

/// One message on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    format: InputFormat,
    /// The user id; for `sunbird-telemetry` the message id (`mid`): Sunbird's
    /// pipeline does not key by user, so Pulse repartitions it.
    key: String,
    value: Vec<u8>,
}

/// A message held back until the `due`-th event has been sent.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    due: u64,
    out: Out,
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due) // a min-heap by due
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

enum Sink {
    Files(BTreeMap<&'static str, BufWriter<File>>),
    Kafka { producer: Producer, topics: BTreeMap<&'static str, String> },
}

impl Sink {
    fn open(args: &Args) -> anyhow::Result<Sink> {
        let names =
            ["orgs", "targets", "courses", "plans", "pulse-v1", "sunbird-telemetry", "igot-rating", "user-profile"];
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
            let mut files = BTreeMap::new();
            for name in names {
                let path = dir.join(format!("{name}.ndjson"));
                let file = File::create(&path).with_context(|| format!("failed to create {}", path.display()))?;
                files.insert(name, BufWriter::new(file));
            }
            return Ok(Sink::Files(files));
        }
        let brokers = args.brokers.as_deref().context("give --out DIR or --brokers HOST:PORT")?;
        let topics: BTreeMap<&'static str, String> = names
            .into_iter()
            .zip([
                &args.orgs_topic,
                &args.targets_topic,
                &args.courses_topic,
                &args.plans_topic,
                &args.events_topic,
                &args.sunbird_topic,
                &args.ratings_topic,
                &args.users_topic,
            ])
            .map(|(n, t)| (n, t.clone()))
            .collect();
        for (name, topic) in &topics {
            let registry = matches!(*name, "orgs" | "targets" | "courses" | "plans");
            // An existing topic is fine: this may be the second run against it.
            if let Err(e) = tools::create_topic(brokers, topic, if registry { 1 } else { args.partitions }, registry) {
                if !e.to_string().contains("already exists") {
                    return Err(e).with_context(|| format!("failed to create topic {topic}"));
                }
            }
        }
        Ok(Sink::Kafka { producer: Producer::new(brokers)?, topics })
    }

    fn send(&mut self, stream: &'static str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Files(files) => {
                let f = files.get_mut(stream).context("unknown stream")?;
                f.write_all(value)?;
                f.write_all(b"\n")?;
            }
            Sink::Kafka { producer, topics } => producer.send(&topics[stream], Some(key), Some(value))?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Files(files) => {
                for (_, mut f) in files {
                    f.flush()?;
                }
            }
            Sink::Kafka { producer, .. } => producer.flush()?,
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wall =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let now = match &args.now {
        Some(s) => parse_rfc3339(s).with_context(|| format!("--now {s} is not RFC 3339 with an offset"))?,
        None => wall(),
    };
    let first_fy = args.first_fy.unwrap_or(Fy(Fy::of(now).0 - 1));
    let world = World::new(WorldSpec {
        seed: args.seed,
        top_level: args.top_level,
        departments: args.departments,
        organisations: args.organisations,
        users: args.users,
        courses: args.courses,
        first_fy,
        assessments: args.assessments,
        draw: match args.draw {
            Draw::Uniform => UserDraw::Uniform,
            Draw::Everyone => UserDraw::Everyone,
        },
        journeys: args.journeys,
    });
    let mut sink = Sink::open(&args)?;
    let mut sent: Vec<Message> = Vec::new();
    let keep = args.expected.is_some();

    for (org, line) in world.orgs.iter().zip(world.org_lines()) {
        sink.send("orgs", org.id.as_bytes(), line.as_bytes())?;
        if keep {
            sent.push(Message::Org { key: Some(org.id.clone().into_bytes()), value: Some(line.into_bytes()) });
        }
    }
    // A target per ministry and state: four hours per user in the second year.
    let target_fy = Fy(first_fy.0 + 1).to_string();
    for org in world.orgs.iter().filter(|o| o.parent.is_none()) {
        let id = format!("hours-{}", org.id);
        let v = serde_json::json!({"v": 1, "id": id, "org": org.id, "kpi": "learning_minutes_per_user_fy",
            "value": 240, "fy": target_fy})
        .to_string();
        sink.send("targets", id.as_bytes(), v.as_bytes())?;
        if keep {
            sent.push(Message::Target { key: Some(id.into_bytes()), value: Some(v.into_bytes()) });
        }
    }

    for (id, line) in world.course_lines() {
        sink.send("courses", id.as_bytes(), line.as_bytes())?;
        if keep {
            sent.push(Message::Course { key: Some(id.into_bytes()), value: Some(line.into_bytes()) });
        }
    }
    for (id, line) in world.plan_lines().into_iter().filter(|_| args.plans) {
        sink.send("plans", id.as_bytes(), line.as_bytes())?;
        if keep {
            sent.push(Message::Plan { key: Some(id.into_bytes()), value: Some(line.into_bytes()) });
        }
    }
    // Profiles before the events: the user service knew these users first.
    let mut line = String::new();
    let mut profiles = SmallRng::seed_from_u64(args.seed ^ 0x9f0f);
    for user in (0..args.users).filter(|_| args.profiles > 0.0 && profiles.gen_bool(args.profiles.min(1.0))) {
        world.profile_line(user, &mut line);
        let key = format!("u-{user}");
        sink.send("user-profile", key.as_bytes(), line.as_bytes())?;
        if keep {
            let value = line.as_bytes().to_vec();
            sent.push(Message::Event { format: InputFormat::UserProfile, key: Some(key.into_bytes()), value });
        }
    }

    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::with_draw_target(Some(args.events), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} events, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0x10ad);
    let scatter_end = if args.recent { now - 3_600_000 } else { Fy(first_fy.0 + 1).end() - 3_600_000 };
    let mut moved: HashMap<u64, String> = HashMap::new();
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let (mut messages, mut malformed) = (0u64, 0u64);
    // The workload's shape is part of every figure measured on it.
    let mut active = vec![0u64; (args.users as usize).div_ceil(64)];
    let started = Instant::now();
    let stream = world.events().spread_over(args.from + args.events);
    let stream = if args.recent { stream.until(now) } else { stream };
    let events = stream.skip(args.from as usize).take(args.events as usize);
    for (i, mut e) in events.enumerate() {
        let i = i as u64;
        if args.live {
            e.ts = wall();
        } else if let Some(days) = args.scatter_days {
            e.ts = scatter_end - rng.gen_range(0..i64::from(days.max(1)) * 86_400_000);
        }
        active[(e.user / 64) as usize] |= 1 << (e.user % 64);
        if args.migrations > 0.0 && e.kind != GenKind::Registration && rng.gen_bool(args.migrations) {
            let to = &world.orgs[rng.gen_range(args.top_level + args.departments..world.orgs.len())].id;
            moved.insert(e.user, to.clone());
        }
        let org = moved.get(&e.user).map_or_else(|| world.org_of(e.user), String::as_str);
        let format = format_of(&e, args.mix, &mut rng);
        match format {
            InputFormat::SunbirdTelemetry => world.sunbird(&e, org, &mut line),
            InputFormat::IgotRating => world.igot_rating(&e, &mut line),
            InputFormat::PulseV1 => {
                world.pulse_v1_in(&e, org, &mut line);
                true
            }
            InputFormat::UserProfile => unreachable!("format_of picks an event format"),
        };
        let key = match format {
            // Sunbird's pipeline keys telemetry by message id, not by user.
            InputFormat::SunbirdTelemetry => format!("e-{}-{}", args.seed, e.seq),
            _ => format!("u-{}", e.user),
        };
        let mut out = Out { format, key, value: line.as_bytes().to_vec() };
        if args.malformed > 0.0 && rng.gen_bool(args.malformed) {
            // Cut in the middle: `invalid_json` for every format.
            out.value.truncate(out.value.len() / 2);
            malformed += 1;
        }
        if args.duplicates > 0.0 && rng.gen_bool(args.duplicates) {
            held.push(Held { due: i + rng.gen_range(1..50), out: out.clone() });
        }
        if args.out_of_order > 0.0 && rng.gen_bool(args.out_of_order) {
            held.push(Held { due: i + rng.gen_range(1..200), out });
        } else {
            emit(&mut sink, &mut sent, keep, out)?;
            messages += 1;
        }
        while held.peek().is_some_and(|h| h.due <= i) {
            emit(&mut sink, &mut sent, keep, held.pop().map(|h| h.out).context("peeked")?)?;
            messages += 1;
        }
        bar.inc(1);
        if args.rate > 0 {
            // Pace by messages sent so far; sleep only when a millisecond or
            // more ahead, since each sleep overshoots by tens of microseconds.
            let due = Duration::from_secs_f64(messages as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()).filter(|w| *w >= Duration::from_millis(1)) {
                std::thread::sleep(wait);
            }
        }
    }
    while let Some(h) = held.pop() {
        emit(&mut sink, &mut sent, keep, h.out)?;
        messages += 1;
    }
    sink.finish()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let distinct: u32 = active.iter().map(|w| w.count_ones()).sum();
    eprintln!(
        "pulse-loadgen: {} orgs, {} events over {distinct} distinct users as {messages} messages \
         ({malformed} malformed) in {secs:.1}s, {:.0} messages/s",
        world.orgs.len(),
        args.events,
        messages as f64 / secs
    );

    if let Some(path) = &args.expected {
        let fy = match &args.fy {
            Some(s) => s.parse::<Fy>().map_err(|e| anyhow::anyhow!("--fy {s}: {e}"))?,
            None => Fy::of(now),
        };
        let settings = pulse_oracle::Settings {
            meeting_minutes: 240,
            time_rules: TimeRules { max_age_ms: args.max_age_days * 86_400_000 },
            ingest_now: now,
        };
        let mut report = pulse_oracle::report(&sent, &settings, fy.0, now);
        // The same document as `pulse report --all --now`.
        report["now"] = pulse_model::time::format_ist(now).into();
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("expected report (reference model, FY {fy}) in {}", path.display());
    }
    Ok(())
}

/// The format that carries an event under a mix.
fn format_of(e: &GenEvent, mix: Mix, rng: &mut SmallRng) -> InputFormat {
    match (mix, e.kind) {
        (Mix::PulseV1, _) | (Mix::Mixed, GenKind::Registration | GenKind::Assessment { .. }) => InputFormat::PulseV1,
        (Mix::Mixed, GenKind::Rating { .. }) if rng.gen_bool(0.5) => InputFormat::IgotRating,
        (Mix::Mixed, GenKind::Rating { .. }) => InputFormat::PulseV1,
        (Mix::Mixed, _) if rng.gen_bool(0.5) => InputFormat::SunbirdTelemetry,
        (Mix::Mixed, _) => InputFormat::PulseV1,
    }
}

fn emit(sink: &mut Sink, sent: &mut Vec<Message>, keep: bool, out: Out) -> anyhow::Result<()> {
    sink.send(out.format.name(), out.key.as_bytes(), &out.value)?;
    if keep {
        sent.push(Message::Event { format: out.format, key: None, value: out.value });
    }
    Ok(())
}
