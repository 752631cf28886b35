//! Integration tests against a real Apache Kafka broker (`scripts/kafka start`;
//! `KAFKA_PORT` picks the port, default 9092). Each test has its own topics,
//! consumer group, state directory and HTTP port, and runs the real `pulse`
//! binary; the monitoring test also runs the real Prometheus server.
//! The tests that restart the broker (one of them the chaos run) run alone
//! (a write lock).

// Test helpers unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[path = "common/http.rs"]
mod http;
#[path = "common/page.rs"]
mod page;

use http::{free_port, http_get, wait_for_ok};
use pulse_kafka::tools;
use pulse_loadgen::{World, WorldSpec};
use pulse_model::{Fy, InputFormat, TimeRules};
use pulse_oracle::{json_diff, Message, Settings};
use serde_json::{json, Value};

/// Held for reading by every test, for writing by the broker restart test.
static BROKER: RwLock<()> = RwLock::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn brokers() -> String {
    format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into()))
}

/// The report's fixed clock and year: the generated history lies before it.
const NOW: &str = "2026-01-15T00:00:00+05:30";
const FY: i32 = 2025;

use tools::KeyValue as Kv;

struct Case {
    name: String,
    events: String,
    /// The `sunbird-telemetry`, `igot-rating` and `user-profile` input topics.
    sunbird: String,
    ratings: String,
    users: String,
    orgs: String,
    targets: String,
    courses: String,
    plans: String,
    dlq: String,
    group: String,
    dir: tempfile::TempDir,
    /// The state directory (`store.data_dir`).
    data: PathBuf,
    config: PathBuf,
    /// Where `pulse run` serves /metrics and the API.
    http: String,
    /// Everything produced so far, for the reference model.
    sent: Vec<Message>,
}

impl Case {
    fn new(partitions: i32) -> Case {
        Case::with_counts([partitions; 3])
    }

    /// Input topics with these partition counts: events, sunbird, ratings.
    fn with_counts(counts: [i32; 3]) -> Case {
        let id = format!("{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), rand_suffix());
        let name = |t: &str| format!("test.{t}.{id}");
        let (events, orgs, targets, dlq) = (name("events"), name("orgs"), name("targets"), name("dlq"));
        let courses = name("courses");
        let plans = name("plans");
        let (sunbird, ratings, users) = (name("sunbird"), name("ratings"), name("users"));
        let b = brokers();
        for (input, partitions) in [&events, &sunbird, &ratings].into_iter().zip(counts) {
            tools::create_topic(&b, input, partitions, false).unwrap();
        }
        // Profiles are keyed by user like the events, with their partition count.
        tools::create_topic(&b, &users, counts[0], true).unwrap();
        tools::create_topic(&b, &orgs, 1, true).unwrap();
        tools::create_topic(&b, &targets, 1, true).unwrap();
        tools::create_topic(&b, &courses, 1, true).unwrap();
        tools::create_topic(&b, &plans, 1, true).unwrap();
        tools::create_topic(&b, &dlq, 1, false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pulse.toml");
        let http = format!("127.0.0.1:{}", free_port());
        let toml = format!(
            r#"
            [kafka]
            brokers = "{b}"
            group_id = "{group}"
            inputs = [
                {{ topic = "{events}", format = "pulse-v1" }},
                {{ topic = "{sunbird}", format = "sunbird-telemetry" }},
                {{ topic = "{ratings}", format = "igot-rating" }},
                {{ topic = "{users}", format = "user-profile" }},
            ]
            orgs_topic = "{orgs}"
            targets_topic = "{targets}"
            courses_topic = "{courses}"
            plans_topic = "{plans}"
            dlq_topic = "{dlq}"
            commit_interval = "50ms"
            session_timeout = "10s"
            [store]
            data_dir = "{data}"
            [engine]
            max_age = "3650d"
            # The reference models remember every id. Forgetting ids past the
            # horizon is the engine's (its tests). Here a generated history
            # packs ~50 events into a day of event time, so one commit
            # interval of a backlog catch-up spans weeks of it: a copy taking
            # the repartition route could then come after its original was
            # forgotten, which the contract allows and the models do not.
            dedup_horizon = "3650d"
            [http]
            listen = "{http}"
            "#,
            group = name("group"),
            data = dir.path().join("data").display(),
        );
        let data = dir.path().join("data");
        std::fs::write(&config, toml).unwrap();
        let group = name("group");
        Case {
            name: id,
            events,
            sunbird,
            ratings,
            users,
            orgs,
            targets,
            courses,
            plans,
            dlq,
            group,
            dir,
            data,
            config,
            http,
            sent: Vec::new(),
        }
    }

    fn produce_events(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.events, messages).unwrap();
        self.sent.extend(messages.iter().map(|(_, v)| Message::Event {
            format: InputFormat::PulseV1,
            key: None,
            value: v.clone().unwrap_or_default(),
        }));
    }

    fn produce_orgs(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.orgs, messages).unwrap();
        self.sent.extend(messages.iter().map(|(k, v)| Message::Org { key: k.clone(), value: v.clone() }));
    }

