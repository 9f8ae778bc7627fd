//! Partition state and flow control: what the route holds of each assigned partition (its
//! offset tracker, pause state, last commit), whether a record coming in is taken, and the
//! pause/resume decisions that bound memory. Acks land here; commit points go on to the
//! commits ([`super::commits`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::status::PartitionSnapshot;
use crate::kafka::{Assignment, CommitOutcome, Record, TopicPartition};
use crate::offsets::{AckOutcome, CommitPoint, PartitionTracker, Track};

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
    /// They are dropped until the sought record itself arrives or the consumer says the seek
    /// was done ([`crate::kafka::KafkaEvent::Sought`]): when the sought offset is gone
    /// (compaction, retention, DeleteRecords) no record at or below it ever comes.
    pub(super) refetching: Option<i64>,
    /// The group's committed offset: found at assignment, then each commit that landed.
    pub(super) committed: Option<i64>,
    /// Listed in [`Partitions`]' flow-control and commit work lists (see [`Touched`]).
    touched: Touched,
    /// Records held as the last flow-control pass counted them (its share of the route's total).
    counted: usize,
    /// The offset holding the partition's commits back while later ones are acked, and since
    /// when (see [`super::head_of_line`]).
    pub(super) blocked: Option<(i64, Instant)>,
    /// Messages moved off the head of this partition since it was assigned.
    pub(super) moved: u64,
}

/// Which of [`Partitions`]' work lists a partition is on: each is drained by the pass that
/// needs it, so a pass costs the partitions that changed since the last one, not all of them.
#[derive(Debug, Default, Clone, Copy)]
struct Touched {
    flow: bool,
    commit: bool,
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
        Self {
            tracker,
            epoch,
            paused: false,
            last_commit: None,
            refetch_from: None,
            refetching: None,
            committed,
            touched: Touched::default(),
            counted: 0,
            blocked: None,
            moved: 0,
        }
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

    /// The consumer's fetch position went back to where the resume asked: what arrives from
    /// now on was fetched from there, whatever its first offset.
    pub(super) fn sought(&mut self) {
        self.refetching = None;
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

/// What became of a record that arrived for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intake {
    /// New: route it; `epoch` is its partition's assignment.
    New { epoch: u64 },
    /// Dropped unseen: it is fetched again later.
    Refetch,
    /// Recorded as acked by a previous owner: not delivered.
    AlreadyAcked,
    /// Kafka re-sent it: ignored.
    Stale,
    /// Not (or no longer) ours: a batch put together while its partition was being revoked.
    NotOurs,
    /// Below what the partition already committed: its log went back (see
    /// [`Track::Behind`]); `from` is the commit point it had.
    WentBack { from: i64 },
}

/// Where the flow-control pass left the partitions.
#[derive(Debug, Default)]
pub(super) struct FlowControl {
    /// Partitions to pause (buffer full).
    pub(super) pause: Vec<TopicPartition>,
    /// Partitions to resume (back under half), with the offset to fetch again from if records
    /// were dropped at the bound.
    pub(super) resume: Vec<(TopicPartition, Option<i64>)>,
    /// Records held un-committed, all partitions.
    pub(super) held: u64,
}

/// The route's assigned partitions, each under the assignment epoch it was given: acks and
/// verdicts of an older epoch (the partition was revoked meanwhile) find nothing.
///
/// The dispatcher runs flow control after every event and computes commit points whenever a
/// commit may go; both visit only the partitions an event touched since their last pass (a
/// record taken, an ack, a position, an assignment), so a route's work per event follows the
/// event, not the number of partitions it owns.
pub(super) struct Partitions {
    states: HashMap<TopicPartition, PartitionState, xxhash_rust::xxh3::Xxh3Builder>,
    next_epoch: u64,
    /// Partitions whose held count or pause state may have changed since the last flow control.
    flow_touched: Vec<TopicPartition>,
    /// Partitions whose commit point may have moved since the last [`Partitions::commit_points`].
    commit_touched: Vec<TopicPartition>,
    /// Records held, all partitions, as their last flow-control pass counted them.
    held: u64,
}

/// Puts `tp` on both work lists, once.
fn touch(
    state: &mut PartitionState,
    tp: &TopicPartition,
    flow: &mut Vec<TopicPartition>,
    commit: &mut Vec<TopicPartition>,
) {
    if !state.touched.flow {
        state.touched.flow = true;
        flow.push(tp.clone());
    }
    if !state.touched.commit {
        state.touched.commit = true;
        commit.push(tp.clone());
    }
}

impl Partitions {
    pub(super) fn new() -> Self {
        Self {
            states: HashMap::default(),
            next_epoch: 1,
            flow_touched: Vec::new(),
            commit_touched: Vec::new(),
            held: 0,
        }
    }

