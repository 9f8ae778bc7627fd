//! The session registry: live subscribers of the route, their windows, queues and in-flight
//! sets.
//!
//! Owned by the route's dispatcher task and changed only by its calls; no I/O besides pushing
//! into each session's outbox (an unbounded channel whose length the window bounds). A message
//! goes to one member chosen by [`routing::instance_for`]; a member's queue holds what its
//! window cannot take yet. When membership changes, queued (not yet sent) messages are routed
//! again, and a departed member's in-flight deliveries are redelivered. Acked deliveries leave
//! the registry and go back to the dispatcher, which records them in the offset trackers.
//!
//! This file holds sessions (register, ack, credit, drain, unregister). Rooms:
//! [`route`] (selector, members, cohorts, targets), [`keys`] (key ownership, parking, drain
//! before move; records enter here), [`retrying`] (nacks, ack deadlines, backoff, dead letters),
//! [`commit_window`] (acks that hold window places until committed), [`staging`] (at-most-once
//! batches held until committed), [`batching`] (windows out to streams), [`revoke`] (partitions
//! withheld and purged), [`membership`] (reloads, relabels, pods gone), [`snapshot`] (what the
//! operator sees, operator drains).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{DeliveryMode, EmptyCohort, Ordering, RouteConfig};
use crate::kafka::{Record, TopicPartition};
use crate::retry::{self, Next};
use crate::routing;
use crate::selector::Selector;

mod batching;
mod commit_window;
mod keys;
mod membership;
mod retrying;
mod revoke;
mod route;
mod snapshot;
mod staging;
#[cfg(test)]
mod testing;

pub use batching::MAX_BATCH_BYTES;
pub use retrying::{now_ms, DeadLetter, Failure, HEADER_ATTEMPTS, HEADER_RETRY_AT};
pub use snapshot::{CohortSnapshot, SubscriberSnapshot};
pub use staging::StagedSend;

use keys::KeyState;
use membership::format_labels;
use retrying::Delayed;
use route::RouteState;

pub type SessionId = u64;

/// What the gRPC layer receives for a session.
#[derive(Debug)]
pub enum SessionMessage {
    Deliveries(Vec<Outgoing>),
    /// The session is over; the stream ends with this reason.
    Closed(CloseReason),
}

/// A delivery on its way to a subscriber's stream. The gRPC layer turns it into the contract's
/// `Delivery`: the registry never builds wire types.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub record: Arc<Record>,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// The subscriber's cohort (its value of the route's split label); empty without a split.
    pub cohort: Arc<str>,
    /// What the subscriber acks or nacks this delivery by: unique on its stream.
    pub ack_id: AckId,
    /// The message's idempotency key on effectively-once routes (empty elsewhere).
    pub idempotency_key: Option<Arc<str>>,
    /// The replay it belongs to; 0 for a live delivery.
    pub replay: u64,
}

/// Marks a message of an operator's replay: it is delivered and acked like any other, but its
/// ack settles the replay's batch instead of moving a partition's commit point, and a revoke of
/// its partition does not drop it (the replay reads the range on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayTag {
    pub replay: u64,
    pub batch: u64,
}

/// A delivery's handle on its stream (`Delivery.ack_id`): a per-session sequence number, so
/// an ack is resolved by one hash lookup, with no text to format or parse. Starts at 1 (0 is
/// protobuf's "unset").
pub type AckId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The subscriber asked to drain and everything in flight is settled.
    Drained,
    /// The gateway is shutting down; reconnect (to another replica) with backoff.
    ShuttingDown,
    /// The subscriber's pod no longer qualifies (deleted, or its labels left the selector).
    NotSelected(String),
}

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
    /// The subscriber proved who it is, and that pod may not subscribe.
    #[error("{0}")]
    Identity(String),
    /// The subscriber did not prove who it is (a missing or refused token).
    #[error("{0}")]
    Unauthenticated(String),
}

/// Who a new session is.
#[derive(Debug, Clone, Default)]
pub struct Subscriber {
    /// Pod name or peer address, for logs and status.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// (namespace, pod) when discovery is Kubernetes: pod events find the session by it.
    pub pod: Option<(String, String)>,
}

