//! Every page of `docs/runbooks/`, run: each test sets up the situation its page is for on the
//! embedded Kafka cluster, runs the page's fanoutctl steps in order against the gateway's admin
//! port (checking what the page says the operator sees, see `support/runbook.rs`), does the
//! page's kubectl part itself between them, and checks the outcome the page promises.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::admin::ConfigSource;
use fanout_gateway::config::Config;
use fanout_gateway::gateway::{self, GatewayHandle};
use fanout_gateway::proto::Hello;
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::runbook::{self, Runbook};
use support::*;
use tokio::task::JoinHandle;

const TOKEN: &str = "runbook-token";
const DLQ: &str = "orders.dlq";

/// A gateway (or several replicas of one) on a mock cluster, its config in a file with the
/// admin token beside it, as a static-mode deployment has them.
struct Estate {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
    _dir: tempfile::TempDir,
    path: PathBuf,
    replicas: Vec<GatewayHandle>,
}

/// The route `orders` over topic `orders`; `weights` like `blue = 100` lines (empty: no split);
/// `extra` more route settings.
fn config_text(bootstrap: &str, group: &str, token_file: &Path, weights: &str, extra: &str) -> String {
    let split = if weights.is_empty() {
        String::new()
    } else {
        format!("split_label = \"track\"\n{extra}\n[routes.weights]\n{weights}\n")
    };
    let extra = if weights.is_empty() { extra } else { "" };
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{}"
shutdown_grace_ms = 5000

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100
max_uncommitted_per_partition = 50
[kafka.properties]
"statistics.interval.ms" = "200"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
{extra}
{split}"#,
        token_file.display()
    )
}

async fn estate(partitions: i32, weights: &str, extra: &str) -> Estate {
    let cluster = mock_cluster(partitions);
    cluster.create_topic(DLQ, 1, 3).expect("dead-letter topic");
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let path = dir.path().join("fanout.toml");
    let text = config_text(&bootstrap, &unique_group("runbook"), &token_file, weights, extra);
    std::fs::write(&path, text).expect("config");
    let mut estate = Estate { cluster, bootstrap, _dir: dir, path, replicas: Vec::new() };
    estate.add_replica().await;
    estate
}

impl Estate {
    async fn add_replica(&mut self) {
        let config = Config::load(&self.path).expect("the config loads");
        let gw = gateway::start_from(config, None, ConfigSource::File(self.path.clone())).await.expect("starts");
        self.replicas.push(gw);
    }

    fn gateways(&self) -> String {
        self.replicas.iter().map(|g| g.admin_addr().to_string()).collect::<Vec<_>>().join(",")
    }

    fn runbook(&self, page: &str) -> Runbook {
        Runbook::open(page).env("FANOUT_GATEWAY", &self.gateways()).env("FANOUT_ADMIN_TOKEN", TOKEN)
    }

    fn gw(&self) -> &GatewayHandle {
        &self.replicas[0]
    }

    async fn held(&self) -> usize {
        let routes = self.gw().control().routes_status(None).await.expect("status");
        routes.iter().map(|r| r.snapshot.held).sum()
    }

    async fn stop(self) {
        for gw in self.replicas {
            gw.shutdown().await;
        }
        drop(self.cluster);
    }
}

/// What a subscriber pod does with a delivery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ack,
    /// Acks each batch this long after it came.
    Slow(Duration),
    /// Nacks messages whose value says "poison" as dead letters until `fixed` is set.
    Poison,
}

