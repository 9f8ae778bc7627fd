//! The gateway's consumer: one rdkafka `BaseConsumer` on a dedicated thread.
//!
//! A thread of its own because librdkafka runs rebalance callbacks inside `poll`, and the
//! revoke callback must wait for the dispatcher to say what to commit: blocking there is only
//! safe on a thread that does nothing else. Records go to the dispatcher in batches over a
//! bounded channel (the thread blocks when the dispatcher is behind, and librdkafka's own
//! prefetch limits then stop fetching); commands come back over an unbounded channel that the
//! thread drains between polls.
//!
//! Everything that waits on Kafka happens on that thread, joining the group included (after
//! the upgrade check of [`super::upgrade`], which waits until Kafka answers): starting a route
//! waits on nothing, so the gateway's ports serve at once and readiness says what it waits for.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::commits::{Answer, InFlight, Request, ANSWER_LIMIT};
use super::{Assignment, ClientReports, CommitOutcome, KafkaCommand, KafkaEvent, Record, TopicPartition};
use crate::config::{Config, GroupProtocol, RouteConfig};
use crate::offsets::{decode_acked, CommitPoint};
use crate::stats::{GroupPartition, GroupState, PartitionEnds, Stats};

/// Records handed over per event: large enough to amortise the channel, small enough that
/// one batch is little memory.
const BATCH: usize = 512;
/// Batches in flight between the thread and the dispatcher; when full the thread waits.
const EVENT_CHANNEL: usize = 16;
/// How much longer than its drain deadline a revoke waits for the dispatcher's commit points.
/// Below the default `max.poll.interval.ms` by far; past it the partitions go without a final
/// commit and the next owner redelivers from the last periodic commit (at-least-once holds).
const REVOKE_ANSWER_SLACK: Duration = Duration::from_secs(5);
/// Longest the thread waits in `poll` before it looks at the dispatcher's commands again: a
/// commit (which frees windows under `window_until_commit`) waits at most this long for the
/// thread. 200 wake-ups a second cost next to nothing.
const POLL: Duration = Duration::from_millis(5);
/// Longest the thread waits in `poll` while its route is quiet (see [`poll_wait`]): a record
/// ends the wait at once, a command of the dispatcher waits at most this long. An idle route's
/// thread then wakes 10 times a second instead of 200.
const QUIET_POLL: Duration = Duration::from_millis(100);
/// A route is quiet once nothing came from Kafka or the dispatcher for this long.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// How long the thread's next `poll` may wait: [`POLL`] while anything is going on (something
/// came from Kafka or the dispatcher within [`QUIET_AFTER`], commits are out, a partition is
/// paused or waits for its seek back: the dispatcher's next command, a commit or a resume, must
/// not wait), else [`QUIET_POLL`].
fn poll_wait(since_last_activity: Duration, waiting_on_kafka: bool) -> Duration {
    if waiting_on_kafka || since_last_activity < QUIET_AFTER {
        POLL
    } else {
        QUIET_POLL
    }
}

/// How long the metadata probe waits for an answer: the thread serves no command meanwhile.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the thread waits in `poll` while it waits for Kafka before joining its group
/// (serving librdkafka's error callbacks, which say why Kafka does not answer).
const WAIT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The dispatcher's end of the consumer.
pub struct ConsumerHandle {
    pub events: mpsc::Receiver<KafkaEvent>,
    pub commands: std_mpsc::Sender<KafkaCommand>,
    /// Resolves when the thread has closed the consumer (left the group) and ended.
    pub exited: oneshot::Receiver<()>,
}

struct GatewayContext {
    events: mpsc::Sender<KafkaEvent>,
    stats: Arc<Stats>,
    /// The route's consumer group, which the committed offsets in `stats` are filed under.
    group: Arc<str>,
    route: String,
    /// What to say (and file) when the brokers refuse the group: see [`super::topics::group_refused`].
    group_refusal: String,
    /// How long a revoke waits for the dispatcher's commit points (its drain deadline and
    /// some room for the answer).
    revoke_timeout: Duration,
    topics: parking_lot::Mutex<TopicNames>,
    /// The gateway's failure reports, shared with every other client: a failure every route
    /// sees is said once per interval, not once per route.
    reports: Arc<ClientReports>,
    /// The route's commit latency histogram.
    commit_latency: prometheus_client::metrics::histogram::Histogram,
    /// What librdkafka's commit callback said, for the thread to settle after its poll (the
    /// callback runs inside `poll`, where the thread's own state is out of reach).
    answers: parking_lot::Mutex<Vec<Answer>>,
    /// Whether the consumer skips aborted and open transactions (`isolation.level`), which
    /// decides where lag is counted up to.
    read_committed: bool,
}

/// Interned topic names, so every record of a topic shares one `Arc<str>`. Looked up for every
/// record: hashed with xxh3 rather than SipHash (the names are the route's own topics).
#[derive(Default)]
struct TopicNames(HashMap<String, Arc<str>, xxhash_rust::xxh3::Xxh3Builder>);

impl TopicNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.0.get(name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        self.0.insert(name.to_string(), t.clone());
        t
    }
}

impl GatewayContext {
    fn tp(&self, topic: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: self.topics.lock().get(topic), partition }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements().iter().map(|e| self.tp(e.topic(), e.partition())).collect()
    }
}

