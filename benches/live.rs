//! Live figures of the real `pulse run` binary against the local broker
//! (`scripts/kafka start`), with `pulse-loadgen` producing:
//!
//! - latency: the generator produces at a fixed rate (`PULSE_BENCH_RATE`,
//!   default 20,000 events/s) while a probe registers one new user of a probe
//!   org every 50 ms; a poller reads the org's `registered_users` through
//!   the API every 2 ms. Prints p50, p99 and max of the time from a probe's
//!   produce to its effect being visible;
//! - national: the platform's size. `PULSE_BENCH_EVENTS` events (default
//!   100,000,000) over `PULSE_BENCH_USERS` users (default 15,000,000),
//!   journeys drawn so that every user comes (`pulse-loadgen --draw
//!   everyone`; `PULSE_BENCH_JOURNEYS` under way at once, default 4,096),
//!   in every input format (mixed, with profiles and assessments),
//!   produced as fast as possible to 16 partitions. `pulse run` from empty
//!   state to caught up: rate, CPU seconds and per event, resident memory
//!   (peak), state size on disk; then `kill -9` and the time until the
//!   restarted process answers `/readyz`; then a new instance on an empty
//!   state directory restores the whole state from the changelog: time,
//!   records per second, CPU seconds, peak resident memory.
//!
//! - scale-out: `PULSE_BENCH_SCALEOUT_EVENTS` events (default 600,000) over
//!   6 partitions, caught up from empty state by 1, then 2, then 3
//!   instances (each count in a group of its own): time and rate of each, and
//!   their ratios to one instance; then the restore of a partition holding
//!   `PULSE_BENCH_RESTORE_USERS` users (default 1,000,000): one instance
//!   catches up a one-partition topic, stops, and a new instance on an empty
//!   state directory restores the partition from the changelog.
//!
//! - plans: `PULSE_BENCH_PLAN_EVENTS` events (default 12,000,000) over
//!   `PULSE_BENCH_PLAN_USERS` users (default 3,000,000, of whom about 1.2
//!   million appear), caught up. Then the cost of re-evaluation to
//!   catch-up: a backlog of `PULSE_BENCH_PLAN_BACKLOG` events (default
//!   1,000,000) caught up after a stop, once as it is and once with a
//!   national plan for everyone arriving with it (time, rate, CPU seconds,
//!   and when the plan converged). Then live: while the generator produces
//!   `PULSE_BENCH_RATE` events/s (default 5,000), the plan changes its
//!   courses: the time until every user is re-evaluated (no user pending,
//!   the API no longer converging), Pulse's CPU seconds meanwhile, and the
//!   largest re-evaluation backlog seen.
//!
//! Run: `cargo bench -p pulse --bench live` (`PULSE_BENCH=latency`, `national`,
//! `scaleout` or `plans` runs one part; `PULSE_BENCH_TRACE=1` also prints every probe's latency in order).
//! Each part uses its own topics, group and state directory.

#[path = "../tests/common/http.rs"]
mod http;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{free_port, http_get, wait_for_ok};
use pulse_kafka::tools;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn brokers() -> String {
    format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into()))
}

/// Topics, a config and a state directory of one run.
struct Setup {
    partitions: i32,
    prefix: String,
    dir: tempfile::TempDir,
    http: String,
}

impl Setup {
    fn new(part: &str) -> Setup {
        Setup::with_partitions(part, 16)
    }

