//! The reader of an operator's replay: a consumer of its own with assigned partitions, not a
//! member of any group and committing nothing, that reads a fixed range of offsets of a route's
//! topics. The route's own consumer and its committed offsets are untouched: live traffic goes
//! on while the range is read again.
//!
//! Blocking (librdkafka); run it on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{position_of, Record, TopicPartition};
use crate::config::{Config, RouteConfig};

const TIMEOUT: Duration = Duration::from_secs(10);
/// A replay whose reader gets nothing for this long while records are due has failed.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A time bound needs a record's timestamp, and the record could not be read in time.
    #[error("cannot read {topic}/{partition} at offset {offset} to find a time")]
    Unreadable { topic: String, partition: i32, offset: i64 },
    #[error("a replay starts at a time or at offsets, not at the end")]
    StartsAtEnd,
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("{topic}/{partition} is not a partition of the route's topics {topics:?}")]
    NotAPartition { topic: String, partition: i32, topics: Vec<String> },
    /// The reader got nothing for [`STALL`] while records were due.
    #[error("no record arrived for {stall:?}; {unfinished} partition(s) unfinished")]
    Stalled { stall: Duration, unfinished: usize },
}

/// Where a replay starts or ends.
#[derive(Debug, Clone)]
pub enum Bound {
    /// The first record at or after this time (Unix ms), per partition.
    Time(i64),
    /// These offsets, per (topic, partition); partitions left out: see [`resolve`].
    Offsets(BTreeMap<(String, i32), i64>),
    /// The end of each partition when the replay starts (for `to` only).
    Latest,
}

/// One partition's share of a replay: offsets `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub tp: TopicPartition,
    pub start: i64,
    pub end: i64,
}

fn consumer(config: &Config, route: &RouteConfig) -> Result<BaseConsumer, KafkaError> {
    // A group id librdkafka wants; the reader never joins it nor commits.
    let group = format!("{}.replay", route.group(&config.kafka));
    super::reader(config, &group, &format!("fanout-gateway.{}.replay", route.name))
}

/// The offsets `bound` names for each of `partitions`: a time is looked up in Kafka (a
/// partition with nothing at or after it yields its end), offsets are taken as given.
fn offsets_of(
    consumer: &BaseConsumer,
    partitions: &[(String, i32, i64, i64)],
    bound: &Bound,
) -> Result<HashMap<(String, i32), i64>, ReplayError> {
    match bound {
        Bound::Latest => Ok(partitions.iter().map(|(t, p, _, high)| ((t.clone(), *p), *high)).collect()),
        Bound::Offsets(given) => Ok(given.iter().map(|(k, v)| (k.clone(), *v)).collect()),
        Bound::Time(ms) => {
            let mut tpl = TopicPartitionList::new();
            for (t, p, _, _) in partitions {
                tpl.add_partition_offset(t, *p, Offset::Offset(*ms))?;
            }
            let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
            let mut out = HashMap::new();
            for (t, p, low, high) in partitions {
                let at = found.find_partition(t, *p).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                let at = match at {
                    Some(o) => o,
                    // "Nothing at or after that time", unless the partition's last record says
                    // otherwise: a broker that cannot look offsets up by time (librdkafka's
                    // mock cluster) answers so too. Then the records' own timestamps decide.
                    None if low < high
                        && timestamp_at(consumer, t, *p, high - 1, *high)?.is_some_and(|last| last >= *ms) =>
                    {
                        first_at_or_after(consumer, t, *p, *low, *high, *ms)?
                    }
                    None => *high,
                };
                out.insert((t.clone(), *p), at);
            }
            Ok(out)
        }
    }
}

/// The timestamp of the first record at or after `offset`, read with an assignment of its own;
/// None when there is none below `end`: the offsets up to it hold no record a reader gets
/// (transaction markers, aborted records), which the consumer steps over without a message.
fn timestamp_at(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    end: i64,
) -> Result<Option<i64>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(m) => {
                let m = m?;
                if m.topic() == topic && m.partition() == partition && m.offset() >= offset {
                    return Ok(m.timestamp().to_millis());
                }
            }
            None if position_of(consumer, topic, partition).is_some_and(|at| at >= end) => return Ok(None),
            None => {}
        }
    }
    Err(ReplayError::Unreadable { topic: topic.to_string(), partition, offset })
}

