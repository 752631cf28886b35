//! `pulse run` configuration: a TOML file, `PULSE_` environment overrides,
//! and a `validate` step that turns it into checked settings or names the bad key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The file as written. Every section and key is optional; defaults are
/// documented on each field and in `deploy/pulse.example.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub kafka: RawKafka,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub http: RawHttp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap servers (default `127.0.0.1:9092`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group of the input topics (default `pulse`).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Input topics with their formats (default one `pulse.telemetry` in `pulse-v1`).
    #[serde(default = "default_inputs")]
    pub inputs: Vec<RawInput>,
    #[serde(default = "default_orgs_topic")]
    pub orgs_topic: String,
    #[serde(default = "default_targets_topic")]
    pub targets_topic: String,
    #[serde(default = "default_courses_topic")]
    pub courses_topic: String,
    #[serde(default = "default_plans_topic")]
    pub plans_topic: String,
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Compacted topic of every partition's state changes, from which an
    /// instance restores the partitions it is given (default
    /// `<group_id>.changelog`; created with the inputs' partition count).
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Topic of valid events that arrived on a partition other than their
    /// user's, keyed by user (default `<group_id>.repartition`; created too).
    #[serde(default)]
    pub repartition_topic: Option<String>,
    /// Kafka group session timeout (default `45s`).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: String,
    /// `max.poll.interval.ms`: the group drops a member that does not poll
    /// for this long (default `300s`). Must exceed the longest wait on the
    /// brokers between two polls (a commit's drain: 150s).
    #[serde(default = "default_max_poll_interval")]
    pub max_poll_interval: String,
    /// Longest time between commits of state and offsets (default `100ms`).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    /// Messages after which a commit happens sooner (default 20000).
    #[serde(default = "default_commit_messages")]
    pub commit_messages: usize,
    /// Static group membership (`group.instance.id`): a restarted instance
    /// gets its partitions back at once instead of after `session_timeout`.
    /// Unique per instance (e.g. the host name); unset by default.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Raw librdkafka settings passed through (e.g. `security.protocol`, `sasl.*`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub topic: String,
    pub format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// State directory (default `./data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The memory Pulse may use beside a fixed overhead, in MiB (default
    /// 256): RocksDB's cache and memtables, librdkafka's queues, and the
    /// users applied and not yet committed (`crate::memory`).
    #[serde(default = "default_memory_budget_mib")]
    pub memory_budget_mib: usize,
    /// Shards: the unit of state that moves between instances, one
    /// partition of the changelog and repartition topics each (default: the
    /// largest partition count of the input topics; it must be at least
    /// that). Events on a partition of a topic with another count reach
    /// their user's shard through the repartition topic.
    #[serde(default)]
    pub shards: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// How long event ids are remembered, in event time (default `7d`).
    #[serde(default = "default_dedup_horizon")]
    pub dedup_horizon: String,
    /// Events older than this are dead letters, `too_old` (default `400d`).
    #[serde(default = "default_max_age")]
    pub max_age: String,
    /// Learning minutes a user needs in a year for `users_meeting_hours_fy` (default 240).
    #[serde(default = "default_meeting_minutes")]
    pub meeting_minutes: u32,
    /// Users re-evaluated per commit after a plan or registry change
    /// (default 20000): bounds how long a commit holds the loop.
    #[serde(default = "default_plan_slice_users")]
    pub plan_slice_users: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address of `/metrics`, health and the API (default `127.0.0.1:9464`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address other instances send a user lookup to, when this one owns
    /// the user's partition (default: `listen`; set it when `listen` is
    /// 0.0.0.0 or behind a NAT).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Bearer token of the user endpoints (`/api/v1/users/..`); unset turns
    /// them off. Prefer the `PULSE_HTTP__TOKEN` environment variable.
    #[serde(default)]
    pub token: Option<String>,
    /// `/readyz` answers ready once every assigned partition is at most this
    /// many messages behind its end (default 1000).
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: i64,
    /// `/readyz` answers not ready while the consumer loop has not gone
    /// round for longer than this: it waits on brokers that do not answer
    /// (default `30s`).
    #[serde(default = "default_ready_max_stall")]
    pub ready_max_stall: String,
    /// Per-course families on `/metrics` (one series per course and KPI;
    /// default false, for cardinality).
    #[serde(default)]
    pub course_metrics: bool,
    /// The `_fy` families on `/metrics` cover this many of the latest
    /// financial years with data (default 2: this year and the last).
    #[serde(default = "default_metrics_fys")]
    pub metrics_fys: usize,
}

