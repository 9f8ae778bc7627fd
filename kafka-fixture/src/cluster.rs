//! A running Kafka cluster: its nodes' JVMs, storage, logs and ports; started, killed and
//! restarted here, and waited for until every running node answers a metadata request.
//!
//! Every JVM ends with the process that started it: a watchdog shell waits on a pipe only this
//! process holds and, when it closes, however the process ends, kills every JVM the cluster
//! started (by PID) and removes the cluster's directory unless [`Cluster::keep_logs`] was
//! called. Dropping the cluster kills its JVMs at once.

mod properties;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{classpath, free_port, FixtureError};
use properties::{server_properties, Ports};

/// How long the cluster may take to answer a metadata request after its JVMs started.
const START_LIMIT: Duration = Duration::from_secs(90);
/// Lines of a node's log that [`Cluster::tails`] shows.
const TAIL_LINES: usize = 60;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Nodes, each broker and controller: replication factor and `min.insync.replicas` as a
    /// production cluster has them (3 and 2 for three nodes, 1 and 1 for one).
    pub nodes: usize,
    /// Lines appended to every node's server.properties (limits a test lowers, an authorizer).
    pub extra_properties: String,
    /// A SASL_SSL and a mutual-TLS listener besides the plaintext one (single-node clusters).
    pub tls: Option<TlsListeners>,
    /// A SCRAM user (name, password) written into the KRaft metadata at format time (KIP-900),
    /// for SCRAM-SHA-256 and -512, as a managed cluster would have it.
    pub scram_user: Option<(String, String)>,
    /// The JVM's maximum heap, e.g. `768m`.
    pub heap: String,
}

impl ClusterSpec {
    /// `nodes` plaintext nodes with nothing else.
    pub fn plaintext(nodes: usize) -> Self {
        Self { nodes, extra_properties: String::new(), tls: None, scram_user: None, heap: "768m".into() }
    }
}

/// The TLS listeners' files: the broker's certificate chain and key in one PEM file, and the CA
/// (PEM) that clients' certificates must come from on the mutual-TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListeners {
    pub keystore: PathBuf,
    pub ca: PathBuf,
}

/// A running cluster of one or more nodes.
pub struct Cluster {
    /// Every node's plaintext listener.
    bootstrap: String,
    /// The SASL_SSL listener's address (with [`ClusterSpec::tls`] on a single node; empty otherwise).
    sasl_ssl: String,
    /// The mutual-TLS listener's address (likewise).
    ssl: String,
    /// The nodes' data and logs; removed when the cluster ends unless [`Cluster::keep_logs`].
    dir: PathBuf,
    /// Node `n` (its `node.id`) is `nodes[n - 1]`.
    nodes: Vec<Node>,
    /// Its write end is the watchdog's pipe: closing it (dropping it, or the process ending)
    /// makes the watchdog kill every JVM listed in `dir/pids`.
    watchdog: Option<(Child, ChildStdin)>,
    /// The JVM's maximum heap.
    heap: String,
}

/// One node: broker and controller in one JVM.
struct Node {
    id: usize,
    properties: PathBuf,
    log: PathBuf,
    /// None while the node is killed.
    java: Option<Child>,
}

/// A fresh directory for a cluster's data and logs (`/tmp/fanout-kafka-*`), where a caller puts
/// what the cluster needs before it starts (TLS files).
pub fn temp_dir() -> Result<PathBuf, FixtureError> {
    Ok(tempfile::Builder::new()
        .prefix("fanout-kafka-")
        .tempdir()
        .map_err(FixtureError::io("creating the cluster's directory"))?
        .keep())
}