impl ClientContext for GatewayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.reports.client_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::GroupAuthorizationFailed) {
            // The route's own problem, said once with the group and the grant (librdkafka's
            // words name neither); the other routes are not told.
            Stats::bump(&self.stats.kafka_errors, 1);
            let filed = self.stats.refused_groups.write().insert(self.group.clone(), self.group_refusal.clone());
            if filed.is_none() {
                warn!(route = self.route, group = %self.group, %error, "route {}: {}", self.route, self.group_refusal);
            }
            return;
        }
        self.reports.client_error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.record_statistics(statistics);
    }
}

/// The part of librdkafka's statistics the gateway reads (serde skips the rest, so a field
/// librdkafka adds or drops does not break it).
#[derive(serde::Deserialize)]
struct ClientStatistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
    /// The consumer group part (absent before the consumer has one).
    cgrp: Option<GroupStatistics>,
}

/// The group part librdkafka reports; its `state` (the coordinator's) is left out on purpose,
/// see [`GroupStatistics::state`].
#[derive(serde::Deserialize)]
struct GroupStatistics {
    #[serde(default)]
    join_state: String,
}

impl GroupStatistics {
    /// Settled: "steady", not joining, syncing or (un)assigning, so the member keeps the
    /// partitions it holds. Whether the coordinator is known right now (`state` "up") does not
    /// count: when the broker that coordinates the group dies, the member keeps its assignment
    /// while Kafka moves the coordinator, and counting it would take every replica out of its
    /// Service for one broker of three (the same rule as reachability: Kafka's own failover).
    fn state(&self) -> GroupState {
        GroupState { settled: self.join_state == "steady" }
    }
}

#[derive(serde::Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(serde::Deserialize)]
struct PartitionStatistics {
    #[serde(default = "unknown_offset")]
    hi_offset: i64,
    /// The last stable offset (the high watermark when no transaction is open).
    #[serde(default = "unknown_offset")]
    ls_offset: i64,
}

impl PartitionStatistics {
    /// The partition's ends, or `None` while the consumer has not fetched it yet.
    fn ends(&self, read_committed: bool) -> Option<PartitionEnds> {
        if self.hi_offset < 0 {
            return None;
        }
        let readable = if read_committed && self.ls_offset >= 0 { self.ls_offset } else { self.hi_offset };
        Some(PartitionEnds { high_watermark: self.hi_offset, readable })
    }
}

const fn unknown_offset() -> i64 {
    -1
}

impl GatewayContext {
    /// Files the group membership and the high watermarks of fetched partitions (librdkafka's
    /// internal partition -1 and partitions not fetched yet report -1 and are skipped).
    fn record_statistics(&self, statistics: &[u8]) {
        let parsed: ClientStatistics = match serde_json::from_slice(statistics) {
            Ok(s) => s,
            Err(error) => {
                debug!(%error, "librdkafka statistics did not parse; watermarks not updated");
                return;
            }
        };
        if let Some(group) = &parsed.cgrp {
            let state = group.state();
            if state.settled && self.stats.refused_groups.write().remove(&self.group).is_some() {
                info!(route = self.route, group = %self.group, "route group joined: the brokers let the gateway use it");
            }
            self.stats.groups.write().insert(self.group.clone(), state);
        }
        let mut marks = self.stats.partition_ends.write();
        for (topic, t) in parsed.topics {
            for (partition, p) in t.partitions {
                let Ok(partition) = partition.parse::<i32>() else { continue };
                if let (true, Some(ends)) = (partition >= 0, p.ends(self.read_committed)) {
                    let at = GroupPartition { group: self.group.clone(), topic: topic.clone(), partition };
                    marks.insert(at, ends);
                }
            }
        }
    }
}

impl ConsumerContext for GatewayContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if consumer.assignment_lost() => {
                Stats::bump(&self.stats.rebalances, 1);
                let partitions = self.partitions(tpl);
                Stats::bump(&self.stats.assignments_lost, partitions.len() as u64);
                let listed: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                warn!(
                    partitions = %listed.join(", "),
                    "partitions lost: the group ended this member's session (a frozen process, a cut network, \
                     or longer than session.timeout.ms without a heartbeat); nothing of theirs can be committed, \
                     their next owner redelivers what was acked since the last commit"
                );
                let _ = self.events.blocking_send(KafkaEvent::Lost(partitions));
            }
            Rebalance::Revoke(tpl) => {
                Stats::bump(&self.stats.rebalances, 1);
                let partitions = self.partitions(tpl);
                let listed: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                info!(partitions = %listed.join(", "), "partitions revoked");
                let (reply, answer) = std_mpsc::sync_channel(1);
                if self.events.blocking_send(KafkaEvent::Revoked { partitions, reply }).is_err() {
                    return; // dispatcher gone: nothing to commit
                }
                match answer.recv_timeout(self.revoke_timeout) {
                    Ok(points) if !points.is_empty() => {
                        if let Err(error) = commit_now(consumer, &points) {
                            Stats::bump(&self.stats.commit_failures, 1);
                            Stats::bump(&self.stats.revoke_commits_refused, 1);
                            warn!(%error, "commit on revoke failed; the next owner redelivers from the last commit");
                        } else {
                            Stats::bump(&self.stats.commits, 1);
                            self.record_committed(&points);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => warn!("dispatcher did not answer the revoke in time; nothing committed"),
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let parts = offsets
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => {
                    Some((self.tp(e.topic(), e.partition()), o, e.error().err().and_then(|e| e.rdkafka_error_code())))
                }
                _ => None,
            })
            .collect();
        let error = result.err().map(|e| e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown));
        self.answers.lock().push(Answer { parts, error });
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        Stats::bump(&self.stats.rebalances, 1);
        // Where the group left each partition, and what its last owner acked beyond that.
        let committed = match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "cannot read committed offsets; starting without commit metadata");
                (*tpl).clone()
            }
        };
        let assignments: Vec<Assignment> = committed
            .elements()
            .iter()
            .map(|e| {
                let committed = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                let acked_above = committed.map(|c| decode_acked(c, e.metadata())).unwrap_or_default();
                Assignment { tp: self.tp(e.topic(), e.partition()), committed, acked_above }
            })
            .collect();
        // `orders/3 from 1200`, or `orders/3 (no commit yet)`: where each partition resumes.
        let listed: Vec<String> = assignments
            .iter()
            .map(|a| match a.committed {
                Some(offset) => format!("{} from {offset}", a.tp),
                None => format!("{} (no commit yet)", a.tp),
            })
            .collect();
        info!(partitions = %listed.join(", "), "partitions assigned");
        let _ = self.events.blocking_send(KafkaEvent::Assigned(assignments));
    }
}

