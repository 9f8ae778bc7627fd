//! Key ownership and parking: where a message goes, and drain before move. A key (the
//! message key, the partition or the position, per the route's ordering) has one owner at a
//! time; when its target changes, its later messages park until the old owner has settled
//! everything of the key, then follow. New records enter here ([`Registry::dispatch`]).

use super::retrying::{header, now_ms, NO_SESSION};
use super::*;

/// Who holds a key's messages (ordering key or partition): one owner at a time, so a key
/// moves only once its messages at the old owner are settled (drain before move).
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyState {
    pub(super) owner: SessionId,
    /// Messages of the key queued at or in flight to `owner`, or waiting out a backoff.
    pub(super) outstanding: u32,
    /// Messages of the key waiting out a retry backoff: the key's later messages wait behind them.
    pub(super) delayed: u32,
}

impl Registry {
    /// Routes a newly received record.
    pub fn dispatch(&mut self, record: Arc<Record>, epoch: u64) {
        self.dispatch_keyed(record, epoch, None);
    }

    /// Routes a newly received record of an effectively-once route, with its idempotency key.
    pub fn dispatch_keyed(&mut self, record: Arc<Record>, epoch: u64, idempotency_key: Option<Arc<str>>) {
        let hash = self.route.hash_of(&record);
        if !self.route.config.retries_through(&record.tp.topic) {
            self.assign(Pending::new(record, 1, epoch, idempotency_key, hash, None), false);
            return;
        }
        // A retry: the attempt after those its headers count, not before its time.
        let made: u32 = header(&record, HEADER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(1);
        let retry_at: Option<i64> = header(&record, HEADER_RETRY_AT).and_then(|v| v.parse().ok());
        let p = Pending::new(record, made.saturating_add(1), epoch, idempotency_key, hash, None);
        let wait = retry_at.map(|at| at - now_ms()).filter(|ms| *ms > 0);
        match wait {
            // No owner holds a retried message's key: it waits on its own.
            Some(ms) => self.schedule(NO_SESSION, p, Duration::from_millis(ms as u64)),
            None => self.assign(p, false),
        }
    }

    /// Routes a record of an operator's replay (see [`ReplayTag`]); its key's order holds
    /// among live and replayed messages alike.
    pub fn dispatch_replay(&mut self, record: Arc<Record>, tag: ReplayTag) {
        let hash = self.route.hash_of(&record);
        let p = Pending::new(record, 1, 0, None, hash, Some(tag));
        self.assign(p, false);
    }

    pub(super) fn assign(&mut self, p: Pending, front: bool) {
        if p.replay.is_none() && self.revoked.contains(&p.record.tp) {
            return; // its partition's next owner delivers it
        }
        let route = &mut self.route;
        let target = route.target(p.hash);
        if route.ordered() {
            let behind_parked = route.parked.get(&p.hash).is_some_and(|q| !q.is_empty());
            let key = route.keys.get(&p.hash);
            let owner_elsewhere = key.is_some_and(|k| Some(k.owner) != target);
            let waiting_on_retry = key.is_some_and(|k| k.delayed > 0);
            if behind_parked || owner_elsewhere || waiting_on_retry {
                // Drain before move: wait until the key's messages at its old owner settle.
                let q = route.parked.entry(p.hash).or_default();
                if front {
                    q.push_front(p)
                } else {
                    q.push_back(p)
                }
                return;
            }
        }
        let Some(id) = target else {
            if front {
                route.unassigned.push_front(p)
            } else {
                route.unassigned.push_back(p)
            }
            return;
        };
        if route.ordered() {
            route.keys.entry(p.hash).or_insert(KeyState { owner: id, outstanding: 0, delayed: 0 }).outstanding += 1;
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            if front {
                s.queue.push_front(p)
            } else {
                s.queue.push_back(p)
            }
            self.dirty.insert(id);
        }
    }

    /// Takes one settled or withdrawn message of `hash` off its key's count; once the key has
    /// nothing outstanding, its parked messages go.
    pub(super) fn release_key(&mut self, hash: u64) {
        if self.route.release_one(hash) {
            self.unpark(hash);
        }
    }

    /// A key's old owner settled everything: its parked messages go to its new target.
    pub(super) fn unpark(&mut self, hash: u64) {
        if let Some(q) = self.route.parked.remove(&hash) {
            for p in q {
                self.assign(p, false);
            }
        }
    }

    /// Routes again every queued, parked or unassigned message plus `extra`, oldest first per
    /// partition, after membership, labels or weights changed.
    pub(super) fn reroute(&mut self, extra: Vec<Pending>) {
        let mut all = extra;
        let route = &mut self.route;
        all.extend(route.unassigned.drain(..));
        for (_, q) in route.parked.drain() {
            all.extend(q);
        }
        for s in self.sessions.values_mut() {
            for p in s.queue.drain(..) {
                route.release_one(p.hash);
                all.push(p);
            }
        }
        all.sort_by(|a, b| a.order().cmp(&b.order()));
        for p in all {
            self.assign(p, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn messages_wait_for_a_member_and_keys_stick() {
        let mut reg = Registry::new(route("r", 100));
        for o in 0..50 {
            reg.dispatch(record(0, o, &format!("k{}", o % 5)), 1);
        }
        reg.flush();
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        let mut b = reg.register("r", 0, sub("b")).expect("ok");
        reg.flush();
        let to_a = received(&mut a.outbox);
        let to_b = received(&mut b.outbox);
        assert_eq!(to_a.len() + to_b.len(), 50);
        for d in &to_a {
            assert!(!to_b.iter().any(|e| e.key == d.key), "a key went to both members");
        }
        // Order within a key holds.
        for k in 0..5 {
            let key = Bytes::from(format!("k{k}"));
            let offsets: Vec<i64> = to_a.iter().chain(&to_b).filter(|d| d.key == key).map(|d| d.offset).collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        }
    }

    #[test]
    fn a_relabelled_subscribers_keys_move_only_after_its_in_flight_messages_settle() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 100, 0));
        let mut a = reg.register("r", 10, labelled("a", "blue")).expect("ok");
        let mut b = reg.register("r", 10, labelled("b", "green")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.dispatch(record(0, 1, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        // The operator flips the weights: key k now belongs to green, but two of its messages
        // are in flight at blue.
        reg.update_route(&split_route(EmptyCohort::Hold, 0, 100));
        reg.dispatch(record(0, 2, "k"), 1);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "k waits for blue to settle");
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        reg.flush();
        assert!(received(&mut b.outbox).is_empty(), "one still in flight");
        reg.ack(a.session, &[reg.handle(a.session, "t/0/1")]);
        reg.flush();
        assert_eq!(received(&mut b.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
        // And a label change moves keys the same way.
        reg.update_labels(b.session, [("track".to_string(), "blue".to_string())].into_iter().collect());
        reg.dispatch(record(0, 3, "k"), 1);
        reg.flush();
        assert!(
            received(&mut a.outbox).is_empty() && received(&mut b.outbox).is_empty(),
            "green holds; nothing to blue"
        );
        assert_eq!(reg.held(), 1);
    }
}