impl Cluster {
    /// Formats every node's storage in `dir`, starts their JVMs and waits until each answers.
    pub fn start(dir: PathBuf, spec: &ClusterSpec) -> Result<Self, FixtureError> {
        let count = spec.nodes.max(1);
        let ports: Vec<Ports> = (0..count)
            .map(|_| Ports { plaintext: free_port(), controller: free_port(), sasl_ssl: free_port(), ssl: free_port() })
            .collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.controller)).collect();
        let tls = spec.tls.as_ref().filter(|_| count == 1);
        let started = Instant::now();
        let cluster_id = cluster_id();
        // The watchdog first: a JVM started below is listed for it before anything can fail.
        let watchdog = Some(spawn_watchdog(&dir)?);
        let mut nodes = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let id = i + 1;
            let properties = dir.join(format!("server-{id}.properties"));
            let log = dir.join(if count == 1 { "broker.log".to_string() } else { format!("node-{id}.log") });
            let text = server_properties(id, &dir.join(format!("data-{id}")), p, &voters.join(","), count, tls)
                + &spec.extra_properties;
            std::fs::write(&properties, text).map_err(FixtureError::io(format!("writing {}", properties.display())))?;
            let mut format = Command::new("java");
            format
                .args(["-cp", &classpath(), "kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                .arg(&properties);
            if let Some((user, password)) = &spec.scram_user {
                for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                    format.args(["--add-scram", &format!("{mechanism}=[name={user},password={password}]")]);
                }
            }
            let status = format
                .stdout(log_file(&log)?)
                .stderr(log_file(&log)?)
                .status()
                .map_err(|source| FixtureError::NoJava { program: "java", source })?;
            if !status.success() {
                return Err(FixtureError::Format { node: id, log_tail: tail(&log) });
            }
            nodes.push(Node { id, properties, log, java: None });
        }
        let bootstrap = ports.iter().map(|p| format!("127.0.0.1:{}", p.plaintext)).collect::<Vec<_>>().join(",");
        let (sasl_ssl, ssl) = match tls {
            Some(_) => (format!("127.0.0.1:{}", ports[0].sasl_ssl), format!("127.0.0.1:{}", ports[0].ssl)),
            None => (String::new(), String::new()),
        };
        let mut cluster = Self { bootstrap, sasl_ssl, ssl, dir, nodes, watchdog, heap: spec.heap.clone() };
        for id in 1..=count {
            cluster.launch(id)?;
        }
        cluster.wait_until_answering(started)?;
        Ok(cluster)
    }

    /// Starts node `id`'s JVM (its storage formatted already) and lists its PID for the
    /// watchdog.
    fn launch(&mut self, id: usize) -> Result<(), FixtureError> {
        let pids = self.dir.join("pids");
        let node = self.nodes.get_mut(id.wrapping_sub(1)).ok_or(FixtureError::NoNode(id))?;
        let java = Command::new("java")
            .args([&format!("-Xmx{}", self.heap), "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            // Timestamps in the log; the config dumps of every client and server at warn.
            .args([
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn",
            ])
            .args(["-cp", &classpath(), "kafka.Kafka"])
            .arg(&node.properties)
            .stdin(Stdio::null())
            .stdout(log_file(&node.log)?)
            .stderr(log_file(&node.log)?)
            .spawn()
            .map_err(|source| FixtureError::NoJava { program: "java", source })?;
        let listed = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pids)
            .and_then(|mut file| writeln!(file, "{}", java.id()));
        node.java = Some(java);
        listed.map_err(FixtureError::io(format!("listing the JVM in {}", pids.display())))
    }

    /// Kills node `id` (SIGKILL: no controlled shutdown, as a crashed machine).
    pub fn kill(&mut self, id: usize) {
        if let Some(mut java) = self.nodes.get_mut(id.wrapping_sub(1)).and_then(|n| n.java.take()) {
            let _ = java.kill();
            let _ = java.wait();
        }
    }

    /// Starts node `id` again on its storage and waits until the cluster lists it.
    pub fn restart(&mut self, id: usize) -> Result<(), FixtureError> {
        match self.nodes.get(id.wrapping_sub(1)) {
            None => return Err(FixtureError::NoNode(id)),
            Some(node) if node.java.is_some() => return Err(FixtureError::Running(id)),
            Some(_) => {}
        }
        let started = Instant::now();
        self.launch(id)?;
        self.wait_until_answering(started)
    }

    /// Waits until every running node answers in the cluster's metadata.
    fn wait_until_answering(&mut self, started: Instant) -> Result<(), FixtureError> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).set("log_level", "3").create()?;
        let running: Vec<i32> = self.nodes.iter().filter(|n| n.java.is_some()).map(|n| n.id as i32).collect();
        loop {
            for node in &mut self.nodes {
                let exited = node.java.as_mut().and_then(|j| j.try_wait().ok().flatten());
                if let Some(status) = exited {
                    return Err(FixtureError::Exited { node: node.id, status, log_tail: tail(&node.log) });
                }
            }
            if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_millis(500)) {
                let listed: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                if running.iter().all(|id| listed.contains(id)) {
                    return Ok(());
                }
            }
            if started.elapsed() > START_LIMIT {
                return Err(FixtureError::NotAnswering { limit_s: START_LIMIT.as_secs(), tails: self.tails() });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every node's log.
    pub fn tails(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ({}) ---\n{}", n.id, n.log.display(), tail(&n.log))).collect()
    }

    /// Keeps the cluster's directory (data and logs) after it ends, for a failure to be read.
    pub fn keep_logs(&self) {
        let _ = std::fs::write(self.dir.join("keep"), "kept for its logs\n");
    }

    /// Every node's plaintext listener, comma-separated.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The SASL_SSL listener (empty without [`ClusterSpec::tls`]).
    pub fn sasl_ssl(&self) -> &str {
        &self.sasl_ssl
    }

    /// The mutual-TLS listener (empty without [`ClusterSpec::tls`]).
    pub fn ssl(&self) -> &str {
        &self.ssl
    }

    /// The cluster's directory: data, logs, properties.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many nodes the cluster has (running or killed).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: usize) -> Option<&Path> {
        self.nodes.get(id.wrapping_sub(1)).map(|n| n.log.as_path())
    }

    /// Node `id`'s JVM process id while it runs (its CPU time is in `/proc/<pid>/stat`).
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.nodes.get(id.wrapping_sub(1)).and_then(|n| n.java.as_ref()).map(Child::id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut java) = node.java.take() {
                let _ = java.kill();
                let _ = java.wait();
            }
        }
        if let Some((mut watchdog, pipe)) = self.watchdog.take() {
            drop(pipe);
            let _ = watchdog.wait();
        }
    }
}