    /// The state of `tp` and the work lists, for an event that changed it.
    fn touched(&mut self, tp: &TopicPartition) -> Option<&mut PartitionState> {
        let state = self.states.get_mut(tp)?;
        touch(state, tp, &mut self.flow_touched, &mut self.commit_touched);
        Some(state)
    }

    /// Partitions assigned: each starts from the group's committed offset, skipping what the
    /// previous owner recorded as acked above it.
    pub(super) fn assign(&mut self, assignments: Vec<Assignment>) {
        for a in assignments {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let tracker = PartitionTracker::new(a.committed, a.acked_above);
            let mut state = PartitionState::new(tracker, epoch, a.committed);
            touch(&mut state, &a.tp, &mut self.flow_touched, &mut self.commit_touched);
            if let Some(before) = self.states.insert(a.tp, state) {
                self.held -= before.counted as u64;
            }
        }
    }

    /// Whether a record is taken with at most `max` offsets held per partition, and tracked if
    /// so.
    pub(super) fn take(&mut self, record: &Record, max: usize) -> Intake {
        let Some(state) = self.touched(&record.tp) else { return Intake::NotOurs };
        if state.admit(record.offset, max) == Admit::Refetch {
            return Intake::Refetch;
        }
        match state.tracker.track(record.offset) {
            Track::New => Intake::New { epoch: state.epoch },
            Track::AlreadyAcked => Intake::AlreadyAcked,
            Track::Stale => Intake::Stale,
            Track::Behind => Intake::WentBack { from: state.tracker.committable().unwrap_or(record.offset) },
        }
    }

    /// Starts `tp` over as a new assignment with nothing committed: its log went back, so what
    /// it held and its commit point belong to a log that is gone. Acks of the old epoch find
    /// nothing; a pause stays (the consumer still has it).
    pub(super) fn restart(&mut self, tp: &TopicPartition) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        if let Some(state) = self.touched(tp) {
            let (paused, touched, counted) = (state.paused, state.touched, state.counted);
            *state = PartitionState::new(PartitionTracker::new(None, Vec::new()), epoch, None);
            (state.paused, state.touched, state.counted) = (paused, touched, counted);
        }
    }

    /// Records the ack of `offset` if its partition is still the assignment `epoch` names;
    /// None when it is not (revoked since).
    pub(super) fn ack(&mut self, tp: &TopicPartition, epoch: u64, offset: i64) -> Option<AckOutcome> {
        self.current_touched(tp, epoch).map(|state| state.tracker.ack(offset))
    }

    /// The partition's commit point now, noted as sent, if it is still the assignment `epoch`
    /// names.
    pub(super) fn point_to_send(&mut self, tp: &TopicPartition, epoch: u64) -> Option<CommitPoint> {
        let state = self.current(tp, epoch)?;
        let point = state.tracker.commit_point()?;
        state.last_commit = Some(point.clone());
        Some(point)
    }

    /// Whether `tp` is still the assignment `epoch` names (not revoked since).
    pub(super) fn is_current(&self, tp: &TopicPartition, epoch: u64) -> bool {
        self.states.get(tp).is_some_and(|s| s.epoch == epoch)
    }

    fn current(&mut self, tp: &TopicPartition, epoch: u64) -> Option<&mut PartitionState> {
        self.states.get_mut(tp).filter(|s| s.epoch == epoch)
    }

