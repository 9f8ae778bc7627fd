//! A route's dead-letter topic as an operator sees it: the letters with their origin, attempts
//! and reason (the headers [`crate::dead_letters`] wrote), and redrive back to the origin topic.
//!
//! What was redriven is recorded in the dead-letter topic itself: with each step of a redrive,
//! a ledger record ([`HEADER_LEDGER`]) is written to each partition the step took letters
//! from, listing their offsets. A ledger record is written after the letters it lists, so it
//! lives as long as they do (the topic's retention), whatever the size of the list, and no
//! group's committed offsets are needed (Kafka expires those of a group with no members).
//!
//! A step is one Kafka transaction: the letters produced to their origin topics and the ledger
//! records commit together or not at all, so a letter goes back once, crash or not, for
//! consumers of the origin topic that read committed records (Kafka's and librdkafka's
//! default). The transactional id is the route's, the same on every replica: a redrive that
//! starts fences one still running elsewhere (Kafka aborts its open step, and the fenced one
//! stops with [`DeadLetterError::Superseded`]), then reads the ledger as it stands.
//!
//! Ledgers of earlier versions, committed offsets of the route group's `<group>.redrive`
//! group, are still read, so letters redriven before an upgrade stay redriven.
//!
//! The calls here block on librdkafka; the control surface runs them on blocking threads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, RouteConfig};
use crate::dead_letters::{
    producer_config, HEADER_ATTEMPTS, HEADER_ORIGIN_OFFSET, HEADER_ORIGIN_PARTITION, HEADER_ORIGIN_TOPIC,
    HEADER_REASON, HEADER_VALUE_OMITTED,
};
use crate::offsets::decode_acked;

/// Header a redriven record carries: the letter it came from, `<topic>/<partition>/<offset>`.
pub const HEADER_REDRIVEN_FROM: &str = "fanout-redriven-from";
/// Header of a ledger record in a dead-letter topic (value: the format's version, `1`); the
/// record's value lists offsets of letters in its partition that were redriven
/// (`12,15-40,97`). Consumers of a dead-letter topic other than the gateway skip such records.
pub const HEADER_LEDGER: &str = "fanout-redrive-ledger";
/// Kafka requests here answer within this, or the call fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A read of the dead-letter topic that gets nothing for this long while records are due has
/// failed (a large topic takes as long as it takes).
const STALL: Duration = Duration::from_secs(30);
/// Letters per transaction of a redrive (each step reports progress).
const STEP: usize = 500;
/// Ranges per ledger record: a few hundred KiB at most, within Kafka's default record size.
const RANGES_PER_RECORD: usize = 8_192;

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
    #[error("kafka: reading {topic} got nothing for {stall:?} while {unfinished} partition(s) had records due")]
    ReadTimeout { topic: String, stall: Duration, unfinished: usize },
    /// A redriven letter or the ledger was not acknowledged; the step was rolled back.
    #[error(
        "kafka: redrive produce failed, its last step rolled back ({done} letter(s) redriven before it): {source}"
    )]
    Produce {
        done: u64,
        #[source]
        source: KafkaError,
    },
    /// Another redrive of the route started (on this replica or another) and took over.
    #[error("{0}")]
    Superseded(String),
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

/// The letters of one partition that were redriven: every offset below `below` (a ledger of
/// an earlier version), and the ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    below: Option<i64>,
    /// Sorted, disjoint and not adjacent.
    ranges: Vec<(i64, i64)>,
}

impl Ledger {
    /// The ledger an earlier version kept as a commit (offset and acked-range metadata).
    pub fn from_commit(offset: Option<i64>, metadata: &str) -> Self {
        let mut ledger = Self { below: offset, ranges: Vec::new() };
        if let Some(o) = offset {
            ledger.add(decode_acked(o, metadata));
        }
        ledger
    }

    pub fn contains(&self, offset: i64) -> bool {
        if self.below.is_some_and(|b| offset < b) {
            return true;
        }
        let at = self.ranges.partition_point(|&(_, e)| e < offset);
        self.ranges.get(at).is_some_and(|&(s, _)| s <= offset)
    }

    /// Adds `ranges` (inclusive, in any order).
    pub fn add(&mut self, ranges: impl IntoIterator<Item = (i64, i64)>) {
        let mut all = std::mem::take(&mut self.ranges);
        all.extend(ranges.into_iter().filter(|(s, e)| s <= e));
        all.sort_unstable();
        for (s, e) in all {
            match self.ranges.last_mut() {
                Some((_, end)) if s <= end.saturating_add(1) => *end = (*end).max(e),
                _ => self.ranges.push((s, e)),
            }
        }
    }
}

