//! Throttles: token buckets that hold a route's (or one subscriber's) deliveries to its
//! `rate_limit`. A message waits in its session's queue until both its route's and its
//! subscriber's buckets hold its cost; the partitions behind it pause at the route's bound as
//! for a slow subscriber, so a limited route buffers no more than an unlimited one.
//!
//! Pure arithmetic on the times the registry hands in: no clock is read here.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Pending, Subscriber};
use crate::config::rate_limit::RateLimit;
use crate::config::RouteConfig;

/// One dimension's bucket: `per_s` tokens a second, up to `capacity`. A cost larger than the
/// bucket (a message bigger than a burst's bytes) goes once the bucket is full and leaves it
/// in debt, so any message passes in the end and the average rate still holds.
///
/// The registry refills at its ticks, not continuously: while messages wait, what a tick
/// earned may be spent on top of a full bucket (they were due during the tick), so a burst
/// smaller than a tick's worth (`burst = 1` at 1 000/s, ticks of 10 ms) still gets its rate.
/// Only an idle bucket is capped at its size.
#[derive(Debug, Clone)]
struct Bucket {
    per_s: f64,
    capacity: f64,
    tokens: f64,
}

impl Bucket {
    fn new(per_s: u64, burst_seconds: f64) -> Option<Self> {
        (per_s > 0).then(|| {
            let per_s = per_s as f64;
            // At least one token: a bucket smaller than one message would never let one go.
            let capacity = (per_s * burst_seconds).max(1.0);
            Self { per_s, capacity, tokens: capacity }
        })
    }

    fn refill(&mut self, elapsed: Duration, backlogged: bool) {
        let earned = self.per_s * elapsed.as_secs_f64();
        let cap = if backlogged { self.capacity + earned } else { self.capacity };
        self.tokens = (self.tokens + earned).min(cap);
    }

    fn holds(&self, cost: f64) -> bool {
        self.tokens >= cost.min(self.capacity)
    }
}

/// A limit's buckets, and how long it has held messages back.
#[derive(Debug, Clone)]
pub(super) struct Throttle {
    limit: RateLimit,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// When the buckets were last refilled.
    at: Instant,
    /// Since when messages have waited for this limit, while they do.
    held_since: Option<Instant>,
    /// Time messages waited for this limit, periods that ended.
    held_before: Duration,
}

impl Throttle {
    /// Full buckets for `limit`; None when it limits nothing.
    pub(super) fn new(limit: &RateLimit, now: Instant) -> Option<Self> {
        if !limit.limits() {
            return None;
        }
        let burst = limit.burst_seconds();
        Some(Self {
            limit: *limit,
            messages: Bucket::new(limit.messages_per_s, burst),
            bytes: Bucket::new(limit.bytes_per_s, burst),
            at: now,
            held_since: None,
            held_before: Duration::ZERO,
        })
    }

    pub(super) fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Adds what the rates earned since the last refill (see [`Bucket`] for messages that
    /// waited meanwhile).
    pub(super) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        let backlogged = self.held_since.is_some();
        for bucket in [&mut self.messages, &mut self.bytes].into_iter().flatten() {
            bucket.refill(elapsed, backlogged);
        }
    }

    /// Whether a message of `bytes` may go now.
    pub(super) fn allows(&self, bytes: usize) -> bool {
        self.messages.as_ref().is_none_or(|b| b.holds(1.0)) && self.bytes.as_ref().is_none_or(|b| b.holds(bytes as f64))
    }

    /// Takes a message of `bytes` out of the buckets (call after [`Throttle::allows`]).
    pub(super) fn take(&mut self, bytes: usize) {
        if let Some(b) = &mut self.messages {
            b.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= bytes as f64;
        }
    }

    /// Says whether messages wait for this limit as of `now`, for the time it held them.
    pub(super) fn mark(&mut self, now: Instant, holding: bool) {
        match (self.held_since, holding) {
            (None, true) => self.held_since = Some(now),
            (Some(since), false) => {
                self.held_before += now.saturating_duration_since(since);
                self.held_since = None;
            }
            _ => {}
        }
    }

