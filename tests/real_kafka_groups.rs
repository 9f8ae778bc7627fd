//! The routes' consumer groups on a real Apache Kafka broker (one KRaft node, see
//! `support::real_kafka`): a second gateway replica joins a route's group mid-stream and
//! leaves again, under both group protocols, classic (the cooperative-sticky assignor) and
//! KIP-848's `consumer` (the broker assigns). With subscribers that ack promptly nothing is
//! delivered twice: each revoked partition drains, its commit lands, and the next owner starts
//! exactly there, which is what the README promises for a scale-out or a rolling restart.
//! librdkafka's mock coordinator refuses those commits mid-rebalance (`tests/rebalance.rs`);
//! Kafka's does not, so here a refused revoke commit is a failure.

#[path = "support/faults.rs"]
mod faults_support;
#[path = "support/processes.rs"]
mod processes;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::config::{Config, GroupProtocol};
use fanout_gateway::stats::Stats;
use faults_support::{missing, partition_of, stream_to, Feed, Ledger, Pace, Processing};
use parking_lot::Mutex;
use support::real_kafka::RealKafka;
use support::*;
use tokio::sync::watch;

const PARTITIONS: i32 = 8;
/// 10 000 up front, the rest at a steady rate so records keep flowing through both changes
/// of the group.
const MESSAGES: usize = 30_000;
const UP_FRONT: usize = 10_000;
const RATE: u32 = 2_000;
/// Acked messages before B starts.
const B_STARTS_AT: usize = 5_000;
/// Messages B delivers before it leaves.
const B_LEAVES_AFTER: usize = 2_000;
/// Subscriber services; each has one stream to every replica.
const PODS: usize = 2;
/// Every delivery acked within a few tens of milliseconds.
const PROMPT: Processing = Processing { window: 50, slow_every: usize::MAX, slow_for: Duration::ZERO };

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_classic_protocol_a_replica_joining_and_leaving_redelivers_nothing() {
    join_then_leave("classic", GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_kip_848_protocol_a_replica_joining_and_leaving_redelivers_nothing() {
    join_then_leave("kip848", GroupProtocol::Consumer).await;
}

/// The route over `topic` under `protocol`; periodic commits only every 5 s, so the acks of
/// the seconds before a revoke reach Kafka through the revoke's own commit, and a revoke that
/// loses them shows as duplicates.
fn route_config(bootstrap: &str, group: &str, topic: &str, protocol: GroupProtocol) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[topic]);
    c.kafka.group_protocol = protocol;
    c.kafka.commit_interval_ms = 5_000;
    c.kafka.revoke_drain_ms = 3_000;
    c.server.shutdown_grace_ms = 10_000;
    if protocol == GroupProtocol::Classic {
        // Kafka's smallest allowed session: a quick handover (under KIP-848 the broker's
        // group.consumer.* settings decide, see `support::real_kafka`).
        c.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
        c.kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    }
    c.validate().expect("valid config");
    c
}

