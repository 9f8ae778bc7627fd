//! Broker faults on a real three-node Apache Kafka cluster (KRaft, every node broker and
//! controller, replication factor 3, `min.insync.replicas=2`; see `support::real_kafka`),
//! killed and restarted under load while retries go through the retry topic and poison goes to
//! the dead-letter topic:
//! - the leader of the routed partitions: nothing produced is lost, deliveries resume, and
//!   every dead letter lands in the dead-letter topic exactly once, as an independent client
//!   reads it;
//! - the route group's coordinator, on a node that leads none of the route's partitions:
//!   nothing is lost, deliveries resume, and the asynchronous commits that cannot land while
//!   the coordinator moves catch up, to each partition's end as Kafka reports it.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, RetryPolicy};
use fanout_gateway::gateway::GatewayHandle;
use fanout_gateway::stats::Stats;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use support::real_kafka::RealKafka;
use support::*;

const FAULT_TOPIC: &str = "faults";
const RETRY_TOPIC: &str = "faults.retry";
const DLQ: &str = "faults.dlq";
const PARTITIONS: i32 = 4;
/// Kafka's topic of committed offsets; the leader of one of its partitions is a group's
/// coordinator.
const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// `offsets.topic.num.partitions` in the cluster's server.properties (`support::real_kafka`).
const OFFSETS_TOPIC_PARTITIONS: i32 = 4;
/// The subscriber's window: deliveries it may hold unacked.
const WINDOW: u32 = 500;
/// One scenario at a time: each runs a three-node cluster (three JVMs) under load, and two on
/// two cores at once would time the faults by the machine, not by Kafka.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Messages produced over the run, about a thousand a second.
const MESSAGES: usize = 12_000;
/// Every 50th message is poison (nacked at every attempt, then dead-lettered), every 25th
/// of the rest fails once (nacked, retried through the retry topic, then acked).
fn kind(i: usize) -> &'static str {
    if i % 50 == 7 {
        "poison"
    } else if i % 25 == 3 {
        "flaky"
    } else {
        "ok"
    }
}

fn route(bootstrap: &str, group: &str) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[FAULT_TOPIC]);
    c.kafka.commit_interval_ms = 100;
    c.server.shutdown_grace_ms = 10_000;
    // librdkafka's default session (45 s), as in production: a coordinator that moves with
    // its dead broker (Kafka notices a dead broker after broker.session.timeout.ms, 9 s) does
    // not cost the gateway its membership.
    let route = &mut c.routes[0];
    route.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 200,
        max_backoff_ms: 1_000,
        retry_topic: Some(RETRY_TOPIC.into()),
    };
    route.dead_letter_topic = Some(DLQ.into());
    c.validate().expect("valid config");
    c
}

/// Produces `MESSAGES` values `KIND-i` at about a thousand a second (idempotent, acks=all:
/// librdkafka retries through a leader change); the values the cluster acknowledged, and how
/// many it acknowledged in each second since `started`.
async fn produce_under_faults(bootstrap: String, started: Instant) -> (Vec<String>, Vec<usize>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sends = Vec::with_capacity(MESSAGES);
    let pacing = Instant::now();
    for i in 0..MESSAGES {
        let value = format!("{}-{i}", kind(i));
        let key = format!("key-{}", i % 500);
        let producer = producer.clone();
        sends.push(tokio::spawn(async move {
            producer
                .send(FutureRecord::to(FAULT_TOPIC).key(&key).payload(&value), Duration::from_secs(120))
                .await
                .map(|_| (value, started.elapsed().as_secs() as usize))
                .map_err(|(e, _)| e)
        }));
        if i % 100 == 99 {
            let due = Duration::from_millis(i as u64 + 1);
            tokio::time::sleep(due.saturating_sub(pacing.elapsed())).await;
        }
    }
    let mut produced = Vec::with_capacity(MESSAGES);
    let mut per_second = Vec::new();
    for send in sends {
        let (value, second) =
            send.await.expect("send task").unwrap_or_else(|e| panic!("the cluster refused a record: {e}"));
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
        produced.push(value);
    }
    (produced, per_second)
}

