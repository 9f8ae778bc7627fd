//! Placement: where each message goes, and goes again, across the route's members, the key
//! table and the retry queue.
//!
//! Records enter here ([`Registry::dispatch`]). A key has one owner at a time and moves only
//! once its old owner has settled everything of it (drain before move). A failed delivery gets
//! what the route's retry policy says ([`crate::retry`] decides): another attempt after a
//! backoff (the key waits with it), the retry topic, or the dead-letter topic (handed to the
//! dispatcher's dead-letter loop). Revoked partitions are withheld while they drain, then
//! purged everywhere. Reloads, relabelled pods and pods gone reroute with drain before move, or
//! drain and close a session that no longer qualifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::retrying::{header, now_ms, Delayed, NO_SESSION};
use super::route::RouteState;
use super::throttle::{session_throttle, Throttle};
use super::{
    cohort_counts, format_labels, AckId, CloseReason, DeadLetter, Failure, Pending, Registry, ReplayTag, SessionId,
    HEADER_ATTEMPTS, HEADER_OVERLOADS, HEADER_RETRY_AT,
};
use crate::config::{DeliveryMode, RouteConfig};
use crate::kafka::{Record, TopicPartition};
use crate::retry::{self, Next};

// === impl Registry: placement ===

impl Registry {
    /// Routes a newly received record.
    pub fn dispatch(&mut self, record: Arc<Record>, epoch: u64) {
        self.dispatch_keyed(record, epoch, None);
    }

