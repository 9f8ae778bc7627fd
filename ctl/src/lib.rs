//! `fanoutctl`: the operator's command line over the admin API, kubectl-like. It talks to one
//! replica (`--gateway`), several, or every address a headless Service name resolves to
//! (`--gateways-dns`), and shows each replica's answer side by side, so an operator sees
//! whether all of them applied a change (their config generations agree).
//!
//! A read command shows every replica that answered and marks those that did not (a replica
//! down is when an operator most needs to see the others); a change reaches every replica or
//! none. Errors are one line naming what to fix (one per replica that failed differently); exit
//! status 1 for a failed call or a replica that did not answer, 2 for a bad command line.

mod reach;
mod table;
mod weights;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::metadata::AsciiMetadataValue;

use fanout_proto::admin::{
    CancelReplayRequest, DrainRequest, DrainResponse, GetReplayRequest, LetterRef, ListDeadLettersRequest,
    ListDeadLettersResponse, ListReplaysRequest, PartitionOffset, RedriveRequest, ReplayRequest, ReplayStatus,
    RouteStatus, StatusRequest, StatusResponse,
};
use reach::{ask_all, authorized, call_line, nobody_answered, partly_answered, with_port, Missing, Reached, Replica};

/// The admin port's conventional port, when an address or DNS name leaves it out.
const DEFAULT_PORT: u16 = 9090;
/// How long a replica may take to accept a connection: replicas are asked at once, so a dead
/// one delays the command by this much once, however many replicas there are.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The heading of the options that say which replicas to reach and how.
const CONNECTION: &str = "Connection";

const EXAMPLES: &str = "\
Examples:
  fanoutctl --gateway 127.0.0.1:9090 status
  fanoutctl --gateways-dns fanout-gateway-headless.shop.svc:9090 routes
  fanoutctl weights get orders
  fanoutctl --token-file token weights set orders blue=90 green=10
  fanoutctl -o json subscribers orders";

const SET_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token weights set orders blue=90 green=10
  fanoutctl --token-file token weights set orders blue=0 green=100
  fanoutctl --token-file token weights set orders blue=100 green=50 --force   # green not deployed yet";

const DRAIN_EXAMPLES: &str = "\
Examples:
  fanoutctl subscribers orders                             # find the name or session
  fanoutctl --token-file token drain orders orders-blue-0
  fanoutctl --token-file token drain orders 17";

const REPLAY_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token replay orders --from-time 2026-12-02T18:00:00Z
  fanoutctl --token-file token replay orders --from-time 2026-12-02T18:00:00Z --to-time 2026-12-02T18:30:00Z
  fanoutctl --token-file token replay orders --from-offsets orders/0=1500,orders/1=1200 --no-wait";

const DLQ_EXAMPLES: &str = "\
Examples:
  fanoutctl dlq list orders
  fanoutctl --token-file token dlq redrive orders 0:42 1:7
  fanoutctl --token-file token dlq redrive orders --all";

