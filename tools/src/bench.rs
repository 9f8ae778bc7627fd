//! `fanout-tools bench`: what the gateway costs against a plain consumer, and what a deploy
//! costs with and without it, measured in one run on the same embedded Kafka; or, with
//! `--kafka apache` / `--bootstrap-servers`, on a real Apache Kafka broker ([`real`]), where
//! Kafka share groups ([`share`]) read the same backlog too.
//!
//! Every figure comes from this process's own run: a plain rdkafka consumer and the gateway
//! read the same backlog on the same cluster, one after the other, so their ratio holds on
//! this machine even where the absolute numbers would not carry to another. The report is a
//! table for people and `bench: name=value` lines for scripts (prefixed `apache_` on a real
//! broker).

pub mod adaptive;
pub mod handover;
pub mod latency;
pub mod load;
pub mod memory;
pub mod real;
pub mod routes;
pub mod share;
pub mod throughput;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::scenario::{self, Scenario, ScenarioOptions};
use handover::{HandoverOptions, HandoverReport, Strategy};
use latency::Percentiles;
use memory::Memory;
use throughput::{Rate, Readers};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Start(#[from] fanout_gateway::gateway::StartError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error("gateway: {0}")]
    Gateway(String),
    /// The service binary the memory part runs is not to be had.
    #[error("fanout-gateway binary: {0}")]
    GatewayExe(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("a benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The real broker's launcher, or the share-group reader's compilation.
    #[error("real broker: {0}")]
    Fixture(#[from] fanout_kafka_fixture::FixtureError),
    #[error("{0}")]
    NoJars(String),
    /// The share-group reader failed, or the cluster refused share groups.
    #[error("share group: {0}")]
    Share(String),
    #[error("{0}")]
    Topic(String),
}

/// The Kafka a run reads from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kafka {
    /// librdkafka's mock cluster in this process: every part.
    #[default]
    Mock,
    /// An Apache Kafka broker the bench starts (one KRaft node from `target/kafka-jars`).
    Apache,
    /// An existing cluster at these bootstrap servers.
    Existing(String),
}

impl Kafka {
    pub fn is_real(&self) -> bool {
        !matches!(self, Kafka::Mock)
    }
}

/// A part of the benchmark, for `--only` while profiling one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Throughput,
    Latency,
    Memory,
    Switch,
    Routes,
    /// Fixed against adaptive windows behind a subscriber that slows down.
    Adaptive,
}

/// How much of everything to run. [`BenchOptions::default`] is the published run;
/// [`BenchOptions::smoke`] checks that every part works, in far less time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Parts to run; empty runs them all (on a real broker: throughput and latency).
    pub only: Vec<Part>,
    /// Where the backlogs live.
    pub kafka: Kafka,
    /// librdkafka properties added to both consumers of each comparison (for experiments).
    pub properties: Vec<(String, String)>,
    pub sizes: Vec<usize>,
    /// Partitions of a throughput backlog of messages below 512 bytes; larger messages get
    /// four times as many, so that both backlogs take long enough to read to be measured.
    pub partitions: i32,
    /// Backlog per partition for throughput: under the mock's 5 MiB retention.
    pub backlog_per_partition: usize,
    /// Messages of each throughput backlog of messages below 512 bytes on a real broker
    /// (spread over `partitions` partitions); larger messages get a quarter as many
    /// ([`BenchOptions::apache_backlog`]). No retention limit there, but a budget of time and
    /// disk: on two cores shared with the broker the raw consumer reads some 2M msg/s of 100 B
    /// and the gateway and a share group 200k-400k, so 4M messages give the raw consumer about
    /// two seconds a pass (its start is noise), the others ten to twenty seconds (under
    /// [`throughput`]'s 90 s limit), and the two backlogs some 1.7 GiB on disk.
    pub apache_messages: u64,
    /// Passes of the raw consumer on a real broker (the median is reported).
    pub apache_raw_passes: usize,
    pub subscriber_counts: Vec<usize>,
    /// The scaling row: the gateway with `scaling_subscribers` subscribers on a runtime of each
    /// of these numbers of worker threads (one route: does it go faster with more?).
    pub scaling_workers: Vec<usize>,
    pub scaling_subscribers: usize,
    /// The small-bound row: the gateway with `scaling_subscribers` subscribers on a backlog of
    /// one partition per broker, at the default `max_uncommitted_per_partition` and at this one,
    /// far below the backlog, so that its partitions pause and resume all along (each resume a
    /// fetch from where the bound dropped records).
    pub small_bound: Option<usize>,
    /// Window of each throughput subscriber.
    pub window: u32,
    pub latency_rates: Vec<u32>,
    pub latency_duration: Duration,
    /// Subscribers of the gateway in the latency runs.
    pub latency_subscribers: usize,
    pub memory_partitions: i32,
    pub memory_bounds: Vec<usize>,
    pub memory_duration: Duration,
    /// The `fanout-gateway` executable the memory part runs; `None` finds it beside this
    /// process's own (see [`gateway_exe`]).
    pub gateway_exe: Option<std::path::PathBuf>,
    pub switch_duration: Duration,
    pub switch_rate: u32,
    /// Gateways of this many idle routes each, measured one after the other.
    pub idle_routes: Vec<usize>,
    /// How long idle routes get to join their groups before they are measured, and for how long.
    pub idle_settle: Duration,
    pub idle_window: Duration,
    /// The adaptive-window runs' phases: normal speed, three times slower, normal again.
    pub adaptive_phases: adaptive::Phases,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            only: Vec::new(),
            kafka: Kafka::Mock,
            properties: Vec::new(),
            sizes: vec![100, 1024],
            partitions: 16,
            backlog_per_partition: 4 << 20,
            apache_messages: 4_000_000,
            apache_raw_passes: 3,
            subscriber_counts: vec![1, 4, 16],
            scaling_workers: vec![1, 2],
            scaling_subscribers: 4,
            small_bound: Some(300),
            window: 1_000,
            latency_rates: vec![5_000, 20_000],
            latency_duration: Duration::from_secs(5),
            latency_subscribers: 4,
            memory_partitions: 32,
            memory_bounds: vec![10_000, 1_000],
            memory_duration: Duration::from_secs(8),
            gateway_exe: None,
            // Green joins at a third and blue leaves at two thirds: each third must outlast the
            // mock coordinator's join wait (session timeout - 1 s = 5 s), or the join and the
            // leave fall into one rebalance.
            switch_duration: Duration::from_secs(20),
            switch_rate: 4_000,
            idle_routes: vec![1, 10, 100],
            idle_settle: Duration::from_secs(10),
            idle_window: Duration::from_secs(5),
            adaptive_phases: adaptive::Phases {
                warm: Duration::from_secs(10),
                slow: Duration::from_secs(60),
                after: Duration::from_secs(5),
            },
        }
    }
}