    /// Routes a newly received record of an effectively-once route, with its idempotency key.
    pub fn dispatch_keyed(&mut self, record: Arc<Record>, epoch: u64, idempotency_key: Option<Arc<str>>) {
        let hash = self.route.hash_of(&record);
        if !self.route.config.retries_through(&record.tp.topic) {
            self.assign(Pending::new(record, 1, epoch, idempotency_key, hash, None), false);
            return;
        }
        // A retry: the attempt after those its headers count, not before its time.
        let made: u32 = header(&record, HEADER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(1);
        let retry_at: Option<i64> = header(&record, HEADER_RETRY_AT).and_then(|v| v.parse().ok());
        let overloads: u32 = header(&record, HEADER_OVERLOADS).and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut p = Pending::new(record, made.saturating_add(1), epoch, idempotency_key, hash, None);
        p.overloads = overloads;
        let wait = retry_at.map(|at| at - now_ms()).filter(|ms| *ms > 0);
        match wait {
            // No owner holds a retried message's key: it waits on its own.
            Some(ms) => self.schedule(NO_SESSION, p, Duration::from_millis(ms as u64)),
            None => self.assign(p, false),
        }
    }

    /// Routes a record of an operator's replay (see [`ReplayTag`]); its key's order holds
    /// among live and replayed messages alike.
    pub fn dispatch_replay(&mut self, record: Arc<Record>, tag: ReplayTag) {
        let hash = self.route.hash_of(&record);
        let p = Pending::new(record, 1, 0, None, hash, Some(tag));
        self.assign(p, false);
    }

    fn assign(&mut self, p: Pending, front: bool) {
        if p.replay.is_none() && self.revoked.contains(&p.record.tp) {
            return; // its partition's next owner delivers it
        }
        let target = self.route.target(p.hash);
        let ordered = self.route.ordered();
        if ordered && self.keys.must_park(p.hash, target) {
            // Drain before move: wait until the key's messages at its old owner settle.
            self.keys.park(p, front);
            return;
        }
        let Some(id) = target else {
            let unassigned = &mut self.route.unassigned;
            if front {
                unassigned.push_front(p)
            } else {
                unassigned.push_back(p)
            }
            return;
        };
        if ordered {
            self.keys.take(p.hash, id);
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            if front {
                s.queue.push_front(p)
            } else {
                s.queue.push_back(p)
            }
            self.dirty.insert(id);
        }
    }

    /// Takes one settled or withdrawn message of `hash` off its key's count; once the key has
    /// nothing outstanding, its parked messages go.
    pub(super) fn release_key(&mut self, hash: u64) {
        if self.keys.release_one(hash) {
            self.unpark(hash);
        }
    }

    /// A key's old owner settled everything: its parked messages go to its new target.
    pub(super) fn unpark(&mut self, hash: u64) {
        if let Some(q) = self.keys.unpark(hash) {
            for p in q {
                self.assign(p, false);
            }
        }
    }

    /// Routes again every queued, parked or unassigned message plus `extra`, oldest first per
    /// partition, after membership, labels or weights changed.
    pub(super) fn reroute(&mut self, extra: Vec<Pending>) {
        let mut all = extra;
        all.extend(self.route.unassigned.drain(..));
        all.extend(self.keys.take_parked());
        for s in self.sessions.values_mut() {
            for p in s.queue.drain(..) {
                self.keys.release_one(p.hash);
                all.push(p);
            }
        }
        all.sort_by(|a, b| a.order().cmp(&b.order()));
        for p in all {
            self.assign(p, false);
        }
    }

    /// Takes a delivery back from a session: retried after a backoff, or dead-lettered. Returns
    /// false if it was not in flight there.
    pub fn nack(&mut self, id: SessionId, ack_id: AckId, failure: Failure) -> bool {
        let Some(session) = self.sessions.get_mut(&id) else { return false };
        let Some(p) = session.in_flight.remove(&ack_id) else { return false };
        cohort_counts(&mut self.by_cohort, session.cohort.as_deref()).nacked += 1;
        if failure.overloaded {
            if let Some(a) = &mut session.adaptive {
                a.overloaded();
            }
        }
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
                if let Some(a) = &mut s.adaptive {
                    a.overloaded();
                }
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
    fn fail(&mut self, id: SessionId, mut p: Pending, failure: Failure) {
        let config = &self.route.config;
        if config.delivery == DeliveryMode::AtMostOnce {
            // Already committed: it is not delivered again, whatever happened to it.
            self.release_key(p.hash);
            self.staging.lose(p);
            return;
        }
        if p.replay.is_none() && self.revoked.contains(&p.record.tp) {
            // Its partition is going to another owner, which delivers it again.
            self.release_key(p.hash);
            return;
        }
        if failure.overloaded {
            p.overloads = p.overloads.saturating_add(1);
        }
        let next = if failure.dead_letter {
            Next::Exhausted
        } else {
            // Attempts the service refused as overloaded are not the message's failures.
            let jitter = rand::random::<f64>();
            retry::after_failure_sparing(&config.retry, p.attempt, p.overloads, failure.retry_after, jitter)
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

    /// A retry the retry topic refused for good (too large for it): it waits out the rest of
    /// its backoff here, as on a route without a retry topic, then goes out as its next attempt.
    /// Its offset stays uncommitted meanwhile.
    pub fn retry_here(&mut self, letter: DeadLetter) {
        let DeadLetter { pending: mut p, retry_at, .. } = letter;
        if p.replay.is_none() && self.revoked.contains(&p.record.tp) {
            return; // its partition's next owner delivers it
        }
        p.attempt = p.attempt.saturating_add(1);
        p.deadline = None;
        let wait = retry_at.map_or(0, |at| at.saturating_sub(now_ms()).max(0));
        // Its key was let go when it left for the retry topic: no owner holds it.
        self.schedule(NO_SESSION, p, Duration::from_millis(wait as u64));
    }

    /// Holds a failed message for `delay`, its key with it: the key's queued messages at the
    /// owner step back into the parked line behind it, so they are not delivered before it.
    fn schedule(&mut self, owner: SessionId, p: Pending, delay: Duration) {
        if self.route.ordered() {
            self.keys.retry_started(p.hash);
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
                        self.keys.release_one(hash);
                    }
                    self.keys.park_in_front(hash, behind);
                }
            }
        }
        self.retries_scheduled += 1;
        self.retries.push(owner, p, Instant::now() + delay);
    }

    /// Puts failed messages whose backoff is over back in line: first in line at their
    /// owner if it still has their key, else wherever their key goes now.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(delayed) = self.retries.pop_due(now) {
            let holds_key = delayed.holds_key();
            let Delayed { owner, pending: p } = delayed;
            let hash = p.hash;
            let ordered = self.route.ordered();
            if ordered {
                self.keys.retry_ended(hash);
            }
            let owner_keeps =
                self.route.target(hash) == Some(owner) && self.sessions.get(&owner).is_some_and(|s| !s.draining);
            if owner_keeps {
                if let Some(s) = self.sessions.get_mut(&owner) {
                    s.queue.push_front(p);
                    self.dirty.insert(owner);
                }
            } else if ordered {
                let free = holds_key && self.keys.release_one(hash);
                self.keys.park(p, true);
                if free {
                    self.unpark(hash);
                }
            } else {
                self.assign(p, true);
            }
            // The key may have been waiting only for this backoff.
            if self.keys.is_settled(hash) {
                self.unpark(hash);
            }
        }
    }

    /// Takes the live message at `offset` of `tp` (received under assignment `epoch`) off its
    /// subscriber, for a head-of-line rescue, with the attempts made of it: out on a stream (a
    /// later ack of it is unknown), or waiting out a backoff after failing there. Its key is
    /// released, so the key's next messages go on. None when it is elsewhere: settled, on its
    /// way to a topic, or never delivered yet (queued behind a slow subscriber or a rate
    /// limit, a retry-topic record waiting for its time): moving those would judge a message
    /// that was never tried.
    pub fn take_live(&mut self, tp: &TopicPartition, offset: i64, epoch: u64) -> Option<(Pending, u32)> {
        let is =
            |p: &Pending| p.replay.is_none() && p.epoch == epoch && p.record.offset == offset && p.record.tp == *tp;
        let out_on = self
            .sessions
            .iter()
            .find_map(|(id, s)| s.in_flight.iter().find(|(_, p)| is(p)).map(|(ack_id, _)| (*id, *ack_id)));
        if let Some((id, ack_id)) = out_on {
            let p = self.sessions.get_mut(&id).and_then(|s| s.in_flight.remove(&ack_id))?;
            self.release_key(p.hash);
            self.dirty.insert(id);
            self.close_if_drained(id);
            let made = p.attempt;
            return Some((p, made));
        }
        let failed_here = |d: &Delayed| d.holds_key() && is(&d.pending);
        let Delayed { pending: p, .. } = self.retries.remove_where(failed_here).into_iter().next()?;
        if self.route.ordered() {
            self.keys.retry_ended(p.hash);
        }
        self.release_key(p.hash);
        // Waiting out its backoff, it already carries the number of the attempt to come.
        let made = p.attempt.saturating_sub(1).max(1);
        Some((p, made))
    }

    /// Messages to dead-letter since the last call.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Failed messages waiting out a backoff.
    pub fn delayed(&self) -> usize {
        self.retries.len()
    }

    /// Drops every message of these partitions (revoked): queued, parked, unassigned or in
    /// flight. Acks that arrive later for them are unknown.
    pub fn purge(&mut self, partitions: &[TopicPartition]) -> usize {
        let dropped = self.remove_of(partitions, true);
        for tp in partitions {
            self.revoked.remove(tp);
        }
        dropped
    }

    /// Starts the drain of partitions being revoked: their messages not yet sent are dropped
    /// (the next owner delivers them), nothing of theirs is sent from now on, and their
    /// in-flight deliveries stay until acked, failed or purged. Returns how many were dropped.
    pub fn withhold(&mut self, partitions: &[TopicPartition]) -> usize {
        self.revoked.extend(partitions.iter().cloned());
        self.remove_of(partitions, false)
    }

    /// Deliveries of these partitions out and not yet settled.
    pub fn in_flight_of(&self, partitions: &[TopicPartition]) -> usize {
        let of = |p: &&Pending| p.replay.is_none() && partitions.contains(&p.record.tp);
        self.sessions.values().map(|s| s.in_flight.values().filter(of).count()).sum()
    }

    /// Removes the messages of `partitions` waiting anywhere, and with `in_flight` those out
    /// on streams too; their keys are released and what is left is routed again.
    fn remove_of(&mut self, partitions: &[TopicPartition], in_flight: bool) -> usize {
        // Replayed messages stay: the replay reads its range whoever owns the partition.
        let gone = |p: &Pending| p.replay.is_none() && partitions.contains(&p.record.tp);
        let mut dropped = 0;
        for d in self.retries.remove_where(|d| gone(&d.pending)) {
            self.keys.retry_ended(d.pending.hash);
            if d.holds_key() {
                self.keys.release_one(d.pending.hash);
            }
            dropped += 1;
        }
        self.dead_letters.retain(|d| !gone(&d.pending));
        let unassigned = &mut self.route.unassigned;
        let before = unassigned.len();
        unassigned.retain(|p| !gone(p));
        dropped += before - unassigned.len();
        dropped += self.keys.drop_parked(gone);
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let mut removed = Vec::new();
            s.queue.retain(|p| {
                if gone(p) {
                    removed.push(p.hash);
                    false
                } else {
                    true
                }
            });
            if in_flight {
                s.in_flight.retain(|_, p| {
                    if gone(p) {
                        removed.push(p.hash);
                        false
                    } else {
                        true
                    }
                });
            }
            dropped += removed.len();
            for hash in removed {
                self.keys.release_one(hash);
            }
            self.dirty.insert(id);
            self.close_if_drained(id);
        }
        self.reroute(Vec::new());
        dropped
    }

    /// New settings for the route (weights, selector, windows, empty-cohort policy): queued
    /// messages are routed again under them, keys move with drain before move. False (and
    /// nothing changed) when `config` names another route.
    pub fn update_route(&mut self, config: &RouteConfig) -> bool {
        if config.name != self.route.config.name {
            return false;
        }
        let mut next = RouteState::new(config.clone());
        // Ordering and topics are fixed for the gateway's lifetime (keys in flight were
        // hashed under the old ordering; topics are the consumer's subscription).
        next.config.ordering = self.route.config.ordering;
        next.config.topics = self.route.config.topics.clone();
        let old = std::mem::replace(&mut self.route, next);
        let now = Instant::now();
        self.throttle = Throttle::carried(self.throttle.take(), self.route.config.rate_limit.as_ref(), now);
        // Whatever waited for the old limits is judged again under the new ones.
        self.dirty.extend(self.sessions.keys().copied());
        self.route.unassigned = old.unassigned;
        let mut unselected = Vec::new();
        for id in old.members {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if !self.route.selects(&s.subscriber.labels) {
                unselected.push(id);
                continue;
            }
            s.cohort = self.route.cohort_of(&s.subscriber.labels);
            s.throttle = session_throttle(&s.subscriber, &self.route.config, s.throttle.take(), now);
            let adaptive = self.route.config.window == crate::config::WindowMode::Adaptive;
            match (&mut s.adaptive, adaptive) {
                (Some(a), true) => a.set_deadline(Duration::from_millis(self.route.config.ack_timeout_ms)),
                (current, _) => *current = super::adaptive_for(&self.route.config, s.window),
            }
            let cohort = s.cohort.clone();
            self.route.add_member(id, cohort.as_ref());
        }
        self.reroute(Vec::new());
        for id in unselected {
            let reason = CloseReason::NotSelected("its labels no longer match the route's selector".into());
            self.drain_with(id, Some(reason));
        }
        true
    }

    /// A subscriber's labels changed (its pod was relabelled): it may change cohort, or leave
    /// the route's selector, in which case it is drained and closed.
    pub fn update_labels(&mut self, id: SessionId, labels: BTreeMap<String, String>) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.subscriber.labels == labels {
            return;
        }
        s.subscriber.labels = labels;
        if s.draining {
            return;
        }
        if !self.route.selects(&s.subscriber.labels) {
            let why = format!(
                "its labels {} no longer match selector `{}`",
                format_labels(&s.subscriber.labels),
                self.route.selector_text()
            );
            self.drain_with(id, Some(CloseReason::NotSelected(why)));
            return;
        }
        let cohort = self.route.cohort_of(&s.subscriber.labels);
        if cohort != s.cohort {
            s.cohort = cohort.clone();
            let route = &mut self.route;
            route.remove_member(id);
            route.add_member(id, cohort.as_ref());
            self.reroute(Vec::new());
        }
    }

    /// Drains and closes a session whose pod went away. Returns false when it was already
    /// on its way out for that reason (pod events repeat; the drain happens once).
    pub fn evict(&mut self, id: SessionId, why: String) -> bool {
        let already = self.sessions.get(&id).is_none_or(|s| s.draining && s.close_reason.is_some());
        if already {
            return false;
        }
        self.drain_with(id, Some(CloseReason::NotSelected(why)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{RegisterError, SessionMessage, Subscriber};
    use super::*;
    use crate::config::EmptyCohort;

    #[test]
    fn an_overloaded_nack_halves_an_adaptive_window_and_uses_up_no_attempt() {
        let mut config = retrying_route(100, 1, Some("dlq"));
        config.window = crate::config::WindowMode::Adaptive;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 100, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 3);
        assert_eq!(reg.subscribers()[0].window, 100);
        let overloaded = Failure { overloaded: true, ..Failure::retry("busy") };
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), overloaded));
        assert_eq!(reg.subscribers()[0].window, 50, "halved at once");
        assert_eq!((reg.delayed(), reg.take_dead_letters().len()), (1, 0), "retried, not dead-lettered");
        // A plain failure of a message with one attempt allowed is dead-lettered.
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/1"), Failure::retry("bad")));
        assert_eq!(reg.take_dead_letters().len(), 1);
        // The retried one comes back as attempt 2.
        reg.release_due(Instant::now() + Duration::from_secs(10));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!(again.iter().map(|g| (g.offset, g.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
    }

    #[test]
    fn only_a_message_tried_here_is_taken_off_its_subscriber_and_its_key_goes_on() {
        let mut reg = Registry::new(retrying_route(1, 5, None));
        let mut a = reg.register("r", 1, sub("a")).expect("ok");
        let tp = record(0, 0, "k").tp.clone();
        // Offset 0 goes out (window 1); 1 and 2, same key, queue behind it.
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|g| g.offset).collect::<Vec<_>>(), vec![0]);
        assert!(reg.take_live(&tp, 1, 1).is_none(), "never delivered: not judged");
        // Nacked: waiting out its backoff, its key with it.
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("no")));
        assert_eq!(reg.delayed(), 1);
        assert!(reg.take_live(&tp, 0, 2).is_none(), "another assignment's offset 0 is not this one");
        let (taken, made) = reg.take_live(&tp, 0, 1).expect("taken out of its backoff");
        assert_eq!((taken.record.offset, made, reg.delayed()), (0, 1, 0), "one attempt made, not the coming one");
        reg.release_due(Instant::now() + Duration::from_secs(10));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|g| g.offset).collect::<Vec<_>>(), vec![1], "the key goes on");
        // In flight: taken, a later ack of it unknown.
        let handle = reg.handle(a.session, "t/0/1");
        assert_eq!(reg.take_live(&tp, 1, 1).map(|(p, made)| (p.record.offset, made)), Some((1, 1)));
        assert!(reg.take_live(&tp, 1, 1).is_none(), "once only");
        assert_eq!(reg.ack(a.session, &[handle]).unknown, 1);
        reg.flush();
        assert_eq!(
            received(&mut a.outbox).iter().map(|g| g.offset).collect::<Vec<_>>(),
            vec![2],
            "its window place freed"
        );
    }

    #[test]
    fn messages_wait_for_a_member_and_keys_stick() {
        let mut reg = Registry::new(route("r", 100));
        for o in 0..50 {
            reg.dispatch(record(0, o, &format!("k{}", o % 5)), 1);
        }
        reg.flush();
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        reg.flush();
        let to_a = received(&mut a.outbox);
        let to_b = received(&mut b.outbox);
        assert_eq!(to_a.len() + to_b.len(), 50);
        for d in &to_a {
            assert!(!to_b.iter().any(|e| e.key == d.key), "a key went to both members");
        }
        // Order within a key holds.
        for k in 0..5 {
            let key = Bytes::from(format!("k{k}"));
            let offsets: Vec<i64> = to_a.iter().chain(&to_b).filter(|d| d.key == key).map(|d| d.offset).collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        }
    }

    #[test]
    fn a_relabelled_subscribers_keys_move_only_after_its_in_flight_messages_settle() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 100, 0));
        let mut a = reg.register("r", 10, labelled("a", "blue")).expect("ok");
        let mut b = reg.register("r", 10, labelled("b", "green")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.dispatch(record(0, 1, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        // The operator flips the weights: key k now belongs to green, but two of its messages
        // are in flight at blue.
        reg.update_route(&split_route(EmptyCohort::Hold, 0, 100));
        reg.dispatch(record(0, 2, "k"), 1);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "k waits for blue to settle");
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "one still in flight");
        reg.ack(a.session, &[reg.handle(a.session, "t/0/1")]);
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
        // And a label change moves keys the same way.
        reg.update_labels(b.session, [("track".to_string(), "blue".to_string())].into_iter().collect());
        reg.dispatch(record(0, 3, "k"), 1);
        reg.flush();
        assert!(
            received(&mut a.outbox).is_empty() && received(&mut b.outbox).is_empty(),
            "green holds; nothing to blue"
        );
        assert_eq!(reg.held(), 1);
    }

    #[test]
    pub(super) fn weights_send_each_cohort_its_share_only() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 0, 100));
        let mut blue = reg.register("r", 100, labelled("b", "blue")).expect("ok");
        let mut green = reg.register("r", 100, labelled("g", "green")).expect("ok");
        for o in 0..100 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert!(received(&mut blue.outbox).is_empty(), "blue has weight 0");
        let got = received(&mut green.outbox);
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|d| d.cohort == "green"));
    }

    #[test]
    pub(super) fn empty_cohort_hold_keeps_its_share_until_a_member_comes() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 50, 50));
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        let to_blue = received(&mut blue.outbox).len();
        assert!(to_blue > 50 && to_blue < 150, "{to_blue}");
        assert_eq!(reg.held(), 200 - to_blue, "green's share waits, nothing goes to blue");
        let held: BTreeMap<&str, usize> = [("green", 200 - to_blue)].into_iter().collect();
        assert_eq!(reg.held_by_cohort(), held, "the held messages are green's");
        let green_row = reg.cohorts().into_iter().find(|c| c.name == "green").expect("green");
        assert_eq!((green_row.subscribers, green_row.held), (0, 200 - to_blue));
        let mut green = reg.register("r", 200, labelled("g", "green")).expect("ok");
        reg.flush();
        assert_eq!(received(&mut green.outbox).len(), 200 - to_blue);
        assert_eq!(reg.held(), 0);
        assert!(reg.held_by_cohort().is_empty());
    }

    #[test]
    pub(super) fn empty_cohort_spill_sends_its_share_to_the_others() {
        let mut reg = Registry::new(split_route(EmptyCohort::Spill, 50, 50));
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert_eq!(received(&mut blue.outbox).len(), 200);
    }

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
        let failure = Failure { retry_after: Some(Duration::from_secs(3)), ..Failure::retry("later") };
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
    fn a_retry_the_retry_topic_refuses_waits_here_and_goes_out_as_its_next_attempt() {
        let mut config = retrying_route(5, 5, Some("dlq"));
        config.retry.retry_topic = Some("retries".into());
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("busy")));
        let mut letters = reg.take_dead_letters();
        assert_eq!(letters.len(), 1);
        assert!(letters[0].retry_at.is_some(), "bound for the retry topic");
        reg.retry_here(letters.remove(0));
        assert_eq!(reg.delayed(), 1, "waits out its backoff here");
        reg.release_due(Instant::now());
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "not before its time (at least half of 1 s)");
        reg.release_due(later(2));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!(again.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        assert!(reg.take_dead_letters().is_empty());
    }

    #[test]
    fn a_dead_letter_nack_skips_the_remaining_attempts() {
        let mut reg = Registry::new(retrying_route(5, 5, Some("dlq")));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        let failure = Failure { dead_letter: true, ..Failure::retry("unparseable") };
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
    fn an_extended_delivery_is_taken_back_at_its_new_deadline_and_never_past_its_lease() {
        use super::super::{AckId, Extended};
        let mut config = retrying_route(5, 5, None);
        config.ack_timeout_ms = 10_000;
        config.max_lease_ms = 30_000;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        let id = reg.handle(a.session, "t/0/0");
        // At 8 s, 10 s more: the first deadline (10 s) passes without taking it back.
        let extended = reg.extend(a.session, &[id, AckId(999)], Duration::from_secs(10), later(8));
        assert_eq!(extended, Extended { moved: 1, unknown: 1 }, "an id not in flight is counted");
        assert_eq!(reg.expire(later(11)), 0);
        // At 17 s, an hour more: cut to the lease's end, 30 s after it was sent.
        reg.extend(a.session, &[id], Duration::from_secs(3_600), later(17));
        assert_eq!(reg.expire(later(29)), 0);
        assert_eq!(reg.expire(later(31)), 1, "taken back at the lease's end");
        let late = reg.extend(a.session, &[id], Duration::from_secs(1), later(32));
        assert_eq!(late, Extended { moved: 0, unknown: 1 }, "no longer in flight");
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

    #[test]
    fn revoking_a_partition_drops_its_retrying_messages() {
        let mut reg = Registry::new(retrying_route(5, 5, None));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("x")));
        assert_eq!(reg.purge(&[record(0, 0, "k").tp.clone()]), 1);
        assert_eq!(reg.delayed(), 0);
        reg.release_due(later(60));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        // The key is free for the partition's next owner's messages.
        reg.dispatch(record(0, 0, "k"), 2);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
    }

    #[test]
    fn purge_drops_revoked_partitions_everywhere() {
        let mut reg = Registry::new(route("r", 1));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1);
            reg.dispatch(record(1, o, "k"), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox)[0].partition, 0);
        let dropped = reg.purge(&[TopicPartition { topic: Arc::from("t"), partition: 0 }]);
        assert_eq!(dropped, 3);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].partition, 1);
        assert_eq!(reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]).unknown, 1);
    }

    #[test]
    fn replayed_messages_survive_a_revoke_of_their_partition_and_come_marked() {
        let mut reg = Registry::new(route("r", 10));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        let tag = ReplayTag { replay: 7, batch: 1 };
        reg.dispatch(record(0, 0, "live"), 1);
        reg.dispatch_replay(record(0, 1, "old"), tag);
        let tp = TopicPartition { topic: Arc::from("t"), partition: 0 };
        assert_eq!(reg.withhold(std::slice::from_ref(&tp)), 1, "the live message is dropped, the replayed one stays");
        reg.dispatch_replay(record(0, 2, "older"), tag);
        reg.flush();
        let mut got = Vec::new();
        while let Ok(SessionMessage::Deliveries(batch)) = a.outbox.try_recv() {
            got.extend(batch.into_iter().map(|d| (d.record.offset, d.replay.map(|t| t.replay))));
        }
        assert_eq!(got, vec![(1, Some(7)), (2, Some(7))], "replayed messages are sent while their partition drains");
        assert_eq!(reg.in_flight_of(std::slice::from_ref(&tp)), 0, "a revoke does not wait for them");
        assert_eq!(reg.purge(std::slice::from_ref(&tp)), 0);
        let acked = reg.ack(a.session, &[reg.handle(a.session, "t/0/1"), reg.handle(a.session, "t/0/2")]);
        assert_eq!(acked.settled.iter().map(|p| p.replay).collect::<Vec<_>>(), vec![Some(tag), Some(tag)]);
    }

    #[test]
    fn labels_that_leave_the_selector_drain_and_close_the_session() {
        let mut r = route("r", 10);
        r.selector = "app=orders".into();
        let mut reg = Registry::new(r);
        let err = reg.register("r", 0, sub("stranger")).expect_err("not selected");
        assert!(matches!(err, RegisterError::NotSelected { .. }), "{err:?}");
        let app = |v: &str| -> BTreeMap<String, String> { [("app".to_string(), v.to_string())].into_iter().collect() };
        let mut a = reg
            .register("r", 0, Subscriber { name: "a".into(), labels: app("orders"), ..Subscriber::default() })
            .expect("selected");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        reg.update_labels(a.session, app("billing"));
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::NotSelected(_)))));
    }
}
