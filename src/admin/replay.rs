//! Operators' replays: a range of a route's topics delivered again to the route's subscribers
//! while live traffic goes on. A reader of its own ([`crate::kafka::replay`]) reads the range;
//! its records go to the route's dispatcher in batches, marked with the replay's id, and are
//! routed and acked like live ones, but their acks move no commit point (the route's committed
//! offsets never go back) and a revoke does not drop them.
//!
//! Memory stays bounded: at most [`OUTSTANDING`] batches of [`BATCH`] records are out at once;
//! the next one goes when one is fully settled. Progress counts records settled; a cancel stops
//! the reader (what is out already still gets delivered and settled).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::config::{Config, RouteConfig};
use crate::dispatcher::RouteHandle;
use crate::kafka::replay::{self, Bound, Range};

/// Records per batch handed to the dispatcher.
pub const BATCH: usize = 500;
/// Batches out at once, per replay.
pub const OUTSTANDING: usize = 4;
/// Finished replays kept for status, newest last.
const KEEP_FINISHED: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayState {
    Running,
    Done,
    Cancelled,
    Failed,
}

impl ReplayState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// A replay as status shows it.
#[derive(Debug, Clone)]
pub struct ReplayProgress {
    pub id: u64,
    pub route: String,
    pub state: ReplayState,
    /// Records in the ranges, handed to the dispatcher, and settled (acked or dead-lettered).
    pub total: u64,
    pub sent: u64,
    pub settled: u64,
    pub error: Option<String>,
    pub started_at: SystemTime,
    pub ranges: Vec<Range>,
}

struct Entry {
    progress: Mutex<ReplayProgress>,
    /// Set by a cancel: the reader thread looks at the flag, the feeding task waits on the
    /// channel.
    cancel: AtomicBool,
    cancelled: watch::Sender<bool>,
}

/// Every replay of one gateway.
#[derive(Default)]
pub struct Replays {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

impl Replays {
    /// Starts a replay of `ranges` through `route_handle` (the route's dispatcher).
    pub fn start(
        &self,
        config: Config,
        route: RouteConfig,
        ranges: Vec<Range>,
        route_handle: RouteHandle,
    ) -> ReplayProgress {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let total = ranges.iter().map(|r| (r.end - r.start) as u64).sum();
        let progress = ReplayProgress {
            id,
            route: route.name.clone(),
            state: ReplayState::Running,
            total,
            sent: 0,
            settled: 0,
            error: None,
            started_at: SystemTime::now(),
            ranges: ranges.clone(),
        };
        let entry = Arc::new(Entry {
            progress: Mutex::new(progress.clone()),
            cancel: AtomicBool::new(false),
            cancelled: watch::Sender::new(false),
        });
        {
            let mut all = self.all.lock();
            all.insert(id, entry.clone());
            let finished: Vec<u64> = all
                .iter()
                .filter(|(_, e)| e.progress.lock().state != ReplayState::Running)
                .map(|(id, _)| *id)
                .collect();
            for old in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
                all.remove(old);
            }
        }
        info!(route = route.name, replay = id, records = total, ranges = ranges.len(), "replay started by an operator");
        tokio::spawn(drive(entry, config, route, ranges, route_handle));
        progress
    }

    pub fn get(&self, id: u64) -> Option<ReplayProgress> {
        self.all.lock().get(&id).map(|e| e.progress.lock().clone())
    }

    pub fn list(&self) -> Vec<ReplayProgress> {
        self.all.lock().values().map(|e| e.progress.lock().clone()).collect()
    }

    /// Asks replay `id` to stop; its progress says when it has.
    pub fn cancel(&self, id: u64) -> Option<ReplayProgress> {
        let all = self.all.lock();
        let entry = all.get(&id)?;
        entry.cancel.store(true, Ordering::Relaxed);
        entry.cancelled.send_replace(true);
        let progress = entry.progress.lock().clone();
        Some(progress)
    }
}