    fn with_partitions(part: &str, partitions: i32) -> Setup {
        let prefix = format!("bench.{part}.{}", std::process::id());
        let dir = tempfile::tempdir().expect("temp dir");
        let http = format!("127.0.0.1:{}", free_port());
        let b = brokers();
        for input in INPUTS.map(|(name, _)| name) {
            tools::create_topic(&b, &self_topic(&prefix, input), partitions, false)
                .expect("create topic (is Kafka running?)");
        }
        tools::create_topic(&b, &self_topic(&prefix, "orgs"), 1, true).expect("create topic");
        tools::create_topic(&b, &self_topic(&prefix, "targets"), 1, true).expect("create topic");
        tools::create_topic(&b, &self_topic(&prefix, "courses"), 1, true).expect("create topic");
        tools::create_topic(&b, &self_topic(&prefix, "plans"), 1, true).expect("create topic");
        tools::create_topic(&b, &self_topic(&prefix, "dlq"), 1, false).expect("create topic");
        let config = format!(
            r#"
            [kafka]
            brokers = "{b}"
            group_id = "{prefix}.group"
            instance_id = "{prefix}.instance"
            inputs = [{inputs}]
            orgs_topic = "{orgs}"
            targets_topic = "{targets}"
            courses_topic = "{courses}"
            plans_topic = "{plans}"
            dlq_topic = "{dlq}"
            [store]
            data_dir = "{data}"
            [engine]
            max_age = "1200d"
            [http]
            listen = "{http}"
            "#,
            inputs = INPUTS
                .map(|(name, format)| format!(r#"{{ topic = "{}", format = "{format}" }}"#, self_topic(&prefix, name)))
                .join(", "),
            orgs = self_topic(&prefix, "orgs"),
            targets = self_topic(&prefix, "targets"),
            courses = self_topic(&prefix, "courses"),
            plans = self_topic(&prefix, "plans"),
            dlq = self_topic(&prefix, "dlq"),
            data = dir.path().join("data").display(),
        );
        std::fs::write(dir.path().join("pulse.toml"), config).expect("write config");
        Setup { prefix, dir, http, partitions }
    }

    fn topic(&self, name: &str) -> String {
        self_topic(&self.prefix, name)
    }

    /// The input topics, one per format.
    fn inputs(&self) -> Vec<String> {
        INPUTS.iter().map(|(name, _)| self.topic(name)).collect()
    }

    fn start(&self) -> Child {
        self.start_with(&[])
    }

    /// `pulse run` with config overrides (`PULSE_SECTION__KEY`); its log
    /// (info) goes to `pulse.log` in the run's directory.
    fn start_with(&self, overrides: &[(&str, String)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pulse.log"))
            .expect("open the log");
        Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(["run", "--config"])
            .arg(self.dir.path().join("pulse.toml"))
            .envs(overrides.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn,pulse_kafka::changelog=info,pulse_kafka::restore=info")
            // As deployed (deploy/systemd/pulse.service): fewer glibc malloc
            // arenas for RocksDB's and librdkafka's allocations.
            .env("MALLOC_ARENA_MAX", "4")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pulse run")
    }

    /// Waits until `group` has committed the end of every partition of the
    /// events topic and of its repartition topic.
    fn wait_caught_up(&self, group: &str, children: &mut [Child]) {
        let mut topics = self.inputs();
        topics.push(format!("{group}.repartition"));
        loop {
            std::thread::sleep(Duration::from_millis(200));
            for c in children.iter_mut() {
                if let Some(status) = c.try_wait().expect("status") {
                    let log = std::fs::read_to_string(self.dir.path().join("pulse.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    panic!("pulse run exited ({status}) during the catch-up; its log ends:\n{}", tail.join("\n"));
                }
            }
            let done = topics.iter().all(|topic| {
                let high = tools::high_watermarks(&brokers(), topic).unwrap_or_default();
                let committed = tools::committed_offsets(&brokers(), group, topic).unwrap_or_default();
                !high.is_empty() && high.iter().all(|(p, h)| *h == 0 || committed.get(p).is_some_and(|c| c >= h))
            });
            if done {
                return;
            }
        }
    }

    /// `pulse-loadgen` producing to this run's topics.
    fn loadgen(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pulse-loadgen"));
        c.args(["--brokers", &brokers(), "--partitions", &self.partitions.to_string()])
            .args(["--events-topic", &self.topic("events"), "--orgs-topic", &self.topic("orgs")])
            .args(["--sunbird-topic", &self.topic("sunbird"), "--ratings-topic", &self.topic("ratings")])
            .args(["--users-topic", &self.topic("users"), "--courses-topic", &self.topic("courses")])
            .args(["--plans-topic", &self.topic("plans")])
            .args(["--targets-topic", &self.topic("targets")])
            .args(args);
        c
    }
}

/// The input topics of a run, by name, with their formats.
const INPUTS: [(&str, &str); 4] =
    [("events", "pulse-v1"), ("sunbird", "sunbird-telemetry"), ("ratings", "igot-rating"), ("users", "user-profile")];

fn self_topic(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn registered(addr: &str, org: &str) -> Option<i64> {
    let (status, body) = http_get(addr, &format!("/api/v1/nodes/{org}")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["nodes"][org]["registered_users"].as_i64()
}

fn latency() {
    let rate = env_or("PULSE_BENCH_RATE", 20_000);
    let seconds = env_or("PULSE_BENCH_SECONDS", 30);
    let s = Setup::new("latency");
    let probe_org = r#"{"v":1,"org":"PROBE","name":"Latency probe","kind":"organisation"}"#;
    tools::produce(&brokers(), &s.topic("orgs"), &[(Some(b"PROBE".to_vec()), Some(probe_org.as_bytes().to_vec()))])
        .expect("produce the probe org");
    let mut pulse = s.start();
    wait_for_ok(&s.http, "/readyz", Duration::from_secs(60));
    let load = s
        .loadgen(&[
            "--live",
            "--users",
            "1000000",
            "--events",
            &(rate * seconds).to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pulse-loadgen");
    // Let the load reach its rate, and the registry its topic.
    std::thread::sleep(Duration::from_secs(3));

    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (sent, done, addr) = (Arc::clone(&sent), Arc::clone(&done), s.http.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut seen = 0usize;
            while !done.load(Ordering::Relaxed) || seen < sent.lock().expect("probe times").len() {
                let visible = registered(&addr, "PROBE").unwrap_or(0) as usize;
                let now = Instant::now();
                let times = sent.lock().expect("probe times").clone();
                while seen < visible.min(times.len()) {
                    latencies.push(now - times[seen]);
                    seen += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies
        })
    };
    let producer = tools::Producer::new(&brokers()).expect("producer");
    let probes = (seconds - 5) * 20;
    for i in 0..probes {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        let v =
            format!(r#"{{"v":1,"id":"probe-{i}","type":"registration","ts":{ts},"user":"probe-{i}","org":"PROBE"}}"#);
        let key = format!("probe-{i}");
        sent.lock().expect("probe times").push(Instant::now());
        producer.send(&s.topic("events"), Some(key.as_bytes()), Some(v.as_bytes())).expect("probe");
        producer.flush().expect("probe acknowledged");
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    let mut latencies = poller.join().expect("poller");
    let out = load.wait_with_output().expect("loadgen");
    let _ = pulse.kill();
    let _ = pulse.wait();
    if std::env::var("PULSE_BENCH_TRACE").is_ok() {
        let trace: Vec<String> = latencies.iter().map(|l| format!("{:.0}", l.as_secs_f64() * 1e3)).collect();
        println!("  in probe order (ms): {}", trace.join(" "));
    }
    latencies.sort();
    println!("live latency: {} probes under {rate} events/s of background load", latencies.len());
    println!("  loadgen: {}", String::from_utf8_lossy(&out.stderr).trim());
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!("  {name}: {:>7.1} ms", percentile(&latencies, p).as_secs_f64() * 1e3);
    }
}

fn kib(status: &str, field: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix(" kB")?.trim().parse().ok()).unwrap_or(0)
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn national() {
    let events = env_or("PULSE_BENCH_EVENTS", 100_000_000);
    let users = env_or("PULSE_BENCH_USERS", 15_000_000);
    let journeys = env_or("PULSE_BENCH_JOURNEYS", 4_096);
    let s = Setup::new("national");
    // Two whole past financial years, so that no event is in the future.
    let first_fy = pulse_model::Fy(pulse_model::Fy::of(wall_ms()).0 - 2).to_string();
    let t = Instant::now();
    let out = s
        .loadgen(&["--users", &users.to_string(), "--events", &events.to_string(), "--first-fy", &first_fy])
        .args(["--draw", "everyone", "--journeys", &journeys.to_string(), "--mix", "mixed"])
        .args(["--profiles", "0.3", "--assessments", "0.3", "--duplicates", "0.01"])
        .output()
        .expect("pulse-loadgen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let messages: i64 = s
        .inputs()
        .iter()
        .map(|t| tools::high_watermarks(&brokers(), t).expect("watermarks").values().sum::<i64>())
        .sum();
    println!(
        "national: {events} events over {users} users, {journeys} journeys at once, as {messages} messages \
         in every format produced in {:.0}s ({})",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
    );

    let t = Instant::now();
    let mut pulse = s.start();
    let group = format!("{}.group", s.prefix);
    s.wait_caught_up(&group, std::slice::from_mut(&mut pulse));
    let (took, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(pulse.id()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", pulse.id())).expect("proc status");
    println!(
        "  catch-up from empty state: {took:.0}s, {:.0} messages/s; {cpu:.0} CPU s, {:.2} µs per message; \
         peak resident memory {:.0} MiB (budget: store.memory_budget_mib's default)",
        messages as f64 / took,
        cpu * 1e6 / messages as f64,
        kib(&status, "VmHWM:") as f64 / 1024.0
    );
    println!("  state on disk: {:.0} MiB", dir_bytes(&s.dir.path().join("data")) as f64 / (1 << 20) as f64);
    let national = |addr: &str| {
        let (_, metrics) = http_get(addr, "/metrics").expect("metrics");
        let line = metrics.lines().find(|l| l.starts_with("pulse_kpi_registered_users{org=\"national\"}"));
        line.unwrap_or("no national series").to_owned()
    };
    let counted = national(&s.http);
    println!("  {counted}");

    pulse.kill().expect("kill -9");
    pulse.wait().expect("reap");
    let t = Instant::now();
    let pulse = s.start();
    wait_for_ok(&s.http, "/readyz", Duration::from_secs(600));
    println!("  after kill -9: ready again in {:.1}s", t.elapsed().as_secs_f64());
    stop_all(vec![pulse]);

    // The same static member, on an empty state directory: as a pod
    // rescheduled onto a new volume, it takes every partition over at once.
    let changelog = format!("{group}.changelog");
    let records: i64 = tools::high_watermarks(&brokers(), &changelog).expect("watermarks").values().sum();
    let http = format!("127.0.0.1:{}", free_port());
    let t = Instant::now();
    let pulse = s.start_with(&[
        ("PULSE_STORE__DATA_DIR", s.dir.path().join("restored").display().to_string()),
        ("PULSE_HTTP__LISTEN", http.clone()),
    ]);
    wait_for_ok(&http, "/readyz", Duration::from_secs(3600));
    let (took, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(pulse.id()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", pulse.id())).expect("proc status");
    println!(
        "  restore into an empty instance: {records} changelog offsets in {took:.1}s to ready, {:.0} per second; \
         {cpu:.0} CPU s; peak resident memory {:.0} MiB",
        records as f64 / took,
        kib(&status, "VmHWM:") as f64 / 1024.0
    );
    let restored = national(&http);
    assert_eq!(restored, counted, "the restored instance counts what the first one did");
    stop_all(vec![pulse]);
    tools::delete_topics_with_prefix(&brokers(), &s.prefix).expect("delete the bench's topics");
}

/// `pulse run` instances in one group, each with its own state and port.
fn instances(s: &Setup, group: &str, n: usize) -> Vec<Child> {
    (0..n)
        .map(|i| {
            s.start_with(&[
                ("PULSE_KAFKA__GROUP_ID", group.to_owned()),
                ("PULSE_KAFKA__INSTANCE_ID", format!("{group}.{i}")),
                ("PULSE_STORE__DATA_DIR", s.dir.path().join(format!("{group}.{i}")).display().to_string()),
                ("PULSE_HTTP__LISTEN", format!("127.0.0.1:{}", free_port())),
            ])
        })
        .collect()
}

fn stop_all(children: Vec<Child>) {
    for mut c in children {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let _ = c.wait();
    }
}

fn scaleout() {
    let events = env_or("PULSE_BENCH_SCALEOUT_EVENTS", 600_000);
    let s = Setup::with_partitions("scaleout", 6);
    let first_fy = pulse_model::Fy(pulse_model::Fy::of(wall_ms()).0 - 2).to_string();
    let out = s
        .loadgen(&["--users", "200000", "--events", &events.to_string(), "--first-fy", &first_fy])
        .output()
        .expect("pulse-loadgen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rates = Vec::new();
    for n in 1..=3 {
        let group = format!("{}.x{n}", s.prefix);
        let t = Instant::now();
        let mut children = instances(&s, &group, n);
        s.wait_caught_up(&group, &mut children);
        let took = t.elapsed().as_secs_f64();
        rates.push(events as f64 / took);
        println!(
            "scale-out: {n} instance(s) caught up {events} events in {took:.1}s: {:.0} events/s, {:.2}x one instance",
            rates[n - 1],
            rates[n - 1] / rates[0]
        );
        stop_all(children);
    }

    let users = env_or("PULSE_BENCH_RESTORE_USERS", 1_000_000);
    let r = Setup::with_partitions("restore", 1);
    // Every user registers and then spends time on a course: one user state
    // with a course, two remembered ids and a share of org and course totals.
    let t = Instant::now();
    let producer = tools::Producer::new(&brokers()).expect("producer");
    let day = 86_400_000;
    let start = wall_ms() - 300 * day;
    let mut line = String::new();
    for u in 0..users {
        let (user, org, ts) = (format!("u-{u}"), format!("O_{}", u % 500), start + (u as i64 % 250) * day);
        for (kind, extra) in
            [("registration", String::new()), ("progress", format!(r#","course":"do_{}","minutes":25"#, u % 300))]
        {
            line.clear();
            line.push_str(&format!(
                r#"{{"v":1,"id":"{kind}-{u}","type":"{kind}","ts":{ts},"user":"{user}","org":"{org}"{extra}}}"#
            ));
            producer.send(&r.topic("events"), Some(user.as_bytes()), Some(line.as_bytes())).expect("produce");
        }
    }
    producer.flush().expect("flush");
    println!("restore: {} events over {users} users produced in {:.0}s", users * 2, t.elapsed().as_secs_f64());
    let group = format!("{}.group", r.prefix);
    let mut first = instances(&r, &group, 1);
    r.wait_caught_up(&group, &mut first);
    stop_all(first);
    let t = Instant::now();
    let http = format!("127.0.0.1:{}", free_port());
    // The same static member id, on an empty state directory: as a pod
    // rescheduled onto a new volume, it takes the partition over at once.
    let second = r.start_with(&[
        ("PULSE_KAFKA__INSTANCE_ID", format!("{group}.0")),
        ("PULSE_STORE__DATA_DIR", r.dir.path().join("restored").display().to_string()),
        ("PULSE_HTTP__LISTEN", http.clone()),
    ]);
    wait_for_ok(&http, "/readyz", Duration::from_secs(1800));
    let took = t.elapsed().as_secs_f64();
    let (_, metrics) = http_get(&http, "/metrics").expect("metrics");
    let national = metrics.lines().find(|l| l.starts_with("pulse_kpi_registered_users{org=\"national\"}"));
    let restored = metrics.lines().find(|l| l.starts_with("pulse_kafka_restored_records_total"));
    println!("restore: one partition, {}; {}", national.unwrap_or("?"), restored.unwrap_or("?"));
    println!("  a new instance on an empty state directory was ready in {took:.1}s");
    let log = std::fs::read_to_string(r.dir.path().join("pulse.log")).unwrap_or_default();
    if let Some(line) = log.lines().rev().find(|l| l.contains("restored from the changelog")) {
        println!("  {}", line.split_once("INFO ").map_or(line, |(_, rest)| rest));
    }
    stop_all(vec![second]);
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

fn metric(addr: &str, series: &str) -> Option<f64> {
    let (_, metrics) = http_get(addr, "/metrics").ok()?;
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until plan `id` names `courses` courses, nobody is pending and the
/// API no longer says converging; the largest pending count seen.
fn wait_converged(addr: &str, id: &str, courses: usize) -> f64 {
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        // The gauge every 200 ms, the API (a large answer) only once it is 0.
        let pending = metric(addr, "pulse_plan_reevaluation_pending_users").unwrap_or(0.0);
        peak = peak.max(pending);
        if pending == 0.0 {
            let answer: Option<serde_json::Value> =
                http_get(addr, "/api/v1/plans").ok().and_then(|(_, b)| serde_json::from_str(&b).ok());
            if answer.is_some_and(|a| a["converging"] == false && a["plans"][id]["courses"] == courses) {
                return peak;
            }
        }
        assert!(Instant::now() < deadline, "plan {id} did not converge in 900s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_one(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn plans() {
    let users = env_or("PULSE_BENCH_PLAN_USERS", 3_000_000);
    let events = env_or("PULSE_BENCH_PLAN_EVENTS", 12_000_000);
    let backlog = env_or("PULSE_BENCH_PLAN_BACKLOG", 1_000_000);
    let rate = env_or("PULSE_BENCH_RATE", 5_000);
    let s = Setup::new("plans");
    let group = format!("{}.group", s.prefix);
    // Two whole past years, so that no event of the backlogs is in the future.
    let first_fy = pulse_model::Fy(pulse_model::Fy::of(wall_ms()).0 - 2);
    let produce = |from: u64, n: u64, live: bool| {
        let (users, from, n, fy) = (users.to_string(), from.to_string(), n.to_string(), first_fy.to_string());
        let mut args = vec!["--users", &users, "--events", &n, "--from", &from, "--first-fy", &fy];
        if live {
            args.extend(["--live", "--rate"]);
        }
        let rate = rate.to_string();
        if live {
            args.push(&rate);
        }
        s.loadgen(&args).stderr(Stdio::null()).spawn().expect("pulse-loadgen")
    };
    let plan = |courses: &[&str]| {
        let v = serde_json::json!({"v": 1, "id": "acbp-bench", "org": "national", "courses": courses,
            "assign": {"to": "all"}, "due": pulse_model::Fy::of(wall_ms()).end() - 1});
        tools::produce(
            &brokers(),
            &s.topic("plans"),
            &[(Some(b"acbp-bench".to_vec()), Some(v.to_string().into_bytes()))],
        )
        .expect("produce the plan");
    };
    assert!(produce(0, events, false).wait().expect("loadgen").success());
    let mut pulse = s.start();
    s.wait_caught_up(&group, std::slice::from_mut(&mut pulse));
    let registered = metric(&s.http, "pulse_kpi_registered_users{org=\"national\"}").unwrap_or(0.0);
    println!("plans: {events} events caught up, {registered:.0} users");

    // The cost to a catch-up: a backlog alone, then a backlog with a plan.
    let mut rates = Vec::new();
    for (i, with_plan) in [false, true].into_iter().enumerate() {
        stop_one(&mut pulse);
        assert!(produce(events + i as u64 * backlog, backlog, false).wait().expect("loadgen").success());
        if with_plan {
            plan(&["do_0", "do_1", "do_2", "do_3", "do_4"]);
        }
        let t = Instant::now();
        pulse = s.start();
        s.wait_caught_up(&group, std::slice::from_mut(&mut pulse));
        let took = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pulse.id());
        rates.push(backlog as f64 / took);
        let what = if with_plan { "with a national plan arriving" } else { "alone" };
        println!(
            "  backlog of {backlog} events {what}: caught up in {took:.1}s ({:.0} events/s, {cpu:.1} CPU s)",
            rates[i]
        );
        if with_plan {
            wait_converged(&s.http, "acbp-bench", 5);
            let cpu = cpu_seconds(pulse.id());
            println!("    the plan converged {:.1}s after the start ({cpu:.1} CPU s)", t.elapsed().as_secs_f64());
        }
    }
    println!("  catch-up rate with the plan re-evaluating: {:.2}x without", rates[1] / rates[0]);

    // Live: the plan changes while events flow.
    let mut load = produce(events + 2 * backlog, rate * 120, true);
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, t) = (cpu_seconds(pulse.id()), Instant::now());
    plan(&["do_0", "do_1", "do_2", "do_3", "do_4", "do_5", "do_6"]);
    let peak = wait_converged(&s.http, "acbp-bench", 7);
    let (took, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(pulse.id()) - cpu0);
    let users = http_get(&s.http, "/api/v1/plans")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|a| a["plans"]["acbp-bench"]["nodes"]["national"]["users"].as_i64())
        .unwrap_or(0);
    println!(
        "  live, {rate} events/s: a national plan's change re-evaluated {users} users in {took:.1}s ({cpu:.1} CPU s; at most {peak:.0} pending)"
    );
    let _ = load.kill();
    let _ = load.wait();
    stop_one(&mut pulse);
}

fn main() {
    let which = std::env::var("PULSE_BENCH").unwrap_or_else(|_| "all".into());
    if matches!(which.as_str(), "all" | "latency") {
        latency();
    }
    if matches!(which.as_str(), "all" | "national") {
        national();
    }
    if matches!(which.as_str(), "all" | "scaleout") {
        scaleout();
    }
    if matches!(which.as_str(), "all" | "plans") {
        plans();
    }
}
