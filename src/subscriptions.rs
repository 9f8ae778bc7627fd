//! The session registry: live subscribers of the route, their windows, queues and in-flight
//! sets.
//!
//! Owned by the route's dispatcher task and changed only by its calls; no I/O besides pushing
//! into each session's outbox (an unbounded channel whose length the window bounds). A message
//! goes to one member chosen by [`crate::routing::instance_for`]; a member's queue holds what
//! its window cannot take yet. When membership changes, queued (not yet sent) messages are
//! routed again, and a departed member's in-flight deliveries are redelivered. Acked deliveries
//! leave the registry and go back to the dispatcher, which records them in the offset trackers.
//!
//! [`Registry`] orchestrates parts that each own their state and are tested alone:
//! [`session`] (one subscriber's window, queue and in-flight deliveries), [`route`] (selector,
//! members, cohorts, targets), [`keys`] (key ownership and parking, drain before move),
//! [`retrying`] (failed messages waiting out their backoff), [`commit_window`] (acks that hold
//! window places until committed), [`staging`] (at-most-once batches held until committed),
//! [`batching`] (windows out to streams in bounded batches). This file holds the registry and
//! its sessions' lifecycle (register, ack, credit, send, drain, close, what the operator
//! sees); [`placement`] holds where messages go: records in, failures and retries, revoked
//! partitions, membership changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{DeliveryMode, RouteConfig};
use crate::kafka::TopicPartition;

mod adaptive;
mod batching;
mod commit_window;
mod keys;
mod placement;
mod retrying;
mod route;
mod session;
mod staging;
#[cfg(test)]
mod testing;
mod throttle;

pub use batching::MAX_BATCH_BYTES;
pub use retrying::{now_ms, DeadLetter, Failure, HEADER_ATTEMPTS, HEADER_OVERLOADS, HEADER_RETRY_AT};
pub use route::CohortSnapshot;
pub use session::{
    AckId, Acked, CloseReason, Extended, Outgoing, Pending, Registered, ReplayTag, SessionId, SessionMessage,
    Subscriber, SubscriberSnapshot,
};
pub use staging::StagedSend;

use batching::Batcher;
use commit_window::CommitWindow;
use keys::KeyTable;
use retrying::RetryQueue;
use route::RouteState;
use session::Session;
use staging::Staging;
use throttle::Throttle;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("route `{route}` is not configured (configured routes: {known})")]
    UnknownRoute { route: String, known: String },
    #[error("hello.route is empty: name the route to subscribe to")]
    MissingRoute,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("subscriber labels {labels} do not match route `{route}`'s selector `{selector}`")]
    NotSelected { route: String, selector: String, labels: String },
    /// The subscriber's identity was not accepted: unproven (a missing or refused token) or
    /// proven and not allowed.
    #[error(transparent)]
    Identity(#[from] crate::discovery::IdentityError),
}
/// A cohort's totals on a route since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CohortCounts {
    /// Deliveries sent, redeliveries included.
    pub delivered: u64,
    /// Deliveries sent as a second or later attempt.
    pub redelivered: u64,
    /// Deliveries the cohort's subscribers acked.
    pub acked: u64,
    /// Deliveries they nacked.
    pub nacked: u64,
    /// Deliveries whose ack deadline passed while they held them.
    pub expired: u64,
    /// Messages whose last failed attempt was theirs and that went to the dead-letter topic.
    pub dead_lettered: u64,
}

/// The counts of `cohort` in `by_cohort`, created on first use. A free function, so that a
/// caller may hold a session of the registry meanwhile.
fn cohort_counts<'a>(by_cohort: &'a mut BTreeMap<String, CohortCounts>, cohort: Option<&str>) -> &'a mut CohortCounts {
    let cohort = cohort.unwrap_or("");
    if !by_cohort.contains_key(cohort) {
        by_cohort.insert(cohort.to_string(), CohortCounts::default());
    }
    by_cohort.get_mut(cohort).expect("inserted above")
}

/// The adaptive window of a new session with `window` on a route with settings `config`.
fn adaptive_for(config: &RouteConfig, window: u32) -> Option<adaptive::AdaptiveLimit> {
    (config.window == crate::config::WindowMode::Adaptive)
        .then(|| adaptive::AdaptiveLimit::new(window, Duration::from_millis(config.ack_timeout_ms)))
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}

