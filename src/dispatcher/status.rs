//! The route as the operator sees it: a snapshot of its settings, cohorts, sessions and
//! partitions taken by the dispatcher (the one owner of that state) when the admin API asks,
//! the samples behind "observed split over the last minute", and how often the route may warn
//! that it holds messages for a cohort without subscribers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RouteConfig;
use crate::kafka::TopicPartition;
use crate::subscriptions::{CohortCounts, CohortSnapshot, SubscriberSnapshot};

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
    /// Time messages waited for the route's `rate_limit` since it was set (zero without one).
    pub throttled: std::time::Duration,
}

/// A route as this replica runs it, with its consumer group's offsets and lag: what the admin
/// API, `/metrics` and the gRPC layer read (plain data; none of them reaches the others).
#[derive(Debug, Clone)]
pub struct RouteStatus {
    pub group: String,
    pub snapshot: RouteSnapshot,
    pub partitions: Vec<PartitionStatus>,
    /// Routed topics the route's consumer cannot read (missing, not authorized), and why.
    pub unreadable_topics: std::collections::BTreeMap<String, String>,
}

/// One assigned partition with the broker's view of it.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub snapshot: PartitionSnapshot,
    pub high_watermark: Option<i64>,
    /// Where the route can read up to (see [`crate::stats::PartitionEnds::readable`]).
    pub last_stable_offset: Option<i64>,
    /// `last_stable_offset - committed`.
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
    /// Messages moved off the partition's head to let its commits go on (`head_of_line`).
    pub head_of_line_moved: u64,
}

/// Least time between two warnings that a route holds messages for a cohort without
/// subscribers: often enough to be seen in a cutover, rarely enough not to flood the log.
pub(super) const HOLD_WARN_EVERY: Duration = Duration::from_secs(10);

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

/// When the route last warned that it holds messages for a cohort without subscribers.
#[derive(Debug, Default)]
pub(super) struct HoldWarning {
    last: Option<Instant>,
}

impl HoldWarning {
    /// Whether a warning may be given at `now` (none in the last [`HOLD_WARN_EVERY`]).
    pub(super) fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|at| now.duration_since(at) >= HOLD_WARN_EVERY)
    }

    /// A warning was given at `now`.
    pub(super) fn given(&mut self, now: Instant) {
        self.last = Some(now);
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
    fn the_hold_warning_repeats_at_most_every_ten_seconds() {
        let start = Instant::now();
        let mut warning = HoldWarning::default();
        assert!(warning.due(start));
        warning.given(start);
        assert!(!warning.due(start + Duration::from_secs(9)));
        assert!(warning.due(start + HOLD_WARN_EVERY));
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