#[derive(Debug, Parser)]
#[command(
    name = "fanoutctl",
    version,
    about = "Operate fanout-gateway replicas through their admin API",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Admin address of a replica (server.admin_listen), host:port; repeat or separate with
    /// commas for several.
    #[arg(
        long,
        global = true,
        env = "FANOUT_GATEWAY",
        value_delimiter = ',',
        default_value = "127.0.0.1:9090",
        help_heading = CONNECTION
    )]
    gateway: Vec<String>,
    /// A name that resolves to every replica (the gateway's headless Service, e.g.
    /// fanout-gateway-headless.shop.svc:9090); used instead of --gateway.
    #[arg(long, global = true, env = "FANOUT_GATEWAYS_DNS", help_heading = CONNECTION)]
    gateways_dns: Option<String>,
    /// File holding the admin bearer token (changing calls need it).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN_FILE", help_heading = CONNECTION)]
    token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer --token-file: arguments show in `ps`).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true, help_heading = CONNECTION)]
    token: Option<String>,
    /// TLS to the admin port (server.admin_tls): the CA (PEM) that signed the replicas'
    /// certificate.
    #[arg(long, global = true, env = "FANOUT_TLS_CA", value_name = "FILE", help_heading = CONNECTION)]
    tls_ca: Option<String>,
    /// mTLS: this operator's certificate (PEM); needs --tls-key.
    #[arg(
        long,
        global = true,
        env = "FANOUT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = CONNECTION
    )]
    tls_cert: Option<String>,
    /// mTLS: the key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "FANOUT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = CONNECTION
    )]
    tls_key: Option<String>,
    /// The name the replicas' certificate carries, when it is not the address's host (an IP
    /// from --gateways-dns, say).
    #[arg(long, global = true, env = "FANOUT_TLS_DOMAIN", value_name = "NAME", help_heading = CONNECTION)]
    tls_domain: Option<String>,
    /// Output format: tables for people, json or yaml for scripts (a replica that did not
    /// answer is an entry with its address and error).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table, help_heading = "Output")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Each replica (version, config generation, Kafka) and each route.
    Status,
    /// Routes: cohorts with weights against the observed split, subscribers, lag.
    Routes,
    /// The subscribers of a route on every replica.
    Subscribers {
        /// The route (as `routes` lists them).
        route: String,
    },
    /// Partitions of every route (or one): committed, high watermark, lag, paused, buffered.
    Partitions {
        /// Only this route.
        route: Option<String>,
    },
    /// A route's cohort weights: show them, or change them on every replica.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Stop sending to a subscriber, let its in-flight deliveries settle, close its streams.
    ///
    /// The subscriber is named as `subscribers` shows it (its name or session number); every
    /// replica it has a stream on drains it, so every replica must answer.
    #[command(after_help = DRAIN_EXAMPLES)]
    Drain {
        /// The route the subscriber reads.
        route: String,
        /// The subscriber's name (its pod) or session number, as `subscribers` shows them.
        subscriber: String,
    },
    /// A route's dead-letter topic: list its letters, redrive them to their origin topics.
    #[command(subcommand, after_help = DLQ_EXAMPLES)]
    Dlq(DlqCommand),
    /// Deliver a range of a route's topics again to its subscribers (marked as replayed).
    ///
    /// Committed offsets never move back and live traffic goes on. Follows the replay with a
    /// progress bar until it ends (Ctrl-C leaves it running). Asks the first replica named:
    /// `replays` and `cancel-replay` must name the same one.
    #[command(after_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Replays of a replica (the first named) or one, by id, and their progress.
    Replays {
        /// Only this replay (the id `replay` printed).
        id: Option<u64>,
    },
    /// Stop a replay (what was handed out already is still delivered).
    CancelReplay {
        /// The replay's id (as `replays` lists them).
        id: u64,
    },
}

impl Command {
    /// Whether the command concerns one replica's own state (its replays): it then asks the
    /// first replica named, and only that one.
    fn first_replica_only(&self) -> bool {
        matches!(self, Command::Replay(_) | Command::Replays { .. } | Command::CancelReplay { .. })
    }
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The route whose topics are read again.
    route: String,
    /// Start at the first record at or after this time: RFC 3339 (2026-12-02T18:00:00Z) or
    /// Unix milliseconds.
    #[arg(long, value_parser = parse_time, required_unless_present = "from_offsets", conflicts_with = "from_offsets")]
    from_time: Option<i64>,
    /// Start at these offsets, TOPIC/PARTITION=OFFSET,... (only those partitions are replayed).
    #[arg(long, value_delimiter = ',', value_parser = parse_partition_offset)]
    from_offsets: Vec<(String, i32, i64)>,
    /// Stop before the first record at or after this time (default: each partition's end now).
    #[arg(long, value_parser = parse_time, conflicts_with = "to_offsets")]
    to_time: Option<i64>,
    /// Stop before these offsets, TOPIC/PARTITION=OFFSET,...
    #[arg(long, value_delimiter = ',', value_parser = parse_partition_offset)]
    to_offsets: Vec<(String, i32, i64)>,
    /// Only this topic of the route (repeat for more).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Start it and return its id at once.
    #[arg(long)]
    no_wait: bool,
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    text.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("`{text}` is not a time: write RFC 3339 (2026-12-02T18:00:00Z) or Unix milliseconds"))
}