fn default_metrics_fys() -> usize {
    2
}
fn default_ready_max_lag() -> i64 {
    1000
}
fn default_ready_max_stall() -> String {
    "30s".into()
}
fn default_max_poll_interval() -> String {
    "300s".into()
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "pulse".into()
}
/// The contract's topics (section 1): events, and the user service's profiles.
fn default_inputs() -> Vec<RawInput> {
    vec![
        RawInput { topic: "pulse.telemetry".into(), format: "pulse-v1".into() },
        RawInput { topic: "pulse.users".into(), format: "user-profile".into() },
    ]
}
fn default_orgs_topic() -> String {
    "pulse.orgs".into()
}
fn default_targets_topic() -> String {
    "pulse.targets".into()
}
fn default_courses_topic() -> String {
    "pulse.courses".into()
}
fn default_plans_topic() -> String {
    "pulse.plans".into()
}
fn default_dlq_topic() -> String {
    "pulse.dlq".into()
}
fn default_session_timeout() -> String {
    "45s".into()
}
fn default_commit_interval() -> String {
    "100ms".into()
}
fn default_commit_messages() -> usize {
    20_000
}
fn default_data_dir() -> PathBuf {
    "./data".into()
}
fn default_memory_budget_mib() -> usize {
    crate::memory::DEFAULT_MIB
}
fn default_dedup_horizon() -> String {
    "7d".into()
}
fn default_max_age() -> String {
    "400d".into()
}
fn default_meeting_minutes() -> u32 {
    240
}
fn default_plan_slice_users() -> usize {
    pulse_engine::EngineConfig::default().plan_slice_users
}
fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for RawKafka {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}
impl Default for RawStore {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}
impl Default for RawEngine {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}
impl Default for RawHttp {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// Checked settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub kafka: pulse_kafka::Settings,
    pub data_dir: PathBuf,
    pub memory: crate::memory::Budget,
    pub dedup_horizon: Duration,
    pub max_age: Duration,
    pub meeting_minutes: u32,
    pub plan_slice_users: usize,
    pub http: HttpSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub ready_max_lag: i64,
    pub ready_max_stall: Duration,
    pub exposition: pulse_http::Exposition,
}

fn duration(key: &str, value: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(value)
        .with_context(|| format!("`{key}` = \"{value}\" is not a duration like \"100ms\", \"45s\" or \"7d\""))
}

fn non_empty<'a>(key: &str, value: &'a str) -> anyhow::Result<&'a str> {
    if value.trim().is_empty() {
        bail!("`{key}` is empty");
    }
    Ok(value)
}

