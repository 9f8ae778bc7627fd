//! Scale-out as deployed: three `serve` replicas (one consumer group per route, each replica
//! owning some partitions) against a `dev-kafka` process, and subscribers that reach every
//! replica through the subscriber library: the `fanout-tools subscribe` process with the
//! replicas' addresses, and the library in this process following a DNS name whose answer the
//! test changes (a resolver override). Replicas are killed, and restarted one by one as a
//! rolling deploy does, under a running subscriber.

#[path = "support/processes.rs"]
mod processes;
mod support;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::{Delivery, Nack, Replicas, Resolver, Subscriber};
use parking_lot::Mutex;
use processes::*;
use support::{committed, figure, high_watermarks, produce, tools_bin, ROUTE, TOPIC};

const PARTITIONS: i32 = 12;

/// One scenario at a time: each runs five processes, and the duplicate bound is about commit
/// timing, which two scenarios sharing two cores would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const COMMIT_INTERVAL_MS: u64 = 200;

/// Replica `n`'s settings, config file and process.
struct Replica {
    settings: GatewaySettings,
    config: PathBuf,
    gateway: Gateway,
}

/// Starts `count` replicas of one gateway (same group, own ports and instance ids).
fn start_replicas(dir: &Path, bootstrap: &str, prefix: &str, count: u32) -> Vec<Replica> {
    let base = GatewaySettings { commit_interval_ms: COMMIT_INTERVAL_MS, ..GatewaySettings::new(bootstrap, prefix) };
    (0..count)
        .map(|n| {
            let settings = base.replica(n);
            let config = settings.write(dir);
            let gateway = Gateway::start(&config, dir.join(format!("serve-{n}.log")));
            Replica { settings, config, gateway }
        })
        .collect()
}

fn all_committed(bootstrap: &str, group: &str) -> bool {
    let (committed, ends) = (committed(bootstrap, group, PARTITIONS), high_watermarks(bootstrap, PARTITIONS));
    ends.iter().all(|(p, end)| committed.get(p).copied().unwrap_or(0) == *end)
}

/// A `fanout-tools subscribe` process (the subscriber library) printing every delivery it
/// handles, and a line per second, to a file.
struct SubscriberProcess {
    process: Process,
    stdout: PathBuf,
}

impl SubscriberProcess {
    fn start(dir: &Path, name: &str, endpoints: &[String], args: &[&str]) -> Self {
        let stdout = dir.join(format!("{name}.out"));
        let mut command = Command::new(tools_bin());
        command
            .args(["subscribe", "--route", ROUTE, "--name", name, "--verbose", "--gateway"])
            .arg(endpoints.join(","))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"));
        let process = Process::spawn("subscribe", &mut command, dir.join(format!("{name}.log")));
        Self { process, stdout }
    }

    fn output(&self) -> SubscriberOutput {
        SubscriberOutput::parse(&std::fs::read_to_string(&self.stdout).unwrap_or_default())
    }

    /// Mid-stream: waits (up to 120 s) until `handled` deliveries are handled and the last
    /// progress line shows a stream to each of the three replicas.
    async fn wait_mid_stream(&mut self, handled: usize) {
        let by = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.output();
            if out.handled.len() >= handled && out.progress.last().is_some_and(|(_, s)| *s == 3) {
                return;
            }
            assert!(Instant::now() < by, "{handled} handled with 3 streams within 120 s: {:?}", out.progress.last());
            self.process.assert_running();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a subscriber process printed.
#[derive(Debug, Default)]
struct SubscriberOutput {
    /// Every delivery handled (and so acked), in order, as `topic/partition/offset`.
    handled: Vec<String>,
    /// The line per second: (acked so far, streams open).
    progress: Vec<(u64, u64)>,
    /// The closing `subscribe: ...` line's counts.
    summary: HashMap<String, u64>,
}

impl SubscriberOutput {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("subscribe: ") {
                out.summary = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
            } else if let Some(rest) = line.strip_prefix("acked ") {
                // "acked N deliveries (K streams open)"
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let (Some(acked), Some(streams)) = (words.first(), words.get(2)) {
                    let streams = streams.trim_start_matches('(');
                    if let (Ok(a), Ok(s)) = (acked.parse(), streams.parse()) {
                        out.progress.push((a, s));
                    }
                }
            } else if let Some((id, rest)) = line.split_once(' ') {
                if rest.starts_with("attempt=") && id.starts_with(&format!("{TOPIC}/")) {
                    out.handled.push(id.to_string());
                }
            }
        }
        out
    }

