//! A real Apache Kafka broker for tests: one node in KRaft combined mode (broker and
//! controller), its jars fetched from Maven Central by `tests/kafka/pom.xml` into
//! `target/kafka-jars` (`.ci/setup` does it), run as its own JVM on free loopback ports.
//!
//! [`RealKafka::shared`] starts one broker per test binary, on first use; each test gets a
//! [`Lease`] that prints the broker's log tail and keeps its log when the test fails.
//! [`RealKafka::cluster`] starts a cluster of its own for a fault test: three nodes, each
//! broker and controller, replication factor 3 and `min.insync.replicas=2`, whose nodes the
//! test kills and restarts ([`RealKafka::kill`], [`RealKafka::restart`]). Every JVM ends with
//! the test binary: a watchdog shell waits on a pipe only this process holds and, when it
//! closes, however the binary ends, kills every JVM the cluster started (by PID); a cluster
//! owned by a test is also killed when it is dropped.
//!
//! Besides its plaintext listener the broker has a SASL_SSL one ([`RealKafka::sasl_ssl`]):
//! TLS with a certificate made by the test's own CA ([`RealKafka::ca_file`]) and SCRAM-SHA-256
//! and -512 for the user [`SCRAM_USER`], whose credentials are written into the KRaft metadata
//! when the storage is formatted (KIP-900), as a managed cluster would have them; and an SSL
//! one that requires a client certificate from the same CA ([`RealKafka::ssl`],
//! [`RealKafka::client_certificate`]): mutual TLS without SASL. [`RealKafka::over_sasl_ssl`]
//! points a gateway config at the SASL_SSL listener.
//!
//! [`RealKafka::with_acls`] starts a node whose brokers authorize every request (Kafka's
//! StandardAuthorizer, no ACL means no access): the plaintext listener and the controller's
//! traffic stay unrestricted, and [`SCRAM_USER`] on the SASL_SSL listener may do only what a
//! test allows it with [`RealKafka::allow`].
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
use fanout_gateway::config::Config;
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

/// A running cluster of one or more nodes.
pub struct RealKafka {
    /// Every node's plaintext listener.
    bootstrap: String,
    /// The SASL_SSL listener's address (node 1 of a single-node cluster; empty otherwise).
    sasl_ssl: String,
    /// The mutual-TLS listener's address (likewise).
    ssl: String,
    /// A client certificate and key (PEM files) the mutual-TLS listener accepts.
    client_certificate: (PathBuf, PathBuf),
    /// The CA (PEM) that signed the broker's certificate.
    ca_file: PathBuf,
    /// The nodes' data and logs; removed when the cluster ends unless a test failed.
    dir: PathBuf,
    /// Node `n` (its `node.id`) is `nodes[n - 1]`.
    nodes: Vec<Node>,
    /// Its write end is the watchdog's pipe: closing it (dropping it, or the process ending)
    /// makes the watchdog kill every JVM listed in `pids`.
    watchdog: Option<(Child, ChildStdin)>,
}