/// A subscriber pod: one stream to one replica, counting what it got.
struct Pod {
    delivered: Arc<AtomicUsize>,
    replayed: Arc<AtomicUsize>,
    /// Poison messages it acked (after the fix).
    poison_acked: Arc<AtomicUsize>,
    fixed: Arc<AtomicBool>,
    fast: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Pod {
    fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pod(gw: &GatewayHandle, name: &str, track: Option<&str>, window: u32, mode: Mode) -> Pod {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: name.into(),
        max_in_flight: window,
        labels: track.map(|t| ("track".to_string(), t.to_string())).into_iter().collect(),
        ..Hello::default()
    };
    let mut sub = Subscription::connect(&gw.endpoint(), hello).await.expect("subscribes");
    let (delivered, replayed, poison_acked): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
        (Arc::default(), Arc::default(), Arc::default());
    let (fixed, fast, ended) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (d, r, p, f, q, e) = (
        Arc::clone(&delivered),
        Arc::clone(&replayed),
        Arc::clone(&poison_acked),
        Arc::clone(&fixed),
        Arc::clone(&fast),
        Arc::clone(&ended),
    );
    let task = tokio::spawn(async move {
        while let Ok(Some(batch)) = sub.next().await {
            d.fetch_add(batch.len(), Ordering::SeqCst);
            r.fetch_add(batch.iter().filter(|x| x.replay_id != 0).count(), Ordering::SeqCst);
            if let Mode::Slow(delay) = mode {
                if !q.load(Ordering::SeqCst) {
                    tokio::time::sleep(delay).await;
                }
            }
            let mut acks = Vec::new();
            for delivery in &batch {
                let poison = delivery.value.as_ref().is_some_and(|v| v.starts_with(b"poison"));
                if mode == Mode::Poison && poison && !f.load(Ordering::SeqCst) {
                    let _ = sub
                        .dead_letter(stream::id_of(delivery), "cannot parse the order: field `amount` missing")
                        .await;
                } else {
                    if poison {
                        p.fetch_add(1, Ordering::SeqCst);
                    }
                    acks.push(stream::id_of(delivery));
                }
            }
            let _ = sub.ack(acks).await;
        }
        e.store(true, Ordering::SeqCst);
    });
    Pod { delivered, replayed, poison_acked, fixed, fast, ended, task }
}

/// Produces `values` (key, value) to `TOPIC`.
async fn produce_values(bootstrap: &str, values: Vec<(String, String)>) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("acks", "all").create().expect("producer");
    for (key, value) in values {
        producer
            .send(FutureRecord::to(TOPIC).key(&key).payload(&value), Duration::from_secs(10))
            .await
            .expect("produced");
    }
}

