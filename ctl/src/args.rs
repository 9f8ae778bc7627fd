//! fanoutctl's command line: the commands, their options and examples, and the parsers that
//! turn an argument into a value or a one-line message saying what to write.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The heading of the options that say which replicas to reach and how.
pub(crate) const CONNECTION: &str = "Connection";

pub(crate) const EXAMPLES: &str = "\
Examples:
  fanoutctl --gateway 127.0.0.1:9090 status
  fanoutctl --gateways-dns fanout-gateway-headless.shop.svc:9090 routes
  fanoutctl weights get orders
  fanoutctl --token-file token weights set orders blue=90 green=10
  fanoutctl -o json subscribers orders";

pub(crate) const SET_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token weights set orders blue=90 green=10
  fanoutctl --token-file token weights set orders blue=0 green=100
  fanoutctl --token-file token weights set orders blue=100 green=50 --force   # green not deployed yet";

pub(crate) const RATE_LIMIT_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token rate-limit set orders --messages-per-s 1000 --burst 100
  fanoutctl --token-file token rate-limit set orders --bytes-per-s 10485760
  fanoutctl rate-limit get orders
  fanoutctl --token-file token rate-limit clear orders";

pub(crate) const DRAIN_EXAMPLES: &str = "\
Examples:
  fanoutctl subscribers orders                             # find the name or session
  fanoutctl --token-file token drain orders orders-blue-0
  fanoutctl --token-file token drain orders 17";

pub(crate) const REPLAY_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token replay orders --from-time 2026-12-02T18:00:00Z
  fanoutctl --token-file token replay orders --from-time 2026-12-02T18:00:00Z --to-time 2026-12-02T18:30:00Z
  fanoutctl --token-file token replay orders --from-offsets orders/0=1500,orders/1=1200 --no-wait";

pub(crate) const ROLLOUT_EXAMPLES: &str = "\
Examples:
  fanoutctl --token-file token rollout start orders --stable blue --candidate green --steps 1,10,50 --hold 5m
  fanoutctl --token-file token rollout start orders --stable blue --candidate green --steps 10:2m,50:10m --min-deliveries 1000
  fanoutctl rollout status orders
  fanoutctl --token-file token rollout pause orders
  fanoutctl --token-file token rollout abort orders";

