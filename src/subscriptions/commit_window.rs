//! Commit windows (routes with `window_until_commit`): an acked delivery keeps its place in
//! its subscriber's window until a landed commit covers its ack, so a crash redelivers at most
//! the windows.

use super::*;

impl Registry {
    /// A commit is being computed now: returns its generation, which covers every ack so far.
    pub fn commit_started(&mut self) -> u64 {
        let generation = self.commit_generation;
        self.commit_generation += 1;
        generation
    }

    /// The commit of `generation` landed: the acks it covers free their window places.
    pub fn commit_landed(&mut self, generation: u64) {
        for (id, s) in &mut self.sessions {
            let mut freed = false;
            while let Some(&(g, n)) = s.unconfirmed.front() {
                if g > generation {
                    break;
                }
                s.unconfirmed.pop_front();
                s.unconfirmed_total -= n;
                freed = true;
            }
            if freed {
                self.dirty.insert(*id);
            }
        }
    }

    /// Whether some subscriber's window holds acks waiting for a commit.
    pub fn awaiting_commit(&self) -> bool {
        self.sessions.values().any(|s| s.unconfirmed_total > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn with_window_until_commit_acked_deliveries_hold_their_places_until_the_commit_lands() {
        let mut config = route("r", 2);
        config.window_until_commit = true;
        let mut reg = Registry::new(config);
        let mut a = reg.register("r", 0, sub("a")).expect("ok");
        for o in 0..6 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 2);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0"), reg.handle(a.session, "t/0/1")]);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "acked but not committed: still in the window");
        assert!(reg.awaiting_commit());
        let generation = reg.commit_started();
        // An ack after the commit was computed is not covered by it.
        reg.commit_landed(generation);
        reg.flush();
        let next = received(&mut a.outbox);
        assert_eq!(next.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        reg.ack(a.session, &[reg.handle(a.session, "t/0/2")]);
        reg.commit_landed(generation);
        reg.flush();
        assert!(received(&mut a.outbox).is_empty(), "offset 2's ack came after that commit");
        let later = reg.commit_started();
        reg.commit_landed(later);
        reg.flush();
        assert_eq!(received(&mut a.outbox).iter().map(|d| d.offset).collect::<Vec<_>>(), vec![4]);
        assert!(!reg.awaiting_commit());
    }
}
