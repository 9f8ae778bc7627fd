//! The dispatcher's Kafka side: records in (through the dedup gate on effectively-once
//! routes), acks recorded in their partitions, commit points out, revokes that drain before
//! they release, dead letters produced (and messages moved off a partition's head to them),
//! and the pause/resume decisions that bound memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::commits::request_commit;
use super::dead_letters::{Outcome, Produced};
use super::dedup_gate::Keyed;
use super::head_of_line;
use super::partitions::Intake;
use super::revokes::RevokeReply;
use super::{Dispatcher, Internal};
use crate::config::DeliveryMode;
use crate::dedup::{DedupError, Verdict};
use crate::kafka::{Assignment, CommitOutcome, KafkaCommand, Record, TopicPartition};
use crate::offsets::{AckOutcome, CommitPoint};
use crate::stats::Stats;
use crate::subscriptions::{DeadLetter, Pending, StagedSend};

// === impl Dispatcher: records in, commits out ===

impl Dispatcher {
    /// The consumer's positions: where nothing is owed, commits may reach them (offsets the
    /// consumer stepped over, transaction markers and aborted records, are never delivered).
    /// At-most-once routes commit what they send, before sending, and are left as they are.
    /// Once a stop has begun, records that arrive are dropped untracked (the next owner
    /// delivers them), so a position then may cover records nobody got: ignored.
    pub(super) fn on_positions(&mut self, positions: Vec<(TopicPartition, i64)>) {
        if self.stopping || self.registry.route_config().delivery == DeliveryMode::AtMostOnce {
            return;
        }
        self.partitions.reached(positions);
    }

    pub(super) fn on_assigned(&mut self, assignments: Vec<Assignment>) {
        self.partitions.assign(assignments);
    }

    pub(super) fn on_records(&mut self, records: Vec<Record>) {
        if self.stopping {
            // Not tracked, so never committed: the next owner delivers them.
            return;
        }
        for record in records {
            let mut intake = self.partitions.take(&record, self.settings.max_uncommitted);
            if let Intake::WentBack { from } = intake {
                // Kafka's log of the partition started over: what is held belongs to a log
                // that is gone, and committing its offsets would skip the new one's records.
                Stats::bump(&self.stats.partition_restarts, 1);
                let dropped = self.registry.purge(std::slice::from_ref(&record.tp));
                warn!(
                    partition = %record.tp,
                    offset = record.offset,
                    committed_up_to = from,
                    dropped,
                    "the partition's log went back below what the route committed (the topic was deleted and \
                     created again, or its log truncated): starting the partition over from this record"
                );
                self.partitions.restart(&record.tp);
                intake = self.partitions.take(&record, self.settings.max_uncommitted);
            }
            match intake {
                Intake::New { epoch } => {
                    let record = Arc::new(record);
                    // A retry is the same message again, not a duplicate: it skips the filter.
                    let retry = self.registry.route_config().retries_through(&record.tp.topic);
                    match &mut self.dedup {
                        Some(d) if !retry => d.wait(record, epoch),
                        _ => self.registry.dispatch(record, epoch),
                    }
                }
                // Not (or no longer) ours: a batch put together while its partition was being
                // revoked. The partition's next owner delivers it.
                Intake::NotOurs => Stats::bump(&self.stats.stale_records, 1),
                Intake::Refetch => Stats::bump(&self.stats.refetched, 1),
                Intake::AlreadyAcked => Stats::bump(&self.stats.skipped_already_acked, 1),
                Intake::Stale | Intake::WentBack { .. } => Stats::bump(&self.stats.stale_records, 1),
            }
        }
    }

    /// Records one route's ack of a delivery in its partition's tracker.
    pub(super) fn settle(&mut self, p: &Pending) {
        if let Some(tag) = p.replay {
            // A replayed message: its offset was committed long ago.
            self.replays.settled(tag);
            return;
        }
        if self.registry.route_config().delivery == DeliveryMode::AtMostOnce {
            // Its offset was committed before it was sent.
            Stats::bump(&self.stats.acked, 1);
            return;
        }
        match self.partitions.ack(&p.record.tp, p.epoch, p.record.offset) {
            Some(AckOutcome::Done) => Stats::bump(&self.stats.acked, 1),
            Some(AckOutcome::Unknown) | None => Stats::bump(&self.stats.unknown_acks, 1),
        }
    }