    fn unique(&self) -> HashSet<&String> {
        self.handled.iter().collect()
    }

    fn duplicates(&self) -> usize {
        self.handled.len() - self.unique().len()
    }
}

/// Everything produced, handled at least once.
fn assert_none_lost(ids: &[String], handled: &HashSet<&String>) {
    let lost: Vec<&String> = ids.iter().filter(|id| !handled.contains(id)).collect();
    assert!(lost.is_empty(), "{} produced messages never handled, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
}

/// A deployment: `dev-kafka` (or a real broker) with `messages` produced (ids returned), three
/// replicas.
struct Deployment {
    /// The mock cluster's process; None on a real broker.
    _dev_kafka: Option<DevKafka>,
    bootstrap: String,
    ids: Vec<String>,
    replicas: Vec<Replica>,
    endpoints: Vec<String>,
}

impl Deployment {
    async fn start(dir: &Path, prefix: &str, messages: usize, keys: usize) -> Self {
        let kafka = DevKafka::start(dir, &[(TOPIC, PARTITIONS)]).await;
        let bootstrap = kafka.bootstrap.clone();
        Self::on(Some(kafka), bootstrap, dir, prefix, messages, keys).await
    }

    /// The deployment on the brokers at `bootstrap`, whose `TOPIC` has `PARTITIONS` partitions.
    async fn on(
        dev_kafka: Option<DevKafka>,
        bootstrap: String,
        dir: &Path,
        prefix: &str,
        messages: usize,
        keys: usize,
    ) -> Self {
        let ids = produce(&bootstrap, messages, keys).await;
        let replicas = start_replicas(dir, &bootstrap, prefix, 3);
        let endpoints = replicas.iter().map(|r| r.settings.endpoint()).collect();
        Self { _dev_kafka: dev_kafka, bootstrap, ids, replicas, endpoints }
    }

    /// Waits (up to `limit`, every replica running) until the route's group committed every
    /// partition to its high watermark.
    async fn settled(&mut self, limit: Duration) {
        let (bootstrap, group) = (self.bootstrap.clone(), self.replicas[0].settings.route_group());
        let mut gateways: Vec<&mut Gateway> = self.replicas.iter_mut().map(|r| &mut r.gateway).collect();
        wait_until(limit, "committed offsets at the high watermarks", &mut gateways, || {
            all_committed(&bootstrap, &group)
        })
        .await;
    }

    /// Once everything is committed, stops the subscriber with SIGTERM: it drains and exits 0.
    async fn settle_and_stop(&mut self, sub: &mut SubscriberProcess, limit: Duration) {
        self.settled(limit).await;
        sub.process.sigterm();
        let status = sub.process.wait_exit(Duration::from_secs(30)).await.expect("the subscriber exits after SIGTERM");
        assert!(status.success(), "the subscriber drains and exits 0: {status:?}");
    }
}

/// How long acks may stay flat before it counts as a stop. A rebalance that stops the world
/// on this broker lasts about five seconds (join, sync and the session's pause), so a stop of
/// three is one; one or two flat lines are the machine's own hiccups (a loaded two-core CI
/// runner starves a process for a second now and then), not the gateway's.
const STOP_SECS: usize = 3;

/// The stretches of `STOP_SECS` progress lines (one a second) across which acks did not rise
/// while some of the `messages` were still to come.
fn stalls(progress: &[(u64, u64)], messages: usize) -> Vec<Vec<(u64, u64)>> {
    progress
        .windows(STOP_SECS + 1)
        .filter(|w| w[STOP_SECS].0 < messages as u64 && w[STOP_SECS].0 <= w[0].0)
        .map(<[(u64, u64)]>::to_vec)
        .collect()
}

#[test]
fn a_stop_is_three_flat_seconds_not_one() {
    let hiccup = [(100, 3), (200, 3), (200, 3), (300, 3), (400, 3)];
    assert!(stalls(&hiccup, 1_000).is_empty(), "one flat second is no stop");
    let stop = [(100, 3), (200, 3), (200, 3), (200, 3), (200, 3), (300, 3)];
    assert_eq!(stalls(&stop, 1_000).len(), 1, "three flat seconds are one stop");
    assert!(stalls(&stop, 200).is_empty(), "flat once every message is acked is the end, not a stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_library_subscriber_every_message_acked_and_committed() {
    const MESSAGES: usize = 100_000;
    let _serial = SERIAL.lock().await;
    let dir = scratch();
    let run = async {
        let mut deployment = Deployment::start(dir.path(), "scale", MESSAGES, 1_000).await;
        let mut sub = SubscriberProcess::start(
            dir.path(),
            "scale-0",
            &deployment.endpoints,
            &["--max-in-flight", "500", "--concurrency", "64"],
        );
        let started = Instant::now();
        deployment.settle_and_stop(&mut sub, Duration::from_secs(300)).await;
        let took = started.elapsed();
        let Deployment { ids, replicas, .. } = &deployment;

        let out = sub.output();
        let most_streams = out.progress.iter().map(|(_, s)| *s).max().unwrap_or(0);
        figure(format!(
            "scale-out: replicas=3 partitions={PARTITIONS} messages={MESSAGES} handled={} duplicates={} streams={most_streams} \
             took={took:?} summary={:?}",
            out.handled.len(),
            out.duplicates(),
            out.summary
        ));
        assert_none_lost(ids, &out.unique());
        assert_eq!(most_streams, 3, "one stream per replica: {:?}", out.progress);
        // Whichever replica owned a partition, its messages reached the subscriber: each
        // replica delivered a share.
        let mut shares = Vec::new();
        for r in replicas {
            let (_, samples) = support::scrape(SocketAddr::from(([127, 0, 0, 1], r.settings.admin_port))).await;
            let delivered: f64 =
                samples.iter().filter(|(series, _)| series.starts_with("fanout_delivered_total")).map(|(_, v)| v).sum();
            shares.push(delivered as u64);
        }
        figure(format!("scale-out: delivered per replica {shares:?}"));
        assert!(shares.iter().all(|d| *d > 0), "every replica delivered: {shares:?}");
        assert!(shares.iter().sum::<u64>() >= MESSAGES as u64, "{shares:?}");
        assert!(out.summary.get("acked").copied().unwrap_or(0) >= MESSAGES as u64, "{:?}", out.summary);
    };
    tokio::time::timeout(Duration::from_secs(420), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_and_replaced_never_stops_the_other_streams() {
    let _serial = SERIAL.lock().await;
    let dir = scratch();
    let run = async {
        let deployment = Deployment::start(dir.path(), "scale-kill", KILL_MESSAGES, 1_000).await;
        killed_and_replaced(deployment, dir.path(), "mock cluster").await;
    };
    tokio::time::timeout(Duration::from_secs(420), run).await.expect("in time");
}

/// The same kill -9 on Apache Kafka: the static member's partitions wait for its replacement
/// (5 s later, within the 6 s session), which takes them back without a rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_replica_killed_and_replaced_never_stops_the_other_streams() {
    let _serial = SERIAL.lock().await;
    let Some(kafka) = support::real_kafka::RealKafka::shared() else { return };
    kafka_topic(&kafka).await;
    let dir = scratch();
    let run = async {
        let bootstrap = kafka.bootstrap_servers().to_string();
        let deployment = Deployment::on(None, bootstrap, dir.path(), "kafka-kill", KILL_MESSAGES, 1_000).await;
        killed_and_replaced(deployment, dir.path(), "Kafka").await;
    };
    tokio::time::timeout(Duration::from_secs(420), run).await.expect("in time");
}

const KILL_MESSAGES: usize = 60_000;

/// `TOPIC` on this binary's real broker, made by the first test that needs it (the next one's
/// route group reads the records already there too).
async fn kafka_topic(kafka: &support::real_kafka::RealKafka) {
    static MADE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MADE.get_or_init(|| kafka.create_topic(TOPIC, PARTITIONS, &[])).await;
}
/// The subscriber's window in the kill test: at most this many deliveries were out on the
/// killed replica's stream.
const WINDOW: u64 = 200;

/// Kills one of `deployment`'s replicas with SIGKILL mid-stream and starts its replacement 5 s
/// later; checks that nothing was lost, the other replicas kept their partitions and streams,
/// acks never stopped, and the duplicates fit the killed stream's window plus two commit
/// intervals of acks.
async fn killed_and_replaced(mut deployment: Deployment, dir: &Path, on: &str) {
    // Handlers of 5 ms, 16 at once: a few thousand a second, so the backlog outlasts the
    // kill, the session timeout and the replacement.
    let window = WINDOW.to_string();
    let mut sub = SubscriberProcess::start(
        dir,
        "scale-kill-0",
        &deployment.endpoints,
        &["--max-in-flight", &window, "--concurrency", "16", "--handle-ms", "5"],
    );
    sub.wait_mid_stream(KILL_MESSAGES / 6).await;
    let victim = deployment.replicas.remove(1);
    let (settings, config) = (victim.settings.clone(), victim.config.clone());
    let victim_port = settings.port;
    let sub_log = dir.join("scale-kill-0.log");
    let log_lines_before_kill = std::fs::read_to_string(&sub_log).unwrap_or_default().lines().count();
    // What the replicas that stay logged before the kill (their start-up joins may have moved
    // partitions among them: three replicas joining a real broker a moment apart rebalance).
    let lines_of = |n: u32| std::fs::read_to_string(dir.join(format!("serve-{n}.log"))).unwrap_or_default();
    let stayed_before: Vec<usize> = [0, 2].iter().map(|n| lines_of(*n).lines().count()).collect();
    drop(victim); // SIGKILL: the guard kills and reaps it
    let killed_at_line = sub.output().progress.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let gateway = Gateway::start(&config, dir.join("serve-1-replacement.log"));
    deployment.replicas.push(Replica { settings, config, gateway });

    deployment.settle_and_stop(&mut sub, Duration::from_secs(300)).await;
    let out = sub.output();
    assert_none_lost(&deployment.ids, &out.unique());
    // Throughout: from the kill until the backlog was done, acks rose every second, so the
    // streams of the replicas that stayed never stopped.
    let after_kill: Vec<(u64, u64)> = out.progress[killed_at_line.saturating_sub(1)..].to_vec();
    let stalls = stalls(&after_kill, KILL_MESSAGES);
    assert!(stalls.is_empty(), "acks stopped for {STOP_SECS} s after the kill: {stalls:?} in {after_kill:?}");
    // What kept them going: the replicas that stayed kept their partitions (static
    // membership holds the killed one's until its replacement takes them) and their streams.
    for (n, before) in [0, 2].into_iter().zip(stayed_before) {
        let log: Vec<String> = lines_of(n).lines().skip(before).map(str::to_string).collect();
        assert!(
            !log.iter().any(|l| l.contains("partitions revoked")),
            "replica {n} kept its partitions through the kill:\n{}",
            log.join("\n")
        );
    }
    let victim = format!("replica=127.0.0.1:{}", victim_port);
    let sub_log = std::fs::read_to_string(&sub_log).unwrap_or_default();
    let lost: Vec<&str> = sub_log.lines().skip(log_lines_before_kill).filter(|l| l.contains("stream lost")).collect();
    assert!(!lost.is_empty(), "the killed replica's stream was lost");
    assert!(
        lost.iter().all(|l| l.contains(&victim)),
        "only the killed replica's stream was lost ({victim}):\n{}",
        lost.join("\n")
    );
    assert!(after_kill.iter().any(|(_, s)| *s == 2), "the killed replica's stream went: {after_kill:?}");
    assert_eq!(after_kill.last().map(|(_, s)| *s), Some(3), "the replacement got a stream: {after_kill:?}");
    // What a crash may redeliver: the killed stream's window, plus what was acked of the
    // killed replica's partitions and not yet committed (one commit interval, and one more for
    // the commit's round trip) at its share of the fastest rate the subscriber acked: one
    // replica of three, owning a third of the partitions. (Commits made every 3 s instead of
    // every 200 ms exceed it.)
    let peak_rate = out.progress.windows(2).map(|w| w[1].0.saturating_sub(w[0].0)).max().unwrap_or(0);
    let bound = WINDOW + peak_rate * 2 * COMMIT_INTERVAL_MS / 1_000 / 3;
    let duplicates = out.duplicates() as u64;
    figure(format!(
        "scale-out sigkill on {on}: messages={KILL_MESSAGES} handled={} lost=0 duplicates={duplicates} bound={bound} \
         (window {WINDOW} + a third of peak {peak_rate}/s x 2 x {COMMIT_INTERVAL_MS} ms) reconnects={:?} progress_after_kill={after_kill:?}",
        out.handled.len(),
        out.summary.get("reconnects"),
    ));
    assert!(
        duplicates <= bound,
        "duplicates {duplicates} exceed window + two commit intervals of the victim's acks ({bound})"
    );
    assert!(out.summary.get("reconnects").copied().unwrap_or(0) >= 1, "the killed stream was retried");
}

/// Whether the replica whose admin port this is answers `/readyz` with 200.
async fn ready(admin_port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return false;
    }
    support::http_get(addr, "/readyz").await.0 == 200
}

/// The gateway's own rolling deploy, as Kubernetes does it: once every replica is ready, the
/// next gets SIGTERM (no new deliveries, in-flight acked within the grace, acks committed,
/// streams end with UNAVAILABLE) and is replaced by a pod with the same instance id.
///
/// Duplicates are printed, not bounded: the mock's group coordinator refuses offset commits
/// while it rebalances (Kafka accepts them while a rebalance is being prepared) and does not
/// hand a static member's partitions straight to its successor, so here each restart runs a
/// few rebalances and a partition that moves during one redelivers what was acked since its
/// last accepted commit. On Kafka, see the next test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_the_replicas_loses_nothing_and_never_stops_the_subscriber() {
    let _serial = SERIAL.lock().await;
    let dir = scratch();
    let run = async {
        let deployment = Deployment::start(dir.path(), "scale-roll", ROLL_MESSAGES, 1_000).await;
        rolling_restart(deployment, dir.path(), "mock cluster").await
    };
    tokio::time::timeout(Duration::from_secs(420), run).await.expect("in time");
}

/// The same roll on Apache Kafka, where the README's promise is about: each stopping replica
/// commits what its subscriber acked before it leaves, and as a static member it gets its own
/// partitions back when it returns, without a rebalance, so nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_rolling_restart_of_the_replicas_redelivers_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(kafka) = support::real_kafka::RealKafka::shared() else { return };
    kafka_topic(&kafka).await;
    let dir = scratch();
    let run = async {
        let bootstrap = kafka.bootstrap_servers().to_string();
        let deployment = Deployment::on(None, bootstrap, dir.path(), "kafka-roll", ROLL_MESSAGES, 1_000).await;
        let duplicates = rolling_restart(deployment, dir.path(), "Kafka").await;
        assert_eq!(duplicates, 0, "a rolling restart with prompt subscribers redelivers nothing on Kafka");
    };
    tokio::time::timeout(Duration::from_secs(420), run).await.expect("in time");
}

