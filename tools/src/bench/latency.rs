//! Latency at a fixed produce rate: from the producer's send to the moment the consumer (raw)
//! or the subscriber (gateway) has the message, as an HDR histogram in microseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use tokio::sync::watch;

use super::load::{self, age};
use super::throughput::{acking_subscriber, consumer_config};
use super::BenchError;
use fanout_gateway::config::Config;
use fanout_gateway::gateway;

/// Messages sent in the first second are left out: connections and fetch sessions warm up.
const WARMUP: Duration = Duration::from_secs(1);
/// Longest wait, once producing is over, for the last messages to arrive.
const TAIL: Duration = Duration::from_secs(10);

/// Percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub count: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        count: h.len(),
    }
}

/// Records one message's age unless it was sent during the warm-up.
fn record(h: &mut Histogram<u64>, payload: &[u8], run_started: Instant) {
    let Some(age) = age(payload) else { return };
    if Instant::now().saturating_duration_since(run_started) < WARMUP + age {
        return;
    }
    h.saturating_record(age.as_micros().max(1) as u64);
}

/// The clock both readers' warm-ups are counted from: set once the readers are ready, just
/// before producing starts.
type Start = Arc<Mutex<Instant>>;

/// One paced run read by both sides at once: a plain consumer (what Kafka alone gives) and the
/// gateway's `subscribers` subscribers, which ack at once, take the same messages from the same
/// topic, each side in a consumer group of its own. A stall of the machine or the broker then
/// lands in both histograms, so the difference of their percentiles is the gateway's; run one
/// after the other, a single stall in either window moved the "added" p99 by tens of
/// milliseconds either way. Returns (raw, gateway).
pub async fn paced(
    bootstrap: &str,
    topic: &str,
    rate: u32,
    size: usize,
    duration: Duration,
    subscribers: usize,
    properties: &BTreeMap<String, String>,
) -> Result<(Percentiles, Percentiles), BenchError> {
    let start: Start = Arc::new(Mutex::new(Instant::now()));
    let route = "latency";
    let mut config = Config::single_route(bootstrap, &format!("{topic}-gw"), route, &[topic]);
    config.kafka.commit_interval_ms = 1_000;
    config.kafka.properties = properties.clone();
    let gw = gateway::start(config).await?;
    let stats = gw.stats();
    let h = Arc::new(Mutex::new(histogram()));
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let (h, start, received) = (h.clone(), start.clone(), received.clone());
        let look = move |d: &fanout_gateway::proto::Delivery| {
            let since = *start.lock();
            record(&mut h.lock(), d.value.as_deref().unwrap_or_default(), since);
            received.fetch_add(1, Ordering::Relaxed);
        };
        let name = format!("latency-{i}");
        tasks.push(tokio::spawn(acking_subscriber(gw.endpoint(), route, name, 1_000, stop.clone(), look)));
    }
    let assigned_by = Instant::now() + Duration::from_secs(30);
    while (stats.counters().rebalances == 0 || stats.counters().sessions < subscribers as u64)
        && Instant::now() < assigned_by
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut raw = RawReader::start(bootstrap, topic, properties, start.clone())?;
    raw.ready().await;

    *start.lock() = Instant::now();
    let sent = produce(bootstrap, topic, rate, size, duration).await?;
    let tail = Instant::now() + TAIL;
    while received.load(Ordering::Relaxed) < sent && Instant::now() < tail {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let raw = raw.finish(sent).await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    gw.shutdown().await;
    let gateway = percentiles(&h.lock());
    Ok((percentiles(&raw), gateway))
}

/// A plain consumer on a blocking thread, recording each message's age.
struct RawReader {
    ready: tokio::sync::oneshot::Receiver<()>,
    /// The number of messages sent, once producing is over: the reader stops when it has them
    /// all (or after [`TAIL`]), so the slowest messages are in the histogram too.
    sent: std::sync::mpsc::Sender<u64>,
    reader: tokio::task::JoinHandle<Histogram<u64>>,
}

impl RawReader {
    fn start(
        bootstrap: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        start: Start,
    ) -> Result<Self, BenchError> {
        let consumer: BaseConsumer = consumer_config(bootstrap, &format!("{topic}-raw"), properties).create()?;
        consumer.subscribe(&[topic])?;
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (sent, sent_rx) = std::sync::mpsc::channel::<u64>();
        let reader = tokio::task::spawn_blocking(move || {
            let mut h = histogram();
            let mut ready_tx = Some(ready_tx);
            let mut received = 0u64;
            let mut until: Option<(u64, Instant)> = None;
            loop {
                if let Some(tx) = ready_tx.take_if(|_| consumer.assignment().is_ok_and(|a| a.count() > 0)) {
                    let _ = tx.send(());
                }
                if let Ok(sent) = sent_rx.try_recv() {
                    until = Some((sent, Instant::now() + TAIL));
                }
                if until.is_some_and(|(sent, by)| received >= sent || Instant::now() > by) {
                    break;
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                    received += 1;
                    if let Some(p) = m.payload() {
                        let since = *start.lock();
                        record(&mut h, p, since);
                    }
                }
            }
            consumer.unsubscribe();
            h
        });
        Ok(Self { ready, sent, reader })
    }

    /// Until the consumer has its partitions (or gave up: the histogram says so).
    async fn ready(&mut self) {
        let _ = (&mut self.ready).await;
    }

    /// Tells it how many were sent and takes its histogram once it has them all.
    async fn finish(self, sent: u64) -> Result<Histogram<u64>, BenchError> {
        let _ = self.sent.send(sent);
        Ok(self.reader.await?)
    }
}

/// Produces at `rate` for `duration` on a blocking thread; returns how many were sent.
async fn produce(bootstrap: &str, topic: &str, rate: u32, size: usize, duration: Duration) -> Result<u64, BenchError> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    Ok(tokio::task::spawn_blocking(move || load::paced(&bootstrap, &topic, rate, size, duration)).await??)
}
