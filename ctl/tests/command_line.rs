//! `fanoutctl` as an operator runs it, without a gateway: help lists every command, a bad
//! argument exits 2 with one line saying what to write, and a replica nobody answers at
//! exits 1 naming it. (Against running gateways: the gateway's tests/fanoutctl.rs.)

use std::process::{Command, Output};

fn fanoutctl(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanoutctl"));
    for name in ["FANOUT_GATEWAY", "FANOUT_GATEWAYS_DNS", "FANOUT_ADMIN_TOKEN", "FANOUT_ADMIN_TOKEN_FILE"] {
        command.env_remove(name);
    }
    command.args(args).output().expect("fanoutctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_command() {
    let out = fanoutctl(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    for command in ["status", "routes", "subscribers", "partitions", "weights", "drain", "replay", "dlq"] {
        assert!(help.contains(command), "`{command}` missing from --help:\n{help}");
    }
}

#[test]
fn a_bad_weight_exits_2_with_one_line_saying_what_to_write() {
    let out = fanoutctl(&["--gateway", "127.0.0.1:1", "weights", "set", "orders", "green"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("fanoutctl: ") && stderr.contains("COHORT=WEIGHT"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out.stdout));
}

#[test]
fn a_replica_nobody_answers_at_exits_1_naming_it() {
    // Port 1 on loopback: nothing listens there.
    let out = fanoutctl(&["--gateway", "127.0.0.1:1", "status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("fanoutctl: ") && stderr.contains("127.0.0.1:1"), "{stderr}");
}
