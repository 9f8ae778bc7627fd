//! The embedded demo: librdkafka's mock cluster in-process, a producer, the gateway on a real
//! loopback gRPC port and subscribers over real gRPC, all in one process, no external service.
//!
//! It reports what a user checks first: everything produced was acked (or dead-lettered) and
//! committed, nothing was lost, and how many deliveries were duplicates.
//!
//! The demo gateway is set up so that every operator command has something to act on from a
//! second terminal: an admin token ([`DEMO_TOKEN`], public, so the admin API must stay on
//! loopback), a dead-letter topic ([`DEMO_DLQ_TOPIC`]) that every [`POISON_EVERY`]th message
//! ends in, and a split by `track` with the demo's own subscribers in cohort `stable`, so a
//! `track=canary` subscriber can be attached and weighted in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use fanout_client::{Delivery, Nack, Replicas, Subscriber};
use fanout_gateway::admin::dead_letters::HEADER_REDRIVEN_FROM;
use fanout_gateway::config::{Config, RouteConfig};
use fanout_gateway::gateway;
use fanout_gateway::stats::Stats;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long to produce; then the demo waits for everything to settle and reports.
    pub duration: Duration,
    /// The demo's own subscribers (cohort `stable`), named `demo-subscriber-N`.
    pub subscribers: usize,
    /// Messages produced per second.
    pub rate: u32,
    /// Partitions of the demo topic: the most subscribers that get a share each.
    pub partitions: i32,
    /// gRPC address of the gateway (fixed so a second terminal can attach).
    pub listen: String,
    /// Admin API address (fixed so `fanoutctl` in a second terminal can operate the demo). It
    /// must be a loopback address: the demo's admin token is public.
    pub admin_listen: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            subscribers: 3,
            rate: 2_000,
            partitions: 8,
            listen: "127.0.0.1:50051".into(),
            admin_listen: "127.0.0.1:9090".into(),
        }
    }
}

pub const DEMO_TOPIC: &str = "demo-events";
pub const DEMO_ROUTE: &str = "demo";
pub const DEMO_GROUP: &str = "fanout-demo";
/// The demo route's dead-letter topic, created in the mock cluster with the demo topic.
pub const DEMO_DLQ_TOPIC: &str = "demo-events.dlq";
/// The demo gateway's admin token (`fanoutctl --token demo-token`). Fixed and documented so a
/// second terminal can operate the demo without looking anything up; since anyone can read
/// it here, the demo refuses an admin address other than loopback.
pub const DEMO_TOKEN: &str = "demo-token";
/// The label whose values name the demo route's cohorts.
pub const SPLIT_LABEL: &str = "track";
/// The cohort of the demo's own subscribers, with all of the weight at start.
pub const STABLE: &str = "stable";
/// The cohort the banner suggests attaching and weighting in (`weights set demo stable=90 canary=10`).
pub const CANARY: &str = "canary";
/// One message in this many is poison: the demo's handler dead-letters it, so `dlq list` has
/// letters to show and `dlq redrive` something to do. Rare enough that the run stays about
/// acks; often enough that a few seconds make a letter. A prime, not 1000: keys are `seq mod
/// 500`, and every 1000th message would always have the same key, so one subscriber (say, a
/// canary that acks everything) would get all the poison.
pub const POISON_EVERY: u64 = 997;
/// What a poison message's value carries (its `kind`), for the handler to recognise.
const POISON_MARK: &str = r#""kind":"poison""#;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Start(#[from] gateway::StartError),
    #[error(
        "--admin-listen {0} is not a loopback address: the demo's admin token ({DEMO_TOKEN}) is public, so its \
         admin API listens on 127.0.0.1, ::1 or localhost only"
    )]
    AdminNotLoopback(String),
    #[error("cannot write the demo's admin token file: {0}")]
    TokenFile(#[source] std::io::Error),
    #[error("the rollout did not start: {0}")]
    Rollout(String),
}

