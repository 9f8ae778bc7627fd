//! The command line of the tools: argument structs for `demo`, `bench`, `subscribe` and
//! `dev-kafka`, and the code that runs each and prints its output. `main.rs` only dispatches
//! to these. Output meant for people goes to stdout (these are tools, not the service); logs go
//! to stderr through `tracing`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use super::devkafka::{DevKafka, TopicSpec};
use super::{bench, client, demo, scenario};

/// `demo`: the whole loop in one process, or a deploy scenario.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    #[arg(long, default_value_t = 3)]
    pub subscribers: usize,
    /// Messages produced per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// gRPC address of the demo gateway (attach `fanout-gateway subscribe` to it).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Admin API address of the demo gateway (`fanoutctl --gateway` it).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Run a deploy scenario instead: subscribers in two cohorts, weights switched while
    /// producing. Ends with one `scenario: ...` line.
    #[arg(long, value_enum)]
    pub scenario: Option<scenario::Scenario>,
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
}

/// `subscribe`: a subscriber by hand.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Gateway endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    #[arg(long)]
    pub route: String,
    /// Name this subscriber reports (pod name in Kubernetes).
    #[arg(long, default_value = "cli")]
    pub name: String,
    #[arg(long, default_value_t = 10)]
    pub max_in_flight: u32,
    /// Print every delivery instead of a line per second.
    #[arg(long)]
    pub verbose: bool,
    /// TLS: the CA (PEM) that signed the gateway's certificate (an https:// gateway uses the
    /// system's roots without it).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// mTLS: this subscriber's certificate and key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<String>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// The name the gateway's certificate carries, when it is not the --gateway host.
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// The pod's projected ServiceAccount token (routes with identity = "token"), sent as
    /// `authorization: Bearer`; read when connecting.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<String>,
}

/// `dev-kafka`: a standalone mock Kafka.
#[derive(Debug, clap::Args)]
pub struct DevKafkaArgs {
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs `demo`, or `demo --scenario`.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs { duration, subscribers, rate, partitions, listen, admin_listen, scenario } = args;
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
        "embedded kafka (mock cluster, 3 brokers), topic {} with {partitions} partitions, {rate} msg/s for {duration}s, {subscribers} subscribers; gateway on {}, admin API on {}",
        demo::DEMO_TOPIC,
        options.listen,
        options.admin_listen
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        let _ = stop_tx.send(true);
    });
    let report = demo::run(options, stop, |line| println!("{line}")).await?;
    println!("{report}");
    Ok(())
}

/// Runs `bench`: the table on stdout, progress on stderr.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut options = if args.smoke { bench::BenchOptions::smoke() } else { bench::BenchOptions::default() };
    options.only = args.only;
    options.properties = args.properties;
    if !args.sizes.is_empty() {
        options.sizes = args.sizes;
    }
    println!("{}", machine_line());
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

/// Where the benchmark ran: cores, memory and the CPU's name, from /proc.
fn machine_line() -> String {
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
    format!(
        "machine: {cores} cores ({model}), {mem_gib:.0} GiB memory; embedded Kafka: librdkafka mock cluster, 3 brokers"
    )
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
                _ = terminated() => tracing::info!("signal received"),
            }
        })
        .await;
    Ok(())
}

/// Runs `subscribe`: prints and acks what arrives; the first Ctrl-C drains.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let SubscribeArgs {
        gateway: endpoint,
        route,
        name,
        max_in_flight: window,
        verbose,
        tls_ca,
        tls_cert,
        tls_key,
        tls_domain,
        token_file,
    } = args;
    let token = match &token_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading --token-file {path}"))?),
        None => None,
    };
    let hello = client::hello(&route, &name, window);
    let tls = client::ClientTls { ca_file: tls_ca, cert_file: tls_cert, key_file: tls_key, domain: tls_domain };
    let use_tls = endpoint.starts_with("https://") || tls.ca_file.is_some() || tls.cert_file.is_some();
    let channel = client::channel(&endpoint, use_tls.then_some(&tls)).await?;
    let mut fanout = crate::proto::fanout_client::FanoutClient::new(channel);
    let mut sub = client::Subscription::open_with_token(&mut fanout, hello, token.as_deref()).await?;
    println!("subscribed to route {route} at {endpoint} (window {window}); Ctrl-C to stop");
    let mut count = 0u64;
    let mut last = tokio::time::Instant::now();
    // The first Ctrl-C drains: nothing new is sent, what is in flight gets acked, and the
    // gateway ends the stream, so leaving redelivers nothing.
    let stop = terminated();
    tokio::pin!(stop);
    let mut draining = false;
    loop {
        let batch = tokio::select! {
            _ = &mut stop, if !draining => {
                draining = true;
                println!("draining: finishing in-flight deliveries");
                sub.drain().await?;
                continue;
            }
            batch = sub.next_raw() => batch,
        };
        let Some(batch) = batch.context("stream ended by the gateway")? else { break };
        let mut ids = Vec::with_capacity(batch.len());
        for d in batch {
            if verbose {
                let text = |b: &Option<bytes::Bytes>| match b {
                    Some(b) => String::from_utf8_lossy(b).into_owned(),
                    None => "(null)".to_string(),
                };
                println!("{} attempt={} key={} value={}", client::id_of(&d), d.attempt, text(&d.key), text(&d.value));
            }
            ids.push(d.ack_id);
        }
        count += ids.len() as u64;
        sub.ack_ids(ids).await?;
        if !verbose && last.elapsed() >= Duration::from_secs(1) {
            println!("acked {count} deliveries");
            last = tokio::time::Instant::now();
        }
    }
    println!("acked {count} deliveries in total");
    Ok(())
}
