//! The command line of the tools: argument structs for `demo`, `bench`, `subscribe` and
//! `dev-kafka`, and the code that runs each and prints its output. `main.rs` only dispatches
//! to these. Output meant for people goes to stdout (these are tools, not the service); logs go
//! to stderr through `tracing`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use super::devkafka::{DevKafka, TopicSpec};
use super::{bench, demo, rollout_scenario, scenario};
use fanout_client::{code_name, shutdown_signal};

/// Examples under `demo --help`: the demo alone, then operated from a second terminal.
const DEMO_EXAMPLES: &str = "\
EXAMPLES:
  # The whole loop for 20 s; it prints the commands that attach to it, then ends with one line:
  # demo: produced=.. acked=.. dead_lettered=.. committed=.. lost=0 duplicates=0
  cargo demo

  # Longer, so there is time to operate it from a second terminal (admin token: demo-token):
  cargo demo --duration 300
  cargo tools subscribe --gateway 127.0.0.1:50051 --route demo --label track=canary
  cargo fanoutctl --gateway 127.0.0.1:9090 --token demo-token weights set demo stable=90 canary=10
  cargo fanoutctl --gateway 127.0.0.1:9090 --token demo-token dlq list demo

  # A canary ramp (weights switched while producing), ending with one `scenario: ...` line:
  cargo demo --scenario canary
  # The gateway's own rollout of a candidate that nacks a fifth of its messages (rolled back),
  # and twenty rollouts of one that behaves (each promoted):
  cargo demo --scenario canary-bad
  cargo demo --scenario canary-good --runs 20

Operators' commands all work on the demo gateway: its admin token is demo-token (so its admin API
stays on loopback), one message in 997 is poison and is dead-lettered to demo-events.dlq (a
redriven one is accepted), and route demo is split by `track`, its own subscribers in cohort
`stable`.";

/// Examples under `subscribe --help`.
const SUBSCRIBE_EXAMPLES: &str = "\
EXAMPLES:
  # A canary subscriber of the demo (`fanout-tools demo` in another terminal):
  cargo tools subscribe --gateway 127.0.0.1:50051 --route demo --label track=canary

  # Every replica of a gateway in Kubernetes, through its headless Service, printing each delivery:
  fanout-tools subscribe --dns fanout-gateway-headless.shop.svc:50051 --route orders --verbose

  # A slow subscriber with a small window, over TLS:
  fanout-tools subscribe --gateway https://gw.shop.example:50051 --tls-ca ca.pem --route orders \\
    --max-in-flight 10 --handle-ms 50

It prints `subscribed: ...` once a replica accepted the stream, a line per second, and ends with
`subscribe: received=.. acked=..`: exit 0 after Ctrl-C / SIGTERM or an operator's
`fanoutctl drain`, 1 with the status when a replica refuses the subscription.";

/// `demo`: the whole loop in one process, or a deploy scenario.
///
/// The demo gateway can be operated while it runs: admin token `demo-token` (on loopback only),
/// dead-letter topic `demo-events.dlq` (one message in 997 is poison and ends there), route
/// `demo` split by `track` with its own subscribers in cohort `stable`.
#[derive(Debug, clap::Args)]
#[command(after_help = DEMO_EXAMPLES)]
pub struct DemoArgs {
    /// How long to produce, in seconds; then the demo waits (up to 30 s) for everything to be
    /// acked or dead-lettered and committed, and reports.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// The demo's own subscribers (cohort `stable`, named demo-subscriber-0, -1, ...). With
    /// --scenario: subscribers in all, half per cohort.
    #[arg(long, default_value_t = 3)]
    pub subscribers: usize,
    /// Messages produced per second (with --scenario, at least 4000).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Partitions of the demo topic (the embedded Kafka creates it).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// gRPC address of the demo gateway (attach `fanout-tools subscribe` to it).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Admin API address of the demo gateway (`fanoutctl --gateway` it); loopback only, since
    /// the demo's admin token is public.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Run a deploy scenario instead: subscribers in two cohorts, weights switched while
    /// producing (canary-good, canary-bad, canary-slow: by the gateway's own rollout, judged at
    /// each step). Ends with one `scenario: ...` line.
    #[arg(long, value_enum)]
    pub scenario: Option<scenario::Scenario>,
    /// A rollout scenario's seed: which messages a bad candidate fails, every handler's time,
    /// the keys produced.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run a rollout scenario this many times, with seeds --seed, --seed + 1, ...; a
    /// `scenarios: ...` line sums them up.
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
}

