//! Dead letters as an operator handles them, through fanoutctl and the admin port: poison
//! messages reach the dead-letter topic, `fanoutctl dlq list` shows them with their reasons,
//! `dlq redrive` puts each back on its origin topic and partition exactly once, and a second
//! redrive (of all of them, or of one by name) is refused.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::admin::dead_letters::HEADER_REDRIVEN_FROM;
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use support::*;

const DLQ: &str = "orders-dlq";
const TOKEN: &str = "dlq-token";
const POISON_EVERY: usize = 10;

/// Every record of `topic` that carries the redrive header: (partition, value, redriven-from).
fn redriven_records(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i32, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "redrive-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ends.iter().any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end) {
        assert!(std::time::Instant::now() < deadline, "reading {topic} timed out");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.expect("record");
        read.insert(m.partition(), m.offset() + 1);
        let from = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == HEADER_REDRIVEN_FROM)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        if let Some(from) = from {
            let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            out.push((m.partition(), value, from));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_letters_are_listed_and_redriven_once() {
    init_logs();
    let cluster = mock_cluster(2);
    cluster.create_topic(DLQ, 2, 3).expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("dlq");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token_arg = token_file.display().to_string();
    let mut config = config(&bootstrap, &group);
    config.routes[0].dead_letter_topic = Some(DLQ.into());
    config.server.admin_token_file = Some(token_arg.clone());

    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let admin = gw.admin_addr().to_string();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", 100)).await.expect("subscribes");
        // Poison (every tenth message) is dead-lettered until the redrive; then all is acked.
        let poisoning = Arc::new(AtomicBool::new(true));
        let poisoned_values = Arc::new(parking_lot::Mutex::new(BTreeMap::<String, (i32, i64)>::new()));
        let worker = {
            let poisoning = poisoning.clone();
            let poisoned_values = poisoned_values.clone();
            tokio::spawn(async move {
                while let Ok(Some(batch)) = sub.next().await {
                    for d in batch {
                        let value = String::from_utf8_lossy(d.value.as_deref().unwrap_or_default()).into_owned();
                        let n: usize = value.trim_start_matches("message ").parse().expect("a produced value");
                        let id = stream::id_of(&d);
                        if n.is_multiple_of(POISON_EVERY) && poisoning.load(Ordering::Relaxed) {
                            poisoned_values.lock().insert(value.clone(), (d.partition, d.offset));
                            sub.dead_letter(id, &format!("poison: cannot parse {value}")).await.expect("nack");
                        } else {
                            sub.ack(vec![id]).await.expect("ack");
                        }
                    }
                }
            })
        };
        produce(&bootstrap, 100, 100).await;
        let poison = 100 / POISON_EVERY;
        eventually(Duration::from_secs(20), "poison dead-lettered", || {
            Stats::get(&stats.dead_lettered) == poison as u64
        })
        .await;

        let (code, table, err) = fanoutctl(&["--gateway", &admin, "dlq", "list", ROUTE]).await;
        assert_eq!(code, 0, "{err}");
        println!("{table}");
        let rows: Vec<&str> = table.lines().skip(1).filter(|l| l.contains("poison: cannot parse")).collect();
        assert_eq!(rows.len(), poison, "{table}");
        assert!(rows.iter().all(|r| r.contains(" orders/") && r.contains(" no ")), "{table}");
        assert!(table.contains(&format!("{DLQ}: {poison} letter(s), 0 redriven, {poison} shown")), "{table}");
        let (code, json, err) = fanoutctl(&["--gateway", &admin, "-o", "json", "dlq", "list", ROUTE]).await;
        assert_eq!(code, 0, "{err}");
        let listing: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let origins: BTreeSet<(i64, i64)> = listing["letters"]
            .as_array()
            .expect("letters")
            .iter()
            .map(|l| (l["origin_partition"].as_i64().expect("p"), l["origin_offset"].as_i64().expect("o")))
            .collect();
        let expected: BTreeSet<(i64, i64)> =
            poisoned_values.lock().values().map(|(p, o)| (i64::from(*p), *o)).collect();
        assert_eq!(origins, expected, "each letter names where its message came from");
        assert!(listing["letters"].as_array().expect("letters").iter().all(|l| l["attempts"] == 1));

        let (code, _, err) = fanoutctl(&["--gateway", &admin, "dlq", "redrive", ROUTE, "--all"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("UNAUTHENTICATED"), "{err}");

        poisoning.store(false, Ordering::Relaxed);
        let (code, out, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token_arg, "dlq", "redrive", ROUTE, "--all"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("{poison} letter(s) redriven")), "{out}");

        // Each letter is back on its origin partition once, with its value.
        let back = redriven_records(&bootstrap, TOPIC, 2);
        assert_eq!(back.len(), poison, "{back:?}");
        let froms: BTreeSet<&str> = back.iter().map(|(_, _, from)| from.as_str()).collect();
        assert_eq!(froms.len(), poison, "no letter twice: {back:?}");
        let values = poisoned_values.lock().clone();
        for (partition, value, _) in &back {
            assert_eq!(values.get(value).map(|(p, _)| *p), Some(*partition), "{value} back on its partition");
        }
        // The gateway delivers them again, and this time they are acked.
        eventually(Duration::from_secs(20), "redriven messages acked and committed", || {
            fully_committed(&bootstrap, &group, 2)
        })
        .await;

        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token_arg, "dlq", "redrive", ROUTE, "--all"]).await;
        assert_eq!(code, 1, "a second redrive is refused");
        assert!(err.contains("FAILED_PRECONDITION") && err.contains("nothing to redrive"), "{err}");
        let first = &listing["letters"][0];
        let one = format!("{}:{}", first["partition"], first["offset"]);
        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token_arg, "dlq", "redrive", ROUTE, &one]).await;
        assert_eq!(code, 1);
        assert!(err.contains(&format!("already redriven, a letter goes back once: {one}")), "{err}");
        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token_arg, "dlq", "redrive", ROUTE, "0:9999"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("NOT_FOUND") && err.contains("is not in orders-dlq"), "{err}");
        let (code, _, err) = fanoutctl(&["--gateway", &admin, "dlq", "redrive", ROUTE, "zero:1"]).await;
        assert_eq!(code, 2);
        assert!(err.contains("PARTITION:OFFSET"), "{err}");
        let (code, table, err) = fanoutctl(&["--gateway", &admin, "dlq", "list", ROUTE]).await;
        assert_eq!(code, 0, "{err}");
        assert!(table.contains(&format!("{poison} letter(s), {poison} redriven, 0 shown")), "{table}");
        assert_eq!(redriven_records(&bootstrap, TOPIC, 2).len(), poison, "nothing produced twice");

        worker.abort();
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("in time");
}
