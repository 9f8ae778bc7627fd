//! The dispatcher task: the one owner of the gateway's moving state.
//!
//! Kafka events (records, assignments, revocations) come in from the consumer thread; session
//! commands (hello, acks, nacks, credits, drains, goodbyes) come in from the gRPC streams. The
//! dispatcher tracks every received offset ([`PartitionTracker`]), routes records to sessions
//! ([`Registry`]), turns acks into commit points and sends those, plus pause/resume decisions,
//! back to the consumer. Commands are taken before new records (`biased`), so acks always
//! make room before more work is accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::config::{DeliveryMode, DiscoveryMode, RouteConfig};
use crate::deadletter::DeadLetterProducer;
use crate::dedup::{Claim, DedupConfig, DedupStore, Verdict};
use crate::discovery::{self, PodEvent, PodIndex};
use crate::kafka::consumer::ConsumerHandle;
use crate::proto::Hello;
use crate::kafka::{Assignment, KafkaCommand, KafkaEvent, Record, TopicPartition};
use crate::offsets::{AckOutcome, CommitPoint, PartitionTracker, Track};
use crate::stats::Stats;
use crate::subscriptions::{
    CloseReason, DeadLetter, Failure, RegisterError, Registered, Registry, SessionId, StagedSend, Subscriber,
};

/// How often failed messages whose backoff is over are put back in line.
const RETRY_TICK: Duration = Duration::from_millis(10);
/// How often in-flight deliveries are checked against their ack deadlines.
const DEADLINE_SCAN: Duration = Duration::from_millis(100);
/// Backoff between attempts to produce a dead letter that Kafka refused.
const DEAD_LETTER_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Capacity of the command channel from gRPC streams. A full channel makes stream readers
/// wait, which slows clients' acks down to what the dispatcher can take.
pub const COMMAND_CHANNEL: usize = 1_024;

/// Requests from the gRPC layer.
#[derive(Debug)]
pub enum Command {
    Register {
        hello: Hello,
        peer: Option<SocketAddr>,
        reply: oneshot::Sender<Result<Registered, RegisterError>>,
    },
    /// New route settings (hot reload, operator). Answers with the names it did not know.
    UpdateRoutes {
        routes: Vec<RouteConfig>,
        reply: Option<oneshot::Sender<Vec<String>>>,
    },
    Ack {
        session: SessionId,
        delivery_ids: Vec<String>,
    },
    Nack {
        session: SessionId,
        delivery_id: String,
        failure: Failure,
    },
    Credit {
        session: SessionId,
        additional: u32,
    },
    Drain {
        session: SessionId,
    },
    Unregister {
        session: SessionId,
    },
}

struct PartitionState {
    tracker: PartitionTracker,
    epoch: u64,
    paused: bool,
    last_commit: Option<CommitPoint>,
    /// Set when a record arrived with the partition's buffer full: that record and every later
    /// one are dropped unseen, and the consumer seeks back here when it resumes. Records
    /// already on their way when a pause takes effect must not push memory past the bound.
    refetch_from: Option<i64>,
}

impl PartitionState {
    fn new(tracker: PartitionTracker, epoch: u64) -> Self {
        Self { tracker, epoch, paused: false, last_commit: None, refetch_from: None }
    }
}

/// Work finished by tasks the dispatcher started.
#[derive(Debug)]
enum Internal {
    /// Kafka acknowledged a dead letter: its origin offset is done.
    DeadLettered { tp: TopicPartition, offset: i64, epoch: u64, retry: bool },
    /// A commit finished; `generation` is the registry's commit generation it covers.
    Committed { points: Vec<(TopicPartition, CommitPoint)>, ok: bool, generation: Option<u64> },
    /// The commit that covers these at-most-once records finished: if it succeeded they may go.
    CommittedBeforeSend { points: Vec<(TopicPartition, CommitPoint)>, ok: bool, sends: Vec<StagedSend> },
    /// The dedup store answered a route's claims: `batch[i].2` indexes `verdicts` for records
    /// that have an idempotency key.
    Claimed { route: usize, batch: Vec<(Arc<Record>, u64, Option<usize>)>, verdicts: Result<Vec<Verdict>, String> },
}

/// An effectively-once route's duplicate filter. Records wait here, in order, for the store's
/// verdict; one claim batch is out at a time, so verdicts (and deliveries) keep Kafka's order.
pub struct RouteDedup {
    pub store: Arc<dyn DedupStore>,
    pub config: DedupConfig,
    waiting: Vec<(Arc<Record>, u64)>,
    claiming: bool,
}