pub(crate) const DLQ_EXAMPLES: &str = "\
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
    pub(crate) gateway: Vec<String>,
    /// A name that resolves to every replica (the gateway's headless Service, e.g.
    /// fanout-gateway-headless.shop.svc:9090); used instead of --gateway.
    #[arg(long, global = true, env = "FANOUT_GATEWAYS_DNS", help_heading = CONNECTION)]
    pub(crate) gateways_dns: Option<String>,
    /// File holding the admin bearer token (changing calls need it).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN_FILE", help_heading = CONNECTION)]
    pub(crate) token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer --token-file: arguments show in `ps`).
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true, help_heading = CONNECTION)]
    pub(crate) token: Option<String>,
    /// TLS to the admin port (server.admin_tls): the CA (PEM) that signed the replicas'
    /// certificate.
    #[arg(long, global = true, env = "FANOUT_TLS_CA", value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) tls_ca: Option<String>,
    /// mTLS: this operator's certificate (PEM); needs --tls-key.
    #[arg(
        long,
        global = true,
        env = "FANOUT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = CONNECTION
    )]
    pub(crate) tls_cert: Option<String>,
    /// mTLS: the key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "FANOUT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = CONNECTION
    )]
    pub(crate) tls_key: Option<String>,
    /// The name the replicas' certificate carries, when it is not the address's host (an IP
    /// from --gateways-dns, say).
    #[arg(long, global = true, env = "FANOUT_TLS_DOMAIN", value_name = "NAME", help_heading = CONNECTION)]
    pub(crate) tls_domain: Option<String>,
    /// Output format: tables for people, json or yaml for scripts (a replica that did not
    /// answer is an entry with its address and error).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table, help_heading = "Output")]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// A route's rate limit: show it, or change it on every replica.
    #[command(subcommand, name = "rate-limit", after_help = RATE_LIMIT_EXAMPLES)]
    RateLimit(RateLimitCommand),
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
    /// Move a route's traffic to a candidate cohort step by step, judged against the stable one.
    ///
    /// Each replica compares the candidate cohort with the stable cohort on its own traffic at
    /// every step (failure rate: nacks and missed ack deadlines per delivery; ack latency); a
    /// failing look rolls the weights back to the stable cohort at once, and the last step
    /// passed promotes the candidate to 100 %. The rollout is kept in the gateway's source of
    /// truth beside the weights, so it survives restarts and every replica drives the same one.
    #[command(subcommand, after_help = ROLLOUT_EXAMPLES)]
    Rollout(RolloutCommand),
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
    pub(crate) fn first_replica_only(&self) -> bool {
        matches!(self, Command::Replay(_) | Command::Replays { .. } | Command::CancelReplay { .. })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The route whose topics are read again.
    pub(crate) route: String,
    /// Start at the first record at or after this time: RFC 3339 (2026-12-02T18:00:00Z) or
    /// Unix milliseconds.
    #[arg(long, value_parser = parse_time, required_unless_present = "from_offsets", conflicts_with = "from_offsets")]
    pub(crate) from_time: Option<i64>,
    /// Start at these offsets, TOPIC/PARTITION=OFFSET,... (only those partitions are replayed).
    #[arg(long, value_delimiter = ',', value_parser = parse_partition_offset)]
    pub(crate) from_offsets: Vec<(String, i32, i64)>,
    /// Stop before the first record at or after this time (default: each partition's end now).
    #[arg(long, value_parser = parse_time, conflicts_with = "to_offsets")]
    pub(crate) to_time: Option<i64>,
    /// Stop before these offsets, TOPIC/PARTITION=OFFSET,...
    #[arg(long, value_delimiter = ',', value_parser = parse_partition_offset)]
    pub(crate) to_offsets: Vec<(String, i32, i64)>,
    /// Only this topic of the route (repeat for more).
    #[arg(long = "topic")]
    pub(crate) topics: Vec<String>,
    /// Start it and return its id at once.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

pub(crate) fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    text.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("`{text}` is not a time: write RFC 3339 (2026-12-02T18:00:00Z) or Unix milliseconds"))
}

