//! Routing decisions: which cohort and which live subscriber of a route get a message.
//!
//! Pure functions; the dispatcher calls them for every message. A route with a split label
//! first picks the message's cohort ([`cohort_for`]: a stable weighted choice by the key's
//! hash), then a subscriber within it ([`instance_for`]: rendezvous, highest-random-weight,
//! hashing). A key sticks to one cohort while the weights stand and to one subscriber while
//! the cohort's subscribers stand; changing either moves only the keys that must move.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Stable 64-bit hash of a message's routing key. Keyless messages hash their position, so
/// they spread evenly instead of all landing on one subscriber.
pub fn key_hash(key: Option<&[u8]>, partition: i32, offset: i64) -> u64 {
    match key {
        Some(key) => xxh3_64(key),
        None => {
            let mut buf = [0u8; 12];
            buf[..4].copy_from_slice(&partition.to_le_bytes());
            buf[4..].copy_from_slice(&offset.to_le_bytes());
            xxh3_64(&buf)
        }
    }
}

/// Index of the instance that owns `key_hash` among `instances` (stable instance ids), or
/// `None` when there is none. Rendezvous hashing: every instance scores the key and the
/// highest score wins, so the winner depends only on the key and the instance's own id.
pub fn instance_for<I: Copy + Into<u64>>(key_hash: u64, instances: &[I]) -> Option<usize> {
    instances
        .iter()
        .map(|&id| id.into())
        .enumerate()
        .max_by_key(|&(_, id)| (xxh3_64_with_seed(&key_hash.to_le_bytes(), id), id))
        .map(|(i, _)| i)
}

/// Seed for a key's cohort point, of its own rather than one [`instance_for`] might use as an
/// instance id (those are small session counters), so the cohort point and the instance
/// scores are independent hashes of the key: the keys that land in a narrow cohort (a 1 %
/// canary) spread over its instances as evenly as keys do overall.
const COHORT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Points on the line that cohorts divide between them: weights resolve to 0.01 %.
const COHORT_POINTS: u64 = 10_000;

/// Where a key lies on the cohort line, `0..COHORT_POINTS`. Depends on the key alone, so the
/// same key lands at the same point on every call and in every gateway replica.
fn cohort_point(key_hash: u64) -> u64 {
    // 2^64 is not a multiple of 10_000, but the bias this leaves is below 1e-15 per point.
    xxh3_64_with_seed(&key_hash.to_le_bytes(), COHORT_SEED) % COHORT_POINTS
}

