//! The status quo a deploy goes through without the gateway: each service version is its own
//! set of consumers in the service's consumer group, so a blue-green deploy is a group
//! handover (green consumers join, blue consumers leave), and every membership change is a
//! rebalance that stops consumption.
//!
//! [`status_quo`] runs that handover on a topic the caller created and measures what
//! [`crate::scenario`] measures for the gateway's blue-green deploy, the same way: the same
//! producer ([`Produced`], which knows the offset of every message the broker took), the same
//! random 1–10 ms of work (here per polled batch; the scenario's subscribers, on the subscriber
//! library, spend it per delivery with up to 100 at once), the same `fetch.wait.max.ms`, and the
//! same definitions of gap, duplicates and lost. The report goes to the `bench` subcommand, next to the
//! gateway's.
//!
//! # What of the gap is the mock's
//! librdkafka's mock group coordinator (`rdkafka_mock_cgrp.c`, classic protocol) does not end
//! a rebalance's join phase when every member has rejoined, as a real broker does: a join or
//! leave of a group that is up starts a timer of `session.timeout.ms − 1 s` (5 s with
//! [`SESSION_TIMEOUT_MS`]), and only when it fires does it elect a leader and hand out
//! assignments. (A group's very first join waits `group.initial.rebalance.delay.ms`, 3 s, as a
//! real broker does; that happens before producing starts and is not measured.) So on the
//! mock every rebalance stops the revoked partitions for about 5 s plus the time members take
//! to notice it (a heartbeat, [`HEARTBEAT_INTERVAL_MS`]).
//!
//! A real broker completes the join phase as soon as every known member has rejoined, waiting
//! at most the rebalance timeout (the members' `max.poll.interval.ms`, 5 min by default) for a
//! slow one. There an eager rebalance stops consumption for: the time until every member
//! learns of the rebalance from a heartbeat (up to `heartbeat.interval.ms`, 3 s by default),
//! revokes (committing its stored offsets) and rejoins, plus the join/sync round trips and the
//! fetch restart: from well under a second to a few seconds, and as long as the slowest
//! member takes to get back to `poll()` (a member busy with a batch delays everyone). The
//! *shape* measured here holds on both: eager stops every partition at every membership
//! change; cooperative-sticky stops only the partitions that move, but a move takes two
//! rebalances (revoke, then assign), each paying the join phase, and a departing cohort's
//! partitions wait for the rebalance its LeaveGroup starts. What the mock exaggerates is the
//! length of each stop, not their number.
//!
//! Two more mock effects stretch it. A member closing while its JoinGroup is pending sends
//! its LeaveGroup (and final commit) behind that JoinGroup on the coordinator connection, so
//! it leaves only when the join phase ends, and if it was elected leader the generation waits
//! for a SyncGroup that never comes (another join phase); a real broker also answers a
//! connection's requests in order, but its join phase ends in milliseconds.
//!
//! # What of the duplicates is the mock's
//! The mock refuses OffsetCommit while a rebalance is joining (`REBALANCE_IN_PROGRESS`); a
//! real broker accepts a commit of the current generation then. A member learns of a
//! rebalance only once it is joining, so on the mock the commit librdkafka makes on revoke
//! fails, and what the member processed since the last periodic commit
//! (`auto.commit.interval.ms`, 5 s) is processed again by the next owner. On a real broker
//! that commit succeeds and the repeats are the batches in work when their partition was
//! revoked, plus what a closing member processed after its last commit when its commit is
//! refused for a newer generation (the pending-JoinGroup case above).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::demo::{committed_offsets, Produced};