/// One node: broker and controller in one JVM.
struct Node {
    id: usize,
    plaintext: u16,
    properties: PathBuf,
    log: PathBuf,
    /// None while the node is killed.
    java: Option<Child>,
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
        let kafka = SHARED.get_or_init(|| Self::start(1, ""));
        Some(Lease { kafka })
    }

    /// A cluster of `nodes` nodes of the caller's own (replication factor and
    /// `min.insync.replicas` as a production cluster has them: 3 and 2 for three nodes), killed
    /// when it is dropped; None when the jars are missing outside CI.
    pub fn cluster(nodes: usize) -> Option<Self> {
        available().then(|| Self::start(nodes, ""))
    }

    /// One node of the caller's own whose server.properties end with `extra` (limits a test
    /// lowers: `offset.metadata.max.bytes`, `message.max.bytes`), killed when it is dropped.
    pub fn node_with(extra: &str) -> Option<Self> {
        available().then(|| Self::start(1, extra))
    }

    /// One node of the caller's own whose brokers authorize every request against Kafka's
    /// ACLs (the StandardAuthorizer of KRaft clusters, no ACL meaning no access). The
    /// plaintext listener's principal, `User:ANONYMOUS`, is a super user: the controller
    /// listener and the inter-broker listener are plaintext too, so the node's own traffic and
    /// the test's setup (topics, records, [`RealKafka::allow`], committed offsets) keep every
    /// right. [`SCRAM_USER`] on the SASL_SSL listener is an ordinary principal,
    /// `User:fanout`, as is the mutual-TLS listener's certificate. Killed when it is dropped.
    pub fn with_acls() -> Option<Self> {
        Self::node_with(
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
",
        )
    }

    fn start(count: usize, extra: &str) -> Self {
        let jars = jars_dir();
        let classpath = format!("{}/*", jars.display());
        let dir = tempfile::Builder::new().prefix("fanout-kafka-").tempdir().expect("a temp dir").keep();
        let ports: Vec<Ports> = (0..count)
            .map(|_| Ports {
                plaintext: super::free_port(),
                controller: super::free_port(),
                sasl_ssl: super::free_port(),
                ssl: super::free_port(),
            })
            .collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.controller)).collect();
        // The SASL_SSL listener's certificate, for 127.0.0.1 and localhost: the key and its
        // chain in one PEM file (Kafka's PEM keystore; an unencrypted key needs Kafka 3.2+).
        let ca = super::pki::TestCa::new("kafka");
        let leaf = ca.server();
        let keystore = dir.join("broker-keystore.pem");
        std::fs::write(&keystore, format!("{}{}", leaf.key_pem, leaf.cert_pem)).expect("keystore written");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("CA written");
        let client_certificate = ca.client("fanout-gateway").write(&dir, "client");

        let started = Instant::now();
        let cluster_id = cluster_id();
        let scram = |mechanism: &str| format!("{mechanism}=[name={SCRAM_USER},password={SCRAM_PASSWORD}]");
        let mut nodes = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let id = i + 1;
            let properties = dir.join(format!("server-{id}.properties"));
            let log = dir.join(if count == 1 { "broker.log".to_string() } else { format!("node-{id}.log") });
            // A single node also serves SASL_SSL and mutual TLS; a cluster is for faults,
            // plaintext only.
            let tls = (count == 1).then_some((keystore.as_path(), ca_file.as_path()));
            let text = server_properties(id, &dir.join(format!("data-{id}")), p, &voters.join(","), count, tls) + extra;
            std::fs::write(&properties, text).expect("server.properties written");
            let format = Command::new("java")
                .args(["-cp", &classpath, "kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                .arg(&properties)
                .args(["--add-scram", &scram("SCRAM-SHA-256"), "--add-scram", &scram("SCRAM-SHA-512")])
                .stdout(log_file(&log))
                .stderr(log_file(&log))
                .status()
                .expect("java runs (Java 17 or newer)");
            assert!(format.success(), "formatting KRaft storage of node {id} failed: {}", tail(&log));
            nodes.push(Node { id, plaintext: p.plaintext, properties, log, java: None });
        }
        let watchdog = Some(spawn_watchdog(&dir));
        let bootstrap = ports.iter().map(|p| format!("127.0.0.1:{}", p.plaintext)).collect::<Vec<_>>().join(",");
        let sasl_ssl = if count == 1 { format!("127.0.0.1:{}", ports[0].sasl_ssl) } else { String::new() };
        let ssl = if count == 1 { format!("127.0.0.1:{}", ports[0].ssl) } else { String::new() };
        let mut kafka = Self { bootstrap, sasl_ssl, ssl, client_certificate, ca_file, dir, nodes, watchdog };
        for id in 1..=count {
            kafka.launch(id);
        }
        kafka.wait_until_answering(started);
        kafka
    }

    /// Starts node `id`'s JVM (its storage formatted already) and lists its PID for the
    /// watchdog.
    fn launch(&mut self, id: usize) {
        let classpath = format!("{}/*", jars_dir().display());
        let node = &mut self.nodes[id - 1];
        let java = Command::new("java")
            .args(["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            // Timestamps in the log; the config dumps of every client and server at warn.
            .args([
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn",
            ])
            .args(["-cp", &classpath, "kafka.Kafka"])
            .arg(&node.properties)
            .stdin(Stdio::null())
            .stdout(log_file(&node.log))
            .stderr(log_file(&node.log))
            .spawn()
            .expect("java starts");
        let mut pids =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("pids")).expect("pid list");
        writeln!(pids, "{}", java.id()).expect("pid listed");
        node.java = Some(java);
    }

    /// Kills node `id` (SIGKILL: no controlled shutdown, as a crashed machine).
    pub fn kill(&mut self, id: usize) {
        if let Some(mut java) = self.nodes[id - 1].java.take() {
            let _ = java.kill();
            let _ = java.wait();
        }
    }

    /// Starts node `id` again on its storage and waits until the cluster lists it.
    pub fn restart(&mut self, id: usize) {
        assert!(self.nodes[id - 1].java.is_none(), "node {id} runs");
        let started = Instant::now();
        self.launch(id);
        self.wait_until_answering(started);
    }

    /// The node that leads `partition` of `topic`, as the cluster's metadata says (-1 for none).
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let consumer = self.client("leader-check");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map_or(-1, |p| p.leader())
    }

    /// Waits until every running node answers in the cluster's metadata.
    fn wait_until_answering(&mut self, started: Instant) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client");
        let running: Vec<i32> = self.nodes.iter().filter(|n| n.java.is_some()).map(|n| n.id as i32).collect();
        loop {
            for node in &mut self.nodes {
                if let Some(status) = node.java.as_mut().and_then(|j| j.try_wait().expect("broker process state")) {
                    panic!("Kafka node {} exited ({status}) before it answered: {}", node.id, tail(&node.log));
                }
            }
            if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_millis(500)) {
                let listed: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                if running.iter().all(|id| listed.contains(id)) {
                    eprintln!(
                        "real Kafka ({} node{}) at {} answered after {:.1} s (logs: {})",
                        running.len(),
                        if running.len() == 1 { "" } else { "s" },
                        self.bootstrap,
                        started.elapsed().as_secs_f64(),
                        self.dir.display()
                    );
                    return;
                }
            }
            assert!(started.elapsed() < START_LIMIT, "the Kafka cluster did not answer in time: {}", self.tails());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every node's log.
    fn tails(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ({}) ---\n{}", n.id, n.log.display(), tail(&n.log))).collect()
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The SASL_SSL listener (TLS, then SCRAM-SHA-256 or -512 as [`SCRAM_USER`]).
    pub fn sasl_ssl(&self) -> &str {
        &self.sasl_ssl
    }

    /// The mutual-TLS listener (SSL, a client certificate required; single-node clusters).
    pub fn ssl(&self) -> &str {
        &self.ssl
    }

    /// A certificate and key (PEM files) the mutual-TLS listener accepts.
    pub fn client_certificate(&self) -> (&Path, &Path) {
        (&self.client_certificate.0, &self.client_certificate.1)
    }

    /// The CA (PEM file) that signed the SASL_SSL listener's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Node 1's log file.
    pub fn log(&self) -> &Path {
        &self.nodes[0].log
    }

    /// `config` (its routes and settings) through the SASL_SSL listener as [`SCRAM_USER`]:
    /// SCRAM-SHA-512 over TLS, the broker's certificate checked against the test's CA, the
    /// password read from `password_file` as a deployment mounts a Secret.
    pub fn over_sasl_ssl(&self, mut config: Config, password_file: &Path) -> Config {
        config.kafka.bootstrap_servers = self.sasl_ssl.clone();
        let properties = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", SCRAM_USER),
            ("ssl.ca.location", &self.ca_file.display().to_string()),
        ];
        for (key, value) in properties {
            config.kafka.properties.insert(key.into(), value.to_string());
        }
        config.kafka.secrets.insert("sasl.password".into(), format!("file:{}", password_file.display()));
        config.resolve_secrets(|_| None).expect("the password file is read");
        config.validate().expect("valid config");
        config
    }

    /// Allows `principal` (`User:fanout`) each of the operations (`Read`, `Describe`, ...)
    /// listed with each resource, as `kafka-acls.sh --add --allow-principal` would, through
    /// Kafka's Admin API on the plaintext listener (the jars' own client, run by `java` from
    /// a source file: the broker's jars bring no ACL tool), and waits until the broker
    /// enforces them. A group or topic named `*` stands for every one.
    pub fn allow(&self, principal: &str, grants: &[(Resource<'_>, &[&str])]) {
        let source = self.dir.join("Acls.java");
        std::fs::write(&source, ACLS_JAVA).expect("Acls.java written");
        let mut command = Command::new("java");
        command
            .args(["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", &format!("{}/*", jars_dir().display())])
            .arg(&source)
            .args([self.bootstrap.as_str(), principal]);
        for (resource, operations) in grants {
            let (kind, name) = match resource {
                Resource::Topic(name) => ("topic", name),
                Resource::Group(name) => ("group", name),
            };
            command.args([kind, name, &operations.join(",")]);
        }
        let out = command.output().expect("java runs (Java 17 or newer)");
        assert!(
            out.status.success(),
            "ACLs for {principal} not created: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates `topic` with `partitions` partitions (replicated on every node) and topic-level
    /// `configs` (`cleanup.policy`, `segment.ms`, ...), through rdkafka's admin client, and
    /// waits until its partitions have leaders.
    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.nodes.len() as i32));
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
        self.committed_with_metadata(group, topic, partitions).into_iter().map(|(p, (o, _))| (p, o)).collect()
    }

    /// `group`'s committed offset and metadata for each partition of `topic` that has one, as
    /// an independent client reads them.
    pub fn committed_with_metadata(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, (i64, String)> {
        let consumer = self.client(group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_range(topic, 0, partitions - 1);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), (o, e.metadata().to_string()))),
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
        for node in &mut self.nodes {
            if let Some(mut java) = node.java.take() {
                let _ = java.kill();
                let _ = java.wait();
            }
        }
        if std::thread::panicking() {
            let _ = std::fs::write(self.dir.join("keep"), "a test failed\n");
            eprintln!("--- tails of the Kafka logs in {} (kept) ---\n{}", self.dir.display(), self.tails());
        }
        if let Some((mut watchdog, pipe)) = self.watchdog.take() {
            drop(pipe);
            let _ = watchdog.wait();
        }
    }
}

