//! The dispatcher task: the one owner of a route's moving state.
//!
//! Each route's pipeline has one. Kafka events (records, assignments, revocations) come in
//! from the route's consumer thread; session commands (hello, acks, nacks, credits, drains,
//! goodbyes) come in from the gRPC streams of the route's subscribers. The dispatcher tracks
//! every received offset ([`crate::offsets::PartitionTracker`]), routes records to sessions
//! ([`Registry`]), turns acks into commit points and sends those, plus pause/resume decisions,
//! back to the consumer. Commands are taken before new records (`biased`), so acks always
//! make room before more work is accepted.
//!
//! [`Dispatcher`] orchestrates parts that each own their state and are tested alone:
//! [`partitions`] (partition state, intake, flow control), [`revokes`] (revokes draining
//! before they release), [`commits`] (one commit at a time, at-most-once staging),
//! [`dedup_gate`] (effectively-once claims), [`dead_letters`] (the dead-letter and retry-topic
//! produce loop), [`identity`] (who a subscriber is, the pods the route selects), [`replays`]
//! (an operator's replay batches), [`status`] (what the operator sees). This file holds the
//! task: its state, the sessions' commands and the loop; [`records`] holds its Kafka side
//! (records in, commits out, revokes, dead letters, flow control).

mod commits;
mod dead_letters;
mod dedup_gate;
mod handle;
mod head_of_line;
mod identity;
mod outcomes;
mod partitions;
mod records;
mod replays;
mod revokes;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use commits::{request_commit, CommitScheduler};
use dead_letters::{DeadLetterLoop, Outcome};
pub use dedup_gate::RouteDedup;
use handle::Command;
pub use handle::{channel, Commands, RouteHandle, Stopped};
use identity::{peer_text, subscriber_name, Identity, PodFate};
pub use outcomes::Outcomes;
use partitions::Partitions;
use replays::ReplayBatches;
use revokes::Revokes;
use status::{HoldWarning, SplitSamples};
pub use status::{PartitionSnapshot, RouteSnapshot, SPLIT_WINDOW};

use crate::config::DiscoveryMode;
use crate::dead_letters::DeadLetterProducer;
use crate::dedup::{DedupError, Verdict};
use crate::discovery::PodEvent;
use crate::kafka::consumer::ConsumerHandle;
use crate::kafka::{CommitOutcome, KafkaCommand, KafkaEvent, Record, TopicPartition};
use crate::offsets::CommitPoint;
use crate::stats::Stats;
use crate::subscriptions::{CloseReason, Registry, ReplayTag, SessionId, StagedSend};

/// How often failed messages whose backoff is over are put back in line.
const RETRY_TICK: Duration = Duration::from_millis(10);
/// How often in-flight deliveries are checked against their ack deadlines.
const DEADLINE_SCAN: Duration = Duration::from_millis(100);

/// Work finished by tasks the dispatcher started.
#[derive(Debug)]
enum Internal {
    /// Kafka acknowledged a dead letter: its origin offset (or its replay message) is done.
    DeadLettered(Outcome),
    /// A commit finished; `generation` is the registry's commit generation it covers.
    Committed { points: Vec<(TopicPartition, CommitPoint)>, outcome: CommitOutcome, generation: Option<u64> },
    /// The commit that covers these at-most-once records finished: if it succeeded they may go.
    CommittedBeforeSend { points: Vec<(TopicPartition, CommitPoint)>, outcome: CommitOutcome, sends: Vec<StagedSend> },
    /// The dedup store answered the route's claims: `batch[i].2` indexes `verdicts` for
    /// records that have an idempotency key.
    Claimed { batch: Vec<dedup_gate::Keyed>, verdicts: Result<Vec<Verdict>, DedupError> },
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
    /// The assigned partitions: offset trackers, pause state, commit points.
    partitions: Partitions,
    /// Revokes waiting for their partitions' in-flight deliveries, oldest first.
    revokes: Revokes,
    stats: Arc<Stats>,
    settings: DispatcherSettings,
    stopping: bool,
    /// Who subscribers are: the pods the route's selector picks and the watch that follows it.
    identity: Identity,
    /// Dead-letter produces under way.
    dead_letters: DeadLetterLoop,
    /// Dead-letter produces, claims and commit outcomes under way.
    tasks: JoinSet<Internal>,
    /// The duplicate filter of an effectively-once route.
    dedup: Option<RouteDedup>,
    /// Commits under way, and at-most-once batches waiting for theirs.
    commits: CommitScheduler<StagedSend>,
    reported: Reported,
    /// Per-cohort delivery counts over time, for the observed split.
    split: SplitSamples,
    /// Replay batches under way.
    replays: ReplayBatches,
    /// The route's fetch-to-ack latency histogram.
    delivery_latency: prometheus_client::metrics::histogram::Histogram,
    /// The send-to-ack latency histogram of each cohort seen, taken once per cohort.
    ack_latency: std::collections::HashMap<Box<str>, prometheus_client::metrics::histogram::Histogram>,
    /// When the route last warned that it holds messages for a cohort without subscribers.
    hold_warning: HoldWarning,
    /// Ack latencies per cohort while a rollout reads them.
    latencies: outcomes::CohortLatencies,
}

