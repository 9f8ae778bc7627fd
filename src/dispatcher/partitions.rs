//! Partition state and flow control: what the route holds of each assigned partition (its
//! offset tracker, pause state, last commit), records coming in, revokes that drain before they
//! release, and the pause/resume decisions that bound memory. Acks land here; commit points
//! go on to [`super::commits`].

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Dispatcher;
use crate::config::DeliveryMode;
use crate::kafka::{Assignment, Record, TopicPartition};
use crate::offsets::{AckOutcome, CommitPoint, PartitionTracker, Track};
use crate::stats::Stats;

pub(super) struct PartitionState {
    pub(super) tracker: PartitionTracker,
    pub(super) epoch: u64,
    pub(super) paused: bool,
    pub(super) last_commit: Option<CommitPoint>,
    /// Set when a record arrived with the partition's buffer full: that record and every later
    /// one are dropped unseen, and the consumer seeks back here when it resumes. Records
    /// already on their way when a pause takes effect must not push memory past the bound.
    pub(super) refetch_from: Option<i64>,
    /// Set when the partition resumed with a seek back to this offset: records above it that
    /// the consumer fetched before the seek may still be on their way, and taking one would
    /// make the tracker see the offsets in between as a gap (committed, never delivered).
    /// They are dropped until the sought record itself arrives.
    pub(super) refetching: Option<i64>,
    /// The group's committed offset: found at assignment, then each commit that landed.
    pub(super) committed: Option<i64>,
}

/// What to do with a record that arrives for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Track it and route it.
    Take,
    /// Drop it unseen: it is fetched again later (the buffer is full, or it was fetched before
    /// a seek back and its turn has not come yet).
    Refetch,
}

impl PartitionState {
    pub(super) fn new(tracker: PartitionTracker, epoch: u64, committed: Option<i64>) -> Self {
        Self { tracker, epoch, paused: false, last_commit: None, refetch_from: None, refetching: None, committed }
    }

    /// Whether the record at `offset` may be taken with at most `max` offsets held.
    pub(super) fn admit(&mut self, offset: i64, max: usize) -> Admit {
        if let Some(sought) = self.refetching {
            if offset > sought {
                return Admit::Refetch;
            }
            self.refetching = None;
        }
        if self.refetch_from.is_some() {
            return Admit::Refetch;
        }
        if self.tracker.uncommitted() >= max {
            self.refetch_from = Some(offset);
            return Admit::Refetch;
        }
        Admit::Take
    }

    /// The consumer's position reached `position` ([`crate::kafka::KafkaEvent::Positions`]). Taken only
    /// while none of the partition's records is to be fetched again: a position past records
    /// dropped at the bound would let the commit step over them.
    pub(super) fn reached(&mut self, position: i64) {
        if self.refetch_from.is_none() && self.refetching.is_none() {
            self.tracker.reached(position);
        }
    }

    /// The partition resumes; returns where the consumer must seek back to, if records were
    /// dropped at the bound.
    pub(super) fn resume(&mut self) -> Option<i64> {
        self.paused = false;
        let from = self.refetch_from.take();
        if from.is_some() {
            self.refetching = from;
        }
        from
    }
}

/// Partitions being taken away: nothing new of theirs is sent, and the consumer thread waits
/// in its revoke callback for `reply` until their in-flight deliveries are settled or
/// `deadline` passes.
pub(super) struct Revoking {
    pub(super) partitions: Vec<TopicPartition>,
    pub(super) reply: std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>,
    pub(super) deadline: Instant,
}

impl Dispatcher {
    /// The partition's state if it is still the assignment `epoch` names (not revoked since).
    pub(super) fn current(&mut self, tp: &TopicPartition, epoch: u64) -> Option<&mut PartitionState> {
        self.partitions.get_mut(tp).filter(|s| s.epoch == epoch)
    }

    /// The consumer's positions: where nothing is owed, commits may reach them (offsets the
    /// consumer stepped over, transaction markers and aborted records, are never delivered).
    /// At-most-once routes commit what they send, before sending, and are left as they are.
    /// Once a stop has begun, records that arrive are dropped untracked (the next owner
    /// delivers them), so a position then may cover records nobody got: ignored.
    pub(super) fn on_positions(&mut self, positions: Vec<(TopicPartition, i64)>) {
        if self.stopping || self.registry.route_config().delivery == DeliveryMode::AtMostOnce {
            return;
        }
        for (tp, position) in positions {
            if let Some(state) = self.partitions.get_mut(&tp) {
                state.reached(position);
            }
        }
    }

    pub(super) fn on_assigned(&mut self, assignments: Vec<Assignment>) {
        for a in assignments {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let tracker = PartitionTracker::new(a.committed, a.acked_above);
            self.partitions.insert(a.tp, PartitionState::new(tracker, epoch, a.committed));
        }
    }