/// `bench`: the gateway measured against a plain consumer, in one run.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run every part at a tiny scale (checks the command works; the figures mean little).
    #[arg(long)]
    pub smoke: bool,
    /// Run only these parts (comma-separated), e.g. to profile one.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<bench::Part>,
    /// A librdkafka property for both the plain consumer and the gateway, KEY=VALUE
    /// (repeat for more): to see what a setting changes.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Message sizes in bytes (comma-separated); default 100,1024.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Which Kafka: `mock` (librdkafka's mock cluster in this process, every part) or `apache`
    /// (a real Apache Kafka broker the bench starts from target/kafka-jars: throughput, with a
    /// Kafka share group beside the gateway, and latency).
    #[arg(long, value_enum, default_value_t = KafkaArg::Mock)]
    pub kafka: KafkaArg,
    /// An existing Kafka cluster instead (HOST:PORT,...; implies a real broker): the run's
    /// topics are named after it and deleted at the end. Share groups need Kafka 4.1+ with
    /// the share.version feature on.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,
}

/// `bench --kafka`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaArg {
    Mock,
    Apache,
}

/// `subscribe`: a subscriber by hand, through the subscriber library (`fanout-client`): a
/// stream to every replica, reconnects, per-key ordered handlers, drain on SIGTERM.
#[derive(Debug, clap::Args)]
#[command(after_help = SUBSCRIBE_EXAMPLES)]
pub struct SubscribeArgs {
    /// A gateway replica's endpoint (repeat, or comma-separate, for every replica).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051", conflicts_with = "dns")]
    pub gateway: Vec<String>,
    /// Find the replicas by DNS instead: a name (`host:port`) resolving to every replica's
    /// address, such as the gateway's headless Service; resolved again every 10 s.
    #[arg(long, value_name = "HOST:PORT")]
    pub dns: Option<String>,
    /// The route to subscribe to (a `[[routes]]` name of the gateway's config).
    #[arg(long)]
    pub route: String,
    /// Name this subscriber reports (default: POD_NAME, then HOSTNAME).
    #[arg(long)]
    pub name: Option<String>,
    /// A label sent in the hello, KEY=VALUE (repeat for more); a gateway with static
    /// discovery routes by them.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Labels from a downward-API file (`metadata.labels`: lines of `key="value"`); --label
    /// wins over it.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<String>,
    /// Deliveries each stream may hold un-acked; 0 (the default) takes the route's
    /// `default_in_flight` (100 unless the gateway's config says otherwise).
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: u32,
    /// Deliveries handled at once (one at a time per key).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Pretend each delivery takes this long to handle, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub handle_ms: u64,
    /// How long a drain (on SIGTERM or Ctrl-C) may wait for in-flight handlers, in seconds.
    #[arg(long, default_value_t = 20)]
    pub drain_timeout: u64,
    /// Print every delivery handled (`topic/partition/offset attempt=N key=K value=V`), besides
    /// the line per second.
    #[arg(long)]
    pub verbose: bool,
    /// TLS: the CA (PEM) that signed the gateway's certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// mTLS: this subscriber's certificate (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// mTLS: the private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// The name the gateway's certificate carries, when it is not the --gateway host (with
    /// --dns, the DNS name's host is used).
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// The pod's projected ServiceAccount token (routes with identity = "token"), sent as
    /// `authorization: Bearer`; read again at every connection.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<String>,
}

/// `dev-kafka`: a standalone mock Kafka.
#[derive(Debug, clap::Args)]
pub struct DevKafkaArgs {
    /// Brokers of the mock cluster (1 to 32), each on a loopback port of its own.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub brokers: i32,
    /// A topic to create, NAME:PARTITIONS (repeat for more); replication factor is
    /// min(3, brokers). Topics not created here are created on first use with 4 partitions.
    #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
    pub topics: Vec<TopicSpec>,
    /// Ignore stdin and run until a signal (for `dev-kafka &` in a script, where stdin
    /// is /dev/null and would end it at once).
    #[arg(long)]
    pub ignore_stdin: bool,
}

