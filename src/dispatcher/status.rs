//! The route as the operator sees it and acts on it: a snapshot of its settings, cohorts,
//! sessions and partitions taken by the dispatcher (the one owner of that state) when the admin
//! API asks, the samples behind "observed split over the last minute", and the batches of an
//! operator's replay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use super::Dispatcher;
use crate::config::RouteConfig;
use crate::kafka::TopicPartition;
use crate::subscriptions::{CohortCounts, CohortSnapshot, ReplayTag, SubscriberSnapshot};

/// The window the observed split is measured over.
pub const SPLIT_WINDOW: Duration = Duration::from_secs(60);
/// Least time between two samples of the per-cohort counts.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One route on this replica, now.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    /// The settings as last applied (weights and selector may have changed since start).
    pub config: RouteConfig,
    pub cohorts: Vec<CohortSnapshot>,
    /// Deliveries per cohort over the last [`SPLIT_WINDOW`] (less just after start).
    pub delivered_last_minute: BTreeMap<String, u64>,
    pub subscribers: Vec<SubscriberSnapshot>,
    pub partitions: Vec<PartitionSnapshot>,
    pub held: usize,
    pub retrying: usize,
    pub delivered: u64,
    /// Totals per cohort since start ("" for subscribers without one).
    pub counts: BTreeMap<String, CohortCounts>,
    /// Values of the split label among the pods the route selects (Kubernetes discovery; empty
    /// otherwise): cohorts whose pods exist, subscribed or not.
    pub pod_cohorts: BTreeSet<String>,
}

/// A route as this replica runs it, with its consumer group's offsets and lag: what the admin
/// API, `/metrics` and the gRPC layer read (plain data; none of them reaches the others).
#[derive(Debug, Clone)]
pub struct RouteStatus {
    pub group: String,
    pub snapshot: RouteSnapshot,
    pub partitions: Vec<PartitionStatus>,
}

/// One assigned partition with the broker's view of it.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub snapshot: PartitionSnapshot,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}

/// One assigned partition.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    pub tp: TopicPartition,
    /// The group's committed offset, as found at assignment or last committed here.
    pub committed: Option<i64>,
    pub paused: bool,
    /// Records held un-committed.
    pub buffered: usize,
}

/// Least time between two warnings that a route holds messages for a cohort without
/// subscribers: often enough to be seen in a cutover, rarely enough not to flood the log.
const HOLD_WARN_EVERY: Duration = Duration::from_secs(10);

/// Cumulative per-cohort delivery counts, sampled over time.
#[derive(Debug, Default)]
pub(super) struct SplitSamples {
    samples: VecDeque<(Instant, BTreeMap<String, u64>)>,
}

impl SplitSamples {
    /// Keeps a sample of `counts` if the last one is a second old or more; forgets samples
    /// that a newer one already covers for the window.
    pub(super) fn sample(&mut self, now: Instant, counts: &BTreeMap<String, u64>) {
        if self.samples.back().is_some_and(|(at, _)| now.duration_since(*at) < SAMPLE_EVERY) {
            return;
        }
        self.samples.push_back((now, counts.clone()));
        // The oldest sample kept is the newest one at least a window old.
        while self.samples.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= SPLIT_WINDOW) {
            self.samples.pop_front();
        }
    }

    /// Deliveries per cohort since the sample that starts the window (counts now minus then).
    pub(super) fn over_window(&self, now: Instant, counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= SPLIT_WINDOW)
            .or(self.samples.front())
            .map(|(_, c)| c);
        counts
            .iter()
            .map(|(cohort, n)| {
                let before = base.and_then(|b| b.get(cohort)).copied().unwrap_or(0);
                (cohort.clone(), n.saturating_sub(before))
            })
            .collect()
    }
}