    fn produce_targets(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.targets, messages).unwrap();
        self.sent.extend(messages.iter().map(|(k, v)| Message::Target { key: k.clone(), value: v.clone() }));
    }

    fn produce_profiles(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.users, messages).unwrap();
        self.sent.extend(messages.iter().map(|(k, v)| Message::Event {
            format: InputFormat::UserProfile,
            key: k.clone(),
            value: v.clone().unwrap_or_default(),
        }));
    }

    fn produce_courses(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.courses, messages).unwrap();
        self.sent.extend(messages.iter().map(|(k, v)| Message::Course { key: k.clone(), value: v.clone() }));
    }

    fn produce_plans(&mut self, messages: &[Kv]) {
        tools::produce(&brokers(), &self.plans, messages).unwrap();
        self.sent.extend(messages.iter().map(|(k, v)| Message::Plan { key: k.clone(), value: v.clone() }));
    }

    fn start(&self) -> Child {
        self.start_with(&[])
    }

    /// Starts `pulse run` with config overrides (`PULSE_SECTION__KEY`).
    fn start_with(&self, overrides: &[(&str, String)]) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("pulse.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(overrides.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("pulse.log")).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Waits until a Pulse started when its log was `log_before` bytes long
    /// is given its partitions (and starts taking them over).
    fn wait_assigned(&self, log_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log()[log_before..].contains("assigned; restoring") {
            assert!(Instant::now() < deadline, "never assigned:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the group's committed offsets reach the end of every
    /// input partition. Pulse commits them to the group only after the state
    /// that includes them is persisted.
    fn wait_caught_up(&self, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{}: pulse exited with {status} before catching up:\n{}", self.name, self.log());
            }
            // Ready too: the group's offsets reach the ends long before a
            // take-over after a restart (or a stall) has ended, and the
            // state directory is read once Pulse stops.
            let behind = self.behind();
            let ready = http_get(&self.http, "/readyz").map(|(status, body)| (status == 200).then_some(()).ok_or(body));
            if behind.is_empty() && matches!(ready, Ok(Ok(()))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not caught up in 180s on {behind:?} ({ready:?}):\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The input topics (the repartition topic included) whose group
    /// offsets have not reached their ends.
    fn behind(&self) -> Vec<String> {
        let repartition = format!("{}.repartition", self.group);
        [&self.events, &self.sunbird, &self.ratings, &self.users, &repartition]
            .into_iter()
            .filter(|topic| {
                // Unknown ends (a broker just restarted) count as behind.
                let high = tools::high_watermarks(&brokers(), topic).unwrap_or_default();
                let committed = tools::committed_offsets(&brokers(), &self.group, topic).unwrap_or_default();
                high.is_empty() || !high.iter().all(|(p, h)| *h == 0 || committed.get(p).is_some_and(|c| c >= h))
            })
            .cloned()
            .collect()
    }

    fn report(&self) -> Value {
        self.report_for("2025-26")
    }

    fn report_for(&self, fy: &str) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(["report", "--all", "--now", NOW, "--fy", fy, "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(out.status.success(), "pulse report failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_object_mut().unwrap().remove("now");
        v
    }

    /// `pulse-loadgen` producing a mixed iGOT history to this case's topics,
    /// with duplicates, late arrivals, migrations and a `malformed` share,
    /// writing its expected report to `expected.json`. Events end by 31 March
    /// 2025: in the past for the wall clock Pulse checks them with and for
    /// the report's clock alike.
    fn loadgen(&self, seed: u64, events: u64, malformed: f64) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pulse-loadgen"));
        c.args(["--seed", &seed.to_string(), "--users", "4000", "--events", &events.to_string()])
            .args(["--top-level", "8", "--departments", "20", "--organisations", "60", "--courses", "80"])
            .args(["--first-fy", "2023-24", "--mix", "mixed", "--malformed", &malformed.to_string()])
            .args(["--duplicates", "0.02", "--out-of-order", "0.05", "--migrations", "0.01"])
            .args(["--assessments", "0.2", "--profiles", "0.3"])
            .args(["--now", NOW, "--fy", "2024-25", "--max-age-days", "3650", "--partitions", "4"])
            .args(["--brokers", &brokers()])
            .args(["--events-topic", &self.events, "--sunbird-topic", &self.sunbird, "--ratings-topic", &self.ratings])
            .args(["--orgs-topic", &self.orgs, "--targets-topic", &self.targets, "--courses-topic", &self.courses])
            .args(["--plans-topic", &self.plans])
            .args(["--users-topic", &self.users, "--expected"])
            .arg(self.dir.path().join("expected.json"));
        c
    }

    fn assert_equals_loadgen(&self) {
        let file = self.dir.path().join("expected.json");
        let mut expected: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        expected.as_object_mut().unwrap().remove("now");
        if let Some(d) = json_diff(&self.report_for("2024-25"), &expected) {
            panic!("{}: report differs from the loadgen's expected report: {d}\n{}", self.name, self.log());
        }
    }

    /// The reference model's report of everything produced so far.
    fn model(&self) -> Value {
        let settings = Settings {
            meeting_minutes: 240,
            time_rules: TimeRules { max_age_ms: 3650 * 86_400_000 },
            ingest_now: wall_clock(),
        };
        let now = pulse_model::time::parse_rfc3339(NOW).unwrap();
        pulse_oracle::report(&self.sent, &settings, FY, now)
    }

    fn assert_equals_model(&self) {
        let expected = self.model();
        let actual = self.report();
        if let Some(d) = json_diff(&actual, &expected) {
            panic!("{}: report differs from the reference model: {d}\n{}", self.name, self.log());
        }
    }
}

/// A passing test deletes its topics: a broker kept across runs (`scripts/kafka`
/// keeps its data) would otherwise grow by thousands of partitions, and the
/// broker restarts of these tests would outlast their deadlines.
impl Drop for Case {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let internal = [format!("{}.changelog", self.group), format!("{}.repartition", self.group)];
        let inputs = [&self.events, &self.sunbird, &self.ratings, &self.users, &self.orgs, &self.targets];
        let rest = [&self.courses, &self.plans, &self.dlq];
        for topic in inputs.into_iter().chain(rest).chain(&internal) {
            // Best effort: a test may have deleted one itself.
            let _ = tools::delete_topic(&brokers(), topic);
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000
}

fn wall_clock() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// SIGTERM, then the exit status must be success.
fn stop(child: &mut Child, case: &Case) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{}: pulse exited with {status} on SIGTERM:\n{}", case.name, case.log());
            return;
        }
        assert!(Instant::now() < deadline, "{}: pulse did not stop within 60s of SIGTERM:\n{}", case.name, case.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small iGOT-shaped world, with assessments in a fifth of its journeys.
fn small_world(seed: u64) -> World {
    World::new(WorldSpec {
        seed,
        top_level: 6,
        departments: 12,
        organisations: 40,
        users: 3_000,
        courses: 60,
        first_fy: Fy(FY - 1),
        assessments: 0.2,
        ..WorldSpec::default()
    })
}

/// The small world's catalogue, and profiles of every third user, a tenth
/// of them removed again (tombstones): the inputs of contract v2.
fn catalogue_and_profiles(seed: u64) -> (Vec<Kv>, Vec<Kv>) {
    let world = small_world(seed);
    let courses = world.course_lines().into_iter().map(|(k, v)| (Some(k.into_bytes()), Some(v.into_bytes()))).collect();
    let mut line = String::new();
    let mut profiles: Vec<Kv> = Vec::new();
    for user in (0..world.spec.users).step_by(3) {
        world.profile_line(user, &mut line);
        profiles.push((Some(format!("u-{user}").into_bytes()), Some(line.clone().into_bytes())));
    }
    for user in (0..world.spec.users).step_by(30) {
        profiles.push((Some(format!("u-{user}").into_bytes()), None));
    }
    (courses, profiles)
}

/// A small iGOT-shaped world and `n` of its events, keyed by user, with some
/// exact duplicates mixed in. Event time lies in FY 2024-25 and 2025-26.
fn history(seed: u64, n: usize) -> (Vec<Kv>, Vec<Kv>) {
    let world = small_world(seed);
    let orgs = world
        .orgs
        .iter()
        .zip(world.org_lines())
        .map(|(o, line)| (Some(o.id.clone().into_bytes()), Some(line.into_bytes())))
        .collect();
    let mut line = String::new();
    let mut events: Vec<Kv> = world
        .events()
        // Spread over three quarters of the two years: both sides of 1 April 2025, none after NOW.
        .spread_over(n as u64 * 4 / 3)
        .take(n)
        .map(|e| {
            world.pulse_v1(&e, &mut line);
            (Some(format!("u-{}", e.user).into_bytes()), Some(line.clone().into_bytes()))
        })
        .collect();
    // Exact duplicates arrive ~20 events after their originals.
    for i in (0..events.len().saturating_sub(20)).step_by(97).rev() {
        let copy = events[i].clone();
        events.insert(i + 20, copy);
    }
    (orgs, events)
}

fn target_records() -> Vec<Kv> {
    let t = |id: &str, org: &str, kpi: &str, value: f64| {
        let v = json!({"v": 1, "id": id, "org": org, "kpi": kpi, "value": value, "fy": "2025-26"});
        (Some(id.as_bytes().to_vec()), Some(v.to_string().into_bytes()))
    };
    vec![t("t-national", "national", "completions_fy", 500.0), t("t-m0", "M_0", "learning_minutes_per_user_fy", 240.0)]
}

#[test]
fn catch_up_equals_the_reference_model() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(4);
    let (orgs, events) = history(11, 8_000);
    let (courses, profiles) = catalogue_and_profiles(11);
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    case.produce_courses(&courses);
    case.produce_profiles(&profiles);
    case.produce_events(&events);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

#[test]
fn a_graceful_stop_midstream_and_a_restart_lose_nothing() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(3);
    let (orgs, events) = history(12, 6_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let mut pulse = case.start();
    // Stop while the second half is still arriving.
    let producer = {
        let (b, topic, rest) = (brokers(), case.events.clone(), second.to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(500) {
                tools::produce(&b, &topic, chunk).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Stop once some, not all, of the stream is in.
    let deadline = Instant::now() + Duration::from_secs(120);
    while tools::committed_offsets(&brokers(), &case.group, &case.events).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "pulse committed nothing in 120s:\n{}", case.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(&mut pulse, &case);
    producer.join().unwrap();
    case.sent.extend(second.iter().map(|(_, v)| Message::Event {
        format: InputFormat::PulseV1,
        key: None,
        value: v.clone().unwrap(),
    }));
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

/// A transaction left open on a changelog partition below what Pulse has
/// committed there (a committed one's markers, which a broker restart
/// delays, hold readers the same way) makes the end a `read_committed`
/// reader sees lower than the local state's position. A restart waits for
/// the transaction to be decided and keeps its local state: taking that
/// end for the changelog's, it would rebuild the shard from an older state
/// whose records the log then passes, to be read later over a newer one.
#[test]
fn a_transaction_open_on_the_changelog_holds_a_restore_which_keeps_the_local_state() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(47, 6_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    let changelog = format!("{}.changelog", case.group);
    let open = tools::OpenTransaction::begin(&brokers(), &format!("{}.open", case.group), &changelog, 0, (b"?", b"?"))
        .unwrap();
    case.produce_events(second);
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    let log_before = case.log().len();
    let mut pulse = case.start();
    case.wait_assigned(log_before);
    std::thread::sleep(Duration::from_secs(3));
    open.abort().unwrap();
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    let log = case.log()[log_before..].to_owned();
    assert!(!log.contains("not from this changelog"), "the restart dropped a shard's local state:\n{log}");
    assert!(log.contains("restored from the changelog shard=0 records=0"), "shard 0 was not kept:\n{log}");
    case.assert_equals_model();
}

/// A new instance restoring every shard from the changelog into an empty
/// state directory, killed (-9) as the restore starts and again a little
/// later: a restore writes without RocksDB's write-ahead log, so what a
/// kill takes back must be read again, never taken as restored (a changelog
/// position on disk before the records it leads to would leave users out).
/// The last start resumes the restore and the state ends exact.
#[test]
fn a_restore_killed_midway_resumes_and_ends_exact() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(59, 20_000);
    case.produce_orgs(&orgs);
    case.produce_events(&events);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.data = case.dir.path().join("restored");
    // Static membership: each restart is given both partitions at once.
    let fresh = [
        ("PULSE_STORE__DATA_DIR", case.data.display().to_string()),
        ("PULSE_KAFKA__INSTANCE_ID", format!("{}.restoring", case.group)),
    ];
    for wait in [Duration::ZERO, Duration::from_millis(300)] {
        let log_before = case.log().len();
        let mut pulse = case.start_with(&fresh);
        case.wait_assigned(log_before);
        std::thread::sleep(wait);
        pulse.kill().unwrap();
        pulse.wait().unwrap();
    }
    let mut pulse = case.start_with(&fresh);
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

/// Kills at random moments of a catch-up over a history with malformed
/// messages among the events: nothing is lost, nothing counts twice, and
/// every bad message is on the DLQ exactly once (`read_committed`).
#[test]
fn kill_9_at_random_moments_loses_nothing_counts_nothing_twice_and_dead_letters_once() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(4);
    let (orgs, mut events) = history(13, 30_000);
    // Malformed messages spread over the history and the partitions.
    let burst = malformed_burst(48);
    for (i, (_, bad)) in burst.iter().enumerate() {
        events.insert(i * 600, (Some(format!("bad-{i}").into_bytes()), bad.clone()));
    }
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    case.produce_events(&events);
    let mut pulse = case.start();
    let mut rng_state = 0x9e37_79b9_u64;
    for _ in 0..6 {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (rng_state >> 33) % 1500));
        pulse.kill().unwrap(); // SIGKILL
        pulse.wait().unwrap();
        pulse = case.start();
    }
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_model();
    assert_dead_letters_exactly_once(&case, burst);
}

/// The DLQ, read `read_committed`, holds each of `bad` exactly once: one
/// letter per source message (topic, partition, offset), and no other.
fn assert_dead_letters_exactly_once(case: &Case, bad: Vec<Kv>) {
    let letters = tools::read_all(&brokers(), &case.dlq).unwrap();
    let mut by_source: BTreeMap<(String, String, String), Option<Vec<u8>>> = BTreeMap::new();
    for l in &letters {
        let [topic, partition, offset] =
            ["pulse.source.topic", "pulse.source.partition", "pulse.source.offset"].map(|h| l.headers[h].clone());
        let source = format!("{topic}/{partition}@{offset}");
        let earlier = by_source.insert((topic, partition, offset), l.value.clone());
        assert!(earlier.is_none(), "{}: the message at {source} is on the DLQ twice\n{}", case.name, case.log());
    }
    let mut dead: Vec<Option<Vec<u8>>> = by_source.into_values().collect();
    let mut sent: Vec<Option<Vec<u8>>> = bad.into_iter().map(|(_, v)| v).collect();
    dead.sort();
    sent.sort();
    assert!(dead == sent, "the DLQ holds {} letters, not exactly the {} malformed messages", dead.len(), sent.len());
}

#[test]
fn every_dead_letter_reason_reaches_the_dlq_with_its_headers_and_the_offset_passes_it() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(1);
    let ev = |fields: Value| Some(fields.to_string().into_bytes());
    let ok = |id: &str| json!({"v": 1, "id": id, "type": "registration", "ts": "2025-06-02T09:00:00+05:30", "user": "u1", "org": "A"});
    let mut bad: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("invalid_json", Some(b"{not json".to_vec())),
        ("unsupported_version", ev(json!({"v": 2, "id": "x"}))),
        ("missing_field", ev(json!({"v": 1, "id": "x", "type": "registration", "ts": 1}))),
        ("invalid_field", ev(json!({"v": 1, "id": "x", "type": "like", "ts": 1, "user": "u", "org": "A"}))),
        ("too_large", Some(vec![b' '; 64 * 1024 + 1])),
        (
            "future_timestamp",
            ev(
                json!({"v": 1, "id": "f", "type": "registration", "ts": wall_clock() + 3 * 86_400_000, "user": "u", "org": "A"}),
            ),
        ),
        ("too_old", ev(json!({"v": 1, "id": "o", "type": "registration", "ts": 0, "user": "u", "org": "A"}))),
    ];
    let mut events: Vec<Kv> = vec![(Some(b"u1".to_vec()), ev(ok("good-1")))];
    events.extend(bad.iter().map(|(_, v)| (Some(b"k-bad".to_vec()), v.clone())));
    events.push((Some(b"u1".to_vec()), ev(ok("good-2"))));
    case.produce_events(&events);
    // An org whose parent link would close a cycle.
    let org = |id: &str, parent: Option<&str>| {
        (Some(id.as_bytes().to_vec()), Some(json!({"v": 1, "org": id, "parent": parent}).to_string().into_bytes()))
    };
    let cycle = org("A", Some("B"));
    case.produce_orgs(&[org("A", None), org("B", Some("A")), cycle.clone()]);
    bad.push(("org_cycle", cycle.1));

    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);

    let letters = tools::read_all(&brokers(), &case.dlq).unwrap();
    assert_eq!(letters.len(), bad.len(), "one dead letter per bad message");
    for (reason, value) in &bad {
        let letter = letters
            .iter()
            .find(|l| l.headers.get("pulse.reason").map(String::as_str) == Some(reason))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}"));
        assert_eq!(&letter.value, value, "{reason}: the value is untouched");
        assert!(!letter.headers["pulse.detail"].is_empty());
        let source = &letter.headers["pulse.source.topic"];
        assert!(source == &case.events || source == &case.orgs, "{reason}: source topic {source}");
        assert!(letter.headers["pulse.source.offset"].parse::<i64>().is_ok());
        assert!(letter.headers["pulse.source.partition"].parse::<i32>().is_ok());
        if source == &case.events {
            assert_eq!(letter.key.as_deref(), Some(&b"k-bad"[..]), "{reason}: the key is untouched");
        }
    }
    // Both good events, on either side of the bad ones, were applied.
    let report = case.report();
    assert_eq!(report["nodes"]["national"]["registered_users"], 1);
    case.assert_equals_model();
}

fn kafka_script(arg: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka");
    let out = Command::new(script).arg(arg).output().unwrap();
    assert!(out.status.success(), "scripts/kafka {arg}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_broker_restart_under_a_running_pulse_is_waited_out() {
    let _broker = BROKER.write().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(14, 6_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    // Another instance, starting while the broker is down, waits for it;
    // a SIGTERM meanwhile is a prompt and clean stop.
    let idle = Case::new(1);
    kafka_script("stop");
    let mut waiting = idle.start();
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    stop(&mut waiting, &idle);
    assert!(asked.elapsed() < Duration::from_secs(15), "a SIGTERM while waiting for Kafka took {:?}", asked.elapsed());
    kafka_script("start");
    case.produce_events(second);
    case.wait_caught_up(&mut pulse);
    assert!(pulse.try_wait().unwrap().is_none(), "pulse kept running through the broker restart");
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

#[test]
fn a_reparented_org_and_a_migrated_user_move_their_numbers() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let org = |id: &str, parent: Option<&str>, employees: u64| {
        let v = json!({"v": 1, "org": id, "parent": parent, "employees": employees});
        (Some(id.as_bytes().to_vec()), Some(v.to_string().into_bytes()))
    };
    case.produce_orgs(&[
        org("M_A", None, 10),
        org("M_B", None, 10),
        org("D_1", Some("M_A"), 5),
        org("D_2", Some("M_B"), 5),
    ]);
    let ev = |id: &str, ts: &str, user: &str, org: &str| {
        let v = json!({"v": 1, "id": id, "type": "progress", "ts": ts, "user": user, "org": org, "course": "c", "minutes": 30});
        (Some(user.as_bytes().to_vec()), Some(v.to_string().into_bytes()))
    };
    case.produce_events(&[
        ev("a1", "2025-05-01T10:00:00+05:30", "alice", "D_1"),
        ev("b1", "2025-05-01T10:00:00+05:30", "bob", "D_1"),
    ]);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    let before = case.report();
    assert_eq!(before["nodes"]["M_A"]["registered_users"], 2);
    // D_1 moves under M_B; bob moves to D_2 by a later event.
    case.produce_orgs(&[org("D_1", Some("M_B"), 5)]);
    case.produce_events(&[ev("b2", "2025-06-01T10:00:00+05:30", "bob", "D_2")]);
    case.wait_caught_up(&mut pulse);
    // The registry is read apart from the events: wait until the published
    // state (a commit's) has D_1 under M_B.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
        let moved = |l: &&str| l.starts_with(r#"pulse_org_info{org="D_1","#) && l.contains(r#"parent="M_B""#);
        if metrics.lines().any(|l| moved(&l)) {
            break;
        }
        assert!(Instant::now() < deadline, "D_1 never showed under M_B:\n{}", case.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut pulse, &case);
    let after = case.report();
    assert_eq!(after["nodes"]["M_A"]["registered_users"], 0);
    assert_eq!(after["nodes"]["M_B"]["registered_users"], 2);
    assert_eq!(after["nodes"]["D_1"]["registered_users"], 1);
    assert_eq!(after["nodes"]["D_2"]["learning_minutes"], 60.0, "bob's whole history moved with him");
    assert_eq!(after["nodes"]["M_B"]["employees"], 20);
    case.assert_equals_model();
}

/// A plan of every assignment type and a re-parenting arrive while events
/// flow. Re-evaluating the users they affect takes many commits (slices of
/// 40 users), and Pulse is killed with `kill -9` during it, twice (the
/// second time after another plan change). It resumes from each shard's
/// stored work; the plans' KPIs end equal to the model's.
#[test]
fn plans_and_a_reparenting_reevaluated_through_two_kill_9s_equal_the_reference_model() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(4);
    let seed = 17;
    let (orgs, events) = history(seed, 12_000);
    let (courses, profiles) = catalogue_and_profiles(seed);
    case.produce_orgs(&orgs);
    case.produce_courses(&courses);
    case.produce_profiles(&profiles);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let slices = [("PULSE_ENGINE__PLAN_SLICE_USERS", "40".to_string())];
    let mut pulse = case.start_with(&slices);
    case.wait_caught_up(&mut pulse);

    let producer = {
        let (b, topic, rest) = (brokers(), case.events.clone(), second.to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(200) {
                tools::produce(&b, &topic, chunk).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let world = small_world(seed);
    let kv = |id: &str, v: String| (Some(id.as_bytes().to_vec()), Some(v.into_bytes()));
    let mut plans: Vec<Kv> = world.plan_lines().into_iter().map(|(id, v)| kv(&id, v)).collect();
    // A department moves to another ministry: its users leave one
    // ministry's plan and join the other's.
    let dept = world.orgs.iter().find(|o| o.kind == "department").unwrap();
    let to = world.orgs.iter().find(|o| o.parent.is_none() && Some(&o.id) != dept.parent.as_ref()).unwrap();
    let moved = json!({"v": 1, "org": dept.id, "name": dept.name, "parent": to.id, "kind": dept.kind,
        "employees": dept.employees});
    // The second change: the national plan gains courses.
    let mut national: Value = serde_json::from_slice(plans[0].1.as_ref().unwrap()).unwrap();
    national["courses"] = json!(["do_0", "do_1", "do_2", "do_3", "do_4", "do_5", "do_6"]);
    let pending = |case: &Case| {
        http_get(&case.http, "/metrics")
            .ok()
            .and_then(|(_, m)| sample(&m, "pulse_plan_reevaluation_pending_users"))
            .unwrap_or(0.0)
    };
    for round in 0..2 {
        if round == 0 {
            case.produce_plans(&plans);
            case.produce_orgs(&[kv(&dept.id, moved.to_string())]);
        } else {
            case.produce_plans(&[kv("acbp-national", national.to_string())]);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while pending(&case) == 0.0 {
            assert!(Instant::now() < deadline, "round {round}: no re-evaluation pending in 60s:\n{}", case.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        pulse.kill().unwrap(); // SIGKILL, mid-way through re-evaluation
        pulse.wait().unwrap();
        pulse = case.start_with(&slices);
    }
    plans[0] = kv("acbp-national", national.to_string());
    producer.join().unwrap();
    case.sent.extend(second.iter().map(|(_, v)| Message::Event {
        format: InputFormat::PulseV1,
        key: None,
        value: v.clone().unwrap(),
    }));
    case.wait_caught_up(&mut pulse);
    // Converged: every plan read, no user pending.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer: Option<Value> =
            http_get(&case.http, "/api/v1/plans").ok().and_then(|(_, body)| serde_json::from_str(&body).ok());
        let done = answer.as_ref().is_some_and(|a| {
            a["converging"] == false
                && a["plans"]["acbp-national"]["courses"] == 7
                && a["plans"].as_object().unwrap().len() == plans.len()
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "plans not converged in 120s: {answer:?}\n{}", case.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut pulse, &case);
    let report = case.report();
    let national_kpis = &report["plans"]["acbp-national"]["nodes"]["national"];
    assert!(national_kpis["users"].as_i64().unwrap() > 1_000, "{national_kpis}");
    assert!(report["plans"][format!("acbp-{}", to.id)]["nodes"].get(&dept.id).is_some(), "the moved department");
    case.assert_equals_model();
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The real Prometheus server (Debian's `prometheus` package) scraping a
/// running Pulse every second, with the repository's rule files loaded.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}', '{}']\n\
             scrape_configs: [{{job_name: pulse, static_configs: [{{targets: ['{target}']}}]}}]\n",
            deploy.join("recording.rules.yml").display(),
            deploy.join("alerts.rules.yml").display(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus not found: install Debian's `prometheus` package (.ci/run does)");
        Prometheus { child, addr, _dir: dir }
    }

    /// Runs an instant query; `Err` carries Prometheus's error.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", url_encode(promql)))
            .map_err(|e| format!("Prometheus at {} does not answer: {e}", self.addr))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `promql` returns data.
    fn wait_for(&self, promql: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(result) = self.query(promql) {
                if !result.is_empty() {
                    return result;
                }
            }
            assert!(Instant::now() < deadline, "Prometheus returned no data for `{promql}` in 90s");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the dashboards (panel targets and query
/// variables) and of the rule files, as (where, expression, must return data).
fn deployed_expressions() -> Vec<(String, String, bool)> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut exprs = Vec::new();
    for file in ["recording.rules.yml", "alerts.rules.yml"] {
        let rules: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(deploy.join("prometheus").join(file)).unwrap()).unwrap();
        for group in rules["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap();
                // An alert's expression returns data only while it fires;
                // `promtool test rules` checks when it does.
                let must_have_data = rule["record"].is_string();
                exprs.push((format!("{file}: {name}"), rule["expr"].as_str().unwrap().to_owned(), must_have_data));
            }
        }
    }
    let mut dashboards: Vec<PathBuf> =
        std::fs::read_dir(deploy.join("grafana/dashboards")).unwrap().map(|e| e.unwrap().path()).collect();
    dashboards.sort();
    for path in dashboards {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        collect_exprs(&dashboard, &file, &mut exprs);
        for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let query = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap_or_default();
            // `label_values(SERIES, LABEL)` asks for SERIES' values of LABEL.
            if let Some(inner) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
                let series = inner.rsplit_once(',').map_or(inner, |(s, _)| s).trim();
                exprs.push((format!("{file}: variable {}", var["name"]), series.to_owned(), true));
            }
        }
    }
    exprs
}

fn collect_exprs(v: &Value, file: &str, out: &mut Vec<(String, String, bool)>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(expr)), Some(title)) = (map.get("expr"), map.get("refId")) {
                out.push((format!("{file}: target {title}"), expr.clone(), true));
            }
            for (k, child) in map {
                if k != "templating" {
                    collect_exprs(child, file, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, file, out)),
        _ => {}
    }
}

/// Grafana's variables, replaced by real values (every spelling Grafana accepts).
fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut out = expr.to_owned();
    for (name, value) in vars {
        for form in [format!("${{{name}}}"), format!("[[{name}]]"), format!("${name}")] {
            out = out.replace(&form, value);
        }
    }
    out
}

#[test]
fn dashboards_and_rules_return_data_from_a_real_prometheus() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(21, 6_000);
    // `$org` of the MDO dashboard: a child of `$ministry` M_0, with a target.
    let org = orgs
        .iter()
        .map(|(_, v)| serde_json::from_slice::<Value>(v.as_ref().unwrap()).unwrap())
        .find(|o| o["parent"] == "M_0")
        .unwrap()["org"]
        .as_str()
        .unwrap()
        .to_owned();
    let mdo_target = json!({"v": 1, "id": "t-mdo", "org": org, "kpi": "enrolments_fy", "value": 50, "fy": "2025-26"});
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    case.produce_targets(&[(Some(b"t-mdo".to_vec()), Some(mdo_target.to_string().into_bytes()))]);
    // One target of every KPI kind, so that each per-KPI recording rule has data.
    let kinds: Vec<Kv> = pulse_model::TargetKpi::ALL
        .iter()
        .map(|kpi| {
            let id = format!("t-national-{kpi}");
            let v = json!({"v": 1, "id": id, "org": "national", "kpi": kpi.name(), "value": 0.5, "fy": "2025-26"});
            (Some(id.into_bytes()), Some(v.to_string().into_bytes()))
        })
        .collect();
    case.produce_targets(&kinds);
    case.produce_events(&events);
    // Activity of the last hours (the windows are computed at the scrape's
    // clock), assessments, and a catalogue naming a provider: every v2 panel
    // and rule has data.
    let now = wall_clock();
    let recent: Vec<Kv> = (0..4i64)
        .map(|i| {
            let kind = if i % 2 == 0 { "assessment" } else { "enrolment" };
            let user = format!("recent-u{i}");
            let v = json!({"v": 1, "id": format!("recent-{i}"), "type": kind, "ts": now - i * 3_600_000, "user": user,
                "org": org, "course": "recent-c", "score": 80, "pass": i == 0});
            (Some(user.into_bytes()), Some(v.to_string().into_bytes()))
        })
        .collect();
    case.produce_events(&recent);
    let course =
        json!({"v": 1, "course": "recent-c", "name": "Recent course", "provider": "P_1", "provider_name": "ISTM"});
    case.produce_courses(&[(Some(b"recent-c".to_vec()), Some(course.to_string().into_bytes()))]);
    // A plan for everyone, under way: every plan rule and panel has data.
    let plan = json!({"v": 1, "id": "acbp-national", "org": "national", "courses": ["do_0", "do_1", "do_2"],
        "assign": {"to": "all"}, "start": now - 30 * 86_400_000, "due": now + 60 * 86_400_000});
    case.produce_plans(&[(Some(b"acbp-national".to_vec()), Some(plan.to_string().into_bytes()))]);
    // A few dead letters, so the dead-letter panels have a series.
    case.produce_events(&[(None, Some(b"{not json".to_vec())), (None, Some(b"[]".to_vec()))]);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);

    // Caught up: ready once librdkafka has reported the partitions' ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&case.http, "/readyz").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "not ready 30s after catching up: {:?}", http_get(&case.http, "/readyz"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, metrics) = http_get(&case.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("\npulse_ready 1\n"));
    assert!(metrics.contains("pulse_ingest_dead_letters_total{reason=\"invalid_json\"} 2\n"), "{metrics}");

    let prometheus = Prometheus::start(&case.http);
    // Two scrapes and the recording rules' evaluations behind them.
    prometheus.wait_for("org:pulse_kpi_registered_users:sum");
    prometheus.wait_for("rate(pulse_ingest_messages_total[1m])");
    prometheus.wait_for("target:pulse_target_progress:ratio{target=\"t-mdo\"}");
    prometheus.wait_for("plan_org:pulse_plan_progress:ratio{plan=\"acbp-national\"}");
    let vars = [
        ("fy", "2025-26"),
        ("ministry", "M_0"),
        ("org", org.as_str()),
        ("plan", "acbp-national"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ];
    let exprs = deployed_expressions();
    assert!(exprs.len() > 40, "only {} expressions found", exprs.len());
    let mut failures = Vec::new();
    for (place, expr, must_have_data) in &exprs {
        let promql = substitute(expr, &vars);
        assert!(!promql.contains('$'), "{place}: unknown variable left in `{promql}`");
        match prometheus.query(&promql) {
            Err(e) => failures.push(format!("{place}: `{promql}` failed: {e}")),
            Ok(result) if result.is_empty() && *must_have_data => {
                failures.push(format!("{place}: `{promql}` returned no data"))
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} of {} expressions:\n{}", failures.len(), exprs.len(), failures.join("\n\n"));

    // A KPI read through Prometheus (and the recording rules) equals `pulse report`.
    stop(&mut pulse, &case);
    let report = case.report();
    let value = |promql: &str| -> f64 {
        let result = prometheus.query(promql).unwrap();
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    for node in ["national", "M_0", org.as_str()] {
        let kpis = &report["nodes"][node];
        let users = value(&format!("org:pulse_kpi_registered_users:sum{{org=\"{node}\"}}"));
        assert_eq!(users, kpis["registered_users"].as_f64().unwrap(), "{node}");
        let enrolments = value(&format!("org_fy:pulse_kpi_enrolments_fy:sum{{org=\"{node}\",fy=\"2025-26\"}}"));
        assert_eq!(enrolments, kpis["enrolments_fy"].as_f64().unwrap(), "{node}");
        let minutes = value(&format!("org:pulse_kpi_learning_seconds:sum{{org=\"{node}\"}}")) / 60.0;
        assert!((minutes - kpis["learning_minutes"].as_f64().unwrap()).abs() < 1e-6, "{node}");
    }

    // The v2 families through the rules: the recent activity's window, its
    // assessments, and the providers as the report sums them.
    assert_eq!(value("org_window:pulse_kpi_active_users_window:sum{org=\"national\",window=\"7d\"}"), 4.0);
    let national = &report["nodes"]["national"];
    assert_eq!(value("org:pulse_kpi_assessed:sum{org=\"national\"}"), national["assessed"].as_f64().unwrap());
    let pass = value("org:pulse_kpi_assessment_pass:ratio{org=\"national\"}");
    assert!((pass - national["assessment_pass_ratio"].as_f64().unwrap()).abs() < 1e-9);
    // A plan's counts, summed over the instance's share, as the report has them.
    for node in ["national", "M_0"] {
        let kpis = &report["plans"]["acbp-national"]["nodes"][node];
        for kpi in ["users", "courses_assigned", "courses_completed", "users_compliant"] {
            let v = value(&format!("plan_org:pulse_plan_{kpi}:sum{{plan=\"acbp-national\",org=\"{node}\"}}"));
            assert_eq!(v, kpis[kpi].as_f64().unwrap(), "{node} {kpi}");
        }
    }
    for (id, provider) in report["providers"].as_object().unwrap() {
        let enrolments = value(&format!("provider:pulse_provider_enrolments:sum{{provider=\"{id}\"}}"));
        assert_eq!(enrolments, provider["enrolments"].as_f64().unwrap(), "{id}");
    }

    // `pulse serve` answers from the same state directory, without consuming.
    let serve_addr = format!("127.0.0.1:{}", free_port());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["serve", "--listen", &serve_addr, "--data-dir"])
        .arg(&case.data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node: Value =
        serde_json::from_str(&wait_for_ok(&serve_addr, "/api/v1/nodes/national?fy=2025-26", Duration::from_secs(30)))
            .unwrap();
    // The windows differ: the report is at NOW, the API at the wall clock.
    assert_eq!(without_windows(&node["nodes"]["national"]), without_windows(&report["nodes"]["national"]));
    assert_eq!(node["nodes"]["national"]["active_users_7d"], 4);
    let (_, served) = http_get(&serve_addr, "/metrics").unwrap();
    assert!(served.contains("pulse_kpi_registered_users{org=\"national\"}"));
    assert!(!served.contains("pulse_ingest_"), "serve consumes nothing, so it has no ingest series");
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// `pulse-loadgen` producing every input format to Kafka, with duplicates,
/// late arrivals, migrations and malformed messages: Pulse's report equals
/// the generator's expected report (the reference model of what it produced).
#[test]
fn loadgen_on_kafka_in_every_format_equals_its_expected_report() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let case = Case::new(4);
    let out = case.loadgen(5, 40_000, 0.005).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
    for format in ["pulse-v1", "sunbird-telemetry", "igot-rating"] {
        assert!(metrics.contains(&format!("format=\"{format}\"")), "no {format} messages counted:\n{metrics}");
    }
    stop(&mut pulse, &case);
    case.assert_equals_loadgen();
}

/// Two `pulse run` on one state directory: the second refuses to start,
/// saying why, and the first goes on.
#[test]
fn a_second_pulse_run_on_the_same_state_directory_refuses_to_start() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let case = Case::new(1);
    let mut first = case.start();
    wait_for_ok(&case.http, "/healthz", Duration::from_secs(60));
    let second = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["run", "--config"])
        .arg(&case.config)
        .env("PULSE_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another `pulse run` holds it"), "{stderr}");
    assert!(first.try_wait().unwrap().is_none(), "the first instance keeps running");
    stop(&mut first, &case);
}

#[path = "common/tmpfs.rs"]
mod tmpfs;

/// A small xorshift generator: the chaos schedule is random but repeatable
/// from its printed seed (`PULSE_CHAOS_SEED`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Malformed messages of every kind beyond the contract's list, each unique.
fn malformed_burst(n: usize) -> Vec<Kv> {
    (0..n)
        .map(|i| {
            let value = match i % 6 {
                0 => format!("{{\"v\":1,\"id\":\"bad-{i}\"").into_bytes(),
                1 => [b"\xff\xfe{\"id\":".as_slice(), i.to_string().as_bytes()].concat(),
                2 => format!("{}{i}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
                3 => format!("{{\"v\":1e400,\"id\":\"{i}\"}}").into_bytes(),
                4 => [vec![b' '; 64 * 1024 + 1], i.to_string().into_bytes()].concat(),
                _ => format!("{{\"v\":1,\"v\":1,\"id\":\"dup-key-{i}\",\"type\":null}}").into_bytes(),
            };
            (None, Some(value))
        })
        .collect()
}

/// The chaos run: the load generator produces a mixed history at a steady
/// rate while, at random moments, Pulse is killed with SIGKILL (10 times),
/// the broker is restarted under it (twice), and a burst of malformed
/// messages arrives. Pulse is frozen (SIGSTOP) across each broker restart,
/// so that the broker completes no transaction of it while its partitions
/// have no leader: a single broker then drops the transaction's markers
/// (its marker channel skips such partitions as deleted), which leaves a
/// hanging transaction that only an operator can abort (Pulse waits on it,
/// not ready, and says so: RELIABILITY.md). Its commits in flight fail or
/// complete after the restart. At the end the report equals the generator's expected report,
/// and the DLQ holds exactly the malformed messages, each once (dead letters
/// are written in the transaction that passes their offsets).
/// `PULSE_CHAOS_EVENTS` (default 20,000) and `PULSE_CHAOS_RATE` (events/s,
/// default 1,000) size it; `scripts/chaos` runs the long form.
#[test]
fn chaos_kills_broker_restarts_and_a_malformed_burst_lose_nothing_and_count_nothing_twice() {
    let _broker = BROKER.write().unwrap_or_else(|p| p.into_inner());
    let events: u64 = env_or("PULSE_CHAOS_EVENTS", 20_000);
    let rate: u64 = env_or("PULSE_CHAOS_RATE", 1_000);
    let seed: u64 = env_or("PULSE_CHAOS_SEED", wall_clock() as u64 | 1);
    let mut rng = Rng(seed);
    eprintln!("chaos: {events} events at {rate}/s, PULSE_CHAOS_SEED={seed}");
    let case = Case::new(4);
    let loadgen =
        case.loadgen(9, events, 0.0).arg("--rate").arg(rate.to_string()).stderr(Stdio::piped()).spawn().unwrap();
    // Static membership: a restarted Pulse takes its partitions back at once.
    let overrides = [("PULSE_KAFKA__INSTANCE_ID", format!("chaos-{}", case.name))];
    let mut pulse = case.start_with(&overrides);
    let mut steps: Vec<&str> = [["kill"; 10].as_slice(), &["broker"; 2], &["burst"]].concat();
    // Fisher-Yates: the steps in a random order, at random moments.
    for i in (1..steps.len()).rev() {
        steps.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let spacing_ms = (events * 1000 / rate / steps.len() as u64).max(1000);
    let burst = malformed_burst(60);
    for step in &steps {
        std::thread::sleep(Duration::from_millis(spacing_ms / 2 + rng.below(spacing_ms)));
        eprintln!("chaos: {step}");
        match *step {
            "kill" => {
                pulse.kill().unwrap(); // SIGKILL
                pulse.wait().unwrap();
                pulse = case.start_with(&overrides);
            }
            "broker" => {
                signal(&pulse, "-STOP");
                // Long enough for the coordinator to write the markers of a commit in flight.
                std::thread::sleep(Duration::from_secs(1));
                kafka_script("stop");
                std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
                kafka_script("start");
                // Every partition led again before Pulse commits.
                std::thread::sleep(Duration::from_secs(2));
                signal(&pulse, "-CONT");
            }
            _ => {
                let (to_events, to_sunbird) = burst.split_at(burst.len() / 2);
                tools::produce(&brokers(), &case.events, to_events).unwrap();
                tools::produce(&brokers(), &case.sunbird, to_sunbird).unwrap();
            }
        }
    }
    let out = loadgen.wait_with_output().unwrap();
    assert!(out.status.success(), "the load generator failed: {}", String::from_utf8_lossy(&out.stderr));
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_loadgen();

    assert_dead_letters_exactly_once(&case, burst);
    eprintln!("chaos: passed");
}

/// The state directory on a disk that fills up under a running Pulse: it
/// stops applying, says so (log, metric, readiness), moves no offset, keeps
/// running, and once space is freed resumes; nothing lost, nothing twice.
#[test]
fn a_full_disk_stops_ingestion_moves_no_offset_and_resumes_once_space_is_freed() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let disk = tmpfs::Tmpfs::mount(48);
    let mut case = Case::new(2);
    let (orgs, events) = history(15, 20_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 4);
    case.produce_events(first);
    case.data = disk.path().join("data");
    let overrides = [
        ("PULSE_STORE__DATA_DIR", case.data.display().to_string()),
        ("PULSE_STORE__MEMORY_BUDGET_MIB", "16".to_owned()),
    ];
    let mut pulse = case.start_with(&overrides);
    case.wait_caught_up(&mut pulse);
    let filler = disk.fill();
    case.produce_events(second);
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let (status, body) = http_get(&case.http, "/readyz").unwrap();
        if status == 503 && body.contains("refused a commit") {
            break body;
        }
        assert!(Instant::now() < deadline, "not reported within 60s: {status} {body}\n{}", case.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(reason.contains("No space left on device"), "{reason}");
    let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
    assert!(metrics.contains("pulse_store_stalled 1\n"), "{metrics}");
    assert!(case.log().contains("the store or the brokers refused a write"), "{}", case.log());
    // Stalled: the committed offsets stay where the persisted state is.
    let committed = tools::committed_offsets(&brokers(), &case.group, &case.events).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tools::committed_offsets(&brokers(), &case.group, &case.events).unwrap(), committed);
    let high = tools::high_watermarks(&brokers(), &case.events).unwrap();
    assert!(committed.iter().any(|(p, c)| *c < high[p]), "the stall happened before the end");
    assert!(pulse.try_wait().unwrap().is_none(), "pulse keeps running on a full disk");
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    case.wait_caught_up(&mut pulse);
    wait_for_ok(&case.http, "/readyz", Duration::from_secs(60));
    eprintln!("disk full: caught up and ready {:?} after space was freed", freed.elapsed());
    let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
    assert!(metrics.contains("pulse_store_stalled 0\n"));
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

/// An input topic deleted under a running Pulse: it keeps running and
/// serving, says which topic (readiness, metric, log), and goes on with the
/// other topics; what it applied before stays.
#[test]
fn an_input_topic_deleted_under_a_running_pulse_is_reported_and_the_rest_goes_on() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(16, 4_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let mut pulse = case.start();
    case.wait_caught_up(&mut pulse);
    tools::delete_topic(&brokers(), &case.sunbird).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(&case.http, "/readyz").unwrap();
        if status == 503 && body.contains(&format!("input topic `{}` does not exist", case.sunbird)) {
            break;
        }
        assert!(Instant::now() < deadline, "not reported within 60s: {status} {body}\n{}", case.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
    assert!(metrics.contains(&format!("pulse_kafka_input_topic_missing{{topic=\"{}\"}} 1", case.sunbird)));
    case.produce_events(second);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tools::committed_offsets(&brokers(), &case.group, &case.events).unwrap().values().sum::<i64>()
        < tools::high_watermarks(&brokers(), &case.events).unwrap().values().sum::<i64>()
    {
        assert!(Instant::now() < deadline, "the other topic stopped too:\n{}", case.log());
        assert!(pulse.try_wait().unwrap().is_none(), "pulse exited:\n{}", case.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

/// The load generator and test producers stand in for the platform's Java
/// producers (librdkafka's `murmur2_random` is documented as Java's
/// partitioner), and Pulse places a user's state by the same function: a
/// keyed message lands on the partition whose owner holds its user.
#[test]
fn keyed_messages_land_where_the_platforms_java_producers_put_them() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let topic = format!("test.partitioner.{}-{}", std::process::id(), rand_suffix());
    tools::create_topic(&brokers(), &topic, 7, false).unwrap();
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("u-{}", i * 7919).into_bytes()).chain([Vec::new()]).collect();
    let messages: Vec<Kv> = keys.iter().map(|k| (Some(k.clone()), Some(b"x".to_vec()))).collect();
    tools::produce(&brokers(), &topic, &messages).unwrap();
    let records = tools::read_all(&brokers(), &topic).unwrap();
    assert_eq!(records.len(), keys.len());
    for r in &records {
        let key = r.key.clone().unwrap_or_default();
        let placed = pulse_model::partition_of(&key, 7) as i32;
        assert_eq!(r.partition, placed, "key {:?}", String::from_utf8_lossy(&key));
    }
}

/// One `pulse run` of a group of several: its own state directory and HTTP port.
struct Instance {
    name: &'static str,
    data: PathBuf,
    http: String,
    child: Option<Child>,
}

impl Instance {
    fn new(case: &Case, name: &'static str) -> Instance {
        let data = case.dir.path().join(format!("data-{name}"));
        Instance { name, data, http: format!("127.0.0.1:{}", free_port()), child: None }
    }

    fn start(&mut self, case: &Case) {
        self.start_with(case, &[]);
    }

    fn start_with(&mut self, case: &Case, extra: &[(&str, String)]) {
        let own = [
            ("PULSE_STORE__DATA_DIR", self.data.display().to_string()),
            ("PULSE_HTTP__LISTEN", self.http.clone()),
            ("PULSE_HTTP__TOKEN", "scale-out".to_owned()),
        ];
        self.child = Some(case.start_with(&[own.as_slice(), extra].concat()));
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// The partitions of `topic` this instance consumes, from its /metrics.
    fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let (_, metrics) = http_get(&self.http, "/metrics").map_err(|e| format!("{}: {e}", self.name))?;
        let label = format!("topic=\"{topic}\"");
        let partition = |line: &str| line.split("partition=\"").nth(1)?.split('"').next()?.parse().ok();
        Ok(metrics
            .lines()
            .filter(|l| l.starts_with("pulse_kafka_partition_next_offset{") && l.contains(&label))
            .filter_map(partition)
            .collect())
    }
}

/// A failed test must not leave its instances running.
impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A GET with the user endpoints' token: status, `Location`, body.
fn get_user(addr: &str, user: &str) -> (u16, Option<String>, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request =
        format!("GET /api/v1/users/{user} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer scale-out\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let location = head.lines().find_map(|l| l.strip_prefix("location: ").map(str::to_owned));
    (status, location, body.to_owned())
}

/// The KPIs that are sums over users: each instance exports the share of
/// the users it owns, so these add up across instances.
/// The report without its windows: the model answers at `NOW`, a running
/// instance's API at the wall clock.
fn without_windows(kpis: &Value) -> Value {
    let kept = kpis.as_object().unwrap().iter().filter(|(k, _)| !["_1d", "_7d", "_30d"].iter().any(|w| k.ends_with(w)));
    Value::Object(kept.map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// One check of a settled group: every instance ready; each partition
/// consumed by exactly one instance; the group caught up; and every
/// instance's API answers the whole group's KPIs (cluster-wide reads): every
/// node, course and provider equals the reference model's.
fn scale_out_check(case: &Case, instances: &[&Instance], partitions: i32) -> Result<(), String> {
    for i in instances {
        let (status, body) = http_get(&i.http, "/readyz").map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{} not ready: {body}", i.name));
        }
    }
    let mut owners: BTreeMap<i32, &str> = BTreeMap::new();
    for i in instances {
        for p in i.partitions(&case.events)? {
            if let Some(other) = owners.insert(p, i.name) {
                return Err(format!("partition {p} is consumed by {other} and {}", i.name));
            }
        }
    }
    if owners.len() != partitions as usize {
        return Err(format!("not every partition is owned: {owners:?}"));
    }
    let behind = case.behind();
    if !behind.is_empty() {
        return Err(format!("not caught up on {behind:?}"));
    }
    let model = case.model();
    for i in instances {
        let get = |path: &str| -> Result<Value, String> {
            let (status, body) = http_get(&i.http, path).map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{}: {path}: {status} {body}", i.name));
            }
            Ok(serde_json::from_str(&body).unwrap())
        };
        for (node, expected) in model["nodes"].as_object().unwrap() {
            let report = get(&format!("/api/v1/nodes/{}?fy=2025-26", url_encode(node)))?;
            if let Some(d) = json_diff(&without_windows(&report["nodes"][node]), &without_windows(expected)) {
                return Err(format!("{}: node {node}: {d}", i.name));
            }
        }
        let providers = get("/api/v1/providers?fy=2025-26")?;
        if let Some(d) = json_diff(&providers["providers"], &model["providers"]) {
            return Err(format!("{}: providers: {d}", i.name));
        }
        for (course, expected) in model["courses"].as_object().unwrap().iter().take(5) {
            let report = get(&format!("/api/v1/courses/{}?fy=2025-26", url_encode(course)))?;
            if let Some(d) = json_diff(&report["courses"][course], expected) {
                return Err(format!("{}: course {course}: {d}", i.name));
            }
        }
    }
    Ok(())
}

/// Waits (up to 4 minutes: a killed member leaves after the 10 s session
/// timeout, then its partitions are restored elsewhere) until the check passes.
fn scale_out_settles(case: &Case, instances: &mut [&mut Instance], partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        for i in instances.iter_mut() {
            if let Some(status) = i.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{}: {} exited with {status}:\n{}", case.name, i.name, case.log());
            }
        }
        let running: Vec<&Instance> = instances.iter().map(|i| &**i).collect();
        match scale_out_check(case, &running, partitions) {
            Ok(()) => return,
            Err(why) if Instant::now() < deadline => {
                let _ = why;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(why) => panic!("{}: the group did not settle in 240s: {why}\n{}", case.name, case.log()),
        }
    }
}

/// Scale-out: three instances in one group on loopback, against the real
/// broker. One starts; two join; one is killed with `kill -9`; it comes
/// back on its stale state directory; events flow through every step, a
/// third of them keyed by event id (forwarded to their user's partition).
/// After each step settles, the sum over instances of every KPI equals the
/// reference model's and each partition is consumed by exactly one instance.
#[test]
fn three_instances_share_the_partitions_and_each_answers_the_whole_model_through_joins_a_kill_and_a_rejoin() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    const PARTITIONS: i32 = 6;
    let mut case = Case::new(PARTITIONS);
    let (orgs, events) = history(23, 12_000);
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    // A third keyed by event id, as a producer that does not key by user
    // would (a copy keeps its original's key, so the same third).
    let events: Vec<Kv> = events
        .into_iter()
        .map(|(key, value)| {
            let v: Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
            let id = v["id"].as_str().unwrap().as_bytes().to_vec();
            match id.iter().map(|&b| u32::from(b)).sum::<u32>() % 3 {
                0 => (Some(id), value),
                _ => (key, value),
            }
        })
        .collect();
    let chunks: Vec<Vec<Kv>> = events.chunks(events.len() / 4 + 1).map(<[Kv]>::to_vec).collect();
    let flow = |case: &mut Case, chunk: &[Kv]| {
        case.sent.extend(chunk.iter().map(|(_, v)| Message::Event {
            format: InputFormat::PulseV1,
            key: None,
            value: v.clone().unwrap_or_default(),
        }));
        let (topic, chunk) = (case.events.clone(), chunk.to_vec());
        std::thread::spawn(move || tools::produce(&brokers(), &topic, &chunk).unwrap())
    };
    let (mut a, mut b, mut c) = (Instance::new(&case, "a"), Instance::new(&case, "b"), Instance::new(&case, "c"));

    eprintln!("scale-out: one instance");
    let producing = flow(&mut case, &chunks[0]);
    a.start(&case);
    producing.join().unwrap();
    scale_out_settles(&case, &mut [&mut a], PARTITIONS);

    eprintln!("scale-out: two more join");
    let producing = flow(&mut case, &chunks[1]);
    b.start(&case);
    c.start(&case);
    producing.join().unwrap();
    scale_out_settles(&case, &mut [&mut a, &mut b, &mut c], PARTITIONS);
    for i in [&a, &b, &c] {
        assert!(!i.partitions(&case.events).unwrap().is_empty(), "{} got no partition", i.name);
    }
    // A user lookup on an instance that does not own the user's partition
    // is redirected to the owner, which answers it.
    let first: Value = serde_json::from_slice(chunks[0][0].1.as_deref().unwrap()).unwrap();
    let user = first["user"].as_str().unwrap();
    let shard = pulse_model::partition_of(user.as_bytes(), PARTITIONS as u32) as i32;
    let owner = [&a, &b, &c].into_iter().find(|i| i.partitions(&case.events).unwrap().contains(&shard)).unwrap();
    let other = [&a, &b, &c].into_iter().find(|i| i.name != owner.name).unwrap();
    let (status, location, _) = get_user(&other.http, user);
    assert_eq!(
        (status, location.as_deref()),
        (307, Some(format!("http://{}/api/v1/users/{user}", owner.http).as_str()))
    );
    let (status, _, body) = get_user(&owner.http, user);
    assert_eq!(status, 200, "{body}");

    eprintln!("scale-out: kill -9 of one");
    let producing = flow(&mut case, &chunks[2]);
    std::thread::sleep(Duration::from_millis(300));
    b.kill_9();
    producing.join().unwrap();
    scale_out_settles(&case, &mut [&mut a, &mut c], PARTITIONS);

    eprintln!("scale-out: it comes back on its stale state");
    let producing = flow(&mut case, &chunks[3]);
    b.start(&case);
    producing.join().unwrap();
    scale_out_settles(&case, &mut [&mut a, &mut b, &mut c], PARTITIONS);
    let log = case.log();
    assert!(log.contains("restored from the changelog"), "no partition was restored:\n{log}");
    // The page on every instance shows the whole group's national KPIs.
    let national = &case.model()["nodes"]["national"];
    for i in [&a, &b, &c] {
        let dom = page::rendered(&format!("http://{}/?fy=2025-26", i.http));
        assert_eq!(page::attributes(&dom, "data-shown"), ["national"], "{}: the page did not load", i.name);
        let shown: Vec<(String, Value)> =
            page::cells(&dom).into_iter().filter(|(k, _)| k.starts_with("national/")).collect();
        assert!(shown.len() > 10, "{}: {shown:?}", i.name);
        for (key, value) in shown.iter().filter(|(k, _)| !["_1d", "_7d", "_30d"].iter().any(|w| k.ends_with(w))) {
            let kpi = &key["national/".len()..];
            let close = match (value.as_f64(), national[kpi].as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                (a, b) => a == b,
            };
            assert!(close, "{}: the page shows {key} = {value}, the model says {}", i.name, national[kpi]);
        }
    }
    for i in [&mut a, &mut b, &mut c] {
        let mut child = i.child.take().unwrap();
        stop(&mut child, &case);
    }
}

/// Input topics with different partition counts (6, 3 and 1, as a
/// platform's telemetry and rating topics may have): the shards follow the
/// largest; events on the others reach their user's shard through the
/// repartition topic, their offsets committed to the group in the same
/// transactions. Two instances, one killed and restarted: each partition of
/// the largest topic is consumed by exactly one, the group catches up on
/// every topic, and the sums over instances equal the model at every step.
#[test]
fn input_topics_with_different_partition_counts_are_exact_across_instances() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    const SHARDS: i32 = 6;
    let mut case = Case::with_counts([SHARDS, 3, 1]);
    let (orgs, events) = history(53, 9_000);
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    let inputs = format!(
        r#"[{{ topic = "{}", format = "pulse-v1" }}, {{ topic = "{}", format = "pulse-v1" }}, {{ topic = "{}", format = "pulse-v1" }}]"#,
        case.events, case.sunbird, case.ratings
    );
    let topics = [case.events.clone(), case.sunbird.clone(), case.ratings.clone()];
    let flow = |case: &mut Case, chunk: &[Kv]| {
        for (i, topic) in topics.iter().enumerate() {
            let part: Vec<Kv> = chunk.iter().skip(i).step_by(3).cloned().collect();
            tools::produce(&brokers(), topic, &part).unwrap();
        }
        case.sent.extend(chunk.iter().map(|(_, v)| Message::Event {
            format: InputFormat::PulseV1,
            key: None,
            value: v.clone().unwrap(),
        }));
    };
    let chunks: Vec<Vec<Kv>> = events.chunks(events.len() / 3 + 1).map(<[Kv]>::to_vec).collect();
    let overrides = [("PULSE_KAFKA__INPUTS", inputs)];
    let (mut a, mut b) = (Instance::new(&case, "a"), Instance::new(&case, "b"));
    flow(&mut case, &chunks[0]);
    a.start_with(&case, &overrides);
    b.start_with(&case, &overrides);
    scale_out_settles(&case, &mut [&mut a, &mut b], SHARDS);
    b.kill_9();
    flow(&mut case, &chunks[1]);
    scale_out_settles(&case, &mut [&mut a], SHARDS);
    b.start_with(&case, &overrides);
    flow(&mut case, &chunks[2]);
    scale_out_settles(&case, &mut [&mut a, &mut b], SHARDS);
    let log = case.log();
    assert!(log.contains("through the repartition topic"), "the layout was not logged:\n{log}");
    for i in [&mut a, &mut b] {
        let mut child = i.child.take().unwrap();
        stop(&mut child, &case);
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

/// A zombie: an instance paused (SIGSTOP) past its session timeout while
/// events flow. The group gives its partitions to the other, whose take-over
/// fences it. Resumed (SIGCONT), its writes for those partitions are refused,
/// so nothing it held uncommitted counts; it rejoins, and the sums over
/// instances equal the model again.
#[test]
fn a_paused_instance_is_fenced_when_it_resumes_and_nothing_counts_twice() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    const PARTITIONS: i32 = 4;
    let mut case = Case::new(PARTITIONS);
    let (orgs, events) = history(31, 6_000);
    case.produce_orgs(&orgs);
    case.produce_targets(&target_records());
    let chunks: Vec<Vec<Kv>> = events.chunks(events.len() / 3 + 1).map(<[Kv]>::to_vec).collect();
    let (mut a, mut b) = (Instance::new(&case, "a"), Instance::new(&case, "b"));
    case.produce_events(&chunks[0]);
    a.start(&case);
    // Commits seldom, so that it is paused holding applied, uncommitted state.
    b.start_with(&case, &[("PULSE_KAFKA__COMMIT_INTERVAL", "3s".to_owned())]);
    scale_out_settles(&case, &mut [&mut a, &mut b], PARTITIONS);

    // Where `b` stands, committed or not (its positions include what it
    // applied since its last commit).
    let applied = |i: &Instance| -> i64 {
        let (_, metrics) = http_get(&i.http, "/metrics").unwrap();
        let lines = metrics.lines().filter(|l| l.starts_with("pulse_kafka_partition_next_offset{"));
        lines.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>() as i64
    };
    // `b` commits at most every 3 s, and at once when it applies something
    // after 3 s without a commit. So, after 4 s idle, a first part is
    // applied and committed at once; a second part applied before `b`'s
    // next commit can be due (3 s after the first, which the test saw
    // applied no earlier than it was) is held uncommitted when `b` is
    // paused. On a machine too slow for that window, try again.
    let wait_applied = |i: &Instance, since: i64| -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = applied(i);
            if now != since {
                return now;
            }
            assert!(Instant::now() < deadline, "{} applied nothing of what was produced", i.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut parts = chunks[1].chunks(100);
    loop {
        std::thread::sleep(Duration::from_secs(4));
        let before = applied(&b);
        case.produce_events(parts.next().expect("the second chunk ran out before a pause held uncommitted state"));
        let first = wait_applied(&b, before);
        let committed_at_most = Instant::now();
        case.produce_events(parts.next().expect("the second chunk ran out before a pause held uncommitted state"));
        wait_applied(&b, first);
        signal(b.child.as_ref().unwrap(), "-STOP");
        if committed_at_most.elapsed() < Duration::from_millis(2_400) {
            break;
        }
        signal(b.child.as_ref().unwrap(), "-CONT");
    }
    case.produce_events(&parts.flatten().cloned().collect::<Vec<Kv>>());
    // The session timeout is 10 s: then `a` owns every partition.
    scale_out_settles(&case, &mut [&mut a], PARTITIONS);

    signal(b.child.as_ref().unwrap(), "-CONT");
    case.produce_events(&chunks[2]);
    scale_out_settles(&case, &mut [&mut a, &mut b], PARTITIONS);
    // Its writes were refused (fenced): the state it held was dropped.
    let log = case.log();
    let refused = log.lines().filter(|l| l.contains("could not be persisted") || l.contains("refused a write"));
    assert!(refused.count() > 0, "the resumed instance was never refused:\n{log}");
    for i in [&mut a, &mut b] {
        let mut child = i.child.take().unwrap();
        stop(&mut child, &case);
    }
}

/// The directory `scripts/kafka` keeps the broker's data, pid and TLS files in.
fn broker_data() -> PathBuf {
    let cache = std::env::var("PULSE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/pulse"));
    let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    cache.join(format!("kafka-data-{port}"))
}

/// The broker's process, signalled directly (SIGSTOP freezes it: it holds
/// every connection open and answers nothing, as a hung broker does).
fn broker_signal(sig: &str) {
    let pid = std::fs::read_to_string(broker_data().join("kafka.pid")).unwrap();
    assert!(Command::new("kill").args([sig, pid.trim()]).status().unwrap().success());
}

/// A number from a /metrics body.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The broker frozen (SIGSTOP) while Pulse commits in the middle of a
/// catch-up: user lookups and /metrics keep answering at once from the
/// last commit, /readyz turns 503 within `http.ready_max_stall` naming the
/// stuck loop, and what /metrics shows is never ahead of what is persisted.
/// Thawed (SIGCONT), Pulse goes on; nothing lost, nothing twice.
#[test]
fn a_frozen_broker_blocks_no_reader_and_readiness_reports_the_stuck_loop() {
    let _broker = BROKER.write().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(41, 100_000);
    case.produce_orgs(&orgs);
    case.produce_events(&events);
    let overrides = [("PULSE_HTTP__READY_MAX_STALL", "3s".to_owned()), ("PULSE_HTTP__TOKEN", "scale-out".to_owned())];
    let mut pulse = case.start_with(&overrides);
    // Frozen as soon as it has applied something: far from the end, with a
    // commit due every 50 ms.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied = http_get(&case.http, "/metrics").ok().map_or(0.0, |(_, m)| {
            m.lines()
                .filter(|l| l.starts_with("pulse_kafka_partition_next_offset{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        });
        if applied > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing applied in 120s:\n{}", case.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    broker_signal("-STOP");
    let frozen = Instant::now();
    let thaw = scopeguard(|| broker_signal("-CONT"));
    let user = match &events[0].0 {
        Some(k) => String::from_utf8(k.clone()).unwrap(),
        None => panic!("history keys events by user"),
    };
    let mut slowest = Duration::ZERO;
    let reason = loop {
        let asked = Instant::now();
        let (status, _, body) = get_user(&case.http, &user);
        slowest = slowest.max(asked.elapsed());
        assert!(matches!(status, 200 | 404 | 503), "user lookup while frozen: {status} {body}");
        let (status, body) = http_get(&case.http, "/readyz").unwrap();
        if status == 503 && body.contains("no progress") {
            break body;
        }
        assert!(frozen.elapsed() < Duration::from_secs(8), "/readyz did not report the stuck loop: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(slowest < Duration::from_millis(200), "a user lookup took {slowest:?} while the broker was frozen");
    eprintln!("frozen broker: not ready after {:?} ({reason}); slowest lookup {slowest:?}", frozen.elapsed());
    // What is shown is persisted: the committed state (read-only, beside
    // the running Pulse) counts at least as many enrolments.
    let (_, metrics) = http_get(&case.http, "/metrics").unwrap();
    let shown = sample(&metrics, "pulse_kpi_enrolments{org=\"national\"}").unwrap_or(0.0);
    let committed = case.report()["nodes"]["national"]["enrolments"].as_f64().unwrap_or(0.0);
    assert!(shown <= committed, "/metrics shows {shown} enrolments, the store holds {committed}");
    drop(thaw);
    case.wait_caught_up(&mut pulse);
    wait_for_ok(&case.http, "/readyz", Duration::from_secs(60));
    stop(&mut pulse, &case);
    case.assert_equals_model();
}

/// Runs `f` when dropped, so that a failed assertion still thaws the broker.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// A broker restart that lands while a new instance takes its partitions
/// over (fencing the previous owner, restoring from the changelog into an
/// empty state directory): the take-over fails or waits, Pulse does not
/// exit, and once the broker is back it takes over again and catches up;
/// the state it restored and built equals the reference model.
#[test]
fn a_broker_restart_during_a_take_over_is_waited_out() {
    let _broker = BROKER.write().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(4);
    let (orgs, events) = history(43, 40_000);
    case.produce_orgs(&orgs);
    let (first, second) = events.split_at(events.len() / 2);
    case.produce_events(first);
    let mut a = Instance::new(&case, "a");
    a.start(&case);
    scale_out_settles(&case, &mut [&mut a], 4);
    let mut child = a.child.take().unwrap();
    stop(&mut child, &case);
    case.produce_events(second);
    // A new instance with no local state: it restores every partition.
    let mut b = Instance::new(&case, "b");
    let log_before = case.log().len();
    b.start(&case);
    case.wait_assigned(log_before);
    kafka_script("stop");
    std::thread::sleep(Duration::from_secs(2));
    kafka_script("start");
    let status = b.child.as_mut().unwrap().try_wait().unwrap();
    assert!(status.is_none(), "pulse exited ({status:?}) when the broker restarted in its take-over:\n{}", case.log());
    scale_out_settles(&case, &mut [&mut b], 4);
    let mut child = b.child.take().unwrap();
    stop(&mut child, &case);
    case.data.clone_from(&b.data);
    case.assert_equals_model();
}

/// Pulse as it connects to a production cluster: SASL_SSL (SCRAM-SHA-512,
/// the broker's certificate checked against the CA `scripts/kafka` made),
/// reading an input topic whose producer compresses with zstd. It consumes,
/// creates its own topics, commits its changelog and group offsets through
/// that listener, and the state equals the reference model.
#[test]
fn sasl_ssl_with_scram_and_a_zstd_input_topic_equal_the_model() {
    let _broker = BROKER.read().unwrap_or_else(|p| p.into_inner());
    let mut case = Case::new(2);
    let (orgs, events) = history(47, 4_000);
    case.produce_orgs(&orgs);
    tools::produce_compressed(&brokers(), &case.events, &events, "zstd").unwrap();
    case.sent.extend(events.iter().map(|(_, v)| Message::Event {
        format: InputFormat::PulseV1,
        key: None,
        value: v.clone().unwrap(),
    }));
    let port: u16 = std::env::var("KAFKA_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9092);
    let sasl_ssl = std::env::var("KAFKA_SASL_SSL_PORT").unwrap_or_else(|_| (port + 2).to_string());
    let options = format!(
        "\n[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"pulse\"\n\"sasl.password\" = \"pulse-secret\"\n\"ssl.ca.location\" = \"{}\"\n",
        broker_data().join("tls/ca.pem").display()
    );
    let mut config = std::fs::read_to_string(&case.config).unwrap();
    config.push_str(&options);
    std::fs::write(&case.config, config).unwrap();
    let mut pulse = case.start_with(&[("PULSE_KAFKA__BROKERS", format!("127.0.0.1:{sasl_ssl}"))]);
    case.wait_caught_up(&mut pulse);
    stop(&mut pulse, &case);
    case.assert_equals_model();
}
