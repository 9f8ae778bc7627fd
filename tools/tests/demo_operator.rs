//! The embedded demo operated as its banner suggests, from a second terminal: `fanoutctl` with
//! the demo's token refuses a canary weight until a canary subscribes (or `--force`), drains a
//! demo subscriber, starts a replay, lists the poison the demo dead-letters and redrives it,
//! and `fanout-tools subscribe` attaches as the canary, says so once accepted and exits when
//! drained. Through all of it the demo still loses nothing and duplicates nothing.

#[path = "../../tests/support/shared.rs"]
mod shared;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_tools::demo::{self, DemoOptions, DEMO_TOKEN};
use parking_lot::Mutex;
use shared::{fanoutctl, free_port, init_logs};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::sync::watch;

/// `fanoutctl --gateway ADMIN --token demo-token ARGS...`.
async fn ctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--gateway", admin, "--token", DEMO_TOKEN];
    all.extend_from_slice(args);
    fanoutctl(&all).await
}

/// Asks `fanoutctl` until `check` holds for its stdout, or fails the test after `limit`.
async fn until(limit: Duration, what: &str, admin: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let (code, out, err) = ctl(admin, args).await;
        if code == 0 && check(&out) {
            return out;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}; last answer ({code}):\n{out}{err}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fanout-tools subscribe` with its stdout piped; its stderr (logs, errors) piped too, or
/// dropped for one that runs a while (nobody reads it, and a full pipe would stall it).
fn subscribe(args: &[&str], stderr: Stdio) -> Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout-tools"))
        .arg("subscribe")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("subscribe starts")
}

/// Reads `out` until a line starting with `prefix`; every line read is added to `seen`.
async fn line_starting(out: &mut BufReader<ChildStdout>, prefix: &str, seen: &mut String) -> String {
    let read = async {
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).await.expect("stdout");
            assert!(n > 0, "stdout ended before a `{prefix}` line:\n{seen}");
            seen.push_str(&line);
            if line.starts_with(prefix) {
                return line.trim_end().to_string();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.unwrap_or_else(|_| panic!("no `{prefix}` line: {seen}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operator_command_works_on_the_running_demo_and_nothing_is_lost() {
    init_logs();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let options = DemoOptions {
        // Ended by `stop` once the operator is done; the duration only bounds a stuck test.
        duration: Duration::from_secs(150),
        subscribers: 3,
        rate: 1_000,
        partitions: 4,
        listen: listen.clone(),
        admin_listen: admin.clone(),
    };
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
        .to_string();
    let (stop_tx, stop) = watch::channel(false);
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let demo = {
        let printed = printed.clone();
        demo::run(options, stop, move |line| {
            println!("{line}");
            printed.lock().push(line.to_string());
        })
    };

    let operate = async {
        let admin = admin.as_str();
        until(Duration::from_secs(30), "the demo's subscribers", admin, &["subscribers", "demo"], |out| {
            (0..3).all(|i| out.contains(&format!("demo-subscriber-{i}")))
        })
        .await;

        // A changing call needs the token.
        let (code, _, err) = fanoutctl(&["--gateway", admin, "weights", "set", "demo", "stable=90", "canary=10"]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("UNAUTHENTICATED"), "{err}");
        // No canary yet: its share would be held, so the change is refused, unless forced.
        let (code, _, err) = ctl(admin, &["weights", "set", "demo", "stable=90", "canary=10"]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("FAILED_PRECONDITION") && err.contains("canary"), "{err}");
        let (code, out, err) = ctl(admin, &["weights", "set", "demo", "stable=90", "canary=10", "--force"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("weights set to canary=10 stable=90"), "{out}");

        // The canary the banner suggests: it says `subscribed` once the gateway accepted it.
        let mut canary = subscribe(
            &["--gateway", &listen, "--route", "demo", "--label", "track=canary", "--name", "demo-canary"],
            Stdio::null(),
        );
        let mut canary_out = BufReader::new(canary.stdout.take().expect("piped"));
        let mut canary_seen = String::new();
        let first = line_starting(&mut canary_out, "subscribing", &mut canary_seen).await;
        assert!(first.contains("window: the route's default"), "{first}");
        let accepted = line_starting(&mut canary_out, "subscribed:", &mut canary_seen).await;
        assert!(accepted.contains("route demo accepted"), "{accepted}");
        // With a canary subscribed, no force is needed.
        let (code, _, err) = ctl(admin, &["weights", "set", "demo", "stable=80", "canary=20"]).await;
        assert_eq!(code, 0, "{err}");
        let (code, weights, err) = ctl(admin, &["weights", "get", "demo"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(weights.contains("canary") && weights.contains("stable"), "{weights}");

        let (code, out, err) = ctl(admin, &["drain", "demo", "demo-subscriber-0"]).await;
        assert_eq!(code, 0, "{out}{err}");

        let letters = until(Duration::from_secs(30), "a dead letter", admin, &["dlq", "list", "demo"], |out| {
            out.lines().any(|l| l.contains("poison"))
        })
        .await;
        assert!(letters.contains("demo-events.dlq"), "{letters}");
        // Messages exist by now: the replay from the demo's start has records to deliver again.
        let (code, out, err) = ctl(admin, &["replay", "demo", "--from-time", &start_ms, "--no-wait"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("replay ") && out.contains("of route demo"), "{out}");
        let total: u64 = out
            .split_once(" of ")
            .and_then(|(_, rest)| rest.split_once(" of "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a record count: {out}"));
        assert!(total >= 1_000, "{out}");
        let (code, out, err) = ctl(admin, &["dlq", "redrive", "demo", "--all"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("letter(s) redriven"), "{out}");

        // The canary leaves as an operator takes it out: weight back first, then a drain, which
        // ends `subscribe` with status 0 and its closing line.
        let (code, _, err) = ctl(admin, &["weights", "set", "demo", "stable=100"]).await;
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = ctl(admin, &["drain", "demo", "demo-canary"]).await;
        assert_eq!(code, 0, "{out}{err}");
        let closing = line_starting(&mut canary_out, "subscribe: received=", &mut canary_seen).await;
        assert!(canary_seen.contains("drained by the gateway"), "{canary_seen}");
        let status =
            tokio::time::timeout(Duration::from_secs(20), canary.wait()).await.expect("exits").expect("status");
        assert!(status.success(), "{status:?} {closing}\n{canary_seen}");

        // A route the gateway does not serve: refused, one line with the status, exit 1.
        let refused = subscribe(&["--gateway", &listen, "--route", "nope"], Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(20), refused.wait_with_output())
            .await
            .expect("ends")
            .expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(!stdout.contains("subscribed:"), "{stdout}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("refused the subscription to route \"nope\": NOT_FOUND"), "{stderr}");

        let _ = stop_tx.send(true);
    };

    let (report, ()) =
        tokio::time::timeout(Duration::from_secs(240), async { tokio::join!(demo, operate) }).await.expect("in time");
    let report = report.expect("the demo runs");
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert!(report.dead_lettered >= 1, "{report}");
    assert_eq!(report.committed, report.produced, "{report}");
    let printed = printed.lock();
    let banner = printed.iter().find(|l| l.contains("fanoutctl") && l.contains("status")).expect("banner");
    assert!(banner.ends_with(&format!("--gateway {admin} --token demo-token status")), "{banner}");
}