/// The demo's result: one line that scripts read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoReport {
    pub produced: u64,
    /// Deliveries sent to subscribers, redeliveries and an operator's replays included.
    pub delivered: u64,
    /// Messages acked, which moves the group's commit point (letters an operator redrove back
    /// into the topic included; acks of a replay's deliveries move nothing and are not counted).
    pub acked: u64,
    /// Messages the subscribers gave up on (poison), now in the dead-letter topic: settled, so
    /// their offsets are committed and they are not lost. With no operator at work,
    /// `acked + dead_lettered = produced`; a replay's poison is dead-lettered, and counted, again.
    pub dead_lettered: u64,
    /// Produced messages below the group's committed offsets. Counted message by message
    /// (not as the sum of the offsets), so records an operator redrove into the topic are not
    /// taken for the demo's: `committed + lost = produced` always.
    pub committed: u64,
    /// Produced messages at or above the group's committed offsets when the demo ended.
    pub lost: u64,
    /// Deliveries after the first of the same message (attempt > 1).
    pub duplicates: u64,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo: produced={} delivered={} acked={} dead_lettered={} committed={} lost={} duplicates={}",
            self.produced, self.delivered, self.acked, self.dead_lettered, self.committed, self.lost, self.duplicates
        )
    }
}

/// Runs the demo; `live` receives, once the gateway is up, the commands that attach to it
/// ([`attach_commands`]), then one status line per second. Ends after `duration` or when
/// `stop` turns true (Ctrl-C), then waits for every produced message to be acked (or
/// dead-lettered) and committed before it reports.
pub async fn run(
    options: DemoOptions,
    mut stop: watch::Receiver<bool>,
    live: impl Fn(&str),
) -> Result<DemoReport, DemoError> {
    if !is_loopback(&options.admin_listen) {
        return Err(DemoError::AdminNotLoopback(options.admin_listen.clone()));
    }
    // Lives until the demo returns, after the gateway stopped reading it.
    let token = TokenFile::create(DEMO_TOKEN).map_err(DemoError::TokenFile)?;
    let cluster = MockCluster::new(3)?;
    cluster.create_topic(DEMO_TOPIC, options.partitions, 3)?;
    cluster.create_topic(DEMO_DLQ_TOPIC, 1, 3)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut config = Config::single_route(&bootstrap, DEMO_GROUP, DEMO_ROUTE, &[DEMO_TOPIC]);
    config.server.listen = options.listen.clone();
    config.server.admin_listen = options.admin_listen.clone();
    config.server.admin_token_file = Some(token.path().display().to_string());
    demo_route(&mut config.routes[0]);
    let gw = gateway::start(config).await?;
    let stats = gw.stats();
    info!(endpoint = %gw.endpoint(), "demo gateway up");
    // Whole seconds, rounded down: a replay from this time includes the first message.
    let from_time = jiff::Timestamp::now().as_second();
    let from_time = jiff::Timestamp::from_second(from_time).map_or_else(|_| from_time.to_string(), |t| t.to_string());
    for line in attach_commands(gw.addr(), gw.admin_addr(), &from_time) {
        live(&line);
    }

    let (subs_stop_tx, subs_stop) = watch::channel(false);
    let mut subscribers = Vec::new();
    for i in 0..options.subscribers {
        subscribers.push(tokio::spawn(subscriber(gw.endpoint(), format!("demo-subscriber-{i}"), subs_stop.clone())));
    }

    let mut producer = Produced::new(&bootstrap)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (options.rate / 100).max(1);
    let mut next_live = Duration::from_secs(1);
    let mut seq: u64 = 0;
    while started.elapsed() < options.duration && !*stop.borrow() {
        let waiting = producer.waiting();
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
            _ = producer.next_report(), if waiting => continue,
        }
        for _ in 0..per_tick {
            let key = format!("customer-{}", seq % 500);
            producer.send(DEMO_TOPIC, &key, &demo_value(seq, &key));
            seq += 1;
        }
        if started.elapsed() >= next_live {
            next_live += Duration::from_secs(1);
            live(&live_line(started.elapsed(), producer.count, &stats));
        }
    }
    let (produced, produced_total) = producer.finish().await;
    info!(produced = produced_total, "producing stopped; waiting for acks");

    // Wait for every produced message to be settled (acked or dead-lettered) and committed
    // (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let targets = produced_ends(&produced);
    while Instant::now() < deadline {
        let committed_all =
            targets.iter().all(|(p, end)| stats.committed_of(DEMO_GROUP, DEMO_TOPIC, *p).is_some_and(|c| c >= *end));
        let counters = stats.counters();
        let settled = counters.acked + counters.dead_lettered;
        if settled >= produced_total && committed_all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() >= next_live {
            next_live += Duration::from_secs(1);
            live(&live_line(started.elapsed(), produced_total, &stats));
        }
    }

    let fanout_gateway::stats::Counters { delivered, acked, dead_lettered, redelivered: duplicates, .. } =
        stats.counters();
    // Subscribers drain before the gateway stops, as a deploy would have them.
    let _ = subs_stop_tx.send(true);
    for s in subscribers {
        let _ = s.await;
    }
    gw.shutdown().await;

    // The truth is what the broker holds for the group.
    let committed = committed_offsets(&bootstrap, DEMO_GROUP, DEMO_TOPIC, options.partitions)?;
    let mut report =
        DemoReport { produced: produced_total, delivered, acked, dead_lettered, duplicates, ..DemoReport::default() };
    for (p, offsets) in produced.iter() {
        let c = committed.get(p).copied().unwrap_or(0);
        let lost = offsets.iter().filter(|o| **o >= c).count() as u64;
        report.lost += lost;
        report.committed += offsets.len() as u64 - lost;
    }
    drop(cluster);
    drop(token);
    Ok(report)
}

