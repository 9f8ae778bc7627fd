//! Head-of-line rescue (a route's `head_of_line`): a message that holds its partition's
//! commits back (the lowest offset still owed an ack, with later ones acked) for `after_ms` is
//! moved to the retry topic or the dead-letter topic, like a failed attempt that went there,
//! so the partition's commits go on. Only a message that was tried is moved (a hung handler
//! still holding it, or a backoff after it failed), with the attempts made of it; one never
//! delivered yet (behind a slow subscriber, a rate limit, or a retry-topic record waiting for
//! its time) is not judged. The subscriber's late ack of a moved delivery is unknown. Its
//! origin offset commits once Kafka has it, as for any retry or letter.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::head_of_line::Rescue;
use crate::retry::{self, Next};
use crate::subscriptions::{now_ms, DeadLetter, Pending};

/// Follows a partition's head of line from one check to the next: the offset holding its
/// commits back (`head`) and since when (`blocked`, as the last check left it). Returns what
/// to keep, and whether the head has held them back for `after` by `now`. A new head starts a
/// new wait: only one message that stays at the head is moved, never a line of slow ones.
pub(super) fn follow(
    head: Option<i64>,
    blocked: Option<(i64, Instant)>,
    now: Instant,
    after: Duration,
) -> (Option<(i64, Instant)>, bool) {
    match (head, blocked) {
        (None, _) => (None, false),
        (Some(offset), Some((was, since))) if was == offset => {
            (Some((offset, since)), now.saturating_duration_since(since) >= after)
        }
        (Some(offset), _) => (Some((offset, now)), false),
    }
}

/// Where a message moved off the head goes, `made` attempts of it made: the retry topic as
/// its next attempt after the route's backoff (the dead-letter topic instead when its attempts
/// are used up, those an overloaded service refused not counted, and the route has one), or
/// the dead-letter topic. Its headers say `made` attempts.
pub(super) fn letter(
    mut p: Pending,
    made: u32,
    action: Rescue,
    policy: &crate::config::RetryPolicy,
    has_dlq: bool,
    reason: String,
) -> DeadLetter {
    p.attempt = made;
    let retry_at = match action {
        Rescue::DeadLetter => None,
        Rescue::RetryTopic => {
            match retry::after_failure_sparing(policy, made, p.overloads, None, rand::random::<f64>()) {
                Next::Exhausted if has_dlq => None,
                Next::Exhausted => Some(retry::backoff(policy, u32::MAX, rand::random::<f64>())),
                Next::Retry { delay, .. } => Some(delay),
            }
            .map(|delay| now_ms().saturating_add(delay.as_millis() as i64))
        }
    };
    DeadLetter { pending: p, reason, retry_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_head_that_stays_for_the_whole_wait_is_due() {
        let start = Instant::now();
        let after = Duration::from_secs(5);
        let at = |s: u64| start + Duration::from_secs(s);
        let (b, due) = follow(Some(7), None, at(0), after);
        assert_eq!((b, due), (Some((7, at(0))), false));
        let (b, due) = follow(Some(7), b, at(4), after);
        assert_eq!((b, due), (Some((7, at(0))), false));
        let (b, due) = follow(Some(7), b, at(5), after);
        assert_eq!((b, due), (Some((7, at(0))), true));
        // A new head waits afresh; no head forgets the wait.
        let (b2, due) = follow(Some(8), b, at(6), after);
        assert_eq!((b2, due), (Some((8, at(6))), false));
        assert_eq!(follow(None, b, at(9), after), (None, false));
    }

    #[test]
    fn a_message_out_of_attempts_goes_to_the_dead_letter_topic_when_there_is_one() {
        let record = std::sync::Arc::new(crate::kafka::Record {
            tp: crate::kafka::TopicPartition { topic: "t".into(), partition: 0 },
            offset: 1,
            key: None,
            value: None,
            headers: vec![],
            timestamp_ms: None,
        });
        let policy = crate::config::RetryPolicy { max_attempts: 3, ..Default::default() };
        let with = |overloads: u32| {
            let mut p = Pending::new_for_test(record.clone());
            p.attempt = 9;
            p.overloads = overloads;
            p
        };
        let to = |p, made, action, dlq| letter(p, made, action, &policy, dlq, String::new());
        let first = to(with(0), 1, Rescue::RetryTopic, true);
        assert!(first.retry_at.is_some());
        assert_eq!(first.pending.attempt, 1, "its headers say the attempts made");
        assert!(to(with(0), 3, Rescue::RetryTopic, true).retry_at.is_none(), "out of attempts");
        assert!(to(with(1), 3, Rescue::RetryTopic, true).retry_at.is_some(), "an overload does not count");
        assert!(to(with(0), 3, Rescue::RetryTopic, false).retry_at.is_some(), "nowhere else to go");
        assert!(to(with(0), 1, Rescue::DeadLetter, false).retry_at.is_none());
    }
}