    /// Time messages have waited for this limit since it was set, the current wait included.
    pub(super) fn held_for(&self, now: Instant) -> Duration {
        self.held_before + self.held_since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The same limit carried over a settings change: its buckets and held time are kept
    /// when the limit did not change (a reload of other settings grants no burst), else it
    /// starts afresh with full buckets, the held time kept (it is a total).
    pub(super) fn carried(old: Option<Throttle>, limit: Option<&RateLimit>, now: Instant) -> Option<Throttle> {
        let next = limit.and_then(|l| Self::new(l, now));
        match (old, next) {
            (Some(old), Some(_)) if Some(&old.limit) == limit => Some(old),
            (Some(old), Some(mut next)) => {
                next.held_before = old.held_for(now);
                next.held_since = old.held_since.map(|_| now);
                Some(next)
            }
            (_, next) => next,
        }
    }
}

/// How many of a session's queued messages its limits let go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Admitted {
    /// Messages from the queue's front that may go (and were taken out of the buckets).
    pub(super) take: usize,
    /// The route's limit stopped the rest (else the subscriber's did, if any did).
    pub(super) by_route: bool,
}

/// Takes up to `wanted` messages from the front of `queue` out of the route's and the
/// subscriber's buckets, in order, stopping at the first one either cannot pay for yet (a
/// key's messages never overtake each other). The route's bucket is refilled by the caller,
/// once per flush; the subscriber's here.
pub(super) fn admitted(
    queue: &VecDeque<Pending>,
    wanted: usize,
    mut route: Option<&mut Throttle>,
    mut own: Option<&mut Throttle>,
    now: Instant,
) -> Admitted {
    if let Some(t) = own.as_deref_mut() {
        t.refill(now);
    }
    let mut take = 0;
    for p in queue.iter().take(wanted) {
        let bytes = p.record.size();
        if route.as_deref().is_some_and(|t| !t.allows(bytes)) {
            return Admitted { take, by_route: true };
        }
        if own.as_deref().is_some_and(|t| !t.allows(bytes)) {
            return Admitted { take, by_route: false };
        }
        for t in [route.as_deref_mut(), own.as_deref_mut()].into_iter().flatten() {
            t.take(bytes);
        }
        take += 1;
    }
    Admitted { take, by_route: false }
}

