//! Effectively-once routes on the mock cluster: a producer that sends every message twice
//! (same idempotency key, two offsets) has each delivered once, with the in-memory store and
//! with Redis; keys come back into play after the TTL or when the store's capacity pushes
//! them out (counted).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, DeliveryMode};
use fanout_gateway::dedup::{DedupConfig, StoreKind};
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;

const PARTITIONS: i32 = 4;

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", bootstrap).set("acks", "all").create().expect("producer")
}

/// Produces one message per id, each with header `idempotency-key: <id>`.
async fn produce_ids(producer: &FutureProducer, ids: impl IntoIterator<Item = String>) {
    let mut sends = Vec::new();
    for id in ids {
        let headers = OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(id.as_bytes()) });
        let record = FutureRecord::to(TOPIC).key(&id).payload(&id).headers(headers);
        sends.push(producer.send_result(record).expect("enqueued"));
    }
    for s in sends {
        s.await.expect("delivered").expect("delivered");
    }
}

fn effectively_once(bootstrap: &str, group: &str, dedup: DedupConfig) -> Config {
    let mut config = config(bootstrap, group);
    config.routes[0].delivery = DeliveryMode::EffectivelyOnce;
    config.routes[0].dedup = Some(dedup);
    config.validate().expect("valid config");
    config
}

/// Acks everything and counts deliveries per value until `until` holds for the counts.
async fn consume(
    sub: &mut Subscription,
    counts: &mut HashMap<String, u32>,
    until: impl Fn(&HashMap<String, u32>) -> bool,
) {
    while !until(counts) {
        let batch = next_batch(sub).await;
        let ids: Vec<String> = batch
            .into_iter()
            .map(|d| {
                *counts
                    .entry(String::from_utf8_lossy(d.value.as_deref().unwrap_or_default()).into_owned())
                    .or_default() += 1;
                stream::id_of(&d)
            })
            .collect();
        sub.ack(ids).await.expect("ack");
    }
}

async fn each_sent_twice_is_delivered_once(store: StoreKind, prefix: Option<String>) {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("dedup");
    let unique = 2_000;
    let ids: Vec<String> = (0..unique).map(|i| format!("msg-{i}")).collect();
    let p = producer(&bootstrap);
    // Every message twice: the second copy at a later offset, maybe in another batch.
    produce_ids(&p, ids.iter().cloned()).await;
    produce_ids(&p, ids.iter().cloned()).await;
    let dedup = DedupConfig { store, key_prefix: prefix, ..DedupConfig::default() };
    let config = effectively_once(&bootstrap, &group, dedup);

    let run = async {
        let gw = start_gateway(config).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "w", 100)).await.expect("subscribes");
        let mut counts = HashMap::new();
        consume(&mut sub, &mut counts, |c| c.len() == unique).await;
        // Everything, copies included, is committed: the duplicates were acked to Kafka.
        eventually(Duration::from_secs(30), "all offsets committed", || {
            fully_committed(&bootstrap, &group, PARTITIONS)
        })
        .await;
        // Nothing more arrives: the second copies are not on their way.
        let more = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(more.is_err(), "no further deliveries expected, got {more:?}");
        let stats = gw.stats();
        gw.shutdown().await;
        (counts, stats)
    };
    let (counts, stats) = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(counts.len(), unique);
    assert_eq!(Stats::get(&stats.dedup_hits), unique as u64);
    assert_eq!(Stats::get(&stats.dedup_errors), 0);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_delivers_each_message_sent_twice_once() {
    each_sent_twice_is_delivered_once(StoreKind::Memory, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_delivers_each_message_sent_twice_once() {
    let prefix = format!("fanout-test:dedup-e2e:{}:{}:", std::process::id(), rand::random::<u64>());
    each_sent_twice_is_delivered_once(StoreKind::Redis, Some(prefix.clone())).await;
    // Clean up the test's keys.
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.expect("keys");
    assert_eq!(keys.len(), 2_000, "one claim per idempotency key, under the route's prefix");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_come_back_after_the_ttl_or_when_capacity_evicts_them() {
    init_logs();
    // One partition: claims are judged in the order they were produced.
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("dedup-bounds");
    let dedup = DedupConfig { ttl_ms: 1_000, capacity: 20, ..DedupConfig::default() };
    let config = effectively_once(&bootstrap, &group, dedup);
    let p = producer(&bootstrap);

    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "w", 100)).await.expect("subscribes");
        let mut counts = HashMap::new();

        // Capacity: 50 keys into a store of 20 forget the oldest 30. The newest 20, sent
        // again, are duplicates (a sentinel behind them on the one partition shows they were
        // judged); the oldest 30, sent again, are delivered again.
        let first: Vec<String> = (0..50).map(|i| format!("cap-{i:02}")).collect();
        produce_ids(&p, first.iter().cloned()).await;
        consume(&mut sub, &mut counts, |c| c.len() == 50).await;
        let evictions = Stats::get(&stats.dedup_evictions);
        produce_ids(&p, first.iter().skip(30).cloned().chain(["sentinel".to_string()])).await;
        consume(&mut sub, &mut counts, |c| c.contains_key("sentinel")).await;
        produce_ids(&p, first.iter().take(30).cloned()).await;
        consume(&mut sub, &mut counts, |c| c.values().filter(|n| **n == 2).count() == 30).await;

        // TTL: a key sent again after its TTL is delivered again.
        produce_ids(&p, ["ttl-a".to_string()]).await;
        consume(&mut sub, &mut counts, |c| c.contains_key("ttl-a")).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        produce_ids(&p, ["ttl-a".to_string()]).await;
        consume(&mut sub, &mut counts, |c| c.get("ttl-a") == Some(&2)).await;
        eventually(Duration::from_secs(30), "all offsets committed", || fully_committed(&bootstrap, &group, 1)).await;
        gw.shutdown().await;
        (counts, stats, evictions)
    };
    let (counts, stats, evictions_after_first) =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
    assert_eq!(evictions_after_first, 30, "50 keys into a capacity of 20 evict 30");
    for i in 0..50 {
        let expected = if i < 30 { 2 } else { 1 };
        assert_eq!(counts[&format!("cap-{i:02}")], expected, "cap-{i:02}");
    }
    assert_eq!(counts["ttl-a"], 2, "delivered again after its TTL");
    assert_eq!(Stats::get(&stats.dedup_hits), 20, "the 20 keys still held were duplicates");
    drop(cluster);
}
