//! Blue-green and canary deploys on the embedded demo: weights switched while producing, with
//! no consumer-group rebalance, nothing lost or duplicated, key order kept, and each phase's
//! split within 2 percentage points of its weights.

use std::time::Duration;

use fanout_tools::scenario::{self, Scenario, ScenarioOptions};

fn options(duration: u64) -> ScenarioOptions {
    ScenarioOptions {
        duration: Duration::from_secs(duration),
        per_cohort: 2,
        rate: 4_000,
        partitions: 8,
        listen: "127.0.0.1:0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_cutover_moves_all_traffic_without_a_rebalance() {
    let report = tokio::time::timeout(Duration::from_secs(120), scenario::run(Scenario::BlueGreen, options(6), |_| {}))
        .await
        .expect("in time")
        .expect("runs");
    assert!(report.produced >= 15_000, "{report}");
    assert_eq!(report.rebalances, 0, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.order_violations, 0, "{report}");
    assert!(report.split_error_pct <= 2.0, "{report} {:?}", report.phase_shares);
    assert!(report.phase_shares[0] < 1.0 && report.phase_shares[1] > 99.0, "{:?}", report.phase_shares);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_ramp_follows_the_weights_in_every_phase() {
    let report = tokio::time::timeout(Duration::from_secs(120), scenario::run(Scenario::Canary, options(12), |_| {}))
        .await
        .expect("in time")
        .expect("runs");
    assert_eq!(report.rebalances, 0, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.order_violations, 0, "{report}");
    assert_eq!(report.phase_shares.len(), 4);
    assert!(report.split_error_pct <= 2.0, "{report} {:?}", report.phase_shares);
}
