//! Counters of one [`crate::Subscriber`], readable while it runs (for a service's own metrics or
//! logs, and for tests that watch a subscriber from outside).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) streams: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) drained_by_gateway: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A live view of a subscriber's counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Stats(pub(crate) Arc<Counters>);

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Deliveries received, on every stream (redeliveries included).
    pub received: u64,
    /// Deliveries acked (handler returned `Ok`).
    pub acked: u64,
    /// Deliveries nacked (handler returned `Err` or panicked).
    pub nacked: u64,
    /// Handler panics (each also counted in `nacked`).
    pub panicked: u64,
    /// Deliveries dropped unhandled because their stream ended first; the gateway redelivers them.
    pub abandoned: u64,
    /// Streams reopened after an error or a replica's restart.
    pub reconnects: u64,
    /// Streams open now (one per reachable replica).
    pub streams: u64,
    /// Handlers running now.
    pub running: u64,
    /// Streams the gateway drained without being asked (an operator's `fanoutctl drain` of this
    /// pod). After the first, the subscriber drains its other streams and opens no more: a pod
    /// taken out of a route stays out until it restarts.
    pub drained_by_gateway: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            received: get(&c.received),
            acked: get(&c.acked),
            nacked: get(&c.nacked),
            panicked: get(&c.panicked),
            abandoned: get(&c.abandoned),
            reconnects: get(&c.reconnects),
            streams: get(&c.streams),
            running: get(&c.running),
            drained_by_gateway: get(&c.drained_by_gateway),
        }
    }
}