/// The first offset in `low..high` whose record is at or after `ms`, by binary search over the
/// records' timestamps (which grow along a partition as producers write them).
fn first_at_or_after(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    ms: i64,
) -> Result<i64, ReplayError> {
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if timestamp_at(consumer, topic, partition, mid, high)?.is_some_and(|t| t >= ms) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// The ranges a replay of `topics` reads, `from` (inclusive) `to` (exclusive), each clamped
/// to what the partition still holds. With `from` as offsets, only the partitions named are
/// replayed; a `to` as offsets that leaves a partition out reads it to its end. Empty ranges
/// are left out.
pub fn resolve(
    config: &Config,
    route: &RouteConfig,
    topics: &[String],
    from: &Bound,
    to: &Bound,
) -> Result<Vec<Range>, ReplayError> {
    if matches!(from, Bound::Latest) {
        return Err(ReplayError::StartsAtEnd);
    }
    let consumer = consumer(config, route)?;
    let mut partitions = Vec::new();
    for topic in topics {
        let ids = super::partitions_of(&consumer, topic, TIMEOUT)?;
        if ids.is_empty() {
            return Err(ReplayError::NoTopic(topic.clone()));
        }
        for p in ids {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
            partitions.push((topic.clone(), p, low, high));
        }
    }
    if let Bound::Offsets(given) = from {
        if let Some((t, p)) = given.keys().find(|(t, p)| !partitions.iter().any(|(pt, pp, _, _)| pt == t && pp == p)) {
            return Err(ReplayError::NotAPartition { topic: t.clone(), partition: *p, topics: topics.to_vec() });
        }
    }
    let starts = offsets_of(&consumer, &partitions, from)?;
    let ends = offsets_of(&consumer, &partitions, to)?;
    let mut ranges = Vec::new();
    for (topic, p, low, high) in partitions {
        let key = (topic.clone(), p);
        let Some(&start) = starts.get(&key) else { continue };
        let start = start.clamp(low, high);
        let end = ends.get(&key).copied().unwrap_or(high).clamp(start, high);
        if start < end {
            ranges.push(Range { tp: TopicPartition { topic: Arc::from(topic.as_str()), partition: p }, start, end });
        }
    }
    Ok(ranges)
}

/// Reads `ranges` and hands their records to `out` in batches of at most `batch`, in offset
/// order per partition, until every range is read, `cancel` is set or `out` is closed.
pub fn read(
    config: &Config,
    route: &RouteConfig,
    ranges: &[Range],
    batch: usize,
    out: &tokio::sync::mpsc::Sender<Vec<Record>>,
    cancel: &AtomicBool,
) -> Result<(), ReplayError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let consumer = consumer(config, route)?;
    let mut tpl = TopicPartitionList::new();
    let mut open: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    for r in ranges {
        tpl.add_partition_offset(&r.tp.topic, r.tp.partition, Offset::Offset(r.start))?;
        open.insert((r.tp.topic.clone(), r.tp.partition), r.end);
    }
    consumer.assign(&tpl)?;
    let mut pending: Vec<Record> = Vec::with_capacity(batch);
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        if last_progress.elapsed() > STALL {
            return Err(ReplayError::Stalled { stall: STALL, unfinished: open.len() });
        }
        let message = consumer.poll(Duration::from_millis(100));
        let idle = message.is_none();
        if let Some(m) = message {
            let m = m?;
            last_progress = Instant::now();
            let Some((topic, end)) = open
                .iter()
                .find(|((t, p), _)| &**t == m.topic() && *p == m.partition())
                .map(|((t, _), e)| (t.clone(), *e))
            else {
                continue;
            };
            if m.offset() + 1 >= end {
                open.remove(&(topic.clone(), m.partition()));
            }
            if m.offset() < end {
                pending.push(Record {
                    tp: TopicPartition { topic, partition: m.partition() },
                    offset: m.offset(),
                    key: m.key().map(Bytes::copy_from_slice),
                    value: m.payload().map(Bytes::copy_from_slice),
                    headers: m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice))).collect())
                        .unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                });
            }
        }
        if idle {
            // A range whose last offsets are a transaction's marker or aborted records ends
            // with no message: the consumer's position says it was read.
            open.retain(|(t, p), end| position_of(&consumer, t, *p).is_none_or(|at| at < *end));
        }
        let flush = pending.len() >= batch || ((idle || open.is_empty()) && !pending.is_empty());
        if flush && out.blocking_send(std::mem::take(&mut pending)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}