pub struct Registry {
    route: RouteState,
    /// Who holds each key, and the messages parked until their key's old owner settles.
    keys: KeyTable,
    /// Looked up for every ack and every batch sent: hashed with xxh3 rather than SipHash (the
    /// ids are the gateway's own counter, nothing a client picks).
    sessions: HashMap<SessionId, Session, xxhash_rust::xxh3::Xxh3Builder>,
    next_id: SessionId,
    /// While set, nothing new is sent (graceful shutdown).
    paused: bool,
    /// Sessions whose queue may be sendable.
    dirty: BTreeSet<SessionId>,
    /// Failed messages waiting out their backoff.
    retries: RetryQueue,
    /// Messages that go to a dead-letter topic, for the dispatcher to take.
    dead_letters: Vec<DeadLetter>,
    /// At-most-once batches waiting for their commit, and at-most-once deliveries lost.
    staging: Staging,
    /// Deliveries sent, and how many of them were redeliveries.
    pub delivered: u64,
    /// What happened per cohort ("" for subscribers without one), for metrics and the
    /// observed split.
    pub by_cohort: BTreeMap<String, CohortCounts>,
    pub redelivered: u64,
    /// Sessions ended, whatever the reason.
    pub closed: u64,
    /// Deliveries whose ack deadline passed.
    pub expired: u64,
    /// Failed deliveries scheduled for another attempt after a backoff.
    pub retries_scheduled: u64,
    /// Messages that used up their attempts on a route without a dead-letter topic (they keep
    /// being retried at the longest backoff).
    pub exhausted_without_dlq: u64,
    /// Commit generations, which acks are stamped with (routes with `window_until_commit`).
    commits: CommitWindow,
    /// Acks in every session's window waiting for a commit to cover them (the sum of the
    /// sessions' unconfirmed totals), kept as they change: the dispatcher asks after every
    /// event whether a commit is wanted, and that must not cost a pass over the sessions.
    unconfirmed: u64,
    /// Partitions being revoked (draining): nothing of theirs is sent any more; their
    /// in-flight deliveries may still be acked until the partitions are purged.
    revoked: BTreeSet<TopicPartition>,
    /// The route's `rate_limit`, shared by its sessions.
    throttle: Option<Throttle>,
    /// Some session's queue waited for a rate limit at the last flush: the dispatcher ticks
    /// until the buckets let it go.
    throttled: bool,
    /// Where the next limited flush starts among the sessions, so that a scarce rate is
    /// shared in turn rather than taken by the lowest session number every time.
    next_first: SessionId,
}

// === impl Registry: sessions ===

impl Registry {
    pub fn new(route: RouteConfig) -> Self {
        let throttle = route.rate_limit.as_ref().and_then(|l| Throttle::new(l, Instant::now()));
        Self {
            route: RouteState::new(route),
            keys: KeyTable::default(),
            sessions: HashMap::default(),
            next_id: SessionId(1),
            paused: false,
            dirty: BTreeSet::new(),
            retries: RetryQueue::default(),
            dead_letters: Vec::new(),
            staging: Staging::default(),
            delivered: 0,
            by_cohort: BTreeMap::new(),
            redelivered: 0,
            closed: 0,
            expired: 0,
            retries_scheduled: 0,
            exhausted_without_dlq: 0,
            commits: CommitWindow::default(),
            unconfirmed: 0,
            revoked: BTreeSet::new(),
            throttle,
            throttled: false,
            next_first: SessionId(1),
        }
    }

    /// Deliveries sent per cohort of a route that splits (subscribers without a cohort are
    /// left out), for the observed split.
    pub fn delivered_by_cohort(&self) -> BTreeMap<String, u64> {
        self.by_cohort.iter().filter(|(c, _)| !c.is_empty()).map(|(c, n)| (c.clone(), n.delivered)).collect()
    }

    /// The cohort of session `id`, if it is open and has one.
    pub fn cohort_of(&self, id: SessionId) -> Option<&str> {
        self.sessions.get(&id).and_then(|s| s.cohort.as_deref())
    }

    /// The route's settings as last applied.
    pub fn route_config(&self) -> &RouteConfig {
        &self.route.config
    }

