//! The dead-letter loop: exhausted or refused messages are produced to the route's dead-letter
//! (or retry) topic, retried with backoff until Kafka has them; then their origin offset is done.

use std::time::Duration;

use tracing::{debug, warn};

use super::{Dispatcher, Internal};
use crate::kafka::TopicPartition;
use crate::stats::Stats;
use crate::subscriptions::{DeadLetter, ReplayTag};

/// Backoff between attempts to produce a dead letter that Kafka refused.
const DEAD_LETTER_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

impl Dispatcher {
    /// Produces dead letters; each settles its origin offset once Kafka acknowledges it.
    /// A refused produce is tried again with backoff until it succeeds or the gateway stops
    /// (then the message is redelivered by whoever owns the partition next).
    pub(super) fn send_dead_letters(&mut self, letters: Vec<DeadLetter>) {
        for letter in letters {
            let route = self.registry.route_config();
            let retry = letter.retry_at.is_some();
            let topic = if retry { route.retry.retry_topic.clone() } else { route.dead_letter_topic.clone() };
            let (Some(topic), Some(producer)) = (topic, self.dead_letter_producer.clone()) else {
                // Config validation and start-up make this unreachable; never drop silently.
                warn!(route = route.name, "dead letter without a dead-letter topic or producer; it stays uncommitted");
                continue;
            };
            let route = route.name.clone();
            let tp = letter.pending.record.tp.clone();
            let (offset, epoch, replay) = (letter.pending.record.offset, letter.pending.epoch, letter.pending.replay);
            debug!(%tp, offset, attempts = letter.pending.attempt, reason = letter.reason, topic, "dead-lettering");
            self.dead_letters_in_flight += 1;
            let stats = self.stats.clone();
            self.tasks.spawn(async move {
                let mut backoff = DEAD_LETTER_RETRY.0;
                loop {
                    match producer.send(&topic, &route, &letter).await {
                        Ok(()) => return Internal::DeadLettered { tp, offset, epoch, retry, replay },
                        Err(error) => {
                            Stats::bump(&stats.dead_letter_failures, 1);
                            warn!(%error, topic, %tp, offset, retry_in_ms = backoff.as_millis() as u64,
                                "cannot produce a dead letter; its offset stays uncommitted; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(DEAD_LETTER_RETRY.1);
                        }
                    }
                }
            });
        }
    }

    /// Kafka acknowledged a dead letter (or a retry-topic record): its origin offset is done.
    pub(super) fn on_dead_lettered(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        epoch: u64,
        retry: bool,
        replay: Option<ReplayTag>,
    ) {
        self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_sub(1);
        Stats::bump(if retry { &self.stats.retried_via_topic } else { &self.stats.dead_lettered }, 1);
        if let Some(tag) = replay {
            self.replay_settled(tag);
            return;
        }
        // If revoked meanwhile, the next owner delivers it again (and may dead-letter it again).
        if let Some(state) = self.current(tp, epoch) {
            state.tracker.ack(offset);
        }
    }
}