impl RawConfig {
    /// Reads a TOML file (an empty file means every default) and applies
    /// `PULSE_SECTION__KEY=value` environment overrides.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<RawConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("failed to read config {}", path.display()))?;
        RawConfig::parse(&text, env).with_context(|| format!("bad config {}", path.display()))
    }

    pub fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<RawConfig> {
        let mut doc: toml::Table = toml::from_str(text)?;
        for (name, value) in env {
            // Only `PULSE_SECTION__KEY`: other PULSE_ variables are not config.
            let Some(path) = name.strip_prefix("PULSE_").filter(|p| p.contains("__")) else { continue };
            let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            // A value that parses as TOML (a number, a list) keeps its type; anything else is a string.
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let mut table = &mut doc;
            for key in &keys[..keys.len() - 1] {
                table = table
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("{name}: `{key}` is not a section"))?;
            }
            table.insert(keys[keys.len() - 1].clone(), parsed);
        }
        Ok(doc.try_into()?)
    }

    /// Checks every value, naming the key of the first bad one.
    pub fn validate(self) -> anyhow::Result<Config> {
        let k = self.kafka;
        if k.inputs.is_empty() {
            bail!("`kafka.inputs` is empty: list at least one {{ topic, format }}");
        }
        let mut inputs = Vec::new();
        for (i, input) in k.inputs.iter().enumerate() {
            let topic = non_empty(&format!("kafka.inputs[{i}].topic"), &input.topic)?.to_owned();
            let format = input.format.parse().with_context(|| format!("`kafka.inputs[{i}].format`"))?;
            inputs.push((topic, format));
        }
        let session_timeout = duration("kafka.session_timeout", &k.session_timeout)?;
        let commit_interval = duration("kafka.commit_interval", &k.commit_interval)?;
        // A revocation flushes and persists inside the rebalance; the group
        // must not give up on the member meanwhile.
        if commit_interval * 3 > session_timeout {
            bail!(
                "`kafka.commit_interval` ({}) must be under a third of `kafka.session_timeout` ({}), so a revocation's flush finishes in time",
                k.commit_interval,
                k.session_timeout
            );
        }
        let max_poll_interval = duration("kafka.max_poll_interval", &k.max_poll_interval)?;
        // The loop polls between commits only: a commit that waits on the
        // brokers must end before the group drops the member.
        if max_poll_interval <= pulse_kafka::LONGEST_DRAIN + commit_interval {
            bail!(
                "`kafka.max_poll_interval` ({}) must exceed the longest wait of a commit on the brokers ({}s) plus `kafka.commit_interval`",
                k.max_poll_interval,
                pulse_kafka::LONGEST_DRAIN.as_secs()
            );
        }
        if k.commit_messages == 0 {
            bail!("`kafka.commit_messages` must be at least 1");
        }
        let s = self.store;
        if s.shards == Some(0) {
            bail!("`store.shards` must be at least 1");
        }
        if s.memory_budget_mib < crate::memory::MIN_MIB {
            bail!("`store.memory_budget_mib` must be at least {}", crate::memory::MIN_MIB);
        }
        let memory = crate::memory::Budget::of_mib(s.memory_budget_mib);
        let e = self.engine;
        if e.meeting_minutes == 0 {
            bail!("`engine.meeting_minutes` must be at least 1");
        }
        if e.plan_slice_users == 0 {
            bail!("`engine.plan_slice_users` must be at least 1 (users re-evaluated per commit after a plan change)");
        }
        let h = self.http;
        let listen: SocketAddr = h
            .listen
            .parse()
            .with_context(|| format!("`http.listen` = \"{}\" is not an address like 127.0.0.1:9464", h.listen))?;
        let advertise = match h.advertise {
            Some(a) => non_empty("http.advertise", &a)?.to_owned(),
            None => listen.to_string(),
        };
        let group_id = non_empty("kafka.group_id", &k.group_id)?.to_owned();
        let internal = |key: &str, topic: Option<String>, suffix: &str| match topic {
            Some(t) => non_empty(key, &t).map(str::to_owned),
            None => Ok(format!("{group_id}.{suffix}")),
        };
        let changelog_topic = internal("kafka.changelog_topic", k.changelog_topic, "changelog")?;
        let repartition_topic = internal("kafka.repartition_topic", k.repartition_topic, "repartition")?;
        if h.ready_max_lag < 0 {
            bail!("`http.ready_max_lag` must not be negative");
        }
        if h.metrics_fys == 0 {
            bail!("`http.metrics_fys` must be at least 1");
        }
        Ok(Config {
            kafka: pulse_kafka::Settings {
                brokers: non_empty("kafka.brokers", &k.brokers)?.to_owned(),
                group_id,
                inputs,
                orgs_topic: non_empty("kafka.orgs_topic", &k.orgs_topic)?.to_owned(),
                targets_topic: non_empty("kafka.targets_topic", &k.targets_topic)?.to_owned(),
                courses_topic: non_empty("kafka.courses_topic", &k.courses_topic)?.to_owned(),
                plans_topic: non_empty("kafka.plans_topic", &k.plans_topic)?.to_owned(),
                dlq_topic: non_empty("kafka.dlq_topic", &k.dlq_topic)?.to_owned(),
                changelog_topic,
                repartition_topic,
                advertise,
                session_timeout,
                max_poll_interval,
                commit_interval,
                commit_messages: k.commit_messages,
                instance_id: match k.instance_id {
                    Some(id) => Some(non_empty("kafka.instance_id", &id)?.to_owned()),
                    None => None,
                },
                options: k.options,
                shards: s.shards,
                memory: memory.loop_memory,
            },
            data_dir: s.data_dir,
            memory,
            dedup_horizon: duration("engine.dedup_horizon", &e.dedup_horizon)?,
            max_age: duration("engine.max_age", &e.max_age)?,
            meeting_minutes: e.meeting_minutes,
            plan_slice_users: e.plan_slice_users,
            http: HttpSettings {
                listen,
                token: match h.token {
                    Some(t) if t.trim().is_empty() => bail!("`http.token` is empty: remove it or set a secret"),
                    t => t,
                },
                ready_max_lag: h.ready_max_lag,
                ready_max_stall: duration("http.ready_max_stall", &h.ready_max_stall)?,
                exposition: pulse_http::Exposition { fys: h.metrics_fys, courses: h.course_metrics },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use pulse_model::InputFormat;

    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        RawConfig::parse(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?.validate()
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(
            c.kafka.inputs,
            [
                ("pulse.telemetry".to_owned(), InputFormat::PulseV1),
                ("pulse.users".to_owned(), InputFormat::UserProfile)
            ]
        );
        assert_eq!(c.kafka.commit_interval, Duration::from_millis(100));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.dedup_horizon, Duration::from_secs(7 * 86_400));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.http.token, None);
        assert_eq!(c.http.ready_max_lag, 1000);
        assert_eq!(c.http.exposition, pulse_http::Exposition { fys: 2, courses: false });
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pulse.example.toml");
        let example = RawConfig::load(&path, []).unwrap().validate().unwrap();
        assert_eq!(example, parse("", &[]).unwrap());
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
            [kafka]
            brokers = "127.0.0.1:9092"
            group_id = "pulse"
            inputs = [{ topic = "pulse.telemetry", format = "pulse-v1" }, { topic = "sb", format = "sunbird-telemetry" }]
            orgs_topic = "pulse.orgs"
            targets_topic = "pulse.targets"
            dlq_topic = "pulse.dlq"
            [kafka.options]
            "security.protocol" = "SASL_SSL"
            [store]
            data_dir = "./data"
            [http]
            listen = "127.0.0.1:9464"
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(c.kafka.inputs[1], ("sb".to_owned(), InputFormat::SunbirdTelemetry));
        assert_eq!(c.kafka.options["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = |text: &str, env: &[(&str, &str)]| format!("{:#}", parse(text, env).unwrap_err());
        assert!(err("[kafka]\nbrokerz = \"x\"", &[]).contains("brokerz"));
        assert!(err("[store]\nshards = 0", &[]).contains("store.shards"));
        assert!(err("[kafka]\ncommit_interval = \"soon\"", &[]).contains("kafka.commit_interval"));
        assert!(err("[kafka]\ncommit_interval = \"20s\"", &[]).contains("kafka.session_timeout"));
        assert!(err("[kafka]\nmax_poll_interval = \"60s\"", &[]).contains("kafka.max_poll_interval"));
        assert!(err("[http]\nready_max_stall = \"never\"", &[]).contains("http.ready_max_stall"));
        assert!(err("[kafka]\ninputs = [{ topic = \"t\", format = \"csv\" }]", &[]).contains("kafka.inputs[0].format"));
        assert!(err("", &[("PULSE_KAFKA__NOPE", "1")]).contains("nope"));
        assert!(err("[http]\nlisten = \"here\"", &[]).contains("http.listen"));
        assert!(err("[store]\nmemory_budget_mib = 8", &[]).contains("store.memory_budget_mib"));
        assert!(err("[store]\nblock_cache_mib = 64", &[]).contains("block_cache_mib"), "a key of before the budget");
    }

    #[test]
    fn the_memory_budget_reaches_the_store_and_the_loop() {
        let c = parse("[store]\nmemory_budget_mib = 512", &[]).unwrap();
        assert_eq!(c.memory, crate::memory::Budget::of_mib(512));
        assert_eq!(c.kafka.memory, c.memory.loop_memory);
        assert_eq!(parse("", &[]).unwrap().memory, crate::memory::Budget::default());
    }

    #[test]
    fn environment_overrides_win() {
        let c = parse(
            "[kafka]\nbrokers = \"a:1\"",
            // PULSE_ variables without SECTION__KEY (a bench's, a script's) are not config.
            &[("PULSE_KAFKA__BROKERS", "b:2"), ("PULSE_STORE__SHARDS", "4"), ("HOME", "/root"), ("PULSE_BENCH", "x")],
        )
        .unwrap();
        assert_eq!((c.kafka.brokers.as_str(), c.kafka.shards), ("b:2", Some(4)));
    }
}