impl GatewayContext {
    /// Files what landed (it may go back: a partition whose log went back starts over).
    fn record_committed(&self, points: &[(TopicPartition, CommitPoint)]) {
        let mut committed = self.stats.committed.write();
        for (tp, point) in points {
            let at = GroupPartition { group: self.group.clone(), topic: tp.topic.to_string(), partition: tp.partition };
            committed.insert(at, point.offset);
        }
    }
}

/// Sends `requests` as asynchronous commits; one librdkafka refuses at once is settled at
/// once (and what that sends again, sent).
fn send_commits(
    consumer: &BaseConsumer<GatewayContext>,
    stats: &Stats,
    inflight: &mut InFlight,
    mut requests: Vec<Request>,
) {
    while let Some(request) = requests.pop() {
        let sent = tpl_of_points(&request.points).and_then(|tpl| fanout_kafka_ffi::commit_async(consumer, &tpl));
        if let Err(error) = sent {
            let parts = request.points.iter().map(|(tp, p)| (tp.clone(), p.offset, None)).collect();
            let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
            let (again, finished) = inflight.answered(Answer { parts, error: Some(code) });
            requests.extend(again);
            report_commits(consumer.context(), stats, finished);
        }
    }
}

/// Settles what librdkafka's commit callback said since the last look, and gives up on
/// commits that went unanswered too long. Called after every `poll`.
fn settle_commits(consumer: &BaseConsumer<GatewayContext>, stats: &Stats, inflight: &mut InFlight) {
    if inflight.is_empty() {
        consumer.context().answers.lock().clear();
        return;
    }
    let answers = std::mem::take(&mut *consumer.context().answers.lock());
    for answer in answers {
        let (again, finished) = inflight.answered(answer);
        report_commits(consumer.context(), stats, finished);
        send_commits(consumer, stats, inflight, again);
    }
    let expired = inflight.expire(Instant::now(), ANSWER_LIMIT);
    report_commits(consumer.context(), stats, expired);
}

/// Counts, files and tells the dispatcher how finished commits fared.
fn report_commits(context: &GatewayContext, stats: &Stats, finished: Vec<super::commits::Finished>) {
    for f in finished {
        context.commit_latency.observe(f.started.elapsed().as_secs_f64());
        context.record_committed(&f.landed);
        if f.outcome.is_complete() {
            Stats::bump(&stats.commits, 1);
        } else {
            Stats::bump(&stats.commit_failures, 1);
            let refused: Vec<String> = f.outcome.refused.iter().map(|(tp, why)| format!("{tp}: {why}")).collect();
            warn!(
                landed = f.outcome.landed.len(),
                refused = %refused.join(", "),
                "offset commit refused for some partitions; the next commit carries them again"
            );
        }
        if let Some(done) = f.done {
            let _ = done.send(f.outcome);
        }
    }
}

