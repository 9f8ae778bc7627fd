//! The route's offset commits against a real Apache Kafka broker whose limits refuse some of
//! them (a node of the test's own, see `support::real_kafka`). Kafka answers a commit
//! partition by partition: one refused partition must not hold back the others, and a
//! partition whose acked-range metadata is too much for the broker is committed without it
//! (the metadata only spares redeliveries after a takeover).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::Config;
use fanout_gateway::stats::{GroupPartition, Stats};
use support::real_kafka::RealKafka;
use support::*;

fn route_config(bootstrap: &str, group: &str, topic: &str) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[topic]);
    c.kafka.commit_interval_ms = 100;
    c.server.shutdown_grace_ms = 5_000;
    c.routes[0].max_in_flight = 5_000;
    c.validate().expect("valid config");
    c
}

/// The offset of a delivery id `topic/partition/offset`, and its partition.
fn partition_offset(id: &str) -> (i32, i64) {
    let mut parts = id.rsplit('/');
    let offset = parts.next().and_then(|o| o.parse().ok()).expect("an offset");
    let partition = parts.next().and_then(|p| p.parse().ok()).expect("a partition");
    (partition, offset)
}

/// Receives until every id of `produced` arrived, acking all but what `hold(partition, offset)`
/// picks; the held ids.
async fn receive_holding(sub: &mut Subscription, produced: &[String], hold: impl Fn(i32, i64) -> bool) -> Vec<String> {
    let expected: HashSet<&String> = produced.iter().collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut held: Vec<String> = Vec::new();
    while !expected.iter().all(|id| seen.contains(*id)) {
        let ids: Vec<String> = next_batch(sub).await.iter().map(stream::id_of).collect();
        seen.extend(ids.iter().cloned());
        let (keep, ack): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| {
            let (partition, offset) = partition_offset(id);
            hold(partition, offset)
        });
        held.extend(keep);
        sub.ack(ack).await.expect("acks sent");
    }
    held
}

/// A broker that takes at most 64 bytes of commit metadata per partition
/// (`offset.metadata.max.bytes`; Kafka's default is 4096). The subscriber holds every tenth
/// record of partition 0 and acks everything else, so partition 0's commit point stays at the
/// first held record with a hundred acked ranges above it: metadata far over 64 bytes, which Kafka
/// refuses (OFFSET_METADATA_TOO_LARGE) while it stores partition 1 of the same request. The
/// gateway commits partition 0 without metadata, counts no failure, and its committed offsets
/// are Kafka's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_whose_metadata_kafka_refuses_is_committed_without_it_and_the_others_land() {
    const MESSAGES: usize = 2_000;
    init_logs();
    let Some(kafka) = RealKafka::node_with("offset.metadata.max.bytes=64\n") else { return };
    let topic = unique_group("commits-metadata");
    kafka.create_topic(&topic, 2, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 100).await;
    let group = unique_group("real-commits-metadata");
    let gw = start_gateway(route_config(kafka.bootstrap_servers(), &group, &topic)).await;
    let stats = gw.stats();

    let run = async {
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 5_000)).await.expect("subscribes");
        let held = receive_holding(&mut sub, &produced, |p, offset| p == 0 && offset % 10 == 0).await;
        let held_offset = held.iter().map(|id| partition_offset(id).1).min().expect("partition 0 delivered");
        let ends = kafka.end_offsets(&topic, 2);
        let want = [(0, held_offset), (1, ends[&1])];
        let committed = poll_until(
            Duration::from_secs(30),
            || async { kafka.committed(&group, &topic, 2) },
            |c| want.iter().all(|(p, o)| c.get(p) == Some(o)),
        )
        .await;
        let filed = |partition: i32| {
            let at = GroupPartition { group: group.as_str().into(), topic: topic.clone(), partition };
            stats.committed.read().get(&at).copied()
        };
        figure(format!(
            "metadata refused on Kafka: holding {} records from offset {held_offset}; Kafka's committed {committed:?} (ends {ends:?}); the gateway's \
             {:?}/{:?}; commits {}, commit failures {}",
            held.len(),
            filed(0),
            filed(1),
            Stats::get(&stats.commits),
            Stats::get(&stats.commit_failures)
        ));
        assert!(
            want.iter().all(|(p, o)| committed.get(p) == Some(o)),
            "partition 0 committed at the held record without metadata, partition 1 at its end: want {want:?}, \
             Kafka has {committed:?}"
        );
        assert_eq!((filed(0), filed(1)), (Some(held_offset), Some(ends[&1])), "the gateway files what Kafka stored");
        assert_eq!(Stats::get(&stats.commit_failures), 0, "a commit sent again without metadata is no failure");

        sub.ack(held).await.expect("acks sent");
        let behind =
            poll_until(Duration::from_secs(30), || async { kafka.uncommitted(&group, &topic, 2) }, Vec::is_empty).await;
        assert!(behind.is_empty(), "commits reach the end once the held records are acked: {behind:?}");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// Writes `count` keyed records to `topic` in batches small enough for a broker whose
