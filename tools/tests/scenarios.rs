//! Blue-green and canary deploys on the embedded demo: weights switched while producing, with
//! no consumer-group rebalance, nothing lost or duplicated, key order kept, and each phase's
//! split within 2 percentage points of its weights. And the gateway's own rollouts: a bad
//! candidate (failing or slow) rolled back at its first step, a good one promoted, with
//! nothing lost and no duplicate the candidate did not cause.

use std::time::Duration;

use fanout_tools::rollout_scenario::{self, Candidate, RolloutOptions, RolloutReport};
use fanout_tools::scenario::{self, Scenario, ScenarioOptions};

/// One scenario at a time: each runs a broker, a gateway, four subscribers and 4 000 msg/s,
/// and a judge of latencies on two cores shared with another would judge the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = ONE_AT_A_TIME.lock().await;
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
    let _serial = ONE_AT_A_TIME.lock().await;
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

async fn rollout(candidate: Candidate, seed: u64) -> RolloutReport {
    let options = RolloutOptions { listen: "127.0.0.1:0".into(), seed, ..RolloutOptions::default() };
    tokio::time::timeout(Duration::from_secs(120), rollout_scenario::run(candidate, options, |_| {}))
        .await
        .expect("in time")
        .expect("runs")
}

/// What every rollout keeps, whatever its outcome.
fn nothing_lost_or_reordered(r: &RolloutReport) {
    assert!(r.produced >= 10_000, "{r}");
    assert_eq!(r.rebalances, 0, "{r}");
    assert_eq!(r.lost, 0, "{r}");
    assert_eq!(r.unexplained_duplicates, 0, "{r}");
    assert_eq!(r.order_violations, 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_that_nacks_a_fifth_is_rolled_back_at_its_first_step() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = rollout(Candidate::Failing, 1).await;
    eprintln!("{r}");
    assert_eq!((r.outcome.as_str(), r.step), ("aborted", 1), "{r}");
    assert!(r.why.starts_with("rolled back: failure rate"), "{r}");
    assert!((30..=300).contains(&r.candidate_deliveries), "{r}");
    assert!(r.candidate_new_after_end_ms <= 1_000, "new messages stop within a second of the verdict: {r}");
    assert!(r.duplicates > 0, "what the candidate failed came again: {r}");
    nothing_lost_or_reordered(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_five_times_slower_is_rolled_back_at_its_first_step() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = rollout(Candidate::Slow, 1).await;
    eprintln!("{r}");
    assert_eq!((r.outcome.as_str(), r.step), ("aborted", 1), "{r}");
    assert!(r.why.starts_with("rolled back: ack latency"), "{r}");
    assert!(r.candidate_new_after_end_ms <= 1_000, "{r}");
    nothing_lost_or_reordered(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_that_behaves_is_promoted_whatever_the_seed() {
    let _serial = ONE_AT_A_TIME.lock().await;
    for seed in 1..=3 {
        let r = rollout(Candidate::Good, seed).await;
        eprintln!("{r}");
        assert_eq!((r.outcome.as_str(), r.step), ("promoted", 2), "{r}");
        assert_eq!(r.duplicates, 0, "{r}");
        nothing_lost_or_reordered(&r);
    }
}
