//! A partition's log changing under the gateway on a real Apache Kafka broker (one KRaft node,
//! see `support::real_kafka`): records deleted (DeleteRecords, as retention or an operator
//! does) while the gateway holds the partition paused at its buffer bound, which it must step
//! over; and a routed topic deleted and created again, whose offsets start over, which it must
//! deliver from its new start and commit as the new topic's. Either way its commits must reach
//! the partition's end.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::Config;
use fanout_gateway::stats::Stats;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};
use support::real_kafka::RealKafka;
use support::*;

/// The route over `topic` on the real broker: quick commits, and at most `bound` records held
/// per partition.
fn route_config(bootstrap: &str, group: &str, topic: &str, bound: usize) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[topic]);
    c.kafka.commit_interval_ms = 100;
    c.kafka.max_uncommitted_per_partition = bound;
    c.server.shutdown_grace_ms = 5_000;
    c.validate().expect("valid config");
    c
}

/// Deletes the records of `topic`'s partition 0 below `before`, as `kafka-delete-records`
/// does; returns the partition's new start.
async fn delete_records(kafka: &RealKafka, topic: &str, before: i64) -> i64 {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("admin client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(before)).expect("offset set");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin.delete_records(&tpl, &options).await.expect("DeleteRecords answered");
    let element = result.find_partition(topic, 0).expect("partition 0 in the answer");
    assert!(element.error().is_ok(), "DeleteRecords refused: {:?}", element.error());
    match element.offset() {
        Offset::Offset(start) => start,
        other => panic!("no new log start: {other:?}"),
    }
}

/// The gateway holds 200 records of the partition and has paused it, with offset 200 the first
/// to fetch again; the records below 1000 are then deleted. Once the subscriber acks, the
/// partition resumes with a seek back to 200, which Kafka no longer has: the consumer starts
/// over at 1000 (auto.offset.reset), and the gateway must take what comes from there. Before
/// it knew when the seek was done, it dropped every record above 200 waiting for 200 itself:
/// the partition stopped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_while_a_partition_is_paused_are_stepped_over_and_the_rest_delivered() {
    const MESSAGES: usize = 3_000;
    const BOUND: usize = 200;
    const DELETED_BELOW: i64 = 1_000;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_group("logs-deleted");
    kafka.create_topic(&topic, 1, &[]).await;
    let produced = produce_to(kafka.bootstrap_servers(), &topic, MESSAGES, 100).await;
    let group = unique_group("real-logs-deleted");
    let gw = start_gateway(route_config(kafka.bootstrap_servers(), &group, &topic, BOUND)).await;
    let stats = gw.stats();

    let run = async {
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 50)).await.expect("subscribes");
        // Hold a window's worth unacked: the gateway fills its bound and pauses the partition.
        let mut held: Vec<String> = Vec::new();
        while held.len() < 50 {
            held.extend(next_batch(&mut sub).await.iter().map(stream::id_of));
        }
        eventually(Duration::from_secs(30), "the partition paused at its bound", || {
            Stats::get(&stats.partition_pauses) >= 1
        })
        .await;
        let start = delete_records(&kafka, &topic, DELETED_BELOW).await;
        assert_eq!(start, DELETED_BELOW, "the log now starts at {DELETED_BELOW}");

        let offset_of = |id: &String| id.rsplit('/').next().and_then(|o| o.parse::<i64>().ok()).expect("offset");
        let remaining: HashSet<String> = produced.iter().filter(|id| offset_of(id) >= DELETED_BELOW).cloned().collect();
        let mut got: Vec<String> = held.clone();
        sub.ack(held).await.expect("acks sent");
        let mut seen: HashSet<String> = got.iter().cloned().collect();
        while !remaining.iter().all(|id| seen.contains(id)) {
            let batch = tokio::time::timeout(Duration::from_secs(20), sub.next()).await;
            let Ok(Ok(Some(batch))) = batch else {
                let missing = remaining.iter().filter(|id| !seen.contains(*id)).count();
                panic!(
                    "the partition stopped: {missing} of the {} records that remain never came (pauses {}, \
                     resumes {})",
                    remaining.len(),
                    Stats::get(&stats.partition_pauses),
                    Stats::get(&stats.partition_resumes)
                );
            };
            let ids: Vec<String> = batch.iter().map(stream::id_of).collect();
            sub.ack(ids.clone()).await.expect("acks sent");
            seen.extend(ids.iter().cloned());
            got.extend(ids);
        }
        let behind =
            poll_until(Duration::from_secs(30), || async { kafka.uncommitted(&group, &topic, 1) }, Vec::is_empty).await;
        let first_after: Vec<i64> = got.iter().map(offset_of).filter(|o| *o >= BOUND as i64).take(1).collect();
        figure(format!(
            "records deleted while paused: {} delivered ({} of them below the bound), the first after it at \
             offset {first_after:?}; commits at the end: {}",
            got.len(),
            got.iter().filter(|id| offset_of(id) < BOUND as i64).count(),
            behind.is_empty()
        ));
        assert!(behind.is_empty(), "commits reach the end: (partition, committed, end) {behind:?}");
        assert_eq!(first_after, vec![DELETED_BELOW], "the partition went on from the first record that remains");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

