//! Failed deliveries: nacks, ack deadlines, and what comes next for each, by the route's retry
//! policy ([`crate::retry`] decides): another attempt after a backoff (the key waits with it),
//! the retry topic, or the dead-letter topic (handed to the dispatcher's dead-letter loop).

use super::*;

/// A message to produce to its route's dead-letter topic, or to its retry topic when
/// `retry_at` is set; its offset is done once Kafka has it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub pending: Pending,
    pub reason: String,
    /// Retry topic: when (ms since the epoch) the message may be delivered again.
    pub retry_at: Option<i64>,
}

/// Header of a retry-topic record: the attempts made so far.
pub const HEADER_ATTEMPTS: &str = "fanout-attempts";

/// Header of a retry-topic record: when it may be delivered again (ms since the epoch).
pub const HEADER_RETRY_AT: &str = "fanout-retry-at";

/// Why a delivery failed, as the registry's retry decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: String,
    /// The subscriber's own delay before the next attempt (nack `retry_after`).
    pub retry_after: Option<Duration>,
    /// The subscriber gave up on the message (nack DEAD_LETTER).
    pub dead_letter: bool,
}

impl Failure {
    pub fn retry(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), retry_after: None, dead_letter: false }
    }
}

/// A failed message waiting out its backoff; `owner` is the session it failed on, which keeps
/// the message's key meanwhile.
pub(super) struct Delayed {
    pub(super) owner: SessionId,
    pub(super) pending: Pending,
}

/// Never a session's id (they start at 1): the owner of a retry-topic message waiting for its time.
pub(super) const NO_SESSION: SessionId = 0;

/// The time now in Unix milliseconds (0 on a clock before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    let (_, value) = record.headers.iter().rev().find(|(k, _)| k == name)?;
    std::str::from_utf8(value.as_deref()?).ok()
}

impl Registry {
    /// Takes a delivery back from a session: retried after a backoff, or dead-lettered. Returns
    /// false if it was not in flight there.
    pub fn nack(&mut self, id: SessionId, ack_id: AckId, failure: Failure) -> bool {
        let Some(session) = self.sessions.get_mut(&id) else { return false };
        let Some(p) = session.in_flight.remove(&ack_id) else { return false };
        cohort_counts(&mut self.by_cohort, session.cohort.as_deref()).nacked += 1;
        self.dirty.insert(id);
        self.fail(id, p, failure);
        self.close_if_drained(id);
        true
    }

