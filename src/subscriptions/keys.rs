//! The key table: who holds each key's messages and which messages wait for their key to move.
//!
//! A key (the message key, the partition or the position, per the route's ordering) has one
//! owner at a time; when its target changes, its later messages park here until the old owner
//! has settled everything of the key, then follow (drain before move). A message of the key
//! waiting out a retry backoff holds the key's later messages back the same way. Pure state:
//! the registry asks it whether a message must park, and hands parked messages on when it says
//! a key is free.

use std::collections::{HashMap, VecDeque};

use super::{Pending, SessionId};

/// Who holds a key's messages (ordering key or partition): one owner at a time, so a key
/// moves only once its messages at the old owner are settled (drain before move).
#[derive(Debug, Clone, Copy)]
struct KeyState {
    owner: SessionId,
    /// Messages of the key queued at or in flight to `owner`, or waiting out a backoff.
    outstanding: u32,
    /// Messages of the key waiting out a retry backoff: the key's later messages wait behind them.
    delayed: u32,
}

/// Key ownership and parking of an ordered route (an unordered route never takes a key, so
/// its table stays empty).
#[derive(Default)]
pub(super) struct KeyTable {
    keys: HashMap<u64, KeyState>,
    /// Messages waiting for their key's old owner to settle, per key, in order.
    parked: HashMap<u64, VecDeque<Pending>>,
}

impl KeyTable {
    /// Whether a message of key `hash` must park instead of going to `target`: messages of its
    /// key are parked already (they go first), its key is held by another owner (drain before
    /// move), or one of its messages waits out a retry backoff.
    pub(super) fn must_park(&self, hash: u64, target: Option<SessionId>) -> bool {
        let behind_parked = self.parked.get(&hash).is_some_and(|q| !q.is_empty());
        let key = self.keys.get(&hash);
        let owner_elsewhere = key.is_some_and(|k| Some(k.owner) != target);
        let waiting_on_retry = key.is_some_and(|k| k.delayed > 0);
        behind_parked || owner_elsewhere || waiting_on_retry
    }

    /// Parks a message behind its key's others (or in front of them, for one coming back).
    pub(super) fn park(&mut self, p: Pending, front: bool) {
        let q = self.parked.entry(p.hash).or_default();
        if front {
            q.push_front(p)
        } else {
            q.push_back(p)
        }
    }

    /// Parks `messages` of key `hash`, in their order, in front of those parked already.
    pub(super) fn park_in_front(&mut self, hash: u64, messages: Vec<Pending>) {
        let parked = self.parked.entry(hash).or_default();
        for q in messages.into_iter().rev() {
            parked.push_front(q);
        }
    }

    /// One more message of key `hash` goes to `owner`, which holds the key from now if nobody
    /// did.
    pub(super) fn take(&mut self, hash: u64, owner: SessionId) {
        self.keys.entry(hash).or_insert(KeyState { owner, outstanding: 0, delayed: 0 }).outstanding += 1;
    }

    /// Takes one settled or withdrawn message of `hash` off its owner's count. Returns true
    /// when the key has nothing outstanding any more (its parked messages may go).
    pub(super) fn release_one(&mut self, hash: u64) -> bool {
        let Some(state) = self.keys.get_mut(&hash) else { return false };
        state.outstanding = state.outstanding.saturating_sub(1);
        if state.outstanding == 0 {
            self.keys.remove(&hash);
            return true;
        }
        false
    }

    /// A message of key `hash` starts waiting out a backoff: the key's later messages wait.
    pub(super) fn retry_started(&mut self, hash: u64) {
        if let Some(k) = self.keys.get_mut(&hash) {
            k.delayed += 1;
        }
    }

    /// A message of key `hash` is done waiting out its backoff (or is gone).
    pub(super) fn retry_ended(&mut self, hash: u64) {
        if let Some(k) = self.keys.get_mut(&hash) {
            k.delayed = k.delayed.saturating_sub(1);
        }
    }

    /// Whether nothing of key `hash` is outstanding at an owner.
    pub(super) fn is_settled(&self, hash: u64) -> bool {
        self.keys.get(&hash).is_none_or(|k| k.outstanding == 0)
    }

    /// The parked messages of key `hash`, in order, taken out of the table.
    pub(super) fn unpark(&mut self, hash: u64) -> Option<VecDeque<Pending>> {
        self.parked.remove(&hash)
    }

    /// Every parked message, taken out of the table (to be routed again).
    pub(super) fn take_parked(&mut self) -> Vec<Pending> {
        self.parked.drain().flat_map(|(_, q)| q).collect()
    }

    /// Messages parked, all keys.
    pub(super) fn parked(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }

    /// Drops the parked messages for which `gone` holds; returns how many.
    pub(super) fn drop_parked(&mut self, gone: impl Fn(&Pending) -> bool) -> usize {
        let mut dropped = 0;
        for q in self.parked.values_mut() {
            let before = q.len();
            q.retain(|p| !gone(p));
            dropped += before - q.len();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::record;
    use super::*;

    fn pending(offset: i64, hash: u64) -> Pending {
        Pending::new(record(0, offset, "k"), 1, 1, None, hash, None)
    }

    #[test]
    fn a_key_stays_with_its_owner_until_everything_of_it_is_settled() {
        let mut keys = KeyTable::default();
        assert!(!keys.must_park(7, Some(SessionId(1))), "a new key goes to its target");
        keys.take(7, SessionId(1));
        keys.take(7, SessionId(1));
        assert!(!keys.must_park(7, Some(SessionId(1))));
        assert!(keys.must_park(7, Some(SessionId(2))), "another target waits for the owner to settle");
        assert!(!keys.release_one(7), "one still outstanding");
        assert!(keys.release_one(7), "the last one frees the key");
        assert!(keys.is_settled(7));
        assert!(!keys.must_park(7, Some(SessionId(2))));
        assert!(!keys.release_one(7), "an unknown key frees nothing");
    }

    #[test]
    fn a_keys_messages_park_in_order_and_behind_each_other() {
        let mut keys = KeyTable::default();
        keys.park(pending(2, 7), false);
        keys.park(pending(3, 7), false);
        keys.park(pending(1, 7), true);
        keys.park_in_front(7, vec![pending(-1, 7), pending(0, 7)]);
        keys.park(pending(9, 8), false);
        assert!(keys.must_park(7, None), "later messages go behind the parked ones");
        assert_eq!(keys.parked(), 6);
        let order: Vec<i64> = keys.unpark(7).expect("parked").iter().map(|p| p.record.offset).collect();
        assert_eq!(order, vec![-1, 0, 1, 2, 3]);
        assert!(!keys.must_park(7, None));
        assert_eq!(keys.drop_parked(|p| p.record.offset == 9), 1);
        assert!(keys.take_parked().is_empty());
    }

    #[test]
    fn a_message_waiting_out_a_backoff_holds_its_key_back() {
        let mut keys = KeyTable::default();
        keys.take(7, SessionId(1));
        keys.retry_started(7);
        assert!(keys.must_park(7, Some(SessionId(1))), "even at its owner, the key waits for its retry");
        keys.retry_ended(7);
        keys.retry_ended(7);
        assert!(!keys.must_park(7, Some(SessionId(1))));
        assert!(!keys.is_settled(7));
    }
}
