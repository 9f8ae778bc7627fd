//! Two gateway replicas in one consumer group, the second joining mid-stream.
//!
//! The cooperative-sticky assignor moves some partitions from the first replica (A) to the
//! second (B). A must commit what its subscribers acked on those partitions before letting go,
//! so that B starts where A's acks end: nothing is lost, and the only messages delivered twice
//! are the ones still in flight on A's streams at the revoke (delivered, their ack not yet
//! taken by A).

#[path = "support/faults.rs"]
mod faults_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::gateway;
use fanout_gateway::stats::Stats;
use faults_support::{
    commit_gap, kafka_debug_from_env, missing, partition_of, stream_to, wait_blocking, Feed, Ledger, Pace, Processing,
};
use parking_lot::Mutex;
use support::*;
use tokio::sync::watch;

const PARTITIONS: i32 = 8;
/// 20 000 up front, the rest at a steady rate so records keep flowing through the rebalance
/// (the mock's coordinator takes 10 to 15 s to hand B its partitions: two or three join rounds
/// of session.timeout.ms - 1 s each).
const MESSAGES: usize = 60_000;
const UP_FRONT: usize = 20_000;
const RATE: u32 = 1_500;
/// Acked messages before B starts.
const B_STARTS_AT: usize = 8_000;
/// Subscriber services; each has one stream to every replica (a replica serves only the
/// partitions it owns).
const PODS: usize = 2;
/// Window 50; one delivery in 300 takes 7 s to process (under the route's 10 s ack deadline).
/// The join of a second replica takes the mock's coordinator about 5 s (session.timeout.ms -
/// 1 s), so slow deliveries are still out on A's streams when it revokes partitions.
const PROCESSING: Processing = Processing { window: 50, slow_every: 300, slow_for: Duration::from_secs(7) };

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_joining_mid_stream_takes_partitions_without_losing_acks() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rebalance");
    let mut config = config(&bootstrap, &group);
    // Short empty-fetch waits on the mock broker: the stream, not the broker, sets the pace.
    config.kafka.properties.insert("fetch.wait.max.ms".into(), "20".into());
    // Periodic commits only every 5 s (the other suites use 100 ms): the acks of the seconds
    // before the revoke then reach the broker through the revoke commit alone, so a revoke
    // that loses them shows up as duplicates. With frequent periodic commits the test could
    // not tell (checked by removing the revoke commit from the dispatcher: at 5 s every run
    // failed with ~13 700 duplicates, at 1 s one run in four passed).
    config.kafka.commit_interval_ms = 5_000;
    kafka_debug_from_env(&mut config.kafka.properties);

    let run = async {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let acked = ledger.clone();
        let feed =
            Feed::start(&bootstrap, 1_000, Pace { total: MESSAGES, ahead: UP_FRONT, rate: Some(RATE) }, move || {
                acked.lock().acked.len()
            });

        let a = gateway::start(config.clone()).await.expect("gateway A starts");
        let mut streams = Vec::new();
        for pod in 0..PODS {
            streams.push(tokio::spawn(stream_to(
                format!("pod-{pod}"),
                "A",
                a.endpoint(),
                PROCESSING,
                ledger.clone(),
                stop.clone(),
            )));
        }
        eventually(Duration::from_secs(60), "a part of the stream acked through A", || {
            ledger.lock().acked.len() >= B_STARTS_AT
        })
        .await;
        let a_stats = a.stats();
        let a_rebalances_before = Stats::get(&a_stats.rebalances);

        // Same group, same config; its own port (the config listens on 127.0.0.1:0).
        let b = gateway::start(config.clone()).await.expect("gateway B starts");
        for pod in 0..PODS {
            streams.push(tokio::spawn(stream_to(
                format!("pod-{pod}"),
                "B",
                b.endpoint(),
                PROCESSING,
                ledger.clone(),
                stop.clone(),
            )));
        }
        eventually(Duration::from_secs(60), "B delivers records of the partitions it took over", || {
            !ledger.lock().partitions_of("B").is_empty()
        })
        .await;
        let produced_when_b_delivered = feed.produced.load(std::sync::atomic::Ordering::Relaxed);

        let ids = feed.finish().await;
        assert_eq!(ids.len(), MESSAGES, "the feed produced everything");
        assert!(
            produced_when_b_delivered < MESSAGES,
            "B took over mid-stream (only {produced_when_b_delivered} of {MESSAGES} produced by then)"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !ids.iter().all(|id| ledger.lock().acked.contains(id)) {
            if tokio::time::Instant::now() >= deadline {
                let l = ledger.lock();
                panic!(
                    "{} produced messages never acked (lost), e.g. {:?}",
                    ids.iter().filter(|id| !l.acked.contains(*id)).count(),
                    missing(&ids, &l.acked)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (bs, g) = (bootstrap.clone(), group.clone());
        if !wait_blocking(Duration::from_secs(30), Duration::from_millis(300), move || {
            fully_committed(&bs, &g, PARTITIONS)
        })
        .await
        {
            let (bs, g) = (bootstrap.clone(), group.clone());
            let gap = tokio::task::spawn_blocking(move || commit_gap(&bs, &g, PARTITIONS)).await.expect("gap");
            panic!("committed offsets never reached the high watermarks: {gap}");
        }

        let _ = stop_tx.send(true);
        for s in streams {
            let _ = s.await;
        }

        let b_stats = b.stats();
        {
            let l = ledger.lock();
            let taken = l.partitions_of("B");
            let duplicates = l.duplicates();
            let unknown_acks_a = Stats::get(&a_stats.unknown_acks);
            let mut taken_sorted: Vec<i32> = taken.iter().copied().collect();
            taken_sorted.sort();
            eprintln!(
                "rebalance: produced {MESSAGES}, acked all; B took partitions {taken_sorted:?}; duplicates {}; \
             acks A could not take (revoked) {unknown_acks_a}; A rebalances {a_rebalances_before} -> {}; \
             B received {}, B skipped as already acked {}",
                duplicates.len(),
                Stats::get(&a_stats.rebalances),
                Stats::get(&b_stats.received),
                Stats::get(&b_stats.skipped_already_acked),
            );

            assert!(Stats::get(&a_stats.rebalances) > a_rebalances_before, "A saw its assignment change when B joined");
            assert!(Stats::get(&b_stats.received) > 0, "B received records from Kafka");
            assert!(
                !taken.is_empty() && taken.len() < PARTITIONS as usize,
                "the cooperative assignor moved some partitions, not all: B took {taken_sorted:?}"
            );
            // Only a moved partition can see a message twice, and only as A first, then B once.
            for id in &duplicates {
                let by = &l.delivered_by[id];
                assert!(
                    taken.contains(&partition_of(id)) && by.as_slice() == ["A", "B"],
                    "{id} was delivered by {by:?}: a duplicate must be a message of a moved partition that A had \
                 delivered and B delivered again"
                );
            }
            assert!(unknown_acks_a > 0, "the revoke met deliveries in flight on A's streams (acked to A after it)");
            // Each such message is one whose ack A could no longer take because the partition had
            // been revoked (A counts it as unknown). A duplicate of anything A had taken the ack of
            // before the revoke would mean the revoke commit lost acks: more duplicates than these.
            assert!(
                duplicates.len() as u64 <= unknown_acks_a,
                "{} duplicates but only {unknown_acks_a} acks reached A after the revoke: A had taken the acks of the \
             rest, yet B delivered them again (the revoke lost acks, or A delivered records of partitions it no \
             longer owned); the earliest acked: {}",
                duplicates.len(),
                earliest_acked(&l, &duplicates)
            );
            // A stream that broke would have its in-flight messages redelivered too: none did, each
            // of the 2 x PODS streams ended once, at the stop.
            assert_eq!(l.streams_ended as usize, 2 * PODS, "no stream broke before the stop");
        }

        tokio::join!(a.shutdown(), b.shutdown());
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
    drop(cluster);
}

/// The five duplicates acked first, with when they were acked relative to B's first delivery,
/// for the failure message.
fn earliest_acked(ledger: &Ledger, duplicates: &[String]) -> String {
    let Some(b_start) = ledger.first_by.get("B").copied() else { return String::from("(B delivered nothing)") };
    let mut by_ack: Vec<(tokio::time::Instant, &String)> =
        duplicates.iter().filter_map(|id| ledger.first_acked.get(id).map(|at| (*at, id))).collect();
    by_ack.sort();
    by_ack
        .iter()
        .take(5)
        .map(|(at, id)| {
            let (sign, gap) = if *at <= b_start { ("-", b_start - *at) } else { ("+", *at - b_start) };
            format!("{id} acked at B's start {sign}{} ms", gap.as_millis())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