    /// Takes back every delivery whose ack deadline has passed, as failed attempts.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut expired = Vec::new();
        for (id, s) in &mut self.sessions {
            let before = expired.len();
            let passed = s.in_flight.extract_if(|_, p| p.deadline.is_some_and(|d| d <= now));
            expired.extend(passed.map(|(_, p)| (*id, p)));
            if expired.len() > before {
                cohort_counts(&mut self.by_cohort, s.cohort.as_deref()).expired += (expired.len() - before) as u64;
            }
        }
        let count = expired.len() as u64;
        let mut touched = BTreeSet::new();
        for (id, p) in expired {
            let timeout = self.route.config.ack_timeout_ms;
            self.fail(id, p, Failure::retry(format!("ack deadline of {timeout} ms passed")));
            touched.insert(id);
        }
        for id in touched {
            self.dirty.insert(id);
            self.close_if_drained(id);
        }
        self.expired += count;
        count
    }

    /// A delivery failed on session `id` (already out of its in-flight set): schedule the next
    /// attempt after a backoff, or hand it to the dead-letter topic.
    pub(super) fn fail(&mut self, id: SessionId, mut p: Pending, failure: Failure) {
        let config = &self.route.config;
        if config.delivery == DeliveryMode::AtMostOnce {
            // Already committed: it is not delivered again, whatever happened to it.
            self.release_key(p.hash);
            self.dropped.push(p);
            return;
        }
        if p.replay.is_none() && self.revoked.contains(&p.record.tp) {
            // Its partition is going to another owner, which delivers it again.
            self.release_key(p.hash);
            return;
        }
        let next = if failure.dead_letter {
            Next::Exhausted
        } else {
            retry::after_failure(&config.retry, p.attempt, failure.retry_after, rand::random::<f64>())
        };
        let next = match next {
            Next::Exhausted if config.dead_letter_topic.is_some() => {
                let cohort = self.cohort_of(id).map(str::to_string);
                cohort_counts(&mut self.by_cohort, cohort.as_deref()).dead_lettered += 1;
                self.release_key(p.hash);
                self.dead_letters.push(DeadLetter { pending: p, reason: failure.reason, retry_at: None });
                return;
            }
            Next::Exhausted => {
                // Nowhere to put it: keep trying, as slowly as the policy allows.
                self.exhausted_without_dlq += 1;
                let slowest = retry::backoff(&config.retry, u32::MAX, rand::random::<f64>());
                Next::Retry { delay: slowest, attempt: p.attempt.saturating_add(1) }
            }
            retry => retry,
        };
        let Next::Retry { delay, attempt } = next else { return };
        if self.route.config.retry.retry_topic.is_some() {
            // Through the retry topic: this attempt is done once Kafka has the retry.
            self.release_key(p.hash);
            let retry_at = now_ms().saturating_add(delay.as_millis() as i64);
            self.dead_letters.push(DeadLetter { pending: p, reason: failure.reason, retry_at: Some(retry_at) });
            return;
        }
        p.attempt = attempt;
        p.deadline = None;
        self.schedule(id, p, delay);
    }

    /// Holds a failed message for `delay`, its key with it: the key's queued messages at the
    /// owner step back into the parked line behind it, so they are not delivered before it.
    pub(super) fn schedule(&mut self, owner: SessionId, p: Pending, delay: Duration) {
        let route = &mut self.route;
        if route.ordered() {
            if let Some(k) = route.keys.get_mut(&p.hash) {
                k.delayed += 1;
            }
            if let Some(s) = self.sessions.get_mut(&owner) {
                let hash = p.hash;
                let mut behind = Vec::new();
                s.queue.retain(|q| {
                    if q.hash == hash {
                        behind.push(q.clone());
                        false
                    } else {
                        true
                    }
                });
                if !behind.is_empty() {
                    for _ in &behind {
                        route.release_one(hash);
                    }
                    let parked = route.parked.entry(hash).or_default();
                    for q in behind.into_iter().rev() {
                        parked.push_front(q);
                    }
                }
            }
        }
        let seq = self.next_delayed;
        self.next_delayed += 1;
        self.retries_scheduled += 1;
        self.delayed.push(Reverse((Instant::now() + delay, seq)));
        self.delayed_items.insert(seq, Delayed { owner, pending: p });
    }

    /// Puts failed messages whose backoff is over back in line: first in line at their
    /// owner if it still has their key, else wherever their key goes now.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(Reverse((due, seq))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            let Some(Delayed { owner, pending: p }) = self.delayed_items.remove(&seq) else { continue };
            let hash = p.hash;
            let route = &mut self.route;
            if route.ordered() {
                if let Some(k) = route.keys.get_mut(&hash) {
                    k.delayed = k.delayed.saturating_sub(1);
                }
            }
            let owner_keeps =
                route.target(hash) == Some(owner) && self.sessions.get(&owner).is_some_and(|s| !s.draining);
            if owner_keeps {
                if let Some(s) = self.sessions.get_mut(&owner) {
                    s.queue.push_front(p);
                    self.dirty.insert(owner);
                }
            } else if route.ordered() {
                let free = route.release_one(hash);
                route.parked.entry(hash).or_default().push_front(p);
                if free {
                    self.unpark(hash);
                }
            } else {
                self.assign(p, true);
            }
            // The key may have been waiting only for this backoff.
            if self.route.keys.get(&hash).is_none_or(|k| k.outstanding == 0) {
                self.unpark(hash);
            }
        }
    }

    /// Messages to dead-letter since the last call.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Failed messages waiting out a backoff.
    pub fn delayed(&self) -> usize {
        self.delayed_items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn nack_redelivers_with_next_attempt() {
        let mut reg = Registry::new(route("r", 10));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 7, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/7"), Failure::retry("x")));
        assert!(!reg.nack(a.session, reg.handle(a.session, "t/0/7"), Failure::retry("x")), "no longer in flight");
        reg.release_due(later(60));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!((again[0].offset, again[0].attempt), (7, 2));
    }

    #[test]
    fn a_nacked_delivery_waits_out_its_backoff_and_its_keys_later_messages_wait_behind_it() {
        let mut reg = Registry::new(retrying_route(1, 5, None));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1);
        }
        reg.dispatch(record(0, 3, "other"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![0]);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("busy")));
        reg.release_due(Instant::now());
        reg.flush();
        // Backoff is at least half of 1 s: offset 0 is not back yet; key k's 1 and 2 must not
        // overtake it, but the other key's message may go.
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3]);
        assert_eq!(reg.delayed(), 1);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/3")]);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "k waits for its retry");
        reg.release_due(later(2));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!(again.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1]);
        assert_eq!(reg.retries_scheduled, 1);
    }

    #[test]
    fn a_subscribers_retry_after_decides_the_delay() {
        let mut reg = Registry::new(retrying_route(5, 5, None));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        let failure = Failure { reason: "later".into(), retry_after: Some(Duration::from_secs(3)), dead_letter: false };
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), failure));
        reg.release_due(later(2));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "the route's 1 s backoff does not apply");
        reg.release_due(later(4));
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
    }

    #[test]
    fn the_last_attempt_goes_to_the_dead_letter_topic_and_frees_its_key() {
        let mut reg = Registry::new(retrying_route(5, 2, Some("dlq")));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.dispatch(record(0, 1, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("bad")));
        reg.release_due(later(2));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("still bad")));
        let letters = reg.take_dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].pending.record.offset, letters[0].pending.attempt), (0, 2));
        assert_eq!(letters[0].reason, "still bad");
        assert_eq!(reg.delayed(), 0);
        // A dead-lettered message is settled as far as the subscriber goes: later messages of
        // its key flow.
        reg.dispatch(record(0, 2, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_dead_letter_nack_skips_the_remaining_attempts() {
        let mut reg = Registry::new(retrying_route(5, 5, Some("dlq")));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        let failure = Failure { reason: "unparseable".into(), retry_after: None, dead_letter: true };
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), failure));
        let letters = reg.take_dead_letters();
        assert_eq!((letters.len(), letters[0].pending.attempt), (1, 1));
    }

    #[test]
    fn without_a_dead_letter_topic_exhausted_messages_keep_retrying_at_the_longest_backoff() {
        let mut reg = Registry::new(retrying_route(5, 1, None));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("bad")));
        assert!(reg.take_dead_letters().is_empty());
        assert_eq!(reg.exhausted_without_dlq, 1);
        reg.release_due(later(1));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "at least half of the 4 s max backoff");
        reg.release_due(later(5));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn an_expired_ack_deadline_redelivers_with_the_next_attempt() {
        let mut config = retrying_route(5, 5, None);
        config.ack_timeout_ms = 10_000;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        assert_eq!(reg.expire(later(5)), 0);
        assert_eq!(reg.expire(later(11)), 1);
        assert_eq!(reg.in_flight(), 0);
        reg.release_due(later(20));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
        // The late ack of the first attempt finds nothing; the second attempt's ack settles it.
        assert_eq!(reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]).settled.len(), 1);
        assert_eq!(reg.expired, 1);
    }

    #[test]
    fn a_poison_message_that_keeps_killing_its_subscribers_is_dead_lettered() {
        let mut reg = Registry::new(retrying_route(5, 2, Some("dlq")));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        reg.unregister(a.session);
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
        reg.unregister(b.session);
        assert_eq!(reg.take_dead_letters().len(), 1);
    }
}
