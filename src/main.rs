//! `fanout-gateway`: serve the gateway, run the embedded demo, subscribe by hand, or run a
//! standalone mock Kafka to point gateways at.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fanout_gateway::config::{Config, DiscoveryMode};
use fanout_gateway::devkafka::{DevKafka, TopicSpec};
use fanout_gateway::{bench, client, demo, gateway, scenario};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "fanout-gateway", version, about = "Kafka to gRPC fan-out gateway")]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "FANOUT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        #[arg(long, short, env = "FANOUT_CONFIG", default_value = "fanout.toml")]
        config: PathBuf,
    },
    /// Run everything in one process: embedded Kafka (mock cluster), producer, gateway,
    /// subscribers. Ends with one `demo: ...` line.
    Demo {
        /// How long to produce, in seconds.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        subscribers: usize,
        /// Messages produced per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u32,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// gRPC address of the demo gateway (attach `fanout-gateway subscribe` to it).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Run a deploy scenario instead: subscribers in two cohorts, weights switched while
        /// producing. Ends with one `scenario: ...` line.
        #[arg(long, value_enum)]
        scenario: Option<scenario::Scenario>,
    },
    /// Measure the gateway against a plain consumer (throughput, latency), its memory with a
    /// slow subscriber, and a blue-green switch against a consumer-group handover, all on an
    /// embedded Kafka in one run. Prints a table, then one `bench: name=value` line per figure.
    Bench {
        /// Run every part at a tiny scale (checks the command works; the figures mean little).
        #[arg(long)]
        smoke: bool,
        /// Run only these parts (comma-separated), e.g. to profile one.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
        /// A librdkafka property for both the plain consumer and the gateway, KEY=VALUE
        /// (repeat for more): to see what a setting changes.
        #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Message sizes in bytes (comma-separated); default 100,1024.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// Subscribe to a route, print deliveries, ack them.
    Subscribe {
        /// Gateway endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        gateway: String,
        #[arg(long)]
        route: String,
        /// Name this subscriber reports (pod name in Kubernetes).
        #[arg(long, default_value = "cli")]
        name: String,
        #[arg(long, default_value_t = 10)]
        max_in_flight: u32,
        /// Print every delivery instead of a line per second.
        #[arg(long)]
        verbose: bool,
    },
    /// Run a standalone Kafka (librdkafka's mock cluster) for development and crash tests.
    ///
    /// Prints one line, `BROKERS=host:port,...`, on stdout once the topics exist, then runs
    /// until stdin reaches end of file or it gets SIGTERM / Ctrl-C (exit 0). Everything lives
    /// in memory: topics, messages, committed offsets.
    ///
    /// Known limits of the mock: each partition keeps at most 5 MiB (older messages are
    /// deleted); after the last member of a consumer group has left (or was killed), the
    /// group coordinator waits session.timeout.ms - 1 s before it admits a joiner, and it
    /// does not replace a static member (group.instance.id) that comes back with a new
    /// process: the old member is dropped only when its session times out. Give gateways a
    /// short session.timeout.ms (e.g. 6000) in [kafka.properties] when restarting them.
    #[command(name = "dev-kafka", verbatim_doc_comment)]
    DevKafka {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=32))]
        brokers: i32,
        /// A topic to create, NAME:PARTITIONS (repeat for more); replication factor is
        /// min(3, brokers). Topics not created here are created on first use with 4 partitions.
        #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
        topics: Vec<TopicSpec>,
        /// Ignore stdin and run until a signal (for `dev-kafka &` in a script, where stdin
        /// is /dev/null and would end it at once).
        #[arg(long)]
        ignore_stdin: bool,
    },
}

