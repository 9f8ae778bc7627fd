//! The dead-letter producer: messages that used up their attempts, or that a subscriber gave
//! up on, are produced to the route's dead-letter topic before their offset counts as done.
//!
//! The producer is idempotent with `acks=all`: a dead letter acknowledged by Kafka is on every
//! in-sync replica, and librdkafka's internal retries cannot write it twice. Only after that
//! acknowledgement does the dispatcher settle the origin offset, so a crash at any point either
//! redelivers the message or finds it in the dead-letter topic, never neither.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tracing::{debug, warn};

use crate::config::Config;
use crate::kafka::{ClientReports, Record, ReportingContext};
use crate::subscriptions::DeadLetter;

pub const HEADER_ORIGIN_TOPIC: &str = "fanout-origin-topic";
pub const HEADER_ORIGIN_PARTITION: &str = "fanout-origin-partition";
pub const HEADER_ORIGIN_OFFSET: &str = "fanout-origin-offset";
pub const HEADER_ATTEMPTS: &str = "fanout-attempts";
pub const HEADER_REASON: &str = "fanout-reason";
pub const HEADER_ROUTE: &str = "fanout-route";
/// On a dead letter the dead-letter topic would not take whole: the original value's size in
/// bytes; the letter carries no value (the original stays at its origin while the topic's
/// retention keeps it).
pub const HEADER_VALUE_OMITTED: &str = "fanout-value-omitted";
/// On a letter whose original timestamp the topic refused (older than its
/// `message.timestamp.before.max.ms`): that timestamp, in ms; the letter gets the time it was
/// written.
pub const HEADER_ORIGIN_TIMESTAMP: &str = "fanout-origin-timestamp";

/// What of the original record a dead letter carries, and how it is sent. Kafka refuses some
/// letters for good as they are: a value that the topic's `max.message.bytes` cannot take
/// once the `fanout-*` headers are added, a timestamp older than the topic accepts. Retried as
/// they are, they would hold their partition's commits forever; instead each such refusal
/// drops the part at fault and says so in a header. Kafka judges a whole record batch, and
/// the producer batches letters that go out together, so a refused letter is first sent again
/// in a batch of its own: only a refusal of the letter alone is the letter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub timestamp: bool,
    pub value: bool,
    /// Sent in a record batch of its own.
    pub alone: bool,
}

impl Shape {
    pub const WHOLE: Self = Self { timestamp: true, value: true, alone: false };

    /// How to send after Kafka refused this with `code`; None when the refusal is not about
    /// the letter's shape (then it is retried as it is), or when nothing is left to try. A
    /// retry-topic record keeps its value whatever happens (it is delivered again from
    /// there): one too large alone is refused for good, and retried in place instead (see
    /// [`crate::dispatcher`]).
    pub fn after(self, code: RDKafkaErrorCode, retry: bool) -> Option<Self> {
        let without_fault = match code {
            RDKafkaErrorCode::InvalidTimestamp if self.timestamp => Some(Self { timestamp: false, ..self }),
            RDKafkaErrorCode::MessageSizeTooLarge if self.value && !retry => Some(Self { value: false, ..self }),
            RDKafkaErrorCode::MessageSizeTooLarge if retry => None,
            _ => return None,
        };
        if !self.alone {
            return Some(Self { alone: true, ..self });
        }
        without_fault
    }
}

/// librdkafka properties that are the consumer's business and make no sense on the producer
/// (it warns about each); everything else in `kafka.properties` (security, timeouts) applies
/// to both.
const CONSUMER_ONLY: &[&str] = &[
    "session.timeout.ms",
    "statistics.interval.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "check.crcs",
    "group.protocol",
    "group.remote.assignor",
    "allow.auto.create.topics",
];

/// Longest a reason header gets: reasons come from subscribers.
const MAX_REASON_BYTES: usize = 1_024;