/// A message waiting for, or out on, a delivery.
#[derive(Debug, Clone)]
pub struct Pending {
    pub record: Arc<Record>,
    /// Delivery attempt this message will be (or was) sent as, from 1.
    pub attempt: u32,
    /// Assignment epoch of the partition when the record was received; acks from an older
    /// epoch (the partition was revoked meanwhile) do not count.
    pub epoch: u64,
    /// From the route's dedup key source, on effectively-once routes.
    pub idempotency_key: Option<Arc<str>>,
    /// Set on a replayed message (see [`ReplayTag`]).
    pub replay: Option<ReplayTag>,
    /// Routing hash: of the key, the partition or the position, per the route's ordering.
    hash: u64,
    /// When the subscriber's time to ack runs out (set when sent, if the route has one).
    deadline: Option<Instant>,
    /// When the gateway received the record from Kafka: delivery latency runs from here to
    /// the ack.
    pub received: Instant,
}

impl Pending {
    /// A message as it arrives: not sent yet, received now.
    fn new(
        record: Arc<Record>,
        attempt: u32,
        epoch: u64,
        idempotency_key: Option<Arc<str>>,
        hash: u64,
        replay: Option<ReplayTag>,
    ) -> Self {
        Self { record, attempt, epoch, idempotency_key, replay, hash, deadline: None, received: Instant::now() }
    }

    fn order(&self) -> (&TopicPartition, i64) {
        (&self.record.tp, self.record.offset)
    }
}

struct Session {
    window: u32,
    queue: VecDeque<Pending>,
    /// Keyed by ack id. xxh3 rather than SipHash: the ids are our own sequence numbers, a
    /// flooding attacker has nothing to aim at, and this map is touched twice per message.
    in_flight: HashMap<AckId, Pending, xxhash_rust::xxh3::Xxh3Builder>,
    /// The ack id of the next delivery sent on this session.
    next_ack_id: AckId,
    outbox: mpsc::UnboundedSender<SessionMessage>,
    /// No new deliveries; closed when `in_flight` empties.
    draining: bool,
    /// Why the session will close once drained (None: the subscriber asked).
    close_reason: Option<CloseReason>,
    subscriber: Subscriber,
    /// Value of the route's split label, if the route has one.
    cohort: Option<String>,
    /// Acks not yet covered by a landed commit, by the commit generation they arrived in
    /// (routes with `window_until_commit`: they keep their places in the window).
    unconfirmed: VecDeque<(u64, u32)>,
    unconfirmed_total: u32,
    /// Deliveries sent and acks received on this session (operator status).
    delivered: u64,
    acked: u64,
    connected_at: std::time::SystemTime,
}

/// A new session's handles.
#[derive(Debug)]
pub struct Registered {
    pub session: SessionId,
    pub outbox: mpsc::UnboundedReceiver<SessionMessage>,
    pub window: u32,
}

/// Result of an ack batch.
#[derive(Debug, Default)]
pub struct Acked {
    pub settled: Vec<Pending>,
    pub unknown: u64,
    /// Set when the session drained and has now been closed.
    pub closed: bool,
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

pub struct Registry {
    route: RouteState,
    sessions: HashMap<SessionId, Session>,
    next_id: SessionId,
    /// While set, nothing new is sent (graceful shutdown).
    paused: bool,
    /// Sessions whose queue may be sendable.
    dirty: BTreeSet<SessionId>,
    /// Failed messages waiting out their backoff, by due time (then sequence number).
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_items: HashMap<u64, Delayed>,
    next_delayed: u64,
    /// Messages that go to a dead-letter topic, for the dispatcher to take.
    dead_letters: Vec<DeadLetter>,
    /// At-most-once deliveries that failed or were lost with their stream: never redelivered;
    /// the dispatcher takes them to count them and free their partition's buffer.
    dropped: Vec<Pending>,
    /// At-most-once batches taken out of the queues, to be sent once committed.
    staged: Vec<StagedSend>,
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
    /// Generation of the next commit: acks are stamped with it, a landed commit confirms the
    /// acks stamped at or before its own generation.
    commit_generation: u64,
    /// Partitions being revoked (draining): nothing of theirs is sent any more; their
    /// in-flight deliveries may still be acked until the partitions are purged.
    revoked: BTreeSet<TopicPartition>,
}
impl Registry {
    pub fn new(route: RouteConfig) -> Self {
        Self {
            route: RouteState::new(route),
            sessions: HashMap::new(),
            next_id: 1,
            paused: false,
            dirty: BTreeSet::new(),
            delayed: BinaryHeap::new(),
            delayed_items: HashMap::new(),
            next_delayed: 0,
            dead_letters: Vec::new(),
            dropped: Vec::new(),
            staged: Vec::new(),
            delivered: 0,
            by_cohort: BTreeMap::new(),
            redelivered: 0,
            closed: 0,
            expired: 0,
            retries_scheduled: 0,
            exhausted_without_dlq: 0,
            commit_generation: 0,
            revoked: BTreeSet::new(),
        }
    }