/// Messages of a rolling-restart run: handlers of 5 ms, 8 at once (about 1 400 a second), so the
/// backlog outlasts the whole roll by some 20 s. On the mock cluster the last restart's
/// rebalances leave a few partitions unowned for 5 s up to 10 s after it; with a backlog that
/// ended there, only those partitions would still hold messages and acks would stop for the
/// test's want of messages, not for the roll.
const ROLL_MESSAGES: usize = 90_000;

/// Rolls `deployment`'s replicas one by one under a subscriber process and checks that nothing
/// was lost, every replica stopped gracefully within its grace and acks never stopped; the
/// duplicates, printed under `on`.
async fn rolling_restart(mut deployment: Deployment, dir: &Path, on: &str) -> usize {
    // Handlers of 5 ms, 8 at once: the backlog outlasts the whole roll.
    let mut sub = SubscriberProcess::start(
        dir,
        "scale-roll-0",
        &deployment.endpoints,
        &["--max-in-flight", "200", "--concurrency", "8", "--handle-ms", "5"],
    );
    sub.wait_mid_stream(ROLL_MESSAGES / 10).await;
    let replicas = &mut deployment.replicas;

    let roll_from = sub.output().progress.len();
    let mut stops = Vec::new();
    for n in 0..replicas.len() {
        // As the StatefulSet's rolling update does: the next replica goes only once every
        // replica is ready (Kafka answers and the route's group has settled).
        let by = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for r in replicas.iter() {
                all &= ready(r.settings.admin_port).await;
            }
            if all {
                break;
            }
            assert!(Instant::now() < by, "every replica ready within 60 s before replica {n} goes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let signalled = Instant::now();
        replicas[n].gateway.sigterm();
        let status = replicas[n].gateway.wait_exit(Duration::from_secs(30)).await;
        let status = status.unwrap_or_else(|| panic!("replica {n} exits within 30 s of SIGTERM"));
        assert!(status.success(), "replica {n} exits 0 on SIGTERM: {status:?}");
        stops.push(signalled.elapsed());
        let line = sub.output().progress.len();
        let log = dir.join(format!("serve-{n}-restarted.log"));
        replicas[n].gateway = Gateway::start(&replicas[n].config, log);
        // The next replica goes only once the subscriber streams from this one again.
        let by = Instant::now() + Duration::from_secs(60);
        loop {
            let out = sub.output();
            if out.progress.get(line..).is_some_and(|after| after.iter().any(|(_, s)| *s == 3)) {
                break;
            }
            assert!(Instant::now() < by, "replica {n}'s replacement streams within 60 s: {:?}", out.progress.last());
            sub.process.assert_running();
            replicas[n].gateway.assert_running();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    deployment.settle_and_stop(&mut sub, Duration::from_secs(300)).await;
    let out = sub.output();
    assert_none_lost(&deployment.ids, &out.unique());
    let during: Vec<(u64, u64)> = out.progress[roll_from.saturating_sub(1)..].to_vec();
    let stalls = stalls(&during, ROLL_MESSAGES);
    let duplicates = out.duplicates();
    figure(format!(
        "scale-out rolling restart on {on}: messages={ROLL_MESSAGES} handled={} lost=0 duplicates={duplicates} \
         replica_stops={stops:?} reconnects={:?} progress_during_roll={during:?}",
        out.handled.len(),
        out.summary.get("reconnects"),
    ));
    // Each stopping replica's in-flight deliveries were acked within the grace, not left
    // to its successor.
    for n in 0..deployment.replicas.len() {
        let log = std::fs::read_to_string(dir.join(format!("serve-{n}.log"))).unwrap_or_default();
        assert!(log.contains("shutting down: no new deliveries"), "replica {n} stopped gracefully");
        assert!(!log.contains("grace period over"), "replica {n} abandoned in-flight deliveries:\n{log}");
    }
    assert!(
        stops.iter().all(|took| *took < Duration::from_secs(10)),
        "each replica exited before its 10 s grace ran out (nothing left in flight): {stops:?}"
    );
    assert!(stalls.is_empty(), "acks stopped for {STOP_SECS} s during the roll: {stalls:?} in {during:?}");
    assert!(
        // A stream's gap can fall between two progress lines: count the reopenings instead.
        out.summary.get("reconnects").copied().unwrap_or(0) >= 3,
        "each stopped replica's stream was reopened: {:?}",
        out.summary
    );
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_the_subscriber_and_nothing_it_handled_comes_again() {
    const MESSAGES: usize = 20_000;
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    let _serial = SERIAL.lock().await;
    let dir = scratch();
    let run = async {
        let mut deployment = Deployment::start(dir.path(), "scale-term", MESSAGES, 500).await;
        let endpoints = deployment.endpoints.clone();
        let drain = DRAIN_TIMEOUT.as_secs().to_string();
        let mut leaving = SubscriberProcess::start(
            dir.path(),
            "leaving",
            &endpoints,
            &["--max-in-flight", "50", "--concurrency", "8", "--handle-ms", "20", "--drain-timeout", &drain],
        );
        let by = Instant::now() + Duration::from_secs(120);
        while leaving.output().handled.len() < 2_000 {
            assert!(Instant::now() < by, "2000 handled within 120 s");
            leaving.process.assert_running();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        leaving.process.sigterm();
        let signalled = Instant::now();
        let status = leaving.process.wait_exit(DRAIN_TIMEOUT + Duration::from_secs(5)).await;
        let took = signalled.elapsed();
        let status = status.expect("the subscriber exits within its drain deadline");
        assert!(status.success(), "drained and exited 0: {status:?}");
        let first = leaving.output();
        assert_eq!(
            first.summary.get("abandoned"),
            Some(&0),
            "nothing received was left unhandled: {:?}",
            first.summary
        );
        assert_eq!(
            first.summary.get("acked").copied(),
            Some(first.handled.len() as u64),
            "everything handled was acked: {:?}",
            first.summary
        );

        // The rest goes to the next subscriber; nothing the first one handled comes again.
        let mut next = SubscriberProcess::start(dir.path(), "next", &endpoints, &["--max-in-flight", "500"]);
        deployment.settle_and_stop(&mut next, Duration::from_secs(180)).await;
        let second = next.output();
        let (before, after) = (first.unique(), second.unique());
        let again: Vec<&&String> = after.iter().filter(|id| before.contains(*id)).collect();
        figure(format!(
            "scale-out sigterm: drained in {took:?} handled_before_exit={} handled_after={} redelivered_after_exit={}",
            before.len(),
            after.len(),
            again.len()
        ));
        assert!(
            again.is_empty(),
            "{} handled by the drained subscriber came again, e.g. {:?}",
            again.len(),
            &again[..again.len().min(5)]
        );
        let all: HashSet<&String> = before.union(&after).copied().collect();
        assert_none_lost(&deployment.ids, &all);
    };
    tokio::time::timeout(Duration::from_secs(300), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dns_name_is_followed_as_replicas_join_and_leave_its_answer() {
    const MESSAGES: usize = 20_000;
    let _serial = SERIAL.lock().await;
    let dir = scratch();
    let run = async {
        let mut deployment = Deployment::start(dir.path(), "scale-dns", MESSAGES, 500).await;
        let addresses: Vec<SocketAddr> =
            deployment.replicas.iter().map(|r| SocketAddr::from(([127, 0, 0, 1], r.settings.port))).collect();
        // The name answers with two replicas at first; the third comes later, as a pod that
        // turns up in the headless Service does.
        let answer = Arc::new(Mutex::new(addresses[..2].to_vec()));
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let resolver = Resolver::new({
            let (answer, asked) = (answer.clone(), asked.clone());
            move |name: String| {
                asked.lock().push(name);
                let addresses = answer.lock().clone();
                async move { Ok(addresses) }
            }
        });
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::Dns {
                name: "fanout-gateway-headless.test.svc:50051".into(),
                every: Duration::from_millis(200),
                resolver,
            })
            .name("dns-0")
            .max_in_flight(500)
            .build()
            .expect("valid settings");
        let stats = subscriber.stats();
        let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (handled, count) = (handled.clone(), count.clone());
            move |d: Delivery| {
                handled.lock().insert(fanout_client::stream::id_of(&d));
                count.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), Nack>(()) }
            }
        };
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(subscriber.run(handler, async move {
            let _ = stop.wait_for(|&s| s).await;
        }));

        let streams = |n: u64| {
            let stats = stats.clone();
            async move {
                let by = Instant::now() + Duration::from_secs(60);
                while stats.snapshot().streams != n {
                    assert!(Instant::now() < by, "{n} streams within 60 s: {:?}", stats.snapshot());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        streams(2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stats.snapshot().streams, 2, "only what the name answers");
        answer.lock().push(addresses[2]);
        streams(3).await;

        deployment.settled(Duration::from_secs(180)).await;
        // A replica gone from the answer is drained and dropped; the stream is not retried.
        answer.lock().remove(0);
        streams(2).await;
        let reconnects = stats.snapshot().reconnects;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stats.snapshot().reconnects, reconnects, "a replica that left is not reconnected to");

        let _ = stop_tx.send(true);
        running.await.expect("joins").expect("drains cleanly");
        assert!(asked.lock().iter().all(|n| n == "fanout-gateway-headless.test.svc:50051"), "{:?}", asked.lock());
        let handled = handled.lock();
        assert_none_lost(&deployment.ids, &handled.iter().collect());
        figure(format!(
            "scale-out dns: handled={} deliveries={} stats={:?}",
            handled.len(),
            count.load(Ordering::SeqCst),
            stats.snapshot()
        ));
    };
    tokio::time::timeout(Duration::from_secs(300), run).await.expect("in time");
}
