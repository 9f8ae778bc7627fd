//! Fixtures for the rebalance and fault suites (only `tests/rebalance.rs`, `tests/faults.rs`
//! and `tests/real_kafka_groups.rs` include this file): a producer that keeps feeding the topic while the gateway consumes, a
//! subscriber that remembers which gateway delivered each message, and the end-of-run checks
//! both suites share.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{self, ROUTE, TOPIC};

/// Payload size: small, so that tens of thousands of messages stay far below the mock
/// broker's 5 MiB per-partition retention.
pub const VALUE_BYTES: usize = 100;
/// Most messages enqueued at once, between looks at the delivery reports.
const CHUNK: usize = 500;

/// How a [`Feed`] paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Messages to produce in all.
    pub total: usize,
    /// Most messages sent but not yet acked by subscribers: keeps the log far from the mock's
    /// retention, and production going (not finished early) while faults are injected.
    pub ahead: usize,
    /// Messages per second after the first `ahead`; `None`: as fast as `ahead` allows.
    pub rate: Option<u32>,
}

/// A producer task feeding a topic (`TOPIC` unless told) while the gateway consumes.
///
/// Idempotent with `acks=all`: errors injected on Produce requests are retried by librdkafka
/// without losing or doubling a message, so whatever is missing at the end was lost by the
/// gateway, not by the test.
pub struct Feed {
    task: JoinHandle<Vec<String>>,
    /// Messages whose delivery the broker confirmed so far.
    pub produced: Arc<AtomicUsize>,
}

impl Feed {
    /// Starts producing keyed messages (`keys` distinct keys); `consumed` says how many have
    /// been acked so far (for `Pace::ahead`).
    pub fn start(bootstrap: &str, keys: usize, pace: Pace, consumed: impl Fn() -> usize + Send + 'static) -> Self {
        Self::start_on(bootstrap, TOPIC, keys, pace, consumed)
    }

    /// [`Feed::start`] on another topic than `TOPIC`.
    pub fn start_on(
        bootstrap: &str,
        topic: &str,
        keys: usize,
        pace: Pace,
        consumed: impl Fn() -> usize + Send + 'static,
    ) -> Self {
        let topic = topic.to_string();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("retry.backoff.ms", "50")
            // Long enough to ride out a broker that is down for a few seconds.
            .set("message.timeout.ms", "120000")
            .create()
            .expect("test producer");
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut ids = Vec::with_capacity(pace.total);
            // Outstanding delivery reports. Not awaited in order: while one broker is down, the
            // messages for its partitions wait in librdkafka and the others keep flowing.
            let mut reports = FuturesUnordered::new();
            let mut next = 0usize;
            while next < pace.total || !reports.is_empty() {
                let mut allowed =
                    pace.ahead.saturating_sub(next.saturating_sub(consumed())).min(pace.total - next).min(CHUNK);
                if let Some(rate) = pace.rate {
                    let budget = pace.ahead + (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
                    allowed = allowed.min(budget.saturating_sub(next));
                }
                for i in next..next + allowed {
                    let key = format!("key-{}", i % keys);
                    let value = format!("{:<width$}", format!("message {i}"), width = VALUE_BYTES);
                    loop {
                        match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value)) {
                            Ok(report) => {
                                reports.push(report);
                                break;
                            }
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                                tokio::time::sleep(Duration::from_millis(10)).await
                            }
                            Err((error, _)) => panic!("cannot enqueue message {i}: {error}"),
                        }
                    }
                }
                next += allowed;
                let wait = tokio::time::sleep(Duration::from_millis(10));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        Some(report) = reports.next(), if !reports.is_empty() => {
                            let delivery = report
                                .expect("delivery report")
                                .unwrap_or_else(|(error, _)| panic!("the test producer lost a message: {error}"));
                            ids.push(format!("{topic}/{}/{}", delivery.partition, delivery.offset));
                        }
                        _ = &mut wait => break,
                    }
                }
                counter.store(ids.len(), Ordering::Relaxed);
            }
            ids
        });
        Self { task, produced }
    }

    /// Waits for the last delivery report; returns every produced delivery id.
    pub async fn finish(self) -> Vec<String> {
        self.task.await.expect("the feed task finished")
    }
}

/// What the rebalance suite's subscribers saw, per gateway.
#[derive(Default)]
pub struct Ledger {
    /// Gateways that delivered each id, in arrival order.
    pub delivered_by: HashMap<String, Vec<&'static str>>,
    /// Ids acked at least once (the ack was sent, whether or not the gateway still held it).
    pub acked: HashSet<String>,
    /// When each id was first acked, and when each gateway first delivered anything (for
    /// failure messages).
    pub first_acked: HashMap<String, tokio::time::Instant>,
    pub first_by: HashMap<&'static str, tokio::time::Instant>,
    /// Ids received but not acked when a stream ended.
    pub in_flight_at_break: HashSet<String>,
    pub streams_ended: u32,
}

impl Ledger {
    pub fn duplicates(&self) -> Vec<String> {
        let mut d: Vec<String> =
            self.delivered_by.iter().filter(|(_, by)| by.len() > 1).map(|(id, _)| id.clone()).collect();
        d.sort();
        d
    }