/// The consumers' `session.timeout.ms`: the smallest a real broker accepts by default
/// (`group.min.session.timeout.ms`), and it keeps the mock's join phase (this − 1 s) short.
pub const SESSION_TIMEOUT_MS: u32 = 6_000;
/// The consumers' `heartbeat.interval.ms`: members learn of a rebalance from a heartbeat, so
/// this bounds how late one rejoins. librdkafka's default (3 s) is a third of its default
/// session timeout (45 s); a twelfth here so every member surely rejoins within the mock's
/// 5 s join phase.
pub const HEARTBEAT_INTERVAL_MS: u32 = 500;
/// Most messages one unit of work takes: what `poll` has ready, up to this, without waiting.
const MAX_BATCH: usize = 100;
/// Time a consumer spends on a batch before it stores the batch's offsets, in microseconds;
/// the same as the gateway scenario's subscribers.
const PROCESSING_US: std::ops::Range<u64> = 1_000..10_000;
/// Distinct keys, as in the gateway scenario: many.
const KEYS: u64 = 50_000;
/// How long the blue cohort may take to get every partition before producing starts.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after producing the last message every message may take to be processed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a consumer may take to close (revoke, final commit, LeaveGroup).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a green consumer waits, after its final commit, for the others' before leaving.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);
/// Assign callbacks further apart than this belong to different generations: those of one
/// generation come within a poll of each other (a poll waits at most 100 ms, a batch's work
/// 10 ms), and the mock's generations are at least 100 ms, in practice seconds, apart.
pub const GENERATION_QUIET: Duration = Duration::from_millis(250);

/// Partition assignment protocol of the status-quo consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// librdkafka's default (`range,roundrobin`): every rebalance revokes every partition.
    Eager,
    /// `cooperative-sticky`: only moved partitions are revoked.
    Cooperative,
}

impl Strategy {
    /// The `partition.assignment.strategy` value.
    fn assignors(self) -> &'static str {
        match self {
            Self::Eager => "range,roundrobin",
            Self::Cooperative => "cooperative-sticky",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Eager => "eager",
            Self::Cooperative => "cooperative",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HandoverOptions {
    /// Messages produced per second while the deploy runs.
    pub rate: u32,
    /// How long to produce; green joins at a third, blue leaves at two thirds.
    pub duration: Duration,
    /// Consumers per cohort.
    pub per_cohort: usize,
    pub partitions: i32,
    pub strategy: Strategy,
}

/// What an operator checks after a deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoverReport {
    /// Group rebalances (generations) completed from green's join until green is stopped.
    ///
    /// Counted from the *assign* rebalance callbacks of every consumer, blue and green: each
    /// member that completes a generation gets exactly one, for both protocols and even when
    /// it assigns nothing (librdkafka `rdkafka_cgrp.c`: eager hands every new assignment to the
    /// callback; cooperative follows a non-empty incremental revoke with the incremental
    /// assign, empty or not). The coordinator answers every member's SyncGroup at once, so
    /// the callbacks of one generation come together; callbacks more than
    /// [`GENERATION_QUIET`] apart are different generations. Revoke callbacks are not counted
    /// (they precede an assign of the same generation, or end a member's own close).
    ///
    /// Counting across all members, not on one green consumer, because a member can miss a
    /// generation: when a cooperative member revokes and rejoins right after its SyncGroup,
    /// the coordinator aborts the SyncGroups still pending, so a green consumer may not see a
    /// generation that blue completed.
    ///
    /// Eager: green's join is one, blue's leave another (unless it falls into a rebalance that
    /// is still joining: then both changes are one). Cooperative: a move takes two (revoke
    /// from blue, then assign to green), and blue's leave one more unless it falls into one of
    /// those. Rebalances caused by green's own shutdown are not counted.
    pub rebalances: u64,
    /// Longest time without any processed message, across all consumers, from the first
    /// message processed after producing started until the first one processed after
    /// producing ended (a stop that began while producing counts in full).
    pub max_gap_ms: u64,
    /// Times a message (partition/offset) was processed again after its first time.
    pub duplicates: u64,
    /// Produced messages (per the producer's delivery reports) never processed.
    pub lost: u64,
    pub produced: u64,
    /// Processed messages that the group's committed offsets, read after green closed, do not
    /// cover: the next deploy would process them again. The gateway scenario counts these in
    /// its `lost`; add the two to compare with it.
    pub uncommitted: u64,
}

impl std::fmt::Display for HandoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handover: rebalances={} lost={} uncommitted={} duplicates={} max_gap_ms={} produced={}",
            self.rebalances, self.lost, self.uncommitted, self.duplicates, self.max_gap_ms, self.produced
        )
    }
}