/// Reads the ranges on a blocking thread and feeds the dispatcher, [`OUTSTANDING`] batches at
/// most, until the reader is done, the replay is cancelled or the route stops.
async fn drive(entry: Arc<Entry>, config: Config, route: RouteConfig, ranges: Vec<Range>, route_handle: RouteHandle) {
    let id = entry.progress.lock().id;
    let (tx, mut batches) = mpsc::channel::<Vec<crate::kafka::Record>>(1);
    let reader_entry = entry.clone();
    let reader = tokio::task::spawn_blocking(move || {
        replay::read(&config, &route, &ranges, BATCH, &tx, &reader_entry.cancel).map_err(|e| e.to_string())
    });
    let mut out: VecDeque<(u64, oneshot::Receiver<()>)> = VecDeque::new();
    let mut failure: Option<String> = None;
    let mut cancelled = entry.cancelled.subscribe();
    let settle = |entry: &Entry, n: u64| entry.progress.lock().settled += n;
    'feed: loop {
        let batch = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
            _ = cancelled.wait_for(|c| *c) => break,
        };
        while out.len() >= OUTSTANDING {
            let Some((n, done)) = out.pop_front() else { break };
            tokio::select! {
                settled = done => {
                    if settled.is_err() {
                        failure = Some("the route stopped during the replay".into());
                        break 'feed;
                    }
                    settle(&entry, n);
                }
                _ = cancelled.wait_for(|c| *c) => break 'feed,
            }
        }
        let n = batch.len() as u64;
        let (done, settled) = oneshot::channel();
        if route_handle.replay(id, batch, done).await.is_err() {
            failure = Some("the route stopped during the replay".into());
            break;
        }
        entry.progress.lock().sent += n;
        out.push_back((n, settled));
        // Count what has settled meanwhile, for progress.
        while let Some((n, done)) = out.front_mut() {
            match done.try_recv() {
                Ok(()) => {
                    settle(&entry, *n);
                    out.pop_front();
                }
                Err(_) => break,
            }
        }
    }
    drop(batches);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failure = failure.or(Some(e)),
        Err(e) => failure = failure.or(Some(format!("the replay reader failed: {e}"))),
    }
    // The last batches settle, unless the replay is cancelled meanwhile.
    if failure.is_none() {
        for (n, done) in out {
            tokio::select! {
                settled = done => {
                    if settled.is_err() {
                        failure = Some("the route stopped during the replay".into());
                        break;
                    }
                    settle(&entry, n);
                }
                _ = cancelled.wait_for(|c| *c) => break,
            }
        }
    }
    let cancelled = entry.cancel.load(Ordering::Relaxed);
    let mut p = entry.progress.lock();
    p.state = match (&failure, cancelled && p.settled < p.total) {
        (Some(_), _) => ReplayState::Failed,
        (None, true) => ReplayState::Cancelled,
        (None, false) => ReplayState::Done,
    };
    match &failure {
        Some(error) => warn!(route = p.route, replay = id, error, "replay failed"),
        None => info!(route = p.route, replay = id, settled = p.settled, state = p.state.as_str(), "replay finished"),
    }
    p.error = failure;
}

/// Checks the bounds make sense before anything is read (`now_ms`: the time now, Unix ms). A
/// range that can hold nothing is refused rather than run as an empty replay: it is a typo
/// (offsets swapped, a time in the wrong unit), and an empty "done" would hide it.
pub fn check_bounds(from: &Bound, to: &Bound, now_ms: i64) -> Result<(), String> {
    match (from, to) {
        (Bound::Latest, _) => Err("a replay starts at a time or at offsets, not at the end".into()),
        (Bound::Time(a), _) if *a > now_ms => Err(format!(
            "from_unix_ms ({a}) is in the future (now is {now_ms}): nothing to replay yet; is it in milliseconds?"
        )),
        (Bound::Time(a), Bound::Time(b)) if b <= a => Err(format!("`to` ({b}) must be after `from` ({a})")),
        (Bound::Offsets(from), Bound::Offsets(to)) => {
            for ((topic, partition), start) in from {
                if let Some(end) = to.get(&(topic.clone(), *partition)).filter(|end| *end <= start) {
                    return Err(format!(
                        "to_offsets {topic}/{partition}={end} must be after from_offsets {topic}/{partition}={start} \
                         (the end is exclusive)"
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(&str, i32, i64)]) -> Bound {
        Bound::Offsets(pairs.iter().map(|(t, p, o)| ((t.to_string(), *p), *o)).collect())
    }

    #[test]
    fn ranges_that_can_hold_nothing_are_refused_naming_the_bound() {
        let now = 1_800_000_000_000;
        assert_eq!(check_bounds(&offsets(&[("o", 0, 10)]), &offsets(&[("o", 0, 50), ("o", 1, 0)]), now), Ok(()));
        let swapped = check_bounds(&offsets(&[("o", 0, 50)]), &offsets(&[("o", 0, 10)]), now).expect_err("swapped");
        assert!(swapped.contains("to_offsets o/0=10 must be after from_offsets o/0=50"), "{swapped}");
        assert!(check_bounds(&offsets(&[("o", 0, 5)]), &offsets(&[("o", 0, 5)]), now).is_err(), "an empty range");
        let future = check_bounds(&Bound::Time(4_611_686_018_427_387), &Bound::Latest, now).expect_err("year 146M");
        assert!(future.contains("in the future"), "{future}");
        assert_eq!(check_bounds(&Bound::Time(now - 60_000), &Bound::Latest, now), Ok(()));
        assert!(check_bounds(&Bound::Time(now - 10), &Bound::Time(now - 20), now).is_err());
        assert!(check_bounds(&Bound::Latest, &Bound::Latest, now).is_err());
    }
}