impl BenchOptions {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    /// Messages of a real broker's throughput backlog of `size`-byte messages.
    pub fn apache_backlog(&self, size: usize) -> u64 {
        if size < 512 {
            self.apache_messages
        } else {
            self.apache_messages / 4
        }
    }

    /// Every part, small: for the test that keeps the command working.
    pub fn smoke() -> Self {
        Self {
            only: Vec::new(),
            kafka: Kafka::Mock,
            properties: Vec::new(),
            sizes: vec![100],
            partitions: 4,
            backlog_per_partition: 256 << 10,
            apache_messages: 20_000,
            apache_raw_passes: 1,
            subscriber_counts: vec![2],
            scaling_workers: vec![1, 2],
            scaling_subscribers: 2,
            small_bound: Some(300),
            window: 200,
            latency_rates: vec![1_000],
            latency_duration: Duration::from_secs(2),
            latency_subscribers: 2,
            memory_partitions: 4,
            memory_bounds: vec![500],
            memory_duration: Duration::from_secs(2),
            gateway_exe: None,
            switch_duration: Duration::from_secs(6),
            switch_rate: 2_000,
            idle_routes: vec![1, 3],
            idle_settle: Duration::from_secs(3),
            idle_window: Duration::from_secs(1),
            adaptive_phases: adaptive::Phases {
                warm: Duration::from_secs(2),
                slow: Duration::from_secs(4),
                after: Duration::from_secs(1),
            },
        }
    }
}

/// Partitions of the latency topics: few, so that the paced producer's batches stay large
/// enough for the mock broker, whose one I/O thread serves every broker's requests.
const LATENCY_PARTITIONS: i32 = 4;

/// Consumer properties both sides of every comparison get. The mock broker holds a fetch that
/// finds no new data for the whole `fetch.wait.max.ms` (a real broker answers as soon as data
/// arrives), so a short wait keeps latency about the consumers, not the mock.
fn consumer_properties(extra: &[(String, String)]) -> BTreeMap<String, String> {
    let mut properties = base_properties();
    properties.extend(extra.iter().cloned());
    properties
}

