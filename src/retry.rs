//! Retry decisions: when a nacked or timed-out delivery goes out again, and when it has had
//! enough attempts and goes to the dead-letter topic instead.
//!
//! Pure functions of the route's [`RetryPolicy`], the attempt that failed and a random draw,
//! so the registry stays deterministic in tests and the policy is tested on its own.

use std::time::Duration;

use crate::config::RetryPolicy;

/// What happens to a delivery that failed (nack RETRY, ack deadline passed, subscriber gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deliver again after this delay, as attempt `attempt`.
    Retry { delay: Duration, attempt: u32 },
    /// Attempts are used up: dead-letter it.
    Exhausted,
}

/// Decides what follows failed attempt `attempt` (1 for the first delivery). `jitter` is a
/// uniform draw in [0, 1). `retry_after` is the subscriber's own delay, which replaces the
/// backoff but is capped at the route's `max_backoff_ms`: a message held longer holds its
/// partition's commit point (and its key's later messages) that long, so the operator, not
/// one client, decides how long that may be.
pub fn after_failure(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Next {
    after_failure_sparing(policy, attempt, 0, retry_after, jitter)
}

/// Whether a message whose attempt `attempt` failed has used up the route's `max_attempts`,
/// `spared` of those attempts not counted (refused by an overloaded service).
pub fn exhausted(policy: &RetryPolicy, attempt: u32, spared: u32) -> bool {
    attempt.saturating_sub(spared) >= policy.max_attempts
}

/// [`after_failure`] for a message `spared` of whose attempts do not count against
/// `max_attempts` (a `DISPOSITION_OVERLOADED` nack: the service refused it, the message did
/// not fail). Its backoff still grows with every attempt, so an overloaded service is asked
/// less and less often.
pub fn after_failure_sparing(
    policy: &RetryPolicy,
    attempt: u32,
    spared: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    if exhausted(policy, attempt, spared) {
        return Next::Exhausted;
    }
    let delay = match retry_after {
        Some(d) => d.min(Duration::from_millis(policy.max_backoff_ms)),
        None => backoff(policy, attempt, jitter),
    };
    Next::Retry { delay, attempt: attempt.saturating_add(1) }
}

/// Exponential backoff with "equal jitter": half of `initial × 2^(attempt−1)` (capped at the
/// policy's max) is fixed, the other half random. Retries of messages that failed together
/// spread out instead of arriving at the subscriber in one burst, yet each waits at least half
/// the nominal delay, so backoff still backs off.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let nominal = policy.initial_backoff_ms.saturating_mul(1u64 << exponent).min(policy.max_backoff_ms);
    let half = nominal / 2;
    let spread = ((nominal - half) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(half + spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_attempts: u32, initial: u64, max: u64) -> RetryPolicy {
        RetryPolicy { max_attempts, initial_backoff_ms: initial, max_backoff_ms: max, retry_topic: None }
    }

    #[test]
    fn the_last_attempt_is_exhausted() {
        let p = policy(3, 100, 1_000);
        assert_eq!(after_failure(&p, 1, None, 0.0), Next::Retry { delay: Duration::from_millis(50), attempt: 2 });
        assert_eq!(after_failure(&p, 2, None, 0.0), Next::Retry { delay: Duration::from_millis(100), attempt: 3 });
        assert_eq!(after_failure(&p, 3, None, 0.0), Next::Exhausted);
        assert_eq!(after_failure(&policy(1, 100, 1_000), 1, None, 0.5), Next::Exhausted);
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let p = policy(100, 100, 1_000);
        let full: Vec<u64> = (1..=6).map(|a| backoff(&p, a, 1.0).as_millis() as u64).collect();
        assert_eq!(full, vec![100, 200, 400, 800, 1_000, 1_000]);
        let least: Vec<u64> = (1..=6).map(|a| backoff(&p, a, 0.0).as_millis() as u64).collect();
        assert_eq!(least, vec![50, 100, 200, 400, 500, 500]);
        // Huge attempt numbers neither overflow nor pass the max.
        assert_eq!(backoff(&p, u32::MAX, 1.0), Duration::from_millis(1_000));
    }

    #[test]
    fn a_subscribers_retry_after_replaces_the_backoff_up_to_the_cap() {
        let p = policy(5, 100, 10_000);
        let asked = Duration::from_secs(7);
        assert_eq!(after_failure(&p, 1, Some(asked), 0.9), Next::Retry { delay: asked, attempt: 2 });
        let short = Duration::from_millis(20);
        assert_eq!(after_failure(&p, 1, Some(short), 0.9), Next::Retry { delay: short, attempt: 2 }, "not raised");
        let huge = Duration::from_secs(i64::MAX as u64);
        let cap = Duration::from_secs(10);
        assert_eq!(after_failure(&p, 1, Some(huge), 0.9), Next::Retry { delay: cap, attempt: 2 }, "the route's max");
        // It does not buy attempts past the limit.
        assert_eq!(after_failure(&p, 5, Some(asked), 0.9), Next::Exhausted);
    }

    proptest! {
        #[test]
        fn backoff_stays_between_half_and_all_of_the_nominal_delay(
            initial in 0u64..10_000, extra in 0u64..100_000, attempt in 1u32..40, jitter in 0.0f64..1.0,
        ) {
            let p = policy(10, initial, initial + extra);
            let nominal = initial.saturating_mul(1u64 << (attempt - 1).min(32)).min(initial + extra);
            let d = backoff(&p, attempt, jitter).as_millis() as u64;
            prop_assert!(d >= nominal / 2 && d <= nominal, "{d} not in [{}, {nominal}]", nominal / 2);
        }
    }
}