/// The values of the ledger records that list `offsets` (any order): ranges of consecutive
/// offsets, at most [`RANGES_PER_RECORD`] per record.
pub fn ledger_values(offsets: &[i64]) -> Vec<String> {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for o in sorted {
        match ranges.last_mut() {
            Some((_, end)) if o == *end + 1 => *end = o,
            _ => ranges.push((o, o)),
        }
    }
    ranges
        .chunks(RANGES_PER_RECORD)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&(s, e)| if s == e { s.to_string() } else { format!("{s}-{e}") })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// The ranges a ledger record's value lists; None when it is not one this version wrote.
pub fn parse_ledger_value(value: &[u8]) -> Option<Vec<(i64, i64)>> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((s, e)) => Some((s.parse().ok()?, e.parse().ok()?)),
            None => part.parse().ok().map(|o| (o, o)),
        })
        .collect()
}

/// Whether `error` says another producer with the route's transactional id took over.
fn superseded(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// The group whose commits on the dead-letter topic were the route's redrive ledger before it
/// moved into the topic; also the transactional id of the route's redrives.
pub fn ledger_group(config: &Config, route: &RouteConfig) -> String {
    format!("{}.redrive", route.group(&config.kafka))
}

/// A reader of the dead-letter topic that sees committed records only, whatever the gateway's
/// `isolation.level`: a rolled-back step must not count as redriven.
fn consumer(config: &Config, route: &RouteConfig) -> Result<BaseConsumer, KafkaError> {
    let client_id = format!("fanout-gateway.{}.dead-letters", route.name);
    crate::kafka::reader_config(config, &ledger_group(config, route), &client_id)
        .set("isolation.level", "read_committed")
        .create()
}

/// One partition of the dead-letter topic as a first read found it.
#[derive(Debug, Default)]
struct Partition {
    low: i64,
    high: i64,
    ledger: Ledger,
    /// Offsets of its letters (every record but ledger records).
    letters: Vec<i64>,
    /// Letters that cannot go back, and why.
    unfit: BTreeMap<i64, String>,
}

impl Partition {
    fn pending(&self) -> impl Iterator<Item = i64> + '_ {
        self.letters.iter().copied().filter(|o| !self.ledger.contains(*o))
    }
}

