//! Batching: what each session's window lets out of its queue goes to its stream in batches
//! bounded in bytes, each delivery stamped with its ack deadline.

use super::*;

/// Payload bytes per `SubscribeResponse`: well under gRPC's customary 4 MiB receive limit, so
/// a client with default settings can read every batch (a single larger message still goes
/// alone in its own response).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl Registry {
    /// Sends what the windows allow to every session that may have room, in batches of at
    /// most [`MAX_BATCH_BYTES`].
    pub fn flush(&mut self) {
        if self.paused {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if s.draining {
                continue;
            }
            let room = (s.window as usize).saturating_sub(s.in_flight.len() + s.unconfirmed_total as usize);
            if room == 0 || s.queue.is_empty() {
                continue;
            }
            let take = room.min(s.queue.len());
            let mut batch = Vec::with_capacity(take.min(256));
            let mut bytes = 0;
            // One string per batch, shared by its deliveries.
            let cohort: Arc<str> = Arc::from(s.cohort.as_deref().unwrap_or_default());
            let timeout = self.route.config.ack_timeout_ms;
            let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout));
            let at_most_once = self.route.config.delivery == DeliveryMode::AtMostOnce;
            let mut staged_pending = Vec::new();
            let mut redelivered = 0u64;
            for mut p in s.queue.drain(..take) {
                p.deadline = deadline;
                let size = p.record.size();
                if !batch.is_empty() && bytes + size > MAX_BATCH_BYTES {
                    let deliveries = std::mem::take(&mut batch);
                    if at_most_once {
                        let pending = std::mem::take(&mut staged_pending);
                        self.staged.push(StagedSend { session: id, deliveries, pending });
                    } else {
                        // A closed outbox means the stream is going away; its unregister redelivers.
                        let _ = s.outbox.send(SessionMessage::Deliveries(deliveries));
                    }
                    bytes = 0;
                }
                bytes += size;
                let ack_id = s.next_ack_id;
                s.next_ack_id += 1;
                let delivery = Outgoing {
                    record: p.record.clone(),
                    attempt: p.attempt,
                    cohort: cohort.clone(),
                    ack_id,
                    idempotency_key: p.idempotency_key.clone(),
                    replay: p.replay.map_or(0, |t| t.replay),
                };
                if p.attempt > 1 {
                    self.redelivered += 1;
                    redelivered += 1;
                }
                self.delivered += 1;
                if at_most_once {
                    staged_pending.push(p.clone());
                }
                s.in_flight.insert(ack_id, p);
                batch.push(delivery);
            }
            s.delivered += take as u64;
            let counts = cohort_counts(&mut self.by_cohort, s.cohort.as_deref());
            counts.delivered += take as u64;
            counts.redelivered += redelivered;
            if at_most_once {
                self.staged.push(StagedSend { session: id, deliveries: batch, pending: staged_pending });
            } else {
                let _ = s.outbox.send(SessionMessage::Deliveries(batch));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn batches_are_bounded_in_bytes() {
        let mut reg = Registry::new(route("r", 100));
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..5 {
            let mut r = (*record(0, o, "k")).clone();
            r.value = Some(Bytes::from(vec![0u8; 400 * 1024]));
            reg.dispatch(Arc::new(r), 1);
        }
        reg.flush();
        let mut sizes = Vec::new();
        while let Ok(SessionMessage::Deliveries(d)) = a.outbox.try_recv() {
            assert!(d.iter().map(|d| d.record.size()).sum::<usize>() <= MAX_BATCH_BYTES);
            sizes.push(d.len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
