//! The batches of an operator's replay under way: how many of each batch's records are still
//! to settle, and whom to tell when none are.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::subscriptions::ReplayTag;

/// Replay batches under way, by batch number.
pub(super) struct ReplayBatches {
    /// Records left to settle, and whom to tell when none are.
    batches: HashMap<u64, (usize, oneshot::Sender<()>)>,
    next: u64,
}

impl ReplayBatches {
    pub(super) fn new() -> Self {
        Self { batches: HashMap::new(), next: 1 }
    }

    /// A batch of `records` records starts: its number, to tag them with. An empty batch is
    /// done at once (None).
    pub(super) fn start(&mut self, records: usize, done: oneshot::Sender<()>) -> Option<u64> {
        if records == 0 {
            let _ = done.send(());
            return None;
        }
        let batch = self.next;
        self.next += 1;
        self.batches.insert(batch, (records, done));
        Some(batch)
    }

    /// One replayed message is settled (acked or dead-lettered).
    pub(super) fn settled(&mut self, tag: ReplayTag) {
        if let Some((left, _)) = self.batches.get_mut(&tag.batch) {
            *left -= 1;
            if *left == 0 {
                if let Some((_, done)) = self.batches.remove(&tag.batch) {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_done_when_its_last_record_settles() {
        let mut replays = ReplayBatches::new();
        let (done, mut heard) = oneshot::channel();
        let batch = replays.start(2, done).expect("not empty");
        let tag = ReplayTag { replay: 9, batch };
        replays.settled(tag);
        assert!(heard.try_recv().is_err(), "one record still to settle");
        replays.settled(tag);
        assert_eq!(heard.try_recv(), Ok(()));
        replays.settled(tag); // a late settle of a finished batch is ignored
    }

    #[test]
    fn an_empty_batch_is_done_at_once() {
        let mut replays = ReplayBatches::new();
        let (done, mut heard) = oneshot::channel();
        assert_eq!(replays.start(0, done), None);
        assert_eq!(heard.try_recv(), Ok(()));
    }
}
