//! Retries: what a failed delivery is, and the queue where failed messages wait out their
//! backoff before another attempt.
//!
//! The registry decides what comes next for a failure by the route's retry policy
//! ([`crate::retry`] decides): another attempt after a backoff (the message waits in
//! [`RetryQueue`], its key with it), the retry topic, or the dead-letter topic (a
//! [`DeadLetter`] handed to the dispatcher's dead-letter loop).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{Pending, SessionId};
use crate::kafka::Record;

/// A message to produce to its route's dead-letter topic, or to its retry topic when
/// `retry_at` is set; its offset is done once Kafka has it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub pending: Pending,
    pub reason: String,
    /// Retry topic: when (ms since the epoch) the message may be delivered again.
    pub retry_at: Option<i64>,
}

/// Header of a retry-topic record: the attempts made so far.
pub const HEADER_ATTEMPTS: &str = "fanout-attempts";

/// Header of a retry-topic record: of its attempts, those an overloaded service refused
/// (`DISPOSITION_OVERLOADED`), which do not count against `max_attempts`. Absent: none.
pub const HEADER_OVERLOADS: &str = "fanout-overloads";

/// Header of a retry-topic record: when it may be delivered again (ms since the epoch).
pub const HEADER_RETRY_AT: &str = "fanout-retry-at";

/// Why a delivery failed, as the registry's retry decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: String,
    /// The subscriber's own delay before the next attempt (nack `retry_after`).
    pub retry_after: Option<Duration>,
    /// The subscriber gave up on the message (nack DEAD_LETTER).
    pub dead_letter: bool,
    /// The subscriber is overloaded (nack OVERLOADED): retried without using up an attempt.
    pub overloaded: bool,
}

impl Failure {
    pub fn retry(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), retry_after: None, dead_letter: false, overloaded: false }
    }
}

/// A failed message waiting out its backoff; `owner` is the session it failed on, which keeps
/// the message's key meanwhile.
pub(super) struct Delayed {
    pub(super) owner: SessionId,
    pub(super) pending: Pending,
}

impl Delayed {
    /// Whether it holds one of its key's counts: it failed on a session. A retry-topic record
    /// waiting for its time ([`NO_SESSION`]) never took its key, so releasing one for it would
    /// take a count off whoever holds the key now.
    pub(super) fn holds_key(&self) -> bool {
        self.owner != NO_SESSION
    }
}

/// Never a session's id (they start at 1): the owner of a retry-topic message waiting for its time.
pub(super) const NO_SESSION: SessionId = SessionId(0);

/// The time now in Unix milliseconds (0 on a clock before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    let (_, value) = record.headers.iter().rev().find(|(k, _)| k == name)?;
    std::str::from_utf8(value.as_deref()?).ok()
}

/// Failed messages waiting out their backoff, by due time (then sequence number, so equal
/// due times keep the order they failed in).
#[derive(Default)]
pub(super) struct RetryQueue {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The waiting messages by sequence number; a message removed early leaves its heap entry
    /// behind, skipped when it comes due.
    items: HashMap<u64, Delayed>,
    next_seq: u64,
}

impl RetryQueue {
    /// Holds `pending`, failed on session `owner`, until `due`.
    pub(super) fn push(&mut self, owner: SessionId, pending: Pending, due: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.due.push(Reverse((due, seq)));
        self.items.insert(seq, Delayed { owner, pending });
    }

    /// The next message whose backoff is over by `now`, taken out of the queue.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Delayed> {
        while let Some(Reverse((due, seq))) = self.due.peek().copied() {
            if due > now {
                return None;
            }
            self.due.pop();
            if let Some(delayed) = self.items.remove(&seq) {
                return Some(delayed);
            }
        }
        None
    }

    /// Takes out the waiting messages for which `gone` holds.
    pub(super) fn remove_where(&mut self, gone: impl Fn(&Delayed) -> bool) -> Vec<Delayed> {
        let seqs: Vec<u64> = self.items.iter().filter(|(_, d)| gone(d)).map(|(seq, _)| *seq).collect();
        seqs.into_iter().filter_map(|seq| self.items.remove(&seq)).collect()
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{later, record};
    use super::*;

    fn pending(offset: i64) -> Pending {
        Pending::new(record(0, offset, "k"), 2, 1, None, 7, None)
    }

    #[test]
    fn messages_come_back_when_due_earliest_first_then_in_the_order_they_failed() {
        let mut queue = RetryQueue::default();
        let (soon, late) = (later(1), later(5));
        queue.push(SessionId(1), pending(0), late);
        queue.push(SessionId(1), pending(1), soon);
        queue.push(SessionId(2), pending(2), soon);
        assert!(queue.pop_due(Instant::now()).is_none(), "nothing is due yet");
        assert_eq!(queue.len(), 3);
        let due: Vec<(SessionId, i64)> =
            std::iter::from_fn(|| queue.pop_due(soon)).map(|d| (d.owner, d.pending.record.offset)).collect();
        assert_eq!(due, vec![(SessionId(1), 1), (SessionId(2), 2)]);
        assert_eq!(queue.pop_due(late).map(|d| d.pending.record.offset), Some(0));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn removed_messages_never_come_due() {
        let mut queue = RetryQueue::default();
        queue.push(SessionId(1), pending(0), later(1));
        queue.push(SessionId(1), pending(1), later(1));
        let removed = queue.remove_where(|d| d.pending.record.offset == 0);
        assert_eq!(removed.iter().map(|d| d.pending.record.offset).collect::<Vec<_>>(), vec![0]);
        assert_eq!(queue.pop_due(later(2)).map(|d| d.pending.record.offset), Some(1));
        assert!(queue.pop_due(later(2)).is_none());
        queue.push(SessionId(1), pending(2), later(1));
        queue.clear();
        assert!(queue.pop_due(later(2)).is_none() && queue.len() == 0);
    }
}