    /// Partitions are being taken away. At-most-once routes release them at once (their
    /// offsets were committed before sending, acks move nothing). Others drain: nothing new of
    /// theirs is sent, their waiting messages are dropped (the next owner delivers them), and
    /// the answer waits until their in-flight deliveries are settled or the drain deadline
    /// passes, so a rebalance redelivers only what missed the deadline.
    pub(super) fn start_revoke(&mut self, partitions: Vec<TopicPartition>, reply: RevokeReply) {
        if self.registry.route_config().delivery == DeliveryMode::AtMostOnce || self.stopping {
            let _ = reply.send(self.on_revoked(&partitions));
            return;
        }
        let unsent = self.registry.withhold(&partitions);
        let in_flight = self.registry.in_flight_of(&partitions);
        info!(
            partitions = partitions.len(),
            in_flight,
            unsent,
            "partitions revoked: draining their in-flight deliveries; records not sent yet are left to the partitions' next owner"
        );
        let deadline = Instant::now() + self.settings.revoke_drain;
        self.revokes.push(partitions, reply, deadline);
    }

    /// Answers the revokes whose partitions have drained or whose deadline passed.
    pub(super) fn finish_revokes(&mut self, now: Instant) {
        let registry = &self.registry;
        for (r, left) in self.revokes.take_done(now, |partitions| registry.in_flight_of(partitions)) {
            if left > 0 {
                Stats::bump(&self.stats.revoke_abandoned, left as u64);
                warn!(partitions = r.partitions.len(), in_flight = left, "drain deadline passed: releasing partitions with deliveries in flight; their next owner redelivers them");
            }
            let _ = r.reply.send(self.on_revoked(&r.partitions));
        }
    }

    /// Drops the partitions' buffered messages and returns their final commit points.
    pub fn on_revoked(&mut self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, CommitPoint)> {
        let unsent = self.registry.purge(partitions);
        let points = self.partitions.release(partitions);
        info!(
            partitions = partitions.len(),
            unsent,
            "revoked partitions released; their uncommitted records are read again by the next owner (nothing is lost)"
        );
        points
    }

    /// Forgets partitions the group took away without a revoke: their buffered messages are
    /// dropped and their commit points discarded (the coordinator would refuse them); acks of
    /// what is in flight find no partition and are ignored.
    pub(super) fn on_lost(&mut self, partitions: &[TopicPartition]) {
        let unsent = self.registry.purge(partitions);
        let uncommitted = self.partitions.release(partitions).len();
        warn!(
            partitions = partitions.len(),
            unsent,
            uncommitted,
            "lost partitions forgotten: their next owner redelivers what was acked since the last commit"
        );
    }

    /// Commit points that moved since the last commit.
    pub fn commit_points(&mut self) -> Vec<(TopicPartition, CommitPoint)> {
        self.partitions.commit_points()
    }

