//! Batching: what a session's window lets out of its queue goes to its stream in batches
//! bounded in bytes.

use super::{Outgoing, Pending};

/// Payload bytes per `SubscribeResponse`: well under gRPC's customary 4 MiB receive limit, so
/// a client with default settings can read every batch (a single larger message still goes
/// alone in its own response).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Deliveries of one response, with their messages when they are kept for at-most-once
/// staging.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) deliveries: Vec<Outgoing>,
    pub(super) pending: Vec<Pending>,
}

/// Cuts one session's deliveries, in order, into batches of at most [`MAX_BATCH_BYTES`].
#[derive(Debug, Default)]
pub(super) struct Batcher {
    done: Vec<Batch>,
    open: Batch,
    bytes: usize,
}

impl Batcher {
    /// Adds a delivery, and its message when the batch is to be staged.
    pub(super) fn push(&mut self, delivery: Outgoing, pending: Option<Pending>) {
        let size = delivery.record.size();
        if !self.open.deliveries.is_empty() && self.bytes + size > MAX_BATCH_BYTES {
            self.done.push(std::mem::take(&mut self.open));
            self.bytes = 0;
        }
        self.bytes += size;
        self.open.deliveries.push(delivery);
        self.open.pending.extend(pending);
    }

    /// The batches, in order.
    pub(super) fn finish(mut self) -> Vec<Batch> {
        self.done.push(self.open);
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{record, Bytes};
    use super::*;
    use crate::subscriptions::AckId;

    fn outgoing(offset: i64, bytes: usize) -> Outgoing {
        let mut r = (*record(0, offset, "k")).clone();
        r.value = Some(Bytes::from(vec![0u8; bytes]));
        Outgoing {
            record: Arc::new(r),
            attempt: 1,
            cohort: Arc::from(""),
            ack_id: AckId(1),
            idempotency_key: None,
            replay: None,
        }
    }

    #[test]
    fn a_batch_ends_before_the_delivery_that_would_pass_the_bound() {
        let mut batcher = Batcher::default();
        batcher.push(outgoing(0, 600 * 1024), None);
        batcher.push(outgoing(1, 300 * 1024), None);
        batcher.push(outgoing(2, 300 * 1024), None);
        batcher.push(outgoing(3, 2 * MAX_BATCH_BYTES), None);
        batcher.push(outgoing(4, 10), None);
        let offsets: Vec<Vec<i64>> =
            batcher.finish().iter().map(|b| b.deliveries.iter().map(|d| d.record.offset).collect()).collect();
        assert_eq!(offsets, vec![vec![0, 1], vec![2], vec![3], vec![4]], "a larger message goes alone");
    }

    #[test]
    fn staged_messages_follow_their_deliveries_into_the_batch() {
        let mut batcher = Batcher::default();
        let pending = |o| Pending::new(record(0, o, "k"), 1, 1, None, 7, None);
        batcher.push(outgoing(0, 900 * 1024), Some(pending(0)));
        batcher.push(outgoing(1, 900 * 1024), Some(pending(1)));
        let batches = batcher.finish();
        let kept: Vec<Vec<i64>> = batches.iter().map(|b| b.pending.iter().map(|p| p.record.offset).collect()).collect();
        assert_eq!(kept, vec![vec![0], vec![1]]);
    }
}
