//! The dead-letter loop: exhausted or refused messages are produced to the route's dead-letter
//! (or retry) topic, retried with backoff until Kafka has them; then their origin offset is done.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, info, warn};

use crate::config::RouteConfig;
use crate::dead_letters::DeadLetterProducer;
use crate::kafka::TopicPartition;
use crate::stats::Stats;
use crate::subscriptions::{DeadLetter, ReplayTag};

/// Backoff between attempts to produce a dead letter that Kafka refused.
const DEAD_LETTER_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));
/// How often one reason a topic refuses letters is said at WARN, whatever the number of letters
/// waiting and their attempts.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// A dead letter (or retry-topic record) Kafka acknowledged: its origin is done.
#[derive(Debug)]
pub(super) struct Produced {
    pub(super) tp: TopicPartition,
    pub(super) offset: i64,
    pub(super) epoch: u64,
    /// Produced to the retry topic (not the dead-letter topic).
    pub(super) retry: bool,
    pub(super) replay: Option<ReplayTag>,
}

/// How a dead letter (or retry-topic record) left the loop.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Kafka acknowledged it: its origin is done.
    Landed(Produced),
    /// A retry the retry topic refuses for good, alone in its batch: too large for the topic
    /// (its `max.message.bytes`) once the gateway's headers are added. It is retried in place
    /// instead, as on a route without a retry topic, its offset uncommitted meanwhile.
    TooLargeToRetryThere(DeadLetter),
}

/// The route's dead-letter producer and the dead letters it has out.
#[derive(Default)]
pub(super) struct DeadLetterLoop {
    producer: Option<DeadLetterProducer>,
    /// Dead letters produced but not yet acknowledged by Kafka.
    in_flight: usize,
    /// When each (topic, reason) a topic refused letters for was last said.
    said: Arc<parking_lot::Mutex<HashMap<(String, String), Instant>>>,
}

impl DeadLetterLoop {
    pub(super) fn new(producer: Option<DeadLetterProducer>) -> Self {
        Self { producer, in_flight: 0, said: Arc::default() }
    }

    /// Dead letters out and not yet acknowledged by Kafka.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Produces a dead letter: the returned task ends once Kafka acknowledges it. A refused
    /// produce is tried again with backoff until it succeeds or the gateway stops (then the
    /// message is redelivered by whoever owns the partition next). None (and a warning) when
    /// the route has no topic for it or no producer.
    pub(super) fn produce(
        &mut self,
        route: &RouteConfig,
        letter: DeadLetter,
        stats: Arc<Stats>,
    ) -> Option<impl Future<Output = Outcome> + Send + 'static> {
        let retry = letter.retry_at.is_some();
        let (Some(topic), Some(producer)) = (topic_for(route, retry), self.producer.clone()) else {
            // Config validation and start-up make this unreachable; never drop silently.
            warn!(route = route.name, "dead letter without a dead-letter topic or producer; it stays uncommitted");
            return None;
        };
        let route = route.name.clone();
        let tp = letter.pending.record.tp.clone();
        let (offset, epoch, replay) = (letter.pending.record.offset, letter.pending.epoch, letter.pending.replay);
        debug!(%tp, offset, attempts = letter.pending.attempt, reason = letter.reason, topic, "dead-lettering");
        self.in_flight += 1;
        let said = self.said.clone();
        Some(async move {
            let mut backoff = DEAD_LETTER_RETRY.0;
            loop {
                match producer.send(&topic, &route, &letter).await {
                    Ok(()) => {
                        writable_again(&stats, &route, &topic);
                        return Outcome::Landed(Produced { tp, offset, epoch, retry, replay });
                    }
                    Err(error)
                        if retry && error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                    {
                        Stats::bump(&stats.retries_in_place, 1);
                        let size = letter.pending.record.value.as_ref().map_or(0, |v| v.len());
                        let why = "a record is larger than the topic takes".to_string();
                        if due(&mut said.lock(), (topic.clone(), why), Instant::now()) {
                            warn!(%error, route, topic, %tp, offset, value_bytes = size,
                                "route {route}'s retry topic {topic} refuses a record this large (the gateway's headers \
                                added); it is retried in place instead, its partition's commits waiting for it: raise \
                                {topic}'s max.message.bytes");
                        }
                        return Outcome::TooLargeToRetryThere(letter);
                    }
                    Err(error) => {
                        Stats::bump(&stats.dead_letter_failures, 1);
                        let refused = Refused { topic: &topic, principal: producer.principal(), retry };
                        let why = refused.why(error.rdkafka_error_code(), &error.to_string());
                        let what = if retry { "retries" } else { "dead letters" };
                        stats
                            .unwritable_topics
                            .write()
                            .entry(route.clone())
                            .or_default()
                            .insert(topic.clone(), why.clone());
                        if due(&mut said.lock(), (topic.clone(), why.clone()), Instant::now()) {
                            warn!(%error, route, topic, "route {route} cannot write {what} to topic {topic}: {why}; they \
                                wait and their offsets stay uncommitted, retried with backoff until the topic takes them");
                        } else {
                            debug!(%error, topic, %tp, offset, retry_in_ms = backoff.as_millis() as u64, "letter refused; retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(DEAD_LETTER_RETRY.1);
                    }
                }
            }
        })
    }

    /// Kafka acknowledged one of the dead letters out.
    pub(super) fn landed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A letter landed on `topic`: if it was filed as refusing them, it takes them again.
fn writable_again(stats: &Stats, route: &str, topic: &str) {
    if !stats.unwritable_topics.read().get(route).is_some_and(|t| t.contains_key(topic)) {
        return;
    }
    let mut filed = stats.unwritable_topics.write();
    if let Some(topics) = filed.get_mut(route) {
        if topics.remove(topic).is_some() {
            info!(route, topic, "topic takes the route's letters again");
        }
        if topics.is_empty() {
            filed.remove(route);
        }
    }
}

/// A topic that refused a letter: which, to whom, and whether it is the retry topic.
struct Refused<'a> {
    topic: &'a str,
    principal: &'a str,
    retry: bool,
}

impl Refused<'_> {
    /// Why the topic refuses letters, with what to do about it (in the words an operator types
    /// into kafka-acls), from Kafka's error.
    fn why(&self, code: Option<RDKafkaErrorCode>, error: &str) -> String {
        let Refused { topic, principal, retry } = self;
        let field = if *retry { "routes[].retry.retry_topic" } else { "routes[].dead_letter_topic" };
        match code {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                format!("it does not exist: create it (the gateway never creates topics), or correct {field}")
            }
            // Kafka refuses the topic, or refuses the idempotent producer its id, which it gives
            // only to a principal that may write some topic (or holds IdempotentWrite, before
            // Kafka 3.0): the same grant mends both, so both are said in the same words, once.
            Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed) => {
                format!(
                    "the gateway may not write it (authorization failed for {principal}): grant {principal} Write and \
                     Describe on topic {topic}"
                )
            }
            _ => format!("Kafka refused them ({error})"),
        }
    }
}