    /// Commits the offsets whose commit points moved, unless a commit is still under way
    /// (the next tick, or the next ack, sends what moved meanwhile). Subscribers' windows that
    /// hold acks until they are committed are freed when it lands.
    pub(super) fn commit(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        if self.commits.committing() {
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
        self.commits.commit_sent();
        self.tasks.spawn(async move {
            let outcome = result.await.unwrap_or_else(|_| unanswered(&points));
            Internal::Committed { points, outcome, generation: Some(generation) }
        });
    }

    /// Marks the at-most-once batches the registry is about to send as done and commits
    /// them, unless such a commit is already out; the batches go to their streams only when it
    /// succeeds. Committing at send time, not at receipt, means a crash loses what was being
    /// sent (at most the windows), not everything buffered.
    pub(super) fn commit_before_send(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        for send in self.registry.take_staged() {
            for p in &send.pending {
                self.partitions.ack(&p.record.tp, p.epoch, p.record.offset);
            }
            self.commits.stage(send);
        }
        let Some(sends) = self.commits.take_for_commit() else { return };
        // The points of their partitions (acked ranges above the commit point ride in the
        // metadata, so a takeover skips them too), sent even if a periodic commit already sent
        // the same: that commit's outcome is not known here, and nothing goes before one is.
        let mut points: Vec<(TopicPartition, CommitPoint)> = Vec::new();
        for p in sends.iter().flat_map(|s| s.pending.iter()) {
            if points.iter().any(|(tp, _)| *tp == p.record.tp) {
                continue;
            }
            if let Some(point) = self.partitions.point_to_send(&p.record.tp, p.epoch) {
                points.push((p.record.tp.clone(), point));
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
        self.commits.before_send_sent();
        self.tasks.spawn(async move {
            let outcome = result.await.unwrap_or_else(|_| unanswered(&points));
            Internal::CommittedBeforeSend { points, outcome, sends }
        });
    }

    fn drop_staged(&mut self, sends: Vec<StagedSend>) {
        let n: usize = sends.iter().map(|s| s.pending.len()).sum();
        Stats::bump(&self.stats.dropped_at_most_once, n as u64);
        for send in sends {
            self.registry.abandon_staged(send);
        }
    }

    /// A commit of acked offsets finished: the partitions that landed are noted, the refused
    /// ones' points are sent again next time, and windows held for the commit are freed once
    /// all of it landed.
    pub(super) fn on_committed(
        &mut self,
        points: Vec<(TopicPartition, CommitPoint)>,
        outcome: &CommitOutcome,
        generation: Option<u64>,
    ) {
        self.commits.commit_finished();
        self.partitions.settle(points, outcome);
        if let Some(generation) = generation.filter(|_| outcome.is_complete()) {
            self.registry.commit_landed(generation);
        }
    }

    /// The commit covering staged at-most-once batches finished: on success they go to their
    /// streams; on failure nothing was sent, so nothing is lost: they wait for the next commit.
    pub(super) fn on_committed_before_send(
        &mut self,
        points: Vec<(TopicPartition, CommitPoint)>,
        outcome: &CommitOutcome,
        sends: Vec<StagedSend>,
    ) {
        self.partitions.settle(points, outcome);
        for send in self.commits.before_send_finished(outcome.is_complete(), sends) {
            self.registry.release_staged(send);
        }
    }

    /// Sends the waiting records to the dedup store, unless a batch is still out.
    pub(super) fn start_claims(&mut self) {
        let Some((batch, claim)) = self.dedup.as_mut().and_then(|d| d.start_claims()) else { return };
        self.tasks.spawn(async move {
            let verdicts = claim.await;
            Internal::Claimed { batch, verdicts }
        });
    }

    /// Delivers what the store says is new (or a redelivery of the same record); acks
    /// duplicates to Kafka without delivering them. If the store failed, delivers everything:
    /// a duplicate is better than a loss.
    pub(super) fn on_claimed(&mut self, batch: Vec<Keyed>, verdicts: Result<Vec<Verdict>, DedupError>) {
        if let Some(d) = &mut self.dedup {
            d.answered();
        }
        let verdicts = match verdicts {
            Ok(v) => Some(v),
            Err(error) => {
                Stats::bump(&self.stats.dedup_errors, 1);
                warn!(%error, records = batch.len(), "dedup store failed; delivering without duplicate checks");
                None
            }
        };
        for (record, epoch, key) in batch {
            if self.stopping {
                break; // the next owner has them
            }
            if !self.partitions.is_current(&record.tp, epoch) {
                continue; // revoked meanwhile: the next owner has it
            }
            let verdict = key.as_ref().and_then(|(i, _)| verdicts.as_ref().and_then(|v| v.get(*i)));
            if verdict.is_some_and(Verdict::is_duplicate) {
                self.partitions.ack(&record.tp, epoch, record.offset);
                Stats::bump(&self.stats.dedup_hits, 1);
                continue;
            }
            self.registry.dispatch_keyed(record, epoch, key.map(|(_, key)| key));
        }
    }

    /// Produces dead letters; each settles its origin offset once Kafka acknowledges it.
    pub(super) fn send_dead_letters(&mut self, letters: Vec<DeadLetter>) {
        for letter in letters {
            let produce = self.dead_letters.produce(self.registry.route_config(), letter, self.stats.clone());
            if let Some(produce) = produce {
                self.tasks.spawn(async move { Internal::DeadLettered(produce.await) });
            }
        }
    }

    /// Kafka acknowledged a dead letter (or a retry-topic record): its origin offset is done.
    /// A retry too large for the retry topic waits out its backoff here instead, if its
    /// partition is still this assignment's (else its next owner delivers it).
    pub(super) fn on_dead_lettered(&mut self, outcome: Outcome) {
        self.dead_letters.landed();
        let produced = match outcome {
            Outcome::Landed(produced) => produced,
            Outcome::TooLargeToRetryThere(letter) => {
                let p = &letter.pending;
                if p.replay.is_some() || self.partitions.is_current(&p.record.tp, p.epoch) {
                    self.registry.retry_here(letter);
                }
                return;
            }
        };
        let Produced { tp, offset, epoch, retry, replay } = produced;
        Stats::bump(if retry { &self.stats.retried_via_topic } else { &self.stats.dead_lettered }, 1);
        if let Some(tag) = replay {
            self.replays.settled(tag);
            return;
        }
        // If revoked meanwhile, the next owner delivers it again (and may dead-letter it again).
        self.partitions.ack(&tp, epoch, offset);
    }

    /// Moves every message that has held its partition's commits back for the route's
    /// `head_of_line.after_ms` (called on the commit tick).
    pub(super) fn rescue_heads(&mut self, now: Instant) {
        let config = self.registry.route_config();
        let Some(hol) = config.head_of_line else { return };
        let after = Duration::from_millis(hol.after_ms);
        let policy = config.retry.clone();
        let has_dlq = config.dead_letter_topic.is_some();
        for (tp, offset, epoch) in self.partitions.stuck_heads(now, after) {
            // Not one to move (never tried yet, or already on its way to a topic): its wait
            // starts again, so a head that stays is looked for once per `after_ms`, not per tick.
            let Some((p, attempt)) = self.registry.take_live(&tp, offset, epoch) else {
                self.partitions.wait_again(&tp);
                continue;
            };
            let reason = format!(
                "held partition {}/{}'s commits back for over {} ms while later messages were acked (head_of_line)",
                tp.topic, tp.partition, hol.after_ms
            );
            let letter = head_of_line::letter(p, attempt, hol.action, &policy, has_dlq, reason);
            let to = if letter.retry_at.is_some() { "retry topic" } else { "dead-letter topic" };
            warn!(
                topic = %tp.topic,
                partition = tp.partition,
                offset,
                attempt,
                after_ms = hol.after_ms,
                to,
                "moved a message off the head of its partition: it held the partition's commits back while later \
                 messages were acked"
            );
            Stats::bump(&self.stats.head_of_line_moved, 1);
            self.partitions.moved_head(&tp);
            self.send_dead_letters(vec![letter]);
        }
    }

    /// Pauses the partitions whose buffer is full and resumes those back under half (seeking
    /// back where records were dropped at the bound).
    pub(super) fn flow_control(&mut self, kafka: &std::sync::mpsc::Sender<KafkaCommand>) {
        let flow = self.partitions.flow_control(self.settings.max_uncommitted);
        self.stats.shift_buffered(self.reported.buffered, flow.held);
        self.reported.buffered = flow.held;
        if !flow.pause.is_empty() {
            Stats::bump(&self.stats.partition_pauses, flow.pause.len() as u64);
            debug!(partitions = flow.pause.len(), "pausing partitions: un-committed bound reached");
            let _ = kafka.send(KafkaCommand::Pause(flow.pause));
        }
        if !flow.resume.is_empty() {
            Stats::bump(&self.stats.partition_resumes, flow.resume.len() as u64);
            debug!(partitions = flow.resume.len(), "resuming partitions");
            let _ = kafka.send(KafkaCommand::Resume(flow.resume));
        }
    }
}

/// The outcome of a commit the consumer thread never answered (it is gone: the gateway is
/// stopping): nothing landed.
fn unanswered(points: &[(TopicPartition, CommitPoint)]) -> CommitOutcome {
    let refused = points.iter().map(|(tp, _)| (tp.clone(), "the consumer is gone".to_string())).collect();
    CommitOutcome { landed: Vec::new(), refused }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_route_takes_no_position() {
        use std::time::Duration;
        let settings = super::super::DispatcherSettings {
            commit_interval: Duration::from_millis(100),
            max_uncommitted: 10,
            shutdown_grace: Duration::from_secs(1),
            revoke_drain: Duration::from_secs(1),
            discovery: crate::config::DiscoveryMode::Static,
        };
        let route = crate::config::RouteConfig::new("r", &["t"]);
        let mut d = Dispatcher::new(crate::subscriptions::Registry::new(route), Default::default(), settings);
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        d.on_assigned(vec![Assignment { tp: tp.clone(), committed: None, acked_above: Vec::new() }]);
        d.stopping = true;
        // Records arriving now are dropped untracked: a position past them covers nothing delivered.
        d.on_positions(vec![(tp.clone(), 50)]);
        assert_eq!(d.partitions.committable(&tp), None);
        d.stopping = false;
        d.on_positions(vec![(tp.clone(), 50)]);
        assert_eq!(d.partitions.committable(&tp), Some(50));
    }
}
