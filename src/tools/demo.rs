//! The embedded demo: librdkafka's mock cluster in-process, a producer, the gateway on a real
//! loopback gRPC port and subscribers over real gRPC, all in one process, no external service.
//!
//! It reports what a user checks first: everything produced was acked and committed, nothing
//! was lost, and how many deliveries were duplicates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::gateway;
use crate::stats::Stats;
use fanout_client::{Delivery, Nack, Replicas, Subscriber};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    pub subscribers: usize,
    /// Messages produced per second.
    pub rate: u32,
    pub partitions: i32,
    /// gRPC address of the gateway (fixed so a second terminal can attach).
    pub listen: String,
    /// Admin API address (fixed so `fanoutctl` in a second terminal can look at the demo).
    pub admin_listen: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            subscribers: 3,
            rate: 2_000,
            partitions: 8,
            listen: "127.0.0.1:50051".into(),
            admin_listen: "127.0.0.1:9090".into(),
        }
    }
}

pub const DEMO_TOPIC: &str = "demo-events";
pub const DEMO_ROUTE: &str = "demo";
pub const DEMO_GROUP: &str = "fanout-demo";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Start(#[from] gateway::StartError),
}

/// The demo's result: one line that scripts read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoReport {
    pub produced: u64,
    pub delivered: u64,
    pub acked: u64,
    pub committed: u64,
    pub lost: u64,
    pub duplicates: u64,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo: produced={} delivered={} acked={} committed={} lost={} duplicates={}",
            self.produced, self.delivered, self.acked, self.committed, self.lost, self.duplicates
        )
    }
}

/// Runs the demo; `live` receives one status line per second. Ends after `duration` or
/// when `stop` turns true (Ctrl-C), then waits for every produced message to be acked and
/// committed before it reports.
pub async fn run(
    options: DemoOptions,
    mut stop: watch::Receiver<bool>,
    live: impl Fn(&str),
) -> Result<DemoReport, DemoError> {
    let cluster = MockCluster::new(3)?;
    cluster.create_topic(DEMO_TOPIC, options.partitions, 3)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut config = Config::single_route(&bootstrap, DEMO_GROUP, DEMO_ROUTE, &[DEMO_TOPIC]);
    config.server.listen = options.listen.clone();
    config.server.admin_listen = options.admin_listen.clone();
    let gw = gateway::start(config).await?;
    let stats = gw.stats();
    info!(endpoint = %gw.endpoint(), "demo gateway up");

    let (subs_stop_tx, subs_stop) = watch::channel(false);
    let mut subscribers = Vec::new();
    for i in 0..options.subscribers {
        subscribers.push(tokio::spawn(subscriber(gw.endpoint(), format!("demo-subscriber-{i}"), subs_stop.clone())));
    }

    let mut producer = Produced::new(&bootstrap)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (options.rate / 100).max(1);
    let mut next_live = Duration::from_secs(1);
    let mut seq: u64 = 0;
    while started.elapsed() < options.duration && !*stop.borrow() {
        let waiting = producer.waiting();
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
            _ = producer.next_report(), if waiting => continue,
        }
        for _ in 0..per_tick {
            let key = format!("customer-{}", seq % 500);
            let value = format!(
                r#"{{"seq":{seq},"customer":"{key}","amount_cents":{},"kind":"order-placed","pad":"........................"}}"#,
                (seq * 7919) % 100_000
            );
            producer.send(DEMO_TOPIC, &key, &value);
            seq += 1;
        }
        if started.elapsed() >= next_live {
            next_live += Duration::from_secs(1);
            live(&live_line(started.elapsed(), producer.count, &stats));
        }
    }
    let (produced, produced_total) = producer.finish().await;
    info!(produced = produced_total, "producing stopped; waiting for acks");

    // Wait for every produced message to be acked and committed (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let targets = produced_ends(&produced);
    while Instant::now() < deadline {
        let committed_all =
            targets.iter().all(|(p, end)| stats.committed_of(DEMO_GROUP, DEMO_TOPIC, *p).is_some_and(|c| c >= *end));
        if Stats::get(&stats.acked) >= produced_total && committed_all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() >= next_live {
            next_live += Duration::from_secs(1);
            live(&live_line(started.elapsed(), produced_total, &stats));
        }
    }

    let delivered = Stats::get(&stats.delivered);
    let acked = Stats::get(&stats.acked);
    let duplicates = Stats::get(&stats.redelivered);
    // Subscribers drain before the gateway stops, as a deploy would have them.
    let _ = subs_stop_tx.send(true);
    for s in subscribers {
        let _ = s.await;
    }
    gw.shutdown().await;

    // The truth is what the broker holds for the group.
    let committed = committed_offsets(&bootstrap, DEMO_GROUP, DEMO_TOPIC, options.partitions)?;
    let mut report = DemoReport { produced: produced_total, delivered, acked, duplicates, ..DemoReport::default() };
    for (p, offsets) in produced.iter() {
        let c = committed.get(p).copied().unwrap_or(0);
        report.committed += c.max(0) as u64;
        report.lost += offsets.iter().filter(|o| **o >= c).count() as u64;
    }
    drop(cluster);
    Ok(report)
}

