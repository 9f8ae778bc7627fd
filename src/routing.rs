//! Routing decisions: which live subscriber of a route gets a message.
//!
//! Pure functions; the dispatcher calls them for every message. The key's hash picks the
//! subscriber by rendezvous (highest-random-weight) hashing, so a message's key sticks to one
//! subscriber while the set of subscribers stands, and adding or removing one subscriber moves
//! only the keys it gains or held.

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
pub fn instance_for(key_hash: u64, instances: &[u64]) -> Option<usize> {
    instances
        .iter()
        .enumerate()
        .max_by_key(|(_, id)| (xxh3_64_with_seed(&key_hash.to_le_bytes(), **id), **id))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_instances_no_owner() {
        assert_eq!(instance_for(42, &[]), None);
    }

    #[test]
    fn same_key_same_instance() {
        let ids = [11, 22, 33, 44];
        let h = key_hash(Some(b"customer-7"), 0, 0);
        let first = instance_for(h, &ids);
        for _ in 0..10 {
            assert_eq!(instance_for(h, &ids), first);
        }
        // Order of the slice does not matter, only the ids.
        let reversed = [44, 33, 22, 11];
        assert_eq!(first.map(|i| ids[i]), instance_for(h, &reversed).map(|i| reversed[i]));
    }

    #[test]
    fn keys_spread_evenly() {
        let ids = [1, 2, 3, 4];
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
        let before = [1, 2, 3];
        let after = [1, 2, 3, 4];
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
}
