//! `fanout-gateway`: serve the gateway, or check a config file as `serve` would. A thin
//! dispatch: the service lives in the library's rooms. The demo, the benchmark and the other
//! developer tools are the `fanout-tools` crate (`tools/`), not part of this binary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fanout_gateway::admin::ConfigSource;
use fanout_gateway::config::{Config, DiscoveryMode, Report, Secrets};
use fanout_gateway::gateway;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fanout-gateway",
    version,
    about = "Kafka to gRPC fan-out gateway",
    after_help = "Examples:\n  fanout-gateway serve --config /etc/fanout/fanout.toml\n  fanout-gateway check-config --config fanout.toml"
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "FANOUT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The config file of `serve` and `check-config`.
#[derive(clap::Args)]
struct ConfigFile {
    /// The gateway's config file (TOML; examples/fanout.toml lists every field).
    #[arg(long, short, env = "FANOUT_CONFIG", default_value = "fanout.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve(ConfigFile),
    /// Check a config file as `serve` would, without Kafka or Kubernetes.
    ///
    /// For CI, or a ConfigMap's pull request: prints `PATH: ok (N routes)` and exits 0, or
    /// every problem with its line and column and exits 1. Secrets are not read, only their
    /// `file:`/`env:` form checked.
    #[command(name = "check-config")]
    CheckConfig(ConfigFile),
}

/// mimalloc instead of glibc's malloc: every message allocates and frees a few buffers on
/// different threads (Kafka poll thread, dispatcher, gRPC encoder), which glibc's arenas
/// handle with consolidation and lock traffic that showed in `bench` profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only on a terminal: escape codes in a log file or a collector are noise.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Every line passes through the redacting writer: librdkafka's own messages included.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(fanout_gateway::redact::Writer(std::io::stderr))
        .with_ansi(ansi);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let text = match error.downcast_ref::<Report>() {
                // A config's problems, every one placed in the file, as the log format wants.
                Some(report) => match format {
                    LogFormat::Pretty => report.to_string(),
                    LogFormat::Json => report.to_json_lines(),
                },
                None => format!("Error: {error:#}\n"),
            };
            // The error chain may quote librdkafka, which may quote a property: redacted.
            eprint!("{}", fanout_gateway::redact::redact(&text));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The service logs what it does; `check-config` prints its verdict and logs only problems.
    let default_filter = match &cli.command {
        Command::Serve(_) => "info",
        Command::CheckConfig(_) => "warn",
    };
    init_tracing(cli.log_format, default_filter);
    match cli.command {
        Command::Serve(file) => serve(file.config).await,
        Command::CheckConfig(file) => check_config(file.config),
    }
}

/// Checks the config file; its problems come back as the [`Report`] `main` prints.
fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::check(&path, Secrets::FormOnly)?;
    let routes = config.routes.len();
    println!("{}: ok ({routes} route{})", path.display(), if routes == 1 { "" } else { "s" });
    Ok(())
}

/// Runs the gateway until SIGTERM or Ctrl-C, reloading routes when the config file changes.
async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::check(&path, Secrets::Read)?;
    // The first line of a replica's log: what runs, from which file, serving which routes.
    let routes: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        routes = %routes.join(", "),
        discovery = config.discovery.mode.as_str(),
        "fanout-gateway starting"
    );
    let kube = match config.discovery.mode {
        DiscoveryMode::Kube => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API for discovery.mode = \"kube\"")?,
        ),
        DiscoveryMode::Static => None,
    };
    let source = ConfigSource::for_file(&config, path, kube.as_ref());
    let gw = gateway::start_from(config, kube, source).await?;
    let reload = tokio::spawn(gw.control().follow(Duration::from_secs(2)));
    terminated().await;
    reload.abort();
    gw.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes' and Docker's stop signal) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            // No SIGTERM handler to be had: Ctrl-C still stops the gateway gracefully.
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