/// The demo's producer and where each message it produced landed. Owned by the producing
/// task; sends are not awaited one by one, their delivery reports are collected as they come.
pub(crate) struct Produced {
    producer: FutureProducer,
    pending: FuturesUnordered<DeliveryFuture>,
    /// Offsets per partition of the messages the broker acknowledged.
    pub offsets: HashMap<i32, Vec<i64>>,
    pub count: u64,
}

impl Produced {
    pub(crate) fn new(bootstrap: &str) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        Ok(Self { producer, pending: FuturesUnordered::new(), offsets: HashMap::new(), count: 0 })
    }

    /// Queues one message; a full local queue skips it (it is then never counted as produced).
    pub(crate) fn send(&mut self, topic: &str, key: &str, value: &str) {
        match self.producer.send_result(FutureRecord::to(topic).key(key).payload(value)) {
            Ok(delivery) => self.pending.push(delivery),
            Err((error, _)) => debug!(%error, "produce queue full; skipping this message"),
        }
    }

    /// Whether delivery reports are outstanding.
    pub(crate) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the next delivery report (pending forever when none is outstanding).
    pub(crate) async fn next_report(&mut self) {
        match self.pending.next().await {
            Some(Ok(Ok(delivery))) => {
                self.offsets.entry(delivery.partition).or_default().push(delivery.offset);
                self.count += 1;
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    /// Waits for every report, flushes and closes the producer.
    pub(crate) async fn finish(mut self) -> (HashMap<i32, Vec<i64>>, u64) {
        while self.waiting() {
            self.next_report().await;
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        (self.offsets, self.count)
    }
}

/// One past the highest produced offset per partition.
fn produced_ends(produced: &HashMap<i32, Vec<i64>>) -> Vec<(i32, i64)> {
    produced.iter().map(|(p, o)| (*p, o.iter().max().map_or(0, |m| m + 1))).collect()
}

fn live_line(elapsed: Duration, produced: u64, stats: &Stats) -> String {
    format!(
        "[{:>3}s] produced={} delivered={} acked={} committed={} buffered={} paused={} sessions={}",
        elapsed.as_secs(),
        produced,
        Stats::get(&stats.delivered),
        Stats::get(&stats.acked),
        stats.committed_sum(),
        Stats::get(&stats.buffered),
        Stats::get(&stats.partitions_paused).saturating_sub(Stats::get(&stats.partitions_resumed)),
        Stats::get(&stats.sessions),
    )
}

/// The group's committed offsets as the broker holds them.
pub(crate) fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// A well-behaved subscriber, built on the subscriber library: a handler that takes a few
/// hundred microseconds, so with 16 at once acks go up out of order as a service's parallel
/// workers would send them; reconnects and the drain at the end are the library's.
async fn subscriber(endpoint: String, name: String, mut stop: watch::Receiver<bool>) {
    let built = Subscriber::builder(DEMO_ROUTE)
        .replicas(Replicas::list([endpoint]))
        .name(name.clone())
        .max_in_flight(200)
        .build();
    let subscriber = match built {
        Ok(subscriber) => subscriber,
        Err(error) => return warn!(%error, name, "demo subscriber not started"),
    };
    let handler = |_: Delivery| async {
        let work = Duration::from_micros(rand::random_range(0..500));
        tokio::time::sleep(work).await;
        Ok::<(), Nack>(())
    };
    let stopped = async move {
        let _ = stop.wait_for(|&stopped| stopped).await;
    };
    if let Err(error) = subscriber.run(handler, stopped).await {
        warn!(%error, name, "demo subscriber ended");
    }
}