    /// Partitions are being taken away. At-most-once routes release them at once (their
    /// offsets were committed before sending, acks move nothing). Others drain: nothing new of
    /// theirs is sent, their waiting messages are dropped (the next owner delivers them), and
    /// the answer waits until their in-flight deliveries are settled or the drain deadline
    /// passes, so a rebalance redelivers only what missed the deadline.
    pub(super) fn start_revoke(
        &mut self,
        partitions: Vec<TopicPartition>,
        reply: std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>,
    ) {
        if self.registry.route_config().delivery == DeliveryMode::AtMostOnce || self.stopping {
            let _ = reply.send(self.on_revoked(&partitions));
            return;
        }
        let unsent = self.registry.withhold(&partitions);
        let in_flight = self.registry.in_flight_of(&partitions);
        info!(
            partitions = partitions.len(),
            in_flight,
            unsent,
            "partitions revoked: draining their in-flight deliveries; records not sent yet are left to the partitions' next owner"
        );
        let deadline = Instant::now() + self.settings.revoke_drain;
        self.revoking.push(Revoking { partitions, reply, deadline });
    }

    /// Answers the revokes whose partitions have drained or whose deadline passed.
    pub(super) fn finish_revokes(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.revoking.len() {
            let r = &self.revoking[i];
            let left = self.registry.in_flight_of(&r.partitions);
            if left > 0 && now < r.deadline {
                i += 1;
                continue;
            }
            let r = self.revoking.remove(i);
            if left > 0 {
                Stats::bump(&self.stats.revoke_abandoned, left as u64);
                warn!(partitions = r.partitions.len(), in_flight = left, "drain deadline passed: releasing partitions with deliveries in flight; their next owner redelivers them");
            }
            let _ = r.reply.send(self.on_revoked(&r.partitions));
        }
    }

    /// The earliest drain deadline of the revokes under way.
    pub(super) fn next_revoke_deadline(&self) -> Option<Instant> {
        self.revoking.iter().map(|r| r.deadline).min()
    }