fn tpl_of_points(points: &[(TopicPartition, CommitPoint)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(points.len());
    for (tp, point) in points {
        let mut elem = tpl.add_partition(&tp.topic, tp.partition);
        elem.set_offset(Offset::Offset(point.offset))?;
        elem.set_metadata(point.metadata.clone());
    }
    Ok(tpl)
}

/// A synchronous commit: a revoke's, which must land before its partitions go.
fn commit_now(consumer: &BaseConsumer<GatewayContext>, points: &[(TopicPartition, CommitPoint)]) -> KafkaResult<()> {
    let tpl = tpl_of_points(points)?;
    let started = Instant::now();
    let result = consumer.commit(&tpl, CommitMode::Sync);
    consumer.context().commit_latency.observe(started.elapsed().as_secs_f64());
    result
}

/// Moves a partition's fetch position back to `offset` (records from there on were dropped at
/// the buffer bound); see [`resume_at`].
fn seek(consumer: &BaseConsumer<GatewayContext>, tp: &TopicPartition, offset: i64) -> bool {
    match consumer.seek(&tp.topic, tp.partition, Offset::Offset(offset), Duration::from_secs(5)) {
        Ok(()) => {
            debug!(%tp, offset, "fetching again from the first record dropped at the buffer bound");
            true
        }
        Err(error) => {
            warn!(%error, %tp, offset, "seek back to records dropped at the buffer bound failed; the partition stays paused and the seek is retried");
            false
        }
    }
}

/// The points of partitions the consumer holds now.
fn still_assigned(
    consumer: &BaseConsumer<GatewayContext>,
    mut points: Vec<(TopicPartition, CommitPoint)>,
) -> Vec<(TopicPartition, CommitPoint)> {
    match consumer.assignment() {
        Ok(assigned) => {
            let elements = assigned.elements();
            points.retain(|(tp, _)| elements.iter().any(|e| e.topic() == &*tp.topic && e.partition() == tp.partition));
            points
        }
        // Unknown: commit them all, as before the check (at worst a late commit of a revoked
        // partition redelivers more).
        Err(_) => points,
    }
}

fn resume(consumer: &BaseConsumer<GatewayContext>, partitions: &[TopicPartition]) {
    if let Err(error) = consumer.resume(&tpl_of(partitions)) {
        warn!(%error, "resume failed");
    }
}

/// Resumes a partition whose records from `offset` on were dropped at the buffer bound, and
/// moves its fetch position back there. Resume first, seek second: librdkafka wakes the
/// broker's fetch thread when a seek starts a partition fetching, not on a resume, and a
/// seek made while the partition is still paused finds it unfetchable; its thread then
/// sleeps up to a second before it looks again (`rd_kafka_max_block_ms`), so every refill
/// of a partition paused at the bound waited that second (a route with a bound of 1 000
/// read 1 000 to 3 000 msg/s instead of tens of thousands). Records fetched from the old
/// position between the two calls carry librdkafka's older version and are never polled.
/// A failed seek pauses the partition again, for the caller to retry: it must not run on
/// past the records dropped.
fn resume_at(consumer: &BaseConsumer<GatewayContext>, tp: &TopicPartition, offset: i64) -> bool {
    resume(consumer, std::slice::from_ref(tp));
    let done = seek(consumer, tp, offset);
    if !done {
        if let Err(error) = consumer.pause(&tpl_of(std::slice::from_ref(tp))) {
            warn!(%error, %tp, "pause after a failed seek back failed");
        }
    }
    done
}

/// Resumes a partition that dropped nothing while paused, and seeks it to where it was (the
/// record after the last one polled, where librdkafka resumes anyway) to wake the broker's
/// fetch thread at once (see [`resume_at`]). A partition with no record polled yet resumes
/// through librdkafka's own offset lookup, which wakes it.
fn resume_where_it_was(consumer: &BaseConsumer<GatewayContext>, tp: &TopicPartition) {
    resume(consumer, std::slice::from_ref(tp));
    if let Some(offset) = positions(consumer).into_iter().find_map(|(p, at)| (p == *tp).then_some(at)) {
        let _ = consumer.seek(&tp.topic, tp.partition, Offset::Offset(offset), Duration::from_secs(5));
    }
}

fn tpl_of(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

/// How much librdkafka reads ahead of the route's consumer thread (`queued.min.messages`,
/// `queued.max.messages.kbytes`: for a consumer, one queue for all its partitions).
///
/// The gateway's read-ahead is its own buffer, `max_uncommitted_per_partition` records per
/// partition, paused and resumed by the dispatcher. librdkafka's queue in front of it is drained
/// by the consumer thread as fast as records arrive, so it only has to cover the next fetch;
/// at librdkafka's defaults (100 000 records, 64 MiB) it held as much again as the gateway's
/// buffer: a gateway behind a slow subscriber peaked at 176 MiB with a bound of 1 000 × 32
/// partitions of 1 KiB records, and 96 MiB with this (`bench --only memory`), at the same
/// throughput. The byte cap also caps librdkafka's `fetch.max.bytes`, so a fetch response in
/// flight is no larger. Both may be set in `[kafka.properties]`, which win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefetch {
    messages: usize,
    kib: usize,
}

impl Prefetch {
    /// Records: one partition's bound, at least 1 000 (so a small bound does not make a fetch
    /// per handful of records) and at most librdkafka's default. Bytes: 4 MiB whatever the
    /// bound, since the bound counts records, not bytes, and a fetch round trip needs no more.
    fn for_bound(max_uncommitted_per_partition: usize) -> Prefetch {
        Prefetch { messages: max_uncommitted_per_partition.clamp(1_000, 100_000), kib: 4 * 1024 }
    }
}

/// librdkafka consumer properties for one route's consumer.
pub fn client_config(config: &Config, route: &RouteConfig) -> ClientConfig {
    let k = &config.kafka;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &k.bootstrap_servers)
        .set("group.id", route.group(k))
        .set("client.id", format!("fanout-gateway.{}", route.name))
        // Commits happen only for acked offsets, explicitly.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", route.offset_reset(k).as_librdkafka())
        .set("group.protocol", k.group_protocol.as_librdkafka())
        // librdkafka stops fetching a partition for fetch.queue.backoff.ms (1 s by default)
        // once its prefetch queue passes queued.min.messages / queued.max.messages.kbytes. The
        // gateway bounds its own buffer (max_uncommitted_per_partition, pause/resume), so that
        // second brake only leaves the pipeline empty: `bench` measured 1 KiB throughput at
        // half with the default, with half a second of empty polls after every burst.
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka learns of a routed topic created after the start, and of partitions
        // added to one, at its metadata refresh: every 5 min by default, and a route with
        // auto_offset_reset = latest skips what new partitions got meanwhile.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // High watermarks for the operator's lag figures come from these statistics.
        .set("statistics.interval.ms", "1000");
    let prefetch = Prefetch::for_bound(k.max_uncommitted_per_partition);
    cc.set("queued.min.messages", prefetch.messages.to_string())
        .set("queued.max.messages.kbytes", prefetch.kib.to_string());
    if k.group_protocol == GroupProtocol::Classic {
        // Incremental rebalances: a gateway replica joining or leaving moves only the
        // partitions that change owner; the others keep flowing. (Under KIP-848 the broker
        // assigns, incrementally, and librdkafka refuses the property.)
        cc.set("partition.assignment.strategy", "cooperative-sticky");
    }
    if let Some(id) = route.group_instance_id(k) {
        cc.set("group.instance.id", id);
    }
    for (key, value) in &k.properties {
        cc.set(key, value);
    }
    cc
}

