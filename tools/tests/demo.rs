//! The README's first command: the embedded demo runs the whole loop, prints how to attach to
//! it, and reports one line.

use std::process::Command;

#[test]
fn demo_acks_everything_it_produces_and_reports_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-tools"))
        .args([
            "demo",
            "--duration",
            "4",
            "--rate",
            "1000",
            "--partitions",
            "4",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let finals: Vec<&str> = stdout.lines().filter(|l| l.starts_with("demo:")).collect();
    assert_eq!(finals.len(), 1, "{stdout}");
    assert_eq!(stdout.lines().last(), finals.first().copied(), "the report is the last line");
    let fields: std::collections::HashMap<&str, u64> = finals[0]
        .trim_start_matches("demo:")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k, v.parse().expect("number"))
        })
        .collect();
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = fields.keys().copied().collect();
        k.sort();
        k
    };
    assert_eq!(keys, vec!["acked", "committed", "dead_lettered", "delivered", "duplicates", "lost", "produced"]);
    assert!(fields["produced"] >= 1_000, "{stdout}");
    assert_eq!(fields["lost"], 0, "{stdout}");
    // About one message in a thousand is poison: dead-lettered, which settles it as an ack does.
    assert!(fields["dead_lettered"] >= 1, "{stdout}");
    assert_eq!(fields["acked"] + fields["dead_lettered"], fields["produced"], "{stdout}");
    assert_eq!(fields["committed"], fields["produced"], "{stdout}");
    assert_eq!(fields["duplicates"], 0, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with('[') && l.contains("produced=")), "live lines: {stdout}");
    // The attach commands name the ports the gateway got, not the `:0` it was given.
    let attach = |what: &str| stdout.lines().find(|l| l.trim_start().starts_with(what)).unwrap_or_default();
    let subscribe = attach("subscriber:");
    assert!(subscribe.contains("subscribe --gateway 127.0.0.1:") && !subscribe.contains(":0 "), "{stdout}");
    assert!(subscribe.ends_with("--route demo --label track=canary"), "{stdout}");
    assert!(attach("status:").contains("--token demo-token status") && !attach("status:").contains(":0 "), "{stdout}");
    for what in ["weights:", "drain:", "replay:", "dlq:", "redrive:"] {
        assert!(attach(what).contains("cargo fanoutctl --gateway 127.0.0.1:"), "{what} {stdout}");
    }
}

#[test]
fn the_demo_keeps_its_public_admin_token_off_the_network() {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-tools"))
        .args(["demo", "--duration", "1", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .output()
        .expect("demo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--admin-listen 0.0.0.0:0 is not a loopback address"), "{stderr}");
}
