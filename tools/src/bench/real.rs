//! The benchmark on a real Apache Kafka broker: one the bench starts (the tests' fixture,
//! `fanout-kafka-fixture`: one KRaft node on this machine) or an existing cluster
//! (`--bootstrap-servers`). It runs the parts that mean something there: throughput (a raw
//! consumer, the gateway with each subscriber count, a Kafka share group with as many members)
//! and latency (raw against the gateway at fixed rates). The memory, idle-routes and switch
//! parts stay on the mock, whose figures they are about.
//!
//! Every topic and group is named after the run (`bench-<run id>-...`), so a cluster can be
//! used again; on an existing cluster the run's topics are deleted at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::throughput::Readers;
use super::{
    consumer_properties, latency, load, scaling, share, throughput, BenchError, BenchOptions, BenchReport, Kafka,
    LatencyRow, Part, ThroughputRow, LATENCY_PARTITIONS,
};
use fanout_kafka_fixture::{Cluster, ClusterSpec};

/// The broker a run reads from.
enum Broker {
    /// Started by this run; its JVM ends when this is dropped.
    Started(Cluster),
    /// Someone else's cluster.
    Existing(String),
}

impl Broker {
    fn bootstrap(&self) -> &str {
        match self {
            Broker::Started(cluster) => cluster.bootstrap_servers(),
            Broker::Existing(bootstrap) => bootstrap,
        }
    }

    /// The broker's JVM, whose CPU is read from /proc (only a broker on this machine).
    fn pid(&self) -> Option<u32> {
        match self {
            Broker::Started(cluster) => cluster.pid(1),
            Broker::Existing(_) => None,
        }
    }
}

/// Starts one KRaft node as the tests do, with a larger heap (a backlog of hundreds of MiB
/// goes through its page cache, not its heap, but share-group state and fetch sessions do not).
async fn start_broker() -> Result<Cluster, BenchError> {
    let dir = fanout_kafka_fixture::cluster::temp_dir()?;
    let spec = ClusterSpec { heap: "1g".into(), ..ClusterSpec::plaintext(1) };
    Ok(tokio::task::spawn_blocking(move || Cluster::start(dir, &spec)).await??)
}

/// Checks that the Java side can run: the jars (the broker's, and the share reader's client).
fn jars_there() -> Result<(), BenchError> {
    if fanout_kafka_fixture::jars_present() {
        return Ok(());
    }
    Err(BenchError::NoJars(format!(
        "no Apache Kafka jars in {} (run .ci/setup, which needs java and mvn; or set FANOUT_KAFKA_JARS): \
         the broker and the share-group reader run from them",
        fanout_kafka_fixture::jars_dir().display()
    )))
}

/// Runs the throughput and latency parts on a real broker; `progress` gets a line as each
/// step starts.
pub async fn run(options: &BenchOptions, progress: impl Fn(&str)) -> Result<BenchReport, BenchError> {
    jars_there()?;
    let broker = match &options.kafka {
        Kafka::Existing(bootstrap) => Broker::Existing(bootstrap.clone()),
        Kafka::Mock | Kafka::Apache => {
            progress("starting an Apache Kafka broker (one KRaft node, its own JVM)");
            Broker::Started(start_broker().await?)
        }
    };
    let result = measure(&broker, options, &progress).await;
    if let (Broker::Started(cluster), Err(_)) = (&broker, &result) {
        cluster.keep_logs();
        progress(&format!("the broker's logs are kept in {}", cluster.dir().display()));
    }
    result
}

