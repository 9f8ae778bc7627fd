//! The session registry: live subscribers per route, their windows, queues and in-flight sets.
//!
//! Owned by the dispatcher task and changed only by its calls; no I/O besides pushing into
//! each session's outbox (an unbounded channel whose length the window bounds). Messages for
//! a route go to one of its members chosen by [`routing::instance_for`]; a member's queue
//! holds what its window cannot take yet. When membership changes, queued (not yet sent)
//! messages are routed again, and a departed member's in-flight deliveries are redelivered.
//! Acked deliveries leave the registry and go back to the dispatcher, which records them in
//! the offset trackers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::RouteConfig;
use crate::kafka::{Record, TopicPartition};
use crate::proto;
use crate::routing;

pub type SessionId = u64;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The subscriber asked to drain and everything in flight is settled.
    Drained,
    /// The gateway is shutting down; reconnect (to another replica) with backoff.
    ShuttingDown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("route `{route}` is not configured (configured routes: {known})")]
    UnknownRoute { route: String, known: String },
    #[error("hello.route is empty: name the route to subscribe to")]
    MissingRoute,
    #[error("the gateway is shutting down")]
    ShuttingDown,
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
    hash: u64,
}

impl Pending {
    pub fn new(record: Arc<Record>, epoch: u64, route: usize) -> Self {
        let hash = routing::key_hash(record.key.as_deref(), record.tp.partition, record.offset);
        Self { record, attempt: 1, epoch, route, hash }
    }

    fn order(&self) -> (&TopicPartition, i64) {
        (&self.record.tp, self.record.offset)
    }
}

struct Session {
    route: usize,
    window: u32,
    queue: VecDeque<Pending>,
    in_flight: HashMap<String, Pending>,
    outbox: mpsc::UnboundedSender<SessionMessage>,
    /// No new deliveries; closed when `in_flight` empties.
    draining: bool,
    name: String,
}

struct RouteState {
    config: RouteConfig,
    /// Members that take new messages, ascending.
    members: Vec<SessionId>,
    /// Messages that have no member to go to yet.
    unassigned: VecDeque<Pending>,
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
    /// Deliveries sent, and how many of them were redeliveries.
    pub delivered: u64,
    pub redelivered: u64,
}