fn base_properties() -> BTreeMap<String, String> {
    // fetch.queue.backoff.ms: the gateway's own default (see kafka::consumer); the plain
    // consumer gets it too, or librdkafka's 1 s default idles it after every burst (149k
    // instead of 200k+ msg/s of 100 B on the machine of docs/benchmarks.md).
    [("fetch.wait.max.ms", "5"), ("fetch.queue.backoff.ms", "10")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct ThroughputRow {
    pub size: usize,
    pub raw: Rate,
    /// (subscribers, rate)
    pub gateway: Vec<(usize, Rate)>,
    /// (share-group members, rate): real brokers only.
    pub share: Vec<(usize, Rate)>,
    /// The scaling row: the gateway on runtimes of different numbers of worker threads.
    pub scaling: Vec<Scaled>,
    /// The gateway on few partitions, at the default bound and a small one (mock only).
    pub small_bound: Option<SmallBound>,
}

impl ThroughputRow {
    /// Every reader of the row as the tables name it, in their order: the raw consumer, the
    /// gateway by subscribers, the scaling runs, the share group by members.
    fn readers(&self) -> Vec<(String, Rate)> {
        std::iter::once(("raw consumer".to_string(), self.raw))
            .chain(self.gateway.iter().map(|(n, r)| (format!("gateway, {n} subscriber{}", plural(*n)), *r)))
            .chain(self.scaling.iter().map(|sc| {
                let (n, w) = (sc.subscribers, sc.workers);
                (format!("gateway, {n} subs, {w} worker{}", plural(w)), sc.rate)
            }))
            .chain(self.small_bound.iter().flat_map(|b| {
                let (n, p) = (b.subscribers, b.partitions);
                [
                    (format!("gateway, {n} subs, {p} partitions"), b.default),
                    (format!("gateway, {n} subs, {p} parts, bound {}", b.bound), b.small),
                ]
            }))
            .chain(self.share.iter().map(|(n, r)| (format!("share group, {n} member{}", plural(*n)), *r)))
            .collect()
    }
}

/// The gateway on a backlog of few partitions, at the default bound and behind a small one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmallBound {
    pub bound: usize,
    pub subscribers: usize,
    pub partitions: i32,
    pub default: Rate,
    pub small: Rate,
}

impl SmallBound {
    /// msg/s behind the small bound over msg/s at the default one.
    pub fn ratio(&self) -> f64 {
        self.small.per_sec() / self.default.per_sec().max(1e-9)
    }
}

/// One run of the scaling row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scaled {
    /// The gateway runtime's worker threads.
    pub workers: usize,
    pub subscribers: usize,
    pub rate: Rate,
}

/// How much faster the run with the most workers went than the one with the fewest.
fn scaling_ratio(scaling: &[Scaled]) -> Option<f64> {
    let fewest = scaling.iter().min_by_key(|s| s.workers)?;
    let most = scaling.iter().max_by_key(|s| s.workers)?;
    (most.workers > fewest.workers).then(|| most.rate.per_sec() / fewest.rate.per_sec().max(1e-9))
}

