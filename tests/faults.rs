//! The fault suite: one gateway on librdkafka's mock cluster while the mock injects faults
//! mid-stream — request errors on Fetch, OffsetCommit, Produce, JoinGroup/Heartbeat, a broker
//! down and up (a partition leader, then the group coordinator), and leader changes.
//!
//! Every test runs the same way: 50 000 small keyed messages are produced while the gateway
//! consumes (never far ahead, so the mock's retention never drops any), three subscribers with
//! known windows ack out of order, the fault is injected once part of the stream is acked and
//! production is still going, and at the end every produced message must have been acked, the
//! group's committed offsets must reach the high watermarks, and the messages delivered twice
//! must fit in the subscribers' windows times the fault moments that can cause redelivery.
//! Each test prints its measured duplicates.
//!
//! A fault moment can cause redelivery only if the gateway could lose its partitions there: a
//! forced rejoin, a commit answered REBALANCE_IN_PROGRESS, the coordinator away. Fetch, produce
//! and leader faults leave ownership alone and the gateway drops records it has already seen,
//! so those tests allow no duplicate at all.

#[path = "support/faults.rs"]
mod faults_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::gateway::GatewayHandle;
use fanout_gateway::stats::Stats;
use faults_support::{commit_gap, kafka_debug_from_env, missing, wait_blocking, Feed, Pace};
use parking_lot::Mutex;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MESSAGES: usize = 50_000;
const PARTITIONS: i32 = 8;
const KEYS: usize = 1_000;
/// The subscribers' windows: at most this many deliveries are out at once per subscriber,
/// so at most their sum can be in flight when a fault strikes.
const WINDOWS: [u32; 3] = [50, 100, 150];
/// Acked messages before the first fault: well into the stream, well before its end.
const FAULT_AT: usize = 15_000;
/// A second fault moment, for the faults injected twice.
const SECOND_FAULT_AT: usize = 30_000;
/// Whole-test bound: a hang fails instead of blocking CI.
const TEST_LIMIT: Duration = Duration::from_secs(150);

type Cluster = MockCluster<'static, DefaultProducerContext>;

fn window_sum() -> usize {
    WINDOWS.iter().map(|w| *w as usize).sum()
}

/// `brokers` lead the partitions round robin (partition p on `brokers[p % len]`), so a test
/// knows which partitions a broker fault touches.
fn pin_leaders(cluster: &Cluster, brokers: &[i32]) {
    for p in 0..PARTITIONS {
        let broker = brokers[p as usize % brokers.len()];
        cluster.partition_leader(TOPIC, p, Some(broker)).expect("set partition leader");
    }
}

/// One gateway, its subscribers and the feed, from start to the end-of-run checks.
struct Run {
    name: &'static str,
    bootstrap: String,
    group: String,
    gateway: GatewayHandle,
    recorder: Arc<Mutex<Recorder>>,
    feed: Feed,
    stop: watch::Sender<bool>,
    subscribers: Vec<JoinHandle<()>>,
    /// Acked count at each fault moment, for the report.
    moments: Vec<usize>,
}

/// What a run measured, for the per-fault assertions.
struct Outcome {
    commit_failures: u64,
    rebalances: u64,
    kafka_errors: u64,
}

impl Run {
    async fn start(cluster: &Cluster, name: &'static str) -> Self {
        Self::start_in(cluster, name, unique_group(name)).await
    }

    async fn start_in(cluster: &Cluster, name: &'static str, group: String) -> Self {
        Self::start_paced(cluster, name, group, None).await
    }

