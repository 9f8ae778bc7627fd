//! Lease extension: while a handler still works on a delivery, the library moves the
//! delivery's ack deadline before it passes (an `Extend`), as Pub/Sub's client libraries do,
//! so a handler slower than the route's `ack_timeout_ms` is not redelivered to while it runs.
//! Each extension is sized from how long handlers have recently taken (their 99th
//! percentile), at least the route's deadline and at most 10 minutes; extensions stop once the
//! delivery has been held for the subscriber's maximum, after which the gateway takes it back
//! (as it does at the route's `max_lease_ms`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The longest one extension asks for (the gateway cuts longer ones to it too).
pub(crate) const MAX_EXTENSION: Duration = Duration::from_secs(600);
/// How many recent handler durations the percentile is taken over.
const RECENT: usize = 512;

/// When a delivery's deadline needs moving, and by how much.
#[derive(Debug)]
pub(crate) struct Keeper {
    received: Instant,
    /// The route's ack deadline, counted from when the delivery arrived.
    timeout: Duration,
    /// The longest this subscriber holds a delivery before letting it go back.
    max: Duration,
    next: Option<Instant>,
}

impl Keeper {
    /// A delivery that arrived at `received` on a route whose deadline is `timeout` (zero: the
    /// route has none, nothing to extend). The first extension is due halfway to the
    /// deadline, which leaves the other half for the `Extend` to reach the gateway.
    pub(crate) fn new(received: Instant, timeout: Duration, max: Duration) -> Self {
        let next = (!timeout.is_zero() && !max.is_zero()).then(|| received + timeout / 2);
        Self { received, timeout, max, next }
    }

    /// When the next extension is due; `None` when there is none to make.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next
    }

    /// The extension to send at `now`, sized from `recent_p99` (how long handlers have
    /// recently taken), and when the one after it is due: halfway through this one, unless
    /// the subscriber's maximum is reached by then.
    pub(crate) fn extend(&mut self, now: Instant, recent_p99: Duration) -> Duration {
        let left = (self.received + self.max).saturating_duration_since(now);
        let extension = recent_p99.clamp(self.timeout, MAX_EXTENSION).min(left);
        self.next = (left > extension && !extension.is_zero()).then(|| now + extension / 2);
        extension
    }
}

/// How long handlers took, the most recent [`RECENT`] of them.
#[derive(Debug, Default)]
pub(crate) struct Durations(parking_lot::Mutex<VecDeque<Duration>>);

impl Durations {
    pub(crate) fn record(&self, took: Duration) {
        let mut recent = self.0.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// The 99th percentile of the recent durations (zero before any handler finished).
    pub(crate) fn p99(&self) -> Duration {
        let mut recent: Vec<Duration> = self.0.lock().iter().copied().collect();
        if recent.is_empty() {
            return Duration::ZERO;
        }
        recent.sort_unstable();
        recent[(recent.len() * 99 / 100).min(recent.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_first_extension_is_due_halfway_to_the_deadline_and_sized_from_handlers() {
        let t0 = Instant::now();
        let mut keeper = Keeper::new(t0, S(10), S(3_600));
        assert_eq!(keeper.due(), Some(t0 + S(5)));
        assert_eq!(keeper.extend(t0 + S(5), S(2)), S(10), "never shorter than the route's deadline");
        assert_eq!(keeper.due(), Some(t0 + S(10)));
        assert_eq!(keeper.extend(t0 + S(10), S(120)), S(120), "as long as handlers recently took");
        assert_eq!(keeper.due(), Some(t0 + S(70)));
        assert_eq!(keeper.extend(t0 + S(70), S(7_200)), MAX_EXTENSION, "at most ten minutes at once");
    }

    #[test]
    fn extensions_stop_at_the_subscribers_maximum() {
        let t0 = Instant::now();
        let mut keeper = Keeper::new(t0, S(10), S(25));
        keeper.extend(t0 + S(5), S(0));
        assert_eq!(keeper.due(), Some(t0 + S(10)));
        assert_eq!(keeper.extend(t0 + S(10), S(0)), S(10));
        assert_eq!(keeper.due(), Some(t0 + S(15)));
        assert_eq!(keeper.extend(t0 + S(15), S(0)), S(10), "up to the maximum, 25 s after it arrived");
        assert_eq!(keeper.due(), None, "then it is let go");
        assert_eq!(Keeper::new(t0, S(0), S(25)).due(), None, "a route without a deadline");
        assert_eq!(Keeper::new(t0, S(10), S(0)).due(), None, "extension turned off");
    }

    #[test]
    fn the_percentile_follows_the_recent_handlers() {
        let durations = Durations::default();
        assert_eq!(durations.p99(), Duration::ZERO);
        for ms in 1..=100 {
            durations.record(Duration::from_millis(ms));
        }
        assert_eq!(durations.p99(), Duration::from_millis(100));
        for _ in 0..RECENT {
            durations.record(Duration::from_millis(5));
        }
        assert_eq!(durations.p99(), Duration::from_millis(5), "old ones age out");
    }
}