#[derive(Debug, Clone, Default)]
pub struct LatencyRow {
    pub size: usize,
    pub rate: u32,
    pub raw: Percentiles,
    pub gateway: Percentiles,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryRow {
    pub bound: usize,
    pub backlog_bytes: u64,
    pub partitions: i32,
    pub memory: Memory,
}

#[derive(Debug, Clone, Default)]
pub struct SwitchRow {
    pub name: &'static str,
    /// How the row's figures are named: `switch_<key>_...`.
    pub key: &'static str,
    pub report: HandoverReport,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Where it was measured.
    pub kafka: Kafka,
    pub throughput: Vec<ThroughputRow>,
    pub latency: Vec<LatencyRow>,
    pub memory: Vec<MemoryRow>,
    pub switch: Vec<SwitchRow>,
    pub routes: Vec<routes::IdleRoutes>,
    /// (fixed, adaptive) behind a subscriber that slows down.
    pub adaptive: Option<(adaptive::Run, adaptive::Run)>,
}

/// Runs every benchmark; `progress` gets a line as each one starts.
pub async fn run(options: &BenchOptions, progress: impl Fn(&str)) -> Result<BenchReport, BenchError> {
    if options.kafka.is_real() {
        return real::run(options, progress).await;
    }
    let cluster = MockCluster::new(3)?;
    let bootstrap = cluster.bootstrap_servers();
    let properties = consumer_properties(&options.properties);
    let mut report = BenchReport::default();

    for &size in options.sizes.iter().filter(|_| options.runs(Part::Throughput)) {
        let topic = format!("throughput-{size}b");
        let partitions = if size < 512 { options.partitions } else { options.partitions * 4 };
        progress(&format!("throughput {size} B: producing the backlog"));
        let backlog = mock_backlog(&cluster, &topic, partitions, size, options.backlog_per_partition).await?;
        progress(&format!("throughput {size} B: raw consumer, {} messages", backlog.messages));
        let raw = throughput::raw(&bootstrap, &backlog, 3, &properties, None).await?;
        let mut row = ThroughputRow { size, raw, ..ThroughputRow::default() };
        for &n in &options.subscriber_counts {
            progress(&format!("throughput {size} B: gateway, {n} subscribers"));
            let readers = Readers { subscribers: n, window: options.window, workers: None, bound: None };
            let rate = throughput::gateway(&bootstrap, &backlog, &format!("{topic}-gw{n}"), readers, &properties, None)
                .await?;
            row.gateway.push((n, rate));
        }
        row.scaling = scaling(&bootstrap, &backlog, options, &properties, None, &progress).await?;
        if let Some(bound) = options.small_bound {
            row.small_bound = Some(small_bound(&cluster, size, bound, options, &properties, &progress).await?);
        }
        report.throughput.push(row);
    }

    for &size in options.sizes.iter().filter(|_| options.runs(Part::Latency)) {
        for &rate in &options.latency_rates {
            progress(&format!("latency {size} B at {rate} msg/s"));
            let topic = format!("latency-{size}b-{rate}");
            cluster.create_topic(&topic, LATENCY_PARTITIONS, 1)?;
            let (d, n) = (options.latency_duration, options.latency_subscribers);
            let (raw, gateway) = latency::paced(&bootstrap, &topic, rate, size, d, n, &properties).await?;
            report.latency.push(LatencyRow { size, rate, raw, gateway });
        }
    }

    if options.runs(Part::Memory) {
        memory_part(&cluster, options, &mut report, &progress).await?;
    }
    if options.runs(Part::Routes) {
        let topic = "idle";
        cluster.create_topic(topic, 8, 1)?;
        let exe = match &options.gateway_exe {
            Some(path) => path.clone(),
            None => gateway_exe()?,
        };
        for &n in &options.idle_routes {
            progress(&format!("routes: gateway process with {n} idle route(s)"));
            report
                .routes
                .push(routes::idle(&exe, &bootstrap, topic, n, options.idle_settle, options.idle_window).await?);
        }
    }
    if options.runs(Part::Adaptive) {
        // More than the subscriber reads in the whole run at normal speed: its window stays full.
        let p = options.adaptive_phases;
        let seconds = (p.warm + p.slow + p.after).as_secs_f64();
        let messages = (seconds * 1_000.0 / adaptive::WORK.as_millis() as f64) as usize * adaptive::CONCURRENCY;
        progress(&format!("adaptive windows: producing {messages} messages"));
        let backlog = mock_backlog(&cluster, "adaptive", 4, 100, messages / 4 * 140).await?;
        let mut runs = Vec::new();
        for mode in [fanout_gateway::config::WindowMode::Fixed, fanout_gateway::config::WindowMode::Adaptive] {
            progress(&format!("adaptive windows: {mode:?} window, work three times slower for {:?}", p.slow));
            runs.push(adaptive::run(&bootstrap, &backlog, mode, p).await?);
        }
        report.adaptive = Some((runs[0], runs[1]));
    }
    if options.runs(Part::Switch) {
        switch_part(cluster, options, &mut report, &progress).await?;
    }
    Ok(report)
}

async fn memory_part(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    options: &BenchOptions,
    report: &mut BenchReport,
    progress: impl Fn(&str),
) -> Result<(), BenchError> {
    let bootstrap = cluster.bootstrap_servers();
    let size = options.sizes.iter().copied().max().unwrap_or(1024);
    progress(&format!("memory: producing a backlog of {} partitions", options.memory_partitions));
    let backlog =
        mock_backlog(cluster, "memory", options.memory_partitions, size, options.backlog_per_partition).await?;
    for &bound in &options.memory_bounds {
        progress(&format!("memory: gateway process, bound {bound} per partition, slow subscriber"));
        let exe = match &options.gateway_exe {
            Some(path) => path.clone(),
            None => gateway_exe()?,
        };
        let memory = memory::slow_subscriber(
            &exe,
            &bootstrap,
            &backlog,
            &format!("memory-{bound}"),
            bound,
            options.memory_duration,
        )
        .await?;
        report.memory.push(MemoryRow {
            bound,
            backlog_bytes: backlog.bytes,
            partitions: options.memory_partitions,
            memory,
        });
    }
    Ok(())
}

/// The service binary the memory part measures, as it ships: `fanout-gateway` in this
/// executable's directory (cargo puts every binary of the workspace in the same
/// `target/<profile>/`). Run through `cargo run` (which sets `CARGO`), it is built first with
/// this build's profile, so the bench never measures a stale gateway.
fn gateway_exe() -> Result<std::path::PathBuf, BenchError> {
    let this = std::env::current_exe()?;
    let dir = this.parent().ok_or_else(|| BenchError::GatewayExe(format!("{} has no directory", this.display())))?;
    let exe = dir.join(format!("fanout-gateway{}", std::env::consts::EXE_SUFFIX));
    if let Some(cargo) = std::env::var_os("CARGO") {
        // target/<profile>/fanout-tools: the profile is the directory's name (debug = dev).
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--profile", profile, "-p", "fanout-gateway", "--bin", "fanout-gateway"])
            .status()?;
        if !status.success() {
            return Err(BenchError::GatewayExe(format!("cargo build -p fanout-gateway failed ({status})")));
        }
    }
    if !exe.exists() {
        return Err(BenchError::GatewayExe(format!(
            "{} is missing: build it (cargo build --release -p fanout-gateway) or pass its path",
            exe.display()
        )));
    }
    Ok(exe)
}

/// The deploy switch: two status-quo handovers on this cluster, then the gateway's blue-green
/// scenario, which brings its own cluster (this one is dropped first, to free its threads).
async fn switch_part(
    cluster: MockCluster<'_, DefaultProducerContext>,
    options: &BenchOptions,
    report: &mut BenchReport,
    progress: impl Fn(&str),
) -> Result<(), BenchError> {
    let bootstrap = cluster.bootstrap_servers();

    for (name, key, strategy) in [
        ("consumer group, eager", "group_eager", Strategy::Eager),
        ("consumer group, cooperative", "group_cooperative", Strategy::Cooperative),
    ] {
        progress(&format!("deploy switch: {name} handover"));
        let topic = format!("handover-{strategy:?}").to_lowercase();
        cluster.create_topic(&topic, 8, 1)?;
        let handover = HandoverOptions {
            rate: options.switch_rate,
            duration: options.switch_duration,
            per_cohort: 2,
            partitions: 8,
            strategy,
        };
        let report_row = handover::status_quo(&bootstrap, &topic, &handover).await?;
        report.switch.push(SwitchRow { name, key, report: report_row });
    }
    drop(cluster);
    progress("deploy switch: gateway weights blue -> green");
    let scenario = scenario::run(
        Scenario::BlueGreen,
        ScenarioOptions {
            duration: options.switch_duration,
            per_cohort: 2,
            rate: options.switch_rate,
            partitions: 8,
            listen: "127.0.0.1:0".into(),
        },
        |_| {},
    )
    .await?;
    report.switch.push(SwitchRow {
        name: "gateway weights",
        key: "gateway",
        report: HandoverReport {
            rebalances: scenario.rebalances,
            max_gap_ms: scenario.max_gap_ms,
            duplicates: scenario.duplicates,
            lost: scenario.lost,
            produced: scenario.produced,
            // The scenario's `lost` already counts what the group's commits do not cover.
            uncommitted: 0,
        },
    });
    Ok(())
}

/// Creates `topic` on the embedded cluster with `partitions` partitions and fills each with
/// `per_partition_bytes` of `size`-byte messages ([`load::fill`], on a blocking thread).
async fn mock_backlog(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    topic: &str,
    partitions: i32,
    size: usize,
    per_partition_bytes: usize,
) -> Result<load::Backlog, BenchError> {
    cluster.create_topic(topic, partitions, 1)?;
    let (b, t) = (cluster.bootstrap_servers(), topic.to_string());
    Ok(tokio::task::spawn_blocking(move || load::fill(&b, &t, partitions, size, per_partition_bytes)).await??)
}

/// Partitions of the small-bound row's backlog: one per broker of the embedded cluster.
const FEW_PARTITIONS: i32 = 3;

/// The small-bound row of one size: a backlog on one partition per broker, read by the
/// gateway with [`BenchOptions::scaling_subscribers`] subscribers at the default bound and at
/// `bound`. Behind a small bound every partition of a broker is often paused at once, so each
/// refill waits for the consumer to fetch from that broker again: what the row shows is how
/// soon it does (a second each time, before resumes woke librdkafka's fetcher).
async fn small_bound(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    size: usize,
    bound: usize,
    options: &BenchOptions,
    properties: &BTreeMap<String, String>,
    progress: &impl Fn(&str),
) -> Result<SmallBound, BenchError> {
    let topic = format!("throughput-{size}b-few");
    let backlog = mock_backlog(cluster, &topic, FEW_PARTITIONS, size, options.backlog_per_partition).await?;
    let bootstrap = cluster.bootstrap_servers();
    let n = options.scaling_subscribers;
    let mut rates = Vec::new();
    for bound in [None, Some(bound)] {
        let at = bound.map_or("the default bound".to_string(), |b| format!("bound {b}"));
        progress(&format!("throughput {size} B: gateway, {n} subscribers, {FEW_PARTITIONS} partitions, {at}"));
        let readers = Readers { subscribers: n, window: options.window, workers: None, bound };
        let group = format!("{topic}-bound{}", bound.unwrap_or(0));
        rates.push(throughput::gateway(&bootstrap, &backlog, &group, readers, properties, None).await?);
    }
    Ok(SmallBound { bound, subscribers: n, partitions: FEW_PARTITIONS, default: rates[0], small: rates[1] })
}

/// The scaling row of one backlog: the same gateway run on a runtime of each of
/// [`BenchOptions::scaling_workers`] worker threads. A route's dispatcher is one task, so its
/// share of the work is one thread's whatever the runtime; what a second worker takes is the
/// rest (the gRPC streams' encoding, HTTP/2, acks decoded), which shows how far one route
/// scales with the machine today.
async fn scaling(
    bootstrap: &str,
    backlog: &load::Backlog,
    options: &BenchOptions,
    properties: &BTreeMap<String, String>,
    broker: Option<u32>,
    progress: impl Fn(&str),
) -> Result<Vec<Scaled>, BenchError> {
    let subscribers = options.scaling_subscribers;
    let mut out = Vec::new();
    for &workers in &options.scaling_workers {
        progress(&format!("throughput: gateway, {subscribers} subscribers, {workers} worker thread(s)"));
        let readers = Readers { subscribers, window: options.window, workers: Some(workers), bound: None };
        let group = format!("{}-scaling{workers}", backlog.topic);
        let rate = throughput::gateway(bootstrap, backlog, &group, readers, properties, broker).await?;
        out.push(Scaled { workers, subscribers, rate });
    }
    Ok(out)
}

/// `100b`, `1k`: how sizes read in figure names.
fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{}k", size / 1024)
    } else {
        format!("{size}b")
    }
}