/// A runs alone, B joins once `B_STARTS_AT` messages are acked, B leaves (a graceful stop)
/// once it has delivered `B_LEAVES_AFTER`; the feed keeps producing throughout.
async fn join_then_leave(name: &str, protocol: GroupProtocol) {
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let bootstrap = kafka.bootstrap_servers().to_string();
    let topic = unique_group(&format!("groups-{name}"));
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let group = unique_group(&format!("real-groups-{name}"));
    let config = route_config(&bootstrap, &group, &topic, protocol);

    let run = async {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let acked = ledger.clone();
        let pace = Pace { total: MESSAGES, ahead: UP_FRONT, rate: Some(RATE) };
        let feed = Feed::start_on(&bootstrap, &topic, 1_000, pace, move || acked.lock().acked.len());

        let a = start_gateway(config.clone()).await;
        let mut streams = Vec::new();
        for pod in 0..PODS {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            streams.push(tokio::spawn(stream_to(format!("pod-{pod}"), "A", a.endpoint(), PROMPT, ledger, stop)));
        }
        eventually(Duration::from_secs(60), "a part of the stream acked through A", || {
            ledger.lock().acked.len() >= B_STARTS_AT
        })
        .await;
        let a_stats = a.stats();
        let b = start_gateway(config.clone()).await;
        for pod in 0..PODS {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            streams.push(tokio::spawn(stream_to(format!("pod-{pod}"), "B", b.endpoint(), PROMPT, ledger, stop)));
        }
        eventually(Duration::from_secs(60), "B delivers a part of the partitions it took over", || {
            ledger.lock().delivered_by.values().filter(|by| by.contains(&"B")).count() >= B_LEAVES_AFTER
        })
        .await;
        let produced_when_b_left = feed.produced.load(std::sync::atomic::Ordering::Relaxed);
        let b_stats = b.stats();
        let taken = ledger.lock().partitions_of("B");
        b.shutdown().await;

        let ids = feed.finish().await;
        assert!(produced_when_b_left < MESSAGES, "B came and went mid-stream ({produced_when_b_left} of {MESSAGES})");
        let everything_acked = || ids.iter().all(|id| ledger.lock().acked.contains(id));
        poll_until(Duration::from_secs(60), || async { everything_acked() }, |done| *done).await;
        {
            let l = ledger.lock();
            let lost: Vec<&String> = missing(&ids, &l.acked);
            assert!(lost.is_empty(), "produced messages never acked (lost), e.g. {lost:?}");
        }
        let kafka_ref = &kafka;
        let behind = poll_until(
            Duration::from_secs(30),
            || async { kafka_ref.uncommitted(&group, &topic, PARTITIONS) },
            Vec::is_empty,
        )
        .await;
        assert!(behind.is_empty(), "commits did not reach the ends: (partition, committed, end) {behind:?}");
        let _ = stop_tx.send(true);
        for s in streams {
            let _ = s.await;
        }

        let duplicates = ledger.lock().duplicates();
        let refused = Stats::get(&a_stats.revoke_commits_refused) + Stats::get(&b_stats.revoke_commits_refused);
        let abandoned: u64 = [&a_stats, &b_stats]
            .iter()
            .map(|s| Stats::get(&s.revoke_abandoned) + Stats::get(&s.shutdown_abandoned))
            .sum();
        let mut taken: Vec<i32> = taken.into_iter().collect();
        taken.sort();
        figure(format!(
            "groups ({name}) on Kafka: produced {MESSAGES}, lost 0; B took partitions {taken:?} and gave them back; \
             duplicates {}; in flight past a drain deadline {abandoned}; revoke commits refused {refused}; \
             A rebalances {}, B received {}",
            duplicates.len(),
            Stats::get(&a_stats.rebalances),
            Stats::get(&b_stats.received),
        ));
        assert!(!taken.is_empty() && taken.len() < PARTITIONS as usize, "B took some partitions, not all: {taken:?}");
        assert_eq!(refused, 0, "Kafka's coordinator takes a revoke's commit");
        assert_eq!(abandoned, 0, "every in-flight delivery was acked within the drain");
        assert!(
            duplicates.is_empty(),
            "{} delivered twice, e.g. {:?} (partitions {:?}): a drained, committed revoke redelivers nothing",
            duplicates.len(),
            &duplicates[..duplicates.len().min(5)],
            duplicates.iter().take(5).map(|id| partition_of(id)).collect::<Vec<_>>()
        );
        a.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time");
}

/// Each delivery's gateway, partition and arrival, from subscribers that ack at once.
type Arrivals = Arc<Mutex<Vec<(&'static str, i32, tokio::time::Instant)>>>;

/// Subscribes to `endpoint` as `gateway` and acks everything, noting when each partition's
/// records arrive, until the stream ends.
async fn note_arrivals(gateway: &'static str, endpoint: String, arrivals: Arrivals, acked: Arc<Mutex<Ledger>>) {
    let mut sub = fanout_client::stream::Subscription::connect(
        &endpoint,
        fanout_client::stream::hello(ROUTE, &gateway.to_lowercase(), 200),
    )
    .await
    .expect("subscribes");
    while let Ok(Some(batch)) = sub.next().await {
        let ids: Vec<String> = batch.iter().map(fanout_client::stream::id_of).collect();
        let now = tokio::time::Instant::now();
        {
            let mut arrived = arrivals.lock();
            for id in &ids {
                arrived.push((gateway, partition_of(id), now));
            }
        }
        acked.lock().acked.extend(ids.iter().cloned());
        if sub.ack(ids).await.is_err() {
            return;
        }
    }
}

/// A static member (`kafka.group_instance_id`, as the StatefulSet sets it) that stops does not
/// leave its group: librdkafka sends no LeaveGroup for it, so Kafka keeps its partitions for it
/// until `session.timeout.ms` passes (a restart within it takes them back without a
/// rebalance). A replica removed for good therefore leaves its partitions unread for that
/// long, and nothing is lost; the README says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_member_that_stops_keeps_its_partitions_until_its_session_ends() {
    const SESSION: Duration = Duration::from_secs(6);
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let bootstrap = kafka.bootstrap_servers().to_string();
    let topic = unique_group("groups-static");
    kafka.create_topic(&topic, 4, &[]).await;
    let group = unique_group("real-groups-static");
    let mut config = route_config(&bootstrap, &group, &topic, GroupProtocol::Classic);
    config.kafka.commit_interval_ms = 200;
    let member = |id: &str| {
        let mut c = config.clone();
        c.kafka.group_instance_id = Some(id.into());
        c
    };

    let run = async {
        let arrivals: Arrivals = Arc::default();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let pace = Pace { total: 24_000, ahead: 2_000, rate: Some(1_000) };
        let acked = ledger.clone();
        let feed = Feed::start_on(&bootstrap, &topic, 100, pace, move || acked.lock().acked.len());
        let a = start_gateway(member("gateway-a")).await;
        tokio::spawn(note_arrivals("A", a.endpoint(), arrivals.clone(), ledger.clone()));
        eventually(Duration::from_secs(60), "A delivers", || !arrivals.lock().is_empty()).await;
        let b = start_gateway(member("gateway-b")).await;
        tokio::spawn(note_arrivals("B", b.endpoint(), arrivals.clone(), ledger.clone()));
        eventually(Duration::from_secs(60), "B delivers", || {
            arrivals.lock().iter().filter(|a| a.0 == "B").count() > 500
        })
        .await;
        let b_partitions: Vec<i32> = {
            let mut p: Vec<i32> = arrivals.lock().iter().filter(|a| a.0 == "B").map(|a| a.1).collect();
            p.sort();
            p.dedup();
            p
        };
        b.shutdown().await;
        let stopped = tokio::time::Instant::now();
        let back_at_a = || {
            arrivals
                .lock()
                .iter()
                .find(|(gw, p, at)| *gw == "A" && *at > stopped && b_partitions.contains(p))
                .map(|a| a.2)
        };
        let taken_over = poll_until(Duration::from_secs(60), || async { back_at_a() }, Option::is_some).await;
        let gap = taken_over.expect("A takes B's partitions over once B's session ends") - stopped;

        let ids = feed.finish().await;
        let everything_acked = || ids.iter().all(|id| ledger.lock().acked.contains(id));
        poll_until(Duration::from_secs(60), || async { everything_acked() }, |done| *done).await;
        let lost = missing(&ids, &ledger.lock().acked).len();
        figure(format!(
            "static member on Kafka: B's partitions {b_partitions:?} unread for {:.1} s after B stopped \
             (session.timeout.ms {} s); lost {lost}",
            gap.as_secs_f64(),
            SESSION.as_secs()
        ));
        assert_eq!(lost, 0, "nothing produced was lost");
        assert!(
            gap >= SESSION - Duration::from_secs(2),
            "B's partitions moved to A {:.1} s after B stopped: a static member leaves no sooner than its \
             session ends (did it send a LeaveGroup?)",
            gap.as_secs_f64()
        );
        a.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
}

/// A `serve` process with one route over `topic` in `group` on the real broker, a 6 s session
/// and quick commits; its config file goes into `dir`.
fn serve_on(
    kafka: &RealKafka,
    dir: &std::path::Path,
    group: &str,
    topic: &str,
    port: u16,
    admin: u16,
) -> processes::Gateway {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace_ms = 5000

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 200

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[[routes]]
name = "{ROUTE}"
topics = ["{topic}"]
"#,
        bootstrap = kafka.bootstrap_servers(),
    );
    let config = dir.join("fanout.toml");
    std::fs::write(&config, text).expect("config written");
    processes::Gateway::start(&config, dir.join("serve.log"))
}

/// Sends `signal` (STOP, CONT) to the process.
fn signal(process: &processes::Process, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), process.child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// A gateway frozen for longer than its session (a stopped VM, a pause of the whole process)
/// comes back to find that its group has taken its partitions away: librdkafka reports them
/// lost, not revoked. Nothing of theirs can be committed any more (the coordinator refuses a
/// member it no longer knows), so the gateway commits nothing, counts the loss apart from
/// refused revoke commits, says so, rejoins and delivers on from the last commit: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_frozen_past_its_session_finds_its_partitions_lost_and_goes_on() {
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let bootstrap = kafka.bootstrap_servers().to_string();
    let topic = unique_group("groups-frozen");
    kafka.create_topic(&topic, 4, &[]).await;
    let group = unique_group("real-groups-frozen");
    let dir = processes::scratch();
    let (port, admin) = (free_port(), free_port());
    let mut gateway = serve_on(&kafka, dir.path(), &group, &topic, port, admin);
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("address");

    let run = async {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let acked = ledger.clone();
        let pace = Pace { total: 15_000, ahead: 2_000, rate: Some(1_000) };
        let feed = Feed::start_on(&bootstrap, &topic, 100, pace, move || acked.lock().acked.len());
        let endpoint = format!("http://127.0.0.1:{port}");
        let stream = tokio::spawn(stream_to("pod-0".into(), "A", endpoint, PROMPT, ledger.clone(), stop));
        eventually(Duration::from_secs(60), "the gateway delivers", || ledger.lock().acked.len() > 2_000).await;

        signal(&gateway, "STOP");
        tokio::time::sleep(Duration::from_secs(10)).await;
        signal(&gateway, "CONT");

        let ids = feed.finish().await;
        let everything_acked = || ids.iter().all(|id| ledger.lock().acked.contains(id));
        poll_until(Duration::from_secs(90), || async { everything_acked() }, |done| *done).await;
        let lost = missing(&ids, &ledger.lock().acked).len();
        gateway.assert_running();
        let (_, samples) = scrape(admin_addr).await;
        let counter = |name: &str| samples.get(name).copied().unwrap_or(-1.0);
        let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
        figure(format!(
            "frozen gateway on Kafka: 10 s stopped (session 6 s); lost {lost}; duplicates {}; assignments lost {}; \
             revoke commits refused {}; commit failures {}",
            ledger.lock().duplicates().len(),
            counter("fanout_assignments_lost_total"),
            counter("fanout_revoke_commits_refused_total"),
            counter("fanout_commit_failures_total"),
        ));
        assert_eq!(lost, 0, "nothing produced was lost");
        assert_eq!(counter("fanout_revoke_commits_refused_total"), 0.0, "a lost partition is not a refused revoke");
        assert!(counter("fanout_assignments_lost_total") >= 1.0, "the loss is counted");
        assert!(log.contains("partitions lost"), "the loss is said in the log");
        assert!(!log.contains("commit on revoke failed"), "nothing is committed for partitions the group took away");
        let _ = stop_tx.send(true);
        let _ = stream.await;
    };
    tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time");
}