    /// Opens a session on a route. `requested` is Hello.max_in_flight (0: route default).
    pub fn register(
        &mut self,
        route: &str,
        requested: u32,
        subscriber: Subscriber,
    ) -> Result<Registered, RegisterError> {
        if self.paused {
            return Err(RegisterError::ShuttingDown);
        }
        if route.trim().is_empty() {
            return Err(RegisterError::MissingRoute);
        }
        let state = &self.route;
        if state.config.name != route {
            return Err(RegisterError::UnknownRoute { route: route.to_string(), known: state.config.name.clone() });
        }
        if !state.selects(&subscriber.labels) {
            return Err(RegisterError::NotSelected {
                route: route.to_string(),
                selector: state.selector_text(),
                labels: format_labels(&subscriber.labels),
            });
        }
        let config = &state.config;
        let window = if requested == 0 { config.default_in_flight } else { requested.min(config.max_in_flight) };
        let cohort = state.cohort_of(&subscriber.labels);
        let id = self.next_id;
        self.next_id = SessionId(self.next_id.0 + 1);
        let (tx, rx) = mpsc::unbounded_channel();
        let throttle = throttle::session_throttle(&subscriber, config, None, Instant::now());
        let adaptive = adaptive_for(config, window);
        self.route.add_member(id, cohort.as_ref());
        let mut session = Session::new(window, tx, subscriber, cohort);
        session.throttle = throttle;
        session.adaptive = adaptive;
        self.sessions.insert(id, session);
        self.reroute(Vec::new());
        Ok(Registered { session: id, outbox: rx, window, ack_timeout_ms: self.route.config.ack_timeout_ms })
    }

    /// Ends a session: its queued messages are routed again, its in-flight ones redelivered.
    /// Unknown ids are ignored (the stream may end twice: reader and writer side).
    pub fn unregister(&mut self, id: SessionId) -> bool {
        let Some(session) = self.sessions.remove(&id) else { return false };
        self.unconfirmed -= u64::from(session.unconfirmed.total());
        self.closed += 1;
        self.dirty.remove(&id);
        let route = &mut self.route;
        route.remove_member(id);
        let retry = &route.config.retry;
        let dead_letter_topic = route.config.dead_letter_topic.is_some();
        let at_most_once = route.config.delivery == DeliveryMode::AtMostOnce;
        let mut orphans = Vec::new();
        for mut p in session.in_flight.into_values() {
            self.keys.release_one(p.hash);
            if at_most_once {
                self.staging.lose(p);
                continue;
            }
            // A message whose subscribers keep dying with it (a poison pill) must not loop
            // for ever: its lost deliveries count as attempts.
            if crate::retry::exhausted(retry, p.attempt, p.overloads) && dead_letter_topic {
                let reason = format!("subscriber stream ended with the delivery in flight, attempt {}", p.attempt);
                cohort_counts(&mut self.by_cohort, session.cohort.as_deref()).dead_lettered += 1;
                self.dead_letters.push(DeadLetter { pending: p, reason, retry_at: None });
                continue;
            }
            p.attempt += 1;
            p.deadline = None;
            orphans.push(p);
        }
        for p in &session.queue {
            self.keys.release_one(p.hash);
        }
        orphans.extend(session.queue);
        // Rerouting takes the parked messages too, those of dead-lettered keys included.
        self.reroute(orphans);
        true
    }

    /// Stop sending new messages to a session; it closes once its in-flight ones settle.
    /// Its keys move to other members as their in-flight messages settle.
    pub fn drain(&mut self, id: SessionId) {
        self.drain_with(id, None);
    }

