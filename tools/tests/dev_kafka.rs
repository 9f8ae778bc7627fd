//! `fanout-tools dev-kafka` as a script starts it: a bad `--topic` is refused with a message
//! naming it, before any broker line is printed.

use std::process::{Command, Stdio};

#[test]
fn dev_kafka_rejects_a_bad_topic_argument() {
    for bad in ["events:x", "events", "bad/name:4", "events:0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_fanout-tools"))
            .args(["dev-kafka", "--topic", "good:2", "--topic", bad])
            .stdin(Stdio::null())
            .output()
            .expect("dev-kafka runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: exit {:?}", out.status);
        assert!(stderr.contains(bad), "{bad}: the message names the argument: {stderr}");
        assert!(out.stdout.is_empty(), "{bad}: no BROKERS= line: {}", String::from_utf8_lossy(&out.stdout));
    }
}