/// What an ACL of [`RealKafka::allow`] is about.
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
}

/// `java Acls.java BOOTSTRAP PRINCIPAL (TYPE NAME OPERATION[,OPERATION...])...`: creates an
/// ALLOW ACL (any host, a literal resource name) for each operation on each resource, then
/// waits until the broker lists every one of them (its authorizer has taken them).
const ACLS_JAVA: &str = r#"
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Acls {
    public static void main(String[] args) throws Exception {
        Properties properties = new Properties();
        properties.put("bootstrap.servers", args[0]);
        String principal = args[1];
        List<AclBinding> acls = new ArrayList<>();
        for (int i = 2; i + 2 < args.length; i += 3) {
            ResourceType type = ResourceType.fromString(args[i]);
            if (type == ResourceType.UNKNOWN) throw new IllegalArgumentException("resource type " + args[i]);
            ResourcePattern resource = new ResourcePattern(type, args[i + 1], PatternType.LITERAL);
            for (String name : args[i + 2].split(",")) {
                AclOperation operation = AclOperation.fromString(name);
                if (operation == AclOperation.UNKNOWN) throw new IllegalArgumentException("operation " + name);
                acls.add(new AclBinding(resource,
                    new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW)));
            }
        }
        try (Admin admin = Admin.create(properties)) {
            admin.createAcls(acls).all().get();
            long deadline = System.currentTimeMillis() + 30_000;
            while (true) {
                Collection<AclBinding> listed = admin.describeAcls(AclBindingFilter.ANY).values().get();
                if (listed.containsAll(acls)) return;
                if (System.currentTimeMillis() > deadline) throw new IllegalStateException("not listed: " + acls);
                Thread.sleep(100);
            }
        }
    }
}
"#;

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
            eprintln!("--- tails of the Kafka logs in {} (kept) ---\n{}", self.kafka.dir.display(), self.kafka.tails());
        }
    }
}