    /// Partitions (of `TOPIC`) that `gateway` delivered at least one record of.
    pub fn partitions_of(&self, gateway: &str) -> HashSet<i32> {
        self.delivered_by.iter().filter(|(_, by)| by.contains(&gateway)).map(|(id, _)| partition_of(id)).collect()
    }
}

/// The partition in a delivery id `topic/partition/offset`.
pub fn partition_of(id: &str) -> i32 {
    id.rsplit('/').nth(1).and_then(|p| p.parse().ok()).expect("delivery ids are topic/partition/offset")
}

/// How a subscriber in the rebalance suite processes.
#[derive(Debug, Clone, Copy)]
pub struct Processing {
    pub window: u32,
    /// One delivery in `slow_every` takes `slow_for` to process (its ack comes that much
    /// later), so some deliveries are always out for a while: a rebalance meets them in flight.
    pub slow_every: usize,
    pub slow_for: Duration,
}

/// A subscriber's stream to one gateway replica (`gateway` names it in the ledger). Acks out of
/// order like `support::subscriber` (a random 70 % of what it holds on every batch, the rest
/// on the next 30 ms tick), except the slow ones. Reconnects until `stop`.
pub async fn stream_to(
    name: String,
    gateway: &'static str,
    endpoint: String,
    processing: Processing,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let mut received = 0usize;
    while !*stop.borrow() {
        let mut sub = match Subscription::connect(&endpoint, stream::hello(ROUTE, &name, processing.window)).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut holding: Vec<String> = Vec::new();
        let mut slow: Vec<(tokio::time::Instant, String)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(30));
        loop {
            let mut stop_rx = stop.clone();
            tokio::select! {
                batch = sub.next() => match batch {
                    Ok(Some(batch)) => {
                        {
                            let mut l = ledger.lock();
                            l.first_by.entry(gateway).or_insert_with(tokio::time::Instant::now);
                            for d in &batch {
                                l.delivered_by.entry(stream::id_of(d)).or_default().push(gateway);
                            }
                        }
                        for d in batch {
                            received += 1;
                            if received.is_multiple_of(processing.slow_every) {
                                slow.push((tokio::time::Instant::now() + processing.slow_for, stream::id_of(&d)));
                            } else {
                                holding.push(stream::id_of(&d));
                            }
                        }
                        holding.shuffle(&mut rand::rng());
                        let keep = holding.len() * 3 / 10;
                        let now: Vec<String> = holding.drain(keep..).collect();
                        ack(&sub, now, &ledger).await;
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let mut now = std::mem::take(&mut holding);
                    let due = tokio::time::Instant::now();
                    slow.retain(|(at, id)| if *at <= due { now.push(id.clone()); false } else { true });
                    ack(&sub, now, &ledger).await;
                }
                _ = stop_rx.changed() => break,
            }
        }
        let mut l = ledger.lock();
        l.streams_ended += 1;
        l.in_flight_at_break.extend(holding.drain(..));
        l.in_flight_at_break.extend(slow.drain(..).map(|(_, id)| id));
    }
}

async fn ack(sub: &Subscription, ids: Vec<String>, ledger: &Mutex<Ledger>) {
    if ids.is_empty() {
        return;
    }
    {
        let now = tokio::time::Instant::now();
        let mut l = ledger.lock();
        for id in &ids {
            l.first_acked.entry(id.clone()).or_insert(now);
        }
        l.acked.extend(ids.iter().cloned());
    }
    let _ = sub.ack(ids).await;
}

/// Polls `check` every `every` until it holds or `limit` passes; says whether it held.
/// `check` may block (it runs on the blocking pool: the broker queries in `support` are
/// synchronous and each creates a client).
pub async fn wait_blocking(limit: Duration, every: Duration, check: impl Fn() -> bool + Send + Sync + 'static) -> bool {
    let check = Arc::new(check);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let c = check.clone();
        if tokio::task::spawn_blocking(move || c()).await.expect("check ran") {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Turns on librdkafka's own debug contexts for a gateway when `FANOUT_TEST_KAFKA_DEBUG` is set
/// (e.g. `cgrp,consumer` or `fetch`); they are logged under `RUST_LOG=librdkafka=debug`. For
/// reading what the client did around a fault.
pub fn kafka_debug_from_env(properties: &mut std::collections::BTreeMap<String, String>) {
    if let Ok(contexts) = std::env::var("FANOUT_TEST_KAFKA_DEBUG") {
        properties.insert("debug".into(), contexts);
    }
}

/// Committed offsets against high watermarks, for failure messages.
pub fn commit_gap(bootstrap: &str, group: &str, partitions: i32) -> String {
    let committed = support::committed(bootstrap, group, partitions);
    let mut hw: Vec<(i32, i64)> = support::high_watermarks(bootstrap, partitions).into_iter().collect();
    hw.sort();
    hw.iter()
        .map(|(p, hw)| format!("p{p}: committed {:?} / high {hw}", committed.get(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids in `produced` that nobody acked, for failure messages (at most ten).
pub fn missing<'a>(produced: &'a [String], acked: &HashSet<String>) -> Vec<&'a String> {
    produced.iter().filter(|id| !acked.contains(*id)).take(10).collect()
}
