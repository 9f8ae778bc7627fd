//! A subscriber's session and what passes through it: who subscribes, the window, queue and
//! in-flight deliveries the registry keeps for it, the deliveries out to its stream, and how
//! it closes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::adaptive::AdaptiveLimit;
use super::commit_window::Unconfirmed;
use super::throttle::Throttle;
use crate::config::rate_limit::RateLimit;
use crate::kafka::{Record, TopicPartition};

/// A subscriber stream's number on this replica, unique for the gateway's lifetime: what
/// `Status` lists and `fanoutctl drain` takes besides a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl From<SessionId> for u64 {
    fn from(id: SessionId) -> u64 {
        id.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

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
    /// The replay it belongs to; None for a live delivery.
    pub replay: Option<ReplayTag>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AckId(pub u64);

impl AckId {
    /// The handle after this one on the same stream.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
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

/// Who a new session is, and the limit it asked for.
#[derive(Debug, Clone, Default)]
pub struct Subscriber {
    /// Pod name or peer address, for logs and status.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// (namespace, pod) when discovery is Kubernetes: pod events find the session by it.
    pub pod: Option<(String, String)>,
    /// `Hello.rate_limit`: how fast this subscriber wants deliveries (capped by the route's).
    pub rate_limit: Option<RateLimit>,
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
    pub(super) hash: u64,
    /// When the subscriber's time to ack runs out (set when sent, if the route has one).
    pub(super) deadline: Option<Instant>,
    /// The latest the deadline may be extended to: the route's `max_lease_ms` after it was
    /// sent (set with the deadline).
    pub(super) lease_end: Option<Instant>,
    /// When it was last sent: its ack latency runs from here (adaptive windows).
    pub(super) sent: Option<Instant>,
    /// Attempts that ended in an OVERLOADED nack: they do not count against `max_attempts`.
    pub overloads: u32,
    /// When the gateway received the record from Kafka: delivery latency runs from here to
    /// the ack.
    pub received: Instant,
}

impl Pending {
    /// A message as it arrives: not sent yet, received now.
    pub(super) fn new(
        record: Arc<Record>,
        attempt: u32,
        epoch: u64,
        idempotency_key: Option<Arc<str>>,
        hash: u64,
        replay: Option<ReplayTag>,
    ) -> Self {
        Self {
            record,
            attempt,
            epoch,
            idempotency_key,
            replay,
            hash,
            deadline: None,
            lease_end: None,
            sent: None,
            overloads: 0,
            received: Instant::now(),
        }
    }

    /// When this attempt was sent to its subscriber (None before it is).
    pub fn sent(&self) -> Option<Instant> {
        self.sent
    }

    /// A first attempt of `record`, for other modules' tests.
    #[cfg(test)]
    pub(crate) fn new_for_test(record: Arc<Record>) -> Self {
        Self::new(record, 1, 1, None, 0, None)
    }

    pub(super) fn order(&self) -> (&TopicPartition, i64) {
        (&self.record.tp, self.record.offset)
    }
}

/// One subscriber's stream as the registry holds it. The registry orchestrates sessions with
/// the other parts (keys, retries, staging), so their fields are open to it.
pub(super) struct Session {
    pub(super) window: u32,
    pub(super) queue: VecDeque<Pending>,
    /// Keyed by ack id. xxh3 rather than SipHash: the ids are our own sequence numbers, a
    /// flooding attacker has nothing to aim at, and this map is touched twice per message.
    pub(super) in_flight: HashMap<AckId, Pending, xxhash_rust::xxh3::Xxh3Builder>,
    /// The ack id of the next delivery sent on this session.
    pub(super) next_ack_id: AckId,
    pub(super) outbox: mpsc::UnboundedSender<SessionMessage>,
    /// No new deliveries; closed when `in_flight` empties.
    pub(super) draining: bool,
    /// Why the session will close once drained (None: the subscriber asked).
    pub(super) close_reason: Option<CloseReason>,
    pub(super) subscriber: Subscriber,
    /// Value of the route's split label, if the route has one.
    pub(super) cohort: Option<String>,
    /// Acks not yet covered by a landed commit (routes with `window_until_commit`: they keep
    /// their places in the window).
    pub(super) unconfirmed: Unconfirmed,
    /// Deliveries sent and acks received on this session (operator status).
    pub(super) delivered: u64,
    pub(super) acked: u64,
    pub(super) connected_at: std::time::SystemTime,
    /// The subscriber's own rate limit (its Hello's, capped by the route's), if it asked.
    pub(super) throttle: Option<Throttle>,
    /// Its window under `window` on a route with `window = "adaptive"`.
    pub(super) adaptive: Option<AdaptiveLimit>,
}

impl Session {
    pub(super) fn new(
        window: u32,
        outbox: mpsc::UnboundedSender<SessionMessage>,
        subscriber: Subscriber,
        cohort: Option<String>,
    ) -> Self {
        Self {
            window,
            queue: VecDeque::new(),
            in_flight: HashMap::default(),
            next_ack_id: AckId(1),
            outbox,
            draining: false,
            close_reason: None,
            subscriber,
            cohort,
            unconfirmed: Unconfirmed::default(),
            delivered: 0,
            acked: 0,
            connected_at: std::time::SystemTime::now(),
            throttle: None,
            adaptive: None,
        }
    }

    /// Places left in the window: each delivery in flight takes one, and so does each ack
    /// waiting for its commit.
    pub(super) fn room(&self) -> usize {
        (self.window_now() as usize).saturating_sub(self.in_flight.len() + self.unconfirmed.total() as usize)
    }

    /// The window in effect: its own, or below it the adaptive one.
    pub(super) fn window_now(&self) -> u32 {
        self.adaptive.as_ref().map_or(self.window, |a| a.window().min(self.window))
    }

    pub(super) fn snapshot(&self, session: SessionId) -> SubscriberSnapshot {
        SubscriberSnapshot {
            session,
            name: self.subscriber.name.clone(),
            cohort: self.cohort.clone(),
            labels: self.subscriber.labels.clone(),
            window: self.window_now(),
            in_flight: self.in_flight.len() as u32,
            delivered: self.delivered,
            acked: self.acked,
            connected_at: self.connected_at,
            draining: self.draining,
            rate_limit: self.throttle.as_ref().map(|t| *t.limit()),
        }
    }
}

/// One open session as the operator sees it.
#[derive(Debug, Clone)]
pub struct SubscriberSnapshot {
    pub session: SessionId,
    pub name: String,
    pub cohort: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub window: u32,
    pub in_flight: u32,
    pub delivered: u64,
    pub acked: u64,
    pub connected_at: std::time::SystemTime,
    pub draining: bool,
    /// The subscriber's own rate limit in effect (its Hello's, capped by the route's).
    pub rate_limit: Option<RateLimit>,
}

/// A new session's handles.
#[derive(Debug)]
pub struct Registered {
    pub session: SessionId,
    pub outbox: mpsc::UnboundedReceiver<SessionMessage>,
    pub window: u32,
    /// The route's ack deadline when the session started, told to the subscriber with its
    /// deliveries so that it can extend them in time.
    pub ack_timeout_ms: u64,
}

/// What an `Extend` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extended {
    /// Deliveries whose deadline moved.
    pub moved: u64,
    /// Ids not in flight on the session (settled, taken back, never sent).
    pub unknown: u64,
}

/// Result of an ack batch.
#[derive(Debug, Default)]
pub struct Acked {
    pub settled: Vec<Pending>,
    pub unknown: u64,
    /// Set when the session drained and has now been closed.
    pub closed: bool,
}

#[cfg(test)]
mod tests {
    use super::super::testing::{record, sub};
    use super::*;

    #[test]
    fn in_flight_deliveries_and_unconfirmed_acks_take_window_places() {
        let (outbox, _rx) = mpsc::unbounded_channel();
        let mut session = Session::new(3, outbox, sub("a"), Some("blue".into()));
        assert_eq!(session.room(), 3);
        session.in_flight.insert(AckId(1), Pending::new(record(0, 0, "k"), 1, 1, None, 7, None));
        session.unconfirmed.add(0, 1);
        assert_eq!(session.room(), 1);
        session.unconfirmed.add(0, 5);
        assert_eq!(session.room(), 0, "never below zero");
        let seen = session.snapshot(SessionId(4));
        assert_eq!((seen.session, seen.name.as_str(), seen.cohort.as_deref()), (SessionId(4), "a", Some("blue")));
        assert_eq!((seen.window, seen.in_flight, seen.draining), (3, 1, false));
    }
}