/// Whether a consumer made from `client` reads committed records only: librdkafka's default,
/// unless `isolation.level` says `read_uncommitted`.
fn reads_committed(client: &ClientConfig) -> bool {
    client.get("isolation.level").is_none_or(|level| !level.trim().eq_ignore_ascii_case("read_uncommitted"))
}

/// Creates route `route`'s consumer and starts its thread, which joins the route's group once
/// it may (see [`Joining`]). Nothing here waits on Kafka: a gateway with many routes and no
/// Kafka starts at once, and readiness says what it waits for. `reports` is the gateway's, shared
/// by every route.
pub fn spawn(
    config: &Config,
    route: &RouteConfig,
    stats: Arc<Stats>,
    reports: Arc<ClientReports>,
) -> Result<ConsumerHandle, ConsumerError> {
    let (events_tx, events) = mpsc::channel(EVENT_CHANNEL);
    let (commands, commands_rx) = std_mpsc::channel();
    let (exited_tx, exited) = oneshot::channel();
    let group: Arc<str> = Arc::from(route.group(&config.kafka));
    let topics = route.consumed_topics();
    let principal = super::topics::principal(&config.kafka);
    let client = client_config(config, route);
    let context = GatewayContext {
        events: events_tx.clone(),
        stats: stats.clone(),
        group: group.clone(),
        route: route.name.clone(),
        group_refusal: super::topics::group_refused(&group, &principal),
        revoke_timeout: Duration::from_millis(config.kafka.revoke_drain_ms) + REVOKE_ANSWER_SLACK,
        topics: parking_lot::Mutex::new(TopicNames::default()),
        reports: reports.clone(),
        commit_latency: stats.histograms.commit(&route.name),
        answers: parking_lot::Mutex::new(Vec::new()),
        read_committed: reads_committed(&client),
    };
    // Creating the client checks its properties (a start with a property librdkafka refuses
    // fails here, naming it) and connects to nothing yet.
    let consumer: BaseConsumer<GatewayContext> = client.create_with_context(context).map_err(ConsumerError::Create)?;
    let topic_check = super::topics::TopicCheck::new(&route.name, group.clone(), topics.clone(), principal);
    let joining =
        Joining { topics, group: group.to_string(), seed: super::upgrade::plan(config, route, reports.clone()) };
    // The thread's logs say which route they are about.
    let span = tracing::info_span!("route", route = route.name);
    std::thread::Builder::new()
        // Linux keeps 15 bytes of a thread's name.
        .name(format!("kafka-{}", route.name).chars().take(15).collect())
        .spawn(move || {
            let _route = span.enter();
            run(consumer, events_tx, commands_rx, stats, reports, joining, topic_check);
            let _ = exited_tx.send(());
        })
        .map_err(ConsumerError::Thread)?;
    Ok(ConsumerHandle { events, commands, exited })
}

/// What the thread does before its consumer joins the route's group.
struct Joining {
    topics: Vec<String>,
    group: String,
    /// The upgrade check, when the route's group is not the shared group: it must run before
    /// the group has a member (see [`super::upgrade`]), so it waits until Kafka answers.
    seed: Option<super::upgrade::Plan>,
}

/// What the thread keeps between polls.
struct Local {
    /// False once a stop began: records polled are no longer handed out.
    fetching: bool,
    /// Partitions to resume once their seek back succeeds.
    unsought: Vec<(TopicPartition, i64)>,
    /// Commits out, waiting for librdkafka's callback.
    commits: InFlight,
    /// Partitions paused by the dispatcher and not resumed since.
    paused: HashSet<TopicPartition>,
    /// When a record or a command last came.
    last_activity: Instant,
}

impl Local {
    /// Whether the dispatcher may be waiting on this thread (see [`poll_wait`]).
    fn waiting_on_kafka(&self) -> bool {
        !self.commits.is_empty() || !self.unsought.is_empty() || !self.paused.is_empty()
    }
}