/// A shell that, when its stdin closes, kills every JVM listed in `dir/pids` (which happens
/// when this process ends however it ends: the pipe's write end is close-on-exec, held by no
/// one else), then removes `dir` unless a failed test left a `keep` file in it.
fn spawn_watchdog(dir: &Path) -> (Child, ChildStdin) {
    let script = r#"read -r _ ; for pid in $(cat "$0/pids" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done ; [ -e "$0/keep" ] || rm -rf "$0""#;
    let mut child = Command::new("sh")
        .args(["-c", script])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog shell starts");
    let pipe = child.stdin.take().expect("watchdog's stdin");
    (child, pipe)
}

/// Appends to a node's log.
fn log_file(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(log).expect("broker log")
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
    ssl: u16,
}

/// Node `id` of `count`, broker and controller, with the cluster's `voters`; replication as
/// the cluster's size allows (1, or 3 with `min.insync.replicas` 2), small internal topics,
/// quick group joins (KIP-848 groups heartbeat every 500 ms, so an assignment moves within a
/// second) and a quick log cleaner (compacted topics in tests). A plaintext
/// listener, and with `tls` (a keystore with the broker's certificate and key, and the CA) a
/// SASL_SSL one (SCRAM over TLS) and an SSL one requiring a client certificate from that CA.
fn server_properties(
    id: usize,
    data: &Path,
    ports: &Ports,
    voters: &str,
    count: usize,
    tls: Option<(&Path, &Path)>,
) -> String {
    let Ports { plaintext, controller, sasl_ssl, ssl } = ports;
    let replicas = count.min(3);
    let min_isr = if replicas >= 3 { 2 } else { 1 };
    let (listeners, advertised, protocols, sasl) = match tls {
        Some((keystore, ca)) => {
            let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
            (
                format!(
                    "PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller},\
                     SASL_SSL://127.0.0.1:{sasl_ssl},SSL://127.0.0.1:{ssl}"
                ),
                format!("PLAINTEXT://127.0.0.1:{plaintext},SASL_SSL://127.0.0.1:{sasl_ssl},SSL://127.0.0.1:{ssl}"),
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
                format!(
                    "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location={keystore}
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required
",
                    keystore = keystore.display(),
                    ca = ca.display(),
                ),
            )
        }
        None => (
            format!("PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller}"),
            format!("PLAINTEXT://127.0.0.1:{plaintext}"),
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            String::new(),
        ),
    };
    format!(
        "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners={listeners}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
{sasl}log.dirs={data}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
log.cleaner.backoff.ms=200
log.retention.check.interval.ms=1000
",
        data = data.display(),
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
