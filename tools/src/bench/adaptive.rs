//! Adaptive windows: a subscriber that works a few deliveries at a time, whose work takes
//! three times as long for a while, in front of a backlog (its window is always full). Under a
//! fixed window what waits in it outlives the ack deadline when the work slows down and comes
//! back; under `window = "adaptive"` the window shrinks until acks come back in time. The same
//! run is made with each; the window during the slow phase (the gateway's Status, sampled
//! every second) and the redeliveries are compared.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, WindowMode};
use fanout_gateway::gateway;
use tokio::sync::mpsc;

use super::load::Backlog;
use super::BenchError;

/// Deliveries the subscriber works on at once, and its window.
pub const CONCURRENCY: usize = 4;
pub const WINDOW: u32 = 200;
/// Work per delivery, and while it is slow (three times as long).
pub const WORK: Duration = Duration::from_millis(5);
/// The route's ack deadline: a full window of 200 takes 250 ms at normal speed and 750 ms
/// while slow, so under a fixed window the slow phase passes it.
pub const ACK_TIMEOUT_MS: u64 = 500;

/// One mode's run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Average of the subscriber's window over the slow phase, as the gateway reports it.
    pub slow_window: f64,
    /// Deliveries that were a second or later attempt, over the whole run.
    pub redelivered: u64,
    /// Deliveries acked, over the whole run.
    pub acked: u64,
}

/// How long each phase of a run lasts.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub warm: Duration,
    pub slow: Duration,
    pub after: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.warm + self.slow + self.after
    }
}

/// Runs the subscriber against a gateway whose route has `window`, reading `backlog`.
pub async fn run(bootstrap: &str, backlog: &Backlog, window: WindowMode, phases: Phases) -> Result<Run, BenchError> {
    let route = "adaptive";
    let mode = match window {
        WindowMode::Fixed => "fixed",
        WindowMode::Adaptive => "adaptive",
    };
    let mut config = Config::single_route(bootstrap, &format!("{}-{mode}", backlog.topic), route, &[&backlog.topic]);
    config.kafka.commit_interval_ms = 200;
    let r = &mut config.routes[0];
    r.max_in_flight = WINDOW;
    r.ack_timeout_ms = ACK_TIMEOUT_MS;
    r.window = window;
    r.retry.initial_backoff_ms = 50;
    r.retry.max_backoff_ms = 200;
    // Redeliveries are counted, never dead-lettered: attempts enough for the whole run.
    r.retry.max_attempts = 1_000;
    let gw = gateway::start(config).await?;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(route, "worker", WINDOW))
        .await
        .map_err(|e| BenchError::Gateway(format!("subscribing: {e}")))?;
    let work_ms = Arc::new(AtomicU64::new(WORK.as_millis() as u64));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut busy = 0usize;
    let (mut redelivered, mut acked) = (0u64, 0u64);
    let mut samples: Vec<u32> = Vec::new();
    let started = Instant::now();
    let mut next_sample = started + phases.warm;
    let control = gw.control();
    while started.elapsed() < phases.total() {
        let elapsed = started.elapsed();
        let slow = elapsed >= phases.warm && elapsed < phases.warm + phases.slow;
        work_ms.store(WORK.as_millis() as u64 * if slow { 3 } else { 1 }, Ordering::Relaxed);
        tokio::select! {
            batch = sub.next_raw() => match batch {
                Ok(Some(batch)) => {
                    redelivered += batch.iter().filter(|d| d.attempt > 1).count() as u64;
                    queue.extend(batch.iter().map(|d| d.ack_id));
                }
                _ => return Err(BenchError::Gateway("the subscription ended".into())),
            },
            Some(id) = done_rx.recv() => {
                busy -= 1;
                acked += 1;
                let _ = sub.ack_ids(vec![id]).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        while busy < CONCURRENCY {
            let Some(id) = queue.pop_front() else { break };
            busy += 1;
            let (done, work) = (done_tx.clone(), Duration::from_millis(work_ms.load(Ordering::Relaxed)));
            tokio::spawn(async move {
                tokio::time::sleep(work).await;
                let _ = done.send(id);
            });
        }
        if slow && Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let status = control.routes_status(Some(route)).await.unwrap_or_default();
            samples.extend(status.iter().flat_map(|r| r.snapshot.subscribers.iter().map(|s| s.window)));
        }
    }
    drop(sub);
    gw.shutdown().await;
    let slow_window = samples.iter().map(|w| f64::from(*w)).sum::<f64>() / samples.len().max(1) as f64;
    Ok(Run { slow_window, redelivered, acked })
}
