//! Counters the gateway keeps about itself, shared read-only with the operator surface, the
//! demo and tests (which assert on them). Writers are the tasks that own the events counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Monotonic counters and a few gauges. Cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records received from Kafka.
    pub received: AtomicU64,
    /// Deliveries sent to subscribers, redeliveries included.
    pub delivered: AtomicU64,
    /// Deliveries whose attempt was above 1.
    pub redelivered: AtomicU64,
    /// Route acks that completed a message for that route.
    pub acked: AtomicU64,
    /// Ack ids that matched nothing in flight on their stream (unknown, already acked, or of
    /// a revoked partition). Ignored, the stream stays up.
    pub unknown_acks: AtomicU64,
    /// Deliveries whose ack deadline a subscriber moved (`Extend`).
    pub lease_extensions: AtomicU64,
    /// Extended ids that matched nothing in flight on their stream. Ignored.
    pub unknown_extensions: AtomicU64,
    pub nacked: AtomicU64,
    /// Deliveries whose ack deadline passed (taken back as failed attempts).
    pub expired: AtomicU64,
    /// Failed deliveries scheduled for another attempt after a backoff.
    pub retries_scheduled: AtomicU64,
    /// Messages produced to a dead-letter topic and acknowledged by Kafka.
    pub dead_lettered: AtomicU64,
    /// Failed messages produced to their route's retry topic and acknowledged by Kafka.
    pub retried_via_topic: AtomicU64,
    /// Messages moved off the head of their partition (`head_of_line`).
    pub head_of_line_moved: AtomicU64,
    /// Dead-letter and retry-topic produces Kafka refused (each is retried).
    pub dead_letter_failures: AtomicU64,
    /// Messages that used up their attempts on a route without a dead-letter topic.
    pub exhausted_without_dlq: AtomicU64,
    /// Records of effectively-once routes acked without delivery: another record with the same
    /// idempotency key came first within the dedup TTL.
    pub dedup_hits: AtomicU64,
    /// Claim batches the dedup store failed (their records were delivered unchecked).
    pub dedup_errors: AtomicU64,
    /// Keys the dedup stores forgot early to stay within their capacity.
    pub dedup_evictions: AtomicU64,
    /// At-most-once messages committed but never acked: failed, timed out, lost with their
    /// stream, or revoked before they were sent. Never redelivered.
    pub dropped_at_most_once: AtomicU64,
    /// Records dropped unseen because their partition's buffer was full; fetched again on resume.
    pub refetched: AtomicU64,
    /// Records skipped because a previous owner's commit metadata says they were acked.
    pub skipped_already_acked: AtomicU64,
    /// Records Kafka sent again at or below an offset already received, or of a partition no
    /// longer assigned (fetched just before its revoke).
    pub stale_records: AtomicU64,
    /// Deliveries still in flight when a revoked partition's drain deadline passed: the
    /// partition's next owner delivers them again.
    pub revoke_abandoned: AtomicU64,
    /// Deliveries still in flight when a graceful stop's grace period ran out: redelivered by
    /// whoever owns their partitions next.
    pub shutdown_abandoned: AtomicU64,
    /// Commits of revoked partitions' final points that the group coordinator refused (a
    /// coordinator that refuses commits during a rebalance): their next owner starts from the
    /// last commit that landed and redelivers what was acked since.
    pub revoke_commits_refused: AtomicU64,
    /// Partitions the group took away without a revoke (librdkafka's lost assignment: the
    /// member's session ended, a frozen process or a network cut): nothing of theirs could be
    /// committed any more, and their next owner redelivers what was acked since the last commit.
    pub assignments_lost: AtomicU64,
    /// Partitions whose log went back below what the route committed (a topic deleted and
    /// created again, a log truncated): each started over from the record that came.
    pub partition_restarts: AtomicU64,
    /// Retries the retry topic refused for their size (alone in a batch): retried in place.
    pub retries_in_place: AtomicU64,
    /// Graceful stops in which the gRPC server did not finish within its 5 s bound (a stream
    /// that did not end held it).
    pub server_stop_overruns: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Partition assignments and revocations seen by the gateway's consumer.
    pub rebalances: AtomicU64,
    pub partition_pauses: AtomicU64,
    pub partition_resumes: AtomicU64,
    /// Errors reported by the Kafka client (unreachable brokers, failed requests).
    pub kafka_errors: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Records the dispatcher holds un-committed (queued, in flight, retrying, or acked above a
    /// gap), all partitions: what `kafka.max_uncommitted_per_partition` bounds per partition.
    pub buffered: AtomicU64,
    /// Largest value `buffered` has reached.
    pub buffered_peak: AtomicU64,
    /// True once the Kafka cluster has answered a metadata request.
    pub kafka_reachable: AtomicBool,
    /// Last error the Kafka client reported, for status pages and logs.
    pub last_kafka_error: RwLock<Option<String>>,
    /// Kafka clients of the gateway that hit a fatal error (librdkafka's word for a client
    /// that can do nothing more: a consumer fenced by another with its `group.instance.id`, an
    /// idempotent producer that lost its sequence), each with what was said of it. Liveness
    /// fails while there is one: only a new process brings such a client back.
    pub fatal_errors: RwLock<BTreeMap<String, String>>,
    /// Per route group, the routed topics its consumer cannot read (missing, not
    /// authorized) and why, as the route's consumer last found them.
    pub unreadable_topics: RwLock<HashMap<Arc<str>, BTreeMap<String, String>>>,
    /// Route groups the brokers do not let the gateway use (group authorization failed), with
    /// what to grant; every topic of such a route counts as unreadable. Cleared once the
    /// group is joined.
    pub refused_groups: RwLock<HashMap<Arc<str>, String>>,
    /// Per route (by name), its dead-letter or retry topic while it refuses letters, and why
    /// (missing, not authorized): the letters wait and their offsets stay uncommitted.
    pub unwritable_topics: RwLock<HashMap<String, BTreeMap<String, String>>>,
    /// Last successfully committed offset per (consumer group, topic, partition): each route
    /// commits in a group of its own.
    pub committed: RwLock<HashMap<GroupPartition, i64>>,
    /// Where each partition ends per (consumer group, topic, partition), from the route
    /// consumers' statistics (every `statistics.interval.ms`, 1 s unless set): what lag is
    /// measured against.
    pub partition_ends: RwLock<HashMap<GroupPartition, PartitionEnds>>,
    /// Config changes applied (file, ConfigMap or admin API) and refused since start.
    pub config_reloads: AtomicU64,
    pub config_refused: AtomicU64,
    /// Each route consumer's membership of its group (keyed by group), from librdkafka's
    /// statistics: what readiness waits for.
    pub groups: RwLock<HashMap<Arc<str>, GroupState>>,
    /// Set when a graceful stop begins: the replica is no longer ready.
    pub stopping: AtomicBool,
    /// Commit and delivery latency, observed where they happen.
    pub histograms: Histograms,
}

