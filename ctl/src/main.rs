//! `fanoutctl`: the operator's command line for fanout-gateway (the library beside this file).
//! A thin edge: parse, run, print; stdout gets what was shown (the replicas that answered),
//! stderr the failure, each of its lines starting `fanoutctl: `.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use fanoutctl::{self as ctl, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's first line says what is wrong; usage and tips follow on further lines.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("bad command line");
            eprintln!("fanoutctl: {} (fanoutctl --help)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let outcome = ctl::run(cli).await;
    print!("{}", outcome.stdout);
    let Some(failure) = outcome.failure else {
        return ExitCode::SUCCESS;
    };
    // What was shown goes out before the error, so a terminal shows the error last.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    for line in failure.to_string().lines() {
        eprintln!("fanoutctl: {line}");
    }
    ExitCode::FAILURE
}
