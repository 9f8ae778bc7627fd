//! Commit windows (routes with `window_until_commit`): an acked delivery keeps its place in
//! its subscriber's window until a landed commit covers its ack, so a crash redelivers at most
//! the windows.
//!
//! Commits are numbered ([`CommitWindow`]); each session stamps its acks with the number of the
//! next commit ([`Unconfirmed`]), and a landed commit frees the places of the acks stamped at or
//! before its own number.

use std::collections::VecDeque;

/// Generation of the next commit: acks are stamped with it, a landed commit confirms the
/// acks stamped at or before its own generation.
#[derive(Debug, Default)]
pub(super) struct CommitWindow {
    next: u64,
}

impl CommitWindow {
    /// A commit is being computed now: returns its generation, which covers every ack so far.
    pub(super) fn start(&mut self) -> u64 {
        let generation = self.next;
        self.next += 1;
        generation
    }

    /// The generation an ack arriving now is stamped with (that of the next commit).
    pub(super) fn current(&self) -> u64 {
        self.next
    }
}

/// A session's acks not yet covered by a landed commit, by the commit generation they arrived
/// in: they keep their places in the session's window.
#[derive(Debug, Default)]
pub(super) struct Unconfirmed {
    by_generation: VecDeque<(u64, u32)>,
    total: u32,
}

impl Unconfirmed {
    /// `n` acks arrived in `generation` (generations only grow).
    pub(super) fn add(&mut self, generation: u64, n: u32) {
        match self.by_generation.back_mut() {
            Some((g, count)) if *g == generation => *count += n,
            _ => self.by_generation.push_back((generation, n)),
        }
        self.total += n;
    }

    /// The commit of `generation` landed: the acks it covers are confirmed. Returns how many
    /// window places were freed.
    pub(super) fn confirm(&mut self, generation: u64) -> u32 {
        let mut freed = 0;
        while let Some(&(g, n)) = self.by_generation.front() {
            if g > generation {
                break;
            }
            self.by_generation.pop_front();
            self.total -= n;
            freed += n;
        }
        freed
    }

    /// Window places the unconfirmed acks hold.
    pub(super) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_covers_the_acks_before_it_started_and_not_those_after() {
        let mut commits = CommitWindow::default();
        let mut acks = Unconfirmed::default();
        acks.add(commits.current(), 2);
        acks.add(commits.current(), 1);
        let first = commits.start();
        acks.add(commits.current(), 4);
        assert_eq!(acks.total(), 7);
        assert_eq!(acks.confirm(first), 3);
        assert_eq!(acks.total(), 4, "the ack after the commit was computed is not covered");
        assert_eq!(acks.confirm(first), 0, "nothing more to free");
        let second = commits.start();
        assert!(second > first);
        assert_eq!(acks.confirm(second), 4);
        assert_eq!(acks.total(), 0);
    }
}