fn parse_partition_offset(text: &str) -> Result<(String, i32, i64), String> {
    let bad = || format!("`{text}` is not TOPIC/PARTITION=OFFSET (e.g. orders/0=1500)");
    let (tp, offset) = text.split_once('=').ok_or_else(bad)?;
    let (topic, partition) = tp.rsplit_once('/').ok_or_else(bad)?;
    if topic.trim().is_empty() {
        return Err(bad());
    }
    Ok((
        topic.trim().to_string(),
        partition.trim().parse().map_err(|_| bad())?,
        offset.trim().parse().map_err(|_| bad())?,
    ))
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The letters not yet redriven (and redriven ones among them), oldest first.
    List {
        /// The route whose dead-letter topic is listed.
        route: String,
        /// Letters at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Produce letters back to their origin topic and partition; each letter goes back once.
    /// Asks one replica: the record of what was redriven is in Kafka.
    Redrive {
        /// The route whose letters go back.
        route: String,
        /// Letters as PARTITION:OFFSET (as `dlq list` shows them).
        #[arg(value_name = "PARTITION:OFFSET", value_parser = parse_letter, required_unless_present = "all", conflicts_with = "all")]
        letters: Vec<(i32, i64)>,
        /// Every letter not redriven yet.
        #[arg(long)]
        all: bool,
    },
}

fn parse_letter(text: &str) -> Result<(i32, i64), String> {
    let bad = || format!("`{text}` is not PARTITION:OFFSET (e.g. 0:42, as `fanoutctl dlq list` shows)");
    let (p, o) = text.split_once(':').ok_or_else(bad)?;
    Ok((p.trim().parse().map_err(|_| bad())?, o.trim().parse().map_err(|_| bad())?))
}

#[derive(Debug, Subcommand)]
enum WeightsCommand {
    /// Replace a route's weights on every replica, e.g. `weights set orders blue=0 green=100`.
    ///
    /// Every replica checks the change first (a dry run); if any refuses it, none changes. A
    /// replica refuses a cohort the route has never seen, and a share for a cohort with no
    /// subscriber on a route that holds (empty_cohort = "hold"), unless --force.
    #[command(after_help = SET_EXAMPLES)]
    Set {
        /// The route whose weights change.
        route: String,
        /// A cohort (a value of the route's split label) and its weight; cohorts left out are
        /// removed.
        #[arg(required = true, value_name = "COHORT=WEIGHT", value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
        /// Change the weights even where a replica refuses them because they would strand
        /// messages (dangerous).
        ///
        /// Overrides the refusal of a cohort the route has never seen (a typo?) and of a share
        /// for a cohort with no subscriber on a route that holds (empty_cohort = "hold").
        /// Dangerous: that share of the messages is held, and the route's lag grows, until a
        /// subscriber of that cohort connects or its weight goes back to 0.
        #[arg(long)]
        force: bool,
    },
    /// A route's weight per cohort and, on each replica, the cohort's subscribers and the
    /// messages held for it.
    Get {
        /// The route (as `routes` lists them).
        route: String,
    },
}

fn parse_weight(text: &str) -> Result<(String, u32), String> {
    let (cohort, weight) =
        text.split_once('=').ok_or_else(|| format!("`{text}` is not COHORT=WEIGHT (e.g. green=100)"))?;
    let cohort = cohort.trim();
    if cohort.is_empty() {
        return Err(format!("`{text}` names no cohort: write COHORT=WEIGHT (e.g. green=100)"));
    }
    let weight = weight
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("the weight in `{text}` must be a whole number from 0 (e.g. {cohort}=100)"))?;
    Ok((cohort.to_string(), weight))
}

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

/// Every entry of a read command's `-o json|yaml`: those that answered, then those that did not.
fn answers<'a>(all: &'a [ReplicaStatus], missing: &[Missing]) -> Vec<Answer<&'a ReplicaStatus>> {
    all.iter().map(Answer::Answered).chain(missing.iter().cloned().map(Answer::Missing)).collect()
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
                Output::Json => json(&answers(&all, &missing))?,
                Output::Yaml => yaml(&answers(&all, &missing))?,
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

fn replays_table(replays: &[ReplayStatus]) -> String {
    let now = now_unix_ms();
    let rows: Vec<Vec<String>> = replays
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.route.clone(),
                r.state.clone(),
                format!("{}/{}", r.settled, r.total),
                r.ranges.len().to_string(),
                table::age((now - r.started_at_unix_ms) / 1000),
                if r.error.is_empty() { "-".into() } else { r.error.replace('\n', " ") },
            ]
        })
        .collect();
    table::render(&["ID", "ROUTE", "STATE", "SETTLED/TOTAL", "PARTITIONS", "AGE", "ERROR"], &rows)
}

/// A progress bar on stderr when it is a terminal; nothing otherwise (logs and pipes get the
/// outcome only).
struct ProgressBar {
    label: &'static str,
    tty: bool,
    drawn: bool,
}