/// Runs `demo`, or `demo --scenario`.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs { duration, subscribers, rate, partitions, listen, admin_listen, scenario, seed, runs } = args;
    if let Some(candidate) = scenario.and_then(scenario::Scenario::rollout) {
        let options = rollout_scenario::RolloutOptions {
            limit: Duration::from_secs(duration.max(30)),
            per_cohort: subscribers.div_ceil(2).max(1),
            rate: rate.max(4_000),
            partitions,
            listen,
            seed,
            ..rollout_scenario::RolloutOptions::default()
        };
        println!(
            "scenario {}: embedded kafka, {partitions} partitions, {} msg/s, {} subscribers per cohort, rollout steps {:?} % held {:?} each",
            candidate.name(),
            options.rate,
            options.per_cohort,
            options.steps,
            options.hold,
        );
        let mut reports = Vec::new();
        for run in 0..runs.max(1) {
            let options = rollout_scenario::RolloutOptions { seed: seed + run, ..options.clone() };
            let report = rollout_scenario::run(candidate, options, |line| println!("{line}")).await?;
            println!("{report}");
            reports.push(report);
        }
        if reports.len() > 1 {
            println!("{}", rollout_scenario::summary(&reports));
        }
        return Ok(());
    }
    if let Some(which) = scenario {
        let options = scenario::ScenarioOptions {
            duration: Duration::from_secs(duration),
            per_cohort: subscribers.div_ceil(2).max(1),
            rate: rate.max(4_000),
            partitions,
            listen,
        };
        println!(
            "scenario {}: embedded kafka, {partitions} partitions, {} msg/s for {duration}s, {} subscribers per cohort",
            which.name(),
            options.rate,
            options.per_cohort
        );
        let report = scenario::run(which, options, |line| println!("{line}")).await?;
        println!("{report}");
        return Ok(());
    }
    let options = demo::DemoOptions {
        duration: Duration::from_secs(duration),
        subscribers,
        rate,
        partitions,
        listen,
        admin_listen,
    };
    println!(
        "embedded kafka (mock cluster, 3 brokers), topic {} with {partitions} partitions, {rate} msg/s for {duration}s \
         (one in {} poison, dead-lettered to {}), {subscribers} subscribers ({}={})",
        demo::DEMO_TOPIC,
        demo::POISON_EVERY,
        demo::DEMO_DLQ_TOPIC,
        demo::SPLIT_LABEL,
        demo::STABLE,
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let report = demo::run(options, stop, |line| println!("{line}")).await?;
    println!("{report}");
    Ok(())
}

/// Runs `bench`: the table on stdout, progress on stderr.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut options = if args.smoke { bench::BenchOptions::smoke() } else { bench::BenchOptions::default() };
    options.kafka = match (args.bootstrap_servers, args.kafka) {
        (Some(bootstrap), _) => bench::Kafka::Existing(bootstrap),
        (None, KafkaArg::Apache) => bench::Kafka::Apache,
        (None, KafkaArg::Mock) => bench::Kafka::Mock,
    };
    let mock_only = [bench::Part::Memory, bench::Part::Routes, bench::Part::Switch];
    if options.kafka.is_real() && args.only.iter().any(|p| mock_only.contains(p)) {
        anyhow::bail!("on a real broker the bench runs throughput and latency only (memory, routes and switch run on --kafka mock)");
    }
    options.only = args.only;
    options.properties = args.properties;
    if !args.sizes.is_empty() {
        options.sizes = args.sizes;
    }
    println!("{}", machine_line(&options.kafka));
    let started = std::time::Instant::now();
    let report = bench::run(&options, |line| eprintln!("[{:>4}s] {line}", started.elapsed().as_secs())).await?;
    println!("{report}");
    println!("bench: elapsed_s={}", started.elapsed().as_secs());
    Ok(())
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (a librdkafka property), got {s:?}")),
    }
}

/// Where the benchmark ran: cores, memory and the CPU's name, from /proc, and which Kafka.
fn machine_line(kafka: &bench::Kafka) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown cpu".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let version = || fanout_kafka_fixture::kafka_version().unwrap_or_else(|| "?".into());
    let kafka = match kafka {
        bench::Kafka::Mock => "embedded Kafka: librdkafka mock cluster, 3 brokers".to_string(),
        bench::Kafka::Apache => {
            format!("Kafka: Apache Kafka {}, one KRaft node started by the bench on this machine", version())
        }
        bench::Kafka::Existing(bootstrap) => {
            format!("Kafka: the cluster at {bootstrap} (share-group reader: Kafka client {})", version())
        }
    };
    format!("machine: {cores} cores ({model}), {mem_gib:.0} GiB memory; {kafka}")
}

