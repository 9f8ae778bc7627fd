//! Conformance on a real Apache Kafka broker (one KRaft node, see `support::real_kafka`), not
//! librdkafka's mock: the core loop, every route kind over every codec, transactional topics (aborted records and the
//! transaction markers occupy offsets that are never delivered) and compacted topics (gaps in
//! the offsets). Every test ends with the route group's committed offsets equal to each
//! partition's end as the broker reports it, and nothing lost of what an independent producer
//! wrote. Skipped with a note when the broker's jars are missing (`.ci/setup` fetches them);
//! in CI their absence fails.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::dedup::DedupConfig;
use fanout_gateway::config::{Config, DeliveryMode};
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use support::real_kafka::{RealKafka, SCRAM_PASSWORD};
use support::*;

/// The route over `topic`, on the real broker, with quick commits.
fn route_config(bootstrap: &str, group: &str, topic: &str) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[topic]);
    c.kafka.commit_interval_ms = 100;
    c.server.shutdown_grace_ms = 10_000;
    // Kafka's smallest allowed session (group.min.session.timeout.ms): a quick handover.
    c.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    c.kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    // librdkafka's default, said here because the test depends on it: aborted records are
    // never handed to the gateway.
    c.kafka.properties.insert("isolation.level".into(), "read_committed".into());
    c
}

/// A topic name no other test uses.
fn unique_topic(prefix: &str) -> String {
    unique_group(prefix)
}

/// A gateway with one route over `topic` (of `partitions`) and one subscriber that acks everything: what it
/// received once `expected` all arrived and `quiet` passed, after the route's commits reached
/// every partition's end.
async fn deliver_all(
    kafka: &RealKafka,
    group: &str,
    topic: &str,
    partitions: i32,
    expected: &HashSet<String>,
    quiet: Duration,
) -> Vec<String> {
    let run = async {
        let gw = start_gateway(route_config(kafka.bootstrap_servers(), group, topic)).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, expected, quiet).await;
        commits_reach_the_end(kafka, group, topic, partitions).await;
        drop(sub);
        gw.shutdown().await;
        got
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time")
}

/// Receives and acks until every id in `expected` has arrived, then for `quiet` more (what
/// else comes is returned too); each delivery counted once per arrival.
async fn receive_all(sub: &mut Subscription, expected: &HashSet<String>, quiet: Duration) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let ids: Vec<String> = next_batch(sub).await.iter().map(stream::id_of).collect();
        sub.ack(ids.clone()).await.expect("acks sent");
        seen.extend(ids.iter().cloned());
        got.extend(ids);
    }
    while let Ok(Ok(Some(batch))) = tokio::time::timeout(quiet, sub.next()).await {
        let ids: Vec<String> = batch.iter().map(stream::id_of).collect();
        sub.ack(ids.clone()).await.expect("acks sent");
        got.extend(ids);
    }
    got
}

/// Ids delivered more than once.
fn duplicates(got: &[String]) -> usize {
    got.len() - got.iter().collect::<HashSet<_>>().len()
}

