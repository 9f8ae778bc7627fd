//! A delivery says what the Kafka record said: a null key, an empty key, a tombstone and an
//! empty value stay apart; headers arrive in order, repeated names and null values included;
//! a split route names the cohort, an effectively-once route the idempotency key.

mod support;

use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::DeliveryMode;
use fanout_gateway::dedup::DedupConfig;
use fanout_gateway::proto::{Delivery, Header, Hello};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;

/// Produces records to `TOPIC` partition 0, in order.
async fn produce_records(bootstrap: &str, records: Vec<FutureRecord<'_, [u8], [u8]>>) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("acks", "all").create().expect("producer");
    for record in records {
        producer.send(record.partition(0), Duration::from_secs(10)).await.expect("produced");
    }
}

/// The first `count` deliveries, acked.
async fn receive(sub: &mut Subscription, count: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("deliveries");
        got.extend(batch.expect("stream").expect("open"));
    }
    sub.ack(got.iter().map(stream::id_of).collect()).await.expect("acked");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_empty_keys_and_values_and_repeated_headers_arrive_as_produced() {
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let empty: &[u8] = b"";
    let headers = OwnedHeaders::new()
        .insert(KafkaHeader { key: "trace", value: Some("first") })
        .insert(KafkaHeader { key: "trace", value: Some("second") })
        .insert(KafkaHeader { key: "flag", value: None::<&[u8]> })
        .insert(KafkaHeader { key: "empty", value: Some("") });
    produce_records(
        &bootstrap,
        vec![
            FutureRecord::to(TOPIC).payload(empty), // no key, empty value
            FutureRecord::to(TOPIC).key(empty),     // empty key, tombstone
            FutureRecord::to(TOPIC).key(&b"k"[..]).payload(&b"v"[..]).headers(headers),
        ],
    )
    .await;
    let gw = start_gateway(config(&bootstrap, &unique_group("fidelity"))).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 10)).await.expect("subscribes");
    let got = receive(&mut sub, 3).await;

    assert_eq!((got[0].key.as_deref(), got[0].value.as_deref()), (None, Some(empty)), "null key, empty value");
    assert_eq!((got[1].key.as_deref(), got[1].value.as_deref()), (Some(empty), None), "empty key, tombstone");
    let header = |name: &str, value: Option<&str>| Header {
        name: name.to_string(),
        value: value.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes())),
    };
    assert_eq!(
        got[2].headers,
        vec![
            header("trace", Some("first")),
            header("trace", Some("second")),
            header("flag", None),
            header("empty", Some("")),
        ],
        "every header, in order, a repeated name twice, a null value as none"
    );
    assert_eq!(got[2].cohort, "", "no split, no cohort");
    assert_eq!(got[2].idempotency_key, "", "not an effectively-once route");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_route_names_the_cohort_and_an_effectively_once_route_the_idempotency_key() {
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let keyed = |id: &'static str| OwnedHeaders::new().insert(KafkaHeader { key: "idempotency-key", value: Some(id) });
    produce_records(
        &bootstrap,
        vec![
            FutureRecord::to(TOPIC).key(&b"a"[..]).payload(&b"1"[..]).headers(keyed("order-1")),
            FutureRecord::to(TOPIC).key(&b"b"[..]).payload(&b"2"[..]),
        ],
    )
    .await;

    // At-least-once, split by `track`: the cohort is the subscriber's.
    let mut split = config(&bootstrap, &unique_group("cohort"));
    split.routes[0].split_label = Some("track".into());
    split.routes[0].weights = [("blue".to_string(), 100), ("green".to_string(), 0)].into_iter().collect();
    let gw = start_gateway(split).await;
    let hello = Hello {
        labels: [("track".to_string(), "blue".to_string())].into_iter().collect(),
        ..stream::hello(ROUTE, "blue-0", 10)
    };
    let mut sub = Subscription::connect(&gw.endpoint(), hello).await.expect("subscribes");
    let got = receive(&mut sub, 2).await;
    assert!(got.iter().all(|d| d.cohort == "blue"), "{:?}", got.iter().map(|d| &d.cohort).collect::<Vec<_>>());
    assert!(got.iter().all(|d| d.idempotency_key.is_empty()), "at-least-once: no idempotency key");
    gw.shutdown().await;

    // Effectively-once with the header key source: the key, where the record has one.
    let mut once = config(&bootstrap, &unique_group("once"));
    once.routes[0].delivery = DeliveryMode::EffectivelyOnce;
    once.routes[0].dedup = Some(DedupConfig::default());
    let gw = start_gateway(once).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 10)).await.expect("subscribes");
    let got = receive(&mut sub, 2).await;
    assert_eq!(got[0].idempotency_key, "order-1");
    assert_eq!(got[1].idempotency_key, "", "a record without the header has no key");
    gw.shutdown().await;
}