/// What the subscriber did, by message value (retries come back from the retry topic under
/// other ids, so values identify messages).
#[derive(Default)]
struct Seen {
    acked: HashSet<String>,
    deliveries: HashMap<String, u32>,
    /// Deliveries per second of the run, to see that they resumed after the kill.
    per_second: Vec<usize>,
    /// When each delivery arrived, since the start of the run, for the pause a fault caused.
    times: Vec<Duration>,
}

/// Acks `ok` messages, nacks `flaky` ones at their first attempt and acks them after, and
/// nacks `poison` at every attempt; about 600 deliveries a second, slower than the producer,
/// so the gateway holds a backlog when the broker dies: what it delivers while the broker is
/// down shows that no partition waits for the dead broker.
async fn subscriber(mut sub: Subscription, seen: Arc<Mutex<Seen>>, started: Instant) {
    while let Ok(Some(batch)) = sub.next().await {
        tokio::time::sleep(Duration::from_micros(1_600) * batch.len() as u32).await;
        let mut acks = Vec::new();
        for d in &batch {
            let value = String::from_utf8_lossy(d.value.as_deref().unwrap_or_default()).into_owned();
            let id = stream::id_of(d);
            {
                let mut s = seen.lock();
                *s.deliveries.entry(value.clone()).or_default() += 1;
                let at = started.elapsed();
                s.times.push(at);
                let second = at.as_secs() as usize;
                if s.per_second.len() <= second {
                    s.per_second.resize(second + 1, 0);
                }
                s.per_second[second] += 1;
            }
            let fail = value.starts_with("poison-") || (value.starts_with("flaky-") && d.attempt == 1);
            if fail {
                let _ = sub.nack(id, "the service failed").await;
            } else {
                acks.push(id);
                seen.lock().acked.insert(value);
            }
        }
        if !acks.is_empty() && sub.ack(acks).await.is_err() {
            return;
        }
    }
}

/// Deliveries a value needs with no fault: 1 for ok, 2 for flaky, `max_attempts` for poison;
/// more are redeliveries.
fn deliveries_needed(value: &str) -> u32 {
    if value.starts_with("ok-") {
        1
    } else if value.starts_with("flaky-") {
        2
    } else {
        3
    }
}