    /// Deliveries sent per cohort of a route that splits (subscribers without a cohort are
    /// left out), for the observed split.
    pub fn delivered_by_cohort(&self) -> BTreeMap<String, u64> {
        self.by_cohort.iter().filter(|(c, _)| !c.is_empty()).map(|(c, n)| (c.clone(), n.delivered)).collect()
    }

    /// The cohort of session `id`, if it is open and has one.
    fn cohort_of(&self, id: SessionId) -> Option<&str> {
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
        self.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.route.add_member(id, cohort.as_ref());
        self.sessions.insert(
            id,
            Session {
                window,
                queue: VecDeque::new(),
                in_flight: HashMap::default(),
                next_ack_id: 1,
                outbox: tx,
                draining: false,
                close_reason: None,
                subscriber,
                cohort,
                unconfirmed: VecDeque::new(),
                unconfirmed_total: 0,
                delivered: 0,
                acked: 0,
                connected_at: std::time::SystemTime::now(),
            },
        );
        self.reroute(Vec::new());
        Ok(Registered { session: id, outbox: rx, window })
    }

    /// Ends a session: its queued messages are routed again, its in-flight ones redelivered.
    /// Unknown ids are ignored (the stream may end twice: reader and writer side).
    pub fn unregister(&mut self, id: SessionId) -> bool {
        let Some(session) = self.sessions.remove(&id) else { return false };
        self.closed += 1;
        self.dirty.remove(&id);
        let route = &mut self.route;
        route.remove_member(id);
        let max_attempts = route.config.retry.max_attempts;
        let dead_letter_topic = route.config.dead_letter_topic.is_some();
        let at_most_once = route.config.delivery == DeliveryMode::AtMostOnce;
        let mut orphans = Vec::new();
        for mut p in session.in_flight.into_values() {
            route.release_one(p.hash);
            if at_most_once {
                self.dropped.push(p);
                continue;
            }
            // A message whose subscribers keep dying with it (a poison pill) must not loop
            // for ever: its lost deliveries count as attempts.
            if p.attempt >= max_attempts && dead_letter_topic {
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
            route.release_one(p.hash);
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
        let route = &mut self.route;
        route.remove_member(id);
        for p in &queued {
            route.release_one(p.hash);
        }
        self.reroute(queued);
        self.close_if_drained(id);
    }

    fn close_if_drained(&mut self, id: SessionId) -> bool {
        let done = self.sessions.get(&id).is_some_and(|s| s.draining && s.in_flight.is_empty());
        if done {
            if let Some(s) = self.sessions.remove(&id) {
                self.closed += 1;
                let reason = s.close_reason.unwrap_or(CloseReason::Drained);
                let _ = s.outbox.send(SessionMessage::Closed(reason));
            }
        }
        done
    }

    /// Raises a session's window by `additional`, up to its route's cap.
    pub fn credit(&mut self, id: SessionId, additional: u32) {
        if let Some(s) = self.sessions.get_mut(&id) {
            let cap = self.route.config.max_in_flight;
            s.window = s.window.saturating_add(additional).min(cap);
            self.dirty.insert(id);
        }
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
        self.dirty.insert(id);
        session.acked += out.settled.len() as u64;
        cohort_counts(&mut self.by_cohort, session.cohort.as_deref()).acked += out.settled.len() as u64;
        if self.route.config.window_until_commit && !out.settled.is_empty() {
            let n = out.settled.len() as u32;
            match session.unconfirmed.back_mut() {
                Some((generation, count)) if *generation == self.commit_generation => *count += n,
                _ => session.unconfirmed.push_back((self.commit_generation, n)),
            }
            session.unconfirmed_total += n;
        }
        let mut freed = Vec::new();
        for p in &out.settled {
            if self.route.release_one(p.hash) {
                freed.push(p.hash);
            }
        }
        for hash in freed {
            self.unpark(hash);
        }
        out.closed = self.close_if_drained(id);
        out
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

    /// Open sessions, draining ones included.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Messages waiting for a subscriber of their cohort, or for their key to move.
    pub fn held(&self) -> usize {
        let r = &self.route;
        r.unassigned.len() + r.parked.values().map(VecDeque::len).sum::<usize>()
    }

    /// Ends every session with `reason`.
    pub fn close_all(&mut self, reason: CloseReason) {
        for (_, s) in self.sessions.drain() {
            self.closed += 1;
            let _ = s.outbox.send(SessionMessage::Closed(reason.clone()));
        }
        self.route.members.clear();
        self.route.cohorts.clear();
        self.delayed.clear();
        self.delayed_items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
}