/// Runs the handover against `bootstrap`, on `topic` (created by the caller with
/// `options.partitions` partitions), in a consumer group of its own.
///
/// Blue joins and gets every partition before producing starts; green joins at a third of
/// `options.duration`; blue closes (revoke, final commit, LeaveGroup, as a pod's SIGTERM
/// handler does) at two thirds. After producing, it waits (at most 30 s) until every produced
/// message was processed, then closes green and reads the group's committed offsets.
pub async fn status_quo(bootstrap: &str, topic: &str, options: &HandoverOptions) -> Result<HandoverReport, KafkaError> {
    let group = format!("handover-{}-{:016x}", options.strategy.name(), rand::random::<u64>());
    let observed = Arc::new(Mutex::new(Observed::default()));
    info!(group, topic, strategy = options.strategy.name(), "status-quo handover: blue joining");

    // Dropping a cohort (also on an early return) stops its consumers, which then close.
    let spec = Group { bootstrap, id: &group, topic, strategy: options.strategy };
    let mut blue = Cohort::start("blue", options.per_cohort, &spec, Leave::Close, &observed)?;
    let ready = Instant::now();
    while !blue.holds_all(options.partitions) {
        if ready.elapsed() >= ASSIGN_TIMEOUT {
            warn!(group, "blue cohort not assigned every partition in time");
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!(waited_ms = ready.elapsed().as_millis() as u64, "blue holds every partition; producing");

    let mut producer = Produced::new(bootstrap)?;
    let green_at = options.duration / 3;
    let blue_leaves_at = options.duration * 2 / 3;
    let mut green: Option<Cohort> = None;
    let mut green_joined = None;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (options.rate / 100).max(1);
    let mut seq: u64 = 0;
    while started.elapsed() < options.duration {
        let waiting = producer.waiting();
        tokio::select! {
            _ = tick.tick() => {}
            _ = producer.next_report(), if waiting => continue,
        }
        if green.is_none() && started.elapsed() >= green_at {
            info!(at_ms = started.elapsed().as_millis() as u64, "green joining");
            green_joined = Some(Instant::now());
            green = Some(Cohort::start("green", options.per_cohort, &spec, Leave::CommitThenClose, &observed)?);
        }
        if !blue.stopping() && started.elapsed() >= blue_leaves_at {
            info!(at_ms = started.elapsed().as_millis() as u64, "blue leaving");
            blue.stop();
        }
        for _ in 0..per_tick {
            let key = format!("customer-{}", seq % KEYS);
            producer.send(topic, &key, &format!("{{\"seq\":{seq}}}"));
            seq += 1;
        }
    }
    let produce_end = Instant::now();
    let (produced, produced_total) = producer.finish().await;
    info!(produced = produced_total, "producing stopped; waiting until every message is processed");

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && unprocessed(&produced, &observed.lock().seen) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rebalances = green_joined.map_or(0, |from| generations(&observed.lock().assigned_at, from, GENERATION_QUIET));

    // Blue first: it was told to stop at two thirds and has closed by now unless its close hangs.
    blue.stop();
    blue.join().await;
    if let Some(mut green) = green {
        green.stop();
        green.join().await;
    }

    let committed = {
        let (bootstrap, group, topic) = (bootstrap.to_string(), group.clone(), topic.to_string());
        let partitions = options.partitions;
        tokio::task::spawn_blocking(move || committed_offsets(&bootstrap, &group, &topic, partitions))
            .await
            .map_err(|_| KafkaError::Global(RDKafkaErrorCode::Fail))??
    };
    let observed = observed.lock();
    let (mut lost, mut uncommitted) = (0, 0);
    for (p, o) in produced.iter().flat_map(|(p, offsets)| offsets.iter().map(move |o| (*p, *o))) {
        if !observed.seen.contains(&(p, o)) {
            lost += 1;
        } else if committed.get(&p).is_none_or(|c| *c <= o) {
            uncommitted += 1;
        }
    }
    let report = HandoverReport {
        rebalances,
        max_gap_ms: max_gap(&observed.processed_at, started, produce_end).as_millis() as u64,
        duplicates: observed.duplicates,
        lost,
        produced: produced_total,
        uncommitted,
    };
    info!(strategy = options.strategy.name(), %report, "status-quo handover done");
    Ok(report)
}

/// Generations among assign-callback instants (ascending) at or after `from`: runs of
/// instants each within `quiet` of the previous.
fn generations(assigned_at: &[Instant], from: Instant, quiet: Duration) -> u64 {
    let first = assigned_at.partition_point(|t| *t < from);
    let times = &assigned_at[first..];
    let breaks = times.windows(2).filter(|w| w[1].duration_since(w[0]) > quiet).count();
    if times.is_empty() {
        0
    } else {
        breaks as u64 + 1
    }
}

/// Produced messages not processed yet.
fn unprocessed(produced: &HashMap<i32, Vec<i64>>, seen: &HashSet<(i32, i64)>) -> usize {
    produced.iter().map(|(p, offsets)| offsets.iter().filter(|o| !seen.contains(&(*p, **o))).count()).sum()
}

/// Longest interval between consecutive instants of `times` (ascending) that begins at or
/// after the first instant at or after `from` and begins before `until`.
fn max_gap(times: &[Instant], from: Instant, until: Instant) -> Duration {
    let first = times.partition_point(|t| *t < from);
    times[first..].windows(2).take_while(|w| w[0] < until).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default()
}

/// What the consumers processed, shared by all of them.
#[derive(Default)]
struct Observed {
    /// Messages (partition, offset) processed at least once.
    seen: HashSet<(i32, i64)>,
    duplicates: u64,
    /// When each batch's work was done, ascending (taken under the lock).
    processed_at: Vec<Instant>,
    /// When each assign rebalance callback ran, on any consumer, ascending.
    assigned_at: Vec<Instant>,
}

/// A member's view of its own membership, written by its rebalance callbacks.
#[derive(Default)]
struct Membership {
    /// Partitions the consumer holds now.
    held: AtomicUsize,
}

/// Consumer context: counts rebalances and keeps `held` current. The default rebalance
/// handling (assign/unassign, incremental for cooperative) runs between pre and post.
struct MemberContext {
    name: String,
    membership: Arc<Membership>,
    observed: Arc<Mutex<Observed>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let held = consumer.assignment().map_or(0, |a| a.count());
        self.membership.held.store(held, Ordering::Release);
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.observed.lock().assigned_at.push(Instant::now());
                info!(member = %self.name, assigned = tpl.count(), held, "rebalance: assign");
            }
            Rebalance::Revoke(tpl) => info!(member = %self.name, revoked = tpl.count(), held, "rebalance: revoke"),
            Rebalance::Error(error) => warn!(member = %self.name, %error, "rebalance error"),
        }
    }
}