/// A subscriber's own throttle under route settings `config`: the limit its Hello asked for,
/// capped by the route's, carried over from `old` when it did not change.
pub(super) fn session_throttle(
    subscriber: &Subscriber,
    config: &RouteConfig,
    old: Option<Throttle>,
    now: Instant,
) -> Option<Throttle> {
    let limit = subscriber.rate_limit.map(|l| l.capped_by(config.rate_limit.as_ref()));
    Throttle::carried(old, limit.as_ref(), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(messages_per_s: u64, bytes_per_s: u64, burst: u64, now: Instant) -> Throttle {
        Throttle::new(&RateLimit { messages_per_s, bytes_per_s, burst }, now).expect("limits")
    }

    /// Sends as many messages of `bytes` as the throttle allows from a queue that never
    /// empties, refilling every `step` for `over`, as the registry's flushes do: the count sent.
    fn drive(t: &mut Throttle, bytes: usize, step: Duration, over: Duration, start: Instant) -> u64 {
        let mut sent = 0;
        let mut now = start;
        while now < start + over {
            now += step;
            t.refill(now);
            while t.allows(bytes) {
                t.take(bytes);
                sent += 1;
            }
            t.mark(now, true);
        }
        sent
    }

    #[test]
    fn a_message_rate_holds_over_time_whatever_the_refill_step_and_the_burst() {
        let start = Instant::now();
        for burst in [0, 1, 500] {
            for step in [Duration::from_millis(1), Duration::from_millis(10), Duration::from_millis(250)] {
                let mut t = throttle(1_000, 0, burst, start);
                let sent = drive(&mut t, 100, step, Duration::from_secs(10), start);
                // The full bucket at once, then every step's earnings but the first's (the
                // bucket was full, the backlog not started): 10 s at 1 000/s give or take.
                let bucket = if burst == 0 { 100 } else { burst };
                let expected = 10_000 + bucket - step.as_millis() as u64;
                assert!(sent.abs_diff(expected) <= 1, "burst {burst}, step {step:?}: {sent}, not {expected}");
            }
        }
    }

    #[test]
    fn a_byte_rate_lets_a_message_larger_than_the_bucket_go_and_pays_it_back() {
        let start = Instant::now();
        let mut t = throttle(0, 1_000, 0, start);
        // The bucket holds 100 bytes; a 1 000-byte message goes once it is full...
        assert!(t.allows(1_000));
        t.take(1_000);
        // ...and the next waits until the debt is paid and the bucket full again.
        t.refill(start + Duration::from_millis(999));
        assert!(!t.allows(1_000));
        t.refill(start + Duration::from_millis(1_001));
        assert!(t.allows(1_000));
        let sent = drive(&mut t, 1_000, Duration::from_millis(10), Duration::from_secs(10), start);
        assert!((9..=11).contains(&sent), "{sent}");
    }

    #[test]
    fn both_dimensions_must_allow_a_message() {
        let start = Instant::now();
        let mut t = throttle(1_000, 10_000, 0, start);
        // 1 000 messages a second but only ten 1 000-byte ones.
        let sent = drive(&mut t, 1_000, Duration::from_millis(10), Duration::from_secs(5), start);
        assert!((50..=52).contains(&sent), "{sent}");
    }

    #[test]
    fn the_burst_is_what_goes_at_once_after_a_quiet_spell() {
        let start = Instant::now();
        let mut t = throttle(100, 0, 30, start);
        t.refill(start + Duration::from_secs(60));
        let mut at_once = 0;
        while t.allows(1) {
            t.take(1);
            at_once += 1;
        }
        assert_eq!(at_once, 30);
    }

    fn queue(sizes: &[usize]) -> VecDeque<Pending> {
        sizes
            .iter()
            .enumerate()
            .map(|(o, size)| {
                let mut r = (*super::super::testing::record(0, o as i64, "k")).clone();
                r.key = None;
                r.value = Some(super::super::testing::Bytes::from(vec![0u8; *size]));
                Pending::new(std::sync::Arc::new(r), 1, 1, None, 7, None)
            })
            .collect()
    }

    #[test]
    fn a_queue_goes_in_order_until_the_first_message_a_bucket_cannot_pay_for() {
        let start = Instant::now();
        let mut route = throttle(0, 100, 0, start); // a bucket of 10 bytes
        let q = queue(&[4, 4, 4, 1]);
        let got = admitted(&q, 4, Some(&mut route), None, start);
        assert_eq!(got, Admitted { take: 2, by_route: true }, "the 1-byte message does not overtake the third");
        let mut own = throttle(1, 0, 0, start); // one message
        let mut route = throttle(0, 100, 0, start);
        let got = admitted(&q, 4, Some(&mut route), Some(&mut own), start);
        assert_eq!(got, Admitted { take: 1, by_route: false });
        let got = admitted(&q, 4, Some(&mut route), Some(&mut own), start);
        assert_eq!(got.take, 0);
        assert!(route.allows(4), "what the subscriber's limit held back was not taken from the route's");
        assert_eq!(admitted(&q, 4, None, None, start), Admitted { take: 4, by_route: false });
    }

    #[test]
    fn held_time_adds_up_over_separate_waits() {
        let start = Instant::now();
        let mut t = throttle(10, 0, 0, start);
        t.mark(start, true);
        t.mark(start + Duration::from_secs(2), false);
        t.mark(start + Duration::from_secs(5), true);
        assert_eq!(t.held_for(start + Duration::from_secs(6)), Duration::from_secs(3));
        assert_eq!(t.held_for(start + Duration::from_secs(7)), Duration::from_secs(4), "the current wait counts");
    }

    #[test]
    fn an_unchanged_limit_keeps_its_buckets_across_a_reload_and_a_new_one_starts_full() {
        let start = Instant::now();
        let limit = RateLimit { messages_per_s: 10, bytes_per_s: 0, burst: 5 };
        let mut t = Throttle::new(&limit, start).expect("limits");
        while t.allows(1) {
            t.take(1);
        }
        t.mark(start, true);
        let later = start + Duration::from_millis(10);
        let same = Throttle::carried(Some(t.clone()), Some(&limit), later).expect("kept");
        assert!(!same.allows(1), "a reload of other settings grants no burst");
        let faster = RateLimit { messages_per_s: 20, ..limit };
        let next = Throttle::carried(Some(t), Some(&faster), later).expect("new");
        assert!(next.allows(1));
        assert_eq!(next.held_for(later), Duration::from_millis(10), "held time is a total");
        assert!(Throttle::carried(None, None, later).is_none());
    }
}
