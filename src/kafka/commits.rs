//! Commits off the consumer thread. A synchronous commit waits for the group coordinator; on
//! the consumer thread that stopped every record, pause and resume of the route for as long
//! as the coordinator was away (seconds while it moves with a dead broker). The dispatcher's
//! commits are made here instead, on a thread of their own, one at a time and in order, and
//! their results are checked as before (a failed commit is counted, logged and retried by the
//! next one). librdkafka's consumer is thread-safe; rust-rdkafka does not deliver the result
//! of an asynchronous commit to `ConsumerContext::commit_callback` (fede1024/rust-rdkafka#856),
//! so a thread that makes synchronous commits is the way to keep the results.
//!
//! A revoke's own commit stays on the consumer thread (the partitions may go only once it
//! landed). Both take [`super::consumer`]'s commit lock, so a commit of this thread never
//! lands after the revoke's and moves a revoked partition back.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::consumer::{send_commit, still_assigned, GatewayContext};
use super::{CommitError, TopicPartition};
use crate::offsets::CommitPoint;
use crate::stats::Stats;

/// A commit the dispatcher asked for.
struct Job {
    points: Vec<(TopicPartition, CommitPoint)>,
    done: Option<oneshot::Sender<Result<(), CommitError>>>,
}

/// The route's commit thread.
pub(super) struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn spawn(
        consumer: Arc<BaseConsumer<GatewayContext>>,
        stats: Arc<Stats>,
        name: String,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let _route = span.enter();
            for job in queue {
                commit(&consumer, &stats, job);
            }
        })?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Queues a commit of `points`; `done`, if given, hears the outcome.
    pub fn commit(
        &self,
        points: Vec<(TopicPartition, CommitPoint)>,
        done: Option<oneshot::Sender<Result<(), CommitError>>>,
    ) {
        if let Some(jobs) = &self.jobs {
            // A thread gone drops `done`: the dispatcher reads that as a failed commit.
            let _ = jobs.send(Job { points, done });
        }
    }

    /// Makes the commits queued so far, then ends the thread.
    pub fn close(mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn commit(consumer: &BaseConsumer<GatewayContext>, stats: &Stats, job: Job) {
    let context = consumer.context();
    let _one_at_a_time = context.commit_lock.lock();
    // Only partitions still assigned: a commit asked for before a revoke but made after it
    // would move the revoked partitions back behind the revoke's own commit, and their next
    // owner would redeliver what was acked in between.
    let points = still_assigned(consumer, job.points);
    debug!(partitions = points.len(), "committing");
    let result = if points.is_empty() { Ok(()) } else { send_commit(consumer, &points, CommitMode::Sync) };
    match &result {
        Ok(()) => {
            Stats::bump(&stats.commits, 1);
            context.record_committed(&points);
        }
        Err(error) => {
            Stats::bump(&stats.commit_failures, 1);
            warn!(%error, "offset commit failed; the next commit retries it");
        }
    }
    if let Some(done) = job.done {
        let _ = done.send(result.map_err(CommitError));
    }
}