impl RouteDedup {
    pub fn new(store: Arc<dyn DedupStore>, config: DedupConfig) -> Self {
        Self { store, config, waiting: Vec::new(), claiming: false }
    }
}

/// Settings the dispatcher needs from the config.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub commit_interval: Duration,
    pub max_uncommitted: usize,
    pub shutdown_grace: Duration,
    /// How long revoked partitions wait for their in-flight acks before they are released.
    pub revoke_drain: Duration,
    pub discovery: DiscoveryMode,
}

/// Partitions being taken away: nothing new of theirs is sent, and the consumer thread waits
/// in its revoke callback for `reply` until their in-flight deliveries are settled or
/// `deadline` passes.
struct Revoking {
    partitions: Vec<TopicPartition>,
    reply: std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>,
    deadline: Instant,
}

/// What this pipeline last added to the gateway-wide counters that it reports as totals or
/// gauges: the next report adds only the difference, so routes' parts add up.
#[derive(Debug, Default)]
struct Reported {
    delivered: u64,
    redelivered: u64,
    sessions: u64,
    sessions_closed: u64,
    expired: u64,
    retries_scheduled: u64,
    exhausted_without_dlq: u64,
    dedup_evictions: u64,
    buffered: u64,
}

/// The dispatcher's state; [`run`] drives it.
pub struct Dispatcher {
    registry: Registry,
    partitions: HashMap<TopicPartition, PartitionState>,
    topic_routes: HashMap<Arc<str>, Vec<usize>>,
    next_epoch: u64,
    stats: Arc<Stats>,
    settings: DispatcherSettings,
    stopping: bool,
    /// Pods each route's selector picks (Kubernetes discovery), by route index.
    pods: HashMap<usize, PodIndex>,
    /// The selector each route's pod watch uses, by route index (Kubernetes discovery): a
    /// reload that changes a selector restarts that watch with the new one.
    watched_selectors: Vec<watch::Sender<String>>,
    dead_letter_producer: Option<DeadLetterProducer>,
    /// Dead-letter produces and commit outcomes under way.
    tasks: JoinSet<Internal>,
    /// Dead letters produced but not yet acknowledged by Kafka.
    dead_letters_in_flight: usize,
    /// Duplicate filters of effectively-once routes, by route index.
    dedup: HashMap<usize, RouteDedup>,
    /// At-most-once batches taken from the registry, waiting for the commit that covers them.
    staged: Vec<StagedSend>,
    /// A commit for at-most-once batches is under way.
    committing_before_send: bool,
    /// A commit of acked offsets is under way (one at a time).
    committing: bool,
    /// Revokes waiting for their partitions' in-flight deliveries, oldest first.
    revoking: Vec<Revoking>,
    reported: Reported,
}

impl Dispatcher {
    pub fn new(registry: Registry, stats: Arc<Stats>, settings: DispatcherSettings) -> Self {
        Self {
            registry,
            partitions: HashMap::new(),
            topic_routes: HashMap::new(),
            next_epoch: 1,
            stats,
            settings,
            stopping: false,
            pods: HashMap::new(),
            watched_selectors: Vec::new(),
            dead_letter_producer: None,
            tasks: JoinSet::new(),
            dead_letters_in_flight: 0,
            dedup: HashMap::new(),
            staged: Vec::new(),
            committing_before_send: false,
            committing: false,
            revoking: Vec::new(),
            reported: Reported::default(),
        }
    }

    /// The partition's state if it is still the assignment `epoch` names (not revoked since).
    fn current(&mut self, tp: &TopicPartition, epoch: u64) -> Option<&mut PartitionState> {
        self.partitions.get_mut(tp).filter(|s| s.epoch == epoch)
    }

    /// Commits the offsets whose commit points moved, unless a commit is still under way
    /// (the next tick, or the next ack, sends what moved meanwhile). Subscribers' windows that
    /// hold acks until they are committed are freed when it lands.
    fn commit(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        if self.committing {
            return;
        }
        let generation = self.registry.commit_started();
        let points = self.commit_points();
        if points.is_empty() {
            // Every ack so far is in what was committed already.
            self.registry.commit_landed(generation);
            return;
        }
        let Some(result) = request_commit(kafka, points.clone()) else { return };
        self.committing = true;
        self.tasks.spawn(async move {
            let ok = matches!(result.await, Ok(Ok(())));
            Internal::Committed { points, ok, generation: Some(generation) }
        });
    }

