//! Throughput: how fast a backlog is read by a plain consumer, and how fast it goes through
//! the gateway to subscribers that ack it, from the first message to the last.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::load::Backlog;
use super::BenchError;
use fanout_client::{Nack, Replicas, Subscriber};
use fanout_gateway::config::Config;
use fanout_gateway::gateway;
use fanout_gateway::proto::Delivery;

/// Longest a measurement may take before it is reported as incomplete.
const LIMIT: Duration = Duration::from_secs(90);

/// Messages and payload bytes read, and the time from the first to the last.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// CPU time the reader's process used over the run (all threads: on the mock, broker,
    /// gateway and subscribers; on a real broker, the bench's process or the share-group
    /// reader's), in cores: 2.0 on two cores means the run was bound by the CPU.
    pub cores: f64,
    /// The same CPU time, as a total (per message: [`Rate::cpu_us_per_msg`]).
    pub cpu: Duration,
    /// CPU time a real broker's process used over the run (None on the mock, which lives in
    /// this process, and for a cluster elsewhere).
    pub broker_cpu: Option<Duration>,
}

/// CPU time used by this process so far (user + system), from /proc/self/stat.
pub(crate) fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; Linux
    // counts them in USER_HZ, 100 per second.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The reader process's CPU per message, in µs.
    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64
    }

    /// The broker's CPU per message, in µs, when it was measured.
    pub fn broker_us_per_msg(&self) -> Option<f64> {
        self.broker_cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64)
    }
}

/// CPU seconds of process `pid` (the broker's JVM), if it is measured.
fn broker_seconds(pid: Option<u32>) -> Option<f64> {
    pid.and_then(super::routes::cpu_seconds)
}

/// The broker's CPU between two readings.
pub(crate) fn broker_between(first: Option<f64>, last: Option<f64>) -> Option<Duration> {
    first.zip(last).map(|(a, b)| Duration::from_secs_f64((b - a).max(0.0)))
}

/// A consumer with the properties both sides of a comparison share.
pub(crate) fn consumer_config(bootstrap: &str, group: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap).set("group.id", group).set("auto.offset.reset", "earliest");
    for (k, v) in properties {
        cc.set(k, v);
    }
    cc
}

