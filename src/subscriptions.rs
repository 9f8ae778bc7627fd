//! The session registry: live subscribers per route, their windows, queues and in-flight sets.
//!
//! Owned by the dispatcher task and changed only by its calls; no I/O besides pushing into
//! each session's outbox (an unbounded channel whose length the window bounds). Messages for
//! a route go to one of its members chosen by [`routing::instance_for`]; a member's queue
//! holds what its window cannot take yet. When membership changes, queued (not yet sent)
//! messages are routed again, and a departed member's in-flight deliveries are redelivered.
//! Acked deliveries leave the registry and go back to the dispatcher, which records them in
//! the offset trackers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{DeliveryMode, EmptyCohort, Ordering, RouteConfig};
use crate::kafka::{Record, TopicPartition};
use crate::proto;
use crate::retry::{self, Next};
use crate::routing;
use crate::selector::Selector;

pub type SessionId = u64;

/// Never a session's id (they start at 1): the owner of a retry-topic message waiting for its time.
const NO_SESSION: SessionId = 0;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Payload bytes per `SubscribeResponse`: well under gRPC's customary 4 MiB receive limit, so
/// a client with default settings can read every batch (a single larger message still goes
/// alone in its own response).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// What the gRPC layer receives for a session.
#[derive(Debug)]
pub enum SessionMessage {
    Deliveries(Vec<proto::Delivery>),
    /// The session is over; the stream ends with this reason.
    Closed(CloseReason),
}

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
    #[error("{0}")]
    Identity(String),
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
    pub route: usize,
    /// Routing hash: of the key, the partition or the position, per the route's ordering.
    hash: u64,
    /// When the subscriber's time to ack runs out (set when sent, if the route has one).
    deadline: Option<Instant>,
}

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

/// A batch for an at-most-once session, held back until its offsets are committed.
#[derive(Debug)]
pub struct StagedSend {
    session: SessionId,
    deliveries: Vec<proto::Delivery>,
    pub pending: Vec<Pending>,
}

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
struct Delayed {
    owner: SessionId,
    pending: Pending,
}

impl Pending {
    fn order(&self) -> (&TopicPartition, i64) {
        (&self.record.tp, self.record.offset)
    }
}

struct Session {
    route: usize,
    window: u32,
    queue: VecDeque<Pending>,
    /// Keyed by delivery id. xxh3 rather than SipHash: the ids come from our own records, a
    /// flooding attacker has nothing to aim at, and this map is touched twice per message.
    in_flight: HashMap<String, Pending, xxhash_rust::xxh3::Xxh3Builder>,
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
}

/// Who holds a key's messages (ordering key or partition): one owner at a time, so a key
/// moves only once its messages at the old owner are settled (drain before move).
#[derive(Debug, Clone, Copy)]
struct KeyState {
    owner: SessionId,
    /// Messages of the key queued at or in flight to `owner`, or waiting out a backoff.
    outstanding: u32,
    /// Messages of the key waiting out a retry backoff: the key's later messages wait behind them.
    delayed: u32,
}

struct RouteState {
    config: RouteConfig,
    weights: Vec<(String, u32)>,
    /// Ok(None): every subscriber qualifies; Err: the selector did not parse, nobody does
    /// (fail closed; config validation refuses such a route before it gets here).
    selector: Result<Option<Selector>, String>,
    /// Members that take new messages, ascending.
    members: Vec<SessionId>,
    /// Members per cohort, ascending.
    cohorts: HashMap<String, Vec<SessionId>>,
    /// Messages that have no member to go to yet (or whose cohort is held empty).
    unassigned: VecDeque<Pending>,
    keys: HashMap<u64, KeyState>,
    /// Messages waiting for their key's old owner to settle, per key, in order.
    parked: HashMap<u64, VecDeque<Pending>>,
}

