//! Readers of the compacted registry topics (orgs and targets): every
//! partition, from the beginning, without a consumer group, so every Pulse
//! instance holds the whole registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulse_engine::{Disposition, Engine, IngestStats, ShardId, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::dead_letters::{Letter, Source};
use crate::{client_config, kafka_err, Error, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Orgs,
    Targets,
    Courses,
    Plans,
}

pub(crate) struct RegistryReader {
    consumer: BaseConsumer,
    topics: BTreeMap<String, Kind>,
    partitions: Vec<(String, i32)>,
}

/// How long startup waits for a registry topic's metadata and end.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the broker knows the topic (a deleted one has an error or no partitions).
pub(crate) fn exists(t: &rdkafka::metadata::MetadataTopic) -> bool {
    t.error().is_none() && !t.partitions().is_empty()
}

pub(crate) fn partitions(
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    topic: &str,
) -> Result<Vec<i32>, Error> {
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(kafka_err(format!("failed to read the metadata of topic `{topic}` (is Kafka reachable?)")))?;
    match md.topics().first() {
        Some(t) if exists(t) => Ok(t.partitions().iter().map(|p| p.id()).collect()),
        _ => Err(Error::MissingTopic(topic.to_owned())),
    }
}

impl RegistryReader {
    /// `shards`: a registry partition's dead letters are written with the
    /// shard of its number ([`crate::dead_letters`]), so there may be no more.
    pub(crate) fn new(settings: &Settings, shards: ShardId) -> Result<RegistryReader, Error> {
        let consumer: BaseConsumer = client_config(&settings.brokers, &settings.options)
            // librdkafka wants a group id even for `assign`; this reader never
            // joins the group or commits, so its name only shows in broker logs.
            .set("group.id", format!("{}.registry", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(kafka_err("failed to create the registry reader"))?;
        let topics: BTreeMap<String, Kind> = [
            (settings.orgs_topic.clone(), Kind::Orgs),
            (settings.targets_topic.clone(), Kind::Targets),
            (settings.courses_topic.clone(), Kind::Courses),
            (settings.plans_topic.clone(), Kind::Plans),
        ]
        .into();
        let mut tpl = TopicPartitionList::new();
        let mut all = Vec::new();
        for topic in topics.keys() {
            let numbers = partitions(&consumer, topic)?;
            if numbers.len() > usize::from(shards) {
                return Err(Error::Setup(format!(
                    "the registry topic `{topic}` has {} partitions, more than Pulse's {shards} shards; a registry \
                     topic is compacted and read whole: give it one partition",
                    numbers.len()
                )));
            }
            for p in numbers {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(kafka_err("failed to build an assignment"))?;
                all.push((topic.clone(), p));
            }
        }
        consumer.assign(&tpl).map_err(kafka_err("failed to assign the registry topics"))?;
        Ok(RegistryReader { consumer, topics, partitions: all })
    }

    /// Applies every registry message available now, waiting at most `wait`
    /// for the first one (without holding the engine). Returns how many
    /// were read.
    pub(crate) fn poll<S: Store>(
        &mut self,
        engine: &Mutex<Engine<S>>,
        letters: &Mutex<Vec<Letter>>,
        stats: &mut IngestStats,
        wait: Duration,
    ) -> Result<usize, Error> {
        let mut read = 0;
        let Some(first) = self.consumer.poll(wait) else { return Ok(0) };
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        let mut letters = letters.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Some(first);
        while let Some(result) = next.take() {
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "registry reader");
                    break;
                }
            };
            let (key, value) = (msg.key(), msg.payload());
            let disposition = match self.topics.get(msg.topic()) {
                Some(Kind::Orgs) => Some(engine.apply_org_message(key, value)),
                Some(Kind::Targets) => Some(engine.apply_target_message(key, value)),
                Some(Kind::Courses) => Some(engine.apply_course_message(key, value)),
                Some(Kind::Plans) => Some(engine.apply_plan_message(key, value)),
                None => None,
            };
            if let Some(disposition) = disposition {
                if let Disposition::Dead(why) = &disposition {
                    let source =
                        Source { topic: msg.topic().to_owned(), partition: msg.partition(), offset: msg.offset() };
                    letters.push(Letter::new(key, value, why, source));
                }
                stats.record(&disposition);
                read += 1;
            }
            next = self.consumer.poll(Duration::ZERO);
        }
        Ok(read)
    }

    /// Reads until every partition reached the end it had when this started,
    /// or until `stop` is set (a SIGTERM during a slow read must not wait
    /// out [`REGISTRY_TIMEOUT`]).
    pub(crate) fn catch_up<S: Store>(
        &mut self,
        engine: &Mutex<Engine<S>>,
        letters: &Mutex<Vec<Letter>>,
        stats: &mut IngestStats,
        stop: &AtomicBool,
    ) -> Result<(), Error> {
        let mut ends = Vec::new();
        for (topic, p) in &self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, *p, METADATA_TIMEOUT)
                .map_err(kafka_err(format!("failed to read the end of topic `{topic}`")))?;
            ends.push((topic.clone(), *p, high));
        }
        let deadline = Instant::now() + REGISTRY_TIMEOUT;
        loop {
            // The fetch position moves past compacted gaps, so compare it, not
            // the offsets of the messages read, with each partition's end.
            let position = self.consumer.position().map_err(kafka_err("failed to read the registry position"))?;
            let behind = ends.iter().any(|(topic, p, high)| {
                let at = position.find_partition(topic, *p).and_then(|e| e.offset().to_raw()).unwrap_or(0);
                *high > 0 && at < *high
            });
            if !behind {
                return Ok(());
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped("reading the registry topics"));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "the registry and targets topics could not be read to their end within {}s",
                    REGISTRY_TIMEOUT.as_secs()
                )));
            }
            self.poll(engine, letters, stats, Duration::from_millis(200))?;
        }
    }
}

/// How long reading the registry topics to their end may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(120);