/// `message.max.bytes` is 2 KiB; their delivery ids.
async fn produce_small_batches(kafka: &RealKafka, topic: &str, count: usize) -> Vec<String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("batch.size", "1024")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("key-{}", i % 100);
            let value = format!("message {i}");
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            producer.send_result(record).map_err(|(e, _)| e).expect("enqueued")
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for send in sends {
        let delivery = send.await.expect("delivery report").map_err(|(e, _)| e).expect("delivered");
        ids.push(format!("{topic}/{}/{}", delivery.partition, delivery.offset));
    }
    ids
}

/// A broker whose offsets topic takes records of at most 2 KiB (`message.max.bytes`). Kafka 4
/// writes a commit's records in as many batches as they need, so a request's size alone is no
/// refusal (measured: five partitions with 3.5 KB of metadata each pass a 16 KiB limit); but a
/// single partition's record over the limit fails the whole request, every partition with
/// UNKNOWN_SERVER_ERROR. The subscriber acks every other record of three partitions, so each
/// partition's commit carries its full 3.5 KB of acked ranges. The gateway halves the request
/// down to one partition and commits that one without its metadata: every commit lands, and
/// none is counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_kafka_refuses_for_its_size_goes_in_parts_and_at_worst_without_metadata() {
    const PARTITIONS: i32 = 3;
    const MESSAGES: usize = 9_000;
    init_logs();
    let Some(kafka) = RealKafka::node_with("message.max.bytes=2048\n") else { return };
    let topic = unique_group("commits-size");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let produced = produce_small_batches(&kafka, &topic, MESSAGES).await;
    let group = unique_group("real-commits-size");
    let mut config = route_config(kafka.bootstrap_servers(), &group, &topic);
    config.routes[0].max_in_flight = 10_000;
    let gw = start_gateway(config).await;
    let stats = gw.stats();

    let run = async {
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10_000)).await.expect("subscribes");
        let held = receive_holding(&mut sub, &produced, |_, offset| offset % 2 == 1).await;
        // Once every ack is in, the gateway commits each partition's point (offset 1, the first
        // held) with far more metadata than the broker stores: it lands without.
        let plain = |c: &std::collections::HashMap<i32, (i64, String)>| {
            (0..PARTITIONS).all(|p| c.get(&p).is_some_and(|(o, m)| *o == 1 && m.len() < 2_048))
        };
        let committed = poll_until(
            Duration::from_secs(30),
            || async { kafka.committed_with_metadata(&group, &topic, PARTITIONS) },
            plain,
        )
        .await;
        // Settled once the acks stop moving the points: no commit out any more.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sizes: Vec<(i32, i64, usize)> = {
            let mut s: Vec<_> = committed.iter().map(|(p, (o, m))| (*p, *o, m.len())).collect();
            s.sort();
            s
        };
        figure(format!(
            "commit over the broker's record limit: Kafka has (partition, offset, metadata bytes) {sizes:?}; commits {}, \
             commit failures {}",
            Stats::get(&stats.commits),
            Stats::get(&stats.commit_failures)
        ));
        assert!(plain(&committed), "every partition's point landed: {sizes:?}");
        assert_eq!(Stats::get(&stats.commit_failures), 0, "parts sent again are no failure");

        sub.ack(held).await.expect("acks sent");
        let behind = poll_until(
            Duration::from_secs(30),
            || async { kafka.uncommitted(&group, &topic, PARTITIONS) },
            Vec::is_empty,
        )
        .await;
        assert!(behind.is_empty(), "commits reach the end: {behind:?}");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
}