/// mimalloc instead of glibc's malloc: every message allocates and frees a few buffers on
/// different threads (Kafka poll thread, dispatcher, gRPC encoder), which glibc's arenas
/// handle with consolidation and lock traffic that showed in `bench` profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config: path } => {
            init_tracing(cli.log_format, "info");
            let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
            let kube = match config.discovery.mode {
                DiscoveryMode::Kube => Some(
                    kube::Client::try_default()
                        .await
                        .context("connecting to the Kubernetes API for discovery.mode = \"kube\"")?,
                ),
                DiscoveryMode::Static => None,
            };
            let gw = gateway::start_with(config, kube).await?;
            let reload = tokio::spawn(gateway::watch_config(path, gw.routes(), Duration::from_secs(2)));
            terminated().await;
            reload.abort();
            gw.shutdown().await;
        }
        Command::Demo { duration, subscribers, rate, partitions, listen, scenario: Some(which) } => {
            init_tracing(cli.log_format, "warn");
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
        }
        Command::Demo { duration, subscribers, rate, partitions, listen, scenario: None } => {
            init_tracing(cli.log_format, "warn");
            let options = demo::DemoOptions {
                duration: Duration::from_secs(duration),
                subscribers,
                rate,
                partitions,
                listen,
            };
            println!(
                "embedded kafka (mock cluster, 3 brokers), topic {} with {partitions} partitions, {rate} msg/s for {duration}s, {subscribers} subscribers; gateway on {}",
                demo::DEMO_TOPIC,
                options.listen
            );
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                terminated().await;
                let _ = stop_tx.send(true);
            });
            let report = demo::run(options, stop, |line| println!("{line}")).await?;
            println!("{report}");
        }
        Command::Bench { smoke, only, properties, sizes } => {
            init_tracing(cli.log_format, "error");
            let mut options = if smoke { bench::BenchOptions::smoke() } else { bench::BenchOptions::default() };
            options.only = only;
            options.properties = properties;
            if !sizes.is_empty() {
                options.sizes = sizes;
            }
            println!("{}", machine_line());
            let started = std::time::Instant::now();
            let report = bench::run(&options, |line| eprintln!("[{:>4}s] {line}", started.elapsed().as_secs())).await?;
            println!("{report}");
            println!("bench: elapsed_s={}", started.elapsed().as_secs());
        }
        Command::DevKafka { brokers, topics, ignore_stdin } => {
            init_tracing(cli.log_format, "warn");
            dev_kafka(brokers, &topics, !ignore_stdin).await?;
        }
        Command::Subscribe { gateway, route, name, max_in_flight, verbose } => {
            init_tracing(cli.log_format, "warn");
            subscribe(&gateway, &route, &name, max_in_flight, verbose).await?;
        }
    }
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
    format!("machine: {cores} cores ({model}), {mem_gib:.0} GiB memory; embedded Kafka: librdkafka mock cluster, 3 brokers")
}

/// Runs `dev-kafka`. The mock cluster is not `Send`: it stays in this future, which the
/// runtime polls on the main thread.
async fn dev_kafka(brokers: i32, topics: &[TopicSpec], watch_stdin: bool) -> anyhow::Result<()> {
    let kafka = DevKafka::start(brokers, topics)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "BROKERS={}", kafka.bootstrap_servers()).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    // Stdin is read on a plain thread: tokio's stdin reads on a blocking-pool thread that
    // cannot be cancelled, which would hold the runtime (and so the exit) after a SIGTERM until
    // the parent closed the pipe. This thread is simply left behind when main returns.
    let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
    if watch_stdin {
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = eof_tx.send(());
            })
            .context("starting the stdin thread")?;
    } else {
        // A dropped sender disables the stdin branch below: only a signal ends the process.
        drop(eof_tx);
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

async fn subscribe(endpoint: &str, route: &str, name: &str, window: u32, verbose: bool) -> anyhow::Result<()> {
    let mut sub = client::Subscription::connect(endpoint, client::hello(route, name, window)).await?;
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
            batch = sub.next() => batch,
        };
        let Some(batch) = batch.context("stream ended by the gateway")? else { break };
        let mut ids = Vec::with_capacity(batch.len());
        for d in batch {
            if verbose {
                println!(
                    "{} attempt={} key={} value={}",
                    d.delivery_id,
                    d.attempt,
                    String::from_utf8_lossy(&d.key),
                    String::from_utf8_lossy(&d.value)
                );
            }
            ids.push(d.delivery_id);
        }
        count += ids.len() as u64;
        sub.ack(ids).await?;
        if !verbose && last.elapsed() >= Duration::from_secs(1) {
            println!("acked {count} deliveries");
            last = tokio::time::Instant::now();
        }
    }
    println!("acked {count} deliveries in total");
    Ok(())
}