impl Dispatcher {
    /// Takes a batch of an operator's replay: each record goes to the route's subscribers,
    /// marked, and `done` fires when the last of them is settled.
    pub(super) fn on_replay(&mut self, replay: u64, records: Vec<crate::kafka::Record>, done: oneshot::Sender<()>) {
        if records.is_empty() {
            let _ = done.send(());
            return;
        }
        let batch = self.next_replay_batch;
        self.next_replay_batch += 1;
        self.replay_batches.insert(batch, (records.len(), done));
        for record in records {
            self.registry.dispatch_replay(std::sync::Arc::new(record), ReplayTag { replay, batch });
        }
    }

    /// One replayed message is settled.
    pub(super) fn replay_settled(&mut self, tag: ReplayTag) {
        if let Some((left, _)) = self.replay_batches.get_mut(&tag.batch) {
            *left -= 1;
            if *left == 0 {
                if let Some((_, done)) = self.replay_batches.remove(&tag.batch) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Samples the per-cohort counts (called on the commit tick).
    pub(super) fn sample_split(&mut self, now: Instant) {
        self.split.sample(now, &self.registry.delivered_by_cohort());
    }

    /// Says in the log, every [`HOLD_WARN_EVERY`] while it lasts, which cohort's messages the
    /// route holds for want of a subscriber here: a blue-green cutover to pods that are not
    /// there yet strands messages, and readiness rightly stays about Kafka, so the log, Status
    /// and `fanout_cohort_held_messages` are where it shows.
    pub(super) fn warn_if_holding(&mut self, now: Instant) {
        let recent = self.hold_warned.is_some_and(|at| now.duration_since(at) < HOLD_WARN_EVERY);
        if recent || self.registry.held() == 0 {
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
            self.hold_warned = Some(now);
        }
    }

    pub(super) fn snapshot(&self) -> RouteSnapshot {
        let r = &self.registry;
        let mut partitions: Vec<PartitionSnapshot> = self
            .partitions
            .iter()
            .map(|(tp, s)| PartitionSnapshot {
                tp: tp.clone(),
                committed: s.committed,
                paused: s.paused,
                buffered: s.tracker.uncommitted(),
            })
            .collect();
        partitions.sort_by(|a, b| (&a.tp.topic, a.tp.partition).cmp(&(&b.tp.topic, b.tp.partition)));
        RouteSnapshot {
            config: r.route_config().clone(),
            cohorts: r.cohorts(),
            delivered_last_minute: self.split.over_window(Instant::now(), &r.delivered_by_cohort()),
            counts: r.by_cohort.clone(),
            subscribers: r.subscribers(),
            partitions,
            held: r.held(),
            retrying: r.delayed(),
            delivered: r.delivered,
            pod_cohorts: r.route_config().split_label.as_deref().map(|l| self.pods.label_values(l)).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(blue: u64, green: u64) -> BTreeMap<String, u64> {
        [("blue".to_string(), blue), ("green".to_string(), green)].into_iter().collect()
    }

    #[test]
    fn the_observed_split_counts_the_last_minute_only() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut samples = SplitSamples::default();
        samples.sample(at(0), &counts(0, 0));
        assert_eq!(samples.over_window(at(0), &counts(10, 0)), counts(10, 0), "younger than a minute: since start");
        samples.sample(at(30), &counts(100, 0));
        samples.sample(at(30), &counts(999, 999)); // within a second of the last: not kept
        samples.sample(at(61), &counts(100, 50));
        // At 91 s the window starts at 31 s: the sample at 30 s is its base.
        assert_eq!(samples.over_window(at(91), &counts(100, 150)), counts(0, 150));
        samples.sample(at(92), &counts(100, 150));
        assert_eq!(samples.samples.len(), 3, "the 0 s sample is covered by the 30 s one and gone");
    }

    #[test]
    fn a_cohort_new_since_the_base_sample_counts_from_zero() {
        let start = Instant::now();
        let mut samples = SplitSamples::default();
        samples.sample(start, &BTreeMap::new());
        let now: BTreeMap<String, u64> = [("canary".to_string(), 7)].into_iter().collect();
        assert_eq!(samples.over_window(start + Duration::from_secs(5), &now), now);
    }
}