impl RouteState {
    fn new(config: RouteConfig) -> Self {
        let weights = config.weight_list();
        let selector = config.parsed_selector().map(|s| Some(s).filter(|s| !s.is_empty())).map_err(|e| e.to_string());
        Self {
            config,
            weights,
            selector,
            members: Vec::new(),
            cohorts: HashMap::new(),
            unassigned: VecDeque::new(),
            keys: HashMap::new(),
            parked: HashMap::new(),
        }
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Ok(selector) => selector.as_ref().is_none_or(|s| s.matches(labels)),
            Err(_) => false,
        }
    }

    fn selector_text(&self) -> String {
        match &self.selector {
            Ok(selector) => selector.as_ref().map(ToString::to_string).unwrap_or_default(),
            Err(error) => format!("{} (invalid: {error})", self.config.selector),
        }
    }

    fn hash_of(&self, record: &Record) -> u64 {
        match self.config.ordering {
            Ordering::Key => routing::key_hash(record.key.as_deref(), record.tp.partition, record.offset),
            Ordering::Partition => {
                routing::key_hash(Some(record.tp.topic.as_bytes()), record.tp.partition, 0)
                    ^ routing::key_hash(None, record.tp.partition, 0)
            }
            Ordering::None => routing::key_hash(None, record.tp.partition, record.offset),
        }
    }

    fn ordered(&self) -> bool {
        self.config.ordering != Ordering::None
    }

    /// The member a message with `hash` goes to now, if any.
    fn target(&self, hash: u64) -> Option<SessionId> {
        let pick = |ids: &[SessionId]| routing::instance_for(hash, ids).map(|i| ids[i]);
        if self.config.split_label.is_none() {
            return pick(&self.members);
        }
        let cohort = routing::cohort_for(hash, &self.weights)?;
        match self.cohorts.get(cohort).filter(|m| !m.is_empty()) {
            Some(members) => pick(members),
            None => match self.config.empty_cohort {
                EmptyCohort::Hold => None,
                EmptyCohort::Spill => pick(&self.members),
            },
        }
    }

    /// Takes one settled or withdrawn message of `hash` off its owner's count. Returns true
    /// when the key has nothing outstanding any more (its parked messages may go).
    fn release_one(&mut self, hash: u64) -> bool {
        if !self.ordered() {
            return false;
        }
        let Some(state) = self.keys.get_mut(&hash) else { return false };
        state.outstanding = state.outstanding.saturating_sub(1);
        if state.outstanding == 0 {
            self.keys.remove(&hash);
            return true;
        }
        false
    }

    fn cohort_of(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.config.split_label.as_ref().and_then(|l| labels.get(l).cloned())
    }

    fn add_member(&mut self, id: SessionId, cohort: Option<&String>) {
        self.members.push(id);
        self.members.sort_unstable();
        if let Some(c) = cohort {
            let m = self.cohorts.entry(c.clone()).or_default();
            m.push(id);
            m.sort_unstable();
        }
    }

    fn remove_member(&mut self, id: SessionId) {
        self.members.retain(|m| *m != id);
        for m in self.cohorts.values_mut() {
            m.retain(|x| *x != id);
        }
    }
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

