//! Retries, ack deadlines and dead letters end to end on the mock cluster: a nacked message
//! comes back after its backoff with the next attempt number, one that keeps failing lands in
//! the dead-letter topic with its origin in the headers and its offset committed, and one
//! that is never acked comes back when its ack deadline passes.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::RetryPolicy;
use fanout_gateway::dead_letters;
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;

const DLQ: &str = "orders-dead-letters";
const PARTITIONS: i32 = 4;
const INITIAL_BACKOFF_MS: u64 = 400;

/// How the subscriber treats a message, by the kind written in its value.
fn kind(value: &[u8]) -> &str {
    std::str::from_utf8(value).unwrap_or("").split('-').next().unwrap_or("")
}

async fn produce_kinds(bootstrap: &str, kinds: &[(&str, usize)]) -> usize {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("acks", "all").create().expect("producer");
    let mut n = 0;
    for (kind, count) in kinds {
        for i in 0..*count {
            let key = format!("{kind}-key-{i}");
            let value = format!("{kind}-{i}");
            producer
                .send(
                    FutureRecord::to(TOPIC).key(&key).payload(&value).headers(
                        rdkafka::message::OwnedHeaders::new()
                            .insert(rdkafka::message::Header { key: "trace-id", value: Some(value.as_bytes()) }),
                    ),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
            n += 1;
        }
    }
    n
}

#[derive(Default, Debug)]
struct Seen {
    /// (value, attempt, when) of every delivery.
    deliveries: Vec<(String, u32, Instant)>,
}

impl Seen {
    fn attempts(&self, value: &str) -> Vec<(u32, Instant)> {
        self.deliveries.iter().filter(|(v, _, _)| v == value).map(|(_, a, t)| (*a, *t)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nacks_retry_after_backoff_then_dead_letter_and_expired_deadlines_redeliver() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    cluster.create_topic(DLQ, 2, 3).expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("retries");
    let (ok, flaky, poison, rejected, silent) = (40, 10, 5, 3, 4);
    let total = produce_kinds(
        &bootstrap,
        &[("ok", ok), ("flaky", flaky), ("poison", poison), ("rejected", rejected), ("silent", silent)],
    )
    .await;

    let mut config = config(&bootstrap, &group);
    let route = &mut config.routes[0];
    route.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: INITIAL_BACKOFF_MS,
        max_backoff_ms: 2_000,
        retry_topic: None,
    };
    route.dead_letter_topic = Some(DLQ.into());
    route.ack_timeout_ms = 1_500;

    let run = async {
        let gw = start_gateway(config.clone()).await;
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", 50)).await.expect("subscribes");
        let mut seen = Seen::default();
        let done = |seen: &Seen| {
            let settled = |prefix: &str, n: usize, attempts: u32| {
                (0..n).all(|i| seen.attempts(&format!("{prefix}-{i}")).len() as u32 >= attempts)
            };
            settled("ok", ok, 1)
                && settled("flaky", flaky, 2)
                && settled("poison", poison, 3)
                && settled("rejected", rejected, 1)
                && settled("silent", silent, 2)
        };
        while !done(&seen) {
            let batch = next_batch(&mut sub).await;
            for d in batch {
                let value = String::from_utf8_lossy(d.value.as_deref().unwrap_or_default()).into_owned();
                seen.deliveries.push((value.clone(), d.attempt, Instant::now()));
                match (kind(d.value.as_deref().unwrap_or_default()), d.attempt) {
                    ("flaky", 1) => sub.nack(stream::id_of(&d), "try again").await.expect("nack"),
                    ("poison", _) => sub.nack(stream::id_of(&d), &format!("cannot parse {value}")).await.expect("nack"),
                    ("rejected", _) => sub.dead_letter(stream::id_of(&d), "schema rejected").await.expect("nack"),
                    ("silent", 1) => {} // never answered: the ack deadline takes it back
                    _ => sub.ack(vec![stream::id_of(&d)]).await.expect("ack"),
                }
            }
        }
        eventually(Duration::from_secs(30), "every origin offset committed", || {
            fully_committed(&bootstrap, &group, PARTITIONS)
        })
        .await;
        let stats = gw.stats();
        gw.shutdown().await;
        (seen, stats)
    };
    let (seen, stats) = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");

    // Flaky messages: back once, as attempt 2, after at least half the initial backoff.
    for i in 0..flaky {
        let a = seen.attempts(&format!("flaky-{i}"));
        assert_eq!(a.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2], "flaky-{i}");
        let waited = a[1].1 - a[0].1;
        assert!(waited >= Duration::from_millis(INITIAL_BACKOFF_MS / 2), "flaky-{i} came back after {waited:?}");
    }
    // Poison: exactly max_attempts deliveries, numbered 1..=3, then dead-lettered.
    for i in 0..poison {
        let a: Vec<u32> = seen.attempts(&format!("poison-{i}")).iter().map(|(n, _)| *n).collect();
        assert_eq!(a, vec![1, 2, 3], "poison-{i}");
    }
    // Rejected: one delivery, straight to the dead-letter topic.
    for i in 0..rejected {
        assert_eq!(seen.attempts(&format!("rejected-{i}")).len(), 1, "rejected-{i}");
    }
    // Silent: taken back at the ack deadline and redelivered as attempt 2.
    for i in 0..silent {
        let a = seen.attempts(&format!("silent-{i}"));
        assert_eq!(a.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2], "silent-{i}");
        assert!(a[1].1 - a[0].1 >= Duration::from_millis(1_500), "silent-{i} came back before its deadline");
    }
    for i in 0..ok {
        assert_eq!(seen.attempts(&format!("ok-{i}")).len(), 1, "ok-{i} delivered once");
    }
    assert_eq!(Stats::get(&stats.dead_lettered), (poison + rejected) as u64);
    assert!(Stats::get(&stats.expired) >= silent as u64);

    // The dead-letter topic holds exactly the poison and rejected messages, with their origin.
    let letters = read_topic(&bootstrap, DLQ, poison + rejected);
    assert_eq!(letters.len(), poison + rejected, "{letters:?}");
    let offsets = high_watermarks(&bootstrap, PARTITIONS);
    assert_eq!(offsets.values().sum::<i64>(), total as i64);
    for (value, h) in &letters {
        for name in [
            dead_letters::HEADER_ORIGIN_TOPIC,
            dead_letters::HEADER_ORIGIN_PARTITION,
            dead_letters::HEADER_ORIGIN_OFFSET,
            dead_letters::HEADER_ATTEMPTS,
            dead_letters::HEADER_REASON,
            dead_letters::HEADER_ROUTE,
        ] {
            assert!(h.contains_key(name), "{value} lacks {name}: {h:?}");
        }
        assert_eq!(h[dead_letters::HEADER_ORIGIN_TOPIC], TOPIC);
        assert_eq!(h[dead_letters::HEADER_ROUTE], ROUTE);
        assert_eq!(h["trace-id"], *value, "original headers are kept");
        let partition: i32 = h[dead_letters::HEADER_ORIGIN_PARTITION].parse().expect("partition number");
        let offset: i64 = h[dead_letters::HEADER_ORIGIN_OFFSET].parse().expect("offset number");
        assert!((0..PARTITIONS).contains(&partition) && offset >= 0 && offset < offsets[&partition]);
        match kind(value.as_bytes()) {
            "poison" => {
                assert_eq!(h[dead_letters::HEADER_ATTEMPTS], "3");
                assert_eq!(h[dead_letters::HEADER_REASON], format!("cannot parse {value}"));
            }
            "rejected" => {
                assert_eq!(h[dead_letters::HEADER_ATTEMPTS], "1");
                assert_eq!(h[dead_letters::HEADER_REASON], "schema rejected");
            }
            other => panic!("{value} ({other}) should not be in the dead-letter topic"),
        }
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_retry_topic_retries_go_through_kafka_and_keep_their_origin() {
    const RETRY: &str = "orders-retry";
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    cluster.create_topic(DLQ, 2, 3).expect("dlq topic");
    cluster.create_topic(RETRY, 2, 3).expect("retry topic");
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("retry-topic");
    let (ok, flaky, poison) = (20, 10, 4);
    produce_kinds(&bootstrap, &[("ok", ok), ("flaky", flaky), ("poison", poison)]).await;

    let mut config = config(&bootstrap, &group);
    let route = &mut config.routes[0];
    route.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: INITIAL_BACKOFF_MS,
        max_backoff_ms: 1_000,
        retry_topic: Some(RETRY.into()),
    };
    route.dead_letter_topic = Some(DLQ.into());
    config.validate().expect("valid");

    let run = async {
        let gw = start_gateway(config.clone()).await;
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", 50)).await.expect("subscribes");
        let mut seen = Seen::default();
        // (value, attempt) -> (topic, origin topic header) of deliveries from the retry topic.
        let mut retried: HashMap<(String, u32), (String, String)> = HashMap::new();
        let done = |seen: &Seen| {
            (0..ok).all(|i| !seen.attempts(&format!("ok-{i}")).is_empty())
                && (0..flaky).all(|i| seen.attempts(&format!("flaky-{i}")).len() >= 2)
                && (0..poison).all(|i| seen.attempts(&format!("poison-{i}")).len() >= 3)
        };
        while !done(&seen) {
            let batch = next_batch(&mut sub).await;
            for d in batch {
                let value = String::from_utf8_lossy(d.value.as_deref().unwrap_or_default()).into_owned();
                seen.deliveries.push((value.clone(), d.attempt, Instant::now()));
                if d.attempt > 1 {
                    let origin = d
                        .headers
                        .iter()
                        .rev()
                        .find(|h| h.name == dead_letters::HEADER_ORIGIN_TOPIC)
                        .and_then(|h| h.value.as_deref())
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    retried.insert((value.clone(), d.attempt), (d.topic.clone(), origin.unwrap_or_default()));
                }
                match (kind(d.value.as_deref().unwrap_or_default()), d.attempt) {
                    ("flaky", 1) => sub.nack(stream::id_of(&d), "try again").await.expect("nack"),
                    ("poison", _) => sub.nack(stream::id_of(&d), "cannot parse").await.expect("nack"),
                    _ => sub.ack(vec![stream::id_of(&d)]).await.expect("ack"),
                }
            }
        }
        eventually(Duration::from_secs(30), "the origin topic and the retry topic committed", || {
            fully_committed(&bootstrap, &group, PARTITIONS) && topic_fully_committed(&bootstrap, &group, RETRY, 2)
        })
        .await;
        let stats = gw.stats();
        gw.shutdown().await;
        (seen, retried, stats)
    };
    let (seen, retried, stats) =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");

    for i in 0..flaky {
        let value = format!("flaky-{i}");
        let a = seen.attempts(&value);
        assert_eq!(a.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2], "{value}");
        assert!(a[1].1 - a[0].1 >= Duration::from_millis(INITIAL_BACKOFF_MS / 2), "{value} waited out its backoff");
        assert_eq!(
            retried[&(value.clone(), 2)],
            (RETRY.to_string(), TOPIC.to_string()),
            "{value} came from the retry topic"
        );
    }
    for i in 0..poison {
        let a: Vec<u32> = seen.attempts(&format!("poison-{i}")).iter().map(|(n, _)| *n).collect();
        assert_eq!(a, vec![1, 2, 3], "poison-{i}");
    }
    // Every failed attempt but the last went through the retry topic.
    assert_eq!(Stats::get(&stats.retried_via_topic), (flaky + 2 * poison) as u64);
    assert_eq!(Stats::get(&stats.dead_lettered), poison as u64);
    let letters = read_topic(&bootstrap, DLQ, poison);
    assert_eq!(letters.len(), poison);
    let ends = high_watermarks(&bootstrap, PARTITIONS);
    for (value, h) in &letters {
        assert_eq!(h[dead_letters::HEADER_ORIGIN_TOPIC], TOPIC, "{value}: the origin, not the retry topic");
        let partition: i32 = h[dead_letters::HEADER_ORIGIN_PARTITION].parse().expect("partition");
        let offset: i64 = h[dead_letters::HEADER_ORIGIN_OFFSET].parse().expect("offset");
        assert!(offset < ends[&partition], "{value}: origin offset {offset} is in {TOPIC}/{partition}");
        assert_eq!(h[dead_letters::HEADER_ATTEMPTS], "3");
        assert_eq!(h["trace-id"], *value);
    }
    drop(cluster);
}