/// Two replicas given the same `group.instance.id` (a copied StatefulSet, a pod name reused by
/// hand): Kafka's coordinator fences the older member once the newer one joins, and librdkafka
/// makes that fatal. The fenced replica can read and commit nothing more, so it fails liveness,
/// naming the group, the id and the setting to check, and Kubernetes restarts it; the newer
/// replica reads the route. The mock shows it with an injected error
/// (`tests/observability.rs`); here Kafka's own coordinator fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_fenced_by_another_with_its_instance_id_fails_liveness_and_the_other_reads_on() {
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let bootstrap = kafka.bootstrap_servers().to_string();
    let topic = unique_group("groups-fenced");
    kafka.create_topic(&topic, 2, &[]).await;
    let group = unique_group("real-groups-fenced");
    let mut config = route_config(&bootstrap, &group, &topic, GroupProtocol::Classic);
    config.kafka.commit_interval_ms = 200;
    config.kafka.group_instance_id = Some("replica-0".into());
    let route_group = config.routes[0].group(&config.kafka);

    let run = async {
        let a = start_gateway(config.clone()).await;
        let ready = |admin| async move { http_get(admin, "/readyz").await.0 };
        poll_until(Duration::from_secs(60), || ready(a.admin_addr()), |code| *code == 200).await;
        assert_eq!(http_get(a.admin_addr(), "/healthz").await.0, 200, "A alive before");

        let b = start_gateway(config.clone()).await;
        let joined = tokio::time::Instant::now();
        let (code, body) =
            poll_until(Duration::from_secs(60), || http_get(a.admin_addr(), "/healthz"), |(c, _)| *c != 200).await;
        let fenced_after = joined.elapsed();
        assert_eq!(code, 503, "A, fenced, can do nothing more and must restart: {body}");
        assert!(body.contains(&route_group), "names the route's group: {body}");
        assert!(
            body.contains("group.instance.id") && body.contains("kafka.group_instance_id"),
            "says what to check: {body}"
        );

        // B holds the member id now and reads the route.
        let ids: std::collections::HashSet<String> =
            produce_to(&bootstrap, &topic, 500, 10).await.into_iter().collect();
        let mut sub =
            fanout_client::stream::Subscription::connect(&b.endpoint(), fanout_client::stream::hello(ROUTE, "b", 500))
                .await
                .expect("subscribes to B");
        let mut got = std::collections::HashSet::new();
        while !ids.iter().all(|id| got.contains(id)) {
            let batch: Vec<String> = next_batch(&mut sub).await.iter().map(fanout_client::stream::id_of).collect();
            sub.ack(batch.clone()).await.expect("acks sent");
            got.extend(batch);
        }
        let b_health = http_get(b.admin_addr(), "/healthz").await.0;
        figure(format!(
            "fenced static member on Kafka: A's /healthz {code} {:.1} s after B joined with its instance id ({}); \
             B delivered {} of {}, B's /healthz {b_health}",
            fenced_after.as_secs_f64(),
            body.trim(),
            got.len(),
            ids.len()
        ));
        assert_eq!(b_health, 200, "B, the member Kafka kept, is alive");
        drop(sub);
        b.shutdown().await;
        a.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
}
