//! The at-least-once loop end to end on librdkafka's mock cluster: out-of-order acks, a
//! subscriber that vanishes with deliveries in flight, and a gateway replaced mid-stream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::stats::Stats;
use parking_lot::Mutex;
use support::*;
use tokio::sync::watch;

const MESSAGES: usize = 20_000;
const PARTITIONS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_across_a_dropped_stream_and_a_gateway_restart() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("pipeline");
    let ids = produce(&bootstrap, MESSAGES, 1_000).await;
    assert_eq!(ids.len(), MESSAGES);

    let mut config = config(&bootstrap, &group);
    // A small per-partition bound so that pausing and resuming partitions is part of the run.
    config.kafka.max_uncommitted_per_partition = 1_000;

    let run = async {
        let gw1 = start_gateway(config.clone()).await;
        let (endpoint_tx, endpoint) = watch::channel(gw1.endpoint());
        let (stop_tx, stop) = watch::channel(false);
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let a = tokio::spawn(subscriber(
            Script { name: "a".into(), window: 50, drop_after: None },
            endpoint.clone(),
            recorder.clone(),
            stop.clone(),
        ));
        let b = tokio::spawn(subscriber(
            Script { name: "b".into(), window: 50, drop_after: Some(2_000) },
            endpoint.clone(),
            recorder.clone(),
            stop.clone(),
        ));

        // Replace the gateway once b has dropped its stream and half the messages are acked.
        eventually(Duration::from_secs(90), "b's drop and half of the messages acked", || {
            let r = recorder.lock();
            r.streams_ended >= 1 && r.acked.len() >= MESSAGES / 2
        })
        .await;
        let stats1 = gw1.stats();
        gw1.shutdown().await;
        assert!(Stats::get(&stats1.partition_pauses) > 0, "partitions were paused at the bound");
        let gw2 = start_gateway(config.clone()).await;
        endpoint_tx.send(gw2.endpoint()).expect("subscribers listen");

        eventually(Duration::from_secs(120), "every message acked at least once", || {
            let r = recorder.lock();
            ids.iter().all(|id| r.acked.contains(id))
        })
        .await;
        eventually(Duration::from_secs(30), "committed offsets reach the high watermarks", || {
            fully_committed(&bootstrap, &group, PARTITIONS)
        })
        .await;

        let _ = stop_tx.send(true);
        let _ = tokio::join!(a, b);
        gw2.shutdown().await;

        let r = recorder.lock();
        let duplicates = r.duplicates();
        let unexpected: Vec<&String> = duplicates.iter().filter(|id| !r.in_flight_at_break.contains(*id)).collect();
        assert!(
            unexpected.is_empty(),
            "{} duplicates were not in flight at the drop or the stop, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)]
        );
        assert!(!r.in_flight_at_break.is_empty(), "the drop happened with deliveries in flight");
        for id in &r.in_flight_at_break {
            assert!(r.delivered[id] >= 2, "{id} was in flight at the drop and never redelivered");
        }
        assert!(r.streams_ended >= 3, "one drop and two streams ended by the stop");
    };
    tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time");
    drop(cluster);
}