// === impl Dispatcher: the task ===

impl Dispatcher {
    pub fn new(registry: Registry, stats: Arc<Stats>, settings: DispatcherSettings) -> Self {
        let delivery_latency = stats.histograms.delivery(&registry.route_config().name);
        let identity = Identity::new(settings.discovery);
        Self {
            registry,
            partitions: Partitions::new(),
            revokes: Revokes::default(),
            stats,
            settings,
            stopping: false,
            identity,
            dead_letters: DeadLetterLoop::default(),
            tasks: JoinSet::new(),
            dedup: None,
            commits: CommitScheduler::default(),
            reported: Reported::default(),
            split: SplitSamples::default(),
            replays: ReplayBatches::new(),
            hold_warning: HoldWarning::default(),
            delivery_latency,
            ack_latency: std::collections::HashMap::new(),
            latencies: outcomes::CohortLatencies::default(),
        }
    }

    /// Hands over the producer for routes with a dead-letter topic.
    pub fn with_dead_letter_producer(mut self, producer: Option<DeadLetterProducer>) -> Self {
        self.dead_letters = DeadLetterLoop::new(producer);
        self
    }

    /// Hands over the sender that steers the route's pod watch (Kubernetes discovery).
    pub fn with_watched_selector(mut self, selector: Option<watch::Sender<String>>) -> Self {
        self.identity.watch_with(selector);
        self
    }

    /// Hands over the duplicate filter of an effectively-once route.
    pub fn with_dedup(mut self, dedup: Option<RouteDedup>) -> Self {
        self.dedup = dedup;
        self
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Register { hello, peer, reply } => {
                let route = hello.route.clone();
                let result = self
                    .identity
                    .identify(&hello, peer, self.registry.route_config())
                    .and_then(|subscriber| self.registry.register(&hello.route, hello.max_in_flight, subscriber));
                let name = subscriber_name(&hello, peer);
                match &result {
                    Ok(r) => {
                        Stats::bump(&self.stats.sessions_opened, 1);
                        info!(session = r.session.0, route, name, peer = %peer_text(peer), window = r.window, "subscriber joined");
                    }
                    Err(error) => info!(route, name, peer = %peer_text(peer), %error, "subscriber refused"),
                }
                if let Err(Ok(r)) = reply.send(result) {
                    // The stream went away before it heard back.
                    self.registry.unregister(r.session);
                }
            }
            Command::Ack { session, ack_ids } => {
                // Before the ack: a draining session that is done closes with it.
                let by_cohort = self.registry.cohort_of(session).map(|cohort| {
                    let route = &self.registry.route_config().name;
                    if let Some(h) = self.ack_latency.get(cohort) {
                        return h.clone();
                    }
                    let h = self.stats.histograms.ack(route, cohort);
                    self.ack_latency.insert(cohort.into(), h.clone());
                    h
                });
                // One clock read per batch of acks, not one per ack.
                let now = Instant::now();
                let sampled: Option<Box<str>> =
                    if self.latencies.wanted(now) { self.registry.cohort_of(session).map(Into::into) } else { None };
                let acked = self.registry.ack(session, &ack_ids);
                if acked.unknown > 0 {
                    Stats::bump(&self.stats.unknown_acks, acked.unknown);
                    debug!(
                        session = session.0,
                        unknown = acked.unknown,
                        "ignored acks of ids not in flight on this stream"
                    );
                }
                for p in acked.settled {
                    if p.replay.is_none() {
                        self.delivery_latency.observe(now.saturating_duration_since(p.received).as_secs_f64());
                        if let Some(sent) = p.sent() {
                            let latency = now.saturating_duration_since(sent);
                            if let Some(h) = &by_cohort {
                                h.observe(latency.as_secs_f64());
                            }
                            if let Some(cohort) = &sampled {
                                self.latencies.observe(cohort, latency);
                            }
                        }
                    }
                    self.settle(&p);
                }
                if acked.closed {
                    info!(session = session.0, "subscriber drained and closed");
                }
            }
            Command::Nack { session, ack_id, failure } => {
                if self.registry.nack(session, ack_id, failure) {
                    Stats::bump(&self.stats.nacked, 1);
                } else {
                    Stats::bump(&self.stats.unknown_acks, 1);
                }
            }
            Command::Credit { session, additional } => self.registry.credit(session, additional),
            Command::Extend { session, ack_ids, extension } => {
                let extended = self.registry.extend(session, &ack_ids, extension, Instant::now());
                Stats::bump(&self.stats.lease_extensions, extended.moved);
                if extended.unknown > 0 {
                    Stats::bump(&self.stats.unknown_extensions, extended.unknown);
                    debug!(session = session.0, unknown = extended.unknown, "ignored extensions of ids not in flight");
                }
            }
            Command::UpdateRoute { route, reply } => {
                let applied = self.registry.update_route(&route);
                if applied {
                    self.identity.follow_selector(&route.selector);
                    info!("route settings updated");
                } else {
                    warn!(other = route.name, "settings for another route were ignored");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(applied);
                }
            }
            Command::Drain { session } => {
                info!(session = session.0, "subscriber draining");
                self.registry.drain(session);
            }
            Command::Replay { replay, records, done } => self.on_replay(replay, records, done),
            Command::Status { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Outcomes { reply } => {
                let latencies_ms = self.latencies.take(Instant::now());
                let _ = reply.send(Outcomes { counts: self.registry.by_cohort.clone(), latencies_ms });
            }
            Command::DrainSubscriber { who, reply } => {
                let sessions = self.registry.drain_matching(&who);
                let listed: Vec<String> = sessions.iter().map(|(s, n)| format!("{s} ({n} in flight)")).collect();
                info!(
                    subscriber = who,
                    sessions = %listed.join(", "),
                    "operator drain: no new deliveries, closing once settled"
                );
                let _ = reply.send(sessions);
            }
            Command::Unregister { session } => {
                if self.registry.unregister(session) {
                    info!(session = session.0, "subscriber left; its in-flight deliveries go to other subscribers");
                }
            }
        }
    }