async fn measure(broker: &Broker, options: &BenchOptions, progress: &impl Fn(&str)) -> Result<BenchReport, BenchError> {
    let bootstrap = broker.bootstrap();
    let pid = broker.pid();
    let run = format!("bench-{:08x}", rand::rng().random::<u32>());
    let topics = Topics::new(bootstrap)?;
    let properties = consumer_properties(&options.properties);
    let mut report = BenchReport { kafka: options.kafka.clone(), ..BenchReport::default() };

    let outcome = async {
        progress("warming the broker up (a group's first join, its JIT)");
        let warm = format!("{run}-warm-up");
        topics.create(&warm, LATENCY_PARTITIONS).await?;
        warm_up(bootstrap, &warm, &properties).await?;

        for &size in options.sizes.iter().filter(|_| options.runs(Part::Throughput)) {
            let topic = format!("{run}-throughput-{size}b");
            let partitions = options.partitions;
            topics.create(&topic, partitions).await?;
            // fill() counts 40 bytes of framing per record: this many bytes give this many records.
            let messages = options.apache_backlog(size);
            let per_partition = (messages / partitions.max(1) as u64) as usize * (size + 40);
            progress(&format!("throughput {size} B: producing the backlog ({messages} messages)"));
            let (b, t) = (bootstrap.to_string(), topic.clone());
            let backlog =
                tokio::task::spawn_blocking(move || load::fill(&b, &t, partitions, size, per_partition)).await??;
            progress(&format!("throughput {size} B: raw consumer, {} messages", backlog.messages));
            let raw = throughput::raw(bootstrap, &backlog, options.apache_raw_passes, &properties, pid).await?;
            let mut row = ThroughputRow { size, raw, ..ThroughputRow::default() };
            for &n in &options.subscriber_counts {
                progress(&format!("throughput {size} B: gateway, {n} subscribers"));
                let group = format!("{topic}-gw{n}");
                let readers = Readers { subscribers: n, window: options.window, workers: None, bound: None };
                let rate = throughput::gateway(bootstrap, &backlog, &group, readers, &properties, pid).await?;
                row.gateway.push((n, rate));
            }
            row.scaling = scaling(bootstrap, &backlog, options, &properties, pid, &progress).await?;
            for &n in &options.subscriber_counts {
                progress(&format!("throughput {size} B: share group, {n} members"));
                let (rate, result) =
                    share::share_group(bootstrap, &backlog, &format!("{topic}-share{n}"), n, pid).await?;
                if result.redelivered > 0 || result.failed > 0 {
                    progress(&format!(
                        "throughput {size} B: share group, {n} members: {} redelivered, {} acknowledgements refused",
                        result.redelivered, result.failed
                    ));
                }
                row.share.push((n, rate));
            }
            report.throughput.push(row);
        }

        for &size in options.sizes.iter().filter(|_| options.runs(Part::Latency)) {
            for &rate in &options.latency_rates {
                progress(&format!("latency {size} B at {rate} msg/s"));
                let topic = format!("{run}-latency-{size}b-{rate}");
                topics.create(&topic, LATENCY_PARTITIONS).await?;
                let (d, n) = (options.latency_duration, options.latency_subscribers);
                let (raw, gateway) = latency::paced(bootstrap, &topic, rate, size, d, n, &properties).await?;
                report.latency.push(LatencyRow { size, rate, raw, gateway });
            }
        }
        Ok::<(), BenchError>(())
    }
    .await;
    // A started broker takes its topics with it; an existing cluster keeps none of this run's.
    if matches!(broker, Broker::Existing(_)) {
        topics.delete_created().await;
    }
    outcome.map(|()| report)
}

/// Messages of the warm-up.
const WARM_UP_MESSAGES: usize = 50_000;

/// Produces a little and reads it back through a consumer group, so that no measurement pays
/// for what a fresh broker does once: creating `__consumer_offsets` and loading the group
/// coordinator on the first join (seconds: a latency run that started first saw half-second
/// ages at its median), and compiling its produce and fetch paths (the JIT).
async fn warm_up(bootstrap: &str, topic: &str, properties: &BTreeMap<String, String>) -> Result<(), BenchError> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    let per_partition = WARM_UP_MESSAGES / LATENCY_PARTITIONS as usize * 140;
    let backlog =
        tokio::task::spawn_blocking(move || load::fill(&b, &t, LATENCY_PARTITIONS, 100, per_partition)).await??;
    let consumer: BaseConsumer =
        throughput::consumer_config(bootstrap, &format!("{topic}-group"), properties).create()?;
    consumer.subscribe(&[topic])?;
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut read = 0u64;
        while read < backlog.messages && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
        }
        // A commit, so the coordinator's write path is warm too; its outcome is not the point.
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        consumer.unsubscribe();
    })
    .await?;
    Ok(())
}

/// Topics of this run, created and (on an existing cluster) deleted through the admin API.
struct Topics {
    admin: AdminClient<DefaultClientContext>,
    metadata: BaseConsumer,
    created: parking_lot::Mutex<Vec<String>>,
}

impl Topics {
    fn new(bootstrap: &str) -> Result<Self, BenchError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        Ok(Self { admin: config.create()?, metadata: config.create()?, created: Default::default() })
    }

    /// Creates `topic` with the cluster's default replication factor and waits until every
    /// partition has a leader.
    async fn create(&self, topic: &str, partitions: i32) -> Result<(), BenchError> {
        // -1: the broker's default.replication.factor (KIP-464), whatever the cluster's size.
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self.admin.create_topics([&new], &options).await? {
            result.map_err(|(name, code)| BenchError::Topic(format!("topic {name} not created: {code}")))?;
        }
        self.created.lock().push(topic.to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let led = self
                .metadata
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .is_ok_and(|m| fanout_kafka_fixture::topic_led(&m, topic, partitions));
            if led {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Topic(format!("topic {topic} has no leaders after 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes every topic this run created; a failure is left for the cluster's owner.
    async fn delete_created(&self) {
        let names: Vec<String> = std::mem::take(&mut *self.created.lock());
        if names.is_empty() {
            return;
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Err(error) = self.admin.delete_topics(&names, &options).await {
            tracing::warn!(%error, topics = ?names, "the run's topics were not deleted");
        }
    }
}
