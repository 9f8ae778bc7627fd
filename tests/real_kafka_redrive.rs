//! Dead-letter redrive on a real broker: the ledger of what went back lives in the dead-letter
//! topic, so it outlives the group offsets Kafka expires, holds any number of scattered letters,
//! and two redrives of one route at once (two replicas) put each letter back once.
//!
//! The letters are written here as the gateway writes them (its headers, by
//! `dead_letter_headers`); the redrives are the ones the control surface runs, called as two
//! replicas would, without the one-at-a-time lock of a single replica.

mod support;

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use fanout_gateway::admin::dead_letters::{self, DeadLetterError, Selection, HEADER_REDRIVEN_FROM};
use fanout_gateway::config::{Config, RouteConfig};
use fanout_gateway::dead_letters::dead_letter_headers;
use fanout_gateway::kafka::{Record, TopicPartition};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use support::real_kafka::RealKafka;
use support::*;

const PARTITIONS: i32 = 2;

/// A route over `topic` whose dead-letter topic is `dlq`.
fn route(bootstrap: &str, group: &str, topic: &str, dlq: &str) -> (Config, RouteConfig) {
    let mut config = Config::single_route(bootstrap, group, ROUTE, &[topic]);
    config.routes[0].dead_letter_topic = Some(dlq.to_string());
    let route = config.routes[0].clone();
    (config, route)
}

/// Writes `count` letters to `dlq` as the gateway would, each from its own offset of `topic`
/// (partition `i % PARTITIONS`); `alone`: each in a batch of its own.
fn write_letters(bootstrap: &str, topic: &str, dlq: &str, count: usize, alone: bool) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().expect("a producer");
    for i in 0..count {
        let partition = (i as i32) % PARTITIONS;
        let (key, value) = (format!("key-{i}"), format!("letter-{i}"));
        let record = Record {
            tp: TopicPartition { topic: Arc::from(topic), partition },
            offset: i as i64,
            key: Some(Bytes::from(key.clone())),
            value: Some(Bytes::from(value.clone())),
            headers: vec![("trace".into(), Some(Bytes::from_static(b"t")))],
            timestamp_ms: None,
        };
        let mut headers = OwnedHeaders::new();
        for (name, v) in dead_letter_headers(&record, 3, "poison", ROUTE) {
            headers = headers.insert(Header { key: &name, value: v.as_deref() });
        }
        producer
            .send(BaseRecord::to(dlq).partition(partition).key(&key).payload(&value).headers(headers))
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.poll(Duration::ZERO);
        if alone {
            producer.flush(Duration::from_secs(10)).expect("the letter written");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("every letter written");
}

/// A route whose dead-letter topic holds `count` letters (see [`write_letters`]), on topics of
/// its own named after `prefix`: (bootstrap, origin topic, dead-letter topic, config, route).
async fn route_with_letters(
    kafka: &RealKafka,
    prefix: &str,
    count: usize,
    alone: bool,
) -> (String, String, String, Config, RouteConfig) {
    let bootstrap = kafka.bootstrap_servers().to_string();
    let topic = unique_group(prefix);
    let dlq = format!("{topic}.dlq");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    kafka.create_topic(&dlq, PARTITIONS, &[]).await;
    write_letters(&bootstrap, &topic, &dlq, count, alone);
    let (config, route) = route(&bootstrap, &unique_group("redrive"), &topic, &dlq);
    (bootstrap, topic, dlq, config, route)
}

/// A redrive of `selection`, as the control surface runs it (on a blocking thread).
async fn redrive(config: &Config, route: &RouteConfig, selection: Selection) -> Result<u64, DeadLetterError> {
    let (c, r) = (config.clone(), route.clone());
    tokio::task::spawn_blocking(move || dead_letters::redrive(&c, &r, selection, |_, _| {})).await.expect("joined")
}

/// The listing `dlq list` shows, at most `limit` letters.
async fn list(config: &Config, route: &RouteConfig, limit: usize) -> dead_letters::Listing {
    let (c, r) = (config.clone(), route.clone());
    tokio::task::spawn_blocking(move || dead_letters::list(&c, &r, limit)).await.expect("joined").expect("listed")
}

/// Every record of `topic` that carries the redrive header, as a reader of committed records
/// sees them: redriven-from per record.
fn redriven(bootstrap: &str, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_group("redrive-check"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a reader");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        ends.insert(p, high);
    }
    consumer.assign(&tpl).expect("assigned");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "{topic} read to its end within 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(m) => {
                let m = m.expect("a record");
                let from = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == HEADER_REDRIVEN_FROM).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                out.extend(from);
            }
            None => {
                let positions = consumer.position().expect("positions");
                let done = ends.iter().all(|(p, end)| {
                    positions
                        .find_partition(topic, *p)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(at) if at >= *end))
                });
                if done {
                    return out;
                }
            }
        }
    }
}

fn duplicates(values: &[String]) -> usize {
    let distinct: std::collections::HashSet<&String> = values.iter().collect();
    values.len() - distinct.len()
}

