//! At-most-once staging: batches taken out of the queues wait here until the commit that
//! covers their offsets lands, then go to their streams; what fails after that is dropped,
//! never redelivered.

use super::*;

/// A batch for an at-most-once session, held back until its offsets are committed.
#[derive(Debug)]
pub struct StagedSend {
    pub(super) session: SessionId,
    pub(super) deliveries: Vec<Outgoing>,
    pub pending: Vec<Pending>,
}

impl Registry {
    /// At-most-once batches to commit before they are sent.
    pub fn take_staged(&mut self) -> Vec<StagedSend> {
        std::mem::take(&mut self.staged)
    }

    /// Sends a staged batch whose offsets are now committed, if its stream is still there.
    pub fn release_staged(&mut self, send: StagedSend) {
        // A session that ended meanwhile counted these among its dropped deliveries.
        if let Some(s) = self.sessions.get(&send.session) {
            let _ = s.outbox.send(SessionMessage::Deliveries(send.deliveries));
        }
    }

    /// Gives up on a staged batch whose partition went away before it was committed: its
    /// in-flight places are freed, nothing is sent.
    pub fn abandon_staged(&mut self, send: StagedSend) {
        let Some(s) = self.sessions.get_mut(&send.session) else { return };
        for d in &send.deliveries {
            s.in_flight.remove(&d.ack_id);
        }
        for p in &send.pending {
            self.release_key(p.hash);
        }
        self.dirty.insert(send.session);
        self.close_if_drained(send.session);
    }

    /// At-most-once deliveries dropped since the last call.
    pub fn take_dropped(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn at_most_once_batches_wait_for_their_commit_and_failures_are_never_redelivered() {
        let mut config = retrying_route(5, 5, None);
        config.delivery = DeliveryMode::AtMostOnce;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..3 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "nothing goes before its commit");
        let staged = reg.take_staged();
        assert_eq!(staged.iter().map(|s| s.pending.len()).sum::<usize>(), 3);
        for send in staged {
            reg.release_staged(send);
        }
        assert_eq!(received(&mut a.outbox).len(), 3);
        assert!(reg.nack(a.session, reg.handle(a.session, "t/0/0"), Failure::retry("x")));
        assert_eq!(reg.expire(later(3_600)), 2);
        reg.release_due(later(7_200));
        reg.flush();
        assert!(reg.take_staged().is_empty() && received(&mut a.outbox).is_empty(), "never redelivered");
        assert_eq!(reg.take_dropped().len(), 3);
        assert_eq!(reg.delayed(), 0);
    }
}