    /// Marks the at-most-once batches the registry is about to send as done and commits
    /// them, unless such a commit is already out; the batches go to their streams only when it
    /// succeeds. Committing at send time, not at receipt, means a crash loses what was being
    /// sent (at most the windows), not everything buffered.
    fn commit_before_send(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        for send in self.registry.take_staged() {
            for p in &send.pending {
                if let Some(state) = self.current(&p.record.tp, p.epoch) {
                    state.tracker.ack(p.record.offset);
                }
            }
            self.staged.push(send);
        }
        if self.committing_before_send || self.staged.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.staged);
        // The points of their partitions (acked ranges above the commit point ride in the
        // metadata, so a takeover skips them too), sent even if a periodic commit already sent
        // the same: that commit's outcome is not known here, and nothing goes before one is.
        let mut points: Vec<(TopicPartition, CommitPoint)> = Vec::new();
        for p in sends.iter().flat_map(|s| s.pending.iter()) {
            if points.iter().any(|(tp, _)| *tp == p.record.tp) {
                continue;
            }
            if let Some(state) = self.current(&p.record.tp, p.epoch) {
                if let Some(point) = state.tracker.commit_point() {
                    state.last_commit = Some(point.clone());
                    points.push((p.record.tp.clone(), point));
                }
            }
        }
        if points.is_empty() {
            // Their partitions were revoked meanwhile: the next owner has them.
            self.drop_staged(sends);
            return;
        }
        let Some(result) = request_commit(kafka, points.clone()) else {
            return; // consumer gone: the gateway is stopping
        };
        self.committing_before_send = true;
        self.tasks.spawn(async move {
            let ok = matches!(result.await, Ok(Ok(())));
            Internal::CommittedBeforeSend { points, ok, sends }
        });
    }

    fn drop_staged(&mut self, sends: Vec<StagedSend>) {
        let n: usize = sends.iter().map(|s| s.pending.len()).sum();
        Stats::bump(&self.stats.dropped_at_most_once, n as u64);
        for send in sends {
            self.registry.abandon_staged(send);
        }
    }

    /// Hands over the duplicate filters of effectively-once routes, by route index.
    pub fn with_dedup(mut self, dedup: HashMap<usize, RouteDedup>) -> Self {
        self.dedup = dedup;
        self
    }

    /// Sends each effectively-once route's waiting records to its store, unless a batch of
    /// that route is still out.
    fn start_claims(&mut self) {
        for (&route, d) in &mut self.dedup {
            if d.claiming || d.waiting.is_empty() {
                continue;
            }
            let waiting = std::mem::take(&mut d.waiting);
            let mut claims = Vec::new();
            let batch: Vec<(Arc<Record>, u64, Option<usize>)> = waiting
                .into_iter()
                .map(|(record, epoch)| {
                    let index = d.config.key_of(&record).map(|key| {
                        claims.push(Claim::for_record(key, &record));
                        claims.len() - 1
                    });
                    (record, epoch, index)
                })
                .collect();
            d.claiming = true;
            let claim = d.store.claim(claims);
            self.tasks.spawn(async move {
                let verdicts = claim.await.map_err(|e| e.to_string());
                Internal::Claimed { route, batch, verdicts }
            });
        }
    }

    /// Delivers what the store says is new (or a redelivery of the same record); acks
    /// duplicates to Kafka without delivering them. If the store failed, delivers everything:
    /// a duplicate is better than a loss.
    fn on_claimed(&mut self, route: usize, batch: Vec<(Arc<Record>, u64, Option<usize>)>, verdicts: Result<Vec<Verdict>, String>) {
        if let Some(d) = self.dedup.get_mut(&route) {
            d.claiming = false;
        }
        let verdicts = match verdicts {
            Ok(v) => Some(v),
            Err(error) => {
                Stats::bump(&self.stats.dedup_errors, 1);
                warn!(%error, records = batch.len(), "dedup store failed; delivering without duplicate checks");
                None
            }
        };
        for (record, epoch, index) in batch {
            if self.stopping {
                break; // the next owner has them
            }
            let Some(state) = self.current(&record.tp, epoch) else {
                continue; // revoked meanwhile: the next owner has it
            };
            let verdict = index.and_then(|i| verdicts.as_ref().and_then(|v| v.get(i)));
            if verdict.is_some_and(Verdict::is_duplicate) {
                state.tracker.ack(record.offset);
                Stats::bump(&self.stats.dedup_duplicates, 1);
                continue;
            }
            self.registry.dispatch(record, epoch, route);
        }
    }

    /// Hands over the producer for routes with a dead-letter topic.
    pub fn with_dead_letter_producer(mut self, producer: Option<DeadLetterProducer>) -> Self {
        self.dead_letter_producer = producer;
        self
    }

    /// Hands over the senders that steer the routes' pod watches (Kubernetes discovery).
    pub fn with_watched_selectors(mut self, selectors: Vec<watch::Sender<String>>) -> Self {
        self.watched_selectors = selectors;
        self
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Register { hello, peer, reply } => {
                let route = hello.route.clone();
                let result = self.identify(&hello, peer).and_then(|subscriber| {
                    self.registry.register(&hello.route, hello.max_in_flight, subscriber)
                });
                let name = subscriber_name(&hello, peer);
                match &result {
                    Ok(r) => {
                        Stats::bump(&self.stats.sessions_opened, 1);
                        info!(session = r.session, route, name, ?peer, window = r.window, "subscriber joined");
                    }
                    Err(error) => info!(route, name, ?peer, %error, "subscriber refused"),
                }
                if let Err(Ok(r)) = reply.send(result) {
                    // The stream went away before it heard back.
                    self.registry.unregister(r.session);
                }
            }
            Command::Ack { session, delivery_ids } => {
                let acked = self.registry.ack(session, &delivery_ids);
                if acked.unknown > 0 {
                    Stats::bump(&self.stats.unknown_acks, acked.unknown);
                    debug!(session, unknown = acked.unknown, "ignored acks of ids not in flight on this stream");
                }
                for p in acked.settled {
                    self.settle(&p);
                }
                if acked.closed {
                    info!(session, "subscriber drained and closed");
                }
            }
            Command::Nack { session, delivery_id, failure } => {
                if self.registry.nack(session, &delivery_id, failure) {
                    Stats::bump(&self.stats.nacked, 1);
                } else {
                    Stats::bump(&self.stats.unknown_acks, 1);
                }
            }
            Command::Credit { session, additional } => self.registry.credit(session, additional),
            Command::UpdateRoutes { routes, reply } => {
                let unknown = self.registry.update_routes(&routes);
                for route in &routes {
                    let Some(r) = self.registry.route_index(&route.name) else { continue };
                    if let Some(sender) = self.watched_selectors.get(r) {
                        sender.send_if_modified(|current| {
                            let changed = *current != route.selector;
                            if changed {
                                info!(route = route.name, selector = route.selector, "selector changed; watching its pods anew");
                                current.clone_from(&route.selector);
                            }
                            changed
                        });
                    }
                }
                if !unknown.is_empty() {
                    warn!(?unknown, "routes not known to the running gateway were ignored; adding routes needs a restart");
                }
                info!(routes = routes.len() - unknown.len(), "route settings updated");
                if let Some(reply) = reply {
                    let _ = reply.send(unknown);
                }
            }
            Command::Drain { session } => {
                info!(session, "subscriber draining");
                self.registry.drain(session);
            }
            Command::Unregister { session } => {
                if self.registry.unregister(session) {
                    info!(session, "subscriber left; its in-flight deliveries go to other subscribers");
                }
            }
        }
    }

    /// Who a new subscriber is and which labels route it: from its pod (Kubernetes discovery,
    /// after the identity checks) or from its Hello (static).
    fn identify(&self, hello: &Hello, peer: Option<SocketAddr>) -> Result<Subscriber, RegisterError> {
        let name = subscriber_name(hello, peer);
        match self.settings.discovery {
            DiscoveryMode::Static => Ok(Subscriber { name, labels: hello.labels.clone().into_iter().collect(), pod: None }),
            DiscoveryMode::Kube => {
                let Some(route) = self.registry.route_index(&hello.route) else {
                    // Let the registry say which routes exist.
                    return Ok(Subscriber { name, ..Subscriber::default() });
                };
                let empty = PodIndex::default();
                let index = self.pods.get(&route).unwrap_or(&empty);
                let selector = &self.registry.route_config(route).selector;
                let pod = discovery::check_identity(hello, peer, index, &hello.route, selector)
                    .map_err(RegisterError::Identity)?;
                Ok(Subscriber { name, labels: pod.labels.clone(), pod: Some((pod.namespace.clone(), pod.name.clone())) })
            }
        }
    }

    /// Applies a change in the pods a route's selector picks: relabelled pods re-route their
    /// sessions, gone or stopped pods have theirs drained and closed.
    pub fn on_pod_event(&mut self, route: usize, event: PodEvent) {
        let index = self.pods.entry(route).or_default();
        index.apply(event);
        let sessions: Vec<(SessionId, (String, String))> = self
            .registry
            .pod_sessions()
            .into_iter()
            .filter(|(_, r, _)| *r == route)
            .map(|(id, _, pod)| (id, pod))
            .collect();
        for (id, (namespace, name)) in sessions {
            match index.get(&namespace, &name) {
                Some(pod) if pod.live => self.registry.update_labels(id, pod.labels.clone()),
                Some(_) => {
                    if self.registry.evict(id, format!("pod {namespace}/{name} is no longer running")) {
                        info!(session = id, namespace, name, "pod stopped running; draining its subscriber");
                    }
                }
                None => {
                    let why = format!("pod {namespace}/{name} was deleted or no longer matches the route's selector");
                    if self.registry.evict(id, why) {
                        info!(session = id, namespace, name, "pod gone or no longer selected; draining its subscriber");
                    }
                }
            }
        }
    }

    /// Records one route's ack of a delivery in its partition's tracker.
    fn settle(&mut self, p: &crate::subscriptions::Pending) {
        if self.registry.route_config(p.route).delivery == DeliveryMode::AtMostOnce {
            // Its offset was committed before it was sent.
            Stats::bump(&self.stats.acked, 1);
            return;
        }
        let Some(state) = self.partitions.get_mut(&p.record.tp) else {
            Stats::bump(&self.stats.unknown_acks, 1);
            return;
        };
        if state.epoch != p.epoch {
            Stats::bump(&self.stats.unknown_acks, 1);
            return;
        }
        match state.tracker.ack(p.record.offset) {
            AckOutcome::Done | AckOutcome::Partial => Stats::bump(&self.stats.acked, 1),
            AckOutcome::Unknown => Stats::bump(&self.stats.unknown_acks, 1),
        }
    }

    /// Produces dead letters; each settles its origin offset once Kafka acknowledges it.
    /// A refused produce is tried again with backoff until it succeeds or the gateway stops
    /// (then the message is redelivered by whoever owns the partition next).
    fn send_dead_letters(&mut self, letters: Vec<DeadLetter>) {
        for letter in letters {
            let route = self.registry.route_config(letter.pending.route);
            let retry = letter.retry_at.is_some();
            let topic = if retry { route.retry.retry_topic.clone() } else { route.dead_letter_topic.clone() };
            let (Some(topic), Some(producer)) = (topic, self.dead_letter_producer.clone()) else {
                // Config validation and start-up make this unreachable; never drop silently.
                warn!(route = route.name, "dead letter without a dead-letter topic or producer; it stays uncommitted");
                continue;
            };
            let route = route.name.clone();
            let tp = letter.pending.record.tp.clone();
            let (offset, epoch) = (letter.pending.record.offset, letter.pending.epoch);
            debug!(%tp, offset, attempts = letter.pending.attempt, reason = letter.reason, topic, "dead-lettering");
            self.dead_letters_in_flight += 1;
            let stats = self.stats.clone();
            self.tasks.spawn(async move {
                let mut backoff = DEAD_LETTER_RETRY.0;
                loop {
                    match producer.send(&topic, &route, &letter).await {
                        Ok(()) => return Internal::DeadLettered { tp, offset, epoch, retry },
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

    fn handle_internal(&mut self, done: Internal) {
        match done {
            Internal::DeadLettered { tp, offset, epoch, retry } => {
                self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_sub(1);
                Stats::bump(if retry { &self.stats.retried_via_topic } else { &self.stats.dead_lettered }, 1);
                // If revoked meanwhile, the next owner delivers it again (and may dead-letter it again).
                if let Some(state) = self.current(&tp, epoch) {
                    state.tracker.ack(offset);
                }
            }
            Internal::Claimed { route, batch, verdicts } => self.on_claimed(route, batch, verdicts),
            Internal::CommittedBeforeSend { points, ok, sends } => {
                self.committing_before_send = false;
                if ok {
                    for send in sends {
                        self.registry.release_staged(send);
                    }
                } else {
                    self.forget_sent(points);
                    // Not sent yet, so nothing is lost: try again with the next commit.
                    let later = std::mem::take(&mut self.staged);
                    self.staged = sends;
                    self.staged.extend(later);
                }
            }
            Internal::Committed { points, ok, generation } => {
                self.committing = false;
                if ok {
                    if let Some(generation) = generation {
                        self.registry.commit_landed(generation);
                    }
                    return;
                }
                self.forget_sent(points);
            }
        }
    }

    /// Forgets that these points were sent (their commit failed), so the next commit sends
    /// them again even if no new ack moves them.
    fn forget_sent(&mut self, points: Vec<(TopicPartition, CommitPoint)>) {
        for (tp, point) in points {
            if let Some(state) = self.partitions.get_mut(&tp) {
                if state.last_commit.as_ref() == Some(&point) {
                    state.last_commit = None;
                }
            }
        }
    }

    fn handle_event(&mut self, event: KafkaEvent) {
        match event {
            KafkaEvent::Records(records) => self.on_records(records),
            KafkaEvent::Assigned(assignments) => self.on_assigned(assignments),
            KafkaEvent::Revoked { partitions, reply } => self.start_revoke(partitions, reply),
        }
    }

    fn on_assigned(&mut self, assignments: Vec<Assignment>) {
        for a in assignments {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            self.partitions.insert(a.tp, PartitionState::new(PartitionTracker::new(a.committed, a.acked_above), epoch));
        }
    }

    /// Partitions are being taken away. At-most-once routes release them at once (their
    /// offsets were committed before sending, acks move nothing). Others drain: nothing new of
    /// theirs is sent, their waiting messages are dropped (the next owner delivers them), and
    /// the answer waits until their in-flight deliveries are settled or the drain deadline
    /// passes, so a rebalance redelivers only what missed the deadline.
    fn start_revoke(
        &mut self,
        partitions: Vec<TopicPartition>,
        reply: std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>,
    ) {
        if self.registry.route_config(0).delivery == DeliveryMode::AtMostOnce || self.stopping {
            let _ = reply.send(self.on_revoked(&partitions));
            return;
        }
        let dropped = self.registry.withhold(&partitions);
        let in_flight = self.registry.in_flight_of(&partitions);
        info!(partitions = partitions.len(), in_flight, dropped, "partitions revoked: draining their in-flight deliveries");
        let deadline = Instant::now() + self.settings.revoke_drain;
        self.revoking.push(Revoking { partitions, reply, deadline });
    }

    /// Answers the revokes whose partitions have drained or whose deadline passed.
    fn finish_revokes(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.revoking.len() {
            let r = &self.revoking[i];
            let left = self.registry.in_flight_of(&r.partitions);
            if left > 0 && now < r.deadline {
                i += 1;
                continue;
            }
            let r = self.revoking.remove(i);
            if left > 0 {
                Stats::bump(&self.stats.revoke_abandoned, left as u64);
                warn!(partitions = r.partitions.len(), in_flight = left, "drain deadline passed: releasing partitions with deliveries in flight; their next owner redelivers them");
            }
            let _ = r.reply.send(self.on_revoked(&r.partitions));
        }
    }

    /// The earliest drain deadline of the revokes under way.
    fn next_revoke_deadline(&self) -> Option<Instant> {
        self.revoking.iter().map(|r| r.deadline).min()
    }

    /// Drops the partitions' buffered messages and returns their final commit points.
    pub fn on_revoked(&mut self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, CommitPoint)> {
        let dropped = self.registry.purge(partitions);
        let mut points = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.remove(tp) {
                // Even if the same point was sent before: that commit may not have landed.
                if let Some(point) = state.tracker.commit_point() {
                    points.push((tp.clone(), point));
                }
            }
        }
        info!(partitions = partitions.len(), dropped, "revoked partitions released");
        points
    }

    fn on_records(&mut self, records: Vec<Record>) {
        if self.stopping {
            // Not tracked, so never committed: the next owner delivers them.
            return;
        }
        for record in records {
            let routes = match self.topic_routes.get(&record.tp.topic) {
                Some(r) => r.clone(),
                None => {
                    let r = self.registry.routes_for_topic(&record.tp.topic);
                    self.topic_routes.insert(record.tp.topic.clone(), r.clone());
                    r
                }
            };
            let Some(state) = self.partitions.get_mut(&record.tp) else {
                // Not (or no longer) ours: a batch put together while its partition was being
                // revoked. The partition's next owner delivers it.
                Stats::bump(&self.stats.stale_records, 1);
                continue;
            };
            if state.refetch_from.is_some() {
                Stats::bump(&self.stats.refetched, 1);
                continue;
            }
            if state.tracker.uncommitted() >= self.settings.max_uncommitted {
                state.refetch_from = Some(record.offset);
                Stats::bump(&self.stats.refetched, 1);
                continue;
            }
            match state.tracker.track(record.offset, routes.len() as u16) {
                Track::New => {
                    let epoch = state.epoch;
                    let record = Arc::new(record);
                    for r in routes {
                        // A retry is the same message again, not a duplicate: it skips the filter.
                        match self.dedup.get_mut(&r) {
                            Some(d) if !self.registry.route_config(r).retries_through(&record.tp.topic) => {
                                d.waiting.push((record.clone(), epoch))
                            }
                            _ => self.registry.dispatch(record.clone(), epoch, r),
                        }
                    }
                }
                Track::AlreadyAcked => Stats::bump(&self.stats.skipped_already_acked, 1),
                Track::Stale => Stats::bump(&self.stats.stale_records, 1),
            }
        }
    }

    /// Commit points that moved since the last commit.
    pub fn commit_points(&mut self) -> Vec<(TopicPartition, CommitPoint)> {
        let mut points = Vec::new();
        for (tp, state) in &mut self.partitions {
            if let Some(point) = state.tracker.commit_point() {
                if state.last_commit.as_ref() != Some(&point) {
                    state.last_commit = Some(point.clone());
                    points.push((tp.clone(), point));
                }
            }
        }
        points
    }

    /// Partitions to pause (buffer full) and to resume (back under half), the latter with the
    /// offset to fetch again from if records were dropped at the bound.
    fn flow_control(&mut self) -> (Vec<TopicPartition>, Vec<(TopicPartition, Option<i64>)>) {
        let max = self.settings.max_uncommitted;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        let mut held_total = 0u64;
        for (tp, state) in &mut self.partitions {
            let held = state.tracker.uncommitted();
            held_total += held as u64;
            let full = held >= max || state.refetch_from.is_some();
            if !state.paused && full {
                state.paused = true;
                pause.push(tp.clone());
            } else if state.paused && held <= max / 2 {
                state.paused = false;
                resume.push((tp.clone(), state.refetch_from.take()));
            }
        }
        self.stats.shift_buffered(self.reported.buffered, held_total);
        self.reported.buffered = held_total;
        (pause, resume)
    }

    /// Adds what moved in the registry's totals and gauges since the last report.
    fn report(&mut self) {
        let r = &self.registry;
        let evictions = self.dedup.values().map(|d| d.store.evictions()).sum();
        let now = Reported {
            delivered: r.delivered,
            redelivered: r.redelivered,
            sessions: r.session_count() as u64,
            sessions_closed: r.closed,
            expired: r.expired,
            retries_scheduled: r.retries_scheduled,
            exhausted_without_dlq: r.exhausted_without_dlq,
            dedup_evictions: evictions,
            buffered: self.reported.buffered,
        };
        let (s, before) = (&self.stats, &self.reported);
        Stats::shift(&s.delivered, before.delivered, now.delivered);
        Stats::shift(&s.redelivered, before.redelivered, now.redelivered);
        Stats::shift(&s.sessions, before.sessions, now.sessions);
        Stats::shift(&s.sessions_closed, before.sessions_closed, now.sessions_closed);
        Stats::shift(&s.expired, before.expired, now.expired);
        Stats::shift(&s.retries_scheduled, before.retries_scheduled, now.retries_scheduled);
        Stats::shift(&s.exhausted_without_dlq, before.exhausted_without_dlq, now.exhausted_without_dlq);
        Stats::shift(&s.dedup_evictions, before.dedup_evictions, now.dedup_evictions);
        self.reported = now;
    }

    fn after_each(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        if !self.revoking.is_empty() {
            self.finish_revokes(Instant::now());
        }
        self.start_claims();
        if self.registry.awaiting_commit() {
            self.commit(kafka);
        }
        self.registry.flush();
        self.commit_before_send(kafka);
        let dropped = self.registry.take_dropped().len();
        Stats::bump(&self.stats.dropped_at_most_once, dropped as u64);
        self.report();
        let letters = self.registry.take_dead_letters();
        if !letters.is_empty() {
            self.send_dead_letters(letters);
        }
        let (pause, resume) = self.flow_control();
        if !pause.is_empty() {
            Stats::bump(&self.stats.partitions_paused, pause.len() as u64);
            debug!(partitions = pause.len(), "pausing partitions: un-committed bound reached");
            let _ = kafka.send(KafkaCommand::Pause(pause));
        }
        if !resume.is_empty() {
            Stats::bump(&self.stats.partitions_resumed, resume.len() as u64);
            debug!(partitions = resume.len(), "resuming partitions");
            let _ = kafka.send(KafkaCommand::Resume(resume));
        }
    }
}

/// Asks the consumer thread to commit `points`; the receiver hears the outcome. None when the
/// consumer is gone (the gateway is stopping).
fn request_commit(
    kafka: &std::sync::mpsc::Sender<KafkaCommand>,
    points: Vec<(TopicPartition, CommitPoint)>,
) -> Option<oneshot::Receiver<Result<(), String>>> {
    let (done, result) = oneshot::channel();
    kafka.send(KafkaCommand::Commit { points, done: Some(done) }).ok()?;
    Some(result)
}

fn subscriber_name(hello: &Hello, peer: Option<SocketAddr>) -> String {
    if hello.pod_name.is_empty() {
        peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
    } else if hello.namespace.is_empty() {
        hello.pod_name.clone()
    } else {
        format!("{}/{}", hello.namespace, hello.pod_name)
    }
}

/// Runs the dispatcher until shutdown completes: drain in-flight deliveries (up to the
/// grace period), commit synchronously, close the consumer (leave the group), end sessions.
pub async fn run(
    mut d: Dispatcher,
    mut commands: mpsc::Receiver<Command>,
    consumer: ConsumerHandle,
    mut pod_events: mpsc::Receiver<(usize, PodEvent)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ConsumerHandle { mut events, commands: kafka, exited } = consumer;
    let mut tick = tokio::time::interval(d.settings.commit_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut grace_deadline: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut retry_tick = tokio::time::interval(RETRY_TICK);
    retry_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_deadline_scan = Instant::now() + DEADLINE_SCAN;

    loop {
        let revoke_deadline = d.next_revoke_deadline();
        tokio::select! {
            biased;
            Some(command) = commands.recv() => d.handle_command(command),
            Some(done) = d.tasks.join_next(), if !d.tasks.is_empty() => match done {
                Ok(done) => d.handle_internal(done),
                Err(error) => warn!(%error, "a dispatcher task failed"),
            },
            Some((route, event)) = pod_events.recv() => d.on_pod_event(route, event),
            event = events.recv() => match event {
                Some(event) => d.handle_event(event),
                None => {
                    warn!("consumer thread ended unexpectedly");
                    break;
                }
            },
            _ = tick.tick() => d.commit(&kafka),
            // after_each answers the revokes whose deadline this is.
            _ = tokio::time::sleep_until(revoke_deadline.unwrap_or(far)), if revoke_deadline.is_some() => {}
            now = retry_tick.tick() => {
                d.registry.release_due(now);
                if now >= next_deadline_scan {
                    d.registry.expire(now);
                    next_deadline_scan = now + DEADLINE_SCAN;
                }
            }
            _ = shutdown.changed(), if grace_deadline.is_none() => {
                info!(in_flight = d.registry.in_flight(), "shutting down: no new deliveries, waiting for in-flight acks");
                d.stopping = true;
                d.registry.set_paused(true);
                let _ = kafka.send(KafkaCommand::StopFetching);
                grace_deadline = Some(Instant::now() + d.settings.shutdown_grace);
            }
            _ = tokio::time::sleep_until(grace_deadline.unwrap_or(far)), if grace_deadline.is_some() => {
                warn!(in_flight = d.registry.in_flight(), "grace period over with deliveries in flight; they will be redelivered");
                break;
            }
        }
        d.after_each(&kafka);
        if grace_deadline.is_some() && d.registry.in_flight() == 0 && d.dead_letters_in_flight == 0 {
            break;
        }
    }

    // Revokes still draining are answered now: what they hold goes to their next owner.
    for r in std::mem::take(&mut d.revoking) {
        let _ = r.reply.send(d.on_revoked(&r.partitions));
    }
    // Final commit, synchronous, then leave the group.
    let points = d.commit_points();
    if !points.is_empty() {
        let count = points.len();
        if let Some(result) = request_commit(&kafka, points) {
            match tokio::time::timeout(Duration::from_secs(10), result).await {
                Ok(Ok(Ok(()))) => info!(partitions = count, "final commit done"),
                Ok(Ok(Err(error))) => warn!(%error, "final commit failed"),
                _ => warn!("final commit did not finish in time"),
            }
        }
    }
    d.registry.close_all(CloseReason::ShuttingDown);
    let _ = kafka.send(KafkaCommand::Close);
    // Closing the consumer revokes its partitions through the rebalance callback, which asks
    // us for commit points: keep answering until the thread is gone.
    let serve_revokes = async {
        while let Some(event) = events.recv().await {
            if let KafkaEvent::Revoked { partitions, reply } = event {
                let _ = reply.send(d.on_revoked(&partitions));
            }
        }
    };
    let closed = async {
        serve_revokes.await;
        let _ = exited.await;
    };
    if tokio::time::timeout(Duration::from_secs(30), closed).await.is_err() {
        warn!("consumer did not close within 30 s; leaving it behind");
    }
    info!("dispatcher stopped");
}
