//! At-most-once staging: batches taken out of the queues wait here until the commit that
//! covers their offsets lands, then go to their streams; what fails after that is dropped,
//! never redelivered, and waits here for the dispatcher to count it.

use super::{Outgoing, Pending, SessionId};

/// A batch for an at-most-once session, held back until its offsets are committed.
#[derive(Debug)]
pub struct StagedSend {
    pub(super) session: SessionId,
    pub(super) deliveries: Vec<Outgoing>,
    pub pending: Vec<Pending>,
}

/// What an at-most-once route holds for the dispatcher: batches to commit before they are
/// sent, and deliveries lost for good.
#[derive(Debug, Default)]
pub(super) struct Staging {
    /// At-most-once batches taken out of the queues, to be sent once committed.
    staged: Vec<StagedSend>,
    /// At-most-once deliveries that failed or were lost with their stream: never redelivered;
    /// the dispatcher takes them to count them and free their partition's buffer.
    dropped: Vec<Pending>,
}

impl Staging {
    /// Holds a batch until the commit that covers it.
    pub(super) fn stage(&mut self, send: StagedSend) {
        self.staged.push(send);
    }

    /// Batches staged since the last call.
    pub(super) fn take_staged(&mut self) -> Vec<StagedSend> {
        std::mem::take(&mut self.staged)
    }

    /// A delivery already committed failed or was lost: it is never sent again.
    pub(super) fn lose(&mut self, pending: Pending) {
        self.dropped.push(pending);
    }

    /// Deliveries lost since the last call.
    pub(super) fn take_dropped(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::record;
    use super::*;

    fn pending(offset: i64) -> Pending {
        Pending::new(record(0, offset, "k"), 1, 1, None, 7, None)
    }

    #[test]
    fn staged_batches_and_lost_deliveries_are_each_taken_once() {
        let mut staging = Staging::default();
        staging.stage(StagedSend {
            session: SessionId(1),
            deliveries: Vec::new(),
            pending: vec![pending(0), pending(1)],
        });
        staging.stage(StagedSend { session: SessionId(2), deliveries: Vec::new(), pending: vec![pending(2)] });
        staging.lose(pending(3));
        let staged = staging.take_staged();
        assert_eq!(
            staged.iter().map(|s| s.session).collect::<Vec<_>>(),
            vec![SessionId(1), SessionId(2)],
            "in the order staged"
        );
        assert!(staging.take_staged().is_empty());
        assert_eq!(staging.take_dropped().iter().map(|p| p.record.offset).collect::<Vec<_>>(), vec![3]);
        assert!(staging.take_dropped().is_empty());
    }
}