/// A label value as both exposition formats need it: backslash, double quote and line feed
/// escaped. prometheus-client writes label values as given, and some of ours come from
/// subscribers (a cohort is a value of their split label, a subscriber's name is its Hello's
/// pod name in static mode): unescaped, a `"` or a newline in one would let a subscriber write
/// series of its own into the scrape, or break it for every alert. Hello validation already
/// refuses such names; this is the second line of defence, at the place that writes them.
pub fn label_value(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The `route` label of a histogram. Route names are validated at load (letters, digits, `.`,
/// `_`, `-`), so they go into the exposition as they are.
type RouteLabel = [(&'static str, String); 1];
/// The `route` and `cohort` labels. Cohorts are values of the route's split label, bounded by
/// configuration and validated in Hello; `/metrics` escapes what it writes anyway.
type CohortLabel = [(&'static str, String); 2];

/// Commit and fetch-to-ack latency per route, observed where they happen; `/metrics`
/// registers the families at each scrape. Each route's writer takes its own handle once
/// ([`Histograms::commit`], [`Histograms::delivery`]) and observes without a lookup.
#[derive(Debug)]
pub struct Histograms {
    pub(crate) commit: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub(crate) delivery: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Send-to-ack latency per route and cohort: what a canary's analysis compares between
    /// the stable and the candidate cohort (an Argo Rollouts AnalysisTemplate reads it).
    pub(crate) ack: Family<CohortLabel, Histogram, fn() -> Histogram>,
}

/// 1 ms to about 33 s: commits take milliseconds, deliveries up to an ack deadline.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            commit: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            delivery: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ack: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl Histograms {
    /// Seconds a commit of `route`'s group took, successful or not.
    pub fn commit(&self, route: &str) -> Histogram {
        self.commit.get_or_create_owned(&[("route", route.to_string())])
    }

    /// Seconds from a record's arrival from Kafka to its ack, per route (replays excluded).
    pub fn delivery(&self, route: &str) -> Histogram {
        self.delivery.get_or_create_owned(&[("route", route.to_string())])
    }

    /// Seconds from a delivery's send to its ack, per route and cohort (replays excluded).
    pub fn ack(&self, route: &str, cohort: &str) -> Histogram {
        self.ack.get_or_create_owned(&[("route", route.to_string()), ("cohort", label_value(cohort))])
    }
}

/// Where a route's consumer stands in its group, as its last statistics said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupState {
    /// The group coordinator is known and the consumer is a settled member: not joining, not
    /// in the middle of a rebalance. Its assignment (possibly empty, when there are more
    /// replicas than partitions) is the one it holds.
    pub settled: bool,
}

/// The gateway's counters at one moment, as plain numbers: what a program embedding the
/// gateway (the demo, the benchmark) reads, without touching the atomics the pipelines write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records read from Kafka.
    pub received: u64,
    /// Deliveries sent to subscribers, redeliveries included.
    pub delivered: u64,
    /// Deliveries that were a message's second or later attempt.
    pub redelivered: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    /// Partition assignments and revocations the routes' consumer groups went through.
    pub rebalances: u64,
    /// Subscriber streams open now.
    pub sessions: u64,
    /// Messages read and not yet out to a subscriber (queues and parked keys).
    pub buffered: u64,
    /// Partitions paused for flow control now.
    pub paused_partitions: u64,
}

/// A partition as one consumer group sees it: what committed offsets and watermarks are kept
/// by (the same partition has a commit point per route, each route being a group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupPartition {
    pub group: Arc<str>,
    pub topic: String,
    pub partition: i32,
}

/// Where a partition ends, as a route's consumer last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionEnds {
    /// The high watermark: one past the last record written and replicated.
    pub high_watermark: i64,
    /// Where the route's consumer can read up to: the last stable offset under
    /// `isolation.level = read_committed` (librdkafka's default), below the first record of a
    /// transaction still open; the high watermark under `read_uncommitted`. Lag counts up to
    /// here: the records of an open transaction are not the route's to read yet, and counting
    /// them would raise a lag alarm for a route that is keeping up.
    pub readable: i64,
}

impl GroupPartition {
    pub fn new(group: &str, topic: &str, partition: i32) -> Self {
        Self { group: Arc::from(group), topic: topic.to_string(), partition }
    }
}

impl Stats {
    /// A copy of the counters (each read on its own: not one atomic snapshot).
    pub fn counters(&self) -> Counters {
        Counters {
            received: Self::get(&self.received),
            delivered: Self::get(&self.delivered),
            redelivered: Self::get(&self.redelivered),
            acked: Self::get(&self.acked),
            dead_lettered: Self::get(&self.dead_lettered),
            rebalances: Self::get(&self.rebalances),
            sessions: Self::get(&self.sessions),
            buffered: Self::get(&self.buffered),
            paused_partitions: Self::get(&self.partition_pauses).saturating_sub(Self::get(&self.partition_resumes)),
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves a gauge that several routes add to from `before` to `now` (this route's part).
    pub fn shift(gauge: &AtomicU64, before: u64, now: u64) {
        if now >= before {
            gauge.fetch_add(now - before, Ordering::Relaxed);
        } else {
            gauge.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Moves one route's part of `buffered` from `before` to `now`, and the peak with it.
    pub fn shift_buffered(&self, before: u64, now: u64) {
        Self::shift(&self.buffered, before, now);
        self.buffered_peak.fetch_max(self.buffered.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Sum of committed offsets across groups and partitions.
    pub fn committed_sum(&self) -> i64 {
        self.committed.read().values().sum()
    }

    /// The topics of `topics` that `group`'s consumer cannot read, and why: those it found so,
    /// and all of them while the group itself is refused.
    pub fn unreadable_of(&self, group: &str, topics: &[String]) -> BTreeMap<String, String> {
        let mut found = self.unreadable_topics.read().get(group).cloned().unwrap_or_default();
        if let Some(why) = self.refused_groups.read().get(group) {
            for topic in topics {
                found.entry(topic.clone()).or_insert_with(|| why.clone());
            }
        }
        found
    }

    /// Where a partition ends as `group`'s consumer last saw it.
    pub fn ends_of(&self, group: &str, topic: &str, partition: i32) -> Option<PartitionEnds> {
        self.partition_ends.read().get(&GroupPartition::new(group, topic, partition)).copied()
    }

    /// The last offset `group` committed for a partition, if this gateway committed one.
    pub fn committed_of(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.committed.read().get(&GroupPartition::new(group, topic, partition)).copied()
    }
}
