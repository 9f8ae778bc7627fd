//! `fanout-tools bench --smoke --kafka apache`: the benchmark on a real Apache Kafka broker it
//! starts itself prints a raw consumer's, the gateway's and a Kafka share group's lines from
//! one run, with their CPU per message. Figures of speed are printed, never asserted.
//!
//! Without the broker's jars (`.ci/setup` fetches them into target/kafka-jars) the test is
//! skipped with a note, as the gateway's real-broker tests are; with `CI=true` their absence
//! fails it.

#[path = "../../tests/support/shared.rs"]
mod shared;

use std::collections::HashMap;

/// Whether the jars are there; without them a note (or, in CI, a failure).
fn jars_available() -> bool {
    if fanout_kafka_fixture::jars_present() {
        return true;
    }
    let what = format!(
        "no Apache Kafka jars in {} (run .ci/setup, which needs java and mvn)",
        fanout_kafka_fixture::jars_dir().display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}: CI must run the real-broker bench");
    eprintln!("SKIPPED: {what}");
    false
}

#[test]
fn a_real_broker_run_prints_raw_gateway_and_share_group_lines() {
    if !jars_available() {
        return;
    }
    let out = std::process::Command::new(shared::tools_bin())
        .args(["bench", "--smoke", "--kafka", "apache"])
        .env_remove("RUST_LOG")
        .output()
        .expect("fanout-tools runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stderr}\n{stdout}");
    assert!(out.status.success(), "bench failed ({}):\n{stderr}", out.status);

    assert!(stdout.contains("Kafka: Apache Kafka"), "the machine line names the broker:\n{stdout}");
    for reader in ["raw consumer", "gateway, 2 subscribers", "share group, 2 members"] {
        assert!(stdout.lines().any(|l| l.contains(reader)), "no table line for {reader}:\n{stdout}");
    }
    let figures: HashMap<&str, f64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bench: ")?.split_once('='))
        .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
        .collect();
    for name in [
        "apache_raw_msgs_per_sec_100b",
        "apache_cpu_us_per_msg_raw_100b",
        "apache_broker_cpu_us_per_msg_raw_100b",
        "apache_gateway_msgs_per_sec_100b_2subs",
        "apache_cpu_us_per_msg_gateway_100b_2subs",
        "apache_broker_cpu_us_per_msg_gateway_100b_2subs",
        "apache_share_msgs_per_sec_100b_2members",
        "apache_share_mib_per_sec_100b_2members",
        "apache_cpu_us_per_msg_share_100b_2members",
        "apache_broker_cpu_us_per_msg_share_100b_2members",
        "apache_gateway_vs_share_100b_2",
        "apache_latency_added_p99_us_100b_1000",
    ] {
        let value = figures.get(name).unwrap_or_else(|| panic!("missing figure {name} in\n{stdout}"));
        assert!(value.is_finite(), "{name}={value}");
    }
    for reader in ["raw_msgs_per_sec_100b", "gateway_msgs_per_sec_100b_2subs", "share_msgs_per_sec_100b_2members"] {
        assert!(figures[format!("apache_{reader}").as_str()] > 0.0, "{reader} read nothing:\n{stdout}");
    }
    assert!(!stdout.contains("bench: switch_"), "the mock-only parts do not run on a real broker:\n{stdout}");
}