/// Waits (at most 120 s) until the subscriber acked every value `produced` but `poison`, the
/// gateway dead-lettered as many as `poison` holds, and `group`'s commits on each of `topics`
/// reached the partitions' ends.
async fn settle(
    kafka: &RealKafka,
    group: &str,
    topics: &[&str],
    seen: &Mutex<Seen>,
    stats: &Stats,
    produced: &[String],
    poison: &HashSet<String>,
) {
    let acks = produced.len() - poison.len();
    let settled_by = Instant::now() + Duration::from_secs(120);
    loop {
        let acked = seen.lock().acked.len();
        let dead = Stats::get(&stats.dead_lettered) as usize;
        let behind: Vec<_> = topics
            .iter()
            .flat_map(|t| kafka.uncommitted(group, t, PARTITIONS).into_iter().map(move |b| (*t, b)))
            .collect();
        if acked >= acks && dead >= poison.len() && behind.is_empty() {
            return;
        }
        if Instant::now() >= settled_by {
            let seen = seen.lock();
            let unacked: Vec<&String> =
                produced.iter().filter(|v| !poison.contains(*v) && !seen.acked.contains(*v)).take(10).collect();
            panic!(
                "not settled in 120 s after producing: acked {acked} of {acks} (not: {unacked:?}), dead-lettered \
                 {dead} of {}, uncommitted (partition, committed, end) {behind:?}",
                poison.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every value in the dead-letter topic, read from the beginning by an independent client
/// until `expected` arrived or 20 s passed.
fn dead_letter_values(bootstrap: &str, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_group("dlq-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(DLQ, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut values = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        } else if values.len() >= expected {
            break;
        }
    }
    values
}

/// The poison messages of a run: nacked at every attempt, then dead-lettered.
fn poison() -> HashSet<String> {
    (0..MESSAGES).filter(|i| kind(*i) == "poison").map(|i| format!("poison-{i}")).collect()
}

/// A gateway under load: its subscriber acking (see [`subscriber`]) and the producer running.
struct Load {
    gw: GatewayHandle,
    stats: Arc<Stats>,
    started: Instant,
    seen: Arc<Mutex<Seen>>,
    worker: tokio::task::JoinHandle<()>,
    producing: tokio::task::JoinHandle<(Vec<String>, Vec<usize>)>,
}

impl Load {
    async fn start(config: Config, bootstrap: &str) -> Self {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let started = Instant::now();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", WINDOW)).await.expect("subscribes");
        let worker = tokio::spawn(subscriber(sub, seen.clone(), started));
        let producing = tokio::spawn(produce_under_faults(bootstrap.to_string(), started));
        Self { gw, stats, started, seen, worker, producing }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_partition_leader_killed_and_restarted_under_load_loses_nothing_and_dead_letters_land_once() {
    init_logs();
    let _one_at_a_time = SERIAL.lock().await;
    let Some(mut kafka) = RealKafka::cluster(3) else { return };
    for topic in [FAULT_TOPIC, RETRY_TOPIC, DLQ] {
        kafka.create_topic(topic, PARTITIONS, &[]).await;
    }
    let bootstrap = kafka.bootstrap_servers().to_string();
    let group = unique_group("real-faults");
    let config = route(&bootstrap, &group);
    let route_group = config.routes[0].group(&config.kafka);
    let poison = poison();
    let Load { gw, stats, started, seen, worker, producing } = Load::start(config, &bootstrap).await;

    // A third into the run, the node leading partition 0 dies; it comes back 8 s later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = kafka.leader_of(FAULT_TOPIC, 0);
    assert!(victim > 0, "partition 0 has a leader");
    let killed_at = started.elapsed().as_secs() as usize;
    kafka.kill(victim as usize);
    eprintln!("killed node {victim} (leader of {FAULT_TOPIC}/0) at {killed_at} s");
    // Two nodes of three answer (and min.insync.replicas is 2): the gateway stays ready.
    let mut readiness = Vec::new();
    let back_at = Instant::now() + Duration::from_secs(8);
    while Instant::now() < back_at {
        readiness.push(http_get(gw.admin_addr(), "/readyz").await.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarted_at = started.elapsed().as_secs() as usize;
    kafka.restart(victim as usize);
    eprintln!("node {victim} back at {} s", started.elapsed().as_secs());

    let (produced, produced_per_second) = tokio::time::timeout(Duration::from_secs(180), producing)
        .await
        .expect("producing finished in time")
        .expect("producer task");
    settle(&kafka, &route_group, &[FAULT_TOPIC], &seen, &stats, &produced, &poison).await;
    let letters = dead_letter_values(&bootstrap, poison.len());
    gw.shutdown().await;
    worker.abort();

    let seen = seen.lock();
    let lost: Vec<&String> = produced.iter().filter(|v| !poison.contains(*v) && !seen.acked.contains(*v)).collect();
    let redelivered = seen.deliveries.iter().filter(|(v, n)| **n > deliveries_needed(v)).count();
    let mut letter_counts: HashMap<&str, usize> = HashMap::new();
    for v in &letters {
        *letter_counts.entry(v.as_str()).or_default() += 1;
    }
    figure(format!(
        "leader kill on Kafka: produced={} acked={} dead_letters={} lost={} redelivered={redelivered} \
         killed_at={killed_at}s back_at={restarted_at}s deliveries/s={:?} produced/s={produced_per_second:?} readyz={readiness:?}",
        produced.len(),
        seen.acked.len(),
        letters.len(),
        lost.len(),
        seen.per_second
    ));
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert_eq!(letter_counts.len(), poison.len(), "every poison message is in the dead-letter topic");
    assert!(letter_counts.keys().all(|v| poison.contains(*v)), "only poison is dead-lettered");
    let twice: Vec<_> = letter_counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "dead letters written more than once: {twice:?}");
    // While the node was down the cluster took no writes (acks=all waits for the dead node
    // until the controller fences it, broker.session.timeout.ms later): what the gateway
    // delivered meanwhile came from what it had fetched, on every partition, the dead node's
    // included, without waiting for the node or the coordinator.
    let while_down: usize = seen.per_second.iter().take(restarted_at).skip(killed_at + 1).sum();
    assert!(while_down > 0, "deliveries went on while the node was down: {:?}", seen.per_second);
    assert!(readiness.iter().all(|code| *code == 200), "/readyz stayed 200 with one node of three down: {readiness:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_coordinator_killed_and_restarted_under_load_loses_nothing_and_commits_catch_up() {
    init_logs();
    let _one_at_a_time = SERIAL.lock().await;
    let Some(mut kafka) = RealKafka::cluster(3) else { return };
    let bootstrap = kafka.bootstrap_servers().to_string();
    let group = unique_group("real-coordinator");
    let config = route(&bootstrap, &group);
    let route_group = config.routes[0].group(&config.kafka);
    // The victim is the route group's coordinator: the leader of the group's partition of the
    // offsets topic. Kafka spreads a topic's leaders over every node (four partitions on three
    // nodes), so no group id would find a coordinator that leads none of them; instead the
    // route's topics are created once the coordinator is known, every partition led by one of
    // the two other nodes, the victim a follower of each. Its death then stops commits, and
    // writes until Kafka fences it (acks=all waits for it until then), but no partition's
    // fetches.
    let offsets_partition = coordinator_partition(&route_group);
    let victim = offsets_topic_leaders(&kafka)[offsets_partition as usize];
    assert_eq!(
        coordinator_node(&kafka, &route_group),
        victim,
        "Kafka names the node that leads {OFFSETS_TOPIC}/{offsets_partition}"
    );
    let others: Vec<i32> = (1..=3).filter(|n| *n != victim).collect();
    for topic in [FAULT_TOPIC, RETRY_TOPIC, DLQ] {
        create_topic_led_by(&kafka, topic, [others[0], others[1]], victim).await;
    }
    let poison = poison();
    let Load { gw, stats, started, seen, worker, producing } = Load::start(config, &bootstrap).await;

    assert_eq!(kafka.leader_of(OFFSETS_TOPIC, offsets_partition), victim, "the coordinator stayed where it was");
    for topic in [FAULT_TOPIC, RETRY_TOPIC, DLQ] {
        for p in 0..PARTITIONS {
            assert_ne!(kafka.leader_of(topic, p), victim, "{topic}/{p} is led by a node that stays up");
        }
    }
    // A third into the run, the coordinator dies.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(started.elapsed())).await;
    assert!(stats.committed_sum() > 0, "the gateway committed before the kill");
    let rebalances_before = Stats::get(&stats.rebalances);
    let killed_at = started.elapsed();
    let killed = Instant::now();
    kafka.kill(victim as usize);
    eprintln!(
        "killed node {victim} (coordinator of {route_group}, {OFFSETS_TOPIC}/{offsets_partition}) at {killed_at:?}"
    );
    // A commit the dead node answered just before it died may still be reported in the next
    // few milliseconds; what lands after this moment went to the coordinator that replaced it
    // (Kafka moves it once the controller fences the dead node, broker.session.timeout.ms,
    // 9 s, after its last heartbeat).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let committed_after_kill = stats.committed_sum();
    let refused_before = Stats::get(&stats.commit_failures);
    // The node stays down until commits land on the new coordinator, and 2 s more (30 s at
    // most): what this proves is that commits catch up after the coordinator moved, not after
    // it came back. The group keeps its members meanwhile: /readyz stays 200.
    let mut commits_resumed = None;
    let mut readiness = Vec::new();
    loop {
        if commits_resumed.is_none() && stats.committed_sum() > committed_after_kill {
            commits_resumed = Some(killed.elapsed());
        }
        let down = killed.elapsed();
        if commits_resumed.is_some_and(|at| down >= at + Duration::from_secs(2)) || down >= Duration::from_secs(30) {
            break;
        }
        readiness.push(http_get(gw.admin_addr(), "/readyz").await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved_to = kafka.leader_of(OFFSETS_TOPIC, offsets_partition);
    let refused_meanwhile = Stats::get(&stats.commit_failures) - refused_before;
    let down_for = killed.elapsed();
    kafka.restart(victim as usize);
    eprintln!("node {victim} back at {:?}", started.elapsed());

    let (produced, produced_per_second) = tokio::time::timeout(Duration::from_secs(180), producing)
        .await
        .expect("producing finished in time")
        .expect("producer task");
    let consumed = [FAULT_TOPIC, RETRY_TOPIC];
    settle(&kafka, &route_group, &consumed, &seen, &stats, &produced, &poison).await;
    // Kafka's own view, read while the gateway still runs: its asynchronous commits reached
    // the ends, not the synchronous one of its shutdown (a partition never written to counts
    // as committed at 0, its end).
    let mut committed = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for topic in consumed {
        let group_committed = kafka.committed(&route_group, topic, PARTITIONS);
        for (p, end) in kafka.end_offsets(topic, PARTITIONS) {
            committed.insert((topic, p), group_committed.get(&p).copied().unwrap_or(0));
            ends.insert((topic, p), end);
        }
    }
    let rebalances = Stats::get(&stats.rebalances) - rebalances_before;
    gw.shutdown().await;
    worker.abort();

    let seen = seen.lock();
    // Lost: an acceptable value never acked, or a poison one never delivered (every poison
    // value was dead-lettered: `settle` waited for as many dead letters).
    let lost: Vec<&String> = produced
        .iter()
        .filter(|v| if poison.contains(*v) { !seen.deliveries.contains_key(*v) } else { !seen.acked.contains(*v) })
        .collect();
    let dups: u32 = seen.deliveries.iter().map(|(v, n)| n.saturating_sub(deliveries_needed(v))).sum();
    // Deliveries since the kill (the subscriber records them in order): the first, and the
    // longest pause and when it ended (writes stop until Kafka fences the dead follower, so a
    // subscriber that keeps up would wait for them; this one is behind and has a backlog).
    let since_kill: Vec<Duration> =
        std::iter::once(killed_at).chain(seen.times.iter().copied().filter(|t| *t > killed_at)).collect();
    let first_delivery = since_kill.get(1).map(|t| *t - killed_at);
    let (pause, pause_ended) = since_kill.windows(2).map(|w| (w[1] - w[0], w[1] - killed_at)).max().unwrap_or_default();
    // At-least-once redelivers only what was acked and not committed, if the gateway loses a
    // partition: commits landed every 100 ms up to the kill and again from `commits_resumed`,
    // so a redelivery covers at most what was delivered in between (a second of margin either
    // side) and the subscriber's window then in flight. The member keeps its partitions while
    // the coordinator moves (its 45 s session outlasts the move), so 0 is what to expect.
    let window_end = killed_at + commits_resumed.unwrap_or(down_for) + Duration::from_secs(1);
    let window_start = killed_at.saturating_sub(Duration::from_secs(1));
    let bound = seen.times.iter().filter(|t| **t >= window_start && **t <= window_end).count() + WINDOW as usize;
    figure(format!(
        "coordinator killed: lost={} dups={dups} (bound {bound}) first delivery after {first_delivery:?}, longest \
         pause in deliveries {pause:?} (ended {pause_ended:?} after the kill), commits resumed after \
         {commits_resumed:?} ({refused_meanwhile} commits refused meanwhile; coordinator moved to node {moved_to}; \
         node {victim} down {down_for:?}; rebalances since the kill {rebalances}) killed_at={killed_at:?} \
         produced={} acked={} deliveries/s={:?} produced/s={produced_per_second:?} readyz 200 {}/{}",
        lost.len(),
        produced.len(),
        seen.acked.len(),
        seen.per_second,
        readiness.iter().filter(|code| **code == 200).count(),
        readiness.len(),
    ));
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert!(
        commits_resumed.is_some(),
        "no commit landed in 30 s after the coordinator died: commits refused while it moved are not carried to \
         the new one (moved to node {moved_to})"
    );
    assert!(moved_to > 0 && moved_to != victim, "Kafka moved the coordinator off the dead node: {moved_to}");
    assert!(dups as usize <= bound, "{dups} redeliveries, more than the {bound} acked while commits could not land");
    assert!(readiness.iter().all(|code| *code == 200), "/readyz stayed 200 while the coordinator moved: {readiness:?}");
    assert_eq!(committed, ends, "the group's committed offsets are each partition's end");
}

/// Java's `String.hashCode`: over the string's UTF-16 code units, `h = 31 * h + c`, wrapping
/// as Java's `int` does. Kafka places a group by it.
fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of the offsets topic whose leader coordinates `group`:
/// `Utils.abs(groupId.hashCode()) % offsets.topic.num.partitions`. Kafka's `Utils.abs` is
/// `Math.abs` with `Integer.MIN_VALUE` mapped to 0, not a mask of the sign bit (that is
/// `Utils.toPositive`, which the producer's partitioner uses): for a negative hash the two
/// differ by the sign of the remainder.
fn coordinator_partition(group: &str) -> i32 {
    java_string_hash(group).checked_abs().unwrap_or(0) % OFFSETS_TOPIC_PARTITIONS
}

/// The node that Kafka names as `group`'s coordinator (its FindCoordinator answer), as a
/// client of the group sees it: librdkafka's statistics show the address of the logical
/// broker `GroupCoordinator`, and node `n` listens at the `n`th bootstrap address. An
/// independent check of [`coordinator_partition`]; the probe reads offsets, it joins nothing.
fn coordinator_node(kafka: &RealKafka, group: &str) -> i32 {
    struct Probe(Mutex<String>);
    impl ClientContext for Probe {
        fn stats(&self, statistics: Statistics) {
            if let Some(coordinator) = statistics.brokers.values().find(|b| b.name == "GroupCoordinator") {
                *self.0.lock() = coordinator.nodename.clone();
            }
        }
    }
    impl ConsumerContext for Probe {}
    let probe: BaseConsumer<Probe> = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "100")
        .create_with_context(Probe(Mutex::new(String::new())))
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("coordinator-probe", 0);
    // Asking for the group's offsets makes the client look its coordinator up.
    let _ = probe.committed_offsets(tpl, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = probe.poll(Duration::from_millis(100));
        let address = probe.context().0.lock().clone();
        if let Some(i) = kafka.bootstrap_servers().split(',').position(|a| a == address) {
            return i as i32 + 1;
        }
        assert!(Instant::now() < deadline, "no coordinator of {group} in 10 s (last seen: {address:?})");
    }
}

/// The leader of each partition of the offsets topic. Kafka creates the topic on the first
/// FindCoordinator request, so a probe asks for a scratch group's committed offsets until every
/// partition has a leader.
fn offsets_topic_leaders(kafka: &RealKafka) -> Vec<i32> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", unique_group("coordinator-probe"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: Vec<i32> = (0..OFFSETS_TOPIC_PARTITIONS).map(|p| kafka.leader_of(OFFSETS_TOPIC, p)).collect();
        if leaders.iter().all(|l| *l > 0) {
            return leaders;
        }
        assert!(Instant::now() < deadline, "{OFFSETS_TOPIC} has no leaders after 30 s: {leaders:?}");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("coordinator-probe", 0);
        // Only the coordinator lookup matters: the answer (an error, while the topic is made) does not.
        let _ = probe.committed_offsets(tpl, Duration::from_secs(2));
    }
}

/// Creates `topic` with `PARTITIONS` partitions on all three nodes, led alternately by the two
/// `leaders` (each partition's first replica) with `follower` last, and waits until they lead.
async fn create_topic_led_by(kafka: &RealKafka, topic: &str, leaders: [i32; 2], follower: i32) {
    let replicas: Vec<[i32; 3]> =
        (0..PARTITIONS as usize).map(|p| [leaders[p % 2], leaders[(p + 1) % 2], follower]).collect();
    let assignment: Vec<&[i32]> = replicas.iter().map(|r| r.as_slice()).collect();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("admin client");
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Variable(&assignment));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &options).await.expect("create_topics answered") {
        result.unwrap_or_else(|(name, code)| panic!("topic {name} not created: {code}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..PARTITIONS).any(|p| kafka.leader_of(topic, p) != replicas[p as usize][0]) {
        assert!(Instant::now() < deadline, "{topic}'s partitions are not led by {leaders:?} after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn java_string_hash_is_javas() {
    // Values Java 17's `String.hashCode` gives.
    assert_eq!(java_string_hash(""), 0);
    assert_eq!(java_string_hash("hello"), 99_162_322);
    assert_eq!(java_string_hash("fanout.orders"), -215_075_624);
    // Outside the BMP: a surrogate pair counts as two code units.
    assert_eq!(java_string_hash("é€😀"), 16_752_006);
    assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    assert_eq!(coordinator_partition("polygenelubricants"), 0);
    assert_eq!(coordinator_partition("hello"), 99_162_322 % 4);
    // A negative hash: Kafka 4.4 placed this group on partition 3 of its four (masking the
    // sign bit would give 1).
    assert_eq!(java_string_hash("real-coordinator-10699088091204546904"), -1_161_716_263);
    assert_eq!(coordinator_partition("real-coordinator-10699088091204546904"), 3);
}
