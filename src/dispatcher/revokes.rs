//! Revokes under way: partitions being taken away wait here, with the consumer thread blocked
//! in its revoke callback on their reply, until their in-flight deliveries are settled or
//! their drain deadline passes.

use tokio::time::Instant;

use crate::kafka::TopicPartition;
use crate::offsets::CommitPoint;

/// Where a revoke's final commit points go: the consumer thread waits on it in its rebalance
/// callback.
pub(super) type RevokeReply = std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>;

/// Partitions being taken away: nothing new of theirs is sent, and the consumer thread waits
/// in its revoke callback for `reply` until their in-flight deliveries are settled or
/// `deadline` passes.
pub(super) struct Revoking {
    pub(super) partitions: Vec<TopicPartition>,
    pub(super) reply: RevokeReply,
    pub(super) deadline: Instant,
}

/// The revokes under way, oldest first.
#[derive(Default)]
pub(super) struct Revokes {
    waiting: Vec<Revoking>,
}

impl Revokes {
    pub(super) fn push(&mut self, partitions: Vec<TopicPartition>, reply: RevokeReply, deadline: Instant) {
        self.waiting.push(Revoking { partitions, reply, deadline });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The earliest drain deadline of the revokes under way.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|r| r.deadline).min()
    }

    /// Takes out, oldest first, the revokes whose partitions have nothing in flight (by
    /// `in_flight_of`) or whose deadline has passed by `now`, each with what it still has in
    /// flight.
    pub(super) fn take_done(
        &mut self,
        now: Instant,
        in_flight_of: impl Fn(&[TopicPartition]) -> usize,
    ) -> Vec<(Revoking, usize)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let left = in_flight_of(&self.waiting[i].partitions);
            if left > 0 && now < self.waiting[i].deadline {
                i += 1;
                continue;
            }
            done.push((self.waiting.remove(i), left));
        }
        done
    }

    /// Every revoke still waiting (the dispatcher is stopping).
    pub(super) fn take_all(&mut self) -> Vec<Revoking> {
        std::mem::take(&mut self.waiting)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition { topic: "t".into(), partition }
    }

    #[test]
    fn a_revoke_is_done_once_drained_or_past_its_deadline() {
        let (reply, _answers) = std::sync::mpsc::sync_channel(4);
        let now = Instant::now();
        let mut revokes = Revokes::default();
        revokes.push(vec![tp(0)], reply.clone(), now + Duration::from_secs(5));
        revokes.push(vec![tp(1)], reply.clone(), now + Duration::from_secs(1));
        revokes.push(vec![tp(2)], reply, now + Duration::from_secs(9));
        assert_eq!(revokes.next_deadline(), Some(now + Duration::from_secs(1)));
        let in_flight = |ps: &[TopicPartition]| if ps[0].partition == 2 { 0 } else { 3 };
        let done = revokes.take_done(now, in_flight);
        assert_eq!(done.iter().map(|(r, left)| (r.partitions[0].partition, *left)).collect::<Vec<_>>(), vec![(2, 0)]);
        let done = revokes.take_done(now + Duration::from_secs(2), in_flight);
        assert_eq!(done.iter().map(|(r, left)| (r.partitions[0].partition, *left)).collect::<Vec<_>>(), vec![(1, 3)]);
        assert_eq!(revokes.take_all().len(), 1);
        assert!(revokes.is_empty() && revokes.next_deadline().is_none());
    }
}
