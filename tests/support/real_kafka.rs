//! A real Apache Kafka broker for tests: one node in KRaft combined mode (broker and
//! controller), its jars fetched from Maven Central by `tests/kafka/pom.xml` into
//! `target/kafka-jars` (`.ci/setup` does it), run as its own JVM on free loopback ports.
//!
//! [`RealKafka::shared`] starts one broker per test binary, on first use; each test gets a
//! [`Lease`] that prints the broker's log tail and keeps its log when the test fails. The
//! broker ends with the test binary: a watchdog shell waits on a pipe only this process
//! holds and kills the JVM by PID when it closes, however the binary ends. A broker made with
//! [`RealKafka::single_node`] and owned by a test is killed on drop instead.
//!
//! Besides its plaintext listener the broker has a SASL_SSL one ([`RealKafka::sasl_ssl`]):
//! TLS with a certificate made by the test's own CA ([`RealKafka::ca_file`]) and SCRAM-SHA-256
//! and -512 for the user [`SCRAM_USER`], whose credentials are written into the KRaft metadata
//! when the storage is formatted (KIP-900), as a managed cluster would have them.
//!
//! Without the jars the tests that need a broker are skipped with a note (a developer without
//! Java still runs everything else); with `CI=true` their absence fails the test.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// The SCRAM user the SASL_SSL listener knows, and its password.
pub const SCRAM_USER: &str = "fanout";
pub const SCRAM_PASSWORD: &str = "fanout-scram-secret";

/// How long the broker may take to answer a metadata request after its JVM started.
const START_LIMIT: Duration = Duration::from_secs(90);
/// Lines of the broker's log printed when a test fails.
const TAIL_LINES: usize = 60;

/// One running broker.
pub struct RealKafka {
    bootstrap: String,
    /// The SASL_SSL listener's address.
    sasl_ssl: String,
    /// The CA (PEM) that signed the broker's certificate.
    ca_file: PathBuf,
    /// The broker's data and log; removed when the broker ends unless a test failed.
    dir: PathBuf,
    log: PathBuf,
    java: Child,
    /// Its write end is the watchdog's pipe: closing it (dropping it, or the process ending)
    /// makes the watchdog kill the JVM.
    watchdog: Option<(Child, ChildStdin)>,
}

/// Where `.ci/setup` copies the broker's jars: FANOUT_KAFKA_JARS, or `target/kafka-jars`.
pub fn jars_dir() -> PathBuf {
    std::env::var_os("FANOUT_KAFKA_JARS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafka-jars"))
}

/// Whether the jars are there. Without them: a note and `false` (the caller skips its test),
/// or, in CI, a failure.
pub fn available() -> bool {
    let dir = jars_dir();
    let has_broker = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-")))
        .unwrap_or(false);
    if has_broker {
        return true;
    }
    let what = format!("no Apache Kafka jars in {} (run .ci/setup, which needs java and mvn)", dir.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}: CI must run the real-broker tests");
    eprintln!("SKIPPED: {what}");
    false
}

impl RealKafka {
    /// The broker of this test binary, started on first use; None (after a note) when the jars
    /// are missing outside CI.
    pub fn shared() -> Option<Lease> {
        static SHARED: OnceLock<RealKafka> = OnceLock::new();
        if !available() {
            return None;
        }
        let kafka = SHARED.get_or_init(|| Self::start(true));
        Some(Lease { kafka })
    }

    /// A broker of the caller's own, killed when it is dropped; None when the jars are
    /// missing outside CI.
    pub fn single_node() -> Option<Self> {
        available().then(|| Self::start(false))
    }

