//! Broker faults on a real three-node Apache Kafka cluster (KRaft, every node broker and
//! controller, replication factor 3, `min.insync.replicas=2`; see `support::real_kafka`): the
//! leader of the routed partitions is killed and restarted under load while retries go
//! through the retry topic and poison goes to the dead-letter topic. Nothing produced is lost,
//! deliveries resume, and every dead letter lands in the dead-letter topic exactly once, as an
//! independent client reads it.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, RetryPolicy};
use fanout_gateway::stats::Stats;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use support::real_kafka::RealKafka;
use support::*;

const FAULT_TOPIC: &str = "faults";
const RETRY_TOPIC: &str = "faults.retry";
const DLQ: &str = "faults.dlq";
const PARTITIONS: i32 = 4;
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
                let second = started.elapsed().as_secs() as usize;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_partition_leader_killed_and_restarted_under_load_loses_nothing_and_dead_letters_land_once() {
    init_logs();
    let Some(mut kafka) = RealKafka::cluster(3) else { return };
    for topic in [FAULT_TOPIC, RETRY_TOPIC, DLQ] {
        kafka.create_topic(topic, PARTITIONS, &[]).await;
    }
    let bootstrap = kafka.bootstrap_servers().to_string();
    let group = unique_group("real-faults");
    let config = route(&bootstrap, &group);
    let route_group = config.routes[0].group(&config.kafka);
    let poison: HashSet<String> =
        (0..MESSAGES).filter(|i| kind(*i) == "poison").map(|i| format!("poison-{i}")).collect();

    let gw = start_gateway(config).await;
    let stats = gw.stats();
    let started = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", 500)).await.expect("subscribes");
    let worker = tokio::spawn(subscriber(sub, seen.clone(), started));
    let producing = tokio::spawn(produce_under_faults(bootstrap.clone(), started));

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
    // Everything but poison acked, every poison dead-lettered, commits at the partitions' ends.
    let settled_by = Instant::now() + Duration::from_secs(120);
    loop {
        let acked = seen.lock().acked.len();
        let dead = Stats::get(&stats.dead_lettered) as usize;
        let behind = kafka.uncommitted(&route_group, FAULT_TOPIC, PARTITIONS);
        if acked >= produced.len() - poison.len() && dead >= poison.len() && behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settled_by,
            "not settled in 120 s after producing: acked {acked} of {}, dead-lettered {dead} of {}, uncommitted {behind:?}",
            produced.len() - poison.len(),
            poison.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let letters = dead_letter_values(&bootstrap, poison.len());
    gw.shutdown().await;
    worker.abort();

    let seen = seen.lock();
    let lost: Vec<&String> = produced.iter().filter(|v| !poison.contains(*v) && !seen.acked.contains(*v)).collect();
    // Deliveries beyond what each kind needs: 1 for ok, 2 for flaky, max_attempts for poison.
    let needed = |v: &str| {
        if v.starts_with("ok-") {
            1
        } else if v.starts_with("flaky-") {
            2
        } else {
            3
        }
    };
    let redelivered = seen.deliveries.iter().filter(|(v, n)| **n > needed(v)).count();
    let mut letter_counts: HashMap<&str, usize> = HashMap::new();
    for v in &letters {
        *letter_counts.entry(v.as_str()).or_default() += 1;
    }
    eprintln!(
        "leader kill on Kafka: produced={} acked={} dead_letters={} lost={} redelivered={redelivered} \
         killed_at={killed_at}s back_at={restarted_at}s deliveries/s={:?} produced/s={produced_per_second:?} readyz={readiness:?}",
        produced.len(),
        seen.acked.len(),
        letters.len(),
        lost.len(),
        seen.per_second
    );
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