    /// [`Partitions::current`], put on the work lists: an ack changed it.
    fn current_touched(&mut self, tp: &TopicPartition, epoch: u64) -> Option<&mut PartitionState> {
        let state = self.states.get_mut(tp).filter(|s| s.epoch == epoch)?;
        touch(state, tp, &mut self.flow_touched, &mut self.commit_touched);
        Some(state)
    }

    /// The consumer sought `tp` back (see [`PartitionState::sought`]).
    pub(super) fn sought(&mut self, tp: &TopicPartition) {
        if let Some(state) = self.states.get_mut(tp) {
            state.sought();
        }
    }

    /// The consumer's positions: where nothing is owed, commits may reach them.
    pub(super) fn reached(&mut self, positions: Vec<(TopicPartition, i64)>) {
        for (tp, position) in positions {
            if let Some(state) = self.touched(&tp) {
                state.reached(position);
            }
        }
    }

    /// Forgets the partitions and returns their final commit points.
    pub(super) fn release(&mut self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, CommitPoint)> {
        let mut points = Vec::new();
        for tp in partitions {
            if let Some(state) = self.states.remove(tp) {
                self.held -= state.counted as u64;
                // Even if the same point was sent before: that commit may not have landed.
                if let Some(point) = state.tracker.commit_point() {
                    points.push((tp.clone(), point));
                }
            }
        }
        points
    }

    /// Commit points that moved since the last commit.
    pub(super) fn commit_points(&mut self) -> Vec<(TopicPartition, CommitPoint)> {
        let mut points = Vec::new();
        for tp in std::mem::take(&mut self.commit_touched) {
            // Released since it was touched: its final point went with the release.
            let Some(state) = self.states.get_mut(&tp) else { continue };
            state.touched.commit = false;
            if let Some(point) = state.tracker.commit_point() {
                if state.last_commit.as_ref() != Some(&point) {
                    state.last_commit = Some(point.clone());
                    points.push((tp, point));
                }
            }
        }
        points
    }

    /// Forgets that these points were sent (their commit failed), so the next commit sends
    /// them again even if no new ack moves them.
    pub(super) fn forget_sent(&mut self, points: Vec<(TopicPartition, CommitPoint)>) {
        for (tp, point) in points {
            if let Some(state) = self.touched(&tp) {
                if state.last_commit.as_ref() == Some(&point) {
                    state.last_commit = None;
                }
            }
        }
    }

    /// A commit of `points` ended as `outcome` says: the partitions that landed are noted, the
    /// others' points are sent again next time.
    pub(super) fn settle(&mut self, points: Vec<(TopicPartition, CommitPoint)>, outcome: &CommitOutcome) {
        let (landed, refused): (Vec<_>, Vec<_>) = points.into_iter().partition(|(tp, _)| outcome.landed.contains(tp));
        self.landed(&landed);
        self.forget_sent(refused);
    }

    /// Every partition's commit point, sent before or not (the final commit of a stop).
    pub(super) fn final_points(&self) -> Vec<(TopicPartition, CommitPoint)> {
        self.states.iter().filter_map(|(tp, s)| s.tracker.commit_point().map(|p| (tp.clone(), p))).collect()
    }

    /// Notes where landed commits left their partitions (operator status).
    pub(super) fn landed(&mut self, points: &[(TopicPartition, CommitPoint)]) {
        for (tp, point) in points {
            if let Some(state) = self.states.get_mut(tp) {
                state.committed = state.committed.max(Some(point.offset));
            }
        }
    }

    /// Partitions to pause (buffer of `max` full) and to resume (back under half).
    pub(super) fn flow_control(&mut self, max: usize) -> FlowControl {
        let mut out = FlowControl::default();
        for tp in std::mem::take(&mut self.flow_touched) {
            // Released since it was touched: nothing to pause or resume, its count went with it.
            let Some(state) = self.states.get_mut(&tp) else { continue };
            state.touched.flow = false;
            let held = state.tracker.uncommitted();
            self.held = self.held + held as u64 - state.counted as u64;
            state.counted = held;
            let full = held >= max || state.refetch_from.is_some();
            if !state.paused && full {
                state.paused = true;
                out.pause.push(tp);
            } else if state.paused && held <= max / 2 {
                out.resume.push((tp, state.resume()));
            }
        }
        out.held = self.held;
        out
    }