/// Keeps producing a trickle of keyed messages until aborted.
fn traffic(bootstrap: &str) -> JoinHandle<()> {
    let bootstrap = bootstrap.to_string();
    tokio::spawn(async move {
        loop {
            produce(&bootstrap, 40, 40).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_runbook_reader_matches_as_an_operator_reads() {
    use runbook::*;
    assert!(line_matches("orders  blue=100/[..]  2", "orders blue=100/98%   2"));
    assert!(line_matches("[..] ready", "anything ready"));
    assert!(!line_matches("orders blue=100 2", "orders blue=100 3"));
    assert!(!line_matches("a[..]b[..]c", "a c b"));
    let out = "HEAD\nrow 1\nrow 2\nfooter\n";
    assert!(output_matches(&["HEAD".into(), "row 2".into()], out));
    assert!(!output_matches(&["row 2".into(), "row 1".into()], out), "in order");
    assert_eq!(
        words(r#"fanoutctl replay orders --from-time "$FROM" 'a b'"#),
        ["fanoutctl", "replay", "orders", "--from-time", "$FROM", "a b"]
    );
    let steps =
        parse("text\n```sh\n$ kubectl x\n```\n```console\n$ fanoutctl routes\nA  B\n\n$ fanoutctl status\n```\n");
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].line, steps[0].expected.clone()), (6, vec!["A  B".to_string()]));
    assert!(reads_only(&["dlq".into(), "list".into(), "orders".into()]));
    assert!(!reads_only(&["dlq".into(), "redrive".into(), "orders".into(), "--all".into()]));
}

#[test]
fn every_page_is_indexed_and_has_steps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks");
    let index = std::fs::read_to_string(dir.join("README.md")).expect("index");
    let mut pages = 0;
    for entry in std::fs::read_dir(&dir).expect("runbooks") {
        let name = entry.expect("entry").file_name().to_string_lossy().to_string();
        if name == "README.md" || !name.ends_with(".md") {
            continue;
        }
        pages += 1;
        assert!(index.contains(&format!("({name})")), "docs/runbooks/README.md links {name}");
        let text = std::fs::read_to_string(dir.join(&name)).expect("page");
        assert!(!runbook::parse(&text).is_empty(), "{name} has fanoutctl steps");
        let this_file = include_str!("runbooks.rs");
        assert!(this_file.contains(&format!("\"{name}\"")), "{name} is run by a test here");
    }
    assert_eq!(pages, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_cutover() {
    init_logs();
    let estate = estate(4, "blue = 100\ngreen = 0", "").await;
    let blue = pod(estate.gw(), "orders-blue-0", Some("blue"), 100, Mode::Ack).await;
    let green = pod(estate.gw(), "orders-green-0", Some("green"), 100, Mode::Ack).await;
    let traffic = traffic(&estate.bootstrap);
    eventually(Duration::from_secs(30), "blue gets the traffic", || blue.delivered() > 0).await;
    let mut book = estate.runbook("blue-green-cutover.md");

    book.step("subscribers").await;
    assert_eq!(green.delivered(), 0, "green gets nothing before the cutover");
    book.step("weights set orders blue=0 green=100").await;
    book.step("status").await;
    // Green takes the traffic, blue gets nothing new once what it held settled.
    let at = green.delivered();
    eventually(Duration::from_secs(20), "green takes the deliveries", || green.delivered() > at + 100).await;
    let blue_after = blue.delivered();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(blue.delivered(), blue_after, "blue gets nothing after the cutover");
    book.step("subscribers").await;

    book.step("weights set orders blue=100 green=0").await;
    let at = blue.delivered();
    eventually(Duration::from_secs(20), "the rollback sends to blue again", || blue.delivered() > at + 100).await;
    book.finish();
    traffic.abort();
    estate.stop().await;
}

/// The canary pages' start: route `orders` at stable=100 canary=0, a pod of each cohort
/// subscribed, and traffic the stable pod already gets.
async fn stable_and_canary() -> (Estate, Pod, Pod, JoinHandle<()>) {
    let estate = estate(4, "stable = 100\ncanary = 0", "").await;
    let stable = pod(estate.gw(), "orders-stable-0", Some("stable"), 100, Mode::Ack).await;
    let canary = pod(estate.gw(), "orders-canary-0", Some("canary"), 100, Mode::Ack).await;
    let traffic = traffic(&estate.bootstrap);
    eventually(Duration::from_secs(30), "stable gets the traffic", || stable.delivered() > 0).await;
    (estate, stable, canary, traffic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_ramp() {
    init_logs();
    let (estate, stable, canary, traffic) = stable_and_canary().await;
    let mut book = estate.runbook("canary-ramp.md");

    book.step("subscribers").await;
    assert_eq!(canary.delivered(), 0);
    book.step("stable=90 canary=10").await;
    eventually(Duration::from_secs(20), "the canary gets its share", || canary.delivered() > 20).await;
    book.step("routes").await;
    book.step("subscribers").await;
    book.step("stable=50 canary=50").await;
    book.step("stable=0 canary=100").await;
    let at = stable.delivered();
    eventually(Duration::from_secs(20), "all goes to the canary", || canary.delivered() > at + 100).await;
    book.step("stable=100 canary=0").await;
    let at = stable.delivered();
    eventually(Duration::from_secs(20), "the rollback sends to stable", || stable.delivered() > at + 100).await;
    let canary_after = canary.delivered();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(canary.delivered(), canary_after, "the canary gets nothing after the rollback");
    book.step("routes").await;
    book.step("canary=-5").await;
    book.finish();
    traffic.abort();
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_rollout() {
    init_logs();
    let (estate, stable, canary, traffic) = stable_and_canary().await;
    let mut book = estate.runbook("canary-rollout.md");

    book.step("subscribers").await;
    book.step("--candidate canray").await;
    book.step("rollout start").await;
    eventually(Duration::from_secs(20), "the canary gets its share", || canary.delivered() > 20).await;
    book.step("rollout status").await;
    book.step("rollout pause").await;
    book.step("rollout resume").await;
    book.step("rollout status").await;
    let at = stable.delivered();
    book.step("routes").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(stable.delivered() <= at + 10, "promoted: stable gets (almost) nothing new");
    book.step("rollout abort").await;
    book.finish();
    traffic.abort();
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_a_pod() {
    init_logs();
    let estate = estate(4, "blue = 100", "").await;
    let gone = pod(estate.gw(), "orders-7d9f-abcde", Some("blue"), 50, Mode::Slow(Duration::from_millis(50))).await;
    let stays = pod(estate.gw(), "orders-7d9f-fghij", Some("blue"), 50, Mode::Ack).await;
    let traffic = traffic(&estate.bootstrap);
    eventually(Duration::from_secs(30), "both pods get deliveries", || gone.delivered() > 0 && stays.delivered() > 0)
        .await;
    let mut book = estate.runbook("drain-a-pod.md");

    book.step("subscribers").await;
    book.step("drain orders orders-7d9f-abcde").await;
    eventually(Duration::from_secs(20), "the drained pod's stream ends", || gone.ended.load(Ordering::SeqCst)).await;
    let shown = book.step("subscribers").await;
    assert!(!shown.contains("orders-7d9f-abcde"), "the drained pod is gone: {shown}");
    let at = stays.delivered();
    eventually(Duration::from_secs(20), "the other pod takes the share", || stays.delivered() > at + 100).await;
    book.step("drain orders orders-nope").await;
    book.finish();
    traffic.abort();
    let stats = estate.gw().stats();
    assert_eq!(Stats::get(&stats.expired), 0, "nothing the drained pod held timed out");
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_time_range() {
    init_logs();
    let estate = estate(2, "", "").await;
    let sub = pod(estate.gw(), "orders-0", None, 200, Mode::Ack).await;
    let from = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    produce(&estate.bootstrap, 500, 100).await;
    let to = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    eventually(Duration::from_secs(30), "all delivered", || sub.delivered() >= 500).await;
    let group = estate.gw().control().replica().groups[0].clone();
    eventually(Duration::from_secs(30), "all committed", || fully_committed(&estate.bootstrap, &group, 2)).await;
    let before = committed(&estate.bootstrap, &group, 2);
    let mut book = estate.runbook("replay-time-range.md").var("FROM", &from.to_string()).var("TO", &to.to_string());

    book.step("replay orders").await;
    assert_eq!(sub.replayed.load(Ordering::SeqCst), 500, "the range delivered again, marked as replayed");
    book.step("replays").await;
    book.step("partitions orders").await;
    assert_eq!(committed(&estate.bootstrap, &group, 2), before, "committed offsets did not move");
    book.finish();
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letter_triage() {
    init_logs();
    let extra = format!("dead_letter_topic = \"{DLQ}\"\n[routes.retry]\nmax_attempts = 2\ninitial_backoff_ms = 50");
    let estate = estate(2, "", &extra).await;
    let sub = pod(estate.gw(), "orders-0", None, 100, Mode::Poison).await;
    let mut values: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), format!("order {i}"))).collect();
    values.extend((0..5).map(|i| (format!("p{i}"), format!("poison {i}"))));
    produce_values(&estate.bootstrap, values).await;
    let stats = estate.gw().stats();
    eventually(Duration::from_secs(30), "the poison reaches the dead-letter topic", || {
        Stats::get(&stats.dead_lettered) == 5
    })
    .await;
    let mut book = estate.runbook("dead-letter-triage.md");

    book.step("dlq list orders").await;
    sub.fixed.store(true, Ordering::SeqCst);
    book.step("dlq redrive orders --all").await;
    eventually(Duration::from_secs(30), "each redriven letter is processed", || {
        sub.poison_acked.load(Ordering::SeqCst) >= 5
    })
    .await;
    book.step("dlq list orders").await;
    book.step("dlq redrive orders --all").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sub.poison_acked.load(Ordering::SeqCst), 5, "each letter went back exactly once");
    book.finish();
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_alarm() {
    init_logs();
    let estate = estate(2, "", "").await;
    let slow = pod(estate.gw(), "orders-0", None, 10, Mode::Slow(Duration::from_millis(200))).await;
    produce(&estate.bootstrap, 3_000, 300).await;
    let mut book = estate.runbook("lag-alarm.md");

    book.step("partitions orders").await;
    book.step("subscribers orders").await;
    // kubectl scale: more pods, and the slow one catches up.
    let mut more = Vec::new();
    for i in 1..4 {
        more.push(pod(estate.gw(), &format!("orders-{i}"), None, 100, Mode::Ack).await);
    }
    slow.fast.store(true, Ordering::SeqCst);
    book.step("partitions orders").await;
    let group = estate.gw().control().replica().groups[0].clone();
    assert!(fully_committed(&estate.bootstrap, &group, 2), "the backlog is committed");
    book.finish();
    drop(more);
    estate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_rolling_restart() {
    init_logs();
    let mut estate = estate(2, "", "").await;
    estate.add_replica().await;
    let mut pods = vec![
        pod(&estate.replicas[0], "orders-0", None, 100, Mode::Ack).await,
        pod(&estate.replicas[1], "orders-0", None, 100, Mode::Ack).await,
    ];
    produce(&estate.bootstrap, 500, 100).await;
    let mut book = estate.runbook("gateway-rolling-restart.md");
    book.step("status").await;

    // kubectl rollout restart: one replica at a time, the next once the new one is ready.
    for _ in 0..2 {
        let old = estate.replicas.remove(0);
        old.shutdown().await;
        pods.remove(0);
        estate.add_replica().await;
        let new = estate.replicas.last().expect("new replica");
        pods.push(pod(new, "orders-0", None, 100, Mode::Ack).await);
        let control = new.control();
        wait_for("the new replica is ready", Duration::from_secs(60), async || control.readiness().ready).await;
        produce(&estate.bootstrap, 250, 100).await;
    }
    let mut book = book_with_gateways(book, &estate);
    book.step("status").await;
    book.step("partitions orders").await;
    let group = estate.gw().control().replica().groups[0].clone();
    eventually(Duration::from_secs(30), "every message committed", || fully_committed(&estate.bootstrap, &group, 2))
        .await;
    book.finish();
    estate.stop().await;
}

/// The page's remaining steps against the replicas as they are now (addresses change with a
/// restart here; in Kubernetes the headless Service's name stays).
fn book_with_gateways(book: Runbook, estate: &Estate) -> Runbook {
    book.env("FANOUT_GATEWAY", &estate.gateways())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_that_holds() {
    init_logs();
    let estate = estate(2, "blue = 50\ngreen = 50", "").await;
    let blue = pod(estate.gw(), "orders-blue-0", Some("blue"), 100, Mode::Ack).await;
    produce(&estate.bootstrap, 400, 200).await;
    wait_for("green's share is held", Duration::from_secs(30), async || estate.held().await > 0).await;
    let mut book = estate.runbook("route-that-holds.md");

    book.step("routes").await;
    book.step("subscribers").await;
    book.step("weights get orders").await;
    book.step("weights set orders blue=100 green=0").await;
    book.step("routes").await;
    assert_eq!(estate.held().await, 0);
    eventually(Duration::from_secs(20), "blue got every message", || blue.delivered() >= 400).await;
    book.finish();
    estate.stop().await;
}