/// The demo route: split by `track` with all of the weight on `stable` (the demo's own
/// subscribers), so a canary can be attached and weighted in; poison goes to the dead-letter
/// topic instead of being retried forever.
fn demo_route(route: &mut RouteConfig) {
    route.split_label = Some(SPLIT_LABEL.into());
    route.weights = [(STABLE.to_string(), 100)].into_iter().collect();
    route.dead_letter_topic = Some(DEMO_DLQ_TOPIC.into());
}

/// The value of the demo's message `seq`: an order event, or, for every [`POISON_EVERY`]th,
/// a poison one the handler dead-letters.
fn demo_value(seq: u64, key: &str) -> String {
    let kind = if is_poison(seq) { "poison" } else { "order-placed" };
    format!(
        r#"{{"seq":{seq},"customer":"{key}","amount_cents":{},"kind":"{kind}","pad":"........................"}}"#,
        (seq * 7919) % 100_000
    )
}

/// Whether the demo's message `seq` is poison: the last of every [`POISON_EVERY`], so a run
/// shorter than that has none.
pub fn is_poison(seq: u64) -> bool {
    seq % POISON_EVERY == POISON_EVERY - 1
}

/// What the demo's handler answers a delivery with `value`: poison is dead-lettered (a
/// retry could never succeed), unless an operator redrove it back from the dead-letter topic
/// (`redriven`), which the demo takes as "the fix is deployed" and acks, so a redrive visibly
/// drains the letters instead of producing them again.
pub fn verdict(value: Option<&[u8]>, redriven: bool) -> Result<(), Nack> {
    let poison = value.and_then(|v| std::str::from_utf8(v).ok()).is_some_and(|v| v.contains(POISON_MARK));
    if poison && !redriven {
        return Err(Nack::dead_letter(format!(
            "demo: poison message (one in {POISON_EVERY} is); `fanoutctl dlq redrive {DEMO_ROUTE} --all` sends it \
             back and the demo then accepts it"
        )));
    }
    Ok(())
}

/// Whether an operator's redrive put this delivery back on its topic.
fn redriven(delivery: &Delivery) -> bool {
    delivery.headers.iter().any(|h| h.name == HEADER_REDRIVEN_FROM)
}

/// The commands, one a line, that attach to the running demo from a second terminal: a
/// canary subscriber, and `fanoutctl` with the demo's token for each operator command.
/// `listen` and `admin` are the addresses the gateway is bound to (a wildcard address is
/// reached over loopback); `from_time` is when the demo started, for `replay`.
pub fn attach_commands(listen: SocketAddr, admin: SocketAddr, from_time: &str) -> Vec<String> {
    let (listen, admin) = (reachable(listen), reachable(admin));
    let ctl = format!("cargo fanoutctl --gateway {admin} --token {DEMO_TOKEN}");
    let route = DEMO_ROUTE;
    vec![
        format!(
            "gateway on {listen}, admin API on {admin} (admin token {DEMO_TOKEN}, loopback only); try, in another terminal:"
        ),
        format!(
            "  subscriber: cargo tools subscribe --gateway {listen} --route {route} --label {SPLIT_LABEL}={CANARY}"
        ),
        format!("  status:     {ctl} status"),
        format!("  weights:    {ctl} weights set {route} {STABLE}=90 {CANARY}=10"),
        format!("  drain:      {ctl} drain {route} demo-subscriber-0"),
        format!("  replay:     {ctl} replay {route} --from-time {from_time}"),
        format!("  dlq:        {ctl} dlq list {route}"),
        format!("  redrive:    {ctl} dlq redrive {route} --all"),
    ]
}