    /// Every assigned partition as the operator sees it, in topic and partition order.
    pub(super) fn snapshot(&self) -> Vec<PartitionSnapshot> {
        let mut partitions: Vec<PartitionSnapshot> = self
            .states
            .iter()
            .map(|(tp, s)| PartitionSnapshot {
                tp: tp.clone(),
                committed: s.committed,
                paused: s.paused,
                buffered: s.tracker.uncommitted(),
                head_of_line_moved: s.moved,
            })
            .collect();
        partitions.sort_by(|a, b| (&a.tp.topic, a.tp.partition).cmp(&(&b.tp.topic, b.tp.partition)));
        partitions
    }

    /// Partitions whose head of line has held their commits back for `after` as of `now`:
    /// (partition, offset, assignment epoch). Follows every partition's head (a pass over the
    /// assigned partitions, made on the commit tick, not per record).
    pub(super) fn stuck_heads(&mut self, now: Instant, after: Duration) -> Vec<(TopicPartition, i64, u64)> {
        let mut stuck = Vec::new();
        for (tp, s) in &mut self.states {
            let (blocked, due) = super::head_of_line::follow(s.tracker.head_of_line(), s.blocked, now, after);
            s.blocked = blocked;
            if due {
                stuck.push((tp.clone(), blocked.map_or(0, |(offset, _)| offset), s.epoch));
            }
        }
        stuck
    }

    /// A message of `tp` was moved off its head: counted, and its wait starts again for the next.
    pub(super) fn moved_head(&mut self, tp: &TopicPartition) {
        if let Some(s) = self.states.get_mut(tp) {
            s.moved += 1;
            s.blocked = None;
        }
    }

    /// The head of `tp` was not one to move: the wait for it starts again.
    pub(super) fn wait_again(&mut self, tp: &TopicPartition) {
        if let Some(s) = self.states.get_mut(tp) {
            s.blocked = None;
        }
    }

    /// How many partitions the next flow-control pass and the next commit-point pass visit.
    #[cfg(test)]
    fn work(&self) -> (usize, usize) {
        (self.flow_touched.len(), self.commit_touched.len())
    }