impl ProgressBar {
    fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Self { label, tty: std::io::stderr().is_terminal(), drawn: false }
    }

    fn show(&mut self, done: u64, total: u64) {
        if !self.tty || total == 0 {
            return;
        }
        const WIDTH: u64 = 30;
        let filled = (done.min(total) * WIDTH / total) as usize;
        eprint!("\r{} [{}{}] {done}/{total}", self.label, "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn letters_table(listing: &ListDeadLettersResponse) -> String {
    let now = now_unix_ms();
    let rows: Vec<Vec<String>> = listing
        .letters
        .iter()
        .map(|l| {
            vec![
                l.partition.to_string(),
                l.offset.to_string(),
                format!("{}/{}/{}", l.origin_topic, l.origin_partition, l.origin_offset),
                l.attempts.to_string(),
                table::age((now - l.timestamp_unix_ms) / 1000),
                if l.redriven { "yes".into() } else { "no".into() },
                l.reason.replace('\n', " "),
            ]
        })
        .collect();
    let mut out = table::render(&["PARTITION", "OFFSET", "ORIGIN", "ATTEMPTS", "AGE", "REDRIVEN", "REASON"], &rows);
    out.push_str(&format!(
        "{}: {} letter(s), {} redriven, {} shown\n",
        listing.topic,
        listing.total,
        listing.redriven,
        listing.letters.len()
    ));
    out
}

fn render_changes<T: Serialize>(
    output: Output,
    answers: &[(String, T)],
    line: impl Fn(&str, &T) -> String,
) -> Result<String, CtlError> {
    #[derive(Serialize)]
    struct Answer<'a, T> {
        address: &'a str,
        #[serde(flatten)]
        answer: &'a T,
    }
    let all: Vec<Answer<'_, T>> = answers.iter().map(|(address, answer)| Answer { address, answer }).collect();
    match output {
        Output::Json => json(&all),
        Output::Yaml => yaml(&all),
        Output::Table => Ok(answers.iter().map(|(a, t)| line(a, t) + "\n").collect()),
    }
}

fn json<T: Serialize>(value: &T) -> Result<String, CtlError> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| CtlError(format!("cannot print JSON: {e}")))
}

fn yaml<T: Serialize>(value: &T) -> Result<String, CtlError> {
    serde_saphyr::to_string(value).map_err(|e| CtlError(format!("cannot print YAML: {e}")))
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Lines under a table for the replicas that did not answer, so a reader knows the counts
/// above leave them out.
fn missing_notes(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("no answer from {} ({}): not in the table above\n", m.address, m.failure.marker()))
        .collect()
}

fn replicas_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            let replica = r.status.replica.clone().unwrap_or_default();
            let subscribers: usize = r.status.routes.iter().map(|x| x.subscribers.len()).sum();
            vec![
                replica.name,
                r.address.clone(),
                replica.version,
                replica.config_generation,
                if replica.kafka_reachable { "reachable".into() } else { "unreachable".into() },
                if replica.ready { "yes".into() } else { "no".into() },
                r.status.routes.len().to_string(),
                subscribers.to_string(),
                table::age((now_unix_ms() - replica.started_at_unix_ms) / 1000),
                replica.config_source,
            ]
        })
        .collect();
    // A replica that did not answer has no name: its address and why, where its version would be.
    let marked: Vec<Vec<String>> =
        missing.iter().map(|m| vec!["-".to_string(), m.address.clone(), m.failure.marker()]).collect();
    table::render_marked(
        &[
            "REPLICA",
            "ADDRESS",
            "VERSION",
            "CONFIG GENERATION",
            "KAFKA",
            "READY",
            "ROUTES",
            "SUBSCRIBERS",
            "AGE",
            "SOURCE",
        ],
        &rows,
        &marked,
    )
}

/// A cohort in the routes table: its weight against its observed share and, when messages
/// wait for it (no subscriber on a route that holds), how many, so an operator sees which
/// cohort strands them.
fn cohort_cell(name: &str, weight_share: f64, observed_share: f64, held: u64) -> String {
    let held = if held == 0 { String::new() } else { format!(" held={held}") };
    format!("{name}={}/{}{held}", table::percent(weight_share), table::percent(observed_share))
}

