//! The in-process store: one gateway process's claims, bounded and lazily expired.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::time::Instant;

use super::{Claim, DedupError, DedupStore, Verdict, MAX_TTL_MS};

/// Claims in this process: a map from key to holder plus the keys in claim order.
///
/// Every claim lives for the same TTL, so claim order is also expiry order: expired keys are
/// always at the front of `order` and are dropped lazily, at the start of each batch. Past
/// `capacity` the front (oldest) key is forgotten early and counted. Each key is in `order`
/// exactly once while it is in `holders` (a key re-enters only after it left), so every claim
/// costs O(1) amortised.
///
/// Time is tokio's clock, so tests can run TTLs with paused time.
pub struct MemoryStore {
    ttl: Duration,
    capacity: usize,
    inner: parking_lot::Mutex<MemoryInner>,
    /// Read without the lock by metrics.
    evictions: AtomicU64,
}

#[derive(Default)]
struct MemoryInner {
    holders: HashMap<Arc<str>, Held>,
    order: VecDeque<Arc<str>>,
}

struct Held {
    origin: String,
    expires: Instant,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("evictions", &self.evictions())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store whose claims last `ttl` (at most [`MAX_TTL_MS`]) and that holds at most
    /// `capacity` keys (at least 1).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl: ttl.min(Duration::from_millis(MAX_TTL_MS)),
            capacity: capacity.max(1),
            inner: parking_lot::Mutex::new(MemoryInner::default()),
            evictions: AtomicU64::new(0),
        }
    }

    /// Keys currently held (expired ones may still count until the next claim).
    pub fn len(&self) -> usize {
        self.inner.lock().holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn claim_now(&self, claims: Vec<Claim>) -> Vec<Verdict> {
        let mut inner = self.inner.lock();
        // Read the clock under the lock so claim order and expiry order agree.
        let now = Instant::now();
        while let Some(front) = inner.order.front() {
            if inner.holders.get(front).is_some_and(|held| held.expires > now) {
                break;
            }
            if let Some(key) = inner.order.pop_front() {
                inner.holders.remove(&key);
            }
        }
        let expires = now + self.ttl;
        let mut evicted = 0;
        let verdicts = claims
            .into_iter()
            .map(|claim| {
                if let Some(held) = inner.holders.get(claim.key.as_str()) {
                    return Verdict::of(&claim.origin, Some(held.origin.clone()));
                }
                let key: Arc<str> = Arc::from(claim.key);
                inner.holders.insert(key.clone(), Held { origin: claim.origin, expires });
                inner.order.push_back(key);
                if inner.holders.len() > self.capacity {
                    if let Some(oldest) = inner.order.pop_front() {
                        inner.holders.remove(&oldest);
                        evicted += 1;
                    }
                }
                Verdict::First
            })
            .collect();
        drop(inner);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        verdicts
    }
}

impl DedupStore for MemoryStore {
    /// Decided when called (the future is already complete), so batches apply in call order.
    fn claim(&self, claims: Vec<Claim>) -> BoxFuture<'static, Result<Vec<Verdict>, DedupError>> {
        futures::future::ready(Ok(self.claim_now(claims))).boxed()
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{claims, dup};
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    /// The memory store decides when called; its future is already complete.
    fn claim(store: &MemoryStore, list: &[(&str, &str)]) -> Vec<Verdict> {
        store
            .claim(claims(list))
            .now_or_never()
            .expect("the memory store answers at once")
            .expect("the memory store does not fail")
    }

    #[test]
    fn first_claim_wins_redelivery_is_again_other_origin_is_duplicate() {
        let store = MemoryStore::new(TTL, 100);
        assert_eq!(claim(&store, &[("k", "t/0/1")]), vec![Verdict::First]);
        assert_eq!(claim(&store, &[("k", "t/0/1")]), vec![Verdict::Again]);
        assert_eq!(claim(&store, &[("k", "t/1/7")]), vec![dup("t/0/1")]);
        // Neither Again nor Duplicate took the key over.
        assert_eq!(claim(&store, &[("k", "t/0/1")]), vec![Verdict::Again]);
        assert_eq!(store.kind(), "memory");
        assert_eq!(store.evictions(), 0);
    }