    /// Drops the partitions' buffered messages and returns their final commit points.
    pub fn on_revoked(&mut self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, CommitPoint)> {
        let unsent = self.registry.purge(partitions);
        let mut points = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.remove(tp) {
                // Even if the same point was sent before: that commit may not have landed.
                if let Some(point) = state.tracker.commit_point() {
                    points.push((tp.clone(), point));
                }
            }
        }
        info!(
            partitions = partitions.len(),
            unsent,
            "revoked partitions released; their uncommitted records are read again by the next owner (nothing is lost)"
        );
        points
    }

    pub(super) fn on_records(&mut self, records: Vec<Record>) {
        if self.stopping {
            // Not tracked, so never committed: the next owner delivers them.
            return;
        }
        for record in records {
            let Some(state) = self.partitions.get_mut(&record.tp) else {
                // Not (or no longer) ours: a batch put together while its partition was being
                // revoked. The partition's next owner delivers it.
                Stats::bump(&self.stats.stale_records, 1);
                continue;
            };
            if state.admit(record.offset, self.settings.max_uncommitted) == Admit::Refetch {
                Stats::bump(&self.stats.refetched, 1);
                continue;
            }
            match state.tracker.track(record.offset) {
                Track::New => {
                    let epoch = state.epoch;
                    let record = Arc::new(record);
                    // A retry is the same message again, not a duplicate: it skips the filter.
                    let retry = self.registry.route_config().retries_through(&record.tp.topic);
                    match &mut self.dedup {
                        Some(d) if !retry => d.waiting.push((record, epoch)),
                        _ => self.registry.dispatch(record, epoch),
                    }
                }
                Track::AlreadyAcked => Stats::bump(&self.stats.skipped_already_acked, 1),
                Track::Stale => Stats::bump(&self.stats.stale_records, 1),
            }
        }
    }

    /// Commit points that moved since the last commit.
    pub fn commit_points(&mut self) -> Vec<(TopicPartition, CommitPoint)> {
        let mut points = Vec::new();
        for (tp, state) in &mut self.partitions {
            if let Some(point) = state.tracker.commit_point() {
                if state.last_commit.as_ref() != Some(&point) {
                    state.last_commit = Some(point.clone());
                    points.push((tp.clone(), point));
                }
            }
        }
        points
    }

    /// Partitions to pause (buffer full) and to resume (back under half), the latter with the
    /// offset to fetch again from if records were dropped at the bound.
    pub(super) fn flow_control(&mut self) -> (Vec<TopicPartition>, Vec<(TopicPartition, Option<i64>)>) {
        let max = self.settings.max_uncommitted;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        let mut held_total = 0u64;
        for (tp, state) in &mut self.partitions {
            let held = state.tracker.uncommitted();
            held_total += held as u64;
            let full = held >= max || state.refetch_from.is_some();
            if !state.paused && full {
                state.paused = true;
                pause.push(tp.clone());
            } else if state.paused && held <= max / 2 {
                resume.push((tp.clone(), state.resume()));
            }
        }
        self.stats.shift_buffered(self.reported.buffered, held_total);
        self.reported.buffered = held_total;
        (pause, resume)
    }

    /// Records one route's ack of a delivery in its partition's tracker.
    pub(super) fn settle(&mut self, p: &crate::subscriptions::Pending) {
        if let Some(tag) = p.replay {
            // A replayed message: its offset was committed long ago.
            self.replay_settled(tag);
            return;
        }
        if self.registry.route_config().delivery == DeliveryMode::AtMostOnce {
            // Its offset was committed before it was sent.
            Stats::bump(&self.stats.acked, 1);
            return;
        }
        let Some(state) = self.partitions.get_mut(&p.record.tp) else {
            Stats::bump(&self.stats.unknown_acks, 1);
            return;
        };
        if state.epoch != p.epoch {
            Stats::bump(&self.stats.unknown_acks, 1);
            return;
        }
        match state.tracker.ack(p.record.offset) {
            AckOutcome::Done => Stats::bump(&self.stats.acked, 1),
            AckOutcome::Unknown => Stats::bump(&self.stats.unknown_acks, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_holding(offsets: std::ops::Range<i64>) -> PartitionState {
        let mut state = PartitionState::new(PartitionTracker::new(None, Vec::new()), 1, None);
        for o in offsets {
            assert_eq!(state.admit(o, 10), Admit::Take);
            state.tracker.track(o);
        }
        state
    }

    #[test]
    fn a_record_over_the_bound_and_all_after_it_are_fetched_again() {
        let mut state = state_holding(0..10);
        assert_eq!(state.admit(10, 10), Admit::Refetch);
        assert_eq!(state.admit(11, 10), Admit::Refetch);
        assert_eq!(state.refetch_from, Some(10));
    }

    #[test]
    fn after_a_seek_back_records_fetched_before_it_wait_for_the_sought_one() {
        let mut state = state_holding(0..10);
        assert_eq!(state.admit(10, 10), Admit::Refetch);
        for o in 0..10 {
            state.tracker.ack(o);
        }
        assert_eq!(state.resume(), Some(10));
        // Fetched before the seek, still on the way: taking it would leave 10..=40 a gap.
        assert_eq!(state.admit(41, 10), Admit::Refetch);
        assert_eq!(state.refetch_from, None, "not a new bound: no second seek");
        assert_eq!(state.admit(10, 10), Admit::Take);
        assert_eq!(state.admit(11, 10), Admit::Take);
    }

    #[test]
    fn a_position_is_taken_only_while_nothing_is_to_be_fetched_again() {
        // 0..10 acked; the consumer stepped over 10 and 11 (a transaction's markers).
        let mut state = state_holding(0..10);
        for o in 0..10 {
            state.tracker.ack(o);
        }
        state.reached(12);
        assert_eq!(state.tracker.committable(), Some(12), "the markers are stepped over");
        // A record dropped at the bound: a position past it must not let the commit skip it.
        let mut state = state_holding(0..10);
        assert_eq!(state.admit(10, 10), Admit::Refetch);
        for o in 0..10 {
            state.tracker.ack(o);
        }
        state.reached(15);
        assert_eq!(state.tracker.committable(), Some(10), "10 is fetched again, not committed over");
    }

    #[test]
    fn a_stopping_route_takes_no_position() {
        use std::time::Duration;
        let settings = super::super::DispatcherSettings {
            commit_interval: Duration::from_millis(100),
            max_uncommitted: 10,
            shutdown_grace: Duration::from_secs(1),
            revoke_drain: Duration::from_secs(1),
            discovery: crate::config::DiscoveryMode::Static,
        };
        let route = crate::config::RouteConfig::new("r", &["t"]);
        let mut d = Dispatcher::new(crate::subscriptions::Registry::new(route), Default::default(), settings);
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        d.partitions.insert(tp.clone(), state_holding(0..0));
        d.stopping = true;
        // Records arriving now are dropped untracked: a position past them covers nothing delivered.
        d.on_positions(vec![(tp.clone(), 50)]);
        assert_eq!(d.partitions[&tp].tracker.committable(), None);
        d.stopping = false;
        d.on_positions(vec![(tp.clone(), 50)]);
        assert_eq!(d.partitions[&tp].tracker.committable(), Some(50));
    }

    #[test]
    fn a_resume_without_drops_seeks_nowhere_and_takes_what_comes() {
        let mut state = state_holding(0..5);
        assert_eq!(state.resume(), None);
        assert_eq!(state.admit(5, 10), Admit::Take);
        assert_eq!(state.admit(7, 10), Admit::Take, "offset gaps (compaction) are Kafka's, not ours");
    }
}