/// Reads `spans` (partition: offsets `start..end`) of `topic`, in offset order per partition,
/// handing each record to `visit` until every span is read or `visit` returns false.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    spans: &BTreeMap<i32, (i64, i64)>,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Result<bool, DeadLetterError>,
) -> Result<(), DeadLetterError> {
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &(start, end)) in spans {
        if start < end {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            open.insert(p, end);
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        if last_progress.elapsed() > STALL {
            return Err(DeadLetterError::ReadTimeout {
                topic: topic.to_string(),
                stall: STALL,
                unfinished: open.len(),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            // A span whose last offsets are a transaction's marker or rolled-back records ends
            // with no message: the reader's position says it was read.
            open.retain(|p, end| crate::kafka::position_of(consumer, topic, *p).is_none_or(|at| at < *end));
            continue;
        };
        let m = message?;
        last_progress = Instant::now();
        let Some(&end) = open.get(&m.partition()) else { continue };
        if m.offset() + 1 >= end {
            open.remove(&m.partition());
        }
        if m.offset() < end && !visit(&m)? {
            break;
        }
    }
    let _ = consumer.unassign();
    Ok(())
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    let headers = m.headers()?;
    headers.iter().filter(|h| h.key == name).last().and_then(|h| h.value)
}

fn header_text(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    header(m, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Why the letter in `m` cannot go back, if it cannot.
fn unfit(m: &BorrowedMessage<'_>) -> Option<String> {
    let (p, o) = (m.partition(), m.offset());
    let origin = header_text(m, HEADER_ORIGIN_TOPIC).filter(|t| !t.is_empty());
    let origin_partition = header_text(m, HEADER_ORIGIN_PARTITION).and_then(|v| v.parse::<i32>().ok());
    let (Some(origin), Some(origin_partition)) = (origin, origin_partition) else {
        return Some(format!(
            "letter {p}:{o} has no fanout-origin-* headers: it was not written by the gateway and has no origin to go back to"
        ));
    };
    header(m, HEADER_VALUE_OMITTED)?;
    Some(format!(
        "letter {p}:{o} carries no value (the dead-letter topic would not take it whole): its original is at {origin}/{origin_partition}/{} \
         while that topic keeps it; replay that offset instead, or leave the letter out",
        header_text(m, HEADER_ORIGIN_OFFSET).unwrap_or_default()
    ))
}

fn letter(m: &BorrowedMessage<'_>, ledger: &Ledger) -> Letter {
    let text = |name| header_text(m, name);
    Letter {
        partition: m.partition(),
        offset: m.offset(),
        origin_topic: text(HEADER_ORIGIN_TOPIC).unwrap_or_default(),
        origin_partition: text(HEADER_ORIGIN_PARTITION).and_then(|v| v.parse().ok()),
        origin_offset: text(HEADER_ORIGIN_OFFSET).and_then(|v| v.parse().ok()),
        attempts: text(HEADER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
        reason: text(HEADER_REASON).unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        value_omitted: text(HEADER_VALUE_OMITTED).and_then(|v| v.parse().ok()),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .filter(|h| !h.key.starts_with("fanout-"))
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        redriven: ledger.contains(m.offset()),
    }
}

/// Reads every partition of `topic` once: its letters, which cannot go back, and the ledger.
fn survey(consumer: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, Partition>, DeadLetterError> {
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
        let ledger = match committed.find_partition(topic, p).map(|e| (e.offset(), e.metadata().to_string())) {
            Some((Offset::Offset(o), metadata)) => Ledger::from_commit(Some(o), &metadata),
            _ => Ledger::default(),
        };
        parts.insert(p, Partition { low, high, ledger, ..Partition::default() });
    }
    let spans = parts.iter().map(|(p, part)| (*p, (part.low, part.high))).collect();
    scan(consumer, topic, &spans, |m| {
        let Some(part) = parts.get_mut(&m.partition()) else { return Ok(true) };
        if header(m, HEADER_LEDGER).is_some() {
            // A value this version cannot read (a later format) lists nothing it could act on.
            if let Some(ranges) = m.payload().and_then(parse_ledger_value) {
                part.ledger.add(ranges);
            }
        } else {
            part.letters.push(m.offset());
            if let Some(why) = unfit(m) {
                part.unfit.insert(m.offset(), why);
            }
        }
        Ok(true)
    })?;
    Ok(parts)
}

fn topic_of(route: &RouteConfig) -> Result<&str, DeadLetterError> {
    route.dead_letter_topic.as_deref().ok_or_else(|| DeadLetterError::NoTopic(route.name.clone()))
}

/// The route's letters from the first not redriven on, oldest first per partition, at most
/// `limit`; the counts cover the whole topic.
pub fn list(config: &Config, route: &RouteConfig, limit: usize) -> Result<Listing, DeadLetterError> {
    let topic = topic_of(route)?;
    let consumer = consumer(config, route)?;
    let parts = survey(&consumer, topic)?;
    let total = parts.values().map(|p| p.letters.len() as u64).sum();
    let pending: u64 = parts.values().map(|p| p.pending().count() as u64).sum();
    let spans =
        parts.iter().filter_map(|(p, part)| part.pending().next().map(|first| (*p, (first, part.high)))).collect();
    let mut letters = Vec::new();
    if limit > 0 {
        scan(&consumer, topic, &spans, |m| {
            if header(m, HEADER_LEDGER).is_none() {
                letters.push(letter(m, &parts[&m.partition()].ledger));
            }
            Ok(letters.len() < limit)
        })?;
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(Listing { topic: topic.to_string(), letters, total, redriven: total - pending })
}

/// The letters `selection` names, per partition, checked against what the topic holds.
fn chosen(
    topic: &str,
    parts: &BTreeMap<i32, Partition>,
    selection: Selection,
) -> Result<BTreeMap<i32, BTreeSet<i64>>, DeadLetterError> {
    let mut wanted: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    match selection {
        Selection::All => {
            for (p, part) in parts {
                let pending: BTreeSet<i64> = part.pending().collect();
                if !pending.is_empty() {
                    wanted.insert(*p, pending);
                }
            }
            if wanted.is_empty() {
                let total: usize = parts.values().map(|p| p.letters.len()).sum();
                return Err(DeadLetterError::AlreadyRedriven(format!(
                    "nothing to redrive: the {total} letter(s) in {topic} were redriven already"
                )));
            }
        }
        Selection::Letters(refs) => {
            let mut done = Vec::new();
            for (p, o) in refs {
                let Some(part) = parts.get(&p) else {
                    return Err(DeadLetterError::NoSuchLetter(format!(
                        "{topic} has no partition {p} (it has {:?})",
                        parts.keys().collect::<Vec<_>>()
                    )));
                };
                if part.letters.binary_search(&o).is_err() {
                    let held = format!("partition {p} holds offsets {}..{}", part.low, part.high);
                    return Err(DeadLetterError::NoSuchLetter(if (part.low..part.high).contains(&o) {
                        format!("{p}:{o} in {topic} is not a letter ({held}; this one is the redrive ledger's or a transaction marker)")
                    } else {
                        format!("letter {p}:{o} is not in {topic} ({held})")
                    }));
                }
                if part.ledger.contains(o) {
                    done.push(format!("{p}:{o}"));
                }
                wanted.entry(p).or_default().insert(o);
            }
            if !done.is_empty() {
                return Err(DeadLetterError::AlreadyRedriven(format!(
                    "already redriven, a letter goes back once: {}",
                    done.join(", ")
                )));
            }
        }
    }
    let unfit = wanted.iter().find_map(|(p, offsets)| offsets.iter().find_map(|o| parts[p].unfit.get(o)));
    match unfit {
        Some(why) if why.contains("carries no value") => Err(DeadLetterError::ValueOmitted(why.clone())),
        Some(why) => Err(DeadLetterError::NoSuchLetter(why.clone())),
        None => Ok(wanted),
    }
}

/// A transactional producer for the route's redrives, its transactional id fencing any other.
fn redrive_producer(config: &Config, route: &RouteConfig) -> Result<FutureProducer, DeadLetterError> {
    let producer: FutureProducer = producer_config(config, &format!("fanout-gateway.{}.redrive", route.name))
        .set("transactional.id", ledger_group(config, route))
        .create()?;
    producer.init_transactions(TIMEOUT).map_err(|e| step_error(route, 0, e))?;
    Ok(producer)
}

fn step_error(route: &RouteConfig, done: u64, source: KafkaError) -> DeadLetterError {
    if superseded(&source) {
        DeadLetterError::Superseded(format!(
            "another redrive of route `{}` started (on this replica or another) and took over after {done} letter(s) \
             went back here; `fanoutctl dlq list {}` shows what is left",
            route.name, route.name
        ))
    } else {
        DeadLetterError::Produce { done, source }
    }
}

/// One step of a redrive, one transaction: `letters` back to their origins and the ledger
/// records that list them; on an error the step is rolled back.
fn step(producer: &FutureProducer, topic: &str, letters: &[Letter]) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let sent = send_step(producer, topic, letters).and_then(|()| producer.commit_transaction(TIMEOUT));
    let Err(e) = sent else { return Ok(()) };
    // Fenced while records were queued, librdkafka purges them and says so, not why: the
    // producer's fatal error does.
    if let Some((code, _)) = producer.client().fatal_error() {
        return Err(KafkaError::Global(code));
    }
    if !superseded(&e) {
        let _ = producer.abort_transaction(TIMEOUT);
    }
    Err(e)
}

fn send_step(producer: &FutureProducer, topic: &str, letters: &[Letter]) -> Result<(), KafkaError> {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for l in letters {
        by_partition.entry(l.partition).or_default().push(l.offset);
    }
    let ledger: Vec<(i32, String, String)> = by_partition
        .into_iter()
        .flat_map(|(p, offsets)| {
            ledger_values(&offsets).into_iter().map(move |value| {
                (p, format!("{HEADER_LEDGER}/{p}/{}", value.split([',', '-']).next().unwrap_or_default()), value)
            })
        })
        .collect();
    let mut sends: Vec<_> = letters
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
    for (p, key, value) in &ledger {
        let headers = OwnedHeaders::new().insert(Header { key: HEADER_LEDGER, value: Some("1") });
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(*p)
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .headers(headers);
        sends.push(producer.send(record, Timeout::After(TIMEOUT)));
    }
    for sent in futures::executor::block_on(futures::future::join_all(sends)) {
        sent.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Produces the selected letters back to their origin topic and partition, in steps that each
/// record theirs in the ledger. `progress(done, total)` is called as steps commit. Returns how
/// many were redriven.
pub fn redrive(
    config: &Config,
    route: &RouteConfig,
    selection: Selection,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, DeadLetterError> {
    let topic = topic_of(route)?;
    // First the producer: it fences any redrive still running, so the ledger read next is
    // final for what it lists.
    let producer = redrive_producer(config, route)?;
    let consumer = consumer(config, route)?;
    let parts = survey(&consumer, topic)?;
    let wanted = chosen(topic, &parts, selection)?;
    let total: u64 = wanted.values().map(|o| o.len() as u64).sum();
    progress(0, total);
    let spans = wanted.iter().filter_map(|(p, o)| Some((*p, (*o.first()?, *o.last()? + 1)))).collect();
    let mut done = 0u64;
    let mut batch: Vec<Letter> = Vec::with_capacity(STEP);
    let mut flush = |batch: &mut Vec<Letter>, done: &mut u64| -> Result<(), DeadLetterError> {
        step(&producer, topic, batch).map_err(|e| step_error(route, *done, e))?;
        *done += batch.len() as u64;
        batch.clear();
        progress(*done, total);
        Ok(())
    };
    scan(&consumer, topic, &spans, |m| {
        if wanted.get(&m.partition()).is_some_and(|o| o.contains(&m.offset())) {
            batch.push(letter(m, &parts[&m.partition()].ledger));
            if batch.len() >= STEP {
                flush(&mut batch, &mut done)?;
            }
        }
        Ok(true)
    })?;
    if !batch.is_empty() {
        flush(&mut batch, &mut done)?;
    }
    if done < total {
        tracing::warn!(
            route = route.name,
            topic,
            done,
            total,
            "letters left the dead-letter topic (retention) while they were redriven"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::encode_acked;

    #[test]
    fn the_ledger_merges_what_it_is_given_and_answers_for_each_offset() {
        let mut l = Ledger::default();
        assert!(!l.contains(0));
        l.add([(5, 5), (0, 2)]);
        assert_eq!(l.ranges, vec![(0, 2), (5, 5)]);
        assert!(l.contains(1) && l.contains(5) && !l.contains(3) && !l.contains(6) && !l.contains(-1));
        l.add([(3, 4), (9, 8)]);
        assert_eq!(l.ranges, vec![(0, 5)], "adjacent ranges join; an empty one is ignored");
    }

    #[test]
    fn a_ledger_of_an_earlier_version_still_counts_what_it_committed() {
        let metadata = encode_acked(10, &[(12, 12), (20, 21)]);
        let l = Ledger::from_commit(Some(10), &metadata);
        assert!(l.contains(0) && l.contains(9) && !l.contains(10));
        assert!(l.contains(12) && l.contains(21) && !l.contains(13) && !l.contains(22));
        assert_eq!(Ledger::from_commit(None, ""), Ledger::default());
    }

    #[test]
    fn ledger_records_list_any_number_of_letters_and_read_back_the_same() {
        assert_eq!(ledger_values(&[7, 3, 4, 5, 9, 4]), vec!["3-5,7,9".to_string()]);
        assert_eq!(parse_ledger_value(b"3-5,7,9"), Some(vec![(3, 5), (7, 7), (9, 9)]));
        // Far beyond what commit metadata could hold: every other offset of 40 000.
        let offsets: Vec<i64> = (0..40_000).step_by(2).collect();
        let values = ledger_values(&offsets);
        assert_eq!(values.len(), offsets.len().div_ceil(RANGES_PER_RECORD));
        let mut l = Ledger::default();
        for v in &values {
            assert!(v.len() < 200_000, "one record stays well within Kafka's default size");
            l.add(parse_ledger_value(v.as_bytes()).expect("a value this version wrote"));
        }
        assert!(offsets.iter().all(|o| l.contains(*o)));
        assert!(!l.contains(1) && !l.contains(39_999));
        assert_eq!(parse_ledger_value(b"v2:whatever"), None, "a value of a later format is not misread");
    }

    #[test]
    fn only_fencing_errors_mean_another_redrive_took_over() {
        assert!(superseded(&KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced)));
        assert!(superseded(&KafkaError::MessageProduction(RDKafkaErrorCode::Fenced)));
        assert!(!superseded(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!superseded(&KafkaError::Canceled));
    }
}