/// Runs `dev-kafka`. The mock cluster is not `Send`: it stays in this future, which the
/// runtime polls on the main thread.
pub async fn dev_kafka(args: DevKafkaArgs) -> anyhow::Result<()> {
    let kafka = DevKafka::start(args.brokers, &args.topics)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "BROKERS={}", kafka.bootstrap_servers()).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    // Stdin is read on a plain thread: tokio's stdin reads on a blocking-pool thread that
    // cannot be cancelled, which would hold the runtime (and so the exit) after a SIGTERM until
    // the parent closed the pipe. This thread is simply left behind when main returns.
    let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
    if args.ignore_stdin {
        // A dropped sender disables the stdin branch below: only a signal ends the process.
        drop(eof_tx);
    } else {
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = eof_tx.send(());
            })
            .context("starting the stdin thread")?;
    }
    kafka
        .run(async {
            tokio::select! {
                Ok(()) = eof => tracing::info!("stdin closed"),
                _ = shutdown_signal() => tracing::info!("signal received"),
            }
        })
        .await;
    Ok(())
}

/// Runs `subscribe`: handles (prints) and acks what arrives from every replica until SIGTERM
/// or Ctrl-C, or until an operator drains it (`fanoutctl drain`), then drains; ends with one
/// `subscribe: ...` line of counts. A refused subscription is an error naming its status.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    use fanout_client::{ClientTls, Delivery, Nack, Replicas, Subscriber};

    let SubscribeArgs {
        gateway,
        dns,
        route,
        name,
        labels,
        labels_file,
        max_in_flight,
        concurrency,
        handle_ms,
        drain_timeout,
        verbose,
        tls_ca,
        tls_cert,
        tls_key,
        tls_domain,
        token_file,
    } = args;
    let replicas = match &dns {
        Some(name) => Replicas::dns(name.clone()),
        None => Replicas::list(gateway.clone()),
    };
    let mut builder = Subscriber::builder(&route)
        .replicas(replicas)
        .max_in_flight(max_in_flight)
        .concurrency(concurrency)
        .drain_timeout(Duration::from_secs(drain_timeout));
    if let Some(name) = name {
        builder = builder.name(name);
    }
    for (key, value) in labels {
        builder = builder.label(key, value);
    }
    if let Some(path) = labels_file {
        builder = builder.labels_file(path);
    }
    let tls = ClientTls { ca_file: tls_ca, cert_file: tls_cert, key_file: tls_key, domain: tls_domain };
    if gateway.iter().any(|g| g.starts_with("https://")) || tls.ca_file.is_some() || tls.cert_file.is_some() {
        builder = builder.tls(tls);
    }
    if let Some(path) = token_file {
        builder = builder.token_file(path);
    }
    let subscriber = builder.build().context("subscribe")?;
    let stats = subscriber.stats();
    let replicas = dns.unwrap_or_else(|| gateway.join(","));
    // Not "subscribed" yet: no replica has answered. The progress task says so once one accepts.
    println!("subscribing to route {route} at {replicas} ({}); Ctrl-C to drain and stop", window_text(max_in_flight));

    let handler = move |d: Delivery| async move {
        if handle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(handle_ms)).await;
        }
        if verbose {
            let text = |b: &Option<bytes::Bytes>| match b {
                Some(b) => String::from_utf8_lossy(b).into_owned(),
                None => "(null)".to_string(),
            };
            println!(
                "{} attempt={} key={} value={}",
                fanout_client::stream::id_of(&d),
                d.attempt,
                text(&d.key),
                text(&d.value)
            );
        }
        Ok::<(), Nack>(())
    };
    let progress = tokio::spawn({
        let (stats, route) = (stats.clone(), route.clone());
        async move {
            // Checked often so acceptance is reported promptly; the counts once a second.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut since_accepted: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                let s = stats.snapshot();
                match since_accepted {
                    None if accepted(&s) => {
                        println!("subscribed: route {route} accepted ({} stream(s) open)", s.streams);
                        since_accepted = Some(std::time::Instant::now());
                    }
                    Some(at) if at.elapsed() >= Duration::from_secs(1) => {
                        println!("acked {} deliveries ({} streams open)", s.acked, s.streams);
                        since_accepted = Some(std::time::Instant::now());
                    }
                    _ => {}
                }
            }
        }
    });
    // An operator's drain takes this subscriber out of the route for good (the library opens
    // no stream after it): nothing is left to wait for, so it ends as a signal would.
    let drained = {
        let stats = stats.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !taken_out(&stats.snapshot()) {
                tick.tick().await;
            }
        }
    };
    let shutdown = async {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = drained => {}
        }
    };
    let result = subscriber.run(handler, shutdown).await;
    progress.abort();
    let s = stats.snapshot();
    if taken_out(&s) {
        println!("drained by the gateway (an operator's `fanoutctl drain`): every stream closed");
    }
    println!(
        "subscribe: received={} acked={} nacked={} abandoned={} reconnects={}",
        s.received, s.acked, s.nacked, s.abandoned, s.reconnects
    );
    match result {
        Ok(()) => Ok(()),
        Err(fanout_client::Error::Refused { replica, route, code, message }) => {
            Err(anyhow::anyhow!("{}", refusal_line(&replica, &route, code, &message)))
        }
        Err(error) => Err(anyhow::Error::new(error).context("subscribe")),
    }
}

