//! A route's dead-letter topic as an operator sees it: the letters with their origin, attempts
//! and reason (the headers [`crate::dead_letters`] wrote), and redrive back to the origin topic.
//!
//! What was redriven is recorded in Kafka, not in a replica's memory: the route group's
//! `<group>.redrive` commits on the dead-letter topic, a commit point below which every letter
//! was redriven, with the redriven letters above it in the commit metadata (the encoding of
//! [`crate::offsets`]). Any replica asked for a redrive reads that ledger first and refuses a
//! letter it lists, so a letter goes back once. A redrive produces first and records after:
//! a crash in between leaves letters that were produced but not recorded (at-least-once).
//!
//! The calls here block on librdkafka; the control surface runs them on blocking threads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, RouteConfig};
use crate::dead_letters::{
    producer_config, HEADER_ATTEMPTS, HEADER_ORIGIN_OFFSET, HEADER_ORIGIN_PARTITION, HEADER_ORIGIN_TOPIC,
    HEADER_REASON, HEADER_VALUE_OMITTED,
};
use crate::offsets::{decode_acked, encode_acked};

/// Header a redriven record carries: the letter it came from, `<topic>/<partition>/<offset>`.
pub const HEADER_REDRIVEN_FROM: &str = "fanout-redriven-from";
/// Kafka requests here answer within this, or the call fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Letters produced per step of a redrive (each step reports progress).
const STEP: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("route `{0}` has no dead_letter_topic")]
    NoTopic(String),
    #[error("{0}")]
    AlreadyRedriven(String),
    #[error("{0}")]
    NoSuchLetter(String),
    /// A letter written without its value (the dead-letter topic would not take it whole):
    /// redriving it would put an empty record back.
    #[error("{0}")]
    ValueOmitted(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The dead-letter topic is not there: no letter was ever written to it.
    #[error("kafka: topic {0} does not exist (yet): no letter was written")]
    MissingTopic(String),
    #[error("kafka: reading {topic} took longer than {timeout:?}")]
    ReadTimeout { topic: String, timeout: Duration },
    /// A redriven letter was not acknowledged by its origin topic's leader.
    #[error("kafka: redrive produce failed: {0}")]
    Produce(#[source] KafkaError),
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub origin_topic: String,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    pub attempts: u32,
    pub reason: String,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The original value's size when the letter was written without it (the dead-letter
    /// topic would not take it whole).
    pub value_omitted: Option<u64>,
    /// The record's headers other than the gateway's own (`fanout-*`).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub redriven: bool,
}

/// What a dead-letter topic holds.
#[derive(Debug, Clone)]
pub struct Listing {
    pub topic: String,
    pub letters: Vec<Letter>,
    pub total: u64,
    pub redriven: u64,
}

/// Which letters to redrive.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every letter not redriven yet.
    All,
    /// These (partition, offset) letters.
    Letters(Vec<(i32, i64)>),
}

/// The letters of one partition that were redriven: every offset below `base`, and the
/// ranges above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    base: Option<i64>,
    ranges: Vec<(i64, i64)>,
}

impl Ledger {
    /// The ledger a commit (offset and metadata) records.
    pub fn from_commit(offset: Option<i64>, metadata: &str) -> Self {
        Self { base: offset, ranges: offset.map(|o| decode_acked(o, metadata)).unwrap_or_default() }
    }

    pub fn contains(&self, offset: i64) -> bool {
        self.base.is_some_and(|b| offset < b) || self.ranges.iter().any(|&(s, e)| s <= offset && offset <= e)
    }

    /// Redriven letters in `[low, high)`.
    pub fn count_in(&self, low: i64, high: i64) -> u64 {
        let below = self.base.map_or(0, |b| (b.min(high) - low).max(0));
        let above: i64 = self
            .ranges
            .iter()
            .map(|&(s, e)| (e.min(high - 1) - s.max(low).max(self.base.unwrap_or(low)) + 1).max(0))
            .sum();
        (below + above) as u64
    }