    #[test]
    fn same_key_twice_in_one_batch_the_first_wins() {
        let store = MemoryStore::new(TTL, 100);
        let verdicts = claim(&store, &[("k", "t/0/1"), ("k", "t/0/2"), ("j", "t/0/3"), ("k", "t/0/1")]);
        assert_eq!(verdicts, vec![Verdict::First, dup("t/0/1"), Verdict::First, Verdict::Again]);
    }

    #[test]
    fn an_empty_batch_gets_no_verdicts() {
        let store = MemoryStore::new(TTL, 100);
        assert_eq!(claim(&store, &[]), Vec::<Verdict>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_claimable_again_once_its_ttl_has_passed() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let store = MemoryStore::new(TTL, 100);
            assert_eq!(claim(&store, &[("k", "a/0/1")]), vec![Verdict::First]);
            tokio::time::advance(TTL - Duration::from_millis(1)).await;
            assert_eq!(claim(&store, &[("k", "b/0/1")]), vec![dup("a/0/1")], "held until the TTL ends");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(claim(&store, &[("k", "b/0/1")]), vec![Verdict::First], "free once the TTL ends");
            assert_eq!(claim(&store, &[("k", "a/0/1")]), vec![dup("b/0/1")]);
            assert_eq!(store.len(), 1, "the expired claim was dropped, not kept beside the new one");
            assert_eq!(store.evictions(), 0, "expiry is not eviction");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_do_not_extend_the_holders_ttl() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let store = MemoryStore::new(TTL, 100);
            assert_eq!(claim(&store, &[("k", "a/0/1")]), vec![Verdict::First]);
            tokio::time::advance(TTL / 2).await;
            assert_eq!(claim(&store, &[("k", "a/0/1"), ("k", "b/0/1")]), vec![Verdict::Again, dup("a/0/1")]);
            tokio::time::advance(TTL / 2).await;
            assert_eq!(claim(&store, &[("k", "b/0/1")]), vec![Verdict::First]);
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn past_capacity_the_oldest_key_is_evicted_and_counted() {
        let store = MemoryStore::new(TTL, 2);
        assert_eq!(claim(&store, &[("a", "t/0/1"), ("b", "t/0/2"), ("c", "t/0/3")]), vec![Verdict::First; 3]);
        assert_eq!(store.evictions(), 1);
        assert_eq!(store.len(), 2);
        // b and c are still held; a was forgotten, so another origin gets it first.
        assert_eq!(claim(&store, &[("b", "x/0/1"), ("c", "x/0/2")]), vec![dup("t/0/2"), dup("t/0/3")]);
        assert_eq!(claim(&store, &[("a", "x/0/3")]), vec![Verdict::First]);
        // Taking a back pushed out b, now the oldest.
        assert_eq!(store.evictions(), 2);
        assert_eq!(claim(&store, &[("b", "x/0/4")]), vec![Verdict::First]);
        assert_eq!(store.evictions(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_make_room_without_counting_as_evictions() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let store = MemoryStore::new(TTL, 2);
            claim(&store, &[("a", "t/0/1"), ("b", "t/0/2")]);
            tokio::time::advance(TTL).await;
            assert_eq!(claim(&store, &[("c", "t/0/3"), ("d", "t/0/4")]), vec![Verdict::First; 2]);
            assert_eq!(store.evictions(), 0);
            assert_eq!(store.len(), 2);
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn capacity_holds_under_many_distinct_keys() {
        let store = MemoryStore::new(TTL, 1_000);
        let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
        let batch: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "t/0/1")).collect();
        claim(&store, &batch);
        assert_eq!(store.len(), 1_000);
        assert_eq!(store.evictions(), 9_000);
        // The newest thousand survive.
        assert_eq!(claim(&store, &[("k9000", "o/0/1")]), vec![dup("t/0/1")]);
        assert_eq!(claim(&store, &[("k8999", "o/0/1")]), vec![Verdict::First]);
    }
}
