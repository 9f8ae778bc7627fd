//! The Python example (examples/python) against the demo gateway: a service skeleton on the
//! fanout_subscriber library (clients/python, imported from its source tree here as
//! `PYTHONPATH=clients/python/src`, where a service would `pip install` it). It retries with
//! backoff until a gateway listens, acks, drains and reports; a status a retry cannot fix ends
//! it with exit code 2. Proves the contract is usable from another gRPC stack as a service
//! developer would use it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "support/processes.rs"]
mod processes;
mod support;

use processes::Process;
use support::{free_port, python, tools_bin};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COUNT: u64 = 2_000;

/// A child process (killed and reaped on drop, its stderr's tail printed when a test fails)
/// whose stdout also goes to a file, so both can be read whatever happens.
struct Proc {
    process: Process,
    stdout: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &'static str, command: &mut std::process::Command) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        command.stdin(Stdio::null()).stdout(File::create(&stdout).expect("stdout file"));
        let process = Process::spawn(name, command, dir.join(format!("{name}.err")));
        Proc { process, stdout }
    }

    /// The example, with the library from the repository's clients/python/src.
    fn python(dir: &Path, args: &[&str]) -> Proc {
        let mut command = std::process::Command::new(python());
        command
            .arg(format!("{ROOT}/examples/python/subscriber.py"))
            .args(args)
            .env("PYTHONPATH", format!("{ROOT}/clients/python/src"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        Proc::spawn(dir, "python", &mut command)
    }

    /// The demo gateway: embedded Kafka, route `demo`, one built-in subscriber besides ours.
    fn demo(dir: &Path, grpc: u16, admin: u16, rate: u32) -> Proc {
        let (listen, admin_listen, rate) =
            (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{admin}"), rate.to_string());
        let args = ["demo", "--duration", "30", "--subscribers", "1", "--rate", &rate, "--partitions", "4"];
        let args = [&args[..], &["--listen", &listen, "--admin-listen", &admin_listen]].concat();
        Proc::spawn(dir, "demo", std::process::Command::new(tools_bin()).args(args))
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// Everything it printed, for assertion messages.
    fn output(&self) -> String {
        format!("--- stdout ---\n{}--- stderr ---\n{}", self.stdout(), self.stderr())
    }

    /// Its exit status, or a panic showing its output (and `other`'s) when it runs too long.
    async fn exit_within(&mut self, limit: Duration, other: &Proc) -> ExitStatus {
        match self.process.wait_exit(limit).await {
            Some(status) => status,
            None => panic!("still running after {limit:?}:\n{}\n=== demo ===\n{}", self.output(), other.output()),
        }
    }
}

/// The summary line's numbers: `python-subscriber: acked=<n> replicas=<k> reconnects=<r>`.
fn summary(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout.lines().rev().find(|l| l.starts_with("python-subscriber: acked="))?;
    let field = |name: &str| {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    Some((field("acked")?, field("replicas")?, field("reconnects")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_retries_until_the_gateway_listens_then_acks_and_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, admin) = (free_port(), free_port());
    let gateway = format!("127.0.0.1:{grpc}");
    let count = COUNT.to_string();
    // Started first: nothing listens yet, so it must retry with backoff.
    // The demo's route is split by `track`: a subscriber takes messages as one of its cohorts.
    let args = [
        "--gateway",
        &gateway,
        "--route",
        "demo",
        "--count",
        &count,
        "--label",
        "lang=python",
        "--label",
        "track=stable",
    ];
    let mut python = Proc::python(dir.path(), &[&args[..], &["--name", "python-example"]].concat());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let demo = Proc::demo(dir.path(), grpc, admin, 2_000);
    let retrying = python.process.child.try_wait().expect("poll the subscriber");
    assert!(retrying.is_none(), "the subscriber keeps retrying while no gateway listens:\n{}", python.output());

    let status = python.exit_within(Duration::from_secs(90), &demo).await;
    let (stdout, stderr) = (python.stdout(), python.stderr());
    let all = format!("{}\n=== demo ===\n{}", python.output(), demo.output());
    assert!(status.success(), "the Python subscriber exits 0 ({status}):\n{all}");
    let (acked, replicas, reconnects) = summary(&stdout).unwrap_or_else(|| panic!("a summary line:\n{all}"));
    assert!(acked >= COUNT, "acked {acked} < {COUNT}:\n{all}");
    assert_eq!(replicas, 1, "{all}");
    assert!(reconnects >= 1, "it reconnected after connection refused:\n{all}");
    assert!(stderr.contains("UNAVAILABLE") && stderr.contains("reconnect attempt 1 "), "retries are logged:\n{all}");
    // It drained: the gateway closed the stream only once every delivery was acked, well
    // before the subscriber's own deadline would have cut it.
    assert!(!stderr.contains("drain deadline passed"), "the gateway settled its acks and closed the stream:\n{all}");
    drop(demo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_exits_2_on_an_unknown_route_without_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, admin) = (free_port(), free_port());
    let demo = Proc::demo(dir.path(), grpc, admin, 100);
    // The demo prints a live line per second once its gateway serves.
    let up = Instant::now();
    while !demo.stdout().lines().any(|l| l.starts_with('[')) {
        assert!(up.elapsed() < Duration::from_secs(60), "the demo gateway comes up:\n{}", demo.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let gateway = format!("127.0.0.1:{grpc}");
    let mut python = Proc::python(dir.path(), &["--gateway", &gateway, "--route", "no-such-route"]);
    let status = python.exit_within(Duration::from_secs(30), &demo).await;
    let took = started.elapsed();
    let stderr = python.stderr();
    let all = format!("{}\n=== demo ===\n{}", python.output(), demo.output());
    assert_eq!(status.code(), Some(2), "a fatal status exits 2:\n{all}");
    assert!(stderr.contains("NOT_FOUND") && stderr.contains("no-such-route"), "the status is printed:\n{all}");
    assert!(!stderr.contains("reconnect attempt"), "NOT_FOUND is not retried:\n{all}");
    assert!(summary(&python.stdout()).is_none(), "no summary on a fatal exit:\n{all}");
    assert!(took < Duration::from_secs(15), "it gives up at once, not after retries: {took:?}\n{all}");
    drop(demo);
}
