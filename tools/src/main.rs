//! `fanout-tools`: the embedded demo, the benchmark, a subscriber by hand and a standalone mock
//! Kafka. A thin dispatch over [`fanout_tools::cli`]; the service itself is `fanout-gateway`.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use fanout_tools::cli::{self, BenchArgs, DemoArgs, DevKafkaArgs, SubscribeArgs};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fanout-tools",
    version,
    about = "The demo, benchmark, subscriber and mock Kafka around fanout-gateway",
    after_help = "Examples (from the repository, through the aliases in .cargo/config.toml):\n  cargo demo\n  cargo demo --duration 300\n  cargo tools subscribe --gateway 127.0.0.1:50051 --route demo --label track=canary\n  cargo tools bench --smoke\n  cargo tools bench --kafka apache --only throughput,latency\n  cargo tools dev-kafka --topic events:8"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: embedded Kafka (mock cluster), producer, gateway,
    /// subscribers. Ends with one `demo: ...` line.
    Demo(DemoArgs),
    /// Measure the gateway against a plain consumer (throughput, latency), its memory with a
    /// slow subscriber, and a blue-green switch against a consumer-group handover, all on an
    /// embedded Kafka in one run; or, with --kafka apache or --bootstrap-servers, throughput
    /// (beside a Kafka share group) and latency on a real broker. Prints a table, then one
    /// `bench: name=value` line per figure.
    Bench(BenchArgs),
    /// Subscribe to a route on every gateway replica (the subscriber library), print
    /// deliveries, ack them; SIGTERM or Ctrl-C drains.
    Subscribe(Box<SubscribeArgs>),
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
    DevKafka(DevKafkaArgs),
}

/// The service's allocator (mimalloc), so the in-process gateway of `demo` and `bench`
/// allocates as the shipped binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The tools print their own output on stdout and log only problems (the embedded
    // gateway's too); RUST_LOG says otherwise. Logs pass through the gateway's redacting writer.
    let default = if matches!(cli.command, Command::Bench(_)) { "error" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(fanout_gateway::redact::Writer(std::io::stderr))
        .with_ansi(ansi)
        .init();
    let result = match cli.command {
        Command::Demo(args) => cli::demo(args).await,
        Command::Bench(args) => cli::bench(args).await,
        Command::Subscribe(args) => cli::subscribe(*args).await,
        Command::DevKafka(args) => cli::dev_kafka(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{}", fanout_gateway::redact::redact(&format!("Error: {error:#}\n")));
            std::process::ExitCode::FAILURE
        }
    }
}
