//! Processes as operators run them, for the tests that need them: `dev-kafka` (the mock
//! cluster as a process of its own), `serve` replicas with their configs, and a guard that
//! kills and reaps each child and prints its log's tail when a test fails.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::{free_port, ROUTE, TOPIC};

pub const BIN: &str = env!("CARGO_BIN_EXE_fanout-gateway");

/// A child process that is killed and reaped when the guard drops, on every path. When the
/// test is failing, the tail of the child's log is printed.
pub struct Process {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Self {
        let file = File::create(&log).expect("log file");
        let child = command
            .stderr(file.try_clone().expect("log file handle"))
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("FANOUT_LOG_FORMAT", "pretty")
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child, log }
    }

    /// SIGTERM through `kill(1)`: libc is not a dependency of this crate.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited unexpectedly with {status:?}:\n{}", self.name, tail(&self.log, 40));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ({}) ---\n{}", self.name, self.log.display(), tail(&self.log, 60));
        }
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `fanout-tools dev-kafka` as a child: its stdin is ours, so it also ends if this test
/// process dies without running destructors.
pub struct DevKafka {
    /// Dropped first: closing it asks the broker process to exit.
    pub stdin: Option<ChildStdin>,
    pub process: Process,
    pub _stdout: BufReader<ChildStdout>,
    pub bootstrap: String,
}

impl DevKafka {
    pub async fn start(dir: &Path, topics: &[(&str, i32)]) -> Self {
        let mut command = Command::new(crate::support::tools_bin());
        command.arg("dev-kafka").stdin(Stdio::piped()).stdout(Stdio::piped());
        for (name, partitions) in topics {
            command.args(["--topic", &format!("{name}:{partitions}")]);
        }
        let log = dir.join(format!("dev-kafka-{}.log", rand::rng().random::<u32>()));
        let mut process = Process::spawn("dev-kafka", &mut command, log);
        let stdin = process.child.stdin.take();
        let stdout = BufReader::new(process.child.stdout.take().expect("piped stdout"));
        let read = tokio::task::spawn_blocking(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            (stdout, line)
        });
        let (stdout, line) = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("dev-kafka printed its brokers within 30 s")
            .expect("reader task");
        let bootstrap = line
            .trim_end()
            .strip_prefix("BROKERS=")
            .unwrap_or_else(|| panic!("first line is BROKERS=...: {line:?}\n{}", tail(&process.log, 20)))
            .to_string();
        Self { stdin, process, _stdout: stdout, bootstrap }
    }
}

/// One `serve` process.
pub struct Gateway(pub Process);

impl Gateway {
    pub fn start(config: &Path, log: PathBuf) -> Self {
        let mut command = Command::new(BIN);
        command.args(["serve", "--config"]).arg(config).stdin(Stdio::null()).stdout(Stdio::null());
        Self(Process::spawn("serve", &mut command, log))
    }
}

impl std::ops::Deref for Gateway {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}

/// What goes into a test's `fanout.toml`.
#[derive(Clone)]
pub struct GatewaySettings {
    pub bootstrap: String,
    pub group: String,
    pub port: u16,
    pub commit_interval_ms: u64,
    pub shutdown_grace_ms: u64,
    pub delivery: &'static str,
    pub window_until_commit: bool,
    /// Which replica: its `group.instance.id` is `<group>-<instance>`.
    pub instance: u32,
    /// The admin port (/metrics); 0 for any.
    pub admin_port: u16,
    /// Handlers' acks may be slow: the drain of a revoked partition waits this long.
    pub extra: &'static str,
}

impl GatewaySettings {
    pub fn new(bootstrap: &str, prefix: &str) -> Self {
        // A port the kernel just handed out and released: every gateway of the test binds it,
        // so subscribers find the restarted one where the killed one was.
        let port = free_port();
        Self {
            bootstrap: bootstrap.to_string(),
            group: format!("{prefix}-{}", rand::rng().random::<u64>()),
            port,
            commit_interval_ms: 200,
            shutdown_grace_ms: 10_000,
            delivery: "at-least-once",
            window_until_commit: false,
            instance: 0,
            admin_port: 0,
            extra: "",
        }
    }

    /// Replica `n` of the same gateway: its own port and `group.instance.id`, the same group.
    pub fn replica(&self, n: u32) -> Self {
        Self { port: free_port(), admin_port: free_port(), instance: n, ..self.clone() }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The consumer group the route commits in: `<kafka.group_id>.<route>`.
    pub fn route_group(&self) -> String {
        format!("{}.{ROUTE}", self.group)
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
shutdown_grace_ms = {grace}

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
# A restart of a replica takes its predecessor's place (the same instance id).
group_instance_id = "{group}-{instance}"
commit_interval_ms = {commit}

[kafka.properties]
# The mock coordinator waits session.timeout.ms - 1 s for a departed member; keep it short.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
max_in_flight = 1000
delivery = "{delivery}"
window_until_commit = {window_until_commit}
{extra}
"#,
            port = self.port,
            grace = self.shutdown_grace_ms,
            bootstrap = self.bootstrap,
            group = self.group,
            commit = self.commit_interval_ms,
            delivery = self.delivery,
            window_until_commit = self.window_until_commit,
            instance = self.instance,
            admin_port = self.admin_port,
            extra = self.extra,
        );
        let path = dir.join(format!("{}-{}.toml", self.group, self.instance));
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// Where a test keeps its configs and its processes' logs. Kept after the test when
/// `FANOUT_TEST_KEEP` is set, to read the logs.
pub fn scratch() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("FANOUT_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs and configs kept in {}", dir.path().display());
    }
    dir
}

/// Polls `check` until it holds, failing after `limit` or as soon as a gateway exits.
pub async fn wait_until(limit: Duration, what: &str, gateways: &mut [&mut Gateway], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if tokio::task::block_in_place(&mut check) {
            return;
        }
        for gw in gateways.iter_mut() {
            gw.assert_running();
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