    /// The ledger with `offsets` added; letters below `low` (gone from the topic) count as done.
    pub fn with(&self, low: i64, offsets: &[i64]) -> Self {
        let mut ranges: Vec<(i64, i64)> = self.ranges.clone();
        ranges.extend(offsets.iter().map(|&o| (o, o)));
        ranges.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some((_, end)) if s <= *end + 1 => *end = (*end).max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut base = self.base.unwrap_or(low).max(low);
        while let Some(&(s, e)) = merged.first() {
            if s > base {
                break;
            }
            base = base.max(e + 1);
            merged.remove(0);
        }
        Self { base: Some(base), ranges: merged }
    }

    /// The commit that records this ledger.
    pub fn commit_point(&self) -> (i64, String) {
        let base = self.base.unwrap_or(0);
        (base, encode_acked(base, &self.ranges))
    }
}

/// The group whose commits on the dead-letter topic are the route's redrive ledger.
pub fn ledger_group(config: &Config, route: &RouteConfig) -> String {
    format!("{}.redrive", route.group(&config.kafka))
}

fn consumer(config: &Config, route: &RouteConfig) -> Result<BaseConsumer, KafkaError> {
    crate::kafka::reader(config, &ledger_group(config, route), &format!("fanout-gateway.{}.dead-letters", route.name))
}