pub(crate) fn parse_partition_offset(text: &str) -> Result<(String, i32, i64), String> {
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
pub(crate) enum RolloutCommand {
    /// Start a rollout: the first step's weights at once, the rest as the judge passes them.
    ///
    /// Refused, saying what to fix, where it cannot work: a route without a split label or
    /// at-most-once, a cohort the route has not seen, a stable cohort that serves nothing,
    /// another cohort with a share, a rollout already running, or a candidate with no
    /// subscriber on a route that holds (empty_cohort = "hold").
    Start(RolloutStart),
    /// The route's rollout: its steps and phase, each replica's latest look, its history.
    Status {
        /// The route (as `routes` lists them).
        route: String,
    },
    /// Hold the rollout at its step: the weights stay and nothing is judged.
    Pause {
        /// The route.
        route: String,
    },
    /// Go on after a pause; the step's hold starts over.
    Resume {
        /// The route.
        route: String,
    },
    /// Give the candidate 100 % now, judged or not.
    Promote {
        /// The route.
        route: String,
    },
    /// Give the stable cohort 100 % now; what the candidate nacked is redelivered to it.
    Abort {
        /// The route.
        route: String,
    },
}

impl RolloutCommand {
    /// The route the command is about.
    pub(crate) fn route(&self) -> &str {
        match self {
            RolloutCommand::Start(start) => &start.route,
            RolloutCommand::Status { route }
            | RolloutCommand::Pause { route }
            | RolloutCommand::Resume { route }
            | RolloutCommand::Promote { route }
            | RolloutCommand::Abort { route } => route,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RolloutStart {
    /// The route whose weights move.
    pub(crate) route: String,
    /// The cohort serving the route now (a value of its split label).
    #[arg(long)]
    pub(crate) stable: String,
    /// The cohort rolled out.
    #[arg(long)]
    pub(crate) candidate: String,
    /// The candidate's share at each step, increasing: PERCENT or PERCENT:HOLD (10,50 or
    /// 10:2m,50:10m); past the last step it is promoted to 100 %.
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_step)]
    pub(crate) steps: Vec<(u32, Option<std::time::Duration>)>,
    /// How long each step is held at least (500ms, 30s, 5m, 1h), where --steps gives none.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub(crate) hold: std::time::Duration,
    /// Deliveries the candidate settles in a step before it may go on.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) min_deliveries: u64,
    /// How much higher the candidate's failure rate may be, absolute (default 0.02).
    #[arg(long, value_name = "RATE")]
    pub(crate) failure_rate_tolerance: Option<f64>,
    /// How much slower its acks may be, relative (default 0.25: a quarter).
    #[arg(long, value_name = "SHARE")]
    pub(crate) latency_tolerance: Option<f64>,
    /// And absolute, on top (default 10 ms).
    #[arg(long, value_name = "MS")]
    pub(crate) latency_allowance_ms: Option<f64>,
    /// Settled deliveries each cohort needs in a step before the candidate may pass it
    /// (default 200).
    #[arg(long, value_name = "N")]
    pub(crate) judge_min_deliveries: Option<u64>,
    /// How often each replica looks at the step (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) look_every: Option<std::time::Duration>,
}

/// `30s`, `5m`, `1h`, `500ms` (or plain seconds).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration: write 500ms, 30s, 5m or 1h");
    let (number, unit) = t.find(|c: char| !c.is_ascii_digit()).map_or((t, "s"), |i| t.split_at(i));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// `PERCENT` or `PERCENT:HOLD`.
pub(crate) fn parse_step(text: &str) -> Result<(u32, Option<std::time::Duration>), String> {
    let (weight, hold) = match text.split_once(':') {
        Some((w, h)) => (w, Some(parse_duration(h)?)),
        None => (text, None),
    };
    let weight = weight
        .trim()
        .trim_end_matches('%')
        .parse::<u32>()
        .map_err(|_| format!("`{text}` is not a step: write PERCENT or PERCENT:HOLD (e.g. 10 or 10:5m)"))?;
    Ok((weight, hold))
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
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

pub(crate) fn parse_letter(text: &str) -> Result<(i32, i64), String> {
    let bad = || format!("`{text}` is not PARTITION:OFFSET (e.g. 0:42, as `fanoutctl dlq list` shows)");
    let (p, o) = text.split_once(':').ok_or_else(bad)?;
    Ok((p.trim().parse().map_err(|_| bad())?, o.trim().parse().map_err(|_| bad())?))
}

#[derive(Debug, Subcommand)]
pub(crate) enum WeightsCommand {
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

#[derive(Debug, Subcommand)]
pub(crate) enum RateLimitCommand {
    /// Limit how fast a route delivers, on every replica (each replica enforces it on its own
    /// deliveries).
    ///
    /// Messages beyond the limit wait in the gateway, and the route's partitions pause at its
    /// bound as for a slow subscriber (the rest waits in Kafka). Replaces the whole limit:
    /// fields left out are not limited.
    Set {
        /// The route to limit.
        route: String,
        /// Deliveries per second, redeliveries included.
        #[arg(long, value_name = "N")]
        messages_per_s: Option<u64>,
        /// Bytes per second (key, value and headers of each delivery).
        #[arg(long, value_name = "N")]
        bytes_per_s: Option<u64>,
        /// Deliveries that may go at once after a quiet spell (needs --messages-per-s);
        /// default a tenth of a second's worth.
        #[arg(long, value_name = "N")]
        burst: Option<u64>,
    },
    /// Remove a route's rate limit on every replica.
    Clear {
        /// The route.
        route: String,
    },
    /// A route's rate limit on each replica, and how long it has held messages back there.
    Get {
        /// The route (as `routes` lists them).
        route: String,
    },
}

pub(crate) fn parse_weight(text: &str) -> Result<(String, u32), String> {
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
    fn steps_and_durations_parse_or_say_what_to_write() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 minutes").expect_err("bad").contains("500ms, 30s, 5m or 1h"));
        assert_eq!(parse_step("10"), Ok((10, None)));
        assert_eq!(parse_step("50%:2h"), Ok((50, Some(Duration::from_secs(7_200)))));
        assert!(parse_step("ten").expect_err("bad").contains("PERCENT or PERCENT:HOLD"));
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
