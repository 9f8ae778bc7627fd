//! Routes are independent subscriptions: two routes on one topic each consume in a group of
//! their own, so a route nobody subscribes to, or an at-most-once route, holds back no other.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, DeliveryMode, RouteConfig};
use fanout_gateway::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::*;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 4_000;
const FIREHOSE_WINDOW: u32 = 400;

/// Two routes over `TOPIC` in the groups `<group>.orders` and `<group>.<second>`.
fn two_routes(bootstrap: &str, group: &str, second: RouteConfig) -> Config {
    let mut config = config(bootstrap, group);
    // Default naming: each route's group is `<kafka.group_id>.<route>`.
    config.routes[0].group_id = None;
    config.routes.push(second);
    config.validate().expect("two routes on one topic are a valid config");
    config
}

/// Commits `offset` on every partition of `TOPIC` for `group`, as an earlier reader would have.
fn commit_everywhere(bootstrap: &str, group: &str, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(offset)).expect("offset");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// Receives on `sub` and acks what `keep` accepts until `ids` have all arrived; returns how
/// often each id arrived.
async fn receive_all(
    sub: &mut Subscription,
    ids: &HashSet<String>,
    keep: impl Fn(usize) -> bool,
) -> HashMap<String, u32> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut n = 0;
    while !ids.iter().all(|id| seen.contains_key(id)) {
        let batch = match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(b) => b.expect("stream healthy").expect("stream open"),
            Err(_) => {
                let mut missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
                missing.sort();
                panic!(
                    "no delivery for 20 s with {} of {} still missing, e.g. {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(8)]
                );
            }
        };
        let mut acks = Vec::new();
        for d in batch {
            *seen.entry(stream::id_of(&d)).or_default() += 1;
            if keep(n) {
                acks.push(stream::id_of(&d));
            }
            n += 1;
        }
        sub.ack(acks).await.expect("ack");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_nobody_subscribes_to_holds_back_no_other_route_on_its_topic() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("routes-idle");
    let mut config = two_routes(&bootstrap, &group, RouteConfig::new("audit", &[TOPIC]));
    // Small buffers: with one group for both routes, `orders` used to stop after exactly
    // 4 partitions x 100 messages, waiting for `audit`'s acks.
    config.kafka.max_uncommitted_per_partition = 100;
    let (orders_group, audit_group) = (format!("{group}.{ROUTE}"), format!("{group}.audit"));
    // `audit` read the first 10 messages of each partition long ago.
    commit_everywhere(&bootstrap, &audit_group, 10);
    let ids: HashSet<String> = produce(&bootstrap, MESSAGES, 400).await.into_iter().collect();

    let run = async {
        let gw = start_gateway(config).await;
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "orders-0", 100)).await.expect("subscribes");
        let seen = receive_all(&mut sub, &ids, |_| true).await;
        assert_eq!(seen.len(), MESSAGES, "every message reached the subscribed route");
        eventually(Duration::from_secs(30), "orders committed to the high watermarks", || {
            fully_committed(&bootstrap, &orders_group, PARTITIONS)
        })
        .await;
        let paused = Stats::get(&gw.stats().partition_pauses);
        gw.shutdown().await;
        drop(sub);
        paused
    };
    let paused = tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
    let audit = committed(&bootstrap, &audit_group, PARTITIONS);
    eprintln!(
        "orders delivered and committed all {MESSAGES}; audit committed {audit:?}; partitions paused {paused} times"
    );
    assert_eq!(audit, (0..PARTITIONS).map(|p| (p, 10)).collect(), "the idle route's commits stay where they were");
    assert!(paused > 0, "the idle route's buffers filled and paused its own partitions only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_at_most_once_route_and_an_at_least_once_route_share_a_topic_and_each_keeps_its_promise() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("routes-modes");
    let mut firehose = RouteConfig::new("firehose", &[TOPIC]);
    firehose.delivery = DeliveryMode::AtMostOnce;
    // Deliveries the subscriber never acks come back as failures quickly: dropped, not retried.
    firehose.ack_timeout_ms = 300;
    let config = two_routes(&bootstrap, &group, firehose);
    let (orders_group, firehose_group) = (format!("{group}.{ROUTE}"), format!("{group}.firehose"));
    let ids: HashSet<String> = produce(&bootstrap, MESSAGES, 400).await.into_iter().collect();

    let run = async {
        let gw = start_gateway(config).await;
        let endpoint = gw.endpoint();
        // The at-most-once subscriber acks only every other delivery.
        let firehose = tokio::spawn({
            let (endpoint, ids) = (endpoint.clone(), ids.clone());
            async move {
                let mut sub =
                    Subscription::connect(&endpoint, stream::hello("firehose", "firehose-0", FIREHOSE_WINDOW))
                        .await
                        .expect("subscribes");
                let mut seen: HashMap<String, u32> = HashMap::new();
                let mut n = 0usize;
                // Until every message was either acked or dropped at its deadline.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while seen.len() < ids.len() && tokio::time::Instant::now() < deadline {
                    let Ok(batch) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await else { continue };
                    let batch = batch.expect("stream healthy").expect("stream open");
                    let mut acks = Vec::new();
                    for d in batch {
                        *seen.entry(stream::id_of(&d)).or_default() += 1;
                        if n.is_multiple_of(2) {
                            acks.push(stream::id_of(&d));
                        }
                        n += 1;
                    }
                    sub.ack(acks).await.expect("ack");
                }
                (seen, sub)
            }
        });
        // The at-least-once subscriber loses its stream once with deliveries in flight.
        let mut orders =
            Subscription::connect(&endpoint, stream::hello(ROUTE, "orders-0", 50)).await.expect("subscribes");
        let first = next_batch(&mut orders).await;
        let lost_with_stream: HashSet<String> = first.into_iter().map(|d| stream::id_of(&d)).collect();
        drop(orders);
        let mut orders =
            Subscription::connect(&endpoint, stream::hello(ROUTE, "orders-1", 50)).await.expect("resubscribes");
        let seen = receive_all(&mut orders, &ids, |_| true).await;
        let (firehose_seen, _firehose_sub) = firehose.await.expect("firehose task");
        eventually(Duration::from_secs(30), "both routes committed to the high watermarks", || {
            fully_committed(&bootstrap, &orders_group, PARTITIONS)
                && fully_committed(&bootstrap, &firehose_group, PARTITIONS)
        })
        .await;
        let dropped = Stats::get(&gw.stats().dropped_at_most_once);
        gw.shutdown().await;
        (seen, lost_with_stream, firehose_seen, dropped)
    };
    let (seen, lost_with_stream, firehose_seen, dropped) =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");

    assert!(ids.iter().all(|id| seen.contains_key(id)), "at-least-once: every message delivered");
    let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(
        twice.iter().all(|id| lost_with_stream.contains(*id)),
        "at-least-once: only what the lost stream held came again"
    );
    assert!(
        !lost_with_stream.is_empty() && lost_with_stream.iter().all(|id| seen.contains_key(id)),
        "and it did come again"
    );

    let again: Vec<&String> = firehose_seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    eprintln!(
        "firehose: {} delivered, {} dropped unacked, {} twice; orders: {} delivered, {} redelivered after the lost stream",
        firehose_seen.len(),
        dropped,
        again.len(),
        seen.len(),
        twice.len()
    );
    assert!(again.is_empty(), "at-most-once: nothing delivered twice, e.g. {:?}", &again[..again.len().min(5)]);
    assert_eq!(firehose_seen.len(), MESSAGES, "at-most-once: each message sent once, acked or not");
    // The unacked half is dropped at its deadline, not retried; the last window's worth may
    // still have been in flight when the subscriber stopped.
    let unacked = (MESSAGES / 2) as u64;
    assert!(
        dropped <= unacked && dropped + FIREHOSE_WINDOW as u64 >= unacked,
        "{dropped} of {unacked} unacked dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_whose_topic_is_missing_or_refused_says_so_and_the_others_flow() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("routes-unreadable");
    // `audit` routes a topic nobody has created yet and one the gateway may not read.
    cluster.create_topic("secret-events", 1, 3).expect("create topic");
    cluster
        .topic_error("secret-events", rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        .expect("topic error");
    let config = two_routes(&bootstrap, &group, RouteConfig::new("audit", &["audit-events", "secret-events"]));
    let ids: HashSet<String> = produce(&bootstrap, 1_000, 100).await.into_iter().collect();

    let run = async {
        let gw = start_gateway(config).await;
        let control = gw.control();
        let control = &control;
        let unreadable = move || async move {
            control.routes_status(Some("audit")).await.expect("status")[0].unreadable_topics.clone()
        };
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "orders-0", 100)).await.expect("subscribes");
        let seen = receive_all(&mut sub, &ids, |_| true).await;
        assert_eq!(seen.len(), 1_000, "the other route delivered everything");

        // The status, /readyz and fanoutctl say which topic of which route, and what to do.
        let audit = poll_until(Duration::from_secs(30), unreadable, |a| a.len() == 2).await;
        assert!(audit.get("audit-events").is_some_and(|why| why.starts_with("it does not exist")), "{audit:?}");
        assert!(audit.get("secret-events").is_some_and(|why| why.contains("may not read it")), "{audit:?}");
        let admin = gw.admin_addr();
        let (code, body) = poll_until(Duration::from_secs(30), || http_get(admin, "/readyz"), |(c, _)| *c == 200).await;
        assert_eq!(code, 200, "the replica serves its other routes: {body}");
        assert!(body.contains("route audit cannot read topic audit-events: it does not exist"), "{body}");
        let orders = control.routes_status(Some(ROUTE)).await.expect("status");
        assert!(orders[0].unreadable_topics.is_empty(), "{:?}", orders[0].unreadable_topics);

        // Created, the topic is read without a restart, and the problem clears.
        cluster.create_topic("audit-events", 2, 3).expect("create topic");
        let audit_ids: HashSet<String> = produce_to(&bootstrap, "audit-events", 50, 10).await.into_iter().collect();
        let mut audit_sub =
            Subscription::connect(&gw.endpoint(), stream::hello("audit", "audit-0", 100)).await.expect("subscribes");
        let seen = receive_all(&mut audit_sub, &audit_ids, |_| true).await;
        assert_eq!(seen.len(), 50, "the new topic's records reached the route");
        let left = poll_until(Duration::from_secs(30), unreadable, |l| l.len() == 1).await;
        assert_eq!(left.keys().collect::<Vec<_>>(), ["secret-events"], "only the refused topic is left: {left:?}");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
}