/// Per partition of the dead-letter topic: (low, high) watermarks and the ledger.
struct Partitions {
    topic: String,
    parts: BTreeMap<i32, (i64, i64, Ledger)>,
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Partitions, DeadLetterError> {
    let ids = crate::kafka::partitions_of(consumer, topic, TIMEOUT)?;
    if ids.is_empty() {
        return Err(DeadLetterError::MissingTopic(topic.to_string()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &ids {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
    let mut parts = BTreeMap::new();
    for p in ids {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        let (offset, metadata) = match committed.find_partition(topic, p) {
            Some(e) => match e.offset() {
                Offset::Offset(o) => (Some(o), e.metadata().to_string()),
                _ => (None, String::new()),
            },
            None => (None, String::new()),
        };
        parts.insert(p, (low, high, Ledger::from_commit(offset, &metadata)));
    }
    Ok(Partitions { topic: topic.to_string(), parts })
}

fn header_text(headers: &[(String, Option<Vec<u8>>)], name: &str) -> Option<String> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_ref())
        .map(|v| String::from_utf8_lossy(v).into())
}

/// Reads the letters at `wanted` offsets per partition (or, with `None`, every offset from the
/// start given up to the partition's end), at most `limit`.
fn read(
    consumer: &BaseConsumer,
    parts: &Partitions,
    from: &BTreeMap<i32, i64>,
    wanted: Option<&BTreeMap<i32, BTreeSet<i64>>>,
    limit: usize,
) -> Result<Vec<Letter>, DeadLetterError> {
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, (_, high, _)) in &parts.parts {
        let Some(&start) = from.get(p) else { continue };
        let end = match wanted.and_then(|w| w.get(p)) {
            Some(set) => set.iter().next_back().map_or(start, |o| o + 1),
            None if wanted.is_some() => continue,
            None => *high,
        };
        if start < end {
            tpl.add_partition_offset(&parts.topic, *p, Offset::Offset(start))?;
            open.insert(*p, end);
        }
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let mut letters = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !open.is_empty() && letters.len() < limit {
        if Instant::now() > deadline {
            return Err(DeadLetterError::ReadTimeout { topic: parts.topic.clone(), timeout: TIMEOUT });
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = message?;
        let p = m.partition();
        let Some(&end) = open.get(&p) else { continue };
        if m.offset() + 1 >= end {
            open.remove(&p);
        }
        if m.offset() >= end || wanted.is_some_and(|w| !w.get(&p).is_some_and(|s| s.contains(&m.offset()))) {
            continue;
        }
        let all: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        let ledger = &parts.parts[&p].2;
        letters.push(Letter {
            partition: p,
            offset: m.offset(),
            origin_topic: header_text(&all, HEADER_ORIGIN_TOPIC).unwrap_or_default(),
            origin_partition: header_text(&all, HEADER_ORIGIN_PARTITION).and_then(|v| v.parse().ok()),
            origin_offset: header_text(&all, HEADER_ORIGIN_OFFSET).and_then(|v| v.parse().ok()),
            attempts: header_text(&all, HEADER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
            reason: header_text(&all, HEADER_REASON).unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            value_omitted: header_text(&all, HEADER_VALUE_OMITTED).and_then(|v| v.parse().ok()),
            headers: all.into_iter().filter(|(k, _)| !k.starts_with("fanout-")).collect(),
            redriven: ledger.contains(m.offset()),
        });
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(letters)
}

fn topic_of(route: &RouteConfig) -> Result<&str, DeadLetterError> {
    route.dead_letter_topic.as_deref().ok_or_else(|| DeadLetterError::NoTopic(route.name.clone()))
}

/// The route's letters not yet behind the ledger's commit point, oldest first per partition,
/// at most `limit`.
pub fn list(config: &Config, route: &RouteConfig, limit: usize) -> Result<Listing, DeadLetterError> {
    let topic = topic_of(route)?;
    let consumer = consumer(config, route)?;
    let parts = partitions(&consumer, topic)?;
    let from: BTreeMap<i32, i64> =
        parts.parts.iter().map(|(p, (low, _, ledger))| (*p, ledger.base.unwrap_or(*low).max(*low))).collect();
    let letters = read(&consumer, &parts, &from, None, limit)?;
    let total = parts.parts.values().map(|(low, high, _)| (high - low).max(0) as u64).sum();
    let redriven = parts.parts.values().map(|(low, high, ledger)| ledger.count_in(*low, *high)).sum();
    Ok(Listing { topic: topic.to_string(), letters, total, redriven })
}

/// Produces the selected letters back to their origin topic and partition, then records them
/// in the ledger. `progress(done, total)` is called as letters are acknowledged by Kafka.
/// Returns how many were redriven.
pub fn redrive(
    config: &Config,
    route: &RouteConfig,
    selection: Selection,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, DeadLetterError> {
    let topic = topic_of(route)?;
    let consumer = consumer(config, route)?;
    let parts = partitions(&consumer, topic)?;
    let letters = match selection {
        Selection::All => {
            let from: BTreeMap<i32, i64> =
                parts.parts.iter().map(|(p, (low, _, ledger))| (*p, ledger.base.unwrap_or(*low).max(*low))).collect();
            let letters: Vec<Letter> =
                read(&consumer, &parts, &from, None, usize::MAX)?.into_iter().filter(|l| !l.redriven).collect();
            if letters.is_empty() {
                let total: i64 = parts.parts.values().map(|(low, high, _)| high - low).sum();
                return Err(DeadLetterError::AlreadyRedriven(format!(
                    "nothing to redrive: the {total} letter(s) in {topic} were redriven already"
                )));
            }
            letters
        }
        Selection::Letters(refs) => {
            let mut wanted: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            let mut done = Vec::new();
            for (p, o) in &refs {
                match parts.parts.get(p) {
                    Some((low, high, _)) if (*low..*high).contains(o) => {}
                    Some((low, high, _)) => {
                        return Err(DeadLetterError::NoSuchLetter(format!(
                            "letter {p}:{o} is not in {topic} (partition {p} holds offsets {low}..{high})"
                        )))
                    }
                    None => {
                        return Err(DeadLetterError::NoSuchLetter(format!(
                            "{topic} has no partition {p} (it has {:?})",
                            parts.parts.keys().collect::<Vec<_>>()
                        )))
                    }
                }
                if parts.parts[p].2.contains(*o) {
                    done.push(format!("{p}:{o}"));
                }
                wanted.entry(*p).or_default().insert(*o);
            }
            if !done.is_empty() {
                return Err(DeadLetterError::AlreadyRedriven(format!(
                    "already redriven, a letter goes back once: {}",
                    done.join(", ")
                )));
            }
            let from = wanted.iter().filter_map(|(p, s)| s.iter().next().map(|o| (*p, *o))).collect();
            read(&consumer, &parts, &from, Some(&wanted), usize::MAX)?
        }
    };
    if let Some(l) = letters.iter().find(|l| l.origin_topic.is_empty() || l.origin_partition.is_none()) {
        return Err(DeadLetterError::NoSuchLetter(format!(
            "letter {}:{} has no fanout-origin-* headers: it was not written by the gateway and has no origin to go back to",
            l.partition, l.offset
        )));
    }
    if let Some(l) = letters.iter().find(|l| l.value_omitted.is_some()) {
        return Err(DeadLetterError::ValueOmitted(format!(
            "letter {}:{} carries no value (the dead-letter topic would not take it whole): its original is at {}/{}/{} \
             while that topic keeps it; replay that offset instead, or leave the letter out",
            l.partition,
            l.offset,
            l.origin_topic,
            l.origin_partition.unwrap_or_default(),
            l.origin_offset.unwrap_or_default()
        )));
    }
    let producer: FutureProducer =
        producer_config(config, &format!("fanout-gateway.{}.redrive", route.name)).create()?;
    let total = letters.len() as u64;
    progress(0, total);
    let mut done = 0u64;
    for chunk in letters.chunks(STEP) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|l| {
                let from = format!("{topic}/{}/{}", l.partition, l.offset);
                let mut headers = OwnedHeaders::new_with_capacity(l.headers.len() + 1);
                for (key, value) in &l.headers {
                    headers = headers.insert(Header { key, value: value.as_deref() });
                }
                headers = headers.insert(Header { key: HEADER_REDRIVEN_FROM, value: Some(from.as_bytes()) });
                let mut record = FutureRecord::<[u8], [u8]>::to(&l.origin_topic).headers(headers);
                if let Some(p) = l.origin_partition {
                    record = record.partition(p);
                }
                if let Some(key) = &l.key {
                    record = record.key(&key[..]);
                }
                if let Some(value) = &l.value {
                    record = record.payload(&value[..]);
                }
                producer.send(record, Timeout::After(TIMEOUT))
            })
            .collect();
        for sent in futures::executor::block_on(futures::future::join_all(sends)) {
            sent.map_err(|(e, _)| DeadLetterError::Produce(e))?;
        }
        done += chunk.len() as u64;
        progress(done, total);
    }
    // Recorded once all are on their origin topics.
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for l in &letters {
        by_partition.entry(l.partition).or_default().push(l.offset);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offsets) in by_partition {
        let (low, _, ledger) = &parts.parts[&p];
        let (offset, metadata) = ledger.with(*low, &offsets).commit_point();
        let mut e = tpl.add_partition(topic, p);
        e.set_offset(Offset::Offset(offset))?;
        e.set_metadata(metadata);
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_moves_its_base_over_contiguous_letters_and_keeps_the_rest_as_ranges() {
        let empty = Ledger::default();
        assert!(!empty.contains(0));
        let a = empty.with(0, &[0, 1, 2, 5]);
        assert_eq!(a, Ledger { base: Some(3), ranges: vec![(5, 5)] });
        assert!(a.contains(1) && a.contains(5) && !a.contains(3) && !a.contains(6));
        let b = a.with(0, &[3, 4]);
        assert_eq!(b, Ledger { base: Some(6), ranges: vec![] }, "the gap closed: one commit point");
        assert_eq!(b.count_in(0, 10), 6);
        assert_eq!(a.count_in(0, 10), 4);
    }

    #[test]
    fn letters_gone_from_the_topic_count_as_done_and_the_ledger_survives_its_commit() {
        let l = Ledger::default().with(10, &[12]);
        assert_eq!(l, Ledger { base: Some(10), ranges: vec![(12, 12)] });
        assert_eq!(l.count_in(10, 20), 1);
        let (offset, metadata) = l.commit_point();
        assert_eq!(Ledger::from_commit(Some(offset), &metadata), l);
        assert!(Ledger::from_commit(Some(offset), &metadata).contains(12));
    }
}
