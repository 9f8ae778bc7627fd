//! Two gateway replicas in one consumer group: the second joins mid-stream and later leaves.
//!
//! The cooperative-sticky assignor moves some partitions from the first replica (A) to the
//! second (B), and back when B leaves. The replica that loses a partition drains it: it sends
//! nothing new of it, waits up to `kafka.revoke_drain_ms` for the acks of what is in flight,
//! commits, and only then lets go. So B starts where A's acks end, nothing is lost, and the
//! only messages delivered twice are those whose acks missed the drain deadline.

#[path = "support/faults.rs"]
mod faults_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::stats::Stats;
use faults_support::{
    commit_gap, kafka_debug_from_env, missing, partition_of, stream_to, wait_blocking, Feed, Ledger, Pace, Processing,
};
use parking_lot::Mutex;
use support::*;
use tokio::sync::watch;

const PARTITIONS: i32 = 8;
/// 20 000 up front, the rest at a steady rate so records keep flowing through both rebalances
/// (the mock's coordinator takes 5 to 15 s to move partitions: one to three join rounds of
/// session.timeout.ms - 1 s each).
const MESSAGES: usize = 60_000;
const UP_FRONT: usize = 20_000;
const RATE: u32 = 1_500;
/// Acked messages before B starts.
const B_STARTS_AT: usize = 8_000;
/// Messages B delivers before it leaves.
const B_LEAVES_AFTER: usize = 3_000;
/// Subscriber services; each has one stream to every replica (a replica serves only the
/// partitions it owns).
const PODS: usize = 2;
/// How long a revoked partition waits for its in-flight acks.
const DRAIN: Duration = Duration::from_secs(3);

/// What a run saw.
struct Outcome {
    duplicates: usize,
    /// Deliveries in flight when a drain deadline (or the leaving replica's grace) passed.
    abandoned: u64,
    taken: Vec<i32>,
    /// Revoke commits the coordinator refused. The mock's coordinator answers a follower's
    /// SyncGroup that arrives after the leader's with INVALID_REQUEST, and the follower's rejoin
    /// starts a new rebalance within milliseconds of the revoke; during its join phase every
    /// commit is refused (REBALANCE_IN_PROGRESS). A real coordinator hands the follower its
    /// assignment and accepts the revoke commit. When one was refused, the next owner starts from
    /// the last landed commit, so the run says nothing about the drain: it checks that nothing
    /// was lost and is run again.
    refused: u64,
}

/// Runs of the scenario until one whose revoke commits all landed (see `Outcome::refused`).
const ATTEMPTS: usize = 4;

