//! `fanoutctl`: the operator's command line over the admin API, kubectl-like. It talks to one
//! replica (`--gateway`), several, or every address a headless Service name resolves to
//! (`--gateways-dns`), and shows each replica's answer side by side, so an operator sees
//! whether all of them applied a change (their config generations agree).
//!
//! A read command shows every replica that answered and marks those that did not (a replica
//! down is when an operator most needs to see the others); a change reaches every replica or
//! none. Errors are one line naming what to fix (one per replica that failed differently); exit
//! status 1 for a failed call or a replica that did not answer, 2 for a bad command line.

mod args;
mod change;
mod rate_limit;
mod reach;
mod rollout;
mod table;
mod view;
mod weights;

pub use args::Cli;
use view::{
    json, letters_table, missing_notes, partitions_table, render_changes, replays_table, replicas_table, routes_table,
    subscribers_table, yaml, ProgressBar,
};

use std::time::Duration;

use serde::Serialize;
use tonic::metadata::AsciiMetadataValue;

use args::{Command, DlqCommand, Output, RateLimitCommand, ReplayArgs, WeightsCommand};
use fanout_proto::admin::{
    CancelReplayRequest, DrainRequest, DrainResponse, GetReplayRequest, LetterRef, ListDeadLettersRequest,
    ListReplaysRequest, PartitionOffset, RedriveRequest, ReplayRequest, StatusRequest, StatusResponse,
};
use reach::{ask_all, authorized, call_line, nobody_answered, partly_answered, with_port, Missing, Reached, Replica};

/// The admin port's conventional port, when an address or DNS name leaves it out.
const DEFAULT_PORT: u16 = 9090;
/// How long a replica may take to accept a connection: replicas are asked at once, so a dead
/// one delays the command by this much once, however many replicas there are.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A failure, printed as one line (a line per replica when they failed in different ways).
#[derive(Debug)]
pub struct CtlError(pub String);

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, CtlError> {
    Err(CtlError(message.into()))
}

/// What a run prints on stdout, and the failure it ends with (exit status 1), if any. A read
/// command that some replicas answered and others did not has both: what they said, and who
/// was left out.
pub struct Outcome {
    pub stdout: String,
    pub failure: Option<CtlError>,
}

impl Outcome {
    fn shown(stdout: String) -> Self {
        Outcome { stdout, failure: None }
    }
}

/// Connects to the replicas the command line names (all at once), or, for a command about one
/// replica's own state, to the first.
async fn reach_replicas(cli: &Cli) -> Result<Reached, CtlError> {
    let mut addresses = match &cli.gateways_dns {
        Some(name) => resolve(name).await?,
        None => cli.gateway.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
    };
    if addresses.is_empty() {
        return fail("no gateway given: pass --gateway host:port (the replica's server.admin_listen)");
    }
    if cli.command.first_replica_only() {
        addresses.truncate(1);
    }
    let flag = if cli.gateways_dns.is_some() { "--gateways-dns" } else { "--gateway" };
    reach::reach(addresses, flag, cli.tls()?.as_ref()).await
}

async fn resolve(name: &str) -> Result<Vec<String>, CtlError> {
    let target = with_port(name);
    let found = tokio::net::lookup_host(&target).await.map_err(|e| {
        CtlError(format!(
            "cannot resolve --gateways-dns {target}: {e}; name the gateway's headless Service (host:port)"
        ))
    })?;
    let mut addresses: Vec<String> = found.map(|a| a.to_string()).collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return fail(format!("--gateways-dns {target} resolves to no address: are the gateway pods ready?"));
    }
    Ok(addresses)
}

impl Cli {
    /// The TLS settings, when any TLS option is given.
    fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, CtlError> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() {
            return Ok(None);
        }
        let tls = fanout_client::stream::ClientTls {
            ca_file: self.tls_ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            domain: self.tls_domain.clone(),
        };
        let config = tls.config().map_err(|e| CtlError(e.to_string()))?;
        Ok(Some(config))
    }

    fn token(&self) -> Result<Option<String>, CtlError> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CtlError(format!("cannot read --token-file {}: {e}", path.display())))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(self.token.clone().map(|t| t.trim().to_string()))
    }

    /// The `authorization` header's value, when a token is given.
    fn authorization(&self) -> Result<Option<AsciiMetadataValue>, CtlError> {
        let Some(token) = self.token()? else {
            return Ok(None);
        };
        format!("Bearer {token}")
            .parse()
            .map(Some)
            .map_err(|_| CtlError("the admin token holds characters a header cannot carry".into()))
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, CtlError> {
        Ok(authorized(message, self.authorization()?.as_ref()))
    }
}

