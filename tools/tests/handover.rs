//! The status-quo deploy (a consumer-group handover from blue to green consumers) runs to the
//! end on the mock cluster and accounts for every message, for both assignment protocols.

#[path = "../../tests/support/shared.rs"]
mod shared;

use std::time::Duration;

use fanout_tools::bench::handover::{status_quo, HandoverOptions, HandoverReport, Strategy};

/// Long enough that green's join rebalance (the mock's join phase is session.timeout.ms − 1 s
/// = 5 s) has completed before blue leaves at two thirds, so the two are separate rebalances.
const TOPIC: &str = "orders";

const DURATION: Duration = Duration::from_secs(21);

async fn handover(strategy: Strategy) -> HandoverReport {
    shared::init_logs();
    // A 3-broker mock cluster, as the bench runs it.
    let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(TOPIC, 8, 3).expect("create topic");
    let options = HandoverOptions { rate: 2_000, duration: DURATION, per_cohort: 2, partitions: 8, strategy };
    let report =
        tokio::time::timeout(Duration::from_secs(150), status_quo(&cluster.bootstrap_servers(), TOPIC, &options))
            .await
            .expect("the handover finishes within its bounds")
            .expect("the handover runs");
    println!("{strategy:?}: {report}");
    drop(cluster);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_handover_loses_nothing_and_rebalances_on_join_and_on_leave() {
    let report = handover(Strategy::Eager).await;
    assert!(report.produced > 0, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(report.rebalances >= 2, "green's join and blue's leave each rebalance: {report}");
    assert!(report.max_gap_ms > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_handover_loses_nothing() {
    let report = handover(Strategy::Cooperative).await;
    assert!(report.produced > 0, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(report.rebalances >= 1, "green's join rebalances: {report}");
    assert!(report.max_gap_ms > 0, "{report}");
}