/// A shell that, when its stdin closes, kills every JVM listed in `dir/pids` (which happens
/// when this process ends however it ends: the pipe's write end is close-on-exec, held by no
/// one else), then removes `dir` unless a `keep` file is in it.
fn spawn_watchdog(dir: &Path) -> Result<(Child, ChildStdin), FixtureError> {
    let script = r#"read -r _ ; for pid in $(cat "$0/pids" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done ; [ -e "$0/keep" ] || rm -rf "$0""#;
    let mut child = Command::new("sh")
        .args(["-c", script])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(FixtureError::io("starting the watchdog shell"))?;
    let pipe = child.stdin.take().ok_or_else(|| FixtureError::Io {
        what: "the watchdog's stdin".into(),
        source: std::io::Error::other("not piped"),
    })?;
    Ok((child, pipe))
}

/// Appends to a node's log.
fn log_file(log: &Path) -> Result<std::fs::File, FixtureError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(FixtureError::io(format!("opening {}", log.display())))
}

/// A KRaft cluster id: 16 random bytes, base64url without padding (what
/// `kafka-storage.sh random-uuid` prints), not starting with `-` (which Kafka's tools refuse).
fn cluster_id() -> String {
    loop {
        let bytes: [u8; 16] = rand::rng().random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// The last lines of `log`.
fn tail(log: &Path) -> String {
    let Ok(file) = std::fs::File::open(log) else { return format!("(no log at {})", log.display()) };
    let lines: Vec<String> = std::io::BufReader::new(file).lines().map_while(Result::ok).collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].iter().map(|line| format!("{line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_what_kafka_storage_takes() {
        for _ in 0..100 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
