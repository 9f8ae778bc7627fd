//! `fanoutctl`: the operator's command line over the admin API, kubectl-like. It talks to one
//! replica (`--gateway`), several, or every address a headless Service name resolves to
//! (`--gateways-dns`), and shows each replica's answer side by side, so an operator sees
//! whether all of them applied a change (their config generations agree).
//!
//! Errors are one line naming what to fix; exit status 1 for a failed call, 2 for a bad
//! command line.

mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::proto::admin::admin_client::AdminClient;
use crate::proto::admin::dead_letters_client::DeadLettersClient;
use crate::proto::admin::{
    CancelReplayRequest, DrainRequest, DrainResponse, GetReplayRequest, LetterRef, ListDeadLettersRequest,
    ListDeadLettersResponse, ListReplaysRequest, PartitionOffset, RedriveRequest, ReplayRequest, ReplayStatus,
    RouteStatus, SetWeightsRequest, SetWeightsResponse, StatusRequest, StatusResponse,
};

/// The admin port's conventional port, when an address or DNS name leaves it out.
const DEFAULT_PORT: u16 = 9090;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Parser)]
#[command(name = "fanoutctl", version, about = "Operate fanout-gateway replicas through their admin API")]
pub struct Cli {
    /// Admin address of a replica (server.admin_listen), host:port; repeat or separate with
    /// commas for several.
    #[arg(long, global = true, env = "FANOUT_GATEWAY", value_delimiter = ',', default_value = "127.0.0.1:9090")]
    gateway: Vec<String>,
    /// A name that resolves to every replica (the gateway's headless Service, e.g.
    /// fanout-gateway-headless.shop.svc:9090); used instead of --gateway.
    #[arg(long, global = true, env = "FANOUT_GATEWAYS_DNS")]
    gateways_dns: Option<String>,
    /// File holding the admin bearer token (changing calls need it).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer --token-file: arguments show in `ps`).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// TLS to the admin port (server.admin_tls): the CA (PEM) that signed the replicas'
    /// certificate.
    #[arg(long, global = true, env = "FANOUT_TLS_CA", value_name = "FILE")]
    tls_ca: Option<String>,
    /// mTLS: this operator's certificate and key (PEM).
    #[arg(long, global = true, env = "FANOUT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<String>,
    #[arg(long, global = true, env = "FANOUT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
    /// The name the replicas' certificate carries, when it is not the address's host (an IP
    /// from --gateways-dns, say).
    #[arg(long, global = true, env = "FANOUT_TLS_DOMAIN", value_name = "NAME")]
    tls_domain: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
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
    Subscribers { route: String },
    /// Partitions of every route (or one): committed, high watermark, lag, paused, buffered.
    Partitions { route: Option<String> },
    /// Change a route's cohort weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Stop sending to a subscriber (its name or session number, as `subscribers` shows),
    /// let its in-flight deliveries settle, close its streams.
    Drain { route: String, subscriber: String },
    /// A route's dead-letter topic: list its letters, redrive them to their origin topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Deliver a range of a route's topics again to its subscribers (marked as replayed);
    /// committed offsets never move back and live traffic goes on. Follows the replay with a
    /// progress bar until it ends (Ctrl-C leaves it running).
    Replay(ReplayArgs),
    /// Replays of a replica (or one, by id) and their progress.
    Replays { id: Option<u64> },
    /// Stop a replay (what was handed out already is still delivered).
    CancelReplay { id: u64 },
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
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
        route: String,
        /// Letters at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Produce letters back to their origin topic and partition; each letter goes back once.
    /// Asks one replica: the record of what was redriven is in Kafka.
    Redrive {
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
    /// Replace a route's weights, e.g. `weights set orders blue=0 green=100`.
    Set {
        route: String,
        #[arg(required = true, value_name = "COHORT=WEIGHT", value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
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

/// A failure, printed as one line.
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

/// One replica's admin API.
struct Replica {
    address: String,
    client: AdminClient<Channel>,
    letters: DeadLettersClient<Channel>,
}

/// Every replica the command line names.
async fn replicas(cli: &Cli) -> Result<Vec<Replica>, CtlError> {
    let addresses = match &cli.gateways_dns {
        Some(name) => resolve(name).await?,
        None => cli.gateway.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
    };
    if addresses.is_empty() {
        return fail("no gateway given: pass --gateway host:port (the replica's server.admin_listen)");
    }
    let mut out = Vec::with_capacity(addresses.len());
    for address in addresses {
        out.push(connect(&address, cli.gateways_dns.is_some(), cli.tls()?.as_ref()).await?);
    }
    Ok(out)
}

/// host:port, defaulting the port.
fn with_port(address: &str) -> String {
    let bare = address.trim_start_matches("http://");
    let has_port = bare.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if has_port {
        bare.to_string()
    } else {
        format!("{bare}:{DEFAULT_PORT}")
    }
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
}

async fn connect(
    address: &str,
    from_dns: bool,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Replica, CtlError> {
    let address = with_port(address);
    let flag = if from_dns { "--gateways-dns" } else { "--gateway" };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| CtlError(format!("{flag} `{address}` is not a host:port address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| CtlError(format!("TLS settings for {address}: {}", root_cause(&e))))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        CtlError(format!(
            "cannot reach the admin API at {address}: {}; check {flag} (the replica's server.admin_listen, port {DEFAULT_PORT} by default)",
            root_cause(&e)
        ))
    })?;
    Ok(Replica { address, client: AdminClient::new(channel.clone()), letters: DeadLettersClient::new(channel) })
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

fn call_error(address: &str, status: tonic::Status) -> CtlError {
    // A plaintext client on a TLS port (or the reverse) sees the connection fail mid-call.
    let protocol = status.message().contains("h2 protocol error") || status.message().contains("transport error");
    let hint = match status.code() {
        _ if protocol => {
            " (the connection broke: if the admin port uses TLS (server.admin_tls), pass --tls-ca; if it does not, drop the --tls options)"
        }
        tonic::Code::Unavailable => " (is the replica stopping, or is this not its admin port?)",
        _ => "",
    };
    CtlError(format!("{address}: {}: {}{hint}", code_name(status.code()), status.message().replace('\n', " ")))
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_uppercase()).then_some('_');
            sep.into_iter().chain(c.to_uppercase())
        })
        .collect()
}