impl Registry {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes
                .iter()
                .map(|config| RouteState { config: config.clone(), members: Vec::new(), unassigned: VecDeque::new() })
                .collect(),
            sessions: HashMap::new(),
            next_id: 1,
            paused: false,
            dirty: BTreeSet::new(),
            delivered: 0,
            redelivered: 0,
        }
    }

    /// Index of each route that consumes `topic`.
    pub fn routes_for_topic(&self, topic: &str) -> Vec<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.config.topics.iter().any(|t| t == topic))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn route_name(&self, route: usize) -> &str {
        &self.routes[route].config.name
    }

    /// Opens a session on a route. `requested` is Hello.max_in_flight (0: route default).
    pub fn register(&mut self, route: &str, requested: u32, name: &str) -> Result<Registered, RegisterError> {
        if self.paused {
            return Err(RegisterError::ShuttingDown);
        }
        if route.trim().is_empty() {
            return Err(RegisterError::MissingRoute);
        }
        let Some(r) = self.routes.iter().position(|s| s.config.name == route) else {
            let known = self.routes.iter().map(|r| r.config.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(RegisterError::UnknownRoute { route: route.to_string(), known });
        };
        let config = &self.routes[r].config;
        let window = if requested == 0 { config.default_in_flight } else { requested.min(config.max_in_flight) };
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.sessions.insert(
            id,
            Session {
                route: r,
                window,
                queue: VecDeque::new(),
                in_flight: HashMap::new(),
                outbox: tx,
                draining: false,
                name: name.to_string(),
            },
        );
        let members = &mut self.routes[r].members;
        members.push(id);
        members.sort_unstable();
        self.reroute(r, Vec::new());
        Ok(Registered { session: id, outbox: rx, window })
    }

    /// Ends a session: its queued messages are routed again, its in-flight ones redelivered.
    /// Unknown ids are ignored (the stream may end twice: reader and writer side).
    pub fn unregister(&mut self, id: SessionId) -> bool {
        let Some(session) = self.sessions.remove(&id) else { return false };
        self.dirty.remove(&id);
        let r = session.route;
        self.routes[r].members.retain(|m| *m != id);
        let mut orphans: Vec<Pending> = session
            .in_flight
            .into_values()
            .map(|mut p| {
                p.attempt += 1;
                p
            })
            .collect();
        orphans.extend(session.queue);
        self.reroute(r, orphans);
        true
    }

    /// Stop sending new messages to a session; it closes once its in-flight ones settle.
    pub fn drain(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        session.draining = true;
        let r = session.route;
        let queued: Vec<Pending> = session.queue.drain(..).collect();
        self.routes[r].members.retain(|m| *m != id);
        self.reroute(r, queued);
        self.close_if_drained(id);
    }

    fn close_if_drained(&mut self, id: SessionId) -> bool {
        let done = self.sessions.get(&id).is_some_and(|s| s.draining && s.in_flight.is_empty());
        if done {
            if let Some(s) = self.sessions.remove(&id) {
                let _ = s.outbox.send(SessionMessage::Closed(CloseReason::Drained));
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
        self.dirty.insert(id);
        out.closed = self.close_if_drained(id);
        out
    }

    /// Takes a delivery back from a session for another attempt. Returns false if it was not
    /// in flight there.
    pub fn nack(&mut self, id: SessionId, delivery_id: &str) -> bool {
        let Some(session) = self.sessions.get_mut(&id) else { return false };
        let Some(mut p) = session.in_flight.remove(delivery_id) else { return false };
        p.attempt += 1;
        let r = session.route;
        self.dirty.insert(id);
        // First in line again, so that later messages of its key stay behind it.
        self.assign(r, p, true);
        self.close_if_drained(id);
        true
    }

    /// Routes a newly received message.
    pub fn dispatch(&mut self, p: Pending) {
        self.assign(p.route, p, false);
    }

    fn assign(&mut self, r: usize, p: Pending, front: bool) {
        let route = &mut self.routes[r];
        let Some(i) = routing::instance_for(p.hash, &route.members) else {
            if front {
                route.unassigned.push_front(p)
            } else {
                route.unassigned.push_back(p)
            }
            return;
        };
        let id = route.members[i];
        if let Some(s) = self.sessions.get_mut(&id) {
            if front {
                s.queue.push_front(p)
            } else {
                s.queue.push_back(p)
            }
            self.dirty.insert(id);
        }
    }

    /// Routes again every queued message of a route plus `extra`, oldest first per partition,
    /// after membership changed.
    fn reroute(&mut self, r: usize, extra: Vec<Pending>) {
        let mut all = extra;
        all.extend(self.routes[r].unassigned.drain(..));
        for id in &self.routes[r].members {
            if let Some(s) = self.sessions.get_mut(id) {
                all.extend(s.queue.drain(..));
            }
        }
        all.sort_by(|a, b| a.order().cmp(&b.order()));
        for p in all {
            self.assign(r, p, false);
        }
    }

    /// Drops every message of these partitions (revoked): queued, unassigned or in flight.
    /// Acks that arrive later for them are unknown.
    pub fn purge(&mut self, partitions: &[TopicPartition]) -> usize {
        let gone = |p: &Pending| partitions.contains(&p.record.tp);
        let mut dropped = 0;
        for route in &mut self.routes {
            let before = route.unassigned.len();
            route.unassigned.retain(|p| !gone(p));
            dropped += before - route.unassigned.len();
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                let before = s.queue.len() + s.in_flight.len();
                s.queue.retain(|p| !gone(p));
                s.in_flight.retain(|_, p| !gone(p));
                dropped += before - s.queue.len() - s.in_flight.len();
                self.dirty.insert(id);
            }
            self.close_if_drained(id);
        }
        dropped
    }

    /// Stops (or restarts) all sending.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.dirty.extend(self.sessions.keys().copied());
        }
    }

    /// Sends what the windows allow to every session that may have room. One batch per
    /// session per call.
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
            let room = (s.window as usize).saturating_sub(s.in_flight.len());
            if room == 0 || s.queue.is_empty() {
                continue;
            }
            let take = room.min(s.queue.len());
            let mut batch = Vec::with_capacity(take.min(256));
            let mut bytes = 0;
            for p in s.queue.drain(..take) {
                let size = p.record.size();
                if !batch.is_empty() && bytes + size > MAX_BATCH_BYTES {
                    // A closed outbox means the stream is going away; its unregister redelivers.
                    let _ = s.outbox.send(SessionMessage::Deliveries(std::mem::take(&mut batch)));
                    bytes = 0;
                }
                bytes += size;
                let delivery = to_delivery(&p);
                if p.attempt > 1 {
                    self.redelivered += 1;
                }
                self.delivered += 1;
                s.in_flight.insert(delivery.delivery_id.clone(), p);
                batch.push(delivery);
            }
            let _ = s.outbox.send(SessionMessage::Deliveries(batch));
        }
    }

    /// Deliveries out and not yet acked, all sessions.
    pub fn in_flight(&self) -> usize {
        self.sessions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Live sessions per route name (for status).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Names of the sessions of a route (pod names or peers), for status and tests.
    pub fn members(&self, route: usize) -> Vec<String> {
        self.routes[route].members.iter().filter_map(|id| self.sessions.get(id)).map(|s| s.name.clone()).collect()
    }

    /// Ends every session with `reason`.
    pub fn close_all(&mut self, reason: CloseReason) {
        for (_, s) in self.sessions.drain() {
            let _ = s.outbox.send(SessionMessage::Closed(reason));
        }
        for r in &mut self.routes {
            r.members.clear();
        }
    }
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
        RouteConfig { name: name.into(), topics: vec!["t".into()], max_in_flight: window * 2, default_in_flight: window }
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
        let err = reg.register("billing", 0, "x").expect_err("unknown");
        assert_eq!(err, RegisterError::UnknownRoute { route: "billing".into(), known: "orders".into() });
        assert_eq!(reg.register("", 0, "x").expect_err("empty"), RegisterError::MissingRoute);
    }

    #[test]
    fn window_limits_deliveries_and_acks_open_it() {
        let mut reg = Registry::new(&[route("r", 3)]);
        let mut a = reg.register("r", 0, "a").expect("ok");
        assert_eq!(a.window, 3);
        for o in 0..10 {
            reg.dispatch(Pending::new(record(0, o, "k"), 1, 0));
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
        assert_eq!(reg.register("r", 1_000, "a").expect("ok").window, 10);
        assert_eq!(reg.register("r", 2, "b").expect("ok").window, 2);
    }

    #[test]
    fn departed_sessions_deliveries_go_to_the_other_member_with_attempt_two() {
        let mut reg = Registry::new(&[route("r", 500)]);
        let a = reg.register("r", 0, "a").expect("ok");
        let mut b = reg.register("r", 0, "b").expect("ok");
        let mut a_rx = a.outbox;
        for o in 0..200 {
            reg.dispatch(Pending::new(record(0, o, &format!("key-{o}")), 1, 0));
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
            reg.dispatch(Pending::new(record(0, o, &format!("k{}", o % 5)), 1, 0));
        }
        reg.flush();
        let mut a = reg.register("r", 0, "a").expect("ok");
        let mut b = reg.register("r", 0, "b").expect("ok");
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
        let mut a = reg.register("r", 0, "a").expect("ok");
        for o in 0..5 {
            let mut r = (*record(0, o, "k")).clone();
            r.value = Bytes::from(vec![0u8; 400 * 1024]);
            reg.dispatch(Pending::new(Arc::new(r), 1, 0));
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
        let mut a = reg.register("r", 0, "a").expect("ok");
        reg.dispatch(Pending::new(record(0, 7, "k"), 1, 0));
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        assert!(reg.nack(a.session, "t/0/7"));
        assert!(!reg.nack(a.session, "t/0/7"), "no longer in flight");
        reg.flush();
        let again = received(&mut a.outbox);
        assert_eq!((again[0].offset, again[0].attempt), (7, 2));
    }

    #[test]
    fn drain_closes_after_in_flight_settles_and_hands_queue_over() {
        let mut reg = Registry::new(&[route("r", 2)]);
        let mut a = reg.register("r", 0, "a").expect("ok");
        for o in 0..4 {
            reg.dispatch(Pending::new(record(0, o, "same-key"), 1, 0));
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.drain(a.session);
        let mut b = reg.register("r", 0, "b").expect("ok");
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        let acked = reg.ack(a.session, &["t/0/0".into(), "t/0/1".into()]);
        assert!(acked.closed);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::Drained))));
    }

    #[test]
    fn purge_drops_revoked_partitions_everywhere() {
        let mut reg = Registry::new(&[route("r", 1)]);
        let mut a = reg.register("r", 0, "a").expect("ok");
        for o in 0..3 {
            reg.dispatch(Pending::new(record(0, o, "k"), 1, 0));
            reg.dispatch(Pending::new(record(1, o, "k"), 1, 0));
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

    #[test]
    fn paused_registry_sends_nothing_and_refuses_sessions() {
        let mut reg = Registry::new(&[route("r", 5)]);
        let mut a = reg.register("r", 0, "a").expect("ok");
        reg.set_paused(true);
        reg.dispatch(Pending::new(record(0, 0, "k"), 1, 0));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        assert_eq!(reg.register("r", 0, "b").expect_err("closed"), RegisterError::ShuttingDown);
    }
}
