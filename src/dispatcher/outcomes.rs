//! Each cohort's outcomes for a rollout's judge: the running settled and failed totals (kept
//! by the registry anyway) and the ack latencies since the judge last asked. Latencies are
//! kept only while someone reads them, so a route without a rollout pays nothing per ack.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::subscriptions::CohortCounts;

/// Most latencies kept per cohort between two reads: a rollout reads every second or so, so
/// this is a sample of the latest at a few thousand acks a second, and bounded at any rate.
const KEPT_PER_COHORT: usize = 4_096;

/// A reader that has not asked for this long has gone (its rollout is over): stop keeping.
const READER_GONE: Duration = Duration::from_secs(10);

/// What a rollout reads of a route: every cohort's running counts and its ack latencies
/// (milliseconds, send to ack, replays excluded) since the last read.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    pub counts: BTreeMap<String, CohortCounts>,
    pub latencies_ms: BTreeMap<String, Vec<f64>>,
}

/// Ack latencies per cohort, kept while read.
#[derive(Debug, Default)]
pub(super) struct CohortLatencies {
    by_cohort: HashMap<Box<str>, Vec<f64>>,
    last_read: Option<Instant>,
}

impl CohortLatencies {
    /// Whether latencies are wanted at `now` (someone read them lately).
    pub(super) fn wanted(&self, now: Instant) -> bool {
        self.last_read.is_some_and(|at| now.saturating_duration_since(at) < READER_GONE)
    }

    /// An ack of `cohort` after `latency`; beyond the bound the latest are not kept (the
    /// next read comes within a second or so).
    pub(super) fn observe(&mut self, cohort: &str, latency: Duration) {
        let kept = match self.by_cohort.get_mut(cohort) {
            Some(kept) => kept,
            None => self.by_cohort.entry(cohort.into()).or_default(),
        };
        if kept.len() < KEPT_PER_COHORT {
            kept.push(latency.as_secs_f64() * 1_000.0);
        }
    }

    /// What was kept since the last read; keeping goes on for [`READER_GONE`].
    pub(super) fn take(&mut self, now: Instant) -> BTreeMap<String, Vec<f64>> {
        self.last_read = Some(now);
        self.by_cohort
            .iter_mut()
            .filter(|(_, v)| !v.is_empty())
            .map(|(c, v)| (c.to_string(), std::mem::take(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_kept_only_while_read_and_bounded_between_reads() {
        let start = Instant::now();
        let mut l = CohortLatencies::default();
        assert!(!l.wanted(start), "nobody asked yet");
        assert!(l.take(start).is_empty());
        assert!(l.wanted(start + Duration::from_secs(9)));
        for _ in 0..KEPT_PER_COHORT + 5 {
            l.observe("canary", Duration::from_millis(3));
        }
        l.observe("stable", Duration::from_micros(1_500));
        let taken = l.take(start + Duration::from_secs(1));
        assert_eq!(taken["canary"].len(), KEPT_PER_COHORT);
        assert_eq!(taken["stable"], vec![1.5]);
        assert!(l.take(start + Duration::from_secs(2)).is_empty(), "taken once");
        assert!(!l.wanted(start + Duration::from_secs(2) + READER_GONE), "a reader gone stops the keeping");
    }
}
