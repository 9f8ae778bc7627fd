//! The README's first command: the embedded demo runs the whole loop and reports one line.

use std::process::Command;

#[test]
fn demo_acks_everything_it_produces_and_reports_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .args(["demo", "--duration", "4", "--rate", "1000", "--partitions", "4", "--listen", "127.0.0.1:0"])
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
    assert_eq!(keys, vec!["acked", "committed", "delivered", "duplicates", "lost", "produced"]);
    assert!(fields["produced"] >= 1_000, "{stdout}");
    assert_eq!(fields["lost"], 0, "{stdout}");
    assert_eq!(fields["acked"], fields["produced"], "{stdout}");
    assert_eq!(fields["committed"], fields["produced"], "{stdout}");
    assert_eq!(fields["duplicates"], 0, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with('[') && l.contains("produced=")), "live lines: {stdout}");
}