/// The address to dial for a server bound to `addr`: a wildcard (0.0.0.0, ::) is reached over
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// Whether `addr` (`host:port`) listens on loopback only: a loopback IP, or `localhost`.
fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    addr.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// The demo gateway's admin token in a file (the gateway reads `server.admin_token_file`), in
/// a directory of its own that is removed when this is dropped.
struct TokenFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TokenFile {
    fn create(token: &str) -> std::io::Result<Self> {
        // Demos run one after another in a process (tests) and side by side on a machine.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("fanout-demo-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        // Fails if it exists: never a directory someone else made.
        std::fs::create_dir(&dir)?;
        let file = Self { path: dir.join("admin-token"), dir };
        std::fs::write(&file.path, token)?;
        Ok(file)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The demo's producer and where each message it produced landed. Owned by the producing
/// task; sends are not awaited one by one, their delivery reports are collected as they come.
pub(crate) struct Produced {
    producer: FutureProducer,
    pending: FuturesUnordered<DeliveryFuture>,
    /// Offsets per partition of the messages the broker acknowledged.
    pub offsets: HashMap<i32, Vec<i64>>,
    pub count: u64,
}

impl Produced {
    pub(crate) fn new(bootstrap: &str) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        Ok(Self { producer, pending: FuturesUnordered::new(), offsets: HashMap::new(), count: 0 })
    }

    /// Queues one message; a full local queue skips it (it is then never counted as produced).
    pub(crate) fn send(&mut self, topic: &str, key: &str, value: &str) {
        match self.producer.send_result(FutureRecord::to(topic).key(key).payload(value)) {
            Ok(delivery) => self.pending.push(delivery),
            Err((error, _)) => debug!(%error, "produce queue full; skipping this message"),
        }
    }

    /// Whether delivery reports are outstanding.
    pub(crate) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the next delivery report (pending forever when none is outstanding).
    pub(crate) async fn next_report(&mut self) {
        match self.pending.next().await {
            Some(Ok(Ok(delivery))) => {
                self.offsets.entry(delivery.partition).or_default().push(delivery.offset);
                self.count += 1;
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    /// Waits for every report, flushes and closes the producer.
    pub(crate) async fn finish(mut self) -> (HashMap<i32, Vec<i64>>, u64) {
        while self.waiting() {
            self.next_report().await;
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        (self.offsets, self.count)
    }
}

/// One past the highest produced offset per partition.
fn produced_ends(produced: &HashMap<i32, Vec<i64>>) -> Vec<(i32, i64)> {
    produced.iter().map(|(p, o)| (*p, o.iter().max().map_or(0, |m| m + 1))).collect()
}

fn live_line(elapsed: Duration, produced: u64, stats: &Stats) -> String {
    let counters = stats.counters();
    format!(
        "[{:>3}s] produced={} delivered={} acked={} dead_lettered={} committed={} buffered={} paused={} sessions={}",
        elapsed.as_secs(),
        produced,
        counters.delivered,
        counters.acked,
        counters.dead_lettered,
        stats.committed_sum(),
        counters.buffered,
        counters.paused_partitions,
        counters.sessions,
    )
}

/// The group's committed offsets as the broker holds them.
pub(crate) fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// A well-behaved subscriber of cohort `stable`, built on the subscriber library: a handler
/// that takes a few hundred microseconds, so with 16 at once acks go up out of order as a
/// service's parallel workers would send them, and dead-letters poison ([`verdict`]);
/// reconnects, the drain at the end and an operator's drain are the library's.
async fn subscriber(endpoint: String, name: String, mut stop: watch::Receiver<bool>) {
    let built = Subscriber::builder(DEMO_ROUTE)
        .replicas(Replicas::list([endpoint]))
        .name(name.clone())
        .label(SPLIT_LABEL, STABLE)
        .max_in_flight(200)
        .build();
    let subscriber = match built {
        Ok(subscriber) => subscriber,
        Err(error) => return warn!(%error, name, "demo subscriber not started"),
    };
    let handler = |delivery: Delivery| async move {
        let work = Duration::from_micros(rand::random_range(0..500));
        tokio::time::sleep(work).await;
        verdict(delivery.value.as_deref(), redriven(&delivery))
    };
    let stopped = async move {
        let _ = stop.wait_for(|&stopped| stopped).await;
    };
    if let Err(error) = subscriber.run(handler, stopped).await {
        warn!(%error, name, "demo subscriber ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_client::NackDisposition;

    #[test]
    fn about_one_message_in_a_thousand_is_poison_and_says_so_in_its_value() {
        let poison: Vec<u64> = (0..3_000).filter(|s| is_poison(*s)).collect();
        assert_eq!(poison, vec![996, 1_993, 2_990]);
        let keys: std::collections::HashSet<u64> = (0..100_000).filter(|s| is_poison(*s)).map(|s| s % 500).collect();
        assert!(keys.len() >= 100, "poison falls on many keys, not on one subscriber's: {}", keys.len());
        assert!(demo_value(996, "customer-496").contains(POISON_MARK));
        assert!(!demo_value(998, "customer-498").contains(POISON_MARK));
    }

    #[test]
    fn poison_is_dead_lettered_until_an_operator_redrives_it() {
        let poison = demo_value(996, "customer-496");
        let nack = verdict(Some(poison.as_bytes()), false).expect_err("poison is refused");
        assert_eq!(nack.disposition(), NackDisposition::DeadLetter);
        assert!(nack.reason().contains("dlq redrive demo --all"), "{}", nack.reason());
        assert_eq!(verdict(Some(poison.as_bytes()), true), Ok(()), "a redriven letter is accepted");
        assert_eq!(verdict(Some(demo_value(1, "customer-1").as_bytes()), false), Ok(()));
        assert_eq!(verdict(None, false), Ok(()), "a tombstone is no poison");
        assert_eq!(verdict(Some(&[0xff, 0xfe]), false), Ok(()), "nor is a value that is not UTF-8");
    }

    #[test]
    fn the_banner_attaches_to_the_addresses_the_gateway_is_bound_to() {
        let listen: SocketAddr = "127.0.0.1:50061".parse().expect("address");
        let admin: SocketAddr = "0.0.0.0:9191".parse().expect("address");
        let lines = attach_commands(listen, admin, "2026-12-02T18:00:00Z");
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert!(lines[0].contains("admin token demo-token"), "{}", lines[0]);
        assert_eq!(
            lines[1].trim_start(),
            "subscriber: cargo tools subscribe --gateway 127.0.0.1:50061 --route demo --label track=canary"
        );
        let ctl = "cargo fanoutctl --gateway 127.0.0.1:9191 --token demo-token";
        for (line, command) in lines[2..].iter().zip([
            "status",
            "weights set demo stable=90 canary=10",
            "drain demo demo-subscriber-0",
            "replay demo --from-time 2026-12-02T18:00:00Z",
            "dlq list demo",
            "dlq redrive demo --all",
        ]) {
            assert!(line.ends_with(&format!("{ctl} {command}")), "{line}");
        }
        let v6 = attach_commands("[::]:50051".parse().expect("address"), admin, "0");
        assert!(v6[1].contains("--gateway [::1]:50051"), "{}", v6[1]);
    }

    #[test]
    fn the_admin_api_with_the_public_token_stays_on_loopback() {
        for addr in ["127.0.0.1:9090", "127.0.0.2:0", "[::1]:9090", "localhost:9090", "LOCALHOST:1"] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in ["0.0.0.0:9090", "[::]:9090", "10.0.0.5:9090", "gateway.local:9090", "localhost"] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn the_token_file_holds_the_token_and_goes_with_the_demo() {
        let file = TokenFile::create(DEMO_TOKEN).expect("created");
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::read_to_string(&path).expect("readable"), DEMO_TOKEN);
        let other = TokenFile::create(DEMO_TOKEN).expect("a second demo has its own");
        assert_ne!(other.path(), path);
        drop(file);
        assert!(!path.exists() && other.path().exists());
    }

    #[test]
    fn the_report_counts_dead_letters_as_settled_not_lost() {
        let report = DemoReport {
            produced: 4_000,
            delivered: 4_000,
            acked: 3_996,
            dead_lettered: 4,
            committed: 4_000,
            lost: 0,
            duplicates: 0,
        };
        assert_eq!(
            report.to_string(),
            "demo: produced=4000 delivered=4000 acked=3996 dead_lettered=4 committed=4000 lost=0 duplicates=0"
        );
    }
}
