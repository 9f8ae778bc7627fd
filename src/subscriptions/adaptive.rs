//! Adaptive windows (a route's `window = "adaptive"`): a subscriber's window follows how
//! fast it acks, an AIMD limit as in Netflix's concurrency-limits. Past the concurrency a
//! subscriber can work at, a larger window only queues deliveries in front of its handlers:
//! when its work slows down, what waits there outlives its ack deadline and comes back, and
//! its partitions' commits wait for it. So the window grows by one per window's worth of acks
//! that come back in time, and is cut by a tenth (at most once per window's worth of acks)
//! when they come back late: after more than half the route's ack deadline, or, on a route
//! without one, after more than twice the subscriber's usual latency. A
//! `DISPOSITION_OVERLOADED` nack (back-pressure from the service) or a passed ack deadline
//! halves it at once. Never above the subscriber's own window (its Hello, capped by the
//! route's `max_in_flight`), never below one.
//!
//! Pure arithmetic on the samples the registry hands in: no clock is read here.

use std::time::Duration;

/// What a late ack leaves of the limit, and what an overload signal leaves.
const CUT: f64 = 0.9;
const BACKOFF: f64 = 0.5;
/// On a route without an ack deadline, how far above its usual latency an ack is late.
const TOLERANCE: f64 = 2.0;
/// Samples the usual latency (an exponential moving average) spans.
const USUAL_SAMPLES: f64 = 500.0;

/// One subscriber's adaptive window.
#[derive(Debug, Clone)]
pub(super) struct AdaptiveLimit {
    limit: f64,
    max: f64,
    /// Half the route's ack deadline: an ack later than that is late.
    late_after: Option<f64>,
    /// The subscriber's usual latency in seconds, for routes without a deadline.
    usual: Option<f64>,
    /// Acks since the last cut: one cut per window's worth.
    since_cut: f64,
}

impl AdaptiveLimit {
    /// A limit under the subscriber's window `max`, starting there, on a route whose ack
    /// deadline is `deadline` (zero: none).
    pub(super) fn new(max: u32, deadline: Duration) -> Self {
        let max = f64::from(max.max(1));
        let late_after = (!deadline.is_zero()).then(|| deadline.as_secs_f64() / 2.0);
        Self { limit: max, max, late_after, usual: None, since_cut: 0.0 }
    }

    /// The window now: what the registry lets the subscriber hold.
    pub(super) fn window(&self) -> u32 {
        self.limit.floor().max(1.0) as u32
    }

    /// The route's ack deadline changed (a reload): what counts as late follows.
    pub(super) fn set_deadline(&mut self, deadline: Duration) {
        self.late_after = (!deadline.is_zero()).then(|| deadline.as_secs_f64() / 2.0);
    }

    /// The subscriber's own window changed (a credit): the limit's ceiling follows.
    pub(super) fn set_max(&mut self, max: u32) {
        self.max = f64::from(max.max(1));
        self.limit = self.limit.min(self.max);
    }

    /// A delivery was acked `latency` after it was sent, with `in_flight` deliveries out.
    pub(super) fn acked(&mut self, latency: Duration, in_flight: usize) {
        let sample = latency.as_secs_f64();
        let usual = self.usual.unwrap_or(sample);
        let late_after = self.late_after.unwrap_or(usual * TOLERANCE);
        self.usual = Some(usual + 2.0 / (USUAL_SAMPLES + 1.0) * (sample - usual));
        self.since_cut += 1.0;
        if sample > late_after {
            if self.since_cut >= self.limit {
                self.limit = (self.limit * CUT).max(1.0);
                self.since_cut = 0.0;
            }
        } else if (in_flight as f64) * 2.0 >= self.limit {
            // Grow only on evidence: a window mostly unused says nothing of a larger one.
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
    }

    /// The subscriber said it is overloaded (`DISPOSITION_OVERLOADED`), or let a delivery's
    /// ack deadline pass: the limit halves at once.
    pub(super) fn overloaded(&mut self) {
        self.limit = (self.limit * BACKOFF).max(1.0);
        self.since_cut = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_millis(500);

    /// A subscriber working `concurrency` deliveries at a time, each for `work`: the latency
    /// of a delivery with `window` of them out (Little's law: the rest queue in front).
    fn latency(window: u32, concurrency: u32, work: Duration) -> Duration {
        work * window.div_ceil(concurrency).max(1)
    }

    /// Feeds `samples` acks of a subscriber at `concurrency` x `work` with the window full.
    fn run(limit: &mut AdaptiveLimit, samples: usize, concurrency: u32, work: Duration) {
        for _ in 0..samples {
            let w = limit.window();
            limit.acked(latency(w, concurrency, work), w as usize);
        }
    }

    #[test]
    fn tripled_work_shrinks_the_window_until_acks_come_in_time_and_recovery_grows_it_back() {
        let mut limit = AdaptiveLimit::new(200, DEADLINE);
        // 4 at a time, 5 ms each: a full window of 200 acks in 250 ms, in time.
        run(&mut limit, 2_000, 4, Duration::from_millis(5));
        assert_eq!(limit.window(), 200);
        // 15 ms each: 750 ms at 200, past half the deadline until the window is under ~67.
        run(&mut limit, 3_000, 4, Duration::from_millis(15));
        let slow = limit.window();
        assert!((40..=68).contains(&slow), "acks back within half the deadline: {slow}");
        assert!(latency(slow, 4, Duration::from_millis(15)) < DEADLINE);
        // Fast again: one more per window's worth of acks, back to the top.
        run(&mut limit, 20_000, 4, Duration::from_millis(5));
        assert_eq!(limit.window(), 200, "grown back");
    }

    #[test]
    fn without_a_deadline_an_ack_twice_as_late_as_usual_is_late() {
        let mut limit = AdaptiveLimit::new(100, Duration::ZERO);
        for _ in 0..1_000 {
            limit.acked(Duration::from_millis(10), 100);
        }
        assert_eq!(limit.window(), 100);
        for _ in 0..300 {
            limit.acked(Duration::from_millis(50), limit.window() as usize);
        }
        assert!(limit.window() < 100, "{}", limit.window());
    }

    #[test]
    fn an_overload_halves_it_and_it_never_leaves_its_bounds() {
        let mut limit = AdaptiveLimit::new(10, DEADLINE);
        limit.overloaded();
        assert_eq!(limit.window(), 5);
        for _ in 0..10 {
            limit.overloaded();
        }
        assert_eq!(limit.window(), 1, "never below one");
        for _ in 0..5_000 {
            limit.acked(Duration::from_millis(1), limit.window() as usize);
        }
        assert_eq!(limit.window(), 10, "never above the subscriber's window");
        limit.set_max(3);
        assert_eq!(limit.window(), 3);
    }

    #[test]
    fn an_unused_window_does_not_grow() {
        let mut limit = AdaptiveLimit::new(200, DEADLINE);
        limit.overloaded();
        for _ in 0..1_000 {
            limit.acked(Duration::from_millis(1), 1);
        }
        assert_eq!(limit.window(), 100);
    }
}
