//! The handler pool: one task owns the queue of received deliveries and starts at most
//! `concurrency` handlers at once, each on a task of its own, keeping per-key order
//! ([`crate::keyed`]). A handler's outcome goes straight back to the stream it came from.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1::{self as proto, Delivery};
use futures::FutureExt;
use tokio::sync::mpsc;

use crate::handler::{Handler, Nack};
use crate::keyed::{self, KeyedQueue, OrderKey};
use crate::lease::{Durations, Keeper};
use crate::stats::Counters;

/// What a stream sends up for a delivery: its outcome once handled, and meanwhile the
/// extensions of its deadline.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ack(u64),
    Nack(proto::Nack),
    Extend(u64, Duration),
}

/// The way back to the stream a delivery came on. Closed once that stream has ended: its
/// deliveries' handles mean nothing anywhere else, so queued ones are dropped unhandled (the
/// gateway redelivers them) and late outcomes are discarded.
#[derive(Clone)]
pub(crate) struct Origin(pub(crate) mpsc::UnboundedSender<Outcome>);

pub(crate) struct Job {
    pub(crate) delivery: Delivery,
    pub(crate) origin: Origin,
    /// When the delivery's deadline needs extending while its handler runs.
    pub(crate) lease: Keeper,
}

/// Where streams hand their deliveries to the pool.
#[derive(Clone)]
pub(crate) struct PoolHandle(mpsc::UnboundedSender<Job>);

impl PoolHandle {
    pub(crate) fn submit(&self, job: Job) {
        // The pool outlives every stream; if it is gone the subscriber is stopping anyway.
        let _ = self.0.send(job);
    }
}

/// Starts the pool. It ends once every [`PoolHandle`] is dropped and its handlers have finished.
pub(crate) fn spawn<H: Handler>(
    handler: H,
    concurrency: usize,
    counters: Arc<Counters>,
) -> (PoolHandle, tokio::task::JoinHandle<()>) {
    let (jobs_tx, jobs) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(Arc::new(handler), concurrency.max(1), jobs, counters, Arc::default()));
    (PoolHandle(jobs_tx), task)
}

fn order_key(d: &Delivery) -> Option<OrderKey> {
    d.key.as_ref().map(|k| keyed::order_key(&d.topic, k))
}

async fn run<H: Handler>(
    handler: Arc<H>,
    concurrency: usize,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    counters: Arc<Counters>,
    durations: Arc<Durations>,
) {
    let (done_tx, mut done) = mpsc::unbounded_channel::<Option<OrderKey>>();
    let mut queue = KeyedQueue::<Job>::new();
    let mut running = 0usize;
    let mut open = true;
    // Deliveries waiting for a handler (behind their key, or for a free one) are extended too:
    // with slow handlers they may wait longer than the route's deadline.
    let mut lease_tick = tokio::time::interval(LEASE_TICK);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        while running < concurrency {
            let Some((key, job)) = queue.pop() else { break };
            if job.origin.0.is_closed() {
                Counters::add(&counters.abandoned, 1);
                if let Some(key) = key {
                    queue.finished(key);
                }
                continue;
            }
            running += 1;
            Counters::add(&counters.running, 1);
            let finished =
                Finished { key, done: done_tx.clone(), counters: counters.clone(), durations: durations.clone() };
            tokio::spawn(handle_one(handler.clone(), job, finished));
        }
        if !open && running == 0 && queue.is_empty() {
            return;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => queue.push(order_key(&job.delivery), job),
                None => open = false,
            },
            Some(key) = done.recv() => {
                running -= 1;
                Counters::sub(&counters.running, 1);
                if let Some(key) = key {
                    queue.finished(key);
                }
            }
            _ = lease_tick.tick(), if !queue.is_empty() => extend_queued(&mut queue, durations.p99()),
        }
    }
}

/// How often queued deliveries are checked for a due extension.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// Sends the extensions due for queued deliveries.
fn extend_queued(queue: &mut KeyedQueue<Job>, recent_p99: Duration) {
    let now = tokio::time::Instant::now();
    queue.for_each_mut(|job| {
        if job.lease.due().is_some_and(|due| due <= now) && !job.origin.0.is_closed() {
            if let Some(extension) = job.lease.extend(now, recent_p99) {
                let _ = job.origin.0.send(Outcome::Extend(job.delivery.ack_id, extension));
            }
        }
    });
}

/// Where a handler's end is told: the pool (its key is free again), the counters and the
/// recent durations extensions are sized from.
struct Finished {
    key: Option<OrderKey>,
    done: mpsc::UnboundedSender<Option<OrderKey>>,
    counters: Arc<Counters>,
    durations: Arc<Durations>,
}

/// Runs the handler on one delivery and sends its outcome to the delivery's stream, extending
/// the delivery's deadline while it runs (see [`crate::lease`]). The handler is called inside
/// the guarded future, so a panic while building its future is caught too.
async fn handle_one<H: Handler>(handler: Arc<H>, job: Job, finished: Finished) {
    let Job { delivery, origin, mut lease } = job;
    let Finished { key, done, counters, durations } = finished;
    let ack_id = delivery.ack_id;
    let started = tokio::time::Instant::now();
    let handled = AssertUnwindSafe(async { handler.handle(delivery).await }).catch_unwind();
    tokio::pin!(handled);
    let result = loop {
        let Some(due) = lease.due() else { break handled.await };
        tokio::select! {
            result = &mut handled => break result,
            _ = tokio::time::sleep_until(due) => {
                if let Some(extension) = lease.extend(tokio::time::Instant::now(), durations.p99()) {
                    let _ = origin.0.send(Outcome::Extend(ack_id, extension));
                }
            }
        }
    };
    durations.record(started.elapsed());
    let outcome = match result {
        Ok(Ok(())) => {
            Counters::add(&counters.acked, 1);
            Outcome::Ack(ack_id)
        }
        Ok(Err(nack)) => {
            Counters::add(&counters.nacked, 1);
            Outcome::Nack(nack.into_proto(ack_id))
        }
        Err(panic) => {
            Counters::add(&counters.nacked, 1);
            Counters::add(&counters.panicked, 1);
            let reason = format!("the handler panicked: {}", panic_message(panic.as_ref()));
            tracing::error!(reason, "handler panicked; the delivery is nacked for a retry");
            Outcome::Nack(Nack::retry(reason).into_proto(ack_id))
        }
    };
    let _ = origin.0.send(outcome);
    let _ = done.send(key);
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string panic payload)")
}
