//! Commits: acked offsets go to the consumer thread as commit points, one commit at a time;
//! at-most-once batches wait for the commit that covers them before they are sent.

use tokio::sync::oneshot;

use super::{Dispatcher, Internal};
use crate::kafka::{CommitError, KafkaCommand, TopicPartition};
use crate::offsets::CommitPoint;
use crate::stats::Stats;
use crate::subscriptions::StagedSend;

impl Dispatcher {
    /// Commits the offsets whose commit points moved, unless a commit is still under way
    /// (the next tick, or the next ack, sends what moved meanwhile). Subscribers' windows that
    /// hold acks until they are committed are freed when it lands.
    pub(super) fn commit(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        if self.committing {
            return;
        }
        let generation = self.registry.commit_started();
        let points = self.commit_points();
        if points.is_empty() {
            // Every ack so far is in what was committed already.
            self.registry.commit_landed(generation);
            return;
        }
        let Some(result) = request_commit(kafka, points.clone()) else { return };
        self.committing = true;
        self.tasks.spawn(async move {
            let ok = matches!(result.await, Ok(Ok(())));
            Internal::Committed { points, ok, generation: Some(generation) }
        });
    }

    /// Marks the at-most-once batches the registry is about to send as done and commits
    /// them, unless such a commit is already out; the batches go to their streams only when it
    /// succeeds. Committing at send time, not at receipt, means a crash loses what was being
    /// sent (at most the windows), not everything buffered.
    pub(super) fn commit_before_send(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        for send in self.registry.take_staged() {
            for p in &send.pending {
                if let Some(state) = self.current(&p.record.tp, p.epoch) {
                    state.tracker.ack(p.record.offset);
                }
            }
            self.staged.push(send);
        }
        if self.committing_before_send || self.staged.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.staged);
        // The points of their partitions (acked ranges above the commit point ride in the
        // metadata, so a takeover skips them too), sent even if a periodic commit already sent
        // the same: that commit's outcome is not known here, and nothing goes before one is.
        let mut points: Vec<(TopicPartition, CommitPoint)> = Vec::new();
        for p in sends.iter().flat_map(|s| s.pending.iter()) {
            if points.iter().any(|(tp, _)| *tp == p.record.tp) {
                continue;
            }
            if let Some(state) = self.current(&p.record.tp, p.epoch) {
                if let Some(point) = state.tracker.commit_point() {
                    state.last_commit = Some(point.clone());
                    points.push((p.record.tp.clone(), point));
                }
            }
        }
        if points.is_empty() {
            // Their partitions were revoked meanwhile: the next owner has them.
            self.drop_staged(sends);
            return;
        }
        let Some(result) = request_commit(kafka, points.clone()) else {
            return; // consumer gone: the gateway is stopping
        };
        self.committing_before_send = true;
        self.tasks.spawn(async move {
            let ok = matches!(result.await, Ok(Ok(())));
            Internal::CommittedBeforeSend { points, ok, sends }
        });
    }

    pub(super) fn drop_staged(&mut self, sends: Vec<StagedSend>) {
        let n: usize = sends.iter().map(|s| s.pending.len()).sum();
        Stats::bump(&self.stats.dropped_at_most_once, n as u64);
        for send in sends {
            self.registry.abandon_staged(send);
        }
    }

    /// Forgets that these points were sent (their commit failed), so the next commit sends
    /// them again even if no new ack moves them.
    pub(super) fn forget_sent(&mut self, points: Vec<(TopicPartition, CommitPoint)>) {
        for (tp, point) in points {
            if let Some(state) = self.partitions.get_mut(&tp) {
                if state.last_commit.as_ref() == Some(&point) {
                    state.last_commit = None;
                }
            }
        }
    }

    /// A commit of acked offsets finished: windows held for it are freed, or its points are
    /// sent again next time.
    pub(super) fn on_committed(
        &mut self,
        points: Vec<(TopicPartition, CommitPoint)>,
        ok: bool,
        generation: Option<u64>,
    ) {
        self.committing = false;
        if ok {
            self.committed_landed(&points);
            if let Some(generation) = generation {
                self.registry.commit_landed(generation);
            }
            return;
        }
        self.forget_sent(points);
    }

    /// The commit covering staged at-most-once batches finished: on success they go to their
    /// streams; on failure nothing was sent, so nothing is lost: they wait for the next commit.
    pub(super) fn on_committed_before_send(
        &mut self,
        points: Vec<(TopicPartition, CommitPoint)>,
        ok: bool,
        sends: Vec<StagedSend>,
    ) {
        self.committing_before_send = false;
        if ok {
            self.committed_landed(&points);
            for send in sends {
                self.registry.release_staged(send);
            }
        } else {
            self.forget_sent(points);
            let later = std::mem::take(&mut self.staged);
            self.staged = sends;
            self.staged.extend(later);
        }
    }
}

impl Dispatcher {
    /// Notes where landed commits left their partitions (operator status).
    fn committed_landed(&mut self, points: &[(TopicPartition, CommitPoint)]) {
        for (tp, point) in points {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.committed = state.committed.max(Some(point.offset));
            }
        }
    }
}

/// Asks the consumer thread to commit `points`; the receiver hears the outcome. None when the
/// consumer is gone (the gateway is stopping).
pub(super) fn request_commit(
    kafka: &std::sync::mpsc::Sender<KafkaCommand>,
    points: Vec<(TopicPartition, CommitPoint)>,
) -> Option<oneshot::Receiver<Result<(), CommitError>>> {
    let (done, result) = oneshot::channel();
    kafka.send(KafkaCommand::Commit { points, done: Some(done) }).ok()?;
    Some(result)
}
