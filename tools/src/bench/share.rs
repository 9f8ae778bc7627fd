//! Kafka share groups (KIP-932) reading the same backlog as the gateway: the nearest peer that
//! also acknowledges every record. The reader is a Java program (`tools/java/ShareBench.java`,
//! the `KafkaShareConsumer` of Kafka's own client: librdkafka has no share consumer), compiled
//! against the broker's jars and run as its own process; its figures come back as one result
//! line, and its CPU and the broker's are read around the same moments.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::load::Backlog;
use super::routes::cpu_seconds;
use super::throughput::{broker_between, Rate};
use super::BenchError;

/// The reader's source, compiled on first use (`fanout_kafka_fixture::compile_java`).
const SOURCE: &str = include_str!("../../java/ShareBench.java");
/// Longest the members may read before the run is reported incomplete (the JVM's start and
/// the group's join come on top).
const LIMIT: Duration = Duration::from_secs(240);
/// Lines of the reader's stderr kept for an error.
const STDERR_LINES: usize = 30;

/// What the reader's result line says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareResult {
    /// Records handed to the members (a record redelivered counts again).
    pub records: u64,
    /// Records whose acknowledgement the broker confirmed.
    pub acked: u64,
    /// Records whose acknowledgement the broker refused.
    pub failed: u64,
    /// Records delivered more than once (an acquisition lock ran out).
    pub redelivered: u64,
    pub bytes: u64,
    /// From the first record to the confirmation of the last acknowledgement.
    pub elapsed_ns: u64,
    /// The reader process's CPU over the same time (all its threads).
    pub cpu_ns: u64,
    /// The cluster's finalized `share.version`.
    pub share_version: u16,
}

/// Parses `share-bench: result key=value ...`; None for any other line or a line lacking a
/// field.
pub fn parse_result(line: &str) -> Option<ShareResult> {
    let fields = line.strip_prefix("share-bench: result ")?;
    let mut r = ShareResult::default();
    let mut seen = 0;
    for pair in fields.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        let slot: &mut u64 = match key {
            "records" => &mut r.records,
            "acked" => &mut r.acked,
            "failed" => &mut r.failed,
            "redelivered" => &mut r.redelivered,
            "bytes" => &mut r.bytes,
            "elapsed_ns" => &mut r.elapsed_ns,
            "cpu_ns" => &mut r.cpu_ns,
            "share_version" => {
                r.share_version = value.parse().ok()?;
                seen += 1;
                continue;
            }
            _ => continue,
        };
        *slot = value.parse().ok()?;
        seen += 1;
    }
    (seen == 8).then_some(r)
}

/// `members` share consumers in the share group `group` read `backlog` and acknowledge every
/// record; timed from the first record to the broker's confirmation of the last
/// acknowledgement. `broker`: the broker's PID, whose CPU over the same stretch is reported
/// (None for a cluster elsewhere).
pub async fn share_group(
    bootstrap: &str,
    backlog: &Backlog,
    group: &str,
    members: usize,
    broker: Option<u32>,
) -> Result<(Rate, ShareResult), BenchError> {
    let classes = tokio::task::spawn_blocking(|| fanout_kafka_fixture::compile_java("ShareBench", SOURCE)).await??;
    let classpath = format!("{}:{}", classes.display(), fanout_kafka_fixture::classpath());
    let mut child = Command::new("java")
        // Its log (client config dumps at INFO) would drown what matters on stderr.
        .args(["-Xmx1g", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", &classpath, "ShareBench"])
        .args([bootstrap, group, &backlog.topic, &members.to_string(), &backlog.messages.to_string()])
        .arg(LIMIT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Share(format!("java does not run (Java 17 or newer is needed): {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BenchError::Share("the reader's output is not piped".into()));
    };
    // The reader's stderr (warnings, a member's failure): its last lines, for an error.
    let stderr = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut kept = std::collections::VecDeque::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if kept.len() == STDERR_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
        kept.into_iter().collect::<Vec<_>>().join("\n")
    });
    let broker_cpu = || broker.and_then(cpu_seconds);
    let mut lines = BufReader::new(stdout).lines();
    let mut broker_at_first = None;
    let mut outcome = Err("the reader ended without a result line".to_string());
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if line == "share-bench: first" {
                broker_at_first = broker_cpu();
            } else if let Some(result) = parse_result(&line) {
                outcome = Ok((result, broker_cpu()));
            } else if let Some(why) = line.strip_prefix("share-bench: error ") {
                outcome = Err(why.to_string());
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let timed_out = tokio::time::timeout(LIMIT + Duration::from_secs(60), read).await.is_err();
    if timed_out {
        let _ = child.start_kill();
    }
    let status = child.wait().await?;
    let stderr = stderr.await.unwrap_or_default();
    let (result, broker_at_last) =
        outcome.map_err(|why| BenchError::Share(format!("{why} (reader exit: {status}; its stderr:\n{stderr})")))?;
    if result.acked < backlog.messages {
        return Err(BenchError::Share(format!(
            "{members} members acknowledged {} of {} records within {} s ({result:?}; its stderr:\n{stderr})",
            result.acked,
            backlog.messages,
            LIMIT.as_secs()
        )));
    }
    let elapsed = Duration::from_nanos(result.elapsed_ns);
    let cpu = Duration::from_nanos(result.cpu_ns);
    let rate = Rate {
        messages: result.acked,
        bytes: result.bytes,
        elapsed,
        cores: cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        cpu,
        broker_cpu: broker_between(broker_at_first, broker_at_last),
    };
    Ok((rate, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_is_read_whole_or_not_at_all() {
        let line = "share-bench: result records=10 acked=10 failed=0 redelivered=1 bytes=1000 \
                    elapsed_ns=2000000 cpu_ns=1500000 share_version=2";
        let r = parse_result(line).expect("a result");
        assert_eq!((r.records, r.acked, r.redelivered, r.bytes, r.share_version), (10, 10, 1, 1000, 2));
        assert_eq!((r.elapsed_ns, r.cpu_ns), (2_000_000, 1_500_000));
        assert_eq!(parse_result("share-bench: result records=10 acked=10"), None, "fields missing");
        assert_eq!(parse_result("share-bench: first"), None);
        assert_eq!(parse_result(&line.replace("acked=10", "acked=ten")), None);
    }

    #[test]
    fn the_reader_source_is_the_class_it_is_compiled_as() {
        assert!(SOURCE.contains("public class ShareBench "));
        assert!(SOURCE.contains("AcknowledgeType.ACCEPT"));
        assert!(SOURCE.contains("\"share.acknowledgement.mode\", \"explicit\""));
    }
}
