//! Commits: acked offsets go to the consumer thread as commit points, one commit at a time;
//! at-most-once batches wait for the commit that covers them before they are sent.

use tokio::sync::oneshot;

use crate::kafka::{CommitOutcome, KafkaCommand, TopicPartition};
use crate::offsets::CommitPoint;

/// Which commits are out, and the at-most-once batches (`S`) waiting for one: one commit of
/// acked offsets at a time (the next tick, or the next ack, sends what moved meanwhile), and
/// one commit before sending at a time.
#[derive(Debug)]
pub(super) struct CommitScheduler<S> {
    /// A commit of acked offsets is under way (one at a time).
    committing: bool,
    /// At-most-once batches taken from the registry, waiting for the commit that covers them.
    staged: Vec<S>,
    /// A commit for at-most-once batches is under way.
    committing_before_send: bool,
}

impl<S> Default for CommitScheduler<S> {
    fn default() -> Self {
        Self { committing: false, staged: Vec::new(), committing_before_send: false }
    }
}

impl<S> CommitScheduler<S> {
    /// Whether a commit of acked offsets is under way.
    pub(super) fn committing(&self) -> bool {
        self.committing
    }

    /// A commit of acked offsets went out.
    pub(super) fn commit_sent(&mut self) {
        self.committing = true;
    }

    /// The commit of acked offsets finished, whatever its outcome.
    pub(super) fn commit_finished(&mut self) {
        self.committing = false;
    }

    /// An at-most-once batch waits for the commit that covers it.
    pub(super) fn stage(&mut self, send: S) {
        self.staged.push(send);
    }

    /// The batches to commit before sending now: all that wait, unless such a commit is out
    /// already (or none waits).
    pub(super) fn take_for_commit(&mut self) -> Option<Vec<S>> {
        if self.committing_before_send || self.staged.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.staged))
    }

    /// The commit for the batches taken last went out.
    pub(super) fn before_send_sent(&mut self) {
        self.committing_before_send = true;
    }

    /// The commit covering `sends` finished: on success they are returned to be sent; on
    /// failure nothing was sent, so nothing is lost: they wait for the next commit, ahead of
    /// the batches staged meanwhile.
    pub(super) fn before_send_finished(&mut self, ok: bool, sends: Vec<S>) -> Vec<S> {
        self.committing_before_send = false;
        if ok {
            return sends;
        }
        let later = std::mem::take(&mut self.staged);
        self.staged = sends;
        self.staged.extend(later);
        Vec::new()
    }
}

/// Asks the consumer thread to commit `points`; the receiver hears the outcome. None when the
/// consumer is gone (the gateway is stopping).
pub(super) fn request_commit(
    kafka: &std::sync::mpsc::Sender<KafkaCommand>,
    points: Vec<(TopicPartition, CommitPoint)>,
) -> Option<oneshot::Receiver<CommitOutcome>> {
    let (done, result) = oneshot::channel();
    kafka.send(KafkaCommand::Commit { points, done: Some(done) }).ok()?;
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_commit_of_acked_offsets_at_a_time() {
        let mut commits = CommitScheduler::<u32>::default();
        assert!(!commits.committing());
        commits.commit_sent();
        assert!(commits.committing());
        commits.commit_finished();
        assert!(!commits.committing());
    }

    #[test]
    fn staged_batches_go_once_their_commit_lands_and_wait_in_front_when_it_fails() {
        let mut commits = CommitScheduler::default();
        assert_eq!(commits.take_for_commit(), None, "nothing staged");
        commits.stage(1);
        commits.stage(2);
        let first = commits.take_for_commit().expect("staged");
        commits.before_send_sent();
        commits.stage(3);
        assert_eq!(commits.take_for_commit(), None, "one commit before sending at a time");
        assert!(commits.before_send_finished(false, first).is_empty(), "a failed commit sends nothing");
        let again = commits.take_for_commit().expect("waiting again");
        assert_eq!(again, vec![1, 2, 3], "the failed batches first");
        commits.before_send_sent();
        assert_eq!(commits.before_send_finished(true, again), vec![1, 2, 3]);
        assert_eq!(commits.take_for_commit(), None);
    }
}
