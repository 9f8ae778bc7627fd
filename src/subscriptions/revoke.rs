//! Revoked partitions: withheld while they drain (nothing new of theirs is sent, in-flight
//! acks still count), then purged everywhere when they are released.

use super::*;

impl Registry {
    /// Drops every message of these partitions (revoked): queued, parked, unassigned or in
    /// flight. Acks that arrive later for them are unknown.
    pub fn purge(&mut self, partitions: &[TopicPartition]) -> usize {
        let dropped = self.remove_of(partitions, true);
        for tp in partitions {
            self.revoked.remove(tp);
        }
        dropped
    }

    /// Starts the drain of partitions being revoked: their messages not yet sent are dropped
    /// (the next owner delivers them), nothing of theirs is sent from now on, and their
    /// in-flight deliveries stay until acked, failed or purged. Returns how many were dropped.
    pub fn withhold(&mut self, partitions: &[TopicPartition]) -> usize {
        self.revoked.extend(partitions.iter().cloned());
        self.remove_of(partitions, false)
    }

    /// Deliveries of these partitions out and not yet settled.
    pub fn in_flight_of(&self, partitions: &[TopicPartition]) -> usize {
        let of = |p: &&Pending| p.replay.is_none() && partitions.contains(&p.record.tp);
        self.sessions.values().map(|s| s.in_flight.values().filter(of).count()).sum()
    }

    /// Removes the messages of `partitions` waiting anywhere, and with `in_flight` those out
    /// on streams too; their keys are released and what is left is routed again.
    pub(super) fn remove_of(&mut self, partitions: &[TopicPartition], in_flight: bool) -> usize {
        // Replayed messages stay: the replay reads its range whoever owns the partition.
        let gone = |p: &Pending| p.replay.is_none() && partitions.contains(&p.record.tp);
        let mut dropped = 0;
        let waiting: Vec<u64> =
            self.delayed_items.iter().filter(|(_, d)| gone(&d.pending)).map(|(seq, _)| *seq).collect();
        for seq in waiting {
            if let Some(Delayed { pending: p, .. }) = self.delayed_items.remove(&seq) {
                let route = &mut self.route;
                if let Some(k) = route.keys.get_mut(&p.hash) {
                    k.delayed = k.delayed.saturating_sub(1);
                }
                route.release_one(p.hash);
                dropped += 1;
            }
        }
        self.dead_letters.retain(|d| !gone(&d.pending));
        let route = &mut self.route;
        let before = route.unassigned.len();
        route.unassigned.retain(|p| !gone(p));
        dropped += before - route.unassigned.len();
        for q in route.parked.values_mut() {
            let before = q.len();
            q.retain(|p| !gone(p));
            dropped += before - q.len();
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let route = &mut self.route;
            let mut removed = Vec::new();
            s.queue.retain(|p| {
                if gone(p) {
                    removed.push(p.hash);
                    false
                } else {
                    true
                }
            });
            if in_flight {
                s.in_flight.retain(|_, p| {
                    if gone(p) {
                        removed.push(p.hash);
                        false
                    } else {
                        true
                    }
                });
            }
            dropped += removed.len();
            for hash in removed {
                route.release_one(hash);
            }
            self.dirty.insert(id);
            self.close_if_drained(id);
        }
        self.reroute(Vec::new());
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn revoking_a_partition_drops_its_retrying_messages() {
        let mut reg = Registry::new(retrying_route(5, 5, None));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        received(&mut a.outbox);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("x")));
        assert_eq!(reg.purge(&[record(0, 0, "k").tp.clone()]), 1);
        assert_eq!(reg.delayed(), 0);
        reg.release_due(later(60));
        reg.flush();
        assert!(received(&mut a.outbox).is_empty());
        // The key is free for the partition's next owner's messages.
        reg.dispatch(record(0, 0, "k"), 2);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
    }

    #[test]
    fn purge_drops_revoked_partitions_everywhere() {
        let mut reg = Registry::new(route("r", 1));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, "k"), 1);
            reg.dispatch(record(1, o, "k"), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox)[0].partition, 0);
        let dropped = reg.purge(&[TopicPartition { topic: Arc::from("t"), partition: 0 }]);
        assert_eq!(dropped, 3);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].partition, 1);
        assert_eq!(reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]).unknown, 1);
    }

    #[test]
    fn replayed_messages_survive_a_revoke_of_their_partition_and_come_marked() {
        let mut reg = Registry::new(route("r", 10));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        let tag = ReplayTag { replay: 7, batch: 1 };
        reg.dispatch(record(0, 0, "live"), 1);
        reg.dispatch_replay(record(0, 1, "old"), tag);
        let tp = TopicPartition { topic: Arc::from("t"), partition: 0 };
        assert_eq!(reg.withhold(std::slice::from_ref(&tp)), 1, "the live message is dropped, the replayed one stays");
        reg.dispatch_replay(record(0, 2, "older"), tag);
        reg.flush();
        let mut got = Vec::new();
        while let Ok(SessionMessage::Deliveries(batch)) = a.outbox.try_recv() {
            got.extend(batch.into_iter().map(|d| (d.record.offset, d.replay)));
        }
        assert_eq!(got, vec![(1, 7), (2, 7)], "replayed messages are sent while their partition drains");
        assert_eq!(reg.in_flight_of(std::slice::from_ref(&tp)), 0, "a revoke does not wait for them");
        assert_eq!(reg.purge(std::slice::from_ref(&tp)), 0);
        let acked = reg.ack(a.session, &[reg.handle(a.session, "t/0/1"), reg.handle(a.session, "t/0/2")]);
        assert_eq!(acked.settled.iter().map(|p| p.replay).collect::<Vec<_>>(), vec![Some(tag), Some(tag)]);
    }
}
