//! Acks batched by count and time: one `Ack` frame per `max` deliveries or per `interval`,
//! whichever comes first, so a busy stream spends few frames and a quiet one acks promptly.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct AckBatch {
    ids: Vec<u64>,
    max: usize,
    interval: Duration,
    /// When the oldest pending ack must be sent.
    due: Option<Instant>,
}

impl AckBatch {
    pub(crate) fn new(max: usize, interval: Duration) -> Self {
        Self { ids: Vec::new(), max: max.max(1), interval, due: None }
    }

    /// Adds an ack; returns the batch when it is full.
    pub(crate) fn push(&mut self, ack_id: u64, now: Instant) -> Option<Vec<u64>> {
        if self.ids.is_empty() {
            self.due = Some(now + self.interval);
        }
        self.ids.push(ack_id);
        (self.ids.len() >= self.max).then(|| self.take()).flatten()
    }

    /// When the pending acks must go out, if any are pending.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The pending acks, if any.
    pub(crate) fn take(&mut self) -> Option<Vec<u64>> {
        self.due = None;
        (!self.ids.is_empty()).then(|| std::mem::take(&mut self.ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_goes_out_at_once_and_a_partial_one_when_due() {
        let now = Instant::now();
        let mut batch = AckBatch::new(3, Duration::from_millis(10));
        assert_eq!(batch.due(), None);
        assert_eq!(batch.push(1, now), None);
        assert_eq!(batch.due(), Some(now + Duration::from_millis(10)), "due from the oldest ack");
        assert_eq!(batch.push(2, now + Duration::from_millis(5)), None);
        assert_eq!(batch.due(), Some(now + Duration::from_millis(10)));
        assert_eq!(batch.push(3, now), Some(vec![1, 2, 3]));
        assert_eq!((batch.due(), batch.take()), (None, None));
        batch.push(4, now);
        assert_eq!(batch.take(), Some(vec![4]));
        assert_eq!(batch.due(), None);
    }
}
