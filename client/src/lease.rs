//! Lease extension: while a delivery is held (its handler runs, or it waits for one), the
//! library moves the delivery's ack deadline before it passes (an `Extend`), as Pub/Sub's
//! client libraries do, so a handler slower than the route's `ack_timeout_ms` is not
//! redelivered to while it runs, nor are the deliveries waiting behind it.
//! Each extension is sized from how long handlers have recently taken (their 99th
//! percentile), at least the route's deadline and at most 10 minutes; extensions stop once the
//! delivery has been held for the subscriber's maximum, after which the gateway takes it back
//! (as it does at the route's `max_lease_ms`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use fanout_proto::MAX_EXTENSION;
/// How many recent handler durations the percentile is taken over.
const RECENT: usize = 512;

/// When a delivery's deadline needs moving, and by how much.
#[derive(Debug)]
pub(crate) struct Keeper {
    /// The route's ack deadline, counted from when the delivery arrived.
    timeout: Duration,
    /// The latest this subscriber holds the delivery to: its maximum after it arrived.
    until: Option<Instant>,
    /// When the delivery's deadline is, as far as the gateway was told.
    deadline: Instant,
    next: Option<Instant>,
}

impl Keeper {
    /// A delivery that arrived at `received` on a route whose deadline is `timeout` (zero: the
    /// route has none, nothing to extend), held at most `max` (zero: never extended). The
    /// first extension is due halfway to the deadline, which leaves the other half for the
    /// `Extend` to reach the gateway.
    pub(crate) fn new(received: Instant, timeout: Duration, max: Duration) -> Self {
        let next = (!timeout.is_zero() && !max.is_zero()).then(|| received + timeout / 2);
        // A maximum too far off to count (Duration::MAX) is no maximum.
        let until = received.checked_add(max);
        Self { timeout, until, deadline: received + timeout, next }
    }

    /// When the next extension is due; `None` when there is none to make.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next
    }

    /// The extension to send at `now`, sized from `recent_p99` (how long handlers have
    /// recently taken; at least the route's deadline, at most [`MAX_EXTENSION`]), and when the
    /// one after it is due: halfway through this one. `None` when an extension now would not
    /// reach past the deadline the gateway already has (an extension never shortens one): on
    /// a route whose deadline is longer than [`MAX_EXTENSION`] the next try is due when it
    /// would, and once the subscriber's maximum is reached there is none.
    pub(crate) fn extend(&mut self, now: Instant, recent_p99: Duration) -> Option<Duration> {
        let wanted = recent_p99.max(self.timeout).min(MAX_EXTENSION);
        // Neither an instant too far off to count nor a maximum bounds it: the deadline stays.
        let target = match (now.checked_add(wanted), self.until) {
            (Some(reach), Some(until)) => reach.min(until),
            (Some(reach), None) => reach,
            (None, Some(until)) => until,
            (None, None) => self.deadline,
        };
        if target <= self.deadline {
            // Nothing to gain now: stop for good once the maximum is reached, else try again
            // when an extension of this size would reach past the deadline.
            let more = self.until.is_none_or(|until| until > self.deadline);
            self.next = more.then(|| self.deadline.checked_sub(wanted / 2).unwrap_or(self.deadline).max(now));
            return None;
        }
        let extension = target.saturating_duration_since(now);
        self.deadline = target;
        self.next = Some(now + extension / 2);
        Some(extension)
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
        assert_eq!(keeper.extend(t0 + S(5), S(2)), Some(S(10)), "never shorter than the route's deadline");
        assert_eq!(keeper.due(), Some(t0 + S(10)));
        assert_eq!(keeper.extend(t0 + S(10), S(120)), Some(S(120)), "as long as handlers recently took");
        assert_eq!(keeper.due(), Some(t0 + S(70)));
        assert_eq!(keeper.extend(t0 + S(70), S(7_200)), Some(MAX_EXTENSION), "at most ten minutes at once");
    }

    #[test]
    fn extensions_stop_at_the_subscribers_maximum_and_never_shorten_a_deadline() {
        let t0 = Instant::now();
        let mut keeper = Keeper::new(t0, S(10), S(25));
        assert_eq!(keeper.extend(t0 + S(5), S(0)), Some(S(10)));
        assert_eq!(keeper.due(), Some(t0 + S(10)));
        assert_eq!(keeper.extend(t0 + S(10), S(0)), Some(S(10)));
        assert_eq!(keeper.due(), Some(t0 + S(15)));
        assert_eq!(keeper.extend(t0 + S(15), S(0)), Some(S(10)), "up to the maximum, 25 s after it arrived");
        assert_eq!(keeper.extend(t0 + S(20), S(0)), None, "then it is let go");
        assert_eq!(keeper.due(), None);

        let mut short = Keeper::new(t0, S(30), S(10));
        assert_eq!(short.extend(t0 + S(15), S(0)), None, "a maximum below the route's deadline changes nothing");
        let mut long_route = Keeper::new(t0, S(3_600), S(7_200));
        assert_eq!(long_route.extend(t0 + S(1_800), S(0)), None, "ten minutes would shorten an hour's deadline");
        assert_eq!(long_route.due(), Some(t0 + S(3_300)), "tried again when ten minutes reach past it");
        assert_eq!(long_route.extend(t0 + S(3_300), S(0)), Some(MAX_EXTENSION));
        assert_eq!(long_route.due(), Some(t0 + S(3_600)));
        let mut endless = Keeper::new(t0, S(10), Duration::MAX);
        assert_eq!(endless.extend(t0 + S(5), S(0)), Some(S(10)), "no maximum at all");
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