    /// A run whose feed produces `rate` messages a second after the first 10 000 (None: as
    /// fast as acks allow).
    async fn start_paced(cluster: &Cluster, name: &'static str, group: String, rate: Option<u32>) -> Self {
        let bootstrap = cluster.bootstrap_servers();
        let mut config = config(&bootstrap, &group);
        let props = &mut config.kafka.properties;
        // The mock broker answers an empty fetch only after fetch.wait.max.ms: keep it short so
        // the stream, not the broker's wait, sets the pace.
        props.insert("fetch.wait.max.ms".into(), "20".into());
        // Reconnect quickly once a broker is back up.
        props.insert("reconnect.backoff.ms".into(), "100".into());
        props.insert("reconnect.backoff.max.ms".into(), "1000".into());
        kafka_debug_from_env(props);
        let gateway = start_gateway(config).await;
        let (_endpoint_tx, endpoint) = watch::channel(gateway.endpoint());
        let (stop, stop_rx) = watch::channel(false);
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let subscribers = WINDOWS
            .iter()
            .enumerate()
            .map(|(i, &window)| {
                tokio::spawn(subscriber(
                    Script { name: format!("{name}-sub-{i}"), window, drop_after: None },
                    endpoint.clone(),
                    recorder.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        let acked = recorder.clone();
        let feed = Feed::start(&bootstrap, KEYS, Pace { total: MESSAGES, ahead: 10_000, rate }, move || {
            acked.lock().acked.len()
        });
        Self { name, bootstrap, group, gateway, recorder, feed, stop, subscribers, moments: Vec::new() }
    }

    fn acked(&self) -> usize {
        self.recorder.lock().acked.len()
    }

    async fn until_acked(&self, n: usize) {
        eventually(Duration::from_secs(60), &format!("{n} messages acked"), || self.acked() >= n).await;
    }

    /// Marks a fault moment: called right before injecting. Checks the fault lands mid-stream.
    fn fault_moment(&mut self) {
        let acked = self.acked();
        let produced = self.feed.produced.load(std::sync::atomic::Ordering::Relaxed);
        assert!(acked > 0 && acked < MESSAGES, "fault injected mid-stream ({acked} acked)");
        assert!(produced < MESSAGES, "production still going at the fault ({produced} produced)");
        self.moments.push(acked);
    }

    /// Waits `outage` (a fault in force); returns how many messages were acked and how many
    /// records the gateway received from Kafka meanwhile.
    async fn during(&self, outage: Duration) -> (usize, u64) {
        let stats = self.gateway.stats();
        let (acked, received) = (self.acked(), Stats::get(&stats.received));
        tokio::time::sleep(outage).await;
        (self.acked() - acked, Stats::get(&stats.received) - received)
    }

    /// Lets the run finish and checks: nothing lost, everything committed, duplicates within
    /// `redelivery_moments` windows' worth.
    async fn finish(self, redelivery_moments: usize) -> Outcome {
        let Run { name, bootstrap, group, gateway, recorder, feed, stop, subscribers, moments } = self;
        let produced = feed.finish().await;
        assert_eq!(produced.len(), MESSAGES, "the feed produced everything");

        let all_acked = {
            let recorder = recorder.clone();
            let produced = produced.clone();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if produced.iter().all(|id| recorder.lock().acked.contains(id)) {
                    break true;
                }
                if tokio::time::Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let stats = gateway.stats();
        if !all_acked {
            let r = recorder.lock();
            panic!(
                "{name}: {} of {MESSAGES} produced messages never acked (lost), e.g. {:?}; stats: {}",
                produced.iter().filter(|id| !r.acked.contains(*id)).count(),
                missing(&produced, &r.acked),
                summary(&stats),
            );
        }

        let committed = {
            let (b, g) = (bootstrap.clone(), group.clone());
            wait_blocking(Duration::from_secs(30), Duration::from_millis(300), move || {
                fully_committed(&b, &g, PARTITIONS)
            })
            .await
        };
        if !committed {
            let (b, g) = (bootstrap.clone(), group.clone());
            let gap = tokio::task::spawn_blocking(move || commit_gap(&b, &g, PARTITIONS)).await.expect("gap");
            panic!("{name}: committed offsets never reached the high watermarks: {gap}; stats: {}", summary(&stats));
        }

        let _ = stop.send(true);
        for s in subscribers {
            let _ = s.await;
        }
        let outcome = {
            let r = recorder.lock();
            let duplicates = r.duplicates();
            let bound = window_sum() * redelivery_moments;
            figure(format!(
                "{name}: produced {MESSAGES}, acked all, duplicates {} (bound {bound} = windows {} x {redelivery_moments} \
                 redelivery moments), faults at acked {moments:?}; {}",
                duplicates.len(),
                window_sum(),
                summary(&stats),
            ));
            assert!(
                duplicates.len() <= bound,
                "{name}: {} duplicates exceed the in-flight windows at the faults ({} x {redelivery_moments} = {bound}); \
                 e.g. {:?}; {}",
                duplicates.len(),
                window_sum(),
                &duplicates[..duplicates.len().min(10)],
                summary(&stats),
            );
            Outcome {
                commit_failures: Stats::get(&stats.commit_failures),
                rebalances: Stats::get(&stats.rebalances),
                kafka_errors: Stats::get(&stats.kafka_errors),
            }
        };
        gateway.shutdown().await;
        outcome
    }
}

fn summary(stats: &Stats) -> String {
    format!(
        "received {}, delivered {}, redelivered {}, stale {}, commits {}, commit failures {}, rebalances {}, \
         kafka errors {}, sessions closed {}",
        Stats::get(&stats.received),
        Stats::get(&stats.delivered),
        Stats::get(&stats.redelivered),
        Stats::get(&stats.stale_records),
        Stats::get(&stats.commits),
        Stats::get(&stats.commit_failures),
        Stats::get(&stats.rebalances),
        Stats::get(&stats.kafka_errors),
        Stats::get(&stats.sessions_closed),
    )
}

/// Runs a test body under the suite's overall time limit.
async fn within(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, body).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_errors_lose_nothing() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    within(async {
        let mut run = Run::start(&cluster, "fetch-errors").await;
        use RDKafkaRespErr::*;
        for at in [FAULT_AT, SECOND_FAULT_AT] {
            run.until_acked(at).await;
            run.fault_moment();
            cluster.request_errors(
                RDKafkaApiKey::Fetch,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                    RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                ],
            );
        }
        // A failed fetch is retried from the consumer's fetch position and the gateway drops
        // records it has already seen: no ownership changes, so nothing can be redelivered.
        run.finish(0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_errors_lose_nothing_and_commits_catch_up() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    within(async {
        let mut run = Run::start(&cluster, "commit-errors").await;
        use RDKafkaRespErr::*;
        for at in [FAULT_AT, SECOND_FAULT_AT] {
            run.until_acked(at).await;
            run.fault_moment();
            cluster.request_errors(
                RDKafkaApiKey::OffsetCommit,
                &[
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                    RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                    RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
                ],
            );
        }
        // A failed commit only delays the commit point; the gateway keeps its partitions (a
        // REBALANCE_IN_PROGRESS answer may make it rejoin, each such rejoin a moment).
        let outcome = run.finish(2).await;
        assert!(outcome.commit_failures > 0, "the injected OffsetCommit errors reached the gateway");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_errors_at_the_end_of_the_stream_are_retried() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    within(async {
        let mut run = Run::start(&cluster, "last-commit-errors").await;
        use RDKafkaRespErr::*;
        // Everything is produced and the tail is being acked: the commits that fail now are the
        // last ones the stream moves, and nothing comes later to carry their offsets.
        eventually(Duration::from_secs(60), "all produced, the tail being acked", || {
            run.feed.produced.load(std::sync::atomic::Ordering::Relaxed) == MESSAGES && run.acked() >= MESSAGES - 3_000
        })
        .await;
        run.moments.push(run.acked());
        // More errors than commits the tail needs: some are left when the acks stop, and only a
        // commit that is retried after a failure consumes them and gets through.
        let errors: Vec<RDKafkaRespErr> =
            [RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE]
                .into_iter()
                .cycle()
                .take(30)
                .collect();
        cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
        let outcome = run.finish(0).await;
        assert!(outcome.commit_failures > 0, "the injected OffsetCommit errors reached the gateway");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_errors_on_the_feed_lose_nothing() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    within(async {
        let mut run = Run::start(&cluster, "produce-errors").await;
        use RDKafkaRespErr::*;
        for at in [FAULT_AT, SECOND_FAULT_AT] {
            run.until_acked(at).await;
            run.fault_moment();
            // Retriable for an idempotent producer: the test's feed retries them and the
            // gateway must still see every message exactly once.
            cluster.request_errors(
                RDKafkaApiKey::Produce,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                    RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                ],
            );
        }
        // Nothing changes on the consuming side.
        run.finish(0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_join_and_heartbeat_errors_force_a_rejoin_without_loss() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    within(async {
        let mut run = Run::start(&cluster, "group-errors").await;
        use RDKafkaRespErr::*;
        run.until_acked(FAULT_AT).await;
        run.fault_moment();
        let before = Stats::get(&run.gateway.stats().rebalances);
        // The rejoin the heartbeat error forces meets these first.
        cluster.request_errors(
            RDKafkaApiKey::JoinGroup,
            &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE],
        );
        cluster.request_errors(RDKafkaApiKey::Heartbeat, &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS]);
        run.until_acked(SECOND_FAULT_AT).await;
        run.fault_moment();
        cluster.request_errors(
            RDKafkaApiKey::Heartbeat,
            &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
        );
        // Each forced rejoin is a moment where the gateway could lose its partitions.
        let outcome = run.finish(2).await;
        figure(format!("group-errors: rebalances before the faults {before}, after {}", outcome.rebalances));
        // The initial join was done before the faults: a JoinGroup error means a rejoin.
        assert!(outcome.kafka_errors > 0, "the forced rejoin met the injected JoinGroup errors");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_leader_down_and_up_loses_nothing() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let group = unique_group("leader-down");
    // Broker 2 leads partitions 1, 4 and 7; the group's coordinator is elsewhere.
    pin_leaders(&cluster, &[1, 2, 3]);
    cluster.coordinator(MockCoordinator::Group(group.clone()), 1).expect("set coordinator");
    within(async {
        let mut run = Run::start_in(&cluster, "leader-down", group).await;
        run.until_acked(FAULT_AT).await;
        run.fault_moment();
        let admin = run.gateway.admin_addr();
        let (ready, _) = poll_until(Duration::from_secs(10), || http_get(admin, "/readyz"), |(c, _)| *c == 200).await;
        assert_eq!(ready, 200, "the gateway is ready before the fault");
        cluster.broker_down(2).expect("broker 2 down");
        let readiness = tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..25 {
                answers.push(http_get(admin, "/readyz").await.0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        });
        let (acked, received) = run.during(Duration::from_secs(3)).await;
        let readiness = readiness.await.expect("readiness probe");
        cluster.broker_up(2).expect("broker 2 up");
        figure(format!(
            "leader-down: while broker 2 was down the gateway received {received} records, {acked} were acked; /readyz said {readiness:?}"
        ));
        assert!(received > 0, "the partitions led by brokers 1 and 3 kept flowing while broker 2 was down");
        // One broker of three is not Kafka: the replica stays in its Service.
        assert!(readiness.iter().all(|code| *code == 200), "/readyz stayed 200 with one broker down: {readiness:?}");
        // The coordinator stayed up: the gateway kept its partitions, nothing to redeliver.
        let outcome = run.finish(0).await;
        assert!(outcome.kafka_errors > 0, "the gateway's client saw the broker go away");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_coordinator_down_and_up_loses_nothing() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let group = unique_group("coordinator-down");
    // Broker 3 coordinates the group and leads nothing: the fault is the coordinator alone.
    pin_leaders(&cluster, &[1, 2]);
    cluster.coordinator(MockCoordinator::Group(group.clone()), 3).expect("set coordinator");
    within(async {
        // A steady 4 000 messages a second: the gateway keeps up, so what it receives in a
        // second is what was produced, fault or not, unless something stops it.
        let mut run = Run::start_paced(&cluster, "coordinator-down", group, Some(4_000)).await;
        run.until_acked(FAULT_AT).await;
        // What a second brings with the coordinator up, to compare the outage with.
        let (_, received_before) = run.during(Duration::from_secs(1)).await;
        run.fault_moment();
        // Shorter than session.timeout.ms (6 s): the member survives; commits wait meanwhile.
        cluster.broker_down(3).expect("broker 3 down");
        let (acked, received) = run.during(Duration::from_secs(1)).await;
        cluster.broker_up(3).expect("broker 3 up");
        figure(format!(
            "coordinator-down: in the second before the outage the gateway received {received_before} records; in \
             the second the coordinator was down {received}, and {acked} were acked"
        ));
        // Commits go out without waiting: a commit the coordinator cannot answer never stops
        // the consumer thread (a synchronous one held it for the whole outage: a tenth of the
        // records of the second before, measured).
        assert!(
            received * 3 >= received_before,
            "records kept coming while commits waited for the coordinator: {received} in the outage against \
             {received_before} in the second before"
        );
        // A coordinator away is a moment the membership could end.
        let outcome = run.finish(1).await;
        assert!(outcome.kafka_errors > 0, "the gateway's client saw the coordinator go away");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_changes_lose_nothing() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    pin_leaders(&cluster, &[1, 2, 3]);
    within(async {
        let mut run = Run::start(&cluster, "leader-change").await;
        // Move the leadership of five partitions, then move it again.
        for (at, shift) in [(FAULT_AT, 1), (SECOND_FAULT_AT, 2)] {
            run.until_acked(at).await;
            run.fault_moment();
            for p in 0..5 {
                let broker = (p + shift) % 3 + 1;
                cluster.partition_leader(TOPIC, p, Some(broker)).expect("move leader");
            }
        }
        // The consumer follows the leader from its fetch position; ownership never changes.
        run.finish(0).await;
    })
    .await;
}
