//! The order handlers run in: deliveries of one key one at a time, in arrival order; other
//! keys, and deliveries without a key, in parallel. Pure bookkeeping, owned by the pool task.

use std::collections::{HashMap, VecDeque};

use xxhash_rust::xxh3::{Xxh3, Xxh3Builder};

/// What orders a delivery: its topic and Kafka key, as a 64-bit hash ([`order_key`]).
/// Deliveries without a key are unordered (as with Pub/Sub's ordering keys): they run as soon
/// as a handler slot is free.
///
/// A hash rather than the topic and key themselves: it is computed once per delivery and
/// copied freely, where the pair cost two allocations per delivery and more per queued one.
/// Two different keys with the same hash (one chance in 2^64 for a pair) only run one after
/// the other, as one key would: every key's own order still holds.
pub(crate) type OrderKey = u64;

/// The order key of a delivery of `topic` with Kafka key `key`. The topic's length goes first,
/// so no topic and key pair runs into another (`"ab" + "c"` is not `"a" + "bc"`).
pub(crate) fn order_key(topic: &str, key: &[u8]) -> OrderKey {
    let mut hasher = Xxh3::new();
    hasher.update(&(topic.len() as u64).to_le_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(key);
    hasher.digest()
}

/// Jobs not yet running. A key is *busy* from the moment one of its jobs is ready until that
/// job finishes; the key's later jobs wait behind it.
pub(crate) struct KeyedQueue<T> {
    ready: VecDeque<(Option<OrderKey>, T)>,
    /// Busy keys, each with the jobs waiting behind its ready or running one.
    waiting: HashMap<OrderKey, VecDeque<T>, Xxh3Builder>,
}

impl<T> KeyedQueue<T> {
    pub(crate) fn new() -> Self {
        Self { ready: VecDeque::new(), waiting: HashMap::default() }
    }

    pub(crate) fn push(&mut self, key: Option<OrderKey>, job: T) {
        let Some(key) = key else {
            self.ready.push_back((None, job));
            return;
        };
        match self.waiting.get_mut(&key) {
            Some(behind) => behind.push_back(job),
            None => {
                self.waiting.insert(key, VecDeque::new());
                self.ready.push_back((Some(key), job));
            }
        }
    }

    /// The next job that may start now, oldest first.
    pub(crate) fn pop(&mut self) -> Option<(Option<OrderKey>, T)> {
        self.ready.pop_front()
    }

    /// The running job of `key` finished: the next of that key, if any, becomes ready.
    pub(crate) fn finished(&mut self, key: OrderKey) {
        let Some(behind) = self.waiting.get_mut(&key) else { return };
        match behind.pop_front() {
            Some(next) => self.ready.push_back((Some(key), next)),
            None => {
                self.waiting.remove(&key);
            }
        }
    }

    /// Every queued job, ready or waiting behind its key.
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        self.ready.iter_mut().for_each(|(_, job)| f(job));
        self.waiting.values_mut().flatten().for_each(f);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Option<OrderKey> {
        Some(order_key("t", k.as_bytes()))
    }

    #[test]
    fn one_key_runs_one_at_a_time_in_arrival_order() {
        let mut q = KeyedQueue::new();
        q.push(key("a"), 1);
        q.push(key("a"), 2);
        q.push(key("a"), 3);
        let (k, first) = q.pop().expect("first of a is ready");
        assert_eq!(first, 1);
        assert!(q.pop().is_none(), "a's second waits for its first");
        q.finished(k.expect("keyed"));
        assert_eq!(q.pop().map(|(_, j)| j), Some(2));
        assert!(q.pop().is_none());
        q.finished(k.expect("keyed"));
        assert_eq!(q.pop().map(|(_, j)| j), Some(3));
        q.finished(k.expect("keyed"));
        assert!(q.is_empty());
    }

    #[test]
    fn every_queued_job_is_visited_ready_or_waiting() {
        let mut q = KeyedQueue::new();
        q.push(key("a"), 1);
        q.push(key("a"), 2);
        q.push(None, 3);
        let mut seen = Vec::new();
        q.for_each_mut(|job| seen.push(*job));
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn other_keys_and_keyless_jobs_do_not_wait() {
        let mut q = KeyedQueue::new();
        q.push(key("a"), 1);
        q.push(key("a"), 2);
        q.push(key("b"), 3);
        q.push(None, 4);
        q.push(None, 5);
        let ready: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, j)| j)).collect();
        assert_eq!(ready, vec![1, 3, 4, 5]);
        assert!(!q.is_empty(), "a's second still waits");
    }

    #[test]
    fn the_same_key_on_another_topic_is_another_key() {
        let mut q = KeyedQueue::new();
        q.push(Some(order_key("t1", b"k")), 1);
        q.push(Some(order_key("t2", b"k")), 2);
        assert_eq!(std::iter::from_fn(|| q.pop().map(|(_, j)| j)).count(), 2);
        assert_ne!(order_key("ab", b"c"), order_key("a", b"bc"), "the topic ends where its length says");
        assert_eq!(order_key("t", b"k"), order_key("t", b"k"));
    }
}