/// An idempotent producer with `acks=all` and the gateway's Kafka settings (security,
/// timeouts): for dead letters, retries and redrives, where a record must be written exactly
/// once and survive a broker loss.
pub fn producer_config(config: &Config, client_id: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (key, value) in &config.kafka.properties {
        if !CONSUMER_ONLY.contains(&key.as_str()) {
            cc.set(key, value);
        }
    }
    // librdkafka's own bound (1,000,000) is below Kafka's default max.message.bytes
    // (1,048,588): a record the source topic took would be refused here once the fanout-*
    // headers are added, before the topic had its say.
    if !config.kafka.properties.contains_key("message.max.bytes") {
        cc.set("message.max.bytes", "10485760");
    }
    cc.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Rare records: send each at once rather than wait to batch.
        .set("linger.ms", "5");
    cc
}

#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: Arc<Renewable>,
    /// One record per batch, for a letter Kafka refused in a batch (see [`Shape`]); made on
    /// first need, as most gateways never need it.
    alone: Arc<Renewable>,
    /// Who the brokers see writing (`User:fanout`), for what to grant when they refuse.
    principal: Arc<str>,
}

impl DeadLetterProducer {
    /// The producer's failures (a dead broker, TLS, SASL) go through the gateway's `reports`,
    /// said once per interval with their hint like the route consumers', instead of
    /// librdkafka's default context logging each one at ERROR several times.
    pub fn new(config: &Config, reports: Arc<ClientReports>) -> Result<Self, KafkaError> {
        let principal = Arc::from(crate::kafka::principal(&config.kafka));
        let mut alone_config = producer_config(config, "fanout-gateway-dead-letters-alone");
        alone_config.set("batch.num.messages", "1");
        let producer = Renewable::new(producer_config(config, "fanout-gateway-dead-letters"), reports.clone());
        // Made now: a property librdkafka refuses fails the start, naming it.
        let _made = producer.get()?;
        Ok(Self { producer: Arc::new(producer), alone: Arc::new(Renewable::new(alone_config, reports)), principal })
    }

    /// The principal the brokers see writing the letters.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// Produces one dead letter to `topic` and waits for Kafka's acknowledgement; a letter
    /// Kafka refuses for its shape goes again without the part at fault (see [`Shape`]).
    pub async fn send(&self, topic: &str, route: &str, letter: &DeadLetter) -> Result<(), KafkaError> {
        let retry = letter.retry_at.is_some();
        let mut shape = Shape::WHOLE;
        loop {
            let error = match self.send_shaped(topic, route, letter, shape).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let next = match &error {
                KafkaError::MessageProduction(code) => shape.after(*code, retry),
                _ => None,
            };
            let Some(next) = next else { return Err(error) };
            let record = &letter.pending.record;
            if (next.value, next.timestamp) != (shape.value, shape.timestamp) {
                warn!(
                    %error, topic, tp = %record.tp, offset = record.offset,
                    without_value = !next.value, without_timestamp = !next.timestamp,
                    "the topic refuses this letter as it is; sending it without the part at fault (a fanout-* header says what was left out)"
                );
            } else {
                debug!(%error, topic, tp = %record.tp, offset = record.offset, "a batch with this letter was refused; sending it alone");
            }
            shape = next;
        }
    }

    async fn send_shaped(&self, topic: &str, route: &str, letter: &DeadLetter, shape: Shape) -> Result<(), KafkaError> {
        let record = &letter.pending.record;
        let mut headers = dead_letter_headers(record, letter.pending.attempt, &letter.reason, route);
        if let Some(at) = letter.retry_at {
            headers.push((crate::subscriptions::HEADER_RETRY_AT.to_string(), Some(at.to_string().into_bytes())));
            let overloads = letter.pending.overloads;
            if overloads > 0 {
                let value = Some(overloads.to_string().into_bytes());
                headers.push((crate::subscriptions::HEADER_OVERLOADS.to_string(), value));
            }
        }
        if let (false, Some(ts)) = (shape.timestamp, record.timestamp_ms) {
            headers.push((HEADER_ORIGIN_TIMESTAMP.to_string(), Some(ts.to_string().into_bytes())));
        }
        if let (false, Some(value)) = (shape.value, &record.value) {
            headers.push((HEADER_VALUE_OMITTED.to_string(), Some(value.len().to_string().into_bytes())));
        }
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in &headers {
            owned = owned.insert(Header { key, value: value.as_deref() });
        }
        let mut out = FutureRecord::<[u8], [u8]>::to(topic).headers(owned);
        // A tombstone stays a tombstone (and a letter without its value is not one: its
        // header says so).
        if let (true, Some(value)) = (shape.value, &record.value) {
            out = out.payload(&value[..]);
        }
        if let Some(key) = &record.key {
            out = out.key(&key[..]);
        }
        if let (true, Some(ts)) = (shape.timestamp, record.timestamp_ms) {
            out = out.timestamp(ts);
        }
        let producer = if shape.alone { self.alone.get()? } else { self.producer.get()? };
        match producer.send(out, Timeout::After(Duration::from_secs(30))).await {
            Ok(_) => Ok(()),
            // The cause, which says what to do (a refused producer id: a missing Write grant),
            // instead of librdkafka's "Fatal error".
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _)) => {
                let cause = producer.client().fatal_error().map_or(RDKafkaErrorCode::Fatal, |(code, _)| code);
                Err(KafkaError::MessageProduction(cause))
            }
            Err((error, _)) => Err(error),
        }
    }
}