    fn handle_internal(&mut self, done: Internal) {
        match done {
            Internal::DeadLettered(produced) => self.on_dead_lettered(produced),
            Internal::Claimed { batch, verdicts } => self.on_claimed(batch, verdicts),
            Internal::CommittedBeforeSend { points, outcome, sends } => {
                self.on_committed_before_send(points, &outcome, sends)
            }
            Internal::Committed { points, outcome, generation } => self.on_committed(points, &outcome, generation),
        }
    }

    fn handle_event(&mut self, event: KafkaEvent) {
        match event {
            KafkaEvent::Records(records) => self.on_records(records),
            KafkaEvent::Assigned(assignments) => self.on_assigned(assignments),
            KafkaEvent::Revoked { partitions, reply } => self.start_revoke(partitions, reply),
            KafkaEvent::Lost(partitions) => self.on_lost(&partitions),
            KafkaEvent::Sought(tp) => self.partitions.sought(&tp),
            KafkaEvent::Positions(positions) => self.on_positions(positions),
        }
    }

    /// Adds what moved in the registry's totals and gauges since the last report.
    fn report(&mut self) {
        let r = &self.registry;
        let evictions = self.dedup.as_ref().map_or(0, |d| d.store.evictions());
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
        if !self.revokes.is_empty() {
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
        self.flow_control(kafka);
    }

    /// Applies a change in the pods the route's selector picks: relabelled pods re-route
    /// their sessions, gone or stopped pods have theirs drained and closed.
    pub fn on_pod_event(&mut self, event: PodEvent) {
        self.identity.apply(event);
        let sessions: Vec<(SessionId, (String, String))> = self.registry.pod_sessions().into_iter().collect();
        for (id, (namespace, name)) in sessions {
            match self.identity.fate(&namespace, &name) {
                PodFate::Live(labels) => self.registry.update_labels(id, labels.clone()),
                PodFate::Stopped => {
                    if self.registry.evict(id, format!("pod {namespace}/{name} is no longer running")) {
                        info!(session = id.0, namespace, name, "pod stopped running; draining its subscriber");
                    }
                }
                PodFate::Gone => {
                    let why = format!("pod {namespace}/{name} was deleted or no longer matches the route's selector");
                    if self.registry.evict(id, why) {
                        info!(
                            session = id.0,
                            namespace, name, "pod gone or no longer selected; draining its subscriber"
                        );
                    }
                }
            }
        }
    }

    /// Takes a batch of an operator's replay: each record goes to the route's subscribers,
    /// marked, and `done` fires when the last of them is settled.
    fn on_replay(&mut self, replay: u64, records: Vec<Record>, done: oneshot::Sender<()>) {
        let Some(batch) = self.replays.start(records.len(), done) else { return };
        for record in records {
            self.registry.dispatch_replay(Arc::new(record), ReplayTag { replay, batch });
        }
    }

    /// Samples the per-cohort counts (called on the commit tick).
    fn sample_split(&mut self, now: Instant) {
        self.split.sample(now, &self.registry.delivered_by_cohort());
    }

    /// Says in the log, every [`status::HOLD_WARN_EVERY`] while it lasts, which cohort's
    /// messages the route holds for want of a subscriber here: a blue-green cutover to pods
    /// that are not there yet strands messages, and readiness rightly stays about Kafka, so
    /// the log, Status and `fanout_cohort_held_messages` are where it shows.
    fn warn_if_holding(&mut self, now: Instant) {
        if !self.hold_warning.due(now) || self.registry.held() == 0 {
            return;
        }
        let config = self.registry.route_config();
        let label = config.split_label.as_deref().unwrap_or_default();
        let held = self.registry.held_by_cohort();
        for (cohort, count) in &held {
            warn!(
                route = config.name,
                cohort,
                held = count,
                "route holds messages for a cohort without subscribers on this replica: start subscribers with \
                 {label}={cohort}, or give the cohort weight 0 (fanoutctl weights set)"
            );
        }
        if !held.is_empty() {
            self.hold_warning.given(now);
        }
    }

    fn snapshot(&self) -> RouteSnapshot {
        let r = &self.registry;
        RouteSnapshot {
            config: r.route_config().clone(),
            cohorts: r.cohorts(),
            delivered_last_minute: self.split.over_window(Instant::now(), &r.delivered_by_cohort()),
            counts: r.by_cohort.clone(),
            subscribers: r.subscribers(),
            partitions: self.partitions.snapshot(),
            held: r.held(),
            retrying: r.delayed(),
            delivered: r.delivered,
            pod_cohorts: r
                .route_config()
                .split_label
                .as_deref()
                .map(|l| self.identity.label_values(l))
                .unwrap_or_default(),
            throttled: r.throttled(),
        }
    }
}

/// Runs the dispatcher until shutdown completes: drain in-flight deliveries (up to the
/// grace period), commit synchronously, close the consumer (leave the group), end sessions.
pub async fn run(
    mut d: Dispatcher,
    Commands(mut commands): Commands,
    consumer: ConsumerHandle,
    mut pod_events: mpsc::Receiver<PodEvent>,
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
        let revoke_deadline = d.revokes.next_deadline();
        tokio::select! {
            biased;
            Some(command) = commands.recv() => d.handle_command(command),
            Some(done) = d.tasks.join_next(), if !d.tasks.is_empty() => match done {
                Ok(done) => d.handle_internal(done),
                Err(error) => warn!(%error, "a dispatcher task failed"),
            },
            Some(event) = pod_events.recv() => d.on_pod_event(event),
            event = events.recv() => match event {
                Some(event) => d.handle_event(event),
                None => {
                    warn!("consumer thread ended unexpectedly");
                    break;
                }
            },
            now = tick.tick() => {
                d.rescue_heads(now);
                d.commit(&kafka);
                d.sample_split(now);
                d.warn_if_holding(now);
            }
            // after_each answers the revokes whose deadline this is.
            _ = tokio::time::sleep_until(revoke_deadline.unwrap_or(far)), if revoke_deadline.is_some() => {}
            // Only while something waits for a time: an idle route sleeps.
            now = retry_tick.tick(), if d.registry.waits_for_time() => {
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
                let in_flight = d.registry.in_flight();
                Stats::bump(&d.stats.shutdown_abandoned, in_flight as u64);
                warn!(in_flight, "grace period over with deliveries in flight; they will be redelivered");
                break;
            }
        }
        d.after_each(&kafka);
        if grace_deadline.is_some() && d.registry.in_flight() == 0 && d.dead_letters.in_flight() == 0 {
            break;
        }
    }

    // Revokes still draining are answered now: what they hold goes to their next owner.
    for r in d.revokes.take_all() {
        let _ = r.reply.send(d.on_revoked(&r.partitions));
    }
    // Final commit, awaited, then leave the group. Every partition's point, even one sent
    // before: a commit still out may yet be refused.
    let points = d.partitions.final_points();
    if !points.is_empty() {
        let count = points.len();
        if let Some(result) = request_commit(&kafka, points) {
            match tokio::time::timeout(Duration::from_secs(10), result).await {
                Ok(Ok(outcome)) if outcome.is_complete() => info!(partitions = count, "final commit done"),
                Ok(Ok(outcome)) => warn!(refused = ?outcome.refused, "final commit refused for some partitions"),
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
            match event {
                KafkaEvent::Revoked { partitions, reply } => {
                    let _ = reply.send(d.on_revoked(&partitions));
                }
                KafkaEvent::Lost(partitions) => d.on_lost(&partitions),
                _ => {}
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