    fn drain_with(&mut self, id: SessionId, reason: Option<CloseReason>) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        session.draining = true;
        if reason.is_some() {
            session.close_reason = reason;
        }
        let queued: Vec<Pending> = session.queue.drain(..).collect();
        self.route.remove_member(id);
        for p in &queued {
            self.keys.release_one(p.hash);
        }
        self.reroute(queued);
        self.close_if_drained(id);
    }

    fn close_if_drained(&mut self, id: SessionId) -> bool {
        let done = self.sessions.get(&id).is_some_and(|s| s.draining && s.in_flight.is_empty());
        if done {
            if let Some(s) = self.sessions.remove(&id) {
                self.unconfirmed -= u64::from(s.unconfirmed.total());
                self.closed += 1;
                let reason = s.close_reason.unwrap_or(CloseReason::Drained);
                let _ = s.outbox.send(SessionMessage::Closed(reason));
            }
        }
        done
    }

    /// Drains the sessions whose name or session number is `who` (an operator's Drain):
    /// nothing new goes to them, their queues go to the other members, and each closes once
    /// its in-flight deliveries are settled. Returns each matched session with its in-flight
    /// count; sessions already draining are counted, not drained twice.
    pub fn drain_matching(&mut self, who: &str) -> Vec<(SessionId, usize)> {
        let mut matched: Vec<(SessionId, usize, bool)> = self
            .sessions
            .iter()
            .filter(|(id, s)| s.subscriber.name == who || id.to_string() == who)
            .map(|(id, s)| (*id, s.in_flight.len(), s.draining))
            .collect();
        matched.sort_unstable();
        for (id, _, draining) in &matched {
            if !draining {
                self.drain(*id);
            }
        }
        matched.into_iter().map(|(id, in_flight, _)| (id, in_flight)).collect()
    }

    /// Raises a session's window by `additional`, up to its route's cap.
    pub fn credit(&mut self, id: SessionId, additional: u32) {
        if let Some(s) = self.sessions.get_mut(&id) {
            let cap = self.route.config.max_in_flight;
            s.window = s.window.saturating_add(additional).min(cap);
            if let Some(a) = &mut s.adaptive {
                a.set_max(s.window);
            }
            self.dirty.insert(id);
        }
    }

    /// Moves the ack deadline of a session's in-flight deliveries to `extension` after `now`,
    /// each at most to its lease end (the route's `max_lease_ms` after it was sent), where
    /// the next deadline scan takes it back. Deliveries without a deadline (a route with
    /// none) stay as they are; ids not in flight are counted as unknown.
    pub fn extend(&mut self, id: SessionId, ack_ids: &[AckId], extension: Duration, now: Instant) -> Extended {
        let mut out = Extended::default();
        let Some(session) = self.sessions.get_mut(&id) else {
            out.unknown = ack_ids.len() as u64;
            return out;
        };
        for d in ack_ids {
            match session.in_flight.get_mut(d) {
                Some(p) => {
                    if let (Some(_), Some(end)) = (p.deadline, p.lease_end) {
                        p.deadline = Some(now.checked_add(extension).map_or(end, |at| at.min(end)));
                        out.moved += 1;
                    }
                }
                None => out.unknown += 1,
            }
        }
        out
    }

    /// Settles acked deliveries of a session. Ids not in flight on this session are counted
    /// as unknown and otherwise ignored.
    pub fn ack(&mut self, id: SessionId, ack_ids: &[AckId]) -> Acked {
        let mut out = Acked::default();
        let Some(session) = self.sessions.get_mut(&id) else {
            out.unknown = ack_ids.len() as u64;
            return out;
        };
        for d in ack_ids {
            match session.in_flight.remove(d) {
                Some(p) => out.settled.push(p),
                None => out.unknown += 1,
            }
        }
        if let Some(a) = &mut session.adaptive {
            // One clock read per batch of acks.
            let now = Instant::now();
            let in_flight = session.in_flight.len() + out.settled.len();
            for p in out.settled.iter().filter_map(|p| p.sent) {
                a.acked(now.saturating_duration_since(p), in_flight);
            }
        }
        self.dirty.insert(id);
        session.acked += out.settled.len() as u64;
        cohort_counts(&mut self.by_cohort, session.cohort.as_deref()).acked += out.settled.len() as u64;
        if self.route.config.window_until_commit && !out.settled.is_empty() {
            session.unconfirmed.add(self.commits.current(), out.settled.len() as u32);
            self.unconfirmed += out.settled.len() as u64;
        }
        let mut freed = Vec::new();
        for p in &out.settled {
            if self.keys.release_one(p.hash) {
                freed.push(p.hash);
            }
        }
        for hash in freed {
            self.unpark(hash);
        }
        out.closed = self.close_if_drained(id);
        out
    }

    /// Sends what the windows allow to every session that may have room, in batches of at
    /// most [`MAX_BATCH_BYTES`], each delivery stamped with its ack deadline. At-most-once
    /// batches are staged instead, to go once their commit lands.
    pub fn flush(&mut self) {
        if self.paused {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let timeout = self.route.config.ack_timeout_ms;
        let at_most_once = self.route.config.delivery == DeliveryMode::AtMostOnce;
        let now = Instant::now();
        let mut route_held = false;
        self.throttled = false;
        let order: Vec<SessionId> = if let Some(t) = &mut self.throttle {
            t.refill(now);
            // In turn from where the last limited flush stopped.
            let (from, before): (Vec<_>, Vec<_>) = dirty.iter().partition(|id| **id >= self.next_first);
            from.into_iter().chain(before).collect()
        } else {
            dirty.into_iter().collect()
        };
        for id in order {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if s.draining {
                continue;
            }
            let room = s.room();
            if room == 0 || s.queue.is_empty() {
                if let Some(t) = &mut s.throttle {
                    t.mark(now, false);
                }
                continue;
            }
            let wanted = room.min(s.queue.len());
            let take = match (&mut self.throttle, &mut s.throttle) {
                (None, None) => wanted,
                (route, own) => {
                    let allowed = throttle::admitted(&s.queue, wanted, route.as_mut(), own.as_mut(), now);
                    if allowed.take < wanted {
                        // Still dirty: the next flush after the buckets refill takes it on.
                        self.dirty.insert(id);
                        self.throttled = true;
                        route_held |= allowed.by_route;
                    }
                    if let Some(t) = own {
                        t.mark(now, allowed.take < wanted && !allowed.by_route);
                    }
                    if allowed.take > 0 {
                        self.next_first = SessionId(id.0 + 1);
                    }
                    allowed.take
                }
            };
            if take == 0 {
                continue;
            }
            // One string per batch, shared by its deliveries.
            let cohort: Arc<str> = Arc::from(s.cohort.as_deref().unwrap_or_default());
            let deadline = (timeout > 0).then(|| now + Duration::from_millis(timeout));
            // Never shorter than the deadline itself (a route whose ack timeout is the longer).
            let lease = self.route.config.max_lease_ms.max(timeout);
            let lease_end = deadline.map(|_| now + Duration::from_millis(lease));
            let mut batcher = Batcher::default();
            let mut redelivered = 0u64;
            for mut p in s.queue.drain(..take) {
                p.deadline = deadline;
                p.lease_end = lease_end;
                p.sent = Some(now);
                let ack_id = s.next_ack_id;
                s.next_ack_id = s.next_ack_id.next();
                let delivery = Outgoing {
                    record: p.record.clone(),
                    attempt: p.attempt,
                    cohort: cohort.clone(),
                    ack_id,
                    idempotency_key: p.idempotency_key.clone(),
                    replay: p.replay,
                };
                if p.attempt > 1 {
                    redelivered += 1;
                }
                batcher.push(delivery, at_most_once.then(|| p.clone()));
                s.in_flight.insert(ack_id, p);
            }
            self.delivered += take as u64;
            self.redelivered += redelivered;
            s.delivered += take as u64;
            let counts = cohort_counts(&mut self.by_cohort, s.cohort.as_deref());
            counts.delivered += take as u64;
            counts.redelivered += redelivered;
            for batch in batcher.finish() {
                if at_most_once {
                    self.staging.stage(StagedSend {
                        session: id,
                        deliveries: batch.deliveries,
                        pending: batch.pending,
                    });
                } else {
                    // A closed outbox means the stream is going away; its unregister redelivers.
                    let _ = s.outbox.send(SessionMessage::Deliveries(batch.deliveries));
                }
            }
        }
        if let Some(t) = &mut self.throttle {
            t.mark(now, route_held);
        }
    }

    /// A commit is being computed now: returns its generation, which covers every ack so far.
    pub fn commit_started(&mut self) -> u64 {
        self.commits.start()
    }

    /// The commit of `generation` landed: the acks it covers free their window places.
    pub fn commit_landed(&mut self, generation: u64) {
        for (id, s) in &mut self.sessions {
            let freed = s.unconfirmed.confirm(generation);
            if freed > 0 {
                self.unconfirmed -= u64::from(freed);
                self.dirty.insert(*id);
            }
        }
    }

    /// Whether some subscriber's window holds acks waiting for a commit.
    pub fn awaiting_commit(&self) -> bool {
        self.unconfirmed > 0
    }

    /// At-most-once batches to commit before they are sent.
    pub fn take_staged(&mut self) -> Vec<StagedSend> {
        self.staging.take_staged()
    }

    /// Sends a staged batch whose offsets are now committed, if its stream is still there.
    pub fn release_staged(&mut self, send: StagedSend) {
        // A session that ended meanwhile counted these among its dropped deliveries.
        if let Some(s) = self.sessions.get(&send.session) {
            let _ = s.outbox.send(SessionMessage::Deliveries(send.deliveries));
        }
    }

    /// Gives up on a staged batch whose partition went away before it was committed: its
    /// in-flight places are freed, nothing is sent.
    pub fn abandon_staged(&mut self, send: StagedSend) {
        let Some(s) = self.sessions.get_mut(&send.session) else { return };
        for d in &send.deliveries {
            s.in_flight.remove(&d.ack_id);
        }
        for p in &send.pending {
            self.release_key(p.hash);
        }
        self.dirty.insert(send.session);
        self.close_if_drained(send.session);
    }

    /// At-most-once deliveries dropped since the last call.
    pub fn take_dropped(&mut self) -> Vec<Pending> {
        self.staging.take_dropped()
    }

    /// Stops (or restarts) all sending.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.dirty.extend(self.sessions.keys().copied());
        }
    }

    /// Deliveries out and not yet acked, all sessions.
    pub fn in_flight(&self) -> usize {
        self.sessions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Whether anything waits for a time: a rate limit's refill, a retry's backoff or a
    /// delivery's ack deadline.
    /// Stops at the first session with a delivery out, so a busy route answers at once.
    pub fn waits_for_time(&self) -> bool {
        self.throttled || self.delayed() > 0 || self.sessions.values().any(|s| !s.in_flight.is_empty())
    }

    /// How long the route's rate limit has held messages back in all (zero without one).
    pub fn throttled(&self) -> Duration {
        self.throttle.as_ref().map_or(Duration::ZERO, |t| t.held_for(Instant::now()))
    }

    /// Open sessions, draining ones included.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Messages waiting for a subscriber of their cohort, or for their key to move.
    pub fn held(&self) -> usize {
        self.route.unassigned.len() + self.keys.parked()
    }

    /// Every open session, by session number.
    pub fn subscribers(&self) -> Vec<SubscriberSnapshot> {
        let mut out: Vec<SubscriberSnapshot> = self.sessions.iter().map(|(id, s)| s.snapshot(*id)).collect();
        out.sort_by_key(|s| s.session);
        out
    }

    /// The route's cohorts: every weighted one, and any that has sessions without a weight.
    pub fn cohorts(&self) -> Vec<CohortSnapshot> {
        self.route.cohort_snapshots()
    }

    /// Messages waiting for a subscriber of their cohort, per cohort without one.
    pub fn held_by_cohort(&self) -> BTreeMap<&str, usize> {
        self.route.held_by_cohort()
    }

    /// Every session bound to a pod, with the pod.
    pub fn pod_sessions(&self) -> Vec<(SessionId, (String, String))> {
        self.sessions.iter().filter_map(|(id, s)| s.subscriber.pod.clone().map(|p| (*id, p))).collect()
    }

    /// Ends every session with `reason`.
    pub fn close_all(&mut self, reason: CloseReason) {
        self.unconfirmed = 0;
        for (_, s) in self.sessions.drain() {
            self.closed += 1;
            let _ = s.outbox.send(SessionMessage::Closed(reason.clone()));
        }
        self.route.members.clear();
        self.route.cohorts.clear();
        self.retries.clear();
    }

    /// The ack id under which `session` holds the delivery of record `topic/partition/offset`
    /// in flight; an id never issued when it holds none.
    #[cfg(test)]
    fn handle(&self, session: SessionId, record: &str) -> AckId {
        self.sessions
            .get(&session)
            .and_then(|s| s.in_flight.iter().find(|(_, p)| p.record.delivery_id().to_string() == record))
            .map_or(AckId(u64::MAX), |(ack_id, _)| *ack_id)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::config::rate_limit::RateLimit;
    use crate::config::EmptyCohort;

    #[test]
    fn unknown_route_is_refused_with_the_known_ones() {
        let mut reg = Registry::new(route("orders", 10));
        let err = reg.register("billing", 0, sub("x")).expect_err("unknown");
        assert_eq!(err, RegisterError::UnknownRoute { route: "billing".into(), known: "orders".into() });
        assert_eq!(reg.register("", 0, sub("x")).expect_err("empty"), RegisterError::MissingRoute);
    }

    #[test]
    fn window_limits_deliveries_and_acks_open_it() {
        let mut reg = Registry::new(route("r", 3));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        assert_eq!(a.window, 3);
        for o in 0..10 {
            reg.dispatch(record(0, o, "k"), 1);
        }
        reg.flush();
        let got = received(&mut a.outbox);
        assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(got[0].delivery_id, "t/0/0");
        assert_eq!(got[0].attempt, 1);
        assert_eq!(reg.in_flight(), 3);
        let acked = reg.ack(
            a.session,
            &[reg.handle(a.session, "t/0/1"), reg.handle(a.session, "t/9/9"), reg.handle(a.session, "t/0/1")],
        );
        assert_eq!(acked.settled.len(), 1);
        assert_eq!(acked.unknown, 2, "unknown and repeated ids are counted");
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn requested_window_is_capped_by_the_route() {
        let mut reg = Registry::new(route("r", 5));
        assert_eq!(reg.register("r", 1_000, sub("a")).expect("ok").window, 10);
        assert_eq!(reg.register("r", 2, sub("b")).expect("ok").window, 2);
    }

    #[test]
    fn departed_sessions_deliveries_go_to_the_other_member_with_attempt_two() {
        let mut reg = Registry::new(route("r", 500));
        let a = reg.register("r", 0, sub("a")).expect("ok");
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        let mut a_rx = a.outbox;
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("key-{o}")), 1);
        }
        reg.flush();
        let to_a = received(&mut a_rx);
        let to_b = received(&mut b.outbox);
        assert!(!to_a.is_empty() && !to_b.is_empty(), "keys spread over both");
        assert!(reg.unregister(a.session));
        assert!(!reg.unregister(a.session), "second unregister is a no-op");
        reg.flush();
        let again = received(&mut b.outbox);
        let mut expect: Vec<i64> = to_a.iter().map(|d| d.offset).collect();
        expect.sort();
        let mut got: Vec<i64> = again.iter().map(|d| d.offset).collect();
        got.sort();
        assert_eq!(got, expect);
        assert!(again.iter().all(|d| d.attempt == 2));
        assert_eq!(reg.redelivered, to_a.len() as u64);
    }

    #[test]
    fn drain_closes_after_in_flight_settles_and_hands_queue_over() {
        let mut reg = Registry::new(route("r", 2));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..4 {
            reg.dispatch(record(0, o, "same-key"), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.drain(a.session);
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "the key waits for a's in-flight messages");
        let acked = reg.ack(a.session, &[reg.handle(a.session, "t/0/0"), reg.handle(a.session, "t/0/1")]);
        assert!(acked.closed);
        assert_eq!((reg.closed, reg.session_count()), (1, 1), "a closed, b open");
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::Drained))));
    }

    #[test]
    fn paused_registry_sends_nothing_and_refuses_sessions() {
        let mut reg = Registry::new(route("r", 5));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.set_paused(true);
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        assert_eq!(reg.register("r", 0, sub("b")).expect_err("closed"), RegisterError::ShuttingDown);
    }

    #[test]
    fn with_window_until_commit_acked_deliveries_hold_their_places_until_the_commit_lands() {
        let mut config = route("r", 2);
        config.window_until_commit = true;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..6 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0"), reg.handle(a.session, "t/0/1")]);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "acked but not committed: still in the window");
        assert!(reg.awaiting_commit());
        let generation = reg.commit_started();
        // An ack after the commit was computed is not covered by it.
        reg.commit_landed(generation);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/2")]);
        reg.commit_landed(generation);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "offset 2's ack came after that commit");
        let later = reg.commit_started();
        reg.commit_landed(later);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![4]);
        assert!(!reg.awaiting_commit());
        reg.ack(a.session, &[reg.handle(a.session, "t/0/3")]);
        assert!(reg.awaiting_commit());
        reg.unregister(a.session);
        assert!(!reg.awaiting_commit(), "a closed session's acks wait for nothing");
    }

    #[test]
    fn batches_are_bounded_in_bytes() {
        let mut reg = Registry::new(route("r", 100));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..5 {
            let mut r = (*record(0, o, "k")).clone();
            r.value = Some(Bytes::from(vec![0u8; 400 * 1024]));
            reg.dispatch(Arc::new(r), 1);
        }
        reg.flush();
        let mut sizes = Vec::new();
        while let Ok(SessionMessage::Deliveries(d)) = a.outbox.try_recv() {
            assert!(d.iter().map(|d| d.record.size()).sum::<usize>() <= MAX_BATCH_BYTES);
            sizes.push(d.len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn subscribers_show_their_counts_and_cohorts_their_members() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 50, 50));
        let blue = reg.register("r", 100, labelled("b", "blue")).expect("ok");
        let _green = reg.register("r", 100, labelled("g", "green")).expect("ok");
        let _stray = reg.register("r", 100, labelled("s", "canary")).expect("ok");
        for o in 0..100 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        let subs = reg.subscribers();
        assert_eq!(subs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["b", "g", "s"]);
        let b = &subs[0];
        assert_eq!((b.cohort.as_deref(), b.window), (Some("blue"), 100));
        assert_eq!(b.delivered, u64::from(b.in_flight));
        assert_eq!(subs.iter().map(|s| s.delivered).sum::<u64>(), 100);
        assert_eq!(subs[2].delivered, 0, "an unweighted cohort gets nothing");
        let by_cohort: u64 = reg.delivered_by_cohort().values().sum();
        assert_eq!(by_cohort, 100);
        assert_eq!(reg.delivered_by_cohort().get("blue"), Some(&b.delivered));

        let acked = reg.ack(blue.session, &[reg.handle(blue.session, "t/0/0"), reg.handle(blue.session, "t/0/1")]);
        let acked_here = acked.settled.len() as u64;
        assert_eq!(reg.subscribers()[0].acked, acked_here);

        assert_eq!(
            reg.cohorts(),
            vec![
                CohortSnapshot { name: "blue".into(), weight: 50, subscribers: 1, held: 0 },
                CohortSnapshot { name: "canary".into(), weight: 0, subscribers: 1, held: 0 },
                CohortSnapshot { name: "green".into(), weight: 50, subscribers: 1, held: 0 },
            ]
        );
    }

    #[test]
    fn an_operator_drain_finds_sessions_by_name_or_number_and_closes_them_when_settled() {
        let mut reg = Registry::new(route("r", 5));
        let mut a = reg.register("r", 0, sub("pod-a")).expect("ok");
        let b = reg.register("r", 0, sub("pod-b")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        let (holder, mut other) = if received(&mut a.outbox).is_empty() { (b.session, a) } else { (a.session, b) };
        let holder_name = if holder == SessionId(1) { "pod-a" } else { "pod-b" };

        assert_eq!(reg.drain_matching("nobody"), vec![]);
        assert_eq!(reg.drain_matching(holder_name), vec![(holder, 1)]);
        assert_eq!(reg.drain_matching(&holder.to_string()), vec![(holder, 1)], "already draining: counted again");
        assert!(reg.subscribers().iter().any(|s| s.session == holder && s.draining));
        reg.dispatch(record(0, 1, "other"), 1);
        reg.flush();
        assert_eq!(received(&mut other.outbox).len(), 1, "new messages go to the other subscriber");
        let acked = reg.ack(holder, &[reg.handle(holder, "t/0/0")]);
        assert!(acked.closed, "closed once its in-flight delivery settled");
        assert_eq!(reg.subscribers().len(), 1);
    }

    #[test]
    fn at_most_once_batches_wait_for_their_commit_and_failures_are_never_redelivered() {
        let mut config = retrying_route(5, 5, None);
        config.delivery = DeliveryMode::AtMostOnce;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "nothing goes before its commit");
        let staged = reg.take_staged();
        assert_eq!(staged.iter().map(|s| s.pending.len()).sum::<usize>(), 3);
        for send in staged {
            reg.release_staged(send);
        }
        assert_eq!(received(&mut a.outbox).len(), 3);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("x")));
        assert_eq!(reg.expire(later(3_600)), 2);
        reg.release_due(later(7_200));
        reg.flush();
        assert!(reg.take_staged().is_empty() && received(&mut a.outbox).is_empty(), "never redelivered");
        assert_eq!(reg.take_dropped().len(), 3);
        assert_eq!(reg.delayed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_route_delivers_at_its_rate_shared_in_turn_and_a_subscriber_below_it() {
        let mut config = route("r", 1_000);
        config.rate_limit = Some(RateLimit { messages_per_s: 100, bytes_per_s: 0, burst: 10 });
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        let slow =
            Subscriber { rate_limit: Some(RateLimit { messages_per_s: 20, ..RateLimit::default() }), ..sub("c") };
        let mut c = reg.register("r", 0, slow).expect("ok");
        for o in 0..1_000 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        let (mut got_a, mut got_b, mut got_c) = (0, 0, 0);
        // Two seconds of 10 ms ticks, as the dispatcher's while messages wait.
        for _ in 0..200 {
            reg.flush();
            assert!(reg.waits_for_time(), "messages wait for the limit: the dispatcher keeps ticking");
            tokio::time::advance(Duration::from_millis(10)).await;
            got_a += received(&mut a.outbox).len();
            got_b += received(&mut b.outbox).len();
            got_c += received(&mut c.outbox).len();
        }
        let total = got_a + got_b + got_c;
        // The burst, then 100 a second for 2 s (the last tick's earnings not yet spent).
        assert!((205..=210).contains(&total), "{total} = {got_a} + {got_b} + {got_c}");
        assert!((38..=42).contains(&got_c), "the subscriber's own 20/s: {got_c}");
        assert!(got_a.abs_diff(got_b) <= 10, "the rest shared in turn: {got_a} and {got_b}");
        assert!(reg.throttled() >= Duration::from_millis(1_900), "{:?}", reg.throttled());
    }
}
