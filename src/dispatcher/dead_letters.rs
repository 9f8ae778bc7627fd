//! The dead-letter loop: exhausted or refused messages are produced to the route's dead-letter
//! (or retry) topic, retried with backoff until Kafka has them; then their origin offset is done.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::config::RouteConfig;
use crate::dead_letters::DeadLetterProducer;
use crate::kafka::TopicPartition;
use crate::stats::Stats;
use crate::subscriptions::{DeadLetter, ReplayTag};

/// Backoff between attempts to produce a dead letter that Kafka refused.
const DEAD_LETTER_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

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

/// The route's dead-letter producer and the dead letters it has out.
#[derive(Default)]
pub(super) struct DeadLetterLoop {
    producer: Option<DeadLetterProducer>,
    /// Dead letters produced but not yet acknowledged by Kafka.
    in_flight: usize,
}

impl DeadLetterLoop {
    pub(super) fn new(producer: Option<DeadLetterProducer>) -> Self {
        Self { producer, in_flight: 0 }
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
    ) -> Option<impl Future<Output = Produced> + Send + 'static> {
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
        Some(async move {
            let mut backoff = DEAD_LETTER_RETRY.0;
            loop {
                match producer.send(&topic, &route, &letter).await {
                    Ok(()) => return Produced { tp, offset, epoch, retry, replay },
                    Err(error) => {
                        Stats::bump(&stats.dead_letter_failures, 1);
                        warn!(%error, topic, %tp, offset, retry_in_ms = backoff.as_millis() as u64,
                            "cannot produce a dead letter; its offset stays uncommitted; retrying");
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
    fn an_acknowledgement_never_takes_the_count_below_zero() {
        let mut letters = DeadLetterLoop::new(None);
        letters.landed();
        assert_eq!(letters.in_flight(), 0);
    }
}