    /// What may be committed of `tp` now, if it is assigned.
    #[cfg(test)]
    pub(super) fn committable(&self, tp: &TopicPartition) -> Option<i64> {
        self.states.get(tp).and_then(|s| s.tracker.committable())
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
    fn once_the_seek_is_done_the_partition_goes_on_even_if_the_sought_record_is_gone() {
        let mut state = state_holding(0..10);
        assert_eq!(state.admit(10, 10), Admit::Refetch);
        for o in 0..10 {
            state.tracker.ack(o);
        }
        assert_eq!(state.resume(), Some(10));
        assert_eq!(state.admit(41, 10), Admit::Refetch, "fetched before the seek");
        // 10..=99 were deleted meanwhile: the consumer's seek lands on 100.
        state.sought();
        assert_eq!(state.admit(100, 10), Admit::Take);
        assert_eq!(state.tracker.track(100), Track::New);
        state.tracker.ack(100);
        assert_eq!(state.tracker.committable(), Some(101), "the deleted offsets are stepped over");
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

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition { topic: "t".into(), partition }
    }

    fn record(partition: i32, offset: i64) -> Record {
        Record { tp: tp(partition), offset, key: None, value: None, headers: vec![], timestamp_ms: None }
    }

    #[test]
    fn records_are_taken_under_their_assignment_and_acks_of_an_old_one_find_nothing() {
        let mut partitions = Partitions::new();
        assert_eq!(partitions.take(&record(0, 0), 10), Intake::NotOurs);
        partitions.assign(vec![Assignment { tp: tp(0), committed: Some(5), acked_above: vec![(7, 7)] }]);
        assert_eq!(partitions.take(&record(0, 5), 10), Intake::New { epoch: 1 });
        assert_eq!(partitions.take(&record(0, 5), 10), Intake::Stale);
        assert_eq!(partitions.take(&record(0, 7), 10), Intake::AlreadyAcked);
        assert_eq!(partitions.ack(&tp(0), 2, 5), None, "another assignment's ack");
        assert_eq!(partitions.ack(&tp(0), 1, 5), Some(AckOutcome::Done));
        let points = partitions.commit_points();
        assert_eq!(points.iter().map(|(_, p)| p.offset).collect::<Vec<_>>(), vec![8]);
        assert!(partitions.commit_points().is_empty(), "sent already");
        partitions.forget_sent(points.clone());
        assert_eq!(partitions.commit_points(), points, "a failed commit is sent again");
        partitions.landed(&points);
        assert_eq!(partitions.snapshot()[0].committed, Some(8));
        assert_eq!(partitions.release(&[tp(0)]), points, "the final point, even if sent before");
        assert!(partitions.snapshot().is_empty());
    }

    #[test]
    fn a_full_partition_pauses_and_resumes_under_half_from_where_it_dropped() {
        let mut partitions = Partitions::new();
        partitions.assign(vec![Assignment { tp: tp(0), committed: None, acked_above: vec![] }]);
        for o in 0..4 {
            assert!(matches!(partitions.take(&record(0, o), 4), Intake::New { .. }));
        }
        assert_eq!(partitions.take(&record(0, 4), 4), Intake::Refetch);
        let flow = partitions.flow_control(4);
        assert_eq!((flow.pause, flow.held), (vec![tp(0)], 4));
        for o in 0..3 {
            partitions.ack(&tp(0), 1, o);
        }
        let flow = partitions.flow_control(4);
        assert_eq!(flow.resume, vec![(tp(0), Some(4))]);
    }

    #[test]
    fn each_pass_visits_only_the_partitions_touched_since_the_last_and_the_total_held_follows() {
        let mut partitions = Partitions::new();
        let assign = |p| Assignment { tp: tp(p), committed: None, acked_above: vec![] };
        partitions.assign((0..100).map(assign).collect());
        assert_eq!(partitions.work(), (100, 100), "a new assignment is looked at once");
        assert_eq!(partitions.flow_control(4).held, 0);
        assert!(partitions.commit_points().is_empty(), "nothing acked, nothing committed yet");
        assert_eq!(partitions.work(), (0, 0));

        for o in 0..4 {
            partitions.take(&record(7, o), 4);
        }
        partitions.take(&record(9, 0), 4);
        assert_eq!(partitions.work(), (2, 2), "two partitions took records");
        let flow = partitions.flow_control(4);
        assert_eq!((flow.pause, flow.held), (vec![tp(7)], 5));
        let again = partitions.flow_control(4);
        assert_eq!((again.pause.len(), again.resume.len(), again.held), (0, 0, 5), "no event, no change");

        for o in 0..3 {
            partitions.ack(&tp(7), partitions.states[&tp(7)].epoch, o);
        }
        assert_eq!(partitions.work(), (1, 2), "the acks touched one partition; 9 still awaits a commit pass");
        let flow = partitions.flow_control(4);
        assert_eq!((flow.resume, flow.held), (vec![(tp(7), None)], 2));
        let points = partitions.commit_points();
        assert_eq!(points.iter().map(|(tp, p)| (tp.partition, p.offset)).collect::<Vec<_>>(), vec![(7, 3), (9, 0)]);
        assert!(partitions.commit_points().is_empty(), "sent, and nothing touched since");

        partitions.forget_sent(points.clone());
        assert_eq!(partitions.commit_points(), points, "a failed commit's point goes again");
        assert_eq!(partitions.release(&[tp(7)]).len(), 1);
        assert_eq!(partitions.flow_control(4).held, 1, "a released partition's records leave the total");
    }

    #[test]
    fn a_resume_without_drops_seeks_nowhere_and_takes_what_comes() {
        let mut state = state_holding(0..5);
        assert_eq!(state.resume(), None);
        assert_eq!(state.admit(5, 10), Admit::Take);
        assert_eq!(state.admit(7, 10), Admit::Take, "offset gaps (compaction) are Kafka's, not ours");
    }
}
