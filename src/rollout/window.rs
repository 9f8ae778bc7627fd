//! What a replica saw of each cohort over the current step: the judge compares the candidate
//! with the stable cohort over the same window of traffic, so each step starts counting from
//! zero. The route keeps running totals per cohort; a window remembers the totals at its start
//! and the ack latencies since, and turns both into the judge's samples.

use std::collections::{BTreeMap, VecDeque};

use super::judge::CohortSample;

/// Most latencies a window keeps per cohort (the latest): plenty for Mann-Whitney's power,
/// bounded whatever the rate.
pub const LATENCIES_KEPT: usize = 5_000;

/// A cohort's running totals since the route started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Deliveries settled: acked, nacked or past their ack deadline.
    pub settled: u64,
    /// Of those, failed: nacked or past their ack deadline.
    pub failed: u64,
}

/// Which step of which rollout a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowKey {
    pub started_at_ms: u64,
    pub step: usize,
}

/// One step's traffic on this replica.
#[derive(Debug, Clone)]
pub struct Window {
    key: WindowKey,
    base: BTreeMap<String, Totals>,
    latencies: BTreeMap<String, VecDeque<f64>>,
}

impl Window {
    /// A window for `key` from the running `totals` now.
    pub fn new(key: WindowKey, totals: &BTreeMap<String, Totals>) -> Self {
        Self { key, base: totals.clone(), latencies: BTreeMap::new() }
    }

    pub fn key(&self) -> WindowKey {
        self.key
    }

    /// Adds ack latencies (milliseconds) of `cohort` seen since the last call.
    pub fn add_latencies(&mut self, cohort: &str, latencies_ms: &[f64]) {
        if latencies_ms.is_empty() {
            return;
        }
        let kept = self.latencies.entry(cohort.to_string()).or_default();
        let skip = latencies_ms.len().saturating_sub(LATENCIES_KEPT);
        kept.extend(&latencies_ms[skip..]);
        while kept.len() > LATENCIES_KEPT {
            kept.pop_front();
        }
    }

    /// What `cohort` did in this window, given the running `totals` now. Totals that went
    /// backwards (the route restarted its counts) count from zero again.
    pub fn sample(&self, cohort: &str, totals: &BTreeMap<String, Totals>) -> CohortSample {
        let now = totals.get(cohort).copied().unwrap_or_default();
        let base = self.base.get(cohort).copied().unwrap_or_default();
        let (settled, failed) = if now.settled < base.settled {
            (now.settled, now.failed)
        } else {
            (now.settled - base.settled, now.failed.saturating_sub(base.failed))
        };
        CohortSample {
            deliveries: settled,
            failures: failed.min(settled),
            latencies_ms: self.latencies.get(cohort).map(|l| l.iter().copied().collect()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(&str, u64, u64)]) -> BTreeMap<String, Totals> {
        pairs
            .iter()
            .map(|(c, settled, failed)| (c.to_string(), Totals { settled: *settled, failed: *failed }))
            .collect()
    }

    const KEY: WindowKey = WindowKey { started_at_ms: 1, step: 0 };

    #[test]
    fn a_window_counts_from_its_start() {
        let w = Window::new(KEY, &totals(&[("stable", 1_000, 10)]));
        let now = totals(&[("stable", 1_300, 13), ("canary", 40, 8)]);
        let stable = w.sample("stable", &now);
        assert_eq!((stable.deliveries, stable.failures), (300, 3));
        let canary = w.sample("canary", &now);
        assert_eq!((canary.deliveries, canary.failures), (40, 8), "a cohort new since the start counts from zero");
        assert_eq!(w.sample("other", &now), CohortSample::default());
    }

    #[test]
    fn totals_that_went_backwards_count_from_zero() {
        let w = Window::new(KEY, &totals(&[("stable", 1_000, 10)]));
        let s = w.sample("stable", &totals(&[("stable", 50, 2)]));
        assert_eq!((s.deliveries, s.failures), (50, 2));
    }

    #[test]
    fn latencies_keep_the_latest_within_the_bound() {
        let mut w = Window::new(KEY, &BTreeMap::new());
        w.add_latencies("canary", &[1.0, 2.0]);
        let many: Vec<f64> = (0..LATENCIES_KEPT + 10).map(|i| i as f64).collect();
        w.add_latencies("canary", &many);
        let s = w.sample("canary", &BTreeMap::new());
        assert_eq!(s.latencies_ms.len(), LATENCIES_KEPT);
        assert_eq!(s.latencies_ms.first(), Some(&10.0), "the oldest went first");
        assert_eq!(s.latencies_ms.last(), Some(&((LATENCIES_KEPT + 9) as f64)));
    }
}