/// How long a producer that hit a fatal error stays before a letter gets a new one: each new
/// one starts threads and asks the brokers for a producer id, which a missing grant refuses
/// again at once.
const RENEW_AFTER: Duration = Duration::from_secs(5);

/// A producer that a fatal error retires. librdkafka's idempotent producer is done for good
/// once the brokers refuse it a producer id (its principal may write no topic yet) or its
/// sequence numbers go astray, and every letter after that fails with "Fatal error" however
/// the brokers change: a grant made later would never be noticed. The letters wait meanwhile
/// (their offsets uncommitted) and the next attempt gets a new producer from the same
/// properties, so a fatal producer costs a wait, not the replica.
struct Renewable {
    config: ClientConfig,
    reports: Arc<ClientReports>,
    current: parking_lot::Mutex<Option<(FutureProducer<ReportingContext>, Instant)>>,
}

impl Renewable {
    fn new(config: ClientConfig, reports: Arc<ClientReports>) -> Self {
        Self { config, reports, current: parking_lot::Mutex::new(None) }
    }

    /// The producer to send with: the current one, or a new one if there is none yet or the
    /// current one hit a fatal error more than [`RENEW_AFTER`] after it was made.
    fn get(&self) -> Result<FutureProducer<ReportingContext>, KafkaError> {
        let mut current = self.current.lock();
        if let Some((producer, made)) = &*current {
            let fatal = producer.client().fatal_error();
            if !renew(fatal.is_some(), made.elapsed()) {
                return Ok(producer.clone());
            }
            if let Some((code, reason)) = fatal {
                warn!(error = ?code, "the producer of dead letters and retries hit a fatal error ({reason}); the \
                    letters waiting get a new one");
            }
        }
        let producer: FutureProducer<ReportingContext> =
            self.config.create_with_context(ReportingContext(self.reports.clone()))?;
        *current = Some((producer.clone(), Instant::now()));
        Ok(producer)
    }
}

/// Whether a producer is replaced: only once fatal, and not sooner than [`RENEW_AFTER`] after
/// it was made.
fn renew(fatal: bool, age: Duration) -> bool {
    fatal && age >= RENEW_AFTER
}