fn call_error(address: &str, status: tonic::Status) -> CtlError {
    CtlError(call_line(address, status.code(), status.message()))
}

/// One replica's Status, as `-o json|yaml` prints it.
#[derive(Serialize)]
struct ReplicaStatus {
    address: String,
    #[serde(flatten)]
    status: StatusResponse,
}

/// One replica's entry in `-o json|yaml`: its answer, or (`{address, error}`) why there is none.
#[derive(Serialize)]
#[serde(untagged)]
enum Answer<T> {
    Answered(T),
    Missing(Missing),
}

/// A read command's `-o json|yaml`: an entry per replica that answered, then one per replica
/// that did not.
fn answers_as<T: Serialize>(
    output: Output,
    answered: impl IntoIterator<Item = T>,
    missing: &[Missing],
) -> Result<String, CtlError> {
    let all: Vec<Answer<T>> =
        answered.into_iter().map(Answer::Answered).chain(missing.iter().cloned().map(Answer::Missing)).collect();
    if output == Output::Yaml {
        yaml(&all)
    } else {
        json(&all)
    }
}

/// The refusal of a command about route `route` that no replica that answered runs.
fn no_such_route(route: &str) -> CtlError {
    CtlError(format!("no route `{route}` on the replicas that answered; `fanoutctl routes` lists them"))
}

/// Asks every replica reached for its Status (of one route, or all when `route` is empty): the
/// answers, and the replicas that did not answer (unreachable, or the call failed). An error
/// only when none answered: there is nothing to show.
async fn statuses(cli: &Cli, reached: Reached, route: &str) -> Result<(Vec<ReplicaStatus>, Vec<Missing>), CtlError> {
    let token = cli.authorization()?;
    let answered = ask_all(&reached.replicas, |mut client| {
        let request = authorized(StatusRequest { route: route.to_string() }, token.as_ref());
        async move { client.status(request).await }
    })
    .await;
    let mut all = Vec::with_capacity(answered.len());
    let mut missing = reached.missing;
    for (address, answer) in answered {
        match answer {
            Ok(status) => all.push(ReplicaStatus { address, status }),
            Err(failure) => missing.push(Missing { address, failure }),
        }
    }
    if all.is_empty() {
        return Err(nobody_answered(&missing, reached.flag));
    }
    Ok((all, missing))
}

/// Runs a parsed command line: what to print on stdout, and the failure to end with, if any.
pub async fn run(cli: Cli) -> Outcome {
    match execute(&cli).await {
        Ok(outcome) => outcome,
        Err(failure) => Outcome { stdout: String::new(), failure: Some(failure) },
    }
}