/// The window a `--max-in-flight` asks for, as the start line says it.
fn window_text(max_in_flight: u32) -> String {
    match max_in_flight {
        0 => "window: the route's default per stream".into(),
        n => format!("window {n} per stream"),
    }
}

/// Whether a replica accepted the subscription: a stream is open (the gateway answers only
/// after it registered the hello), or was, as deliveries or a drain by the gateway show.
fn accepted(s: &fanout_client::Snapshot) -> bool {
    s.streams > 0 || s.received > 0 || s.drained_by_gateway > 0
}

/// Whether an operator drained this subscriber and every stream has closed since: the library
/// leaves every replica after a drain and opens no stream again.
fn taken_out(s: &fanout_client::Snapshot) -> bool {
    s.drained_by_gateway > 0 && s.streams == 0
}

/// A refused subscription as one line: who refused, the gRPC status and the gateway's reason.
fn refusal_line(replica: &str, route: &str, code: tonic::Code, message: &str) -> String {
    format!(
        "replica {replica} refused the subscription to route {route:?}: {}: {}",
        code_name(code),
        message.replace('\n', " ")
    )
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (a label of this subscriber), got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;
    use fanout_client::Snapshot;

    #[test]
    fn every_argument_of_the_tools_is_described_and_demo_and_subscribe_show_examples() {
        let commands = [
            DemoArgs::augment_args(clap::Command::new("demo")),
            BenchArgs::augment_args(clap::Command::new("bench")),
            SubscribeArgs::augment_args(clap::Command::new("subscribe")),
            DevKafkaArgs::augment_args(clap::Command::new("dev-kafka")),
        ];
        for command in &commands {
            for arg in command.get_arguments() {
                assert!(arg.get_help().is_some(), "{} --{} has no help", command.get_name(), arg.get_id());
            }
        }
        for command in [&commands[0], &commands[2]] {
            let examples = command.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(examples.starts_with("EXAMPLES:"), "{}: {examples}", command.get_name());
            assert!(examples.contains("--route demo --label track=canary"), "{examples}");
        }
    }

    #[test]
    fn subscribe_takes_the_routes_default_window_unless_told() {
        let command = SubscribeArgs::augment_args(clap::Command::new("subscribe"));
        let matches = command.try_get_matches_from(["subscribe", "--route", "demo"]).expect("parses");
        assert_eq!(matches.get_one::<u32>("max_in_flight"), Some(&0));
        assert_eq!(window_text(0), "window: the route's default per stream");
        assert_eq!(window_text(10), "window 10 per stream");
    }

    #[test]
    fn subscribed_only_once_a_replica_accepted_and_done_once_drained_everywhere() {
        let connecting = Snapshot { reconnects: 3, ..Snapshot::default() };
        assert!(!accepted(&connecting) && !taken_out(&connecting));
        let open = Snapshot { streams: 1, ..Snapshot::default() };
        assert!(accepted(&open) && !taken_out(&open));
        let draining = Snapshot { streams: 1, received: 40, drained_by_gateway: 1, ..Snapshot::default() };
        assert!(accepted(&draining) && !taken_out(&draining), "another replica's stream still drains");
        let drained = Snapshot { received: 40, drained_by_gateway: 2, ..Snapshot::default() };
        assert!(accepted(&drained) && taken_out(&drained));
    }

    #[test]
    fn a_refusal_is_one_line_with_its_status() {
        let line = refusal_line("127.0.0.1:50051", "nope", tonic::Code::NotFound, "no route `nope`\nroutes: demo");
        assert_eq!(line, "replica 127.0.0.1:50051 refused the subscription to route \"nope\": NOT_FOUND: no route `nope` routes: demo");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
