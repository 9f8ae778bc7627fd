//! `fanout-tools bench` at its smallest scale: every part runs and reports, and the deploy
//! switch shows what the gateway promises. Figures of speed are printed, never asserted.

#[path = "../../tests/support/shared.rs"]
mod shared;

use fanout_tools::bench::{self, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_part_reports_and_the_gateway_switch_costs_nothing() {
    let mut options = BenchOptions::smoke();
    options.gateway_exe = Some(shared::gateway_bin());
    let report = tokio::time::timeout(std::time::Duration::from_secs(240), bench::run(&options, |l| eprintln!("{l}")))
        .await
        .expect("the smoke run finishes")
        .expect("the smoke run works");
    let text = report.to_string();
    eprintln!("{text}");

    let figures: std::collections::HashMap<String, String> = report.figures().into_iter().collect();
    for name in [
        "raw_msgs_per_sec_100b",
        "gateway_msgs_per_sec_100b_2subs",
        "throughput_ratio_100b_2subs",
        "cpu_us_per_msg_gateway_100b_2subs",
        "gateway_msgs_per_sec_100b_2subs_1workers",
        "gateway_msgs_per_sec_100b_2subs_2workers",
        "scaling_ratio_100b",
        "gateway_msgs_per_sec_100b_2subs_3partitions_bound300",
        "small_bound_ratio_100b",
        "latency_added_p99_us_100b_1000",
        "peak_rss_mib_bound_500",
        "switch_gateway_rebalances",
        "switch_group_eager_rebalances",
        "switch_group_cooperative_max_gap_ms",
        "idle_routes_3_threads",
        "idle_rss_mib_per_route",
        "window_fixed_slow_avg",
        "window_adaptive_redelivered",
    ] {
        assert!(figures.contains_key(name), "missing figure {name} in\n{text}");
        assert!(text.contains(&format!("bench: {name}=")), "figure {name} not printed");
    }

    // Every backlog message went through the gateway, and every latency run heard back.
    let t = &report.throughput[0];
    assert_eq!(t.gateway[0].1.messages, t.raw.messages, "the gateway delivered the whole backlog");
    // So did the gateway on a runtime of its own, with one worker thread and with two.
    let workers: Vec<(usize, u64)> = t.scaling.iter().map(|s| (s.workers, s.rate.messages)).collect();
    assert_eq!(workers, vec![(1, t.raw.messages), (2, t.raw.messages)], "the scaling row");
    // And behind a bound of 300 per partition, paused and fetched again from the bound
    // hundreds of times on the way.
    let small = t.small_bound.expect("the small-bound row ran");
    assert!(small.small.messages > 0, "behind a small bound: {small:?}");
    assert_eq!(small.small.messages, small.default.messages, "behind a small bound, the whole backlog");
    assert!(report.latency[0].raw.count > 0 && report.latency[0].gateway.count > 0);
    let m = report.memory[0].memory;
    assert!(m.peak_rss_kib >= m.start_rss_kib && m.start_rss_kib > 0, "{m:?}");
    assert!(m.delivered > 0, "the slow subscriber got messages");
    // Idle routes: each route is a consumer of its own, with threads of its own.
    let (one, three) = (report.routes[0], report.routes[1]);
    assert!(three.threads > one.threads && one.rss_kib > 0, "{one:?} {three:?}");

    // Adaptive windows: both runs worked through the backlog (their figures are printed).
    let (fixed, adaptive) = report.adaptive.expect("the adaptive part ran");
    assert!(fixed.acked > 0 && adaptive.acked > 0, "{fixed:?} {adaptive:?}");

    // The deploy switch: the gateway's moves no partition and loses or repeats nothing; the
    // status quo is measured (its figures are whatever they are), but must lose nothing either.
    let by_name = |n: &str| report.switch.iter().find(|r| r.name == n).map(|r| r.report.clone()).expect(n);
    let gateway = by_name("gateway weights");
    assert_eq!((gateway.rebalances, gateway.lost, gateway.duplicates), (0, 0, 0), "{gateway:?}");
    assert!(gateway.produced > 0);
    // tests/handover.rs holds the status quo to its rebalances; too short here to separate them.
    for name in ["consumer group, eager", "consumer group, cooperative"] {
        let r = by_name(name);
        assert!(r.produced > 0 && r.rebalances >= 1, "{name}: {r:?}");
        assert_eq!(r.lost, 0, "{name}: {r:?}");
    }
}