/// Routes across replicas: each replica serves its own subscribers and partitions, so counts
/// add up; weights are the first replica's (the generations show whether all agree).
fn routes_table(all: &[ReplicaStatus]) -> String {
    let mut by_route: BTreeMap<&str, Vec<&RouteStatus>> = BTreeMap::new();
    for r in all {
        for route in &r.status.routes {
            by_route.entry(&route.name).or_default().push(route);
        }
    }
    let rows: Vec<Vec<String>> = by_route
        .iter()
        .map(|(name, parts)| {
            let first = parts[0];
            let recent_total: u64 = parts.iter().flat_map(|p| &p.cohorts).map(|c| c.delivered_last_minute).sum();
            let cohorts: Vec<String> = first
                .cohorts
                .iter()
                .map(|c| {
                    let alike = || parts.iter().flat_map(|p| &p.cohorts).filter(|x| x.name == c.name);
                    let recent: u64 = alike().map(|x| x.delivered_last_minute).sum();
                    let observed = if recent_total == 0 { 0.0 } else { recent as f64 / recent_total as f64 };
                    cohort_cell(&c.name, c.weight_share, observed, alike().map(|x| x.held).sum())
                })
                .collect();
            let lag: Option<i64> = parts.iter().flat_map(|p| &p.partitions).map(|p| p.lag).sum();
            vec![
                name.to_string(),
                first.group.clone(),
                first.delivery.clone(),
                if cohorts.is_empty() { "-".into() } else { cohorts.join(" ") },
                parts.iter().map(|p| p.subscribers.len()).sum::<usize>().to_string(),
                parts.iter().map(|p| p.partitions.len()).sum::<usize>().to_string(),
                table::or_dash(lag),
                parts.iter().map(|p| p.held).sum::<u64>().to_string(),
                parts.iter().map(|p| p.retrying).sum::<u64>().to_string(),
            ]
        })
        .collect();
    table::render(
        &[
            "ROUTE",
            "GROUP",
            "DELIVERY",
            "COHORTS (WEIGHT/OBSERVED 1M)",
            "SUBSCRIBERS",
            "PARTITIONS",
            "LAG",
            "HELD",
            "RETRYING",
        ],
        &rows,
    )
}

/// Marked rows for tables whose first column is the replica: its address, and why it has no
/// rows.
fn missing_rows(missing: &[Missing]) -> Vec<Vec<String>> {
    missing.iter().map(|m| vec![m.address.clone(), m.failure.marker()]).collect()
}

fn subscribers_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let now = now_unix_ms();
    let mut rows = Vec::new();
    for r in all {
        let replica = r.status.replica.as_ref().map_or(r.address.clone(), |x| x.name.clone());
        for route in &r.status.routes {
            for s in &route.subscribers {
                rows.push(vec![
                    replica.clone(),
                    s.session.to_string(),
                    s.name.clone(),
                    if s.cohort.is_empty() { "-".into() } else { s.cohort.clone() },
                    s.window.to_string(),
                    s.in_flight.to_string(),
                    s.delivered.to_string(),
                    s.acked.to_string(),
                    table::age((now - s.connected_at_unix_ms) / 1000),
                    if s.draining { "draining".into() } else { "active".into() },
                ]);
            }
        }
    }
    let mut out = table::render_marked(
        &["REPLICA", "SESSION", "NAME", "COHORT", "WINDOW", "IN-FLIGHT", "DELIVERED", "ACKED", "CONNECTED", "STATE"],
        &rows,
        &missing_rows(missing),
    );
    out.push_str(&omitted_lines(all));
    out
}

/// A line per route and replica whose reply left subscribers out (its size bound), so a
/// cut-off list never passes for the whole one.
fn omitted_lines(all: &[ReplicaStatus]) -> String {
    let mut out = String::new();
    for r in all {
        for route in r.status.routes.iter().filter(|route| route.subscribers_omitted > 0) {
            out.push_str(&format!(
                "{}: {} more subscriber(s) of route {} not shown (the reply's size bound)\n",
                r.address, route.subscribers_omitted, route.name
            ));
        }
    }
    out
}