/// How a cohort's consumers leave once stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Close at once, as a pod's SIGTERM handler does: revoke (committing what was stored),
    /// LeaveGroup. The deploy's blue.
    Close,
    /// Every consumer commits synchronously, waits until all have, then closes. For green
    /// after the run: the first LeaveGroup starts a rebalance, and the mock refuses commits
    /// while a rebalance is joining, so closing at once would leave the others' last offsets
    /// uncommitted (a real broker accepts them), which is not what is measured.
    CommitThenClose,
}

/// The consumer group both cohorts join.
#[derive(Clone, Copy)]
struct Group<'a> {
    bootstrap: &'a str,
    id: &'a str,
    topic: &'a str,
    strategy: Strategy,
}

/// One service version: its consumers, each on a thread of its own, and what stops them.
struct Cohort {
    name: &'static str,
    members: Vec<(Arc<Membership>, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

impl Cohort {
    /// Creates and subscribes `count` consumers in `group` and starts their threads.
    fn start(
        name: &'static str,
        count: usize,
        group: &Group<'_>,
        leave: Leave,
        observed: &Arc<Mutex<Observed>>,
    ) -> Result<Self, KafkaError> {
        let Group { bootstrap, id: group, topic, strategy } = *group;
        let mut cohort = Self { name, members: Vec::with_capacity(count), stop: Arc::new(AtomicBool::new(false)) };
        let committed = Arc::new(AtomicUsize::new(0));
        for i in 0..count {
            let member = format!("{name}-{i}");
            let membership = Arc::new(Membership::default());
            let consumer: BaseConsumer<MemberContext> = consumer_config(bootstrap, group, &member, strategy)
                .create_with_context(MemberContext {
                    name: member.clone(),
                    membership: membership.clone(),
                    observed: observed.clone(),
                })?;
            consumer.subscribe(&[topic])?;
            let (topic, stop, observed) = (topic.to_string(), cohort.stop.clone(), observed.clone());
            let final_commit = (leave == Leave::CommitThenClose).then(|| (committed.clone(), count));
            let thread = std::thread::Builder::new()
                .name(member.clone())
                .spawn(move || consume(consumer, &topic, &stop, &observed, final_commit))
                .map_err(|error| KafkaError::ClientCreation(format!("consumer thread {member}: {error}")))?;
            cohort.members.push((membership, thread));
        }
        Ok(cohort)
    }

    /// Whether the cohort holds every partition, spread over as many members as can have one.
    fn holds_all(&self, partitions: i32) -> bool {
        let held: Vec<usize> = self.members.iter().map(|(m, _)| m.held.load(Ordering::Acquire)).collect();
        let holders = held.iter().filter(|h| **h > 0).count();
        let expected = usize::try_from(partitions).unwrap_or(0);
        held.iter().sum::<usize>() == expected && holders == self.members.len().min(expected)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits for every consumer to have closed, at most `CLOSE_TIMEOUT` each (a consumer whose
    /// close hangs is left behind, said in the log).
    async fn join(&mut self) {
        for (_, thread) in self.members.drain(..) {
            let joined = tokio::time::timeout(CLOSE_TIMEOUT, tokio::task::spawn_blocking(move || thread.join())).await;
            match joined {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => warn!(cohort = self.name, "consumer thread panicked"),
                Err(_) => warn!(cohort = self.name, "consumer did not close in time; left behind"),
            }
        }
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The properties of an at-least-once service's consumer.
fn consumer_config(bootstrap: &str, group: &str, member: &str, strategy: Strategy) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", member)
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", strategy.assignors())
        // Store an offset only once its message's work is done; librdkafka commits what is
        // stored every auto.commit.interval.ms (default 5 s) and on every revoke and close.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        // As the gateway scenario: the mock answers an empty fetch only after this wait.
        .set("fetch.wait.max.ms", "20")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string());
    cc
}

/// A consumer's loop: takes what `poll` has ready (serving rebalance callbacks), works on it,
/// records it, stores its offsets; once `stop` is set, closes gracefully (revoke, final commit
/// of stored offsets, LeaveGroup) by dropping the consumer. With `final_commit` (a counter
/// shared by the cohort, and the cohort's size) it first commits synchronously and waits for
/// the others to have (see [`Leave::CommitThenClose`]).
fn consume(
    consumer: BaseConsumer<MemberContext>,
    topic: &str,
    stop: &AtomicBool,
    observed: &Mutex<Observed>,
    final_commit: Option<(Arc<AtomicUsize>, usize)>,
) {
    let mut batch: Vec<(i32, i64)> = Vec::with_capacity(MAX_BATCH);
    while !stop.load(Ordering::Acquire) {
        let mut next = consumer.poll(Duration::from_millis(100));
        while let Some(result) = next {
            match result {
                Ok(message) => batch.push((message.partition(), message.offset())),
                Err(error) => debug!(%error, "consumer error"),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if batch.is_empty() {
            continue;
        }
        std::thread::sleep(Duration::from_micros(rand::random_range(PROCESSING_US)));
        {
            let mut o = observed.lock();
            o.processed_at.push(Instant::now());
            for id in &batch {
                if !o.seen.insert(*id) {
                    o.duplicates += 1;
                }
            }
        }
        store(&consumer, topic, &batch);
        batch.clear();
    }
    if let Some((committed, members)) = final_commit {
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(%error, "final commit failed");
        }
        committed.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + FINAL_COMMIT_WAIT;
        while committed.load(Ordering::Acquire) < members && Instant::now() < deadline {
            // Serves callbacks; a message polled now is left unprocessed and unstored.
            let _ = consumer.poll(Duration::from_millis(50));
        }
    }
    // Drop closes the consumer: it polls until librdkafka has revoked (committing what was
    // stored) and left the group.
    let closing = Instant::now();
    drop(consumer);
    debug!(close_ms = closing.elapsed().as_millis() as u64, "consumer closed");
}

/// Stores, per partition, one past the batch's highest offset. A partition revoked while the
/// batch was worked on refuses the store: its new owner processes those messages again.
fn store(consumer: &BaseConsumer<MemberContext>, topic: &str, batch: &[(i32, i64)]) {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for (p, o) in batch {
        let e = next.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let mut tpl = TopicPartitionList::with_capacity(next.len());
    for (p, o) in next {
        if let Err(error) = tpl.add_partition_offset(topic, p, Offset::Offset(o)) {
            debug!(%error, partition = p, "cannot build the offsets to store");
        }
    }
    if let Err(error) = consumer.store_offsets(&tpl) {
        debug!(%error, "offsets not stored (partitions revoked during the batch's work)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_is_measured_from_the_first_processing_after_start_to_the_first_after_the_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Producing from 100 to 1000: what came before the first processing after 100 (at
        // 200) is not counted; a stop that begins before the end (900) and ends after it
        // (1500) is, in full; one that begins after the end (1500 to 4000) is not.
        let times = [at(0), at(90), at(200), at(500), at(600), at(900), at(1500), at(4000)];
        assert_eq!(max_gap(&times, at(100), at(1000)), Duration::from_millis(600));
        // A stop that begins after producing ended is not counted.
        assert_eq!(max_gap(&times, at(100), at(800)), Duration::from_millis(300));
        assert_eq!(max_gap(&[], at(0), at(1)), Duration::ZERO);
    }

    #[test]
    fn assign_callbacks_close_together_are_one_generation() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let quiet = Duration::from_millis(250);
        // Before green: not counted. Then two members at 5000/5010, three at 10000..10200
        // (each within 250 ms of the previous), one at 16000.
        let times = [at(0), at(5000), at(5010), at(10_000), at(10_150), at(10_200), at(16_000)];
        assert_eq!(generations(&times, at(100), quiet), 3);
        assert_eq!(generations(&times, at(20_000), quiet), 0);
        assert_eq!(generations(&times, at(15_000), quiet), 1);
    }

    #[test]
    fn unprocessed_counts_produced_offsets_never_seen() {
        let produced: HashMap<i32, Vec<i64>> = [(0, vec![0, 1, 2]), (1, vec![0])].into_iter().collect();
        let seen: HashSet<(i32, i64)> = [(0, 0), (0, 2), (1, 0), (5, 5)].into_iter().collect();
        assert_eq!(unprocessed(&produced, &seen), 1);
    }
}
