//! A real Apache Kafka broker for tests: one node in KRaft combined mode (broker and
//! controller), its jars fetched from Maven Central by `tests/kafka/pom.xml` into
//! `target/kafka-jars` (`.ci/setup` does it), run as its own JVM on free loopback ports. The
//! processes (storage format, start, kill, restart, readiness, watchdog, logs) are the
//! workspace's `fanout-kafka-fixture` crate, which the benchmark starts its broker with too;
//! this module adds what tests need around it: the TLS files, the SCRAM user, gateway configs,
//! topics, offsets and ACLs.
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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fanout_gateway::config::Config;
use fanout_kafka_fixture::{Cluster, ClusterSpec, TlsListeners};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub use fanout_kafka_fixture::jars_dir;

/// The SCRAM user the SASL_SSL listener knows, and its password.
pub const SCRAM_USER: &str = "fanout";
pub const SCRAM_PASSWORD: &str = "fanout-scram-secret";

/// A running cluster of one or more nodes, and the files a test's clients need to reach it.
pub struct RealKafka {
    /// The nodes' JVMs, ports and logs.
    cluster: Cluster,
    /// A client certificate and key (PEM files) the mutual-TLS listener accepts.
    client_certificate: (PathBuf, PathBuf),
    /// The CA (PEM) that signed the broker's certificate.
    ca_file: PathBuf,
}

/// Whether the jars are there. Without them: a note and `false` (the caller skips its test),
/// or, in CI, a failure.
pub fn available() -> bool {
    if fanout_kafka_fixture::jars_present() {
        return true;
    }
    let what = format!("no Apache Kafka jars in {} (run .ci/setup, which needs java and mvn)", jars_dir().display());
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

    /// `count` nodes; a single node also serves SASL_SSL and mutual TLS with certificates of
    /// the test's own CA (a cluster is for faults, plaintext only).
    fn start(count: usize, extra: &str) -> Self {
        let dir = fanout_kafka_fixture::cluster::temp_dir().expect("a directory for the cluster");
        // The TLS listeners' certificate, for 127.0.0.1 and localhost: the key and its chain
        // in one PEM file (Kafka's PEM keystore; an unencrypted key needs Kafka 3.2+).
        let ca = super::pki::TestCa::new("kafka");
        let leaf = ca.server();
        let keystore = dir.join("broker-keystore.pem");
        std::fs::write(&keystore, format!("{}{}", leaf.key_pem, leaf.cert_pem)).expect("keystore written");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("CA written");
        let client_certificate = ca.client("fanout-gateway").write(&dir, "client");
        let spec = ClusterSpec {
            extra_properties: extra.to_string(),
            tls: (count == 1).then(|| TlsListeners { keystore, ca: ca_file.clone() }),
            scram_user: Some((SCRAM_USER.into(), SCRAM_PASSWORD.into())),
            ..ClusterSpec::plaintext(count)
        };
        let started = Instant::now();
        let cluster = Cluster::start(dir, &spec).unwrap_or_else(|error| panic!("real Kafka did not start: {error}"));
        let kafka = Self { cluster, client_certificate, ca_file };
        kafka.said_answering(count, started);
        kafka
    }

    fn said_answering(&self, running: usize, started: Instant) {
        eprintln!(
            "real Kafka ({running} node{}) at {} answered after {:.1} s (logs: {})",
            if running == 1 { "" } else { "s" },
            self.cluster.bootstrap_servers(),
            started.elapsed().as_secs_f64(),
            self.cluster.dir().display()
        );
    }

    /// Kills node `id` (SIGKILL: no controlled shutdown, as a crashed machine).
    pub fn kill(&mut self, id: usize) {
        self.cluster.kill(id);
    }

    /// Starts node `id` again on its storage and waits until the cluster lists it.
    pub fn restart(&mut self, id: usize) {
        let started = Instant::now();
        self.cluster.restart(id).unwrap_or_else(|error| panic!("node {id} did not come back: {error}"));
        let running = (1..=self.cluster.size()).filter(|n| self.cluster.pid(*n).is_some()).count();
        self.said_answering(running, started);
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

    /// The last lines of every node's log.
    fn tails(&self) -> String {
        self.cluster.tails()
    }

    pub fn bootstrap_servers(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    /// The SASL_SSL listener (TLS, then SCRAM-SHA-256 or -512 as [`SCRAM_USER`]).
    pub fn sasl_ssl(&self) -> &str {
        self.cluster.sasl_ssl()
    }

    /// The mutual-TLS listener (SSL, a client certificate required; single-node clusters).
    pub fn ssl(&self) -> &str {
        self.cluster.ssl()
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
        self.cluster.log(1).expect("every cluster has a node 1")
    }

    /// `config` (its routes and settings) through the SASL_SSL listener as [`SCRAM_USER`]:
    /// SCRAM-SHA-512 over TLS, the broker's certificate checked against the test's CA, the
    /// password read from `password_file` as a deployment mounts a Secret.
    pub fn over_sasl_ssl(&self, mut config: Config, password_file: &Path) -> Config {
        config.kafka.bootstrap_servers = self.sasl_ssl().to_string();
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
        let source = self.cluster.dir().join("Acls.java");
        std::fs::write(&source, ACLS_JAVA).expect("Acls.java written");
        let mut command = Command::new("java");
        command
            .args(["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", &fanout_kafka_fixture::classpath()])
            .arg(&source)
            .args([self.bootstrap_servers(), principal]);
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
            ClientConfig::new().set("bootstrap.servers", self.bootstrap_servers()).create().expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.cluster.size() as i32));
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
            let led = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .is_ok_and(|m| fanout_kafka_fixture::topic_led(&m, topic, partitions));
            if led {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} has no leaders after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    /// Each partition's end as the broker reports it to a `read_committed` reader: the last
    /// stable offset, which is the high watermark when no transaction is open.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        self.ends(topic, partitions, "read_committed")
    }

    /// Each partition's high watermark (its end to a `read_uncommitted` reader), open
    /// transactions included.
    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        self.ends(topic, partitions, "read_uncommitted")
    }

    /// Each partition's end to a reader of `isolation`: librdkafka asks ListOffsets with the
    /// client's isolation level.
    fn ends(&self, topic: &str, partitions: i32, isolation: &str) -> HashMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("isolation.level", isolation)
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
    /// The JVMs end with the cluster (dropped after this); a failed test keeps the logs and
    /// sees their tails.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.cluster.keep_logs();
            eprintln!("--- tails of the Kafka logs in {} (kept) ---\n{}", self.cluster.dir().display(), self.tails());
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
            self.kafka.cluster.keep_logs();
            let dir = self.kafka.cluster.dir().display();
            eprintln!("--- tails of the Kafka logs in {dir} (kept) ---\n{}", self.kafka.tails());
        }
    }
}