impl Cli {
    fn token(&self) -> Result<Option<String>, CtlError> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CtlError(format!("cannot read --token-file {}: {e}", path.display())))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(self.token.clone().map(|t| t.trim().to_string()))
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, CtlError> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.token()? {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| CtlError("the admin token holds characters a header cannot carry".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// One replica's Status, as `-o json|yaml` prints it.
#[derive(Serialize)]
struct ReplicaStatus {
    address: String,
    #[serde(flatten)]
    status: StatusResponse,
}

/// Runs a parsed command line; the text to print on stdout.
pub async fn run(cli: Cli) -> Result<String, CtlError> {
    let mut replicas = replicas(&cli).await?;
    match &cli.command {
        Command::Dlq(command) => dlq(&cli, command, &mut replicas[0]).await,
        Command::Replay(args) => replay(&cli, args, &mut replicas[0]).await,
        Command::Replays { id } => {
            let r = &mut replicas[0];
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
        }
        Command::CancelReplay { id } => {
            let r = &mut replicas[0];
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
        }
        Command::Status | Command::Routes | Command::Partitions { .. } | Command::Subscribers { .. } => {
            let only = match &cli.command {
                Command::Subscribers { route } => route.clone(),
                Command::Partitions { route } => route.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let mut all = Vec::with_capacity(replicas.len());
            for r in &mut replicas {
                let status = r
                    .client
                    .status(cli.request(StatusRequest { route: only.clone() })?)
                    .await
                    .map_err(|s| call_error(&r.address, s))?
                    .into_inner();
                all.push(ReplicaStatus { address: r.address.clone(), status });
            }
            match cli.output {
                Output::Json => json(&all),
                Output::Yaml => yaml(&all),
                Output::Table => Ok(match &cli.command {
                    Command::Status => format!("{}\n{}", replicas_table(&all), routes_table(&all)),
                    Command::Routes => routes_table(&all),
                    Command::Subscribers { .. } => subscribers_table(&all),
                    _ => partitions_table(&all),
                }),
            }
        }
        Command::Weights(WeightsCommand::Set { route, weights }) => {
            let weights: BTreeMap<String, u32> = weights.iter().cloned().collect();
            let mut answers: Vec<(String, SetWeightsResponse)> = Vec::new();
            for r in &mut replicas {
                let request = cli.request(SetWeightsRequest { route: route.clone(), weights: weights.clone(), ..Default::default() })?;
                let answer = r.client.set_weights(request).await.map_err(|s| call_error(&r.address, s))?;
                answers.push((r.address.clone(), answer.into_inner()));
            }
            let shown: Vec<String> = weights.iter().map(|(c, w)| format!("{c}={w}")).collect();
            render_changes(cli.output, &answers, |address, a| {
                format!(
                    "{address}: route {route} weights set to {} (config generation {}, {})",
                    shown.join(" "),
                    a.config_generation,
                    a.config_source
                )
            })
        }
        Command::Drain { route, subscriber } => {
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

fn replicas_table(all: &[ReplicaStatus]) -> String {
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
    table::render(
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
    )
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
                    let recent: u64 = parts
                        .iter()
                        .flat_map(|p| &p.cohorts)
                        .filter(|x| x.name == c.name)
                        .map(|x| x.delivered_last_minute)
                        .sum();
                    let observed = if recent_total == 0 { 0.0 } else { recent as f64 / recent_total as f64 };
                    format!("{}={}/{}", c.name, table::percent(c.weight_share), table::percent(observed))
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

fn subscribers_table(all: &[ReplicaStatus]) -> String {
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
    table::render(
        &["REPLICA", "SESSION", "NAME", "COHORT", "WINDOW", "IN-FLIGHT", "DELIVERED", "ACKED", "CONNECTED", "STATE"],
        &rows,
    )
}

fn partitions_table(all: &[ReplicaStatus]) -> String {
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
    table::render(
        &["REPLICA", "ROUTE", "TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG", "PAUSED", "BUFFERED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn addresses_get_the_admin_port_when_they_have_none() {
        assert_eq!(with_port("gw-0.gw"), "gw-0.gw:9090");
        assert_eq!(with_port("http://10.0.0.1:9191"), "10.0.0.1:9191");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
    }
}
