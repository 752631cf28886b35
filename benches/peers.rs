//! Side by side, in one run, on one preloaded topic (`scripts/kafka start`):
//! the bare consume ceiling, the Kafka Streams peer
//! (`benches/peers/kafka-streams`, built by its `build` script) with
//! `exactly_once_v2` and with at-least-once, and `pulse run` with its default
//! configuration (changelog on), each from empty state until its consumer
//! group has committed the end of every input partition.
//!
//! For each: events/s, wall time, CPU seconds of the process and of the
//! broker over the same span, CPU per event, peak RSS, and the national
//! totals it computed (which must agree). Ratios are to the peer with
//! `exactly_once_v2`.
//!
//! Run: `cargo bench -p pulse --bench peers` (`PULSE_BENCH_EVENTS`, default
//! 10,000,000; `PULSE_BENCH_USERS`, default 1,000,000; 16 partitions;
//! `PULSE_BENCH_DRAW=everyone` sends the learner journeys to every user
//! (`pulse-loadgen --draw everyone`: the national world's shape) instead of
//! uniformly (2M events over 1M users touch 27% of them);
//! `PULSE_BENCH_JOURNEYS=N` learner journeys under way at once (default
//! 4,096; a journey's events lie about 6N events apart);
//! `PULSE_BENCH_SCATTER_DAYS=N` draws event times over the last N days
//! whatever the arrival order (`pulse-loadgen --scatter-days`);
//! `PULSE_BENCH_PEERS=pulse` runs the bare consume and Pulse only, for
//! profiles and A/B runs;
//! `PULSE_BENCH_PULSE=NAME=PATH,...` runs these `pulse` binaries one after
//! the other on the same topic instead of this build's: an A/B in one run).

#[path = "../tests/common/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{free_port, http_get, wait_for_ok};
use pulse_kafka::tools;

const PARTITIONS: i32 = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn port() -> String {
    std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into())
}

fn brokers() -> String {
    format!("127.0.0.1:{}", port())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used so far; 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    ticks as f64 / ticks_per_second()
}

/// Peak resident memory of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.trim().parse().ok());
    kib.unwrap_or(0u64) as f64 / 1024.0
}

/// The broker's process, from `scripts/kafka`'s pid file.
fn broker_pid() -> u32 {
    let cache = std::env::var("PULSE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pulse"));
    let file = cache.join(format!("kafka-data-{}/kafka.pid", port()));
    let pid = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (is `scripts/kafka start` running?)", file.display()));
    pid.trim().parse().expect("a pid")
}

/// What one contender did.
struct Figures {
    name: String,
    wall: f64,
    cpu: f64,
    broker_cpu: f64,
    rss_mib: f64,
    national: Option<National>,
}

/// The national totals a contender computed: all of them must agree.
#[derive(Debug, Clone, PartialEq)]
struct National {
    registered_users: i64,
    enrolments: i64,
    completions: i64,
    ratings: i64,
    learning_minutes: f64,
}

impl National {
    fn from_json(v: &serde_json::Value) -> Option<National> {
        Some(National {
            registered_users: v["registered_users"].as_i64()?,
            enrolments: v["enrolments"].as_i64()?,
            completions: v["completions"].as_i64()?,
            ratings: v["ratings"].as_i64()?,
            learning_minutes: v["learning_minutes"].as_f64()?,
        })
    }

    fn agrees(&self, other: &National) -> bool {
        let rounded = |n: &National| National { learning_minutes: (n.learning_minutes * 100.0).round(), ..n.clone() };
        rounded(self) == rounded(other)
    }
}