/// What Kafka does to the committed offsets of a group with no members after
/// `offsets.retention.minutes` (7 days by default), done at once.
async fn expire_group(bootstrap: &str, group: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("an admin client");
    // No such group is fine: the ledger does not live in one.
    let _ = admin.delete_groups(&[group], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_outlives_expired_group_offsets_and_holds_any_number_of_scattered_letters() {
    let Some(kafka) = RealKafka::shared() else { return };
    const LETTERS: usize = 3_000;
    let (bootstrap, topic, dlq, config, route) = route_with_letters(&kafka, "redrive-origin", LETTERS, false).await;

    // Every third letter by name: a thousand ranges of one, far past the 4 KiB Kafka allows a
    // commit's metadata.
    let scattered: Vec<(i32, i64)> =
        (0..PARTITIONS).flat_map(|p| (0..(LETTERS as i64 / 2)).step_by(3).map(move |o| (p, o))).collect();
    let first = redrive(&config, &route, Selection::Letters(scattered.clone()))
        .await
        .expect("the scattered letters are redriven");
    assert_eq!(first, scattered.len() as u64);
    let listing = list(&config, &route, 10).await;
    assert_eq!((listing.total, listing.redriven), (LETTERS as u64, scattered.len() as u64), "every one is recorded");
    assert!(listing.letters.iter().any(|l| !l.redriven) && listing.letters.first().is_some_and(|l| !l.redriven));

    expire_group(&bootstrap, &dead_letters::ledger_group(&config, &route)).await;

    let rest = redrive(&config, &route, Selection::All).await.expect("the rest is redriven");
    assert_eq!(rest, (LETTERS - scattered.len()) as u64, "only what was not redriven already goes back");

    match redrive(&config, &route, Selection::All).await {
        Err(DeadLetterError::AlreadyRedriven(why)) => {
            assert!(why.contains(&format!("the {LETTERS} letter(s) in {dlq} were redriven already")), "{why}")
        }
        other => panic!("a second redrive of everything is refused, got {other:?}"),
    }
    let back = redriven(&bootstrap, &topic);
    figure(format!("redrive ledger: {} letters back, {} duplicates", back.len(), duplicates(&back)));
    assert_eq!((back.len(), duplicates(&back)), (LETTERS, 0), "each letter went back once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_redrives_of_one_route_at_once_put_each_letter_back_once() {
    let Some(kafka) = RealKafka::shared() else { return };
    const LETTERS: usize = 3_000;
    let (bootstrap, topic, _, config, route) = route_with_letters(&kafka, "redrive-race", LETTERS, false).await;

    // Replica A stops after its first step until replica B's redrive has begun (B fenced A,
    // then read the ledger); then A goes on. B starts once A has a step behind it.
    let (a_stepped, a_has_stepped) = mpsc::channel::<()>();
    let (b_started, b_has_started) = mpsc::channel::<()>();
    let (c, r) = (config.clone(), route.clone());
    let a = std::thread::spawn(move || {
        let mut waited = false;
        dead_letters::redrive(&c, &r, Selection::All, |done, _| {
            if done > 0 && !waited {
                waited = true;
                let _ = a_stepped.send(());
                let _ = b_has_started.recv_timeout(Duration::from_secs(60));
            }
        })
    });
    let (c, r) = (config.clone(), route.clone());
    let b = std::thread::spawn(move || {
        let _ = a_has_stepped.recv_timeout(Duration::from_secs(60));
        let mut told = false;
        dead_letters::redrive(&c, &r, Selection::All, |_, _| {
            if !told {
                told = true;
                let _ = b_started.send(());
            }
        })
    });
    let a = a.join().expect("replica A's redrive ends");
    let b = b.join().expect("replica B's redrive ends");
    let back = redriven(&bootstrap, &topic);
    figure(format!(
        "two redrives at once: A {a:?}, B {b:?}; {} letters back, {} duplicates",
        back.len(),
        duplicates(&back)
    ));
    assert_eq!((back.len(), duplicates(&back)), (LETTERS, 0), "each letter went back once");
    match a {
        Err(DeadLetterError::Superseded(why)) => {
            assert!(
                why.contains("another redrive of route `orders` started") && why.contains("after 500 letter(s)"),
                "{why}"
            )
        }
        other => panic!("replica A is told that B took over, got {other:?}"),
    }
    assert_eq!(b.expect("the later redrive finishes"), (LETTERS - 500) as u64, "B took what A had not done");
    let listing = list(&config, &route, 10).await;
    assert_eq!((listing.total, listing.redriven, listing.letters.len()), (LETTERS as u64, LETTERS as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_topic_that_takes_longer_than_ten_seconds_to_read_is_listed_and_redriven() {
    let Some(kafka) = RealKafka::shared() else { return };
    const LETTERS: usize = 30;
    let (bootstrap, topic, _, mut config, _) = route_with_letters(&kafka, "redrive-slow", LETTERS, true).await;
    // A slow read, as of a large topic: the broker answers each fetch after 500 ms with one
    // batch (one letter) per partition.
    for (key, value) in
        [("fetch.min.bytes", "100000000"), ("fetch.wait.max.ms", "500"), ("max.partition.fetch.bytes", "1")]
    {
        config.kafka.properties.insert(key.into(), value.into());
    }
    let route = config.routes[0].clone();

    let started = std::time::Instant::now();
    let listing = list(&config, &route, 5).await;
    let listed_in = started.elapsed();
    assert_eq!((listing.total, listing.redriven, listing.letters.len()), (LETTERS as u64, 0, 5));
    let started = std::time::Instant::now();
    let count = redrive(&config, &route, Selection::All).await.expect("a slow read is no failure");
    figure(format!("slow dead-letter topic: listed in {listed_in:?}, {count} redriven in {:?}", started.elapsed()));
    assert_eq!(count, LETTERS as u64);
    assert!(listed_in > Duration::from_secs(10), "the read took longer than the old 10 s deadline: {listed_in:?}");
    assert_eq!(redriven(&bootstrap, &topic).len(), LETTERS);
}