/// Whether `key` is due to be said at `now` (once per [`SAY_EVERY`]); notes it if so.
fn due(said: &mut HashMap<(String, String), Instant>, key: (String, String), now: Instant) -> bool {
    let due = said.get(&key).is_none_or(|at| now.saturating_duration_since(*at) >= SAY_EVERY);
    if due {
        said.insert(key, now);
    }
    due
}

/// The topic a dead letter goes to: the retry topic for a retry, else the dead-letter topic.
fn topic_for(route: &RouteConfig, retry: bool) -> Option<String> {
    if retry {
        route.retry.retry_topic.clone()
    } else {
        route.dead_letter_topic.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_go_to_the_retry_topic_and_the_rest_to_the_dead_letter_topic() {
        let mut route = RouteConfig::new("r", &["t"]);
        assert_eq!((topic_for(&route, false), topic_for(&route, true)), (None, None));
        route.dead_letter_topic = Some("dlq".into());
        route.retry.retry_topic = Some("retries".into());
        assert_eq!(topic_for(&route, false).as_deref(), Some("dlq"));
        assert_eq!(topic_for(&route, true).as_deref(), Some("retries"));
    }

    #[test]
    fn a_refusing_topic_is_said_with_what_to_do_once_per_interval_per_reason() {
        let dlq = Refused { topic: "dlq", principal: "User:fanout", retry: false };
        let missing = dlq.why(Some(RDKafkaErrorCode::UnknownTopicOrPartition), "");
        assert!(missing.contains("does not exist") && missing.contains("routes[].dead_letter_topic"), "{missing}");
        let retries = Refused { topic: "retries", principal: "User:fanout", retry: true };
        let denied = retries.why(Some(RDKafkaErrorCode::TopicAuthorizationFailed), "");
        assert!(denied.contains("grant User:fanout Write and Describe on topic retries"), "{denied}");
        let no_id = dlq.why(Some(RDKafkaErrorCode::ClusterAuthorizationFailed), "");
        assert!(no_id.contains("grant User:fanout Write and Describe on topic dlq"), "{no_id}");
        assert!(dlq.why(None, "Local: Message timed out").contains("Message timed out"));
        let mut said = HashMap::new();
        let t0 = Instant::now();
        let key = ("dlq".to_string(), missing.clone());
        assert!(due(&mut said, key.clone(), t0));
        assert!(!due(&mut said, key.clone(), t0 + Duration::from_secs(9)), "a thousand letters, one line");
        assert!(due(&mut said, ("dlq".into(), denied), t0 + Duration::from_secs(1)), "another reason is news");
        assert!(due(&mut said, key, t0 + SAY_EVERY));
    }

    #[test]
    fn an_acknowledgement_never_takes_the_count_below_zero() {
        let mut letters = DeadLetterLoop::new(None);
        letters.landed();
        assert_eq!(letters.in_flight(), 0);
    }
}