/// Window 50; one delivery in 300 takes 7 s to process, past the drain deadline (and under the
/// route's 10 s ack deadline), so every revoke meets deliveries it cannot wait for.
const SLOW: Processing = Processing { window: 50, slow_every: 300, slow_for: Duration::from_secs(7) };
/// Every delivery acked within a few tens of milliseconds.
const PROMPT: Processing = Processing { window: 50, slow_every: usize::MAX, slow_for: Duration::ZERO };

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_joining_and_leaving_redelivers_only_what_missed_the_drain_deadline() {
    let outcome = landed("slow", SLOW).await;
    assert!(outcome.abandoned > 0, "7 s deliveries outlast a 3 s drain: the revokes had to give some up");
    assert!(
        outcome.duplicates as u64 <= outcome.abandoned,
        "{} duplicates, but only {} deliveries were in flight past a drain deadline: the drain lost acks",
        outcome.duplicates,
        outcome.abandoned
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_prompt_subscribers_a_replica_joining_and_leaving_redelivers_nothing() {
    let outcome = landed("prompt", PROMPT).await;
    assert_eq!(outcome.abandoned, 0, "every in-flight delivery was acked within the drain");
    assert_eq!(outcome.duplicates, 0, "B took over {:?} and gave them back without a duplicate", outcome.taken);
}

/// The first run whose revoke commits the coordinator accepted. Every run, refused or not,
/// has already checked that nothing was lost.
async fn landed(name: &str, processing: Processing) -> Outcome {
    for attempt in 1..=ATTEMPTS {
        let outcome = join_then_leave(&format!("{name}-{attempt}"), processing).await;
        if outcome.refused == 0 {
            return outcome;
        }
        eprintln!(
            "rebalance ({name}): run {attempt} of {ATTEMPTS}: the mock coordinator refused {} revoke commit(s) \
             ({} duplicates, none lost); running again",
            outcome.refused, outcome.duplicates
        );
    }
    panic!("in {ATTEMPTS} runs the mock coordinator refused a revoke commit every time: nothing about the drain shown");
}

/// A runs alone, B joins once `B_STARTS_AT` messages are acked, B leaves (a graceful stop)
/// once it has delivered `B_LEAVES_AFTER`; the feed keeps producing throughout.
async fn join_then_leave(name: &str, processing: Processing) -> Outcome {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group(&format!("rebalance-{name}"));
    let mut config = config(&bootstrap, &group);
    // Short empty-fetch waits on the mock broker: the stream, not the broker, sets the pace.
    config.kafka.properties.insert("fetch.wait.max.ms".into(), "20".into());
    // Periodic commits only every 5 s (the other suites use 100 ms): the acks of the seconds
    // before a revoke then reach the broker through the revoke commit alone, so a revoke
    // that loses them shows up as duplicates.
    config.kafka.commit_interval_ms = 5_000;
    config.kafka.revoke_drain_ms = DRAIN.as_millis() as u64;
    kafka_debug_from_env(&mut config.kafka.properties);

    let run = async {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let acked = ledger.clone();
        let feed =
            Feed::start(&bootstrap, 1_000, Pace { total: MESSAGES, ahead: UP_FRONT, rate: Some(RATE) }, move || {
                acked.lock().acked.len()
            });

        let a = start_gateway(config.clone()).await;
        let mut streams = Vec::new();
        for pod in 0..PODS {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            streams.push(tokio::spawn(stream_to(format!("pod-{pod}"), "A", a.endpoint(), processing, ledger, stop)));
        }
        eventually(Duration::from_secs(60), "a part of the stream acked through A", || {
            ledger.lock().acked.len() >= B_STARTS_AT
        })
        .await;
        let a_stats = a.stats();
        let a_rebalances_before = Stats::get(&a_stats.rebalances);

        // Same group, same config; its own port (the config listens on 127.0.0.1:0).
        let b = start_gateway(config.clone()).await;
        for pod in 0..PODS {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            streams.push(tokio::spawn(stream_to(format!("pod-{pod}"), "B", b.endpoint(), processing, ledger, stop)));
        }
        eventually(Duration::from_secs(60), "B delivers a part of the partitions it took over", || {
            ledger.lock().delivered_by.values().filter(|by| by.contains(&"B")).count() >= B_LEAVES_AFTER
        })
        .await;
        let produced_when_b_left = feed.produced.load(std::sync::atomic::Ordering::Relaxed);
        let b_stats = b.stats();
        let taken = ledger.lock().partitions_of("B");
        b.shutdown().await;

        let ids = feed.finish().await;
        assert_eq!(ids.len(), MESSAGES, "the feed produced everything");
        assert!(
            produced_when_b_left < MESSAGES,
            "B came and went mid-stream ({produced_when_b_left} of {MESSAGES} produced)"
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

        let abandoned = [&a_stats, &b_stats]
            .iter()
            .map(|s| Stats::get(&s.revoke_abandoned) + Stats::get(&s.shutdown_abandoned))
            .sum::<u64>();
        let refused = Stats::get(&a_stats.revoke_commits_refused) + Stats::get(&b_stats.revoke_commits_refused);
        let outcome = {
            let l = ledger.lock();
            let duplicates = l.duplicates();
            let mut taken_sorted: Vec<i32> = taken.iter().copied().collect();
            taken_sorted.sort();
            eprintln!(
                "rebalance ({name}): produced {MESSAGES}, acked all; B took partitions {taken_sorted:?} and gave them \
                 back; duplicates {}; in flight past a drain deadline {abandoned} (A {} + B {}, B's grace {}); \
                 A rebalances {a_rebalances_before} -> {}; B received {}, B skipped as already acked {}; revoke \
                 commits the coordinator refused {refused}",
                duplicates.len(),
                Stats::get(&a_stats.revoke_abandoned),
                Stats::get(&b_stats.revoke_abandoned),
                Stats::get(&b_stats.shutdown_abandoned),
                Stats::get(&a_stats.rebalances),
                Stats::get(&b_stats.received),
                Stats::get(&b_stats.skipped_already_acked),
            );

            assert!(Stats::get(&a_stats.rebalances) > a_rebalances_before, "A saw its assignment change when B joined");
            assert!(
                !taken.is_empty() && taken.len() < PARTITIONS as usize,
                "the cooperative assignor moved some partitions, not all: B took {taken_sorted:?}"
            );
            // Only a moved partition can see a message twice: delivered by the replica that
            // lost it, then by the one that took it over (unless the coordinator refused a revoke
            // commit, see `Outcome::refused`).
            for id in duplicates.iter().filter(|_| refused == 0) {
                let by = &l.delivered_by[id];
                let moved = by.windows(2).all(|w| w[0] != w[1]);
                assert!(
                    taken.contains(&partition_of(id)) && moved,
                    "{id} was delivered by {by:?}: a duplicate must be a message of a moved partition, delivered \
                     once by each replica it passed through; the earliest acked duplicates: {}",
                    earliest_acked(&l, &duplicates)
                );
            }
            Outcome { duplicates: duplicates.len(), abandoned, taken: taken_sorted, refused }
        };
        a.shutdown().await;
        outcome
    };
    let outcome = tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time");
    drop(cluster);
    outcome
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