fn run(
    consumer: BaseConsumer<GatewayContext>,
    events: mpsc::Sender<KafkaEvent>,
    commands: std_mpsc::Receiver<KafkaCommand>,
    stats: Arc<Stats>,
    reports: Arc<ClientReports>,
    joining: Joining,
    mut topic_check: super::topics::TopicCheck,
) {
    let mut local = Local {
        fetching: true,
        unsought: Vec::new(),
        commits: InFlight::default(),
        paused: HashSet::new(),
        last_activity: Instant::now(),
    };
    let mut probe = Probe::new();
    // When to try the seeks back again.
    let mut next_seek = Instant::now();
    if let Flow::Close = join(&consumer, &commands, &stats, &reports, &mut probe, &mut local, joining) {
        close(consumer);
        return;
    }
    let mut next_positions = Instant::now();
    // The positions last sent, and when.
    let mut sent: (Vec<(TopicPartition, i64)>, Instant) = (Vec::new(), Instant::now());
    loop {
        if let Flow::Close = take_commands(&consumer, &commands, &stats, &mut local) {
            close(consumer);
            return;
        }
        // Here every record polled so far has been sent: the positions cover nothing still
        // on its way. Not while records are discarded (a stop), and only when there is room.
        if local.fetching && Instant::now() >= next_positions {
            next_positions = Instant::now() + POSITIONS_EVERY;
            let positions = positions(&consumer);
            // Unchanged positions go again only now and then: an idle route's dispatcher is not
            // woken ten times a second for nothing.
            let due = positions != sent.0 || sent.1.elapsed() >= POSITIONS_AGAIN;
            if !positions.is_empty() && due && events.try_send(KafkaEvent::Positions(positions.clone())).is_ok() {
                sent = (positions, Instant::now());
            }
            if !local.paused.is_empty() {
                // Paused partitions revoked since are nobody's to resume.
                if let Ok(assigned) = consumer.assignment() {
                    let owned = |tp: &TopicPartition| {
                        assigned.elements().iter().any(|e| e.topic() == &*tp.topic && e.partition() == tp.partition)
                    };
                    local.paused.retain(owned);
                }
            }
        }

        if !local.unsought.is_empty() && Instant::now() >= next_seek {
            let before = local.unsought.len();
            // A partition revoked meanwhile restarts from its commit wherever it goes next.
            if let Ok(assigned) = consumer.assignment() {
                let owned = |tp: &TopicPartition| {
                    assigned.elements().iter().any(|e| e.topic() == &*tp.topic && e.partition() == tp.partition)
                };
                local.unsought.retain(|(tp, _)| owned(tp));
            }
            let mut sought = Vec::new();
            local.unsought.retain(|(tp, offset)| {
                let done = resume_at(&consumer, tp, *offset);
                if done {
                    sought.push(tp.clone());
                }
                !done
            });
            if local.unsought.len() == before {
                next_seek = Instant::now() + Duration::from_millis(500);
            }
            // Before anything fetched from the new position: the dispatcher then knows that
            // what follows comes from there, even when the offset sought is gone.
            for tp in sought {
                if let Flow::Close =
                    hand_over(&consumer, &events, &commands, &stats, &mut local, KafkaEvent::Sought(tp))
                {
                    close(consumer);
                    return;
                }
            }
        }

        if reports.needs_probe() {
            probe.check(&consumer, &reports);
        } else {
            topic_check.run(&consumer, &stats);
        }

        let polled = consumer.poll(poll_wait(local.last_activity.elapsed(), local.waiting_on_kafka()));
        if polled.is_some() {
            local.last_activity = Instant::now();
        }
        probe.report(&reports);
        settle_commits(&consumer, &stats, &mut local.commits);
        let Some(first) = polled else { continue };
        let mut batch = Vec::with_capacity(BATCH);
        let mut fatal = false;
        let mut ask_about_topics = false;
        let mut handle = |m: KafkaResult<BorrowedMessage<'_>>, batch: &mut Vec<Record>| match m {
            Ok(m) => batch.push(to_record(consumer.context(), &m)),
            // librdkafka gives a consumer's fatal error (fenced by a consumer with the same
            // group.instance.id) to its poll alone, not to the error callback.
            Err(KafkaError::MessageConsumptionFatal(_)) => fatal = true,
            // "Subscribed topic not available", without the topic's name.
            Err(KafkaError::MessageConsumption(code)) if super::topics::about_a_topic(code) => ask_about_topics = true,
            // Global errors (unreachable brokers) arrive here and through the context's
            // error callback, which counts and reports them.
            Err(error) => debug!(%error, "consumer error"),
        };
        handle(first, &mut batch);
        while batch.len() < BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(m) => handle(m, &mut batch),
                None => break,
            }
        }
        if ask_about_topics {
            topic_check.soon();
        }
        if fatal {
            let (code, reason) = consumer
                .client()
                .fatal_error()
                .map_or_else(|| ("Fatal".to_string(), String::new()), |(c, r)| (format!("{c:?}"), r));
            reports.fatal(&format!("the consumer of group {}", consumer.context().group), &format!("{code}: {reason}"));
        }
        if !local.fetching || batch.is_empty() {
            continue;
        }
        reports.answered();
        Stats::bump(&stats.received, batch.len() as u64);
        let event = KafkaEvent::Records(batch);
        if let Flow::Close = hand_over(&consumer, &events, &commands, &stats, &mut local, event) {
            close(consumer);
            return;
        }
    }
}