    fn start(watchdog: bool) -> Self {
        let jars = jars_dir();
        let classpath = format!("{}/*", jars.display());
        let dir = tempfile::Builder::new().prefix("fanout-kafka-").tempdir().expect("a temp dir").keep();
        let log = dir.join("broker.log");
        let ports =
            Ports { plaintext: super::free_port(), controller: super::free_port(), sasl_ssl: super::free_port() };
        // The SASL_SSL listener's certificate, for 127.0.0.1 and localhost: the key and its
        // chain in one PEM file (Kafka's PEM keystore; an unencrypted key needs Kafka 3.2+).
        let ca = super::pki::TestCa::new("kafka");
        let leaf = ca.server();
        let keystore = dir.join("broker-keystore.pem");
        std::fs::write(&keystore, format!("{}{}", leaf.key_pem, leaf.cert_pem)).expect("keystore written");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("CA written");
        let properties = dir.join("server.properties");
        std::fs::write(&properties, server_properties(&dir.join("data"), &ports, &keystore))
            .expect("server.properties written");
        let log_file = || std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("broker log");

        let started = Instant::now();
        let scram = |mechanism: &str| format!("{mechanism}=[name={SCRAM_USER},password={SCRAM_PASSWORD}]");
        let format = Command::new("java")
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "format", "-t", &cluster_id(), "-c"])
            .arg(&properties)
            .args(["--add-scram", &scram("SCRAM-SHA-256"), "--add-scram", &scram("SCRAM-SHA-512")])
            .stdout(log_file())
            .stderr(log_file())
            .status()
            .expect("java runs (Java 17 or newer)");
        assert!(format.success(), "formatting KRaft storage failed: {}", tail(&log));

        let java = Command::new("java")
            .args(["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            // Timestamps in the log; the config dumps of every client and server at warn.
            .args([
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn",
            ])
            .args(["-cp", &classpath, "kafka.Kafka"])
            .arg(&properties)
            .stdin(Stdio::null())
            .stdout(log_file())
            .stderr(log_file())
            .spawn()
            .expect("java starts");
        let watchdog = watchdog.then(|| spawn_watchdog(java.id(), &dir));
        let mut kafka = Self {
            bootstrap: format!("127.0.0.1:{}", ports.plaintext),
            sasl_ssl: format!("127.0.0.1:{}", ports.sasl_ssl),
            ca_file,
            dir,
            log,
            java,
            watchdog,
        };
        kafka.wait_until_answering(started);
        kafka
    }

    fn wait_until_answering(&mut self, started: Instant) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client");
        loop {
            if let Some(status) = self.java.try_wait().expect("broker process state") {
                panic!("the Kafka broker exited ({status}) before it answered: {}", tail(&self.log));
            }
            if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_millis(500)) {
                if !metadata.brokers().is_empty() {
                    eprintln!(
                        "real Kafka broker at {} answered after {:.1} s (log: {})",
                        self.bootstrap,
                        started.elapsed().as_secs_f64(),
                        self.log.display()
                    );
                    return;
                }
            }
            assert!(started.elapsed() < START_LIMIT, "the Kafka broker did not answer in time: {}", tail(&self.log));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The SASL_SSL listener (TLS, then SCRAM-SHA-256 or -512 as [`SCRAM_USER`]).
    pub fn sasl_ssl(&self) -> &str {
        &self.sasl_ssl
    }

    /// The CA (PEM file) that signed the SASL_SSL listener's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The broker's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) and topic-level
    /// `configs` (`cleanup.policy`, `segment.ms`, ...), through rdkafka's admin client, and
    /// waits until its partitions have leaders.
    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (key, value) in configs {
            new = new.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&new], &options).await.expect("create_topics answered");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("topic {name} not created: {code}"));
        }
        let consumer = self.client("topic-check");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let led = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).is_ok_and(|m| {
                m.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            });
            if led {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} has no leaders after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    /// Each partition's end as the broker reports it to a `read_committed` reader: the last
    /// stable offset, which is the high watermark when no transaction is open.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        (0..partitions)
            .map(|p| {
                let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("end offset");
                (p, end)
            })
            .collect()
    }

    /// The group's committed offset per partition of `topic` (partitions without one are
    /// left out).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let consumer = self.client(group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_range(topic, 0, partitions - 1);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Partitions whose committed offset is not the partition's end: (partition, committed,
    /// end). Empty when the group has committed everything (a partition never written to
    /// counts as committed at 0).
    pub fn uncommitted(&self, group: &str, topic: &str, partitions: i32) -> Vec<(i32, i64, i64)> {
        let committed = self.committed(group, topic, partitions);
        let mut behind: Vec<(i32, i64, i64)> = self
            .end_offsets(topic, partitions)
            .into_iter()
            .map(|(p, end)| (p, committed.get(&p).copied().unwrap_or(0), end))
            .filter(|(_, committed, end)| committed != end)
            .collect();
        behind.sort();
        behind
    }
}

impl Drop for RealKafka {
    fn drop(&mut self) {
        let _ = self.java.kill();
        let _ = self.java.wait();
        if let Some((mut watchdog, pipe)) = self.watchdog.take() {
            drop(pipe);
            let _ = watchdog.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- tail of the Kafka broker's log {} ---\n{}", self.log.display(), tail(&self.log));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A test's use of the shared broker: when the test fails, prints the broker's log tail and
/// keeps its directory after the binary ends.
pub struct Lease {
    kafka: &'static RealKafka,
}

impl std::ops::Deref for Lease {
    type Target = RealKafka;
    fn deref(&self) -> &RealKafka {
        self.kafka
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::fs::write(self.kafka.dir.join("keep"), "a test failed\n");
            eprintln!(
                "--- tail of the Kafka broker's log {} (kept) ---\n{}",
                self.kafka.log.display(),
                tail(&self.kafka.log)
            );
        }
    }
}

/// A shell that kills the JVM `pid` when its stdin closes, which happens when this process
/// ends however it ends (the pipe's write end is close-on-exec, held by no one else), then
/// removes the broker's directory unless a failed test left a `keep` file in it.
fn spawn_watchdog(pid: u32, dir: &Path) -> (Child, ChildStdin) {
    let script = r#"read -r _ ; kill -9 "$0" 2>/dev/null ; [ -e "$1/keep" ] || rm -rf "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", script])
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog shell starts");
    let pipe = child.stdin.take().expect("watchdog's stdin");
    (child, pipe)
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

/// The broker's loopback ports.
struct Ports {
    plaintext: u16,
    controller: u16,
    sasl_ssl: u16,
}

/// One node, broker and controller, replication factors 1, small internal topics, quick
/// group joins and a quick log cleaner (compacted topics in tests); a plaintext listener and
/// a SASL_SSL one (SCRAM over TLS, its certificate and key in `keystore`).
fn server_properties(data: &Path, ports: &Ports, keystore: &Path) -> String {
    let Ports { plaintext, controller, sasl_ssl } = ports;
    let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    format!(
        "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller},SASL_SSL://127.0.0.1:{sasl_ssl}
advertised.listeners=PLAINTEXT://127.0.0.1:{plaintext},SASL_SSL://127.0.0.1:{sasl_ssl}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=200
log.retention.check.interval.ms=1000
",
        data = data.display(),
        keystore = keystore.display(),
    )
}

/// The last lines of `log`.
fn tail(log: &Path) -> String {
    let Ok(file) = std::fs::File::open(log) else { return format!("(no log at {})", log.display()) };
    let lines: Vec<String> = std::io::BufReader::new(file).lines().map_while(Result::ok).collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let mut out = Vec::new();
    for line in &lines[from..] {
        let _ = writeln!(out, "{line}");
    }
    String::from_utf8_lossy(&out).into_owned()
}