/// Waits until the group's commits reach each partition's end; panics naming the partitions
/// that did not.
async fn commits_reach_the_end(kafka: &RealKafka, group: &str, topic: &str, partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = kafka.uncommitted(group, topic, partitions);
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the route's commits did not reach the partitions' ends in 30 s: (partition, committed, end) {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_is_delivered_and_commits_reach_each_partitions_end() {
    const MESSAGES: usize = 20_000;
    const PARTITIONS: i32 = 4;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let started = Instant::now();
    let topic = unique_topic("core");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 1_000).await;
    let expected: HashSet<String> = produced.iter().cloned().collect();
    let group = unique_group("real-core");

    let got = deliver_all(&kafka, &group, &topic, PARTITIONS, &expected, Duration::from_millis(500)).await;
    let lost = expected.iter().filter(|id| !got.contains(id)).count();
    figure(format!(
        "core loop on Kafka: {MESSAGES} produced, {} delivered, lost={lost}, duplicates={}, {:.1} s",
        got.len(),
        duplicates(&got),
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(lost, 0, "every message produced was delivered");
    assert!(got.iter().all(|id| expected.contains(id)), "nothing delivered that was not produced");
}

/// What a transactional run wrote: committed and aborted record ids.
struct Transactions {
    committed: HashSet<String>,
    aborted: HashSet<String>,
}

/// Two transactional producers with their transactions open at the same time, one committing
/// where the other aborts, so aborted records lie between committed ones in every partition;
/// every third round the roles swap. Ends with no transaction open.
fn produce_transactions(bootstrap: &str, topic: &str, rounds: usize, per_transaction: usize) -> Transactions {
    let producer = |id: &str| -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("{topic}-{id}"))
            .set("linger.ms", "5")
            .create()
            .expect("transactional producer")
    };
    let (a, b) = (producer("a"), producer("b"));
    for p in [&a, &b] {
        p.init_transactions(Duration::from_secs(30)).expect("transactions initialised");
    }
    let mut out = Transactions { committed: HashSet::new(), aborted: HashSet::new() };
    for round in 0..rounds {
        for p in [&a, &b] {
            p.begin_transaction().expect("transaction begins");
        }
        let mut sent: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (n, p) in [&a, &b].into_iter().enumerate() {
            let futures: Vec<_> = (0..per_transaction)
                .map(|i| {
                    let key = format!("key-{i}");
                    let value = format!("round {round} producer {n} record {i}");
                    p.send_result(FutureRecord::to(topic).key(&key).payload(&value)).expect("enqueue")
                })
                .collect();
            for f in futures {
                let d = futures::executor::block_on(f).expect("delivered").expect("delivered");
                sent[n].push(format!("{topic}/{}/{}", d.partition, d.offset));
            }
        }
        // Producer a commits and b aborts, except every third round.
        let a_commits = round % 3 != 2;
        for (n, p) in [&a, &b].into_iter().enumerate() {
            let commits = (n == 0) == a_commits;
            let ids = std::mem::take(&mut sent[n]);
            if commits {
                p.commit_transaction(Duration::from_secs(30)).expect("transaction commits");
                out.committed.extend(ids);
            } else {
                p.abort_transaction(Duration::from_secs(30)).expect("transaction aborts");
                out.aborted.extend(ids);
            }
        }
    }
    out
}

// librdkafka steps over the transaction markers without handing them out: a route that
// committed one past its last record would stay a marker or two short of the end, its lag
// never 0. The consumer thread reports its positions and the tracker steps over them
// (`PartitionTracker::reached`). Failed before that (committed = end - 2 on every partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactional_topics_deliver_committed_records_only_and_commits_step_over_markers() {
    const PARTITIONS: i32 = 4;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let started = Instant::now();
    let topic = unique_topic("transactions");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let (bootstrap, t) = (kafka.bootstrap_servers().to_string(), topic.clone());
    let written = tokio::task::spawn_blocking(move || produce_transactions(&bootstrap, &t, 12, 100))
        .await
        .expect("transactions produced");
    let group = unique_group("real-transactions");

    let got = deliver_all(&kafka, &group, &topic, PARTITIONS, &written.committed, Duration::from_secs(2)).await;
    let aborted_delivered: Vec<&String> = got.iter().filter(|id| written.aborted.contains(*id)).collect();
    assert!(
        aborted_delivered.is_empty(),
        "aborted records were delivered: {:?}",
        &aborted_delivered[..aborted_delivered.len().min(10)]
    );
    let lost = written.committed.iter().filter(|id| !got.contains(id)).count();
    figure(format!(
        "transactions on Kafka: {} committed, {} aborted, {} delivered, lost={lost}, duplicates={}, {:.1} s",
        written.committed.len(),
        written.aborted.len(),
        got.len(),
        duplicates(&got),
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(lost, 0, "every committed record was delivered");
}

/// The records a plain reader finds in `topic` now, by id.
fn records_in(bootstrap: &str, topic: &str, partitions: i32) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_group("scan"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("scanner");
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition added");
    }
    consumer.assign(&tpl).expect("assigned");
    let mut found = BTreeSet::new();
    let mut done = vec![false; partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(30);
    for (p, end) in ends.iter().enumerate() {
        done[p] = *end == 0;
    }
    while !done.iter().all(|d| *d) {
        assert!(Instant::now() < deadline, "scan of {topic} did not finish");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            found.insert(format!("{topic}/{}/{}", m.partition(), m.offset()));
            if m.offset() + 1 >= ends[m.partition() as usize] {
                done[m.partition() as usize] = true;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compacted_topics_with_gaps_in_their_offsets_are_committed_to_the_end() {
    const PARTITIONS: i32 = 2;
    const MESSAGES: usize = 4_000;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let started = Instant::now();
    let topic = unique_topic("compacted");
    let compact = [
        ("cleanup.policy", "compact"),
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("min.compaction.lag.ms", "0"),
        ("delete.retention.ms", "100"),
    ];
    kafka.create_topic(&topic, PARTITIONS, &compact).await;
    // 40 keys written 100 times each: compaction keeps about the last of each key.
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 40).await;
    // A segment rolls on the first append after segment.ms: write once more, so the cleaner
    // may clean everything before it; wait until it has, and until a second look agrees.
    // Only the even keys are written again: the odd keys' last records stay where the last
    // round left them, between the even keys' superseded ones, so the survivors have gaps
    // between them and not only before the first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("producer");
    for k in (0..40).step_by(2) {
        let key = format!("key-{k}");
        producer
            .send(FutureRecord::to(&topic).key(&key).payload("last"), Duration::from_secs(30))
            .await
            .expect("produced");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let survivors = loop {
        let (bootstrap, t) = (kafka.bootstrap_servers().to_string(), topic.clone());
        let first = tokio::task::spawn_blocking(move || records_in(&bootstrap, &t, PARTITIONS)).await.expect("scan");
        if first.len() < MESSAGES / 2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (bootstrap, t) = (kafka.bootstrap_servers().to_string(), topic.clone());
            let again =
                tokio::task::spawn_blocking(move || records_in(&bootstrap, &t, PARTITIONS)).await.expect("scan");
            if again == first {
                break first;
            }
        }
        assert!(Instant::now() < deadline, "the log cleaner did not compact {topic} in 60 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let gaps = gaps_between(&survivors);
    assert!(gaps > 0, "compaction left gaps between the records that stay: {survivors:?}");
    let expected: HashSet<String> = survivors.iter().cloned().collect();
    let group = unique_group("real-compacted");

    let got = deliver_all(&kafka, &group, &topic, PARTITIONS, &expected, Duration::from_millis(500)).await;
    let lost = expected.iter().filter(|id| !got.contains(id)).count();
    figure(format!(
        "compacted topic on Kafka: {} written, {} left after compaction with {gaps} gaps between them, {} delivered, \
         lost={lost}, duplicates={}, {:.1} s",
        produced.len() + 20,
        survivors.len(),
        got.len(),
        duplicates(&got),
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(lost, 0, "every record the cleaner left was delivered");
}

/// How many times two records that follow each other in a partition among `ids`
/// (`topic/partition/offset`) are not at neighbouring offsets.
fn gaps_between(ids: &BTreeSet<String>) -> usize {
    let mut offsets: Vec<(i32, i64)> = ids
        .iter()
        .filter_map(|id| {
            let mut parts = id.rsplit('/');
            let offset = parts.next()?.parse().ok()?;
            Some((parts.next()?.parse().ok()?, offset))
        })
        .collect();
    offsets.sort();
    offsets.windows(2).filter(|w| w[0].0 == w[1].0 && w[1].1 > w[0].1 + 1).count()
}

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

/// What [`produce_every_codec`] wrote, by id (`topic/partition/offset`).
struct Written {
    all: HashSet<String>,
    /// Records written again with an idempotency key already written: what a producer's retry
    /// without idempotence leaves, and what an effectively-once route must not deliver.
    again: HashSet<String>,
}

/// `per_codec` records for each codec, each compressed as its producer's `compression.type`
/// says and carrying an `idempotency-key` header (effectively-once routes key on it), then one
/// in ten of them a second time with the same idempotency key.
async fn produce_every_codec(bootstrap: &str, topic: &str, per_codec: usize) -> Written {
    let mut written = Written { all: HashSet::new(), again: HashSet::new() };
    for codec in CODECS {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("compression.type", codec)
            // Batches, so the codec has something to compress.
            .set("linger.ms", "20")
            .create()
            .unwrap_or_else(|e| panic!("a producer with compression.type={codec}: {e}"));
        let copies = (0..per_codec / 10).map(|i| (i * 10, true));
        let mut sends = Vec::with_capacity(per_codec + per_codec / 10);
        for (i, copy) in (0..per_codec).map(|i| (i, false)).chain(copies) {
            let key = format!("{codec}-{}", i % 50);
            let value = format!("{codec} message {i} {}", "compressible ".repeat(8));
            let idempotency = format!("{codec}-{i}");
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header { key: "idempotency-key", value: Some(idempotency.as_bytes()) });
            let record = FutureRecord::to(topic).key(&key).payload(&value).headers(headers);
            sends.push((producer.send_result(record).expect("enqueued"), copy));
        }
        for (send, copy) in sends {
            let d = send.await.expect("delivered").unwrap_or_else(|(e, _)| panic!("{codec}: {e}"));
            let id = format!("{topic}/{}/{}", d.partition, d.offset);
            if copy {
                written.again.insert(id.clone());
            }
            written.all.insert(id);
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_kind_reads_every_codec_and_commits_to_the_end() {
    const PARTITIONS: i32 = 4;
    const PER_CODEC: usize = 1_000;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("kinds");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let written = produce_every_codec(kafka.bootstrap_servers(), &topic, PER_CODEC).await;
    assert_eq!(written.all.len(), CODECS.len() * (PER_CODEC + PER_CODEC / 10));
    // What each route kind must deliver: every record, but an effectively-once route not the
    // records written again with an idempotency key it has seen.
    let expected_of = |route: &str| -> HashSet<String> {
        match route {
            "effectively-once" => written.all.difference(&written.again).cloned().collect(),
            _ => written.all.clone(),
        }
    };

    // One gateway, three independent routes over the same topic, one of each kind.
    let mut config = route_config(kafka.bootstrap_servers(), &unique_group("real-kinds"), &topic);
    let template = config.routes[0].clone();
    config.routes.clear();
    for (name, delivery) in [
        ("at-least-once", DeliveryMode::AtLeastOnce),
        ("at-most-once", DeliveryMode::AtMostOnce),
        ("effectively-once", DeliveryMode::EffectivelyOnce),
    ] {
        let mut route = template.clone();
        route.name = name.to_string();
        // Each route its own group: `<kafka.group_id>.<route>`.
        route.group_id = None;
        route.delivery = delivery;
        if delivery == DeliveryMode::EffectivelyOnce {
            route.dedup = Some(DedupConfig::default());
        }
        config.routes.push(route);
    }
    config.validate().expect("valid config");
    let groups: Vec<(String, String)> =
        config.routes.iter().map(|r| (r.name.clone(), r.group(&config.kafka))).collect();

    let run = async {
        let gw = start_gateway(config).await;
        let mut outcomes = Vec::new();
        for (route, group) in &groups {
            let mut sub =
                Subscription::connect(&gw.endpoint(), stream::hello(route, "a", 500)).await.expect("subscribes");
            let got = receive_all(&mut sub, &expected_of(route), Duration::from_millis(500)).await;
            commits_reach_the_end(&kafka, group, &topic, PARTITIONS).await;
            drop(sub);
            outcomes.push((route.clone(), got));
        }
        gw.shutdown().await;
        outcomes
    };
    let outcomes = tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
    for (route, got) in outcomes {
        let expected = expected_of(&route);
        let lost = expected.iter().filter(|id| !got.contains(id)).count();
        let twice = duplicates(&got);
        let unexpected: Vec<&String> = got.iter().filter(|id| !expected.contains(*id)).collect();
        figure(format!(
            "{route} on Kafka, every codec: {} produced ({} of them again under a seen idempotency key), {} \
             delivered, lost={lost}, duplicates={twice}, delivered but not to be={}",
            written.all.len(),
            written.again.len(),
            got.len(),
            unexpected.len()
        ));
        assert_eq!(lost, 0, "{route}: every message of every codec was delivered");
        assert!(
            unexpected.is_empty(),
            "{route}: nothing delivered that was not produced, or (effectively-once) was written again: {:?}",
            &unexpected[..unexpected.len().min(5)]
        );
        if route != "at-least-once" {
            assert_eq!(twice, 0, "{route}: nothing delivered twice");
        }
    }
}

/// `route_config` through the broker's SASL_SSL listener (see [`RealKafka::over_sasl_ssl`]):
/// SCRAM-SHA-512 over TLS, the broker's certificate checked against the test's CA, the
/// password read from a secret file as a deployment mounts it.
fn sasl_ssl_config(kafka: &RealKafka, group: &str, topic: &str, password_file: &std::path::Path) -> Config {
    kafka.over_sasl_ssl(route_config(kafka.sasl_ssl(), group, topic), password_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_reads_and_commits_through_a_sasl_ssl_listener() {
    const MESSAGES: usize = 2_000;
    const PARTITIONS: i32 = 2;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("sasl");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 100).await;
    let expected: HashSet<String> = produced.iter().cloned().collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, format!("{SCRAM_PASSWORD}\n")).expect("password file");
    let group = unique_group("real-sasl");

    let run = async {
        let gw = start_gateway(sasl_ssl_config(&kafka, &group, &topic, &password)).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, &expected, Duration::from_millis(300)).await;
        // Read through the plaintext listener: the same broker, an independent client.
        commits_reach_the_end(&kafka, &group, &topic, PARTITIONS).await;
        drop(sub);
        gw.shutdown().await;
        got
    };
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
    let lost = expected.iter().filter(|id| !got.contains(id)).count();
    figure(format!(
        "SASL_SSL (SCRAM-SHA-512) on Kafka: {MESSAGES} produced, {} delivered, lost={lost}, duplicates={}, \
         committed to the end, {:.1} s",
        got.len(),
        duplicates(&got),
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(lost, 0, "every message read over SASL_SSL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_scram_password_is_named_as_a_sasl_failure_and_the_replica_is_not_ready() {
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("sasl-wrong");
    kafka.create_topic(&topic, 1, &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, "not-the-password\n").expect("password file");

    let run = async {
        let gw = start_gateway(sasl_ssl_config(&kafka, &unique_group("real-sasl-wrong"), &topic, &password)).await;
        let stats = gw.stats();
        let deadline = Instant::now() + Duration::from_secs(30);
        let said = loop {
            if let Some(error) = stats.last_kafka_error.read().clone() {
                break error;
            }
            assert!(Instant::now() < deadline, "no Kafka error recorded in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            said.starts_with("SASL authentication with kafka at") && said.contains("sasl.password"),
            "the status names the failure and what to check: {said}"
        );
        assert!(!said.contains(SCRAM_PASSWORD) && !said.contains("not-the-password"), "no password in it: {said}");
        let (code, body) = http_get(gw.admin_addr(), "/readyz").await;
        figure(format!("wrong SCRAM password on Kafka: status {said:?}; /readyz {code} {body:?}"));
        assert_eq!(code, 503, "not ready while Kafka refuses it: {body}");
        assert!(body.contains("SASL authentication with kafka at"), "/readyz says why: {body}");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_out_of_order_fill_the_commit_metadata_and_kafka_takes_every_commit() {
    // Every other message acked while the first is held: about 2,500 separate acked ranges
    // above the commit point, far more than 4 KiB of metadata could name.
    const MESSAGES: usize = 5_000;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("metadata");
    kafka.create_topic(&topic, 1, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 100).await;
    let expected: HashSet<String> = produced.iter().cloned().collect();
    let group = unique_group("real-metadata");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    config.routes[0].max_in_flight = 10_000;

    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10_000)).await.expect("subscribes");
        let mut held: Vec<String> = Vec::new();
        let mut got: HashSet<String> = HashSet::new();
        while got.len() < MESSAGES {
            for id in next_batch(&mut sub).await.iter().map(stream::id_of) {
                got.insert(id.clone());
                held.push(id);
            }
        }
        let offset = |id: &String| id.rsplit('/').next().and_then(|o| o.parse::<i64>().ok()).expect("an offset");
        let (odd, even): (Vec<String>, Vec<String>) = held.into_iter().partition(|id| offset(id) % 2 == 1);
        sub.ack(odd).await.expect("acks sent");
        // Commits every 100 ms carry what fits of the ranges; each must be taken.
        let deadline = Instant::now() + Duration::from_secs(20);
        let metadata = loop {
            if let Some((0, metadata)) = kafka.committed_with_metadata(&group, &topic, 1).remove(&0) {
                if metadata.len() > 3_000 {
                    break metadata;
                }
            }
            assert!(Instant::now() < deadline, "no commit with the acked ranges in its metadata within 20 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            Stats::get(&stats.commit_failures),
            0,
            "Kafka refused no commit (metadata of {} bytes)",
            metadata.len()
        );
        assert!(metadata.len() <= 4_096, "within Kafka's offset.metadata.max.bytes: {}", metadata.len());
        sub.ack(even).await.expect("acks sent");
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        assert_eq!(Stats::get(&stats.commit_failures), 0, "no commit failed");
        drop(sub);
        gw.shutdown().await;
        (got, metadata.len())
    };
    let (got, metadata) = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
    figure(format!(
        "out-of-order acks on Kafka: {} delivered, commit metadata {metadata} bytes, no commit refused",
        got.len()
    ));
    assert_eq!(got, expected, "every message delivered once");
}

/// The gateway's `name{route,topic,partition}` series for `topic`, per partition.
fn partition_gauge(samples: &std::collections::HashMap<String, f64>, name: &str, topic: &str) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = samples
        .iter()
        .filter_map(|(series, value)| {
            let labels = series.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')?;
            if !labels.contains(&format!("route=\"{ROUTE}\"")) || !labels.contains(&format!("topic=\"{topic}\"")) {
                return None;
            }
            let partition = labels.split("partition=\"").nth(1)?.split('"').next()?.parse().ok()?;
            Some((partition, *value as i64))
        })
        .collect();
    out.sort();
    out
}

/// Waits until the gateway's lag, high-watermark and last-stable-offset series of every
/// partition equal what Kafka itself says (its high watermarks, its ends to a `read_committed`
/// reader, the group's committed offsets), and returns the lag.
async fn lag_agrees_with_kafka(
    kafka: &RealKafka,
    admin: std::net::SocketAddr,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (stable, high) = (kafka.end_offsets(topic, partitions), kafka.high_watermarks(topic, partitions));
        let committed = kafka.committed(group, topic, partitions);
        let kafka_lag: Vec<(i32, i64)> =
            (0..partitions).map(|p| (p, stable[&p] - committed.get(&p).copied().unwrap_or(0))).collect();
        let listed = |ends: &std::collections::HashMap<i32, i64>| -> Vec<(i32, i64)> {
            (0..partitions).map(|p| (p, ends[&p])).collect()
        };
        let (kafka_stable, kafka_high) = (listed(&stable), listed(&high));
        let (_, samples) = scrape(admin).await;
        let lag = partition_gauge(&samples, "fanout_partition_lag", topic);
        let marks = partition_gauge(&samples, "fanout_partition_high_watermark", topic);
        let stable_marks = partition_gauge(&samples, "fanout_partition_last_stable_offset", topic);
        if lag == kafka_lag && marks == kafka_high && stable_marks == kafka_stable {
            return lag;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's view never matched Kafka's in 20 s: lag {lag:?} vs {kafka_lag:?}, high watermarks \
             {marks:?} vs {kafka_high:?}, last stable offsets {stable_marks:?} vs {kafka_stable:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_and_high_watermark_metrics_agree_with_kafkas_own_view_of_the_group() {
    const MESSAGES: usize = 3_000;
    const PARTITIONS: i32 = 3;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("lag");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 300).await;
    let group = unique_group("real-lag");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    // The consumer's statistics (the high watermarks) every 500 ms.
    config.kafka.properties.insert("statistics.interval.ms".into(), "500".into());
    config.routes[0].max_in_flight = 5_000;

    let run = async {
        let gw = start_gateway(config).await;
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 5_000)).await.expect("subscribes");
        // Everything delivered, nothing acked: the whole backlog is lag, on both sides.
        let mut held = Vec::new();
        while held.len() < MESSAGES {
            held.extend(next_batch(&mut sub).await.iter().map(stream::id_of));
        }
        let before = lag_agrees_with_kafka(&kafka, gw.admin_addr(), &group, &topic, PARTITIONS).await;
        sub.ack(held).await.expect("acks sent");
        commits_reach_the_end(&kafka, &group, &topic, PARTITIONS).await;
        let after = lag_agrees_with_kafka(&kafka, gw.admin_addr(), &group, &topic, PARTITIONS).await;
        drop(sub);
        gw.shutdown().await;
        (before, after)
    };
    let (before, after) = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
    assert_eq!(
        before.iter().map(|(_, lag)| lag).sum::<i64>(),
        produced.len() as i64,
        "un-acked, all of it is lag: {before:?}"
    );
    assert!(after.iter().all(|(_, lag)| *lag == 0), "acked and committed, no lag: {after:?}");
    figure(format!(
        "lag on Kafka: {} un-acked = lag {before:?} (partition, lag), as Kafka counts it; acked and committed: {after:?}",
        produced.len()
    ));
}

/// A transactional producer's transaction, left open: the records it wrote are not committed.
struct OpenTransaction {
    producer: FutureProducer,
    ids: HashSet<String>,
}

impl OpenTransaction {
    /// Opens a transaction and writes `count` records to partition 0 of `topic` in it.
    async fn write(bootstrap: &str, topic: &str, count: usize) -> OpenTransaction {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("{topic}-open"))
            .create()
            .expect("transactional producer");
        tokio::task::block_in_place(|| {
            producer.init_transactions(Duration::from_secs(30)).expect("transactions initialised");
            producer.begin_transaction().expect("transaction begins");
        });
        let mut ids = HashSet::new();
        for i in 0..count {
            let value = format!("in the open transaction {i}");
            let sent = producer
                .send(FutureRecord::<(), _>::to(topic).partition(0).payload(&value), Duration::from_secs(30))
                .await
                .expect("written in the transaction");
            ids.insert(format!("{topic}/{}/{}", sent.partition, sent.offset));
        }
        OpenTransaction { producer, ids }
    }

    fn commit(self) -> HashSet<String> {
        tokio::task::block_in_place(|| self.producer.commit_transaction(Duration::from_secs(30)))
            .expect("transaction commits");
        self.ids
    }
}

/// While a transaction is open, a `read_committed` route reads up to its first record (the
/// last stable offset) and no further, not even the plain records written after it. Lag counts
/// up to there: counted to the high watermark, a route that has committed everything it may
/// read would show the open transaction and all behind it as lag, and page someone about a
/// producer. Before the gateway took the last stable offset, lag was [(0, 150)] here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_counts_up_to_the_last_stable_offset_while_a_transaction_is_open() {
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("open-transaction");
    kafka.create_topic(&topic, 1, &[]).await;
    let bootstrap = kafka.bootstrap_servers();
    let readable: HashSet<String> = produce_to(bootstrap, &topic, 100, 10).await.into_iter().collect();
    let open = OpenTransaction::write(bootstrap, &topic, 50).await;
    let behind: HashSet<String> = produce_to(bootstrap, &topic, 100, 10).await.into_iter().collect();
    let group = unique_group("real-open-transaction");
    let mut config = route_config(bootstrap, &group, &topic);
    config.kafka.properties.insert("statistics.interval.ms".into(), "500".into());

    let run = async {
        let gw = start_gateway(config).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, &readable, Duration::from_secs(2)).await;
        let early: Vec<&String> = got.iter().filter(|id| !readable.contains(*id)).collect();
        assert!(early.is_empty(), "records at or past the open transaction were delivered: {early:?}");
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        let (stable, high) = (kafka.end_offsets(&topic, 1)[&0], kafka.high_watermarks(&topic, 1)[&0]);
        assert_eq!(
            (stable, high),
            (100, 250),
            "Kafka holds the transaction open: (last stable offset, high watermark)"
        );
        let open_lag = lag_agrees_with_kafka(&kafka, gw.admin_addr(), &group, &topic, 1).await;
        assert_eq!(open_lag, vec![(0, 0)], "everything readable was committed: no lag");

        let written = open.commit();
        let rest: HashSet<String> = written.union(&behind).cloned().collect();
        let more = receive_all(&mut sub, &rest, Duration::from_millis(500)).await;
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        let closed_lag = lag_agrees_with_kafka(&kafka, gw.admin_addr(), &group, &topic, 1).await;
        drop(sub);
        gw.shutdown().await;
        figure(format!(
            "open transaction on Kafka: last stable offset {stable}, high watermark {high}; lag while open \
             {open_lag:?}, after the commit {closed_lag:?}; {} + {} delivered, duplicates={}",
            got.len(),
            more.len(),
            duplicates(&[got.clone(), more.clone()].concat())
        ));
        assert_eq!(closed_lag, vec![(0, 0)]);
        assert_eq!(more.len(), rest.len(), "the transaction's records and those behind it, once each");
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_added_to_a_routed_topic_are_delivered_without_a_restart() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("grows");
    kafka.create_topic(&topic, 2, &[]).await;
    let group = unique_group("real-grows");
    let run = async {
        let gw = start_gateway(route_config(kafka.bootstrap_servers(), &group, &topic)).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let before: HashSet<String> =
            produce_to(kafka.bootstrap_servers(), &topic, 100, 10).await.into_iter().collect();
        receive_all(&mut sub, &before, Duration::from_millis(100)).await;

        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("admin");
        let grown = admin
            .create_partitions(&[NewPartitions::new(&topic, 4)], &AdminOptions::new())
            .await
            .expect("create partitions");
        assert!(grown.iter().all(Result::is_ok), "{grown:?}");
        let added_at = Instant::now();
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("producer");
        let mut after = HashSet::new();
        for i in 0..100 {
            let partition = 2 + i % 2;
            let payload = format!("new-{i}");
            let sent = producer
                .send(FutureRecord::<(), _>::to(&topic).partition(partition).payload(&payload), Duration::from_secs(30))
                .await
                .expect("produced to a new partition");
            after.insert(format!("{topic}/{}/{}", sent.partition, sent.offset));
        }
        // Well inside librdkafka's default metadata refresh (5 min): the gateway asks every 10 s.
        let got =
            tokio::time::timeout(Duration::from_secs(40), receive_all(&mut sub, &after, Duration::from_millis(100)))
                .await
                .expect("the new partitions' records arrived within 40 s of their creation");
        figure(format!(
            "partitions added: the new partitions' {} records arrived {:?} after the partitions were added",
            after.len(),
            added_at.elapsed()
        ));
        assert!(after.iter().all(|id| got.contains(id)));
        commits_reach_the_end(&kafka, &group, &topic, 4).await;
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn letters_the_dead_letter_topic_refuses_as_they_are_go_without_the_part_at_fault() {
    use fanout_gateway::admin::dead_letters::Selection;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let (topic, dlq) = (unique_topic("letters"), unique_topic("letters-dlq"));
    kafka.create_topic(&topic, 1, &[]).await;
    // Smaller records, and younger timestamps, than the source topic takes.
    kafka.create_topic(&dlq, 1, &[("max.message.bytes", "3000"), ("message.timestamp.before.max.ms", "3600000")]).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("producer");
    let two_hours_ago = jiff::Timestamp::now().as_millisecond() - 2 * 3_600_000;
    let big = "x".repeat(2_950);
    for (key, value, timestamp) in
        [("big", big.as_str(), None), ("old", "old", Some(two_hours_ago)), ("fine", "fine", None)]
    {
        let mut record = FutureRecord::to(&topic).key(key).payload(value);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        producer.send(record, Duration::from_secs(30)).await.expect("produced");
    }
    let group = unique_group("real-letters");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    config.routes[0].dead_letter_topic = Some(dlq.clone());
    config.routes[0].retry.max_attempts = 1;
    let run = async {
        let gw = start_gateway(config).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10)).await.expect("subscribes");
        let mut nacked = 0;
        while nacked < 3 {
            for d in next_batch(&mut sub).await {
                sub.nack(stream::id_of(&d), "the service refuses it").await.expect("nack sent");
                nacked += 1;
            }
        }
        // Nothing holds the partition: every letter landed, so the route committed to the end.
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        let listing = gw.control().dead_letters(ROUTE, 10).await.expect("listing");
        let by_key = |k: &str| {
            listing.letters.iter().find(|l| l.key.as_deref() == Some(k.as_bytes())).cloned().expect("a letter")
        };
        assert_eq!(listing.letters.len(), 3, "{:?}", listing.letters);
        let (big, old, fine) = (by_key("big"), by_key("old"), by_key("fine"));
        assert_eq!((big.value, big.value_omitted), (None, Some(2_950)), "too large whole: sent without its value");
        assert_eq!(big.origin_offset, Some(0), "the original's place is on the letter");
        assert!(old.timestamp_ms.is_some_and(|ts| ts > two_hours_ago + 3_600_000), "given the time it was written");
        assert_eq!(old.value.as_deref(), Some(&b"old"[..]));
        assert_eq!((fine.value.as_deref(), fine.value_omitted), (Some(&b"fine"[..]), None), "the rest go whole");
        figure(format!(
            "letters the dead-letter topic refuses as they are, on Kafka: 3 nacked, {} letters landed (too large: \
             value omitted {:?}; too old: written at {:?}, {} ms after the original), committed to the end",
            listing.letters.len(),
            big.value_omitted,
            old.timestamp_ms,
            old.timestamp_ms.unwrap_or_default() - two_hours_ago
        ));
        let refused = gw.control().redrive(ROUTE, Selection::All, tokio::sync::mpsc::channel(8).0).await;
        let refused = refused.expect_err("a letter without its value is not redriven");
        assert!(refused.to_string().contains("carries no value"), "{refused}");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// A retry the retry topic refuses as too large (its `max.message.bytes` below the source
/// topic's, the gateway's headers added) is retried in place instead: delivered again as its
/// next attempt, and once acked its partition commits to the end. Before, it was produced
/// again and again and the partition's commits never passed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_too_large_for_the_retry_topic_is_retried_in_place_and_committed() {
    let Some(kafka) = RealKafka::shared() else { return };
    let (topic, retries) = (unique_topic("retried"), unique_topic("retried-retry"));
    kafka.create_topic(&topic, 1, &[]).await;
    kafka.create_topic(&retries, 1, &[("max.message.bytes", "3000")]).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("producer");
    let big = "x".repeat(2_950);
    for (key, value) in [("small", "small"), ("big", big.as_str()), ("after", "after")] {
        producer
            .send(FutureRecord::to(&topic).key(key).payload(value), Duration::from_secs(30))
            .await
            .expect("produced");
    }
    let group = unique_group("real-retried");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    config.routes[0].retry.retry_topic = Some(retries.clone());
    config.routes[0].retry.initial_backoff_ms = 200;
    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10)).await.expect("subscribes");
        // Each fails its first attempt and is acked at its second.
        let mut attempts: Vec<(String, u32)> = Vec::new();
        while attempts.iter().filter(|(_, a)| *a == 2).count() < 3 {
            for d in next_batch(&mut sub).await {
                let key = String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).into_owned();
                attempts.push((key, d.attempt));
                if d.attempt == 1 {
                    sub.nack(stream::id_of(&d), "not yet").await.expect("nack sent");
                } else {
                    sub.ack(vec![stream::id_of(&d)]).await.expect("ack sent");
                }
            }
        }
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        let mut seen = attempts.clone();
        seen.sort();
        let expected: Vec<(String, u32)> =
            ["after", "big", "small"].iter().flat_map(|k| [(k.to_string(), 1), (k.to_string(), 2)]).collect();
        figure(format!(
            "retry too large for the retry topic, on Kafka: deliveries (key, attempt) {attempts:?}; retried in place \
             {}, through the retry topic {}; committed to the end",
            Stats::get(&stats.retries_in_place),
            Stats::get(&stats.retried_via_topic)
        ));
        assert_eq!(seen, expected, "each delivered twice, as attempts 1 and 2");
        assert_eq!(Stats::get(&stats.retries_in_place), 1, "the big one was retried in place");
        assert_eq!(Stats::get(&stats.retried_via_topic), 2, "the others went through the retry topic");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("test finished in time");
}

/// The subscriber acks on in the background while fanoutctl waits for a replay, until told to
/// stop (however long a loaded machine takes to start the replay); what it received, with each
/// delivery's replay id (0 for live ones).
fn ack_in_background(
    mut sub: Subscription,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Vec<(String, u64)>>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let received = tokio::spawn(async move {
        let mut ids: Vec<(String, u64)> = Vec::new();
        loop {
            let batch = tokio::select! {
                batch = sub.next() => batch,
                _ = &mut stopped => break,
            };
            let Ok(Some(batch)) = batch else { break };
            ids.extend(batch.iter().map(|d| (stream::id_of(d), d.replay_id)));
            sub.ack(batch.iter().map(stream::id_of).collect()).await.expect("acks sent");
        }
        ids
    });
    (stop, received)
}

/// `config` with an admin token in a file of `dir`, which fanoutctl's changing calls need;
/// the file's path.
fn with_admin_token(config: &mut Config, dir: &std::path::Path) -> String {
    let token_file = dir.join("token");
    std::fs::write(&token_file, "replay-token").expect("token written");
    let token = token_file.display().to_string();
    config.server.admin_token_file = Some(token.clone());
    token
}

/// Writes `count` records to `topic` with the time `at` (milliseconds since the epoch, Kafka's
/// CreateTime); their ids.
async fn produce_at(bootstrap: &str, topic: &str, count: usize, at: i64) -> HashSet<String> {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().expect("producer");
    let mut ids = HashSet::new();
    for i in 0..count {
        let (key, value) = (format!("key-{}", i % 10), format!("written at {at}: {i}"));
        let sent = producer
            .send(FutureRecord::to(topic).key(&key).payload(&value).timestamp(at), Duration::from_secs(30))
            .await
            .expect("produced");
        ids.insert(format!("{topic}/{}/{}", sent.partition, sent.offset));
    }
    ids
}

/// A replay by time range: three batches written a minute, 40 s and 20 s ago (record times set
/// by the producer); a replay from 50 s to 30 s ago delivers the middle batch again, every
/// record of it and nothing else, marked as replayed, while the route's committed offsets stay
/// at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_by_time_range_delivers_that_range_again_and_nothing_else() {
    const PARTITIONS: i32 = 3;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("replay-times");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let bootstrap = kafka.bootstrap_servers();
    let (early, middle, late) = (
        produce_at(bootstrap, &topic, 200, now - 60_000).await,
        produce_at(bootstrap, &topic, 300, now - 40_000).await,
        produce_at(bootstrap, &topic, 200, now - 20_000).await,
    );
    let everything: HashSet<String> = early.iter().chain(&middle).chain(&late).cloned().collect();
    let group = unique_group("real-replay-times");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = route_config(bootstrap, &group, &topic);
    let token = with_admin_token(&mut config, dir.path());

    let run = async {
        let gw = start_gateway(config).await;
        let admin = gw.admin_addr().to_string();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        receive_all(&mut sub, &everything, Duration::from_millis(200)).await;
        commits_reach_the_end(&kafka, &group, &topic, PARTITIONS).await;
        let (stop, replayed) = ack_in_background(sub);
        let (from, to) = ((now - 50_000).to_string(), (now - 30_000).to_string());
        let started = Instant::now();
        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-time",
            &from,
            "--to-time",
            &to,
        ])
        .await;
        let took = started.elapsed();
        assert_eq!(code, 0, "{out}{err}");
        let _ = stop.send(());
        let replayed = replayed.await.expect("subscriber");
        let again: Vec<&String> = replayed.iter().filter(|(_, r)| *r > 0).map(|(id, _)| id).collect();
        let unique: HashSet<&String> = again.iter().copied().collect();
        let outside: Vec<&&String> = unique.iter().filter(|id| !middle.contains(**id)).collect();
        let missed = middle.iter().filter(|id| !unique.contains(id)).count();
        figure(format!(
            "replay by time range on Kafka: {} in {:.1} s; the range's {} records came again, missed {missed}, \
             duplicates {}, outside the range {}",
            out.trim(),
            took.as_secs_f64(),
            unique.len(),
            again.len() - unique.len(),
            outside.len()
        ));
        assert!(outside.is_empty(), "only the range came again: {:?}", &outside[..outside.len().min(5)]);
        assert_eq!(missed, 0, "every record of the range came again");
        assert!(out.contains(&format!("done, {} of {} record(s) settled", middle.len(), middle.len())), "{out}");
        assert!(kafka.uncommitted(&group, &topic, PARTITIONS).is_empty(), "committed offsets did not move back");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// A replay of a transactional topic, by offsets from the start and by a time past its last
/// record. Each partition's range ends at the partition's end, where the last transaction's
/// commit marker lies, which no reader is ever handed: the replay ends when the reader's
/// position has passed it. Before, the reader waited for a record at the marker until the
/// replay's stall limit (30 s) and the replay ended failed after delivering everything; and a
/// time past the last record timed out reading the marker's timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_of_a_transactional_topic_ends_done_with_its_committed_records() {
    const PARTITIONS: i32 = 2;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("replay-transactions");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let (bootstrap, t) = (kafka.bootstrap_servers().to_string(), topic.clone());
    let written = tokio::task::spawn_blocking(move || produce_transactions(&bootstrap, &t, 6, 50))
        .await
        .expect("transactions produced");
    // Later than every record and marker, and in the past when the replay asks.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_all = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let group = unique_group("real-replay-transactions");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    let token = with_admin_token(&mut config, dir.path());

    let run = async {
        let gw = start_gateway(config).await;
        let admin = gw.admin_addr().to_string();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        receive_all(&mut sub, &written.committed, Duration::from_millis(200)).await;
        commits_reach_the_end(&kafka, &group, &topic, PARTITIONS).await;
        let (stop, replayed) = ack_in_background(sub);

        let from: Vec<String> = (0..PARTITIONS).map(|p| format!("{topic}/{p}=0")).collect();
        let started = Instant::now();
        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-offsets",
            &from.join(","),
        ])
        .await;
        let took = started.elapsed();
        let n = written.committed.len();
        figure(format!("replay of a transactional topic: {} in {:.1} s", out.trim(), took.as_secs_f64()));
        assert_eq!(code, 0, "{out}{err}");
        // The total counts offsets, markers and aborted records included.
        assert!(out.contains(&format!("done, {n} of ")), "{out}");

        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-time",
            &after_all.to_string(),
        ])
        .await;
        figure(format!("replay from after the last record: {}", out.trim()));
        assert_eq!(code, 0, "a time past the last record is an empty replay, not an error: {out}{err}");
        assert!(out.contains("done, 0 of 0 record(s) settled"), "{out}");

        let _ = stop.send(());
        let replayed = replayed.await.expect("subscriber");
        let again: HashSet<&String> = replayed.iter().filter(|(_, r)| *r > 0).map(|(id, _)| id).collect();
        assert_eq!(again.len(), n, "every committed record came again");
        assert!(again.iter().all(|id| written.committed.contains(*id)), "nothing aborted replayed");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// A route whose dead-letter topic does not exist yet: its letters wait (their offsets stay
/// uncommitted, nothing is lost), the replica stays ready and `/readyz` and the log say which
/// topic refuses them and what to do, once per interval however many letters wait; once the
/// topic is created the letters land, each once, and the route commits to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn letters_for_a_missing_dead_letter_topic_wait_and_say_so_until_it_is_created() {
    const LETTERS: usize = 50;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let (topic, dlq) = (unique_topic("waiting"), unique_topic("waiting-dlq"));
    kafka.create_topic(&topic, 1, &[]).await;
    produce_to(kafka.bootstrap_servers(), &topic, LETTERS, 10).await;
    let group = unique_group("real-waiting");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    config.routes[0].dead_letter_topic = Some(dlq.clone());
    config.routes[0].retry.max_attempts = 1;
    // librdkafka fails a produce to a topic it cannot find after this long (30 s by default).
    config.kafka.properties.insert("topic.metadata.propagation.max.ms".into(), "1000".into());
    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 100)).await.expect("subscribes");
        let mut nacked = 0;
        while nacked < LETTERS {
            for d in next_batch(&mut sub).await {
                sub.nack(stream::id_of(&d), "the service refuses it").await.expect("nack sent");
                nacked += 1;
            }
        }
        let said = |body: &String| body.contains(&format!("cannot write letters to topic {dlq}: it does not exist"));
        let (code, body) = poll_until(
            Duration::from_secs(30),
            || async { http_get(gw.admin_addr(), "/readyz").await },
            |(_, b)| said(b),
        )
        .await;
        assert_eq!(code, 200, "the replica stays ready for its other routes: {body}");
        assert!(said(&body), "/readyz names the topic and why: {body}");
        assert!(!kafka.uncommitted(&group, &topic, 1).is_empty(), "waiting letters hold their offsets back");
        let failures = Stats::get(&stats.dead_letter_failures);

        kafka.create_topic(&dlq, 1, &[]).await;
        commits_reach_the_end(&kafka, &group, &topic, 1).await;
        let letters = records_in(kafka.bootstrap_servers(), &dlq, 1).len();
        let (_, body) = http_get(gw.admin_addr(), "/readyz").await;
        figure(format!(
            "missing dead-letter topic on Kafka: {failures} refused produce attempts before it was created, \
             {letters} letters in it after; /readyz now {body:?}"
        ));
        assert_eq!(letters, LETTERS, "every letter landed once the topic was there");
        assert_eq!(body.trim(), "ready", "nothing is said of the topic once it takes letters");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// The route over `topic` through the mutual-TLS listener: the CA, and the client certificate
/// unless `certificate` is false.
fn mtls_config(kafka: &RealKafka, group: &str, topic: &str, certificate: bool) -> Config {
    let mut c = route_config(kafka.ssl(), group, topic);
    let mut properties =
        vec![("security.protocol", "ssl".to_string()), ("ssl.ca.location", kafka.ca_file().display().to_string())];
    if certificate {
        let (cert, key) = kafka.client_certificate();
        properties.push(("ssl.certificate.location", cert.display().to_string()));
        properties.push(("ssl.key.location", key.display().to_string()));
    }
    for (key, value) in properties {
        c.kafka.properties.insert(key.into(), value);
    }
    c.validate().expect("valid config");
    c
}

/// A listener that speaks TLS only and requires the client's certificate (mutual TLS, no
/// SASL): the gateway reads and commits through it with its certificate, and without one it is
/// refused in the handshake, which the status names as a TLS failure with what to check while
/// the replica stays unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_reads_through_a_mutual_tls_listener_and_a_missing_certificate_is_named() {
    const MESSAGES: usize = 1_000;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_topic("mtls");
    kafka.create_topic(&topic, 2, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 100).await;
    let expected: HashSet<String> = produced.iter().cloned().collect();
    let group = unique_group("real-mtls");

    let run = async {
        let gw = start_gateway(mtls_config(&kafka, &group, &topic, true)).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, &expected, Duration::from_millis(300)).await;
        commits_reach_the_end(&kafka, &group, &topic, 2).await;
        let lost = expected.iter().filter(|id| !got.contains(id)).count();
        assert_eq!(lost, 0, "every message read over mutual TLS");
        drop(sub);
        gw.shutdown().await;

        let gw = start_gateway(mtls_config(&kafka, &unique_group("real-mtls-refused"), &topic, false)).await;
        let stats = gw.stats();
        let said =
            poll_until(Duration::from_secs(30), || async { stats.last_kafka_error.read().clone() }, Option::is_some)
                .await
                .expect("a Kafka error recorded within 30 s");
        let (code, body) = http_get(gw.admin_addr(), "/readyz").await;
        figure(format!(
            "mutual TLS on Kafka: {MESSAGES} read with a certificate; without one: {said:?}; /readyz {code}"
        ));
        assert!(
            said.starts_with("TLS with kafka at") && said.contains("ssl."),
            "named as TLS, with what to check: {said}"
        );
        assert_eq!(code, 503, "not ready while Kafka refuses it: {body}");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("test finished in time");
}