/// A plain rdkafka consumer reads the whole backlog, `passes` times over, and the median pass
/// is reported. It takes the partitions by assignment, not through a group: joining is not
/// what is measured (each gateway run is timed from its first delivery for the same reason).
/// It touches nothing but the payload length, the least a consumer can do. `broker`: a real
/// broker's PID, whose CPU over each pass is reported too.
pub async fn raw(
    bootstrap: &str,
    backlog: &Backlog,
    passes: usize,
    properties: &BTreeMap<String, String>,
    broker: Option<u32>,
) -> Result<Rate, BenchError> {
    let mut rates = Vec::new();
    for pass in 0..passes.max(1) {
        let consumer: BaseConsumer =
            consumer_config(bootstrap, &format!("{}-raw-{pass}", backlog.topic), properties).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..backlog.ends.len() as i32 {
            tpl.add_partition_offset(&backlog.topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let ends = backlog.ends.clone();
        let rate = tokio::task::spawn_blocking(move || read_to_ends(&consumer, &ends, broker)).await?;
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
    Ok(rates[rates.len() / 2])
}

/// Polls until every partition has been read to its end. CPU (this process's, and `broker`'s)
/// is counted from the first message to the last, as the time is: the consumer's start
/// (offset lookups, a fresh fetch session) is not what is measured.
fn read_to_ends(consumer: &BaseConsumer, ends: &[i64], broker: Option<u32>) -> Rate {
    let mut next = vec![0i64; ends.len()];
    let mut remaining = ends.iter().filter(|e| **e > 0).count();
    let mut rate = Rate::default();
    let mut first = None;
    let mut cpu_at_first = (Duration::ZERO, None);
    let started = Instant::now();
    while remaining > 0 && started.elapsed() < LIMIT {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let now = Instant::now();
        let first = *first.get_or_insert_with(|| {
            cpu_at_first = (process_cpu(), broker_seconds(broker));
            now
        });
        rate.messages += 1;
        rate.bytes += m.payload_len() as u64;
        rate.elapsed = now - first;
        let Some(n) = usize::try_from(m.partition()).ok().and_then(|p| next.get_mut(p)) else { continue };
        let end = ends[m.partition() as usize];
        if *n < end && m.offset() + 1 >= end {
            remaining -= 1;
        }
        *n = (*n).max(m.offset() + 1);
    }
    rate.cpu = process_cpu().saturating_sub(cpu_at_first.0);
    rate.cores = rate.cpu.as_secs_f64() / rate.elapsed.as_secs_f64().max(1e-9);
    rate.broker_cpu = broker_between(cpu_at_first.1, broker_seconds(broker));
    rate
}

/// What the subscribers of a gateway run saw.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    first: Mutex<Option<Instant>>,
}

/// Who reads a gateway run: `subscribers` subscribers with a window of `window` each, and the
/// gateway on the bench's runtime (`workers: None`) or on a runtime of its own with that many
/// worker threads, for the scaling row: the subscribers stay on the bench's runtime, so what
/// changes is the threads the gateway's own tasks (its route's dispatcher, the gRPC streams)
/// may run on. The route's Kafka thread and librdkafka's are threads of their own either way.
#[derive(Debug, Clone, Copy)]
pub struct Readers {
    pub subscribers: usize,
    pub window: u32,
    pub workers: Option<usize>,
    /// The route's `max_uncommitted_per_partition`, when not the gateway's default: the
    /// small-bound row, where partitions pause and resume all the time.
    pub bound: Option<usize>,
}

/// The gateway's runtime in a run with [`Readers::workers`] set.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new(workers: Option<usize>) -> Result<Self, BenchError> {
        let Some(n) = workers else { return Ok(Self(None)) };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .thread_name("gateway-worker")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `future` on the gateway's runtime (or this one) and waits for it.
    async fn run<F>(&self, future: F) -> Result<F::Output, BenchError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => Ok(runtime.spawn(future).await?),
            None => Ok(future.await),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        // Dropped inside the bench's runtime, where blocking on the workers is not allowed;
        // the gateway has shut down by then.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The gateway reads the backlog and delivers it over loopback gRPC to the subscribers of
/// `readers`, that ack every delivery. Timed from the first delivery to the last ack the
/// gateway took; the commits that follow are waited for but not timed. `broker`: a real
/// broker's PID, whose CPU over the same stretch is reported too.
pub async fn gateway(
    bootstrap: &str,
    backlog: &Backlog,
    group: &str,
    readers: Readers,
    properties: &BTreeMap<String, String>,
    broker: Option<u32>,
) -> Result<Rate, BenchError> {
    let Readers { subscribers, window, workers, bound } = readers;
    let route = "bench";
    let mut config = Config::single_route(bootstrap, group, route, &[&backlog.topic]);
    config.kafka.commit_interval_ms = 1_000;
    config.kafka.properties = properties.clone();
    config.routes[0].max_in_flight = window;
    if let Some(bound) = bound {
        config.kafka.max_uncommitted_per_partition = bound;
    }
    let runtime = OwnRuntime::new(workers)?;
    let gw = runtime.run(gateway::start(config)).await??;
    let stats = gw.stats();
    let seen = Arc::new(Seen::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let seen = seen.clone();
        let look = move |d: &Delivery| {
            seen.first.lock().get_or_insert_with(Instant::now);
            seen.bytes.fetch_add(d.value.as_ref().map_or(0, |v| v.len()) as u64, Ordering::Relaxed);
        };
        tasks.push(tokio::spawn(acking_subscriber(
            gw.endpoint(),
            route,
            format!("bench-{i}"),
            window,
            stop.clone(),
            look,
        )));
    }
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let mut cpu_at_first = None;
    let mut broker_at_first = None;
    while started.elapsed() < LIMIT {
        let acked = stats.counters().acked;
        if acked != last.0 {
            last = (acked, Instant::now());
        }
        if cpu_at_first.is_none() && seen.first.lock().is_some() {
            cpu_at_first = Some(process_cpu());
            broker_at_first = broker_seconds(broker);
        }
        if acked >= backlog.messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = *seen.first.lock();
    let elapsed = first.map_or(Duration::ZERO, |f| last.1.saturating_duration_since(f));
    let cpu = cpu_at_first.map_or(Duration::ZERO, |c| process_cpu().saturating_sub(c));
    let rate = Rate {
        messages: stats.counters().acked,
        bytes: seen.bytes.load(Ordering::Relaxed),
        elapsed,
        cores: cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        cpu,
        broker_cpu: broker_between(broker_at_first, broker_seconds(broker)),
    };
    // Let the last acks be committed, as a real run would, before the next measurement.
    let committed_by = Instant::now() + Duration::from_secs(10);
    while Instant::now() < committed_by && stats.committed_sum() < backlog.ends.iter().sum::<i64>() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    runtime.run(gw.shutdown()).await?;
    Ok(rate)
}

/// A subscriber on the subscriber library whose handler hands each delivery to `look` and
/// acks it: as many handlers as the window, so the subscriber side costs what the library
/// costs and no more. Drains and ends when `stop` turns true.
pub(crate) async fn acking_subscriber(
    endpoint: String,
    route: &str,
    name: String,
    window: u32,
    mut stop: watch::Receiver<bool>,
    look: impl Fn(&Delivery) + Send + Sync + 'static,
) {
    let built = Subscriber::builder(route)
        .replicas(Replicas::list([endpoint]))
        .name(name)
        .max_in_flight(window)
        .concurrency(window.max(1) as usize)
        .build();
    let Ok(subscriber) = built else { return };
    let look = Arc::new(look);
    let handler = move |d: Delivery| {
        look(&d);
        async { Ok::<(), Nack>(()) }
    };
    let stopped = async move {
        let _ = stop.wait_for(|&stopped| stopped).await;
    };
    let _ = subscriber.run(handler, stopped).await;
}