/// Deletes `topic` and waits until the broker no longer lists it.
async fn delete_topic(kafka: &RealKafka, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.delete_topics(&[topic], &options).await.expect("DeleteTopics answered");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("topic {name} not deleted: {code}"));
    }
    let gone = poll_until(
        Duration::from_secs(30),
        || async {
            let consumer: rdkafka::consumer::BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().expect("client");
            use rdkafka::consumer::Consumer;
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map(|m| m.topics().iter().all(|t| t.name() != topic || t.error().is_some()))
                .unwrap_or(false)
        },
        |gone| *gone,
    )
    .await;
    assert!(gone, "topic {topic} still listed 30 s after its deletion");
}

/// Receives and acks until every id of `expected` arrived (each arrival added to `got`);
/// fails naming how many did not come within 30 s of the last.
async fn receive_acking(sub: &mut Subscription, got: &mut Vec<String>, expected: &[String]) {
    let mut seen: HashSet<String> = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let batch = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
        let Ok(Ok(Some(batch))) = batch else {
            let missing = expected.iter().filter(|id| !seen.contains(*id)).count();
            panic!("{missing} of {} records never came", expected.len());
        };
        let ids: Vec<String> = batch.iter().map(stream::id_of).collect();
        sub.ack(ids.clone()).await.expect("acks sent");
        seen.extend(ids.iter().cloned());
        got.extend(ids);
    }
}

/// A routed topic deleted and created again under the same name while the gateway reads it (a
/// reset of a test environment, a topic recreated with more partitions): its offsets start
/// over. The new records must all be delivered, and the route's commits must follow the new
/// topic's offsets, never the old topic's (which would skip the new topic's records up to there
/// after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_topic_deleted_and_created_again_is_delivered_from_its_new_start() {
    const PARTITIONS: i32 = 2;
    init_logs();
    let Some(kafka) = RealKafka::shared() else { return };
    let topic = unique_group("logs-recreated");
    kafka.create_topic(&topic, PARTITIONS, &[]).await;
    let old = produce_to(kafka.bootstrap_servers(), &topic, 2_000, 100).await;
    let group = unique_group("real-logs-recreated");
    let gw = start_gateway(route_config(kafka.bootstrap_servers(), &group, &topic, 10_000)).await;
    let stats = gw.stats();

    let run = async {
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let mut got: Vec<String> = Vec::new();
        receive_acking(&mut sub, &mut got, &old).await;
        let behind = poll_until(
            Duration::from_secs(30),
            || async { kafka.uncommitted(&group, &topic, PARTITIONS) },
            Vec::is_empty,
        )
        .await;
        assert!(behind.is_empty(), "the old topic committed to its end: {behind:?}");

        delete_topic(&kafka, &topic).await;
        kafka.create_topic(&topic, PARTITIONS, &[]).await;
        let new = produce_to(kafka.bootstrap_servers(), &topic, 300, 100).await;
        let before = got.len();
        receive_acking(&mut sub, &mut got, &new).await;
        let committed = poll_until(
            Duration::from_secs(30),
            || async { kafka.uncommitted(&group, &topic, PARTITIONS) },
            Vec::is_empty,
        )
        .await;
        figure(format!(
            "topic recreated: {} old records, {} new, {} delivered after the recreation; partitions started over {}; \
             the new topic's commits behind: {committed:?}",
            old.len(),
            new.len(),
            got.len() - before,
            Stats::get(&stats.partition_restarts)
        ));
        assert!(committed.is_empty(), "the route commits the new topic's offsets: {committed:?}");
        assert_eq!(Stats::get(&stats.partition_restarts), PARTITIONS as u64, "each partition started over, counted");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
}