async fn execute(cli: &Cli) -> Result<Outcome, CtlError> {
    let reached = reach_replicas(cli).await?;
    let asked = reached.replicas.len() + reached.missing.len();
    match &cli.command {
        Command::Dlq(command) => dlq(cli, command, &mut reached.any()?).await.map(Outcome::shown),
        Command::Rollout(command) => rollout::run(cli, command, reached).await,
        Command::Replay(args) => replay(cli, args, &mut reached.any()?).await.map(Outcome::shown),
        Command::Replays { id } => {
            let mut r = reached.any()?;
            let replays = match id {
                Some(id) => vec![r
                    .client
                    .get_replay(cli.request(GetReplayRequest { id: *id })?)
                    .await
                    .map_err(|s| call_error(&r.address, s))?
                    .into_inner()],
                None => {
                    r.client
                        .list_replays(cli.request(ListReplaysRequest {})?)
                        .await
                        .map_err(|s| call_error(&r.address, s))?
                        .into_inner()
                        .replays
                }
            };
            match cli.output {
                Output::Json => json(&replays),
                Output::Yaml => yaml(&replays),
                Output::Table => Ok(replays_table(&replays)),
            }
            .map(Outcome::shown)
        }
        Command::CancelReplay { id } => {
            let mut r = reached.any()?;
            let status = r
                .client
                .cancel_replay(cli.request(CancelReplayRequest { id: *id })?)
                .await
                .map_err(|s| call_error(&r.address, s))?
                .into_inner();
            match cli.output {
                Output::Json => json(&status),
                Output::Yaml => yaml(&status),
                Output::Table => {
                    Ok(format!("replay {id}: cancelling ({} of {} settled)\n", status.settled, status.total))
                }
            }
            .map(Outcome::shown)
        }
        Command::Status | Command::Routes | Command::Partitions { .. } | Command::Subscribers { .. } => {
            let only = match &cli.command {
                Command::Subscribers { route } => route.clone(),
                Command::Partitions { route } => route.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let (all, missing) = statuses(cli, reached, &only).await?;
            let stdout = match cli.output {
                Output::Json | Output::Yaml => answers_as(cli.output, &all, &missing)?,
                Output::Table => match &cli.command {
                    Command::Status => {
                        format!("{}\n{}{}", replicas_table(&all, &missing), routes_table(&all), missing_notes(&missing))
                    }
                    Command::Routes => routes_table(&all) + &missing_notes(&missing),
                    Command::Subscribers { .. } => subscribers_table(&all, &missing),
                    _ => partitions_table(&all, &missing),
                },
            };
            let failure = (!missing.is_empty()).then(|| partly_answered(&missing, asked));
            Ok(Outcome { stdout, failure })
        }
        Command::Weights(WeightsCommand::Get { route }) => {
            let (all, missing) = statuses(cli, reached, route).await?;
            let stdout = weights::show(cli.output, route, &all, &missing)?;
            let failure = (!missing.is_empty()).then(|| partly_answered(&missing, asked));
            Ok(Outcome { stdout, failure })
        }
        Command::Weights(WeightsCommand::Set { route, weights, force }) => {
            let flag = reached.flag;
            let replicas = reached.all_for_change("weights change")?;
            weights::set(cli, &replicas, flag, route, weights, *force).await
        }
        Command::RateLimit(RateLimitCommand::Get { route }) => {
            let (all, missing) = statuses(cli, reached, route).await?;
            let stdout = rate_limit::show(cli.output, route, &all, &missing)?;
            let failure = (!missing.is_empty()).then(|| partly_answered(&missing, asked));
            Ok(Outcome { stdout, failure })
        }
        Command::RateLimit(RateLimitCommand::Set { route, messages_per_s, bytes_per_s, burst }) => {
            let flag = reached.flag;
            let replicas = reached.all_for_change("rate limit change")?;
            let limit = fanout_proto::admin::RateLimit {
                messages_per_s: messages_per_s.unwrap_or(0),
                bytes_per_s: bytes_per_s.unwrap_or(0),
                burst: burst.unwrap_or(0),
            };
            rate_limit::set(cli, &replicas, flag, route, Some(limit)).await
        }
        Command::RateLimit(RateLimitCommand::Clear { route }) => {
            let flag = reached.flag;
            let replicas = reached.all_for_change("rate limit change")?;
            rate_limit::set(cli, &replicas, flag, route, None).await
        }
        Command::Drain { route, subscriber } => {
            let mut replicas = reached.all_for_change("drain")?;
            let mut answers: Vec<(String, DrainResponse)> = Vec::new();
            for r in &mut replicas {
                let request = cli.request(DrainRequest { route: route.clone(), subscriber: subscriber.clone() })?;
                match r.client.drain(request).await {
                    Ok(answer) => answers.push((r.address.clone(), answer.into_inner())),
                    // A subscriber has a stream on some replicas only (or none left here).
                    Err(s) if s.code() == tonic::Code::NotFound && s.message().starts_with("no subscriber") => {}
                    Err(s) => return Err(call_error(&r.address, s)),
                }
            }
            if answers.is_empty() {
                return fail(format!(
                    "no subscriber `{subscriber}` on route {route} on any replica asked; `fanoutctl subscribers {route}` lists them"
                ));
            }
            render_changes(cli.output, &answers, |address, a| {
                format!(
                    "{address}: draining session(s) {:?} of {subscriber} with {} delivery(ies) in flight; the stream closes once they settle",
                    a.sessions, a.in_flight
                )
            })
            .map(Outcome::shown)
        }
    }
}

/// `dlq list` and `dlq redrive`: one replica answers for all (the letters and the record of
/// redrives are in Kafka).
async fn dlq(cli: &Cli, command: &DlqCommand, replica: &mut Replica) -> Result<String, CtlError> {
    let address = replica.address.clone();
    match command {
        DlqCommand::List { route, limit } => {
            let request = cli.request(ListDeadLettersRequest { route: route.clone(), limit: *limit })?;
            let listing = replica.letters.list(request).await.map_err(|s| call_error(&address, s))?.into_inner();
            match cli.output {
                Output::Json => json(&listing),
                Output::Yaml => yaml(&listing),
                Output::Table => Ok(letters_table(&listing)),
            }
        }
        DlqCommand::Redrive { route, letters, all } => {
            let letters = letters.iter().map(|&(partition, offset)| LetterRef { partition, offset }).collect();
            let request = cli.request(RedriveRequest { route: route.clone(), letters, all: *all })?;
            let mut stream = replica.letters.redrive(request).await.map_err(|s| call_error(&address, s))?.into_inner();
            let mut bar = ProgressBar::new("redriving");
            loop {
                match stream.message().await {
                    Ok(Some(p)) if p.finished => {
                        bar.finish();
                        let line = format!("route {route}: {} letter(s) redriven to their origin topics\n", p.done);
                        return match cli.output {
                            Output::Json => json(&p),
                            Output::Yaml => yaml(&p),
                            Output::Table => Ok(line),
                        };
                    }
                    Ok(Some(p)) => bar.show(p.done, p.total),
                    Ok(None) => {
                        bar.finish();
                        return fail(format!("{address}: the redrive ended without its outcome; `fanoutctl dlq list {route}` shows what was redriven"));
                    }
                    Err(status) => {
                        bar.finish();
                        return Err(call_error(&address, status));
                    }
                }
            }
        }
    }
}

/// How often a followed replay's progress is asked for.
const REPLAY_POLL: Duration = Duration::from_millis(200);

/// `replay`: starts a replay on one replica (its reader reads every partition of the range;
/// its subscribers get the deliveries) and follows it.
async fn replay(cli: &Cli, args: &ReplayArgs, replica: &mut Replica) -> Result<String, CtlError> {
    let offsets = |list: &[(String, i32, i64)]| -> Vec<PartitionOffset> {
        list.iter()
            .map(|(topic, partition, offset)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect()
    };
    let request = ReplayRequest {
        route: args.route.clone(),
        topics: args.topics.clone(),
        from_unix_ms: args.from_time,
        from_offsets: offsets(&args.from_offsets),
        to_unix_ms: args.to_time,
        to_offsets: offsets(&args.to_offsets),
    };
    let address = replica.address.clone();
    let mut status =
        replica.client.replay(cli.request(request)?).await.map_err(|s| call_error(&address, s))?.into_inner();
    if !args.no_wait {
        let mut bar = ProgressBar::new("replaying");
        while status.state == "running" {
            bar.show(status.settled, status.total);
            tokio::time::sleep(REPLAY_POLL).await;
            let ask = cli.request(GetReplayRequest { id: status.id })?;
            status = replica.client.get_replay(ask).await.map_err(|s| call_error(&address, s))?.into_inner();
        }
        bar.finish();
    }
    let line = format!(
        "replay {} of route {}: {}, {} of {} record(s) settled{}\n",
        status.id,
        status.route,
        status.state,
        status.settled,
        status.total,
        if status.error.is_empty() { String::new() } else { format!(" ({})", status.error) }
    );
    let out = match cli.output {
        Output::Json => json(&status)?,
        Output::Yaml => yaml(&status)?,
        Output::Table => line.clone(),
    };
    if status.state == "failed" {
        return fail(line.trim_end().to_string());
    }
    Ok(out)
}