fn partitions_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let mut rows = Vec::new();
    for r in all {
        let replica = r.status.replica.as_ref().map_or(r.address.clone(), |x| x.name.clone());
        for route in &r.status.routes {
            for p in &route.partitions {
                rows.push(vec![
                    replica.clone(),
                    route.name.clone(),
                    p.topic.clone(),
                    p.partition.to_string(),
                    table::or_dash(p.committed),
                    table::or_dash(p.high_watermark),
                    table::or_dash(p.lag),
                    if p.paused { "yes".into() } else { "no".into() },
                    p.buffered.to_string(),
                ]);
            }
        }
    }
    table::render_marked(
        &["REPLICA", "ROUTE", "TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG", "PAUSED", "BUFFERED"],
        &rows,
        &missing_rows(missing),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::admin::{Cohort, Replica as ReplicaInfo};
    use reach::Failure;

    fn refused(address: &str) -> Missing {
        Missing { address: address.into(), failure: Failure::Unreachable("connection refused".into()) }
    }

    fn answered(address: &str, held: u64) -> ReplicaStatus {
        let cohorts = vec![
            Cohort { name: "blue".into(), weight: 0, weight_share: 0.0, ..Cohort::default() },
            Cohort { name: "green".into(), weight: 100, weight_share: 1.0, held, ..Cohort::default() },
        ];
        ReplicaStatus {
            address: address.into(),
            status: StatusResponse {
                replica: Some(ReplicaInfo { name: "gw-0".into(), version: "1.2.0".into(), ..ReplicaInfo::default() }),
                routes: vec![RouteStatus { name: "orders".into(), cohorts, ..RouteStatus::default() }],
            },
        }
    }

    #[test]
    fn weights_parse_as_cohort_equals_number() {
        assert_eq!(parse_weight("green=100"), Ok(("green".into(), 100)));
        assert!(parse_weight("green").expect_err("no =").contains("COHORT=WEIGHT"));
        assert!(parse_weight("=5").expect_err("no cohort").contains("names no cohort"));
        assert!(parse_weight("blue=-1").expect_err("negative").contains("whole number"));
    }

    #[test]
    fn times_offsets_and_letters_parse_or_say_what_to_write() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_time("yesterday").expect_err("not a time").contains("RFC 3339"));
        assert_eq!(parse_partition_offset("orders.v2/3=15"), Ok(("orders.v2".into(), 3, 15)));
        assert!(parse_partition_offset("orders=15").expect_err("no partition").contains("TOPIC/PARTITION=OFFSET"));
        assert_eq!(parse_letter("1:42"), Ok((1, 42)));
        assert!(parse_letter("1-42").expect_err("bad").contains("PARTITION:OFFSET"));
    }

    #[test]
    fn subscribers_a_reply_left_out_are_counted_under_the_table() {
        let mut cut = answered("a:9090", 0);
        cut.status.routes[0].subscribers_omitted = 7;
        let out = subscribers_table(&[cut, answered("b:9090", 0)], &[]);
        assert!(
            out.ends_with("a:9090: 7 more subscriber(s) of route orders not shown (the reply's size bound)\n"),
            "{out}"
        );
        assert_eq!(out.matches("not shown").count(), 1, "{out}");
    }

    #[test]
    fn a_replica_that_did_not_answer_is_a_marked_row_and_a_note() {
        let out = replicas_table(&[answered("a:9090", 0)], &[refused("b:9090")]);
        let last = out.lines().last().expect("rows");
        assert_eq!(
            last.split_whitespace().collect::<Vec<_>>(),
            ["-", "b:9090", "UNREACHABLE:", "connection", "refused"]
        );
        assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("gw-0 ")), "{out}");
        assert_eq!(
            missing_notes(&[refused("b:9090")]),
            "no answer from b:9090 (UNREACHABLE: connection refused): not in the table above\n"
        );
        let subscribers = subscribers_table(&[answered("a:9090", 0)], &[refused("b:9090")]);
        assert!(subscribers.ends_with("b:9090    UNREACHABLE: connection refused\n"), "{subscribers}");
    }

    #[test]
    fn a_cohort_shows_what_it_holds_only_when_it_holds_something() {
        assert_eq!(cohort_cell("green", 1.0, 0.0, 3000), "green=100%/0% held=3000");
        assert_eq!(cohort_cell("blue", 0.5, 0.5, 0), "blue=50%/50%");
        let routes = routes_table(&[answered("a:9090", 1000), answered("b:9090", 2000)]);
        assert!(routes.contains("blue=0%/0% green=100%/0% held=3000"), "held adds up across replicas: {routes}");
    }

    #[test]
    fn json_lists_a_missing_replica_with_its_error() {
        let all = [answered("a:9090", 0)];
        let value = serde_json::to_value(answers(&all, &[refused("b:9090")])).expect("serializes");
        assert_eq!(value[0]["address"], "a:9090");
        assert_eq!(value[0]["routes"][0]["name"], "orders");
        assert_eq!(value[1], serde_json::json!({"address": "b:9090", "error": "UNREACHABLE: connection refused"}));
    }

    #[test]
    fn every_argument_and_option_has_a_description() {
        use clap::CommandFactory;
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(arg.get_help().is_some(), "{path} {id} has no description");
                }
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{path} {} has no description", sub.get_name());
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "fanoutctl");
        Cli::command().debug_assert();
    }
}