/// Sends `event` to the dispatcher. While the dispatcher is behind, keeps serving its
/// commands: a commit must not wait for the event channel to have room. Close: the
/// dispatcher is gone or asked to close.
fn hand_over(
    consumer: &BaseConsumer<GatewayContext>,
    events: &mpsc::Sender<KafkaEvent>,
    commands: &std_mpsc::Receiver<KafkaCommand>,
    stats: &Stats,
    local: &mut Local,
    mut event: KafkaEvent,
) -> Flow {
    loop {
        match events.try_send(event) {
            Ok(()) => return Flow::Continue,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                info!("dispatcher gone; closing the consumer");
                return Flow::Close;
            }
            Err(mpsc::error::TrySendError::Full(back)) => {
                event = back;
                if let Flow::Close = take_commands(consumer, commands, stats, local) {
                    return Flow::Close;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

enum Flow {
    Continue,
    Close,
}

/// How often the consumer's positions go to the dispatcher ([`KafkaEvent::Positions`]) when
/// they moved, and when they did not.
const POSITIONS_EVERY: Duration = Duration::from_millis(100);
const POSITIONS_AGAIN: Duration = Duration::from_secs(1);

/// The consumer's position of each assigned partition that has one.
fn positions(consumer: &BaseConsumer<GatewayContext>) -> Vec<(TopicPartition, i64)> {
    let Ok(list) = consumer.position() else { return Vec::new() };
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((consumer.context().tp(e.topic(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Joins the route's group: first, when the route takes over the shared group's offsets,
/// waits until Kafka answers and copies them (serving the dispatcher's commands meanwhile, so
/// a stop is not held up); then subscribes. Close: the gateway stops, or the subscription was
/// refused.
fn join(
    consumer: &BaseConsumer<GatewayContext>,
    commands: &std_mpsc::Receiver<KafkaCommand>,
    stats: &Stats,
    reports: &ClientReports,
    probe: &mut Probe,
    local: &mut Local,
    joining: Joining,
) -> Flow {
    if let Some(seed) = joining.seed {
        loop {
            if let Flow::Close = take_commands(consumer, commands, stats, local) {
                return Flow::Close;
            }
            if probe.check(consumer, reports) == Some(true) {
                break;
            }
            // Serves librdkafka's callbacks: the error callback says why Kafka does not answer.
            if let Some(Err(error)) = consumer.poll(WAIT_POLL) {
                debug!(%error, "consumer error");
            }
            probe.report(reports);
        }
        seed.run();
    }
    let topics: Vec<&str> = joining.topics.iter().map(String::as_str).collect();
    match consumer.subscribe(&topics) {
        Ok(()) => {
            info!(topics = %joining.topics.join(", "), group = joining.group, "consumer subscribed");
            Flow::Continue
        }
        Err(error) => {
            // Not something a retry fixes (librdkafka refuses the topic list itself).
            error!(%error, topics = %joining.topics.join(", "), group = joining.group, "cannot subscribe: the route gets no records");
            Flow::Close
        }
    }
}

fn close(consumer: BaseConsumer<GatewayContext>) {
    info!("closing the consumer: leaving the group");
    drop(consumer);
    info!("consumer closed");
}

/// Carries out the dispatcher's commands queued so far.
fn take_commands(
    consumer: &BaseConsumer<GatewayContext>,
    commands: &std_mpsc::Receiver<KafkaCommand>,
    stats: &Stats,
    local: &mut Local,
) -> Flow {
    loop {
        let command = match commands.try_recv() {
            Ok(c) => c,
            Err(std_mpsc::TryRecvError::Empty) => break,
            Err(std_mpsc::TryRecvError::Disconnected) => KafkaCommand::Close,
        };
        local.last_activity = Instant::now();
        match command {
            KafkaCommand::Commit { points, done } => {
                // Only partitions still assigned: a commit asked for before a revoke but taken
                // up after it would move the revoked partitions back behind the revoke's own
                // commit, and their next owner would redeliver what was acked in between.
                let points = still_assigned(consumer, points);
                debug!(partitions = points.len(), "committing");
                if points.is_empty() {
                    if let Some(done) = done {
                        let _ = done.send(CommitOutcome::default());
                    }
                    continue;
                }
                // Asynchronous: the thread goes on polling, and librdkafka's commit callback
                // says how each partition fared (see `settle_commits`).
                let requests = local.commits.start(points, done, Instant::now());
                send_commits(consumer, stats, &mut local.commits, requests);
            }
            KafkaCommand::Pause(partitions) => {
                if let Err(error) = consumer.pause(&tpl_of(&partitions)) {
                    warn!(%error, "pause failed");
                }
                local.paused.extend(partitions);
            }
            KafkaCommand::Resume(partitions) => {
                for (tp, from) in partitions {
                    local.paused.remove(&tp);
                    match from {
                        Some(offset) => local.unsought.push((tp, offset)),
                        None => resume_where_it_was(consumer, &tp),
                    }
                }
            }
            KafkaCommand::StopFetching => {
                local.fetching = false;
                if let Ok(assigned) = consumer.assignment() {
                    let _ = consumer.pause(&assigned);
                }
            }
            KafkaCommand::Close => return Flow::Close,
        }
    }

    Flow::Continue
}

/// Checks, with backoff, whether the cluster answers: an unreachable Kafka at start is then
/// reported (through the gateway's [`ClientReports`], once per interval) even when librdkafka
/// says nothing, and the route's thread learns when it may join its group.
struct Probe {
    next: Instant,
    backoff: Duration,
    /// The last check's failure, reported once librdkafka's callbacks have been served (see
    /// [`Probe::report`]).
    failed: Option<KafkaError>,
}

impl Probe {
    fn new() -> Self {
        Self { next: Instant::now(), backoff: Duration::from_millis(500), failed: None }
    }

    /// Reports the last check's failure, if any. Called after a `poll`: librdkafka queues why
    /// the connection failed (DNS, refused, TLS) for the error callback while the metadata
    /// request waits, and that cause, reported first, makes the probe's generic "no answer" a
    /// symptom that is counted, not said.
    fn report(&mut self, reports: &ClientReports) {
        if let Some(error) = self.failed.take() {
            reports.request_failed(&error, "metadata request");
        }
    }

    /// Whether the cluster answered; None when the next check is not due yet.
    fn check(&mut self, consumer: &BaseConsumer<GatewayContext>, reports: &ClientReports) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        match consumer.fetch_metadata(None, PROBE_TIMEOUT) {
            Ok(_) => {
                reports.answered();
                self.backoff = Duration::from_millis(500);
                Some(true)
            }
            Err(error) => {
                debug!(%error, retry_in_ms = self.backoff.as_millis() as u64, "kafka did not answer the metadata probe");
                self.failed = Some(error);
                self.next = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
                Some(false)
            }
        }
    }
}

fn to_record(context: &GatewayContext, m: &BorrowedMessage<'_>) -> Record {
    Record {
        tp: context.tp(m.topic(), m.partition()),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers: m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice))).collect())
            .unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_counted_to_the_last_stable_offset_when_the_consumer_reads_committed_records() {
        let open = PartitionStatistics { hi_offset: 250, ls_offset: 100 };
        assert_eq!(open.ends(true), Some(PartitionEnds { high_watermark: 250, readable: 100 }));
        assert_eq!(open.ends(false), Some(PartitionEnds { high_watermark: 250, readable: 250 }), "read_uncommitted");
        let old_broker = PartitionStatistics { hi_offset: 250, ls_offset: -1 };
        assert_eq!(old_broker.ends(true).map(|e| e.readable), Some(250), "no last stable offset reported");
        assert_eq!(PartitionStatistics { hi_offset: -1, ls_offset: -1 }.ends(true), None, "not fetched yet");

        let mut client = ClientConfig::new();
        assert!(reads_committed(&client), "librdkafka's default");
        client.set("isolation.level", " Read_Uncommitted");
        assert!(!reads_committed(&client));
        client.set("isolation.level", "read_committed");
        assert!(reads_committed(&client));
    }

    #[test]
    fn librdkafka_reads_ahead_one_partitions_bound_of_records_and_a_few_mib() {
        assert_eq!(Prefetch::for_bound(10_000), Prefetch { messages: 10_000, kib: 4096 });
        assert_eq!(Prefetch::for_bound(10), Prefetch { messages: 1_000, kib: 4096 }, "a tiny bound");
        assert_eq!(Prefetch::for_bound(1_000_000), Prefetch { messages: 100_000, kib: 4096 }, "librdkafka's own");
    }

    #[test]
    fn a_routes_consumer_prefetches_by_the_bound_unless_the_properties_say_otherwise() {
        let text = |extra: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbootstrap_servers = \"k:9092\"\ngroup_id = \"gw\"\n\
                 max_uncommitted_per_partition = 2500\n[kafka.properties]\n{extra}\n\
                 [[routes]]\nname = \"orders\"\ntopics = [\"orders\"]\n"
            )
        };
        let config = Config::parse(&text("")).expect("parses");
        let client = client_config(&config, &config.routes[0]);
        assert_eq!(client.get("queued.min.messages"), Some("2500"));
        assert_eq!(client.get("queued.max.messages.kbytes"), Some("4096"));
        let config = Config::parse(&text("\"queued.max.messages.kbytes\" = \"65536\"")).expect("parses");
        let client = client_config(&config, &config.routes[0]);
        assert_eq!(client.get("queued.max.messages.kbytes"), Some("65536"), "the operator's property wins");
        assert_eq!(client.get("queued.min.messages"), Some("2500"));
    }

    #[test]
    fn a_quiet_route_polls_slowly_unless_the_dispatcher_may_be_waiting() {
        assert_eq!(poll_wait(Duration::from_millis(10), false), POLL, "just busy");
        assert_eq!(poll_wait(Duration::from_secs(5), false), QUIET_POLL, "quiet for long");
        assert_eq!(poll_wait(Duration::from_secs(5), true), POLL, "a commit out or a partition paused");
    }

    #[test]
    fn a_group_whose_coordinator_moves_stays_settled_and_a_joining_one_does_not() {
        let settled = |json: &str| serde_json::from_str::<GroupStatistics>(json).expect("parses").state().settled;
        assert!(settled(r#"{"state": "up", "join_state": "steady"}"#));
        assert!(
            settled(r#"{"state": "query-coord", "join_state": "steady"}"#),
            "the coordinator's broker died: the member keeps its partitions"
        );
        assert!(!settled(r#"{"state": "up", "join_state": "wait-join"}"#), "a rebalance under way");
        assert!(!settled(r#"{"state": "query-coord", "join_state": "init"}"#), "never joined yet");
    }
}