/// The cohort (a value of the route's split label, e.g. `blue`/`green` or `stable`/`canary`)
/// that a message with `key_hash` belongs to, or `None` when no cohort has weight (empty
/// slice or all zero).
///
/// The key's point in `0..10_000` is compared with the cumulative weights, taken in the
/// slice's order and scaled so that their sum spans the whole line; weights need not sum to
/// 100. Consequences the rollout relies on:
/// - a key keeps its cohort while the weights stand, so per-key order holds and the observed
///   split converges to the weights;
/// - a cohort of weight 0 never wins, so `blue = 100, green = 0` sends nothing to green;
/// - moving a boundary moves only the keys whose points lie between its old and new place,
///   so with two cohorts a ramp (90/10 → 50/50) moves the minimum, and only from the cohort
///   that shrinks to the one that grows.
///
/// With three or more cohorts the walk is not minimal: `a=10,b=30,c=60` → `a=20,b=30,c=50`
/// shifts both boundaries, moving 10 % of keys b→a and 10 % c→b where 10 % c→a would do.
/// Every move still goes to a neighbour in the slice, and callers must keep the slice in a
/// stable order (config gives it sorted by name) so that unchanged weights move nothing.
pub fn cohort_for(key_hash: u64, weights: &[(String, u32)]) -> Option<&str> {
    let total: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    if total == 0 {
        return None;
    }
    // Exact integer comparison: point / POINTS < cumulative / total, no rounding of shares.
    let scaled_point = u128::from(cohort_point(key_hash)) * total;
    let mut cumulative = 0u128;
    weights
        .iter()
        .find(|(_, w)| {
            cumulative += u128::from(*w);
            scaled_point < cumulative * u128::from(COHORT_POINTS)
        })
        .map(|(cohort, _)| cohort.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_instances_no_owner() {
        assert_eq!(instance_for::<u64>(42, &[]), None);
    }

    #[test]
    fn same_key_same_instance() {
        let ids = [11u64, 22, 33, 44];
        let h = key_hash(Some(b"customer-7"), 0, 0);
        let first = instance_for(h, &ids);
        for _ in 0..10 {
            assert_eq!(instance_for(h, &ids), first);
        }
        // Order of the slice does not matter, only the ids.
        let reversed = [44u64, 33, 22, 11];
        assert_eq!(first.map(|i| ids[i]), instance_for(h, &reversed).map(|i| reversed[i]));
    }

    #[test]
    fn keys_spread_evenly() {
        let ids = [1u64, 2, 3, 4];
        let mut counts = [0usize; 4];
        for k in 0..40_000 {
            let h = key_hash(Some(format!("key-{k}").as_bytes()), 0, 0);
            counts[instance_for(h, &ids).expect("some")] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn adding_an_instance_moves_only_keys_to_it() {
        let before = [1u64, 2, 3];
        let after = [1u64, 2, 3, 4];
        let mut moved = 0;
        for k in 0..30_000 {
            let h = key_hash(Some(format!("key-{k}").as_bytes()), 0, 0);
            let a = before[instance_for(h, &before).expect("some")];
            let b = after[instance_for(h, &after).expect("some")];
            if a != b {
                assert_eq!(b, 4, "a key moved between two old instances");
                moved += 1;
            }
        }
        assert!(moved < 30_000 / 4 + 600, "moved {moved}");
    }

    #[test]
    fn keyless_messages_spread_by_position() {
        let a = key_hash(None, 0, 1);
        let b = key_hash(None, 0, 2);
        let c = key_hash(None, 1, 1);
        assert!(a != b && a != c && b != c);
    }

    // --- cohorts ---

    fn weights(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(c, w)| (c.to_string(), *w)).collect()
    }

    fn hash_of(prefix: &str, k: u64) -> u64 {
        key_hash(Some(format!("{prefix}-{k}").as_bytes()), 0, 0)
    }

    /// Share of `keys` keys per cohort, in percent, in the order of `weights`.
    fn observed_split(weights: &[(String, u32)], prefix: &str, keys: u64) -> Vec<f64> {
        let mut counts = vec![0u64; weights.len()];
        for k in 0..keys {
            let cohort = cohort_for(hash_of(prefix, k), weights).expect("some weight is above 0");
            let i = weights.iter().position(|(c, _)| c == cohort).expect("a cohort of the slice");
            counts[i] += 1;
        }
        counts.iter().map(|c| *c as f64 * 100.0 / keys as f64).collect()
    }

    fn assert_split_within_one_point(pairs: &[(&str, u32)]) {
        let w = weights(pairs);
        let total: u32 = pairs.iter().map(|(_, w)| w).sum();
        let observed = observed_split(&w, "order", 100_000);
        for ((cohort, weight), got) in pairs.iter().zip(&observed) {
            let want = f64::from(*weight) * 100.0 / f64::from(total);
            assert!((got - want).abs() <= 1.0, "{cohort}: observed {got:.2}% for weight {want:.2}% in {pairs:?}");
        }
    }

    #[test]
    fn observed_split_follows_the_weights() {
        assert_split_within_one_point(&[("stable", 90), ("canary", 10)]);
        assert_split_within_one_point(&[("blue", 50), ("green", 50)]);
        assert_split_within_one_point(&[("stable", 99), ("canary", 1)]);
        assert_split_within_one_point(&[("a", 60), ("b", 30), ("c", 10)]);
        // Weights need not sum to 100.
        assert_split_within_one_point(&[("blue", 3), ("green", 1)]);
    }

    #[test]
    fn no_weight_no_cohort() {
        assert_eq!(cohort_for(42, &[]), None);
        assert_eq!(cohort_for(42, &weights(&[("blue", 0), ("green", 0)])), None);
    }

    #[test]
    fn zero_weight_cohort_never_wins() {
        let w = weights(&[("blue", 100), ("green", 0)]);
        let w_first = weights(&[("green", 0), ("blue", 1)]);
        for k in 0..20_000 {
            let h = hash_of("order", k);
            assert_eq!(cohort_for(h, &w), Some("blue"));
            assert_eq!(cohort_for(h, &w_first), Some("blue"));
        }
    }

    #[test]
    fn a_key_keeps_its_cohort_while_weights_stand() {
        let w = weights(&[("stable", 90), ("canary", 10)]);
        for k in 0..1_000 {
            let h = hash_of("order", k);
            let first = cohort_for(h, &w);
            for _ in 0..5 {
                assert_eq!(cohort_for(h, &w), first);
            }
        }
    }

    #[test]
    fn ramping_the_canary_moves_the_minimum_and_only_towards_it() {
        let before = weights(&[("stable", 90), ("canary", 10)]);
        let after = weights(&[("stable", 50), ("canary", 50)]);
        let keys = 100_000;
        let mut moved = 0;
        for k in 0..keys {
            let h = hash_of("order", k);
            let (a, b) = (cohort_for(h, &before), cohort_for(h, &after));
            if a != b {
                assert_eq!((a, b), (Some("stable"), Some("canary")), "a key moved away from the growing canary");
                moved += 1;
            }
        }
        // The canary's share grows by 40 points; at most 41 % of keys may move.
        assert!(moved <= keys * 41 / 100, "moved {moved} of {keys}");
    }

    #[test]
    fn cohort_and_instance_choices_are_independent() {
        // Keys of a narrow cohort still spread evenly over that cohort's instances.
        let w = weights(&[("stable", 95), ("canary", 5)]);
        let ids = [1u64, 2, 3, 4];
        let mut counts = [0u64; 4];
        for k in 0..200_000 {
            let h = hash_of("order", k);
            if cohort_for(h, &w) == Some("canary") {
                counts[instance_for(h, &ids).expect("some")] += 1;
            }
        }
        let total: u64 = counts.iter().sum();
        for c in counts {
            let share = c as f64 / total as f64;
            assert!((0.22..0.28).contains(&share), "{counts:?}");
        }
    }

    #[test]
    fn adding_an_instance_moves_only_its_share_to_it() {
        let keys = 20_000u64;
        for n in 1..=20u64 {
            let before: Vec<u64> = (1..=n).collect();
            let after: Vec<u64> = (1..=n + 1).collect();
            let moved = moved_to_new_instance(&before, &after, keys).unwrap_or_else(|e| panic!("n={n}: {e}"));
            let limit = keys / (n + 1) + keys * 2 / 100;
            assert!(moved <= limit, "n={n}: moved {moved} > {limit}");
        }
    }

    /// Keys (of `keys`) that change instance from `before` to `after`, which is `before` plus
    /// one id at the end; an error if a key moves anywhere but to the new instance.
    fn moved_to_new_instance(before: &[u64], after: &[u64], keys: u64) -> Result<u64, String> {
        let new_id = after[after.len() - 1];
        let mut moved = 0;
        for k in 0..keys {
            let h = hash_of("key", k);
            let a = before[instance_for(h, before).expect("some")];
            let b = after[instance_for(h, after).expect("some")];
            if a != b {
                if b != new_id {
                    return Err(format!("key {k} moved from {a} to {b}, not to the new {new_id}"));
                }
                moved += 1;
            }
        }
        Ok(moved)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever the weights (2 to 4 cohorts, some possibly 0), 100_000 keys split within
        /// one percentage point of them, and no key lands in a zero-weight cohort.
        #[test]
        fn any_split_is_within_one_point(
            ws in proptest::collection::vec(0u32..1_000, 2..=4),
            prefix in "[a-z]{1,8}",
        ) {
            let total: u32 = ws.iter().sum();
            prop_assume!(total > 0);
            let w: Vec<(String, u32)> = ws.iter().enumerate().map(|(i, w)| (format!("c{i}"), *w)).collect();
            let observed = observed_split(&w, &prefix, 100_000);
            for ((_, weight), got) in w.iter().zip(&observed) {
                let want = f64::from(*weight) * 100.0 / f64::from(total);
                prop_assert!((got - want).abs() <= 1.0, "observed {:?} for weights {:?}", observed, ws);
                if *weight == 0 {
                    prop_assert_eq!(*got, 0.0);
                }
            }
        }

        /// With two cohorts, any change of weights moves keys only from the cohort whose share
        /// shrinks to the one whose share grows, and no more than the change (+1 point).
        #[test]
        fn two_cohort_changes_are_monotone_and_minimal(
            before in (0u32..=100, 0u32..=100),
            after in (0u32..=100, 0u32..=100),
        ) {
            prop_assume!(before.0 + before.1 > 0 && after.0 + after.1 > 0);
            let w0 = weights(&[("blue", before.0), ("green", before.1)]);
            let w1 = weights(&[("blue", after.0), ("green", after.1)]);
            let share = |(b, g): (u32, u32)| f64::from(b) / f64::from(b + g);
            let growing = if share(after) > share(before) { "blue" } else { "green" };
            // 100_000 keys put the 1-point margin at six standard deviations.
            let keys = 100_000u64;
            let mut moved = 0u64;
            for k in 0..keys {
                let h = hash_of("order", k);
                let (a, b) = (cohort_for(h, &w0), cohort_for(h, &w1));
                if a != b {
                    prop_assert_eq!(b, Some(growing));
                    moved += 1;
                }
            }
            let limit = ((share(after) - share(before)).abs() + 0.01) * keys as f64;
            prop_assert!(moved as f64 <= limit, "moved {} > {}", moved, limit);
        }

        /// Rendezvous hashing with arbitrary instance ids: adding one instance to n moves about
        /// 1/(n+1) of the keys, all of them to the new instance.
        #[test]
        fn adding_any_instance_moves_only_keys_to_it(
            ids in proptest::collection::hash_set(any::<u64>(), 2..=21),
        ) {
            let after: Vec<u64> = ids.into_iter().collect();
            let before = &after[..after.len() - 1];
            let keys = 20_000u64;
            let moved = moved_to_new_instance(before, &after, keys).map_err(TestCaseError::fail)?;
            let limit = keys / after.len() as u64 + keys * 2 / 100;
            prop_assert!(moved <= limit, "n={}: moved {} > {}", before.len(), moved, limit);
        }
    }
}