pub struct Registry {
    routes: Vec<RouteState>,
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
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes.iter().cloned().map(RouteState::new).collect(),
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
            redelivered: 0,
            closed: 0,
            expired: 0,
            retries_scheduled: 0,
            exhausted_without_dlq: 0,
            commit_generation: 0,
            revoked: BTreeSet::new(),
        }
    }

    /// Index of each route that consumes `topic`.
    pub fn routes_for_topic(&self, topic: &str) -> Vec<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.config.topics.iter().any(|t| t == topic) || r.config.retries_through(topic))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.config.name == name)
    }

    pub fn route_config(&self, route: usize) -> &RouteConfig {
        &self.routes[route].config
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
        let Some(r) = self.route_index(route) else {
            let known = self.routes.iter().map(|r| r.config.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(RegisterError::UnknownRoute { route: route.to_string(), known });
        };
        let state = &self.routes[r];
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
        self.routes[r].add_member(id, cohort.as_ref());
        self.sessions.insert(
            id,
            Session {
                route: r,
                window,
                queue: VecDeque::new(),
                in_flight: HashMap::default(),
                outbox: tx,
                draining: false,
                close_reason: None,
                subscriber,
                cohort,
                unconfirmed: VecDeque::new(),
                unconfirmed_total: 0,
            },
        );
        self.reroute(r, Vec::new());
        Ok(Registered { session: id, outbox: rx, window })
    }

    /// Ends a session: its queued messages are routed again, its in-flight ones redelivered.
    /// Unknown ids are ignored (the stream may end twice: reader and writer side).
    pub fn unregister(&mut self, id: SessionId) -> bool {
        let Some(session) = self.sessions.remove(&id) else { return false };
        self.closed += 1;
        self.dirty.remove(&id);
        let r = session.route;
        let route = &mut self.routes[r];
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
        self.reroute(r, orphans);
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
        let r = session.route;
        let queued: Vec<Pending> = session.queue.drain(..).collect();
        let route = &mut self.routes[r];
        route.remove_member(id);
        for p in &queued {
            route.release_one(p.hash);
        }
        self.reroute(r, queued);
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
            let cap = self.routes[s.route].config.max_in_flight;
            s.window = s.window.saturating_add(additional).min(cap);
            self.dirty.insert(id);
        }
    }

    /// Settles acked deliveries of a session. Ids not in flight on this session are counted
    /// as unknown and otherwise ignored.
    pub fn ack(&mut self, id: SessionId, delivery_ids: &[String]) -> Acked {
        let mut out = Acked::default();
        let Some(session) = self.sessions.get_mut(&id) else {
            out.unknown = delivery_ids.len() as u64;
            return out;
        };
        for d in delivery_ids {
            match session.in_flight.remove(d.as_str()) {
                Some(p) => out.settled.push(p),
                None => out.unknown += 1,
            }
        }
        let r = session.route;
        self.dirty.insert(id);
        if self.routes[r].config.window_until_commit && !out.settled.is_empty() {
            let n = out.settled.len() as u32;
            match session.unconfirmed.back_mut() {
                Some((generation, count)) if *generation == self.commit_generation => *count += n,
                _ => session.unconfirmed.push_back((self.commit_generation, n)),
            }
            session.unconfirmed_total += n;
        }
        let mut freed = Vec::new();
        for p in &out.settled {
            if self.routes[r].release_one(p.hash) {
                freed.push(p.hash);
            }
        }
        for hash in freed {
            self.unpark(r, hash);
        }
        out.closed = self.close_if_drained(id);
        out
    }

    /// A commit is being computed now: returns its generation, which covers every ack so far.
    pub fn commit_started(&mut self) -> u64 {
        let generation = self.commit_generation;
        self.commit_generation += 1;
        generation
    }

    /// The commit of `generation` landed: the acks it covers free their window places.
    pub fn commit_landed(&mut self, generation: u64) {
        for (id, s) in &mut self.sessions {
            let mut freed = false;
            while let Some(&(g, n)) = s.unconfirmed.front() {
                if g > generation {
                    break;
                }
                s.unconfirmed.pop_front();
                s.unconfirmed_total -= n;
                freed = true;
            }
            if freed {
                self.dirty.insert(*id);
            }
        }
    }

    /// Whether some subscriber's window holds acks waiting for a commit.
    pub fn awaiting_commit(&self) -> bool {
        self.sessions.values().any(|s| s.unconfirmed_total > 0)
    }

    /// Takes a delivery back from a session: retried after a backoff, or dead-lettered. Returns
    /// false if it was not in flight there.
    pub fn nack(&mut self, id: SessionId, delivery_id: &str, failure: Failure) -> bool {
        let Some(session) = self.sessions.get_mut(&id) else { return false };
        let Some(p) = session.in_flight.remove(delivery_id) else { return false };
        self.dirty.insert(id);
        self.fail(id, p, failure);
        self.close_if_drained(id);
        true
    }

    /// Takes back every delivery whose ack deadline has passed, as failed attempts.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut expired = Vec::new();
        for (id, s) in &mut self.sessions {
            let passed = s.in_flight.extract_if(|_, p| p.deadline.is_some_and(|d| d <= now));
            expired.extend(passed.map(|(_, p)| (*id, p)));
        }
        let count = expired.len() as u64;
        let mut touched = BTreeSet::new();
        for (id, p) in expired {
            let timeout = self.routes[p.route].config.ack_timeout_ms;
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
        let r = p.route;
        let config = &self.routes[r].config;
        if config.delivery == DeliveryMode::AtMostOnce {
            // Already committed: it is not delivered again, whatever happened to it.
            self.release_key(r, p.hash);
            self.dropped.push(p);
            return;
        }
        if self.revoked.contains(&p.record.tp) {
            // Its partition is going to another owner, which delivers it again.
            self.release_key(r, p.hash);
            return;
        }
        let next = if failure.dead_letter {
            Next::Exhausted
        } else {
            retry::after_failure(&config.retry, p.attempt, failure.retry_after, rand::random::<f64>())
        };
        let next = match next {
            Next::Exhausted if config.dead_letter_topic.is_some() => {
                self.release_key(r, p.hash);
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
        if self.routes[r].config.retry.retry_topic.is_some() {
            // Through the retry topic: this attempt is done once Kafka has the retry.
            self.release_key(r, p.hash);
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
    fn schedule(&mut self, owner: SessionId, p: Pending, delay: Duration) {
        let r = p.route;
        let route = &mut self.routes[r];
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
            let r = p.route;
            let hash = p.hash;
            let route = &mut self.routes[r];
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
                    self.unpark(r, hash);
                }
            } else {
                self.assign(p, true);
            }
            // The key may have been waiting only for this backoff.
            if self.routes[r].keys.get(&hash).is_none_or(|k| k.outstanding == 0) {
                self.unpark(r, hash);
            }
        }
    }

    /// At-most-once batches to commit before they are sent.
    pub fn take_staged(&mut self) -> Vec<StagedSend> {
        std::mem::take(&mut self.staged)
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
            s.in_flight.remove(&d.delivery_id);
        }
        let r = s.route;
        for p in &send.pending {
            self.release_key(r, p.hash);
        }
        self.dirty.insert(send.session);
        self.close_if_drained(send.session);
    }

    /// At-most-once deliveries dropped since the last call.
    pub fn take_dropped(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.dropped)
    }

    /// Messages to dead-letter since the last call.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Failed messages waiting out a backoff.
    pub fn delayed(&self) -> usize {
        self.delayed_items.len()
    }

    /// Routes a newly received record for route `route`.
    pub fn dispatch(&mut self, record: Arc<Record>, epoch: u64, route: usize) {
        let hash = self.routes[route].hash_of(&record);
        if !self.routes[route].config.retries_through(&record.tp.topic) {
            self.assign(Pending { record, attempt: 1, epoch, route, hash, deadline: None }, false);
            return;
        }
        // A retry: the attempt after those its headers count, not before its time.
        let made: u32 = header(&record, HEADER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(1);
        let retry_at: Option<i64> = header(&record, HEADER_RETRY_AT).and_then(|v| v.parse().ok());
        let p = Pending { record, attempt: made.saturating_add(1), epoch, route, hash, deadline: None };
        let wait = retry_at.map(|at| at - now_ms()).filter(|ms| *ms > 0);
        match wait {
            // No owner holds a retried message's key: it waits on its own.
            Some(ms) => self.schedule(NO_SESSION, p, Duration::from_millis(ms as u64)),
            None => self.assign(p, false),
        }
    }

    fn assign(&mut self, p: Pending, front: bool) {
        if self.revoked.contains(&p.record.tp) {
            return; // its partition's next owner delivers it
        }
        let r = p.route;
        let route = &mut self.routes[r];
        let target = route.target(p.hash);
        if route.ordered() {
            let behind_parked = route.parked.get(&p.hash).is_some_and(|q| !q.is_empty());
            let key = route.keys.get(&p.hash);
            let owner_elsewhere = key.is_some_and(|k| Some(k.owner) != target);
            let waiting_on_retry = key.is_some_and(|k| k.delayed > 0);
            if behind_parked || owner_elsewhere || waiting_on_retry {
                // Drain before move: wait until the key's messages at its old owner settle.
                let q = route.parked.entry(p.hash).or_default();
                if front {
                    q.push_front(p)
                } else {
                    q.push_back(p)
                }
                return;
            }
        }
        let Some(id) = target else {
            if front {
                route.unassigned.push_front(p)
            } else {
                route.unassigned.push_back(p)
            }
            return;
        };
        if route.ordered() {
            route.keys.entry(p.hash).or_insert(KeyState { owner: id, outstanding: 0, delayed: 0 }).outstanding += 1;
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
    fn release_key(&mut self, r: usize, hash: u64) {
        if self.routes[r].release_one(hash) {
            self.unpark(r, hash);
        }
    }

    /// A key's old owner settled everything: its parked messages go to its new target.
    fn unpark(&mut self, r: usize, hash: u64) {
        if let Some(q) = self.routes[r].parked.remove(&hash) {
            for p in q {
                self.assign(p, false);
            }
        }
    }

    /// Routes again every queued, parked or unassigned message of a route plus `extra`,
    /// oldest first per partition, after membership, labels or weights changed.
    fn reroute(&mut self, r: usize, extra: Vec<Pending>) {
        let mut all = extra;
        let route = &mut self.routes[r];
        all.extend(route.unassigned.drain(..));
        for (_, q) in route.parked.drain() {
            all.extend(q);
        }
        let ids: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| s.route == r).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                for p in s.queue.drain(..) {
                    self.routes[r].release_one(p.hash);
                    all.push(p);
                }
            }
        }
        all.sort_by(|a, b| a.order().cmp(&b.order()));
        for p in all {
            self.assign(p, false);
        }
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
        self.sessions.values().map(|s| s.in_flight.values().filter(|p| partitions.contains(&p.record.tp)).count()).sum()
    }

    /// Removes the messages of `partitions` waiting anywhere, and with `in_flight` those out
    /// on streams too; their keys are released and what is left is routed again.
    fn remove_of(&mut self, partitions: &[TopicPartition], in_flight: bool) -> usize {
        let gone = |p: &Pending| partitions.contains(&p.record.tp);
        let mut dropped = 0;
        let waiting: Vec<u64> =
            self.delayed_items.iter().filter(|(_, d)| gone(&d.pending)).map(|(seq, _)| *seq).collect();
        for seq in waiting {
            if let Some(Delayed { pending: p, .. }) = self.delayed_items.remove(&seq) {
                let route = &mut self.routes[p.route];
                if let Some(k) = route.keys.get_mut(&p.hash) {
                    k.delayed = k.delayed.saturating_sub(1);
                }
                route.release_one(p.hash);
                dropped += 1;
            }
        }
        self.dead_letters.retain(|d| !gone(&d.pending));
        for route in &mut self.routes {
            let before = route.unassigned.len();
            route.unassigned.retain(|p| !gone(p));
            dropped += before - route.unassigned.len();
            for q in route.parked.values_mut() {
                let before = q.len();
                q.retain(|p| !gone(p));
                dropped += before - q.len();
            }
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let route = &mut self.routes[s.route];
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
                route.release_one(hash);
            }
            self.dirty.insert(id);
            self.close_if_drained(id);
        }
        for r in 0..self.routes.len() {
            self.reroute(r, Vec::new());
        }
        dropped
    }

    /// New settings for existing routes (weights, selector, windows, empty-cohort policy):
    /// queued messages are routed again under them, keys move with drain before move.
    /// Returns the names of routes that were not found (added routes need a restart).
    pub fn update_routes(&mut self, configs: &[RouteConfig]) -> Vec<String> {
        let mut unknown = Vec::new();
        for config in configs {
            let Some(r) = self.route_index(&config.name) else {
                unknown.push(config.name.clone());
                continue;
            };
            let mut next = RouteState::new(config.clone());
            // Ordering and topics are fixed for the gateway's lifetime (keys in flight were
            // hashed under the old ordering; topics are the consumer's subscription).
            next.config.ordering = self.routes[r].config.ordering;
            next.config.topics = self.routes[r].config.topics.clone();
            let old = std::mem::replace(&mut self.routes[r], next);
            let route = &mut self.routes[r];
            route.unassigned = old.unassigned;
            route.keys = old.keys;
            route.parked = old.parked;
            let members: Vec<SessionId> = old.members;
            let mut unselected = Vec::new();
            for id in members {
                let Some(s) = self.sessions.get_mut(&id) else { continue };
                if !self.routes[r].selects(&s.subscriber.labels) {
                    unselected.push(id);
                    continue;
                }
                s.cohort = self.routes[r].cohort_of(&s.subscriber.labels);
                let cohort = s.cohort.clone();
                self.routes[r].add_member(id, cohort.as_ref());
            }
            self.reroute(r, Vec::new());
            for id in unselected {
                let reason = CloseReason::NotSelected("its labels no longer match the route's selector".into());
                self.drain_with(id, Some(reason));
            }
        }
        unknown
    }

    /// A subscriber's labels changed (its pod was relabelled): it may change cohort, or leave
    /// the route's selector, in which case it is drained and closed.
    pub fn update_labels(&mut self, id: SessionId, labels: BTreeMap<String, String>) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.subscriber.labels == labels {
            return;
        }
        let r = s.route;
        s.subscriber.labels = labels;
        if s.draining {
            return;
        }
        if !self.routes[r].selects(&s.subscriber.labels) {
            let why = format!(
                "its labels {} no longer match selector `{}`",
                format_labels(&s.subscriber.labels),
                self.routes[r].selector_text()
            );
            self.drain_with(id, Some(CloseReason::NotSelected(why)));
            return;
        }
        let cohort = self.routes[r].cohort_of(&s.subscriber.labels);
        if cohort != s.cohort {
            s.cohort = cohort.clone();
            let route = &mut self.routes[r];
            route.remove_member(id);
            route.add_member(id, cohort.as_ref());
            self.reroute(r, Vec::new());
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

    /// Every session bound to a pod, with the pod.
    pub fn pod_sessions(&self) -> Vec<(SessionId, usize, (String, String))> {
        self.sessions.iter().filter_map(|(id, s)| s.subscriber.pod.clone().map(|p| (*id, s.route, p))).collect()
    }

    /// Stops (or restarts) all sending.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.dirty.extend(self.sessions.keys().copied());
        }
    }

    /// Sends what the windows allow to every session that may have room, in batches of at
    /// most [`MAX_BATCH_BYTES`].
    pub fn flush(&mut self) {
        if self.paused {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if s.draining {
                continue;
            }
            let room = (s.window as usize).saturating_sub(s.in_flight.len() + s.unconfirmed_total as usize);
            if room == 0 || s.queue.is_empty() {
                continue;
            }
            let take = room.min(s.queue.len());
            let mut batch = Vec::with_capacity(take.min(256));
            let mut bytes = 0;
            let cohort = s.cohort.clone().unwrap_or_default();
            let timeout = self.routes[s.route].config.ack_timeout_ms;
            let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout));
            let at_most_once = self.routes[s.route].config.delivery == DeliveryMode::AtMostOnce;
            let mut staged_pending = Vec::new();
            for mut p in s.queue.drain(..take) {
                p.deadline = deadline;
                let size = p.record.size();
                if !batch.is_empty() && bytes + size > MAX_BATCH_BYTES {
                    let deliveries = std::mem::take(&mut batch);
                    if at_most_once {
                        let pending = std::mem::take(&mut staged_pending);
                        self.staged.push(StagedSend { session: id, deliveries, pending });
                    } else {
                        // A closed outbox means the stream is going away; its unregister redelivers.
                        let _ = s.outbox.send(SessionMessage::Deliveries(deliveries));
                    }
                    bytes = 0;
                }
                bytes += size;
                let mut delivery = to_delivery(&p);
                delivery.cohort.clone_from(&cohort);
                if p.attempt > 1 {
                    self.redelivered += 1;
                }
                self.delivered += 1;
                if at_most_once {
                    staged_pending.push(p.clone());
                }
                s.in_flight.insert(delivery.delivery_id.clone(), p);
                batch.push(delivery);
            }
            if at_most_once {
                self.staged.push(StagedSend { session: id, deliveries: batch, pending: staged_pending });
            } else {
                let _ = s.outbox.send(SessionMessage::Deliveries(batch));
            }
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
        self.routes.iter().map(|r| r.unassigned.len() + r.parked.values().map(VecDeque::len).sum::<usize>()).sum()
    }

    /// Ends every session with `reason`.
    pub fn close_all(&mut self, reason: CloseReason) {
        for (_, s) in self.sessions.drain() {
            self.closed += 1;
            let _ = s.outbox.send(SessionMessage::Closed(reason.clone()));
        }
        for r in &mut self.routes {
            r.members.clear();
            r.cohorts.clear();
        }
        self.delayed.clear();
        self.delayed_items.clear();
    }
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn to_delivery(p: &Pending) -> proto::Delivery {
    let r = &p.record;
    proto::Delivery {
        delivery_id: r.delivery_id(),
        topic: r.tp.topic.to_string(),
        partition: r.tp.partition,
        offset: r.offset,
        key: r.key.clone().unwrap_or_default(),
        value: r.value.clone(),
        headers: r.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        timestamp: r.timestamp_ms.map(|ms| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        attempt: p.attempt,
        cohort: String::new(),
        idempotency_key: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn route(name: &str, window: u32) -> RouteConfig {
        let mut r = RouteConfig::new(name, &["t"]);
        r.max_in_flight = window * 2;
        r.default_in_flight = window;
        r
    }

    fn sub(name: &str) -> Subscriber {
        Subscriber { name: name.into(), ..Subscriber::default() }
    }

    fn record(partition: i32, offset: i64, key: &str) -> Arc<Record> {
        Arc::new(Record {
            tp: TopicPartition { topic: Arc::from("t"), partition },
            offset,
            key: Some(Bytes::from(key.to_string())),
            value: Bytes::from_static(b"v"),
            headers: vec![],
            timestamp_ms: Some(1_700_000_000_123),
        })
    }

    fn received(rx: &mut mpsc::UnboundedReceiver<SessionMessage>) -> Vec<proto::Delivery> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let SessionMessage::Deliveries(d) = m {
                out.extend(d);
            }
        }
        out
    }

    #[test]
    fn unknown_route_is_refused_with_the_known_ones() {
        let mut reg = Registry::new(&[route("orders", 10)]);
        let err = reg.register("billing", 0, sub("x")).expect_err("unknown");
        assert_eq!(err, RegisterError::UnknownRoute { route: "billing".into(), known: "orders".into() });
        assert_eq!(reg.register("", 0, sub("x")).expect_err("empty"), RegisterError::MissingRoute);
    }

    #[test]
    fn window_limits_deliveries_and_acks_open_it() {
        let mut reg = Registry::new(&[route("r", 3)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        assert_eq!(a.window, 3);
        for o in 0..10 {
            reg.dispatch(record(0, o, "k"), 1, 0);
        }
        reg.flush();
        let got = received(&mut a.outbox);
        assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(got[0].delivery_id, "t/0/0");
        assert_eq!(got[0].attempt, 1);
        assert_eq!(reg.in_flight(), 3);
        let acked = reg.ack(a.session, &["t/0/1".into(), "nope".into(), "t/0/1".into()]);
        assert_eq!(acked.settled.len(), 1);
        assert_eq!(acked.unknown, 2, "unknown and repeated ids are counted");
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn requested_window_is_capped_by_the_route() {
        let mut reg = Registry::new(&[route("r", 5)]);
        assert_eq!(reg.register("r", 1_000, sub("a")).expect("ok").window, 10);
        assert_eq!(reg.register("r", 2, sub("b")).expect("ok").window, 2);
    }

    #[test]
    fn departed_sessions_deliveries_go_to_the_other_member_with_attempt_two() {
        let mut reg = Registry::new(&[route("r", 500)]);
        let a = reg.register("r", 0, sub("a")).expect("ok");
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        let mut a_rx = a.outbox;
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("key-{o}")), 1, 0);
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
    fn messages_wait_for_a_member_and_keys_stick() {
        let mut reg = Registry::new(&[route("r", 100)]);
        for o in 0..50 {
            reg.dispatch(record(0, o, &format!("k{}", o % 5)), 1, 0);
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
    fn batches_are_bounded_in_bytes() {
        let mut reg = Registry::new(&[route("r", 100)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..5 {
            let mut r = (*record(0, o, "k")).clone();
            r.value = Bytes::from(vec![0u8; 400 * 1024]);
            reg.dispatch(Arc::new(r), 1, 0);
        }
        reg.flush();
        let mut sizes = Vec::new();
        while let Ok(SessionMessage::Deliveries(d)) = a.outbox.try_recv() {
            assert!(d.iter().map(|d| d.value.len()).sum::<usize>() <= MAX_BATCH_BYTES);
            sizes.push(d.len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn nack_redelivers_with_next_attempt() {
        let mut reg = Registry::new(&[route("r", 10)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 7, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        assert!(reg.nack(a.session, "t/0/7", Failure::retry("x")));
        assert!(!reg.nack(a.session, "t/0/7", Failure::retry("x")), "no longer in flight");
        reg.release_due(later(60));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!((again[0].offset, again[0].attempt), (7, 2));
    }

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    fn retrying(window: u32, max_attempts: u32, dlq: Option<&str>) -> RouteConfig {
        let mut r = route("r", window);
        r.retry = crate::config::RetryPolicy {
            max_attempts,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 4_000,
            retry_topic: None,
        };
        r.dead_letter_topic = dlq.map(str::to_string);
        r
    }

    #[test]
    fn a_nacked_delivery_waits_out_its_backoff_and_its_keys_later_messages_wait_behind_it() {
        let mut reg = Registry::new(&[retrying(1, 5, None)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1, 0);
        }
        reg.dispatch(record(0, 3, "other"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![0]);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("busy")));
        reg.release_due(Instant::now());
        reg.flush();
        // Backoff is at least half of 1 s: offset 0 is not back yet; key k's 1 and 2 must not
        // overtake it, but the other key's message may go.
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3]);
        assert_eq!(reg.delayed(), 1);
        reg.ack(a.session, &["t/0/3".into()]);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "k waits for its retry");
        reg.release_due(later(2));
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!(again.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
        reg.ack(a.session, &["t/0/0".into()]);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1]);
        assert_eq!(reg.retries_scheduled, 1);
    }

    #[test]
    fn a_subscribers_retry_after_decides_the_delay() {
        let mut reg = Registry::new(&[retrying(5, 5, None)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        received(&mut a.outbox);
        let failure =
            Failure { reason: "later".into(), retry_after: Some(Duration::from_secs(30)), dead_letter: false };
        assert!(reg.nack(a.session, "t/0/0", failure));
        reg.release_due(later(5));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "the route's 1 s backoff does not apply");
        reg.release_due(later(31));
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
    }

    #[test]
    fn the_last_attempt_goes_to_the_dead_letter_topic_and_frees_its_key() {
        let mut reg = Registry::new(&[retrying(5, 2, Some("dlq"))]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.dispatch(record(0, 1, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("bad")));
        reg.release_due(later(2));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("still bad")));
        let letters = reg.take_dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].pending.record.offset, letters[0].pending.attempt), (0, 2));
        assert_eq!(letters[0].reason, "still bad");
        assert_eq!(reg.delayed(), 0);
        // A dead-lettered message is settled as far as the subscriber goes: later messages of
        // its key flow.
        reg.dispatch(record(0, 2, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_dead_letter_nack_skips_the_remaining_attempts() {
        let mut reg = Registry::new(&[retrying(5, 5, Some("dlq"))]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        received(&mut a.outbox);
        let failure = Failure { reason: "unparseable".into(), retry_after: None, dead_letter: true };
        assert!(reg.nack(a.session, "t/0/0", failure));
        let letters = reg.take_dead_letters();
        assert_eq!((letters.len(), letters[0].pending.attempt), (1, 1));
    }

    #[test]
    fn without_a_dead_letter_topic_exhausted_messages_keep_retrying_at_the_longest_backoff() {
        let mut reg = Registry::new(&[retrying(5, 1, None)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("bad")));
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
        let mut config = retrying(5, 5, None);
        config.ack_timeout_ms = 10_000;
        let mut reg = Registry::new(&[config]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        received(&mut a.outbox);
        assert_eq!(reg.expire(later(5)), 0);
        assert_eq!(reg.expire(later(11)), 1);
        assert_eq!(reg.in_flight(), 0);
        reg.release_due(later(20));
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2]);
        // The late ack of the first attempt finds nothing; the second attempt's ack settles it.
        assert_eq!(reg.ack(a.session, &["t/0/0".into()]).settled.len(), 1);
        assert_eq!(reg.expired, 1);
    }

    #[test]
    fn a_poison_message_that_keeps_killing_its_subscribers_is_dead_lettered() {
        let mut reg = Registry::new(&[retrying(5, 2, Some("dlq"))]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
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
    fn at_most_once_batches_wait_for_their_commit_and_failures_are_never_redelivered() {
        let mut config = retrying(5, 5, None);
        config.delivery = DeliveryMode::AtMostOnce;
        let mut reg = Registry::new(&[config]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1, 0);
        }
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "nothing goes before its commit");
        let staged = reg.take_staged();
        assert_eq!(staged.iter().map(|s| s.pending.len()).sum::<usize>(), 3);
        for send in staged {
            reg.release_staged(send);
        }
        assert_eq!(received(&mut a.outbox).len(), 3);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("x")));
        assert_eq!(reg.expire(later(3_600)), 2);
        reg.release_due(later(7_200));
        reg.flush();
        assert!(reg.take_staged().is_empty() && received(&mut a.outbox).is_empty(), "never redelivered");
        assert_eq!(reg.take_dropped().len(), 3);
        assert_eq!(reg.delayed(), 0);
    }

    #[test]
    fn with_window_until_commit_acked_deliveries_hold_their_places_until_the_commit_lands() {
        let mut config = route("r", 2);
        config.window_until_commit = true;
        let mut reg = Registry::new(&[config]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..6 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1, 0);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.ack(a.session, &["t/0/0".into(), "t/0/1".into()]);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "acked but not committed: still in the window");
        assert!(reg.awaiting_commit());
        let generation = reg.commit_started();
        // An ack after the commit was computed is not covered by it.
        reg.commit_landed(generation);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        reg.ack(a.session, &["t/0/2".into()]);
        reg.commit_landed(generation);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "offset 2's ack came after that commit");
        let later = reg.commit_started();
        reg.commit_landed(later);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![4]);
        assert!(!reg.awaiting_commit());
    }

    #[test]
    fn revoking_a_partition_drops_its_retrying_messages() {
        let mut reg = Registry::new(&[retrying(5, 5, None)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, "t/0/0", Failure::retry("x")));
        assert_eq!(reg.purge(&[record(0, 0, "k").tp.clone()]), 1);
        assert_eq!(reg.delayed(), 0);
        reg.release_due(later(60));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        // The key is free for the partition's next owner's messages.
        reg.dispatch(record(0, 0, "k"), 2, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
    }

    #[test]
    fn drain_closes_after_in_flight_settles_and_hands_queue_over() {
        let mut reg = Registry::new(&[route("r", 2)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..4 {
            reg.dispatch(record(0, o, "same-key"), 1, 0);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.drain(a.session);
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "the key waits for a's in-flight messages");
        let acked = reg.ack(a.session, &["t/0/0".into(), "t/0/1".into()]);
        assert!(acked.closed);
        assert_eq!((reg.closed, reg.session_count()), (1, 1), "a closed, b open");
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::Drained))));
    }

    #[test]
    fn purge_drops_revoked_partitions_everywhere() {
        let mut reg = Registry::new(&[route("r", 1)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1, 0);
            reg.dispatch(record(1, o, "k"), 1, 0);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox)[0].partition, 0);
        let dropped = reg.purge(&[TopicPartition { topic: Arc::from("t"), partition: 0 }]);
        assert_eq!(dropped, 3);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].partition, 1);
        assert_eq!(reg.ack(a.session, &["t/0/0".into()]).unknown, 1);
    }

    fn split_route(empty: EmptyCohort, blue: u32, green: u32) -> RouteConfig {
        let mut r = route("r", 100);
        r.split_label = Some("track".into());
        r.weights = [("blue".to_string(), blue), ("green".to_string(), green)].into_iter().collect();
        r.empty_cohort = empty;
        r
    }

    fn labelled(name: &str, track: &str) -> Subscriber {
        Subscriber {
            name: name.into(),
            labels: [("track".to_string(), track.to_string())].into_iter().collect(),
            pod: None,
        }
    }

    #[test]
    fn weights_send_each_cohort_its_share_only() {
        let mut reg = Registry::new(&[split_route(EmptyCohort::Hold, 0, 100)]);
        let mut blue = reg.register("r", 100, labelled("b", "blue")).expect("ok");
        let mut green = reg.register("r", 100, labelled("g", "green")).expect("ok");
        for o in 0..100 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1, 0);
        }
        reg.flush();
        assert!(received(&mut blue.outbox).is_empty(), "blue has weight 0");
        let got = received(&mut green.outbox);
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|d| d.cohort == "green"));
    }

    #[test]
    fn empty_cohort_hold_keeps_its_share_until_a_member_comes() {
        let mut reg = Registry::new(&[split_route(EmptyCohort::Hold, 50, 50)]);
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1, 0);
        }
        reg.flush();
        let to_blue = received(&mut blue.outbox).len();
        assert!(to_blue > 50 && to_blue < 150, "{to_blue}");
        assert_eq!(reg.held(), 200 - to_blue, "green's share waits, nothing goes to blue");
        let mut green = reg.register("r", 200, labelled("g", "green")).expect("ok");
        reg.flush();
        assert_eq!(received(&mut green.outbox).len(), 200 - to_blue);
        assert_eq!(reg.held(), 0);
    }

    #[test]
    fn empty_cohort_spill_sends_its_share_to_the_others() {
        let mut reg = Registry::new(&[split_route(EmptyCohort::Spill, 50, 50)]);
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1, 0);
        }
        reg.flush();
        assert_eq!(received(&mut blue.outbox).len(), 200);
    }

    #[test]
    fn a_relabelled_subscribers_keys_move_only_after_its_in_flight_messages_settle() {
        let mut reg = Registry::new(&[split_route(EmptyCohort::Hold, 100, 0)]);
        let mut a = reg.register("r", 10, labelled("a", "blue")).expect("ok");
        let mut b = reg.register("r", 10, labelled("b", "green")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.dispatch(record(0, 1, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        // The operator flips the weights: key k now belongs to green, but two of its messages
        // are in flight at blue.
        reg.update_routes(&[split_route(EmptyCohort::Hold, 0, 100)]);
        reg.dispatch(record(0, 2, "k"), 1, 0);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "k waits for blue to settle");
        reg.ack(a.session, &["t/0/0".into()]);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "one still in flight");
        reg.ack(a.session, &["t/0/1".into()]);
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
        // And a label change moves keys the same way.
        reg.update_labels(b.session, [("track".to_string(), "blue".to_string())].into_iter().collect());
        reg.dispatch(record(0, 3, "k"), 1, 0);
        reg.flush();
        assert!(
            received(&mut a.outbox).is_empty() && received(&mut b.outbox).is_empty(),
            "green holds; nothing to blue"
        );
        assert_eq!(reg.held(), 1);
    }

    #[test]
    fn labels_that_leave_the_selector_drain_and_close_the_session() {
        let mut r = route("r", 10);
        r.selector = "app=orders".into();
        let mut reg = Registry::new(&[r]);
        let err = reg.register("r", 0, sub("stranger")).expect_err("not selected");
        assert!(matches!(err, RegisterError::NotSelected { .. }), "{err:?}");
        let app = |v: &str| -> BTreeMap<String, String> { [("app".to_string(), v.to_string())].into_iter().collect() };
        let mut a =
            reg.register("r", 0, Subscriber { name: "a".into(), labels: app("orders"), pod: None }).expect("selected");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        reg.update_labels(a.session, app("billing"));
        reg.ack(a.session, &["t/0/0".into()]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::NotSelected(_)))));
    }

    #[test]
    fn paused_registry_sends_nothing_and_refuses_sessions() {
        let mut reg = Registry::new(&[route("r", 5)]);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.set_paused(true);
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        assert_eq!(reg.register("r", 0, sub("b")).expect_err("closed"), RegisterError::ShuttingDown);
    }
}
