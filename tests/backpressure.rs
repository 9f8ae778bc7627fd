//! Backpressure against a large backlog: a subscriber with a window of 10 drains 100k
//! messages while the gateway's own counters show it never held more than its per-partition
//! bound, paused and resumed partitions on the way, and honoured the window and the credits.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::stats::Stats;
use support::*;

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 8;
const BOUND: usize = 500;
const WINDOW: u32 = 10;
const CAP: u32 = 40;

/// The next batch, or None when nothing comes within `wait`.
async fn next(sub: &mut Subscription, wait: Duration) -> Option<Vec<fanout_gateway::proto::Delivery>> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Ok(Some(batch))) => Some(batch),
        Ok(other) => panic!("stream ended: {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_of_ten_against_a_100k_backlog_stays_within_the_buffer_bound() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("backpressure");
    let mut ids = Vec::with_capacity(MESSAGES);
    // In slices: librdkafka's producer queue holds 100k messages by default.
    for _ in 0..5 {
        ids.extend(produce(&bootstrap, MESSAGES / 5, 5_000).await);
    }
    let mut config = config(&bootstrap, &group);
    config.kafka.max_uncommitted_per_partition = BOUND;
    config.routes[0].max_in_flight = CAP;

    let run = async {
        let gw = start_gateway(config.clone()).await;
        let stats = gw.stats();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "slow", WINDOW)).await.expect("subscribes");
        let mut acked: HashSet<String> = HashSet::with_capacity(MESSAGES);
        let mut most_before_credit = 0usize;
        let mut held_at_cap = None;
        while acked.len() < MESSAGES {
            let batch = next(&mut sub, Duration::from_secs(30)).await.expect("deliveries keep coming");
            let mut out: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
            if held_at_cap.is_none() {
                most_before_credit = most_before_credit.max(out.len());
                if acked.len() >= MESSAGES / 2 {
                    // More credit than the route's cap allows; hold the acks until the
                    // gateway stops sending: what is out then is the window it grants.
                    sub.credit(1_000).await.expect("credit");
                    while let Some(more) = next(&mut sub, Duration::from_millis(500)).await {
                        out.extend(more.into_iter().map(|d| stream::id_of(&d)));
                    }
                    held_at_cap = Some(out.len());
                }
            }
            acked.extend(out.iter().cloned());
            sub.ack(out).await.expect("ack");
        }
        eventually(Duration::from_secs(30), "committed offsets reach the high watermarks", || {
            fully_committed(&bootstrap, &group, PARTITIONS)
        })
        .await;
        gw.shutdown().await;
        (stats, acked, most_before_credit, held_at_cap)
    };
    let (stats, acked, most_before_credit, held_at_cap) =
        tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finishes in time");

    let missing = ids.iter().filter(|id| !acked.contains(*id)).count();
    assert_eq!(missing, 0, "every message delivered");
    let peak = Stats::get(&stats.buffered_peak);
    eprintln!(
        "backpressure: peak buffered={peak} bound={} paused={} resumed={} refetched={} window_before_credit={most_before_credit} window_at_cap={held_at_cap:?}",
        BOUND * PARTITIONS as usize,
        Stats::get(&stats.partition_pauses),
        Stats::get(&stats.partition_resumes),
        Stats::get(&stats.refetched),
    );
    assert!(peak <= (BOUND * PARTITIONS as usize) as u64, "buffered {peak} passed the bound {BOUND} x {PARTITIONS}");
    assert!(peak > 0);
    assert!(Stats::get(&stats.partition_pauses) > 0, "partitions were paused");
    assert!(Stats::get(&stats.partition_resumes) > 0, "and resumed");
    assert!(most_before_credit <= WINDOW as usize, "window of {WINDOW} exceeded: {most_before_credit} out at once");
    assert_eq!(most_before_credit, WINDOW as usize, "the window was used");
    assert_eq!(held_at_cap, Some(CAP as usize), "credit raises the window up to the route's cap and no further");
    drop(cluster);
}