/// The dead letter's headers: the original ones (without earlier `fanout-*` ones, so a
/// message dead-lettered twice carries one set), then where it came from and why it failed.
/// A message that comes from a retry topic keeps the origin its headers name.
pub fn dead_letter_headers(
    record: &Record,
    attempts: u32,
    reason: &str,
    route: &str,
) -> Vec<(String, Option<Vec<u8>>)> {
    let earlier = |name: &str| {
        record.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref().map(<[u8]>::to_vec))
    };
    let origin = match (earlier(HEADER_ORIGIN_TOPIC), earlier(HEADER_ORIGIN_PARTITION), earlier(HEADER_ORIGIN_OFFSET)) {
        (Some(topic), Some(partition), Some(offset)) => (topic, partition, offset),
        _ => (
            record.tp.topic.as_bytes().to_vec(),
            record.tp.partition.to_string().into_bytes(),
            record.offset.to_string().into_bytes(),
        ),
    };
    let mut headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("fanout-"))
        .map(|(k, v)| (k.clone(), v.as_deref().map(<[u8]>::to_vec)))
        .collect();
    let mut reason = reason.to_string();
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    headers.extend([
        (HEADER_ORIGIN_TOPIC.to_string(), Some(origin.0)),
        (HEADER_ORIGIN_PARTITION.to_string(), Some(origin.1)),
        (HEADER_ORIGIN_OFFSET.to_string(), Some(origin.2)),
        (HEADER_ATTEMPTS.to_string(), Some(attempts.to_string().into_bytes())),
        (HEADER_REASON.to_string(), Some(reason.into_bytes())),
        (HEADER_ROUTE.to_string(), Some(route.as_bytes().to_vec())),
    ]);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TopicPartition;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn a_producer_is_renewed_only_once_fatal_and_not_sooner_than_the_interval() {
        assert!(!renew(false, Duration::from_secs(60)), "a working producer stays");
        assert!(!renew(true, Duration::from_secs(1)), "a fatal one made a moment ago waits");
        assert!(renew(true, RENEW_AFTER), "a fatal one is renewed once the interval passed");
    }

    #[test]
    fn a_refused_letter_drops_only_the_part_at_fault() {
        use RDKafkaErrorCode::*;
        let alone = Shape::WHOLE.after(InvalidTimestamp, false).expect("sent again");
        assert_eq!(alone, Shape { alone: true, ..Shape::WHOLE }, "first alone: its batch may have been at fault");
        let old = alone.after(InvalidTimestamp, false).expect("reshaped");
        assert_eq!(old, Shape { timestamp: false, value: true, alone: true });
        assert_eq!(old.after(InvalidTimestamp, false), None, "nothing more to drop for a timestamp");
        let big = old.after(MessageSizeTooLarge, false).expect("reshaped");
        assert_eq!(big, Shape { timestamp: false, value: false, alone: true });
        assert_eq!(big.after(MessageSizeTooLarge, false), None, "still too large: retried as it is");
        assert_eq!(
            Shape::WHOLE.after(MessageSizeTooLarge, true),
            Some(alone),
            "a retry refused in a batch goes alone: the batch may have been too large"
        );
        assert_eq!(alone.after(MessageSizeTooLarge, true), None, "a retry keeps its value: refused for good");
        assert_eq!(
            alone.after(InvalidTimestamp, true),
            Some(Shape { timestamp: false, ..alone }),
            "a retry's timestamp may go"
        );
        for transient in [UnknownTopicOrPartition, TopicAuthorizationFailed, NotEnoughReplicas, MessageTimedOut] {
            assert_eq!(Shape::WHOLE.after(transient, false), None, "{transient:?} is not about the letter");
        }
    }

    #[test]
    fn headers_say_where_it_came_from_and_why_and_replace_earlier_ones() {
        let record = Record {
            tp: TopicPartition { topic: Arc::from("orders"), partition: 3 },
            offset: 42,
            key: None,
            value: None,
            headers: vec![
                ("trace-id".into(), Some(Bytes::from_static(b"abc"))),
                ("no-value".into(), None),
                (HEADER_ATTEMPTS.into(), Some(Bytes::from_static(b"9"))),
            ],
            timestamp_ms: None,
        };
        let long = "é".repeat(MAX_REASON_BYTES);
        let h = dead_letter_headers(&record, 5, &long, "orders-route");
        let get = |k: &str| -> Vec<String> {
            h.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone().expect("a value")).expect("utf-8"))
                .collect()
        };
        assert_eq!(get("trace-id"), vec!["abc"]);
        assert!(h.iter().any(|(n, v)| n == "no-value" && v.is_none()), "a header without a value keeps none");
        assert_eq!(get(HEADER_ORIGIN_TOPIC), vec!["orders"]);
        assert_eq!(get(HEADER_ORIGIN_PARTITION), vec!["3"]);
        assert_eq!(get(HEADER_ORIGIN_OFFSET), vec!["42"]);
        assert_eq!(get(HEADER_ATTEMPTS), vec!["5"], "the earlier attempts header is replaced");
        assert_eq!(get(HEADER_ROUTE), vec!["orders-route"]);
        let reason = &get(HEADER_REASON)[0];
        assert!(reason.len() <= MAX_REASON_BYTES && reason.starts_with('é'), "cut on a char boundary");
    }
}