/// A reader's CPU per message on a real broker: its own process's, and the broker's when it
/// was measured (`cpu_us_per_msg_<reader>`, `broker_cpu_us_per_msg_<reader>`).
fn cpu_figures(put: &mut impl FnMut(String, String), reader: &str, rate: &Rate) {
    put(format!("cpu_us_per_msg_{reader}"), format!("{:.2}", rate.cpu_us_per_msg()));
    if let Some(broker) = rate.broker_us_per_msg() {
        put(format!("broker_cpu_us_per_msg_{reader}"), format!("{broker:.2}"));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl BenchReport {
    /// The `bench: name=value` figures, in order; on a real broker each name starts with
    /// `apache_`, and the CPU per message and the share group's figures come too.
    pub fn figures(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let real = self.kafka.is_real();
        let p = if real { "apache_" } else { "" };
        let mut put = |name: String, value: String| out.push((format!("{p}{name}"), value));
        for row in &self.throughput {
            let s = size_name(row.size);
            put(format!("raw_msgs_per_sec_{s}"), format!("{:.0}", row.raw.per_sec()));
            put(format!("raw_mib_per_sec_{s}"), format!("{:.1}", row.raw.mib_per_sec()));
            cpu_figures(&mut put, &format!("raw_{s}"), &row.raw);
            for (n, rate) in &row.gateway {
                put(format!("gateway_msgs_per_sec_{s}_{n}subs"), format!("{:.0}", rate.per_sec()));
                put(format!("gateway_mib_per_sec_{s}_{n}subs"), format!("{:.1}", rate.mib_per_sec()));
                put(
                    format!("throughput_ratio_{s}_{n}subs"),
                    format!("{:.2}", rate.per_sec() / row.raw.per_sec().max(1e-9)),
                );
                cpu_figures(&mut put, &format!("gateway_{s}_{n}subs"), rate);
            }
            for Scaled { workers, subscribers: n, rate } in &row.scaling {
                put(format!("gateway_msgs_per_sec_{s}_{n}subs_{workers}workers"), format!("{:.0}", rate.per_sec()));
                cpu_figures(&mut put, &format!("gateway_{s}_{n}subs_{workers}workers"), rate);
            }
            if let Some(ratio) = scaling_ratio(&row.scaling) {
                put(format!("scaling_ratio_{s}"), format!("{ratio:.2}"));
            }
            if let Some(b) = &row.small_bound {
                let (n, p, bound) = (b.subscribers, b.partitions, b.bound);
                put(format!("gateway_msgs_per_sec_{s}_{n}subs_{p}partitions"), format!("{:.0}", b.default.per_sec()));
                put(
                    format!("gateway_msgs_per_sec_{s}_{n}subs_{p}partitions_bound{bound}"),
                    format!("{:.0}", b.small.per_sec()),
                );
                put(format!("small_bound_ratio_{s}"), format!("{:.2}", b.ratio()));
            }
            for (n, rate) in &row.share {
                put(format!("share_msgs_per_sec_{s}_{n}members"), format!("{:.0}", rate.per_sec()));
                put(format!("share_mib_per_sec_{s}_{n}members"), format!("{:.1}", rate.mib_per_sec()));
                cpu_figures(&mut put, &format!("share_{s}_{n}members"), rate);
                if let Some((_, gateway)) = row.gateway.iter().find(|(subs, _)| subs == n) {
                    put(
                        format!("gateway_vs_share_{s}_{n}"),
                        format!("{:.2}", gateway.per_sec() / rate.per_sec().max(1e-9)),
                    );
                }
            }
        }
        for row in &self.latency {
            let at = format!("{}_{}", size_name(row.size), row.rate);
            for (side, p) in [("raw", row.raw), ("gateway", row.gateway)] {
                put(format!("latency_{side}_p50_us_{at}"), p.p50.to_string());
                put(format!("latency_{side}_p99_us_{at}"), p.p99.to_string());
                put(format!("latency_{side}_p999_us_{at}"), p.p999.to_string());
            }
            put(format!("latency_added_p99_us_{at}"), (row.gateway.p99 as i64 - row.raw.p99 as i64).to_string());
        }
        for row in &self.memory {
            put(format!("backlog_mib_bound_{}", row.bound), format!("{:.0}", mib(row.backlog_bytes)));
            put(format!("peak_rss_mib_bound_{}", row.bound), format!("{:.0}", row.memory.peak_rss_kib as f64 / 1024.0));
        }
        for r in &self.routes {
            let n = r.routes;
            put(format!("idle_routes_{n}_rss_mib"), format!("{:.0}", r.rss_kib as f64 / 1024.0));
            put(format!("idle_routes_{n}_threads"), r.threads.to_string());
            put(format!("idle_routes_{n}_cores"), format!("{:.3}", r.cores));
        }
        if let (Some(first), Some(last)) = (self.routes.first(), self.routes.last()) {
            if last.routes > first.routes {
                let per = |a: f64, b: f64| (b - a) / (last.routes - first.routes) as f64;
                let rss = per(first.rss_kib as f64, last.rss_kib as f64) / 1024.0;
                put("idle_rss_mib_per_route".into(), format!("{rss:.2}"));
                put("idle_threads_per_route".into(), format!("{:.1}", per(first.threads as f64, last.threads as f64)));
                put("idle_cores_per_route".into(), format!("{:.4}", per(first.cores, last.cores)));
            }
        }
        if let Some((fixed, adaptive)) = &self.adaptive {
            for (mode, r) in [("fixed", fixed), ("adaptive", adaptive)] {
                put(format!("window_{mode}_slow_avg"), format!("{:.0}", r.slow_window));
                put(format!("window_{mode}_redelivered"), r.redelivered.to_string());
                put(format!("window_{mode}_acked"), r.acked.to_string());
            }
        }
        for row in &self.switch {
            let name = row.key;
            put(format!("switch_{name}_rebalances"), row.report.rebalances.to_string());
            put(format!("switch_{name}_max_gap_ms"), row.report.max_gap_ms.to_string());
            put(format!("switch_{name}_duplicates"), row.report.duplicates.to_string());
            put(format!("switch_{name}_lost"), (row.report.lost + row.report.uncommitted).to_string());
        }
        out
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = String::new();
        if self.kafka.is_real() {
            self.real_throughput(&mut t);
        } else {
            self.mock_throughput(&mut t);
        }
        let _ = writeln!(t, "latency (produce to receive, µs)");
        let _ = writeln!(
            t,
            "  {:<6} {:>7} {:<8} {:>8} {:>8} {:>8} {:>10}",
            "size", "msg/s", "reader", "p50", "p99", "p99.9", "added p99"
        );
        for row in &self.latency {
            let s = size_name(row.size);
            let p = row.raw;
            let _ = writeln!(
                t,
                "  {:<6} {:>7} {:<8} {:>8} {:>8} {:>8} {:>10}",
                s, row.rate, "raw", p.p50, p.p99, p.p999, ""
            );
            let g = row.gateway;
            let added = g.p99 as i64 - p.p99 as i64;
            let _ = writeln!(
                t,
                "  {:<6} {:>7} {:<8} {:>8} {:>8} {:>8} {:>10}",
                s, row.rate, "gateway", g.p50, g.p99, g.p999, added
            );
        }
        if self.kafka.is_real() {
            // Memory, idle routes and the deploy switch are measured on the mock only.
            for (name, value) in self.figures() {
                let _ = writeln!(t, "bench: {name}={value}");
            }
            return f.write_str(t.trim_end());
        }
        let _ = writeln!(t, "memory (gateway process, slow subscriber, backlog ahead)");
        let _ = writeln!(
            t,
            "  {:<22} {:>12} {:>10} {:>10} {:>10}",
            "bound per partition", "backlog MiB", "start MiB", "peak MiB", "delivered"
        );
        for row in &self.memory {
            let m = row.memory;
            let _ = writeln!(
                t,
                "  {:<22} {:>12.0} {:>10.0} {:>10.0} {:>10}",
                format!("{} x {} partitions", row.bound, row.partitions),
                mib(row.backlog_bytes),
                m.start_rss_kib as f64 / 1024.0,
                m.peak_rss_kib as f64 / 1024.0,
                m.delivered
            );
        }
        let _ = writeln!(t, "idle routes (gateway process, one empty topic of 8 partitions, no subscriber)");
        let _ = writeln!(t, "  {:<8} {:>8} {:>8} {:>10}", "routes", "RSS MiB", "threads", "CPU cores");
        for r in &self.routes {
            let _ =
                writeln!(t, "  {:<8} {:>8.0} {:>8} {:>10.3}", r.routes, r.rss_kib as f64 / 1024.0, r.threads, r.cores);
        }
        if let Some((fixed, adaptive)) = &self.adaptive {
            let _ = writeln!(
                t,
                "windows (subscriber: {} at a time, {} ms each, three times slower for a while; ack deadline {} ms)",
                adaptive::CONCURRENCY,
                adaptive::WORK.as_millis(),
                adaptive::ACK_TIMEOUT_MS
            );
            let _ = writeln!(t, "  {:<10} {:>18} {:>12} {:>10}", "window", "while slow (avg)", "redelivered", "acked");
            for (mode, r) in [("fixed", fixed), ("adaptive", adaptive)] {
                let _ = writeln!(t, "  {:<10} {:>18.0} {:>12} {:>10}", mode, r.slow_window, r.redelivered, r.acked);
            }
        }
        let _ = writeln!(t, "deploy switch (blue -> green while producing)");
        let _ = writeln!(
            t,
            "  {:<28} {:>10} {:>11} {:>10} {:>6} {:>9}",
            "how", "rebalances", "max gap ms", "duplicates", "lost*", "produced"
        );
        for row in &self.switch {
            let r = &row.report;
            let _ = writeln!(
                t,
                "  {:<28} {:>10} {:>11} {:>10} {:>6} {:>9}",
                row.name,
                r.rebalances,
                r.max_gap_ms,
                r.duplicates,
                r.lost + r.uncommitted,
                r.produced
            );
        }
        let _ = writeln!(t, "  * lost: never processed, or processed but not covered by the group's committed offsets");
        for (name, value) in self.figures() {
            let _ = writeln!(t, "bench: {name}={value}");
        }
        f.write_str(t.trim_end())
    }
}

// === impl BenchReport (tables) ===

impl BenchReport {
    /// The mock's throughput table: CPU in cores of this one process (mock broker included).
    fn mock_throughput(&self, t: &mut String) {
        let _ = writeln!(t, "throughput (backlog read from first message to last ack)");
        let _ = writeln!(
            t,
            "  {:<6} {:<36} {:>10} {:>9} {:>8} {:>10} {:>8}",
            "size", "reader", "msg/s", "MiB/s", "vs raw", "CPU cores", "CPU µs"
        );
        for row in &self.throughput {
            let s = size_name(row.size);
            let raw = row.raw.per_sec().max(1e-9);
            for (reader, r) in row.readers() {
                let _ = writeln!(
                    t,
                    "  {:<6} {:<36} {:>10.0} {:>9.1} {:>8.2} {:>10.2} {:>8.2}",
                    s,
                    reader,
                    r.per_sec(),
                    r.mib_per_sec(),
                    r.per_sec() / raw,
                    r.cores,
                    r.cpu_us_per_msg()
                );
            }
        }
    }

    /// A real broker's throughput table: each reader's CPU per message, its own process's
    /// (the bench's for raw and gateway, the Java reader's for the share group) and the
    /// broker's over the same stretch.
    fn real_throughput(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "throughput on Apache Kafka (backlog read from first message to last ack; CPU µs per message: reader process / broker)"
        );
        let _ = writeln!(
            t,
            "  {:<6} {:<24} {:>10} {:>9} {:>8} {:>10} {:>10}",
            "size", "reader", "msg/s", "MiB/s", "vs raw", "reader µs", "broker µs"
        );
        for row in &self.throughput {
            let s = size_name(row.size);
            let raw = row.raw.per_sec().max(1e-9);
            for (reader, r) in row.readers() {
                let broker = r.broker_us_per_msg().map_or("-".to_string(), |b| format!("{b:.2}"));
                let _ = writeln!(
                    t,
                    "  {:<6} {:<24} {:>10.0} {:>9.1} {:>8.2} {:>10.2} {:>10}",
                    s,
                    reader,
                    r.per_sec(),
                    r.mib_per_sec(),
                    r.per_sec() / raw,
                    r.cpu_us_per_msg(),
                    broker
                );
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