/// Waits until `group` has committed the end of every partition of `topic`,
/// while `child` lives; returns the wall time since `started`.
fn wait_caught_up(group: &str, topic: &str, child: &mut Child, log: &Path, started: Instant) -> f64 {
    let high = tools::high_watermarks(&brokers(), topic).expect("watermarks");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = child.try_wait().expect("status") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("{group} exited ({status}) during the catch-up; its log ends:\n{}", tail.join("\n"));
        }
        let committed = tools::committed_offsets(&brokers(), group, topic).unwrap_or_default();
        if high.iter().all(|(p, h)| committed.get(p).is_some_and(|c| c >= h)) {
            return started.elapsed().as_secs_f64();
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Runs one contender from start to caught up and measures it.
fn measure(
    name: &str,
    group: &str,
    topic: &str,
    dir: &Path,
    command: Command,
    national: impl Fn() -> Option<National>,
) -> Figures {
    let broker = broker_pid();
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let broker_before = cpu_seconds(broker);
    let started = Instant::now();
    let mut command = command;
    let mut child = command.stdout(Stdio::null()).stderr(log).spawn().expect("start");
    let wall = wait_caught_up(group, topic, &mut child, &log_path, started);
    let (cpu, broker_cpu, rss_mib) =
        (cpu_seconds(child.id()), cpu_seconds(broker) - broker_before, peak_rss_mib(child.id()));
    let national = national();
    stop(child);
    // Its internal topics (named after its group): a broker compacting a
    // contender's changelog while the next one runs slowed that one by up to 25%.
    tools::delete_topics_with_prefix(&brokers(), group).expect("delete a contender's topics");
    Figures { name: name.to_owned(), wall, cpu, broker_cpu, rss_mib, national }
}

fn peer(dir: &Path, topic: &str, orgs: &str, guarantee: &str, name: &'static str) -> Figures {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/peers/kafka-streams");
    let built = Command::new(root.join("build")).status().expect("benches/peers/kafka-streams/build");
    assert!(built.success(), "building the Kafka Streams peer failed");
    let group = format!("{topic}.{name}");
    let http = free_port();
    let mut command = Command::new(root.join("run"));
    // Its RocksDB allocates with glibc too: the same arena limit as Pulse's.
    command
        .env("MALLOC_ARENA_MAX", "4")
        .args(["--bootstrap", &brokers(), "--input", topic, "--orgs", orgs, "--application-id", &group])
        .args(["--guarantee", guarantee, "--http", &http.to_string()])
        .arg("--state-dir")
        .arg(dir.join(name));
    measure(name, &group, topic, dir, command, || {
        let body = wait_for_ok(&format!("127.0.0.1:{http}"), "/national", Duration::from_secs(30));
        National::from_json(&serde_json::from_str(&body).ok()?)
    })
}

fn pulse(dir: &Path, topic: &str, orgs: &str, name: &str, binary: &Path) -> Figures {
    let prefix = format!("{topic}.{}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    let group = prefix.clone();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"
        [kafka]
        brokers = "{b}"
        group_id = "{group}"
        inputs = [{{ topic = "{topic}", format = "pulse-v1" }}]
        orgs_topic = "{orgs}"
        targets_topic = "{prefix}.targets"
        # courses_topic is left at its default, pulse.courses, which the load
        # generator writes: a build from before contract v2 rejects the key,
        # and A/B runs (PULSE_BENCH_PULSE) compare against such builds.
        dlq_topic = "{prefix}.dlq"
        [store]
        data_dir = "{data}"
        [engine]
        max_age = "1200d"
        [http]
        listen = "{http}"
        "#,
        b = brokers(),
        data = dir.join(format!("{prefix}.data")).display(),
    );
    for t in ["targets", "dlq"] {
        tools::create_topic(&brokers(), &format!("{prefix}.{t}"), 1, t == "targets").expect("create topic");
    }
    let file = dir.join(format!("{prefix}.toml"));
    std::fs::write(&file, config).expect("write config");
    let mut command = Command::new(binary);
    // As deployed (deploy/systemd/pulse.service): fewer glibc malloc arenas.
    command.args(["run", "--config"]).arg(&file).env("RUST_LOG", "warn").env("MALLOC_ARENA_MAX", "4");
    measure(name, &group, topic, dir, command, || {
        // Published state trails the last commit by at most the publish interval.
        std::thread::sleep(Duration::from_secs(1));
        let (_, body) = http_get(&http, "/api/v1/nodes/national").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        National::from_json(&v["nodes"]["national"])
    })
}

fn main() {
    let events = env_or("PULSE_BENCH_EVENTS", 10_000_000);
    let users = env_or("PULSE_BENCH_USERS", 1_000_000);
    let draw = std::env::var("PULSE_BENCH_DRAW").unwrap_or_else(|_| "uniform".into());
    let journeys = env_or("PULSE_BENCH_JOURNEYS", 4_096).to_string();
    let mut shape: Vec<String> = vec!["--journeys".into(), journeys.clone()];
    if let Ok(days) = std::env::var("PULSE_BENCH_SCATTER_DAYS") {
        shape.extend(["--scatter-days".into(), days]);
    }
    let only_pulse = std::env::var("PULSE_BENCH_PEERS").is_ok_and(|v| v == "pulse");
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("bench.peers.{}", wall_ms());
    let orgs = format!("{topic}.orgs");
    // Two whole past financial years, so that no event is in the future;
    // 1% exact duplicates, so that dedup does real work.
    let first_fy = pulse_model::Fy(pulse_model::Fy::of(wall_ms()).0 - 2).to_string();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-loadgen"))
        .args(["--brokers", &brokers(), "--partitions", &PARTITIONS.to_string()])
        .args(["--events-topic", &topic, "--orgs-topic", &orgs, "--targets-topic", &format!("{topic}.targets")])
        .args(["--users", &users.to_string(), "--events", &events.to_string(), "--first-fy", &first_fy])
        .args(["--duplicates", "0.01", "--draw", &draw])
        .args(&shape)
        .output()
        .expect("pulse-loadgen (is `scripts/kafka start` running?)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let messages: i64 = tools::high_watermarks(&brokers(), &topic).expect("watermarks").values().sum();
    println!(
        "preloaded {messages} pulse-v1 messages ({events} events, 1% duplicates) over {users} users \
         (journeys drawn: {draw}, {journeys} at once; event times {}; {}), {PARTITIONS} partitions, in {:.0}s",
        std::env::var("PULSE_BENCH_SCATTER_DAYS")
            .map_or("advancing over two years".to_owned(), |d| format!("scattered over {d} days")),
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default(),
        t.elapsed().as_secs_f64()
    );

    // The bare consume always runs first: it also brings the topic into the
    // page cache, so that no contender pays for that (the first one did,
    // up to 25% in A/B runs).
    let mut rows = Vec::new();
    {
        let broker = broker_pid();
        let (broker_before, me_before) = (cpu_seconds(broker), cpu_seconds(std::process::id()));
        let t = Instant::now();
        let read = tools::consume_all(&brokers(), &topic).expect("bare consume");
        assert_eq!(read as i64, messages, "the bare consumer read every message");
        rows.push(Figures {
            name: "bare rdkafka consume".into(),
            wall: t.elapsed().as_secs_f64(),
            cpu: cpu_seconds(std::process::id()) - me_before,
            broker_cpu: cpu_seconds(broker) - broker_before,
            rss_mib: f64::NAN,
            national: None,
        });
    }
    if !only_pulse {
        rows.push(peer(dir.path(), &topic, &orgs, "exactly_once_v2", "kafka-streams-eos-v2"));
        rows.push(peer(dir.path(), &topic, &orgs, "at_least_once", "kafka-streams-alos"));
    }
    let binaries =
        std::env::var("PULSE_BENCH_PULSE").unwrap_or_else(|_| format!("pulse run={}", env!("CARGO_BIN_EXE_pulse")));
    for entry in binaries.split(',') {
        let (name, path) = entry.split_once('=').expect("PULSE_BENCH_PULSE: NAME=PATH,...");
        rows.push(pulse(dir.path(), &topic, &orgs, name, Path::new(path)));
    }

    // Ratios are to the peer with exactly-once v2, or else to the first Pulse.
    let base = rows.iter().find(|r| r.name == "kafka-streams-eos-v2").or_else(|| rows.get(1));
    let baseline = base.map(|r| (messages as f64 / r.wall, r.cpu, r.rss_mib));
    println!("\nratios (x) are to {}", base.map_or("nothing", |r| r.name.as_str()));
    println!(
        "| {:<22} | {:>10} | {:>7} | {:>7} | {:>8} | {:>9} | {:>9} | {:>9} | {:>8} | {:>8} |",
        "contender", "events/s", "wall s", "CPU s", "broker s", "µs/event", "RSS MiB", "x rate", "x CPU", "x RSS"
    );
    println!("|{}|", ["---"; 10].map(|d| format!("{d:->1}")).join("|"));
    for r in &rows {
        let rate = messages as f64 / r.wall;
        let (x_rate, x_cpu, x_rss) = baseline.map_or((f64::NAN, f64::NAN, f64::NAN), |(b_rate, b_cpu, b_rss)| {
            (rate / b_rate, r.cpu / b_cpu, r.rss_mib / b_rss)
        });
        println!(
            "| {:<22} | {:>10.0} | {:>7.1} | {:>7.1} | {:>8.1} | {:>9.2} | {:>9.0} | {:>9.2} | {:>8.2} | {:>8.2} |",
            r.name,
            rate,
            r.wall,
            r.cpu,
            r.broker_cpu,
            r.cpu * 1e6 / messages as f64,
            r.rss_mib,
            x_rate,
            x_cpu,
            x_rss
        );
    }
    println!();
    let mut reference: Option<&National> = None;
    for r in rows.iter().filter(|r| r.name != "bare rdkafka consume") {
        match &r.national {
            None => println!("{}: no national totals read", r.name),
            Some(n) => {
                println!("{}: national {n:?}", r.name);
                let first = *reference.get_or_insert(n);
                assert!(first.agrees(n), "{} disagrees on the national totals: {n:?} vs {first:?}", r.name);
            }
        }
    }
    // The input, and every group's internal topics (all named after it).
    tools::delete_topics_with_prefix(&brokers(), &topic).expect("delete the bench's topics");
}
