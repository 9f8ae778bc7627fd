//! A real Apache Kafka cluster on this machine, for the gateway's tests
//! (`tests/support/real_kafka.rs`) and the benchmark (`fanout-tools bench --kafka apache`):
//! nodes in KRaft combined mode (broker and controller in one JVM each), run from the jars
//! `.ci/setup` copies into `target/kafka-jars` ([`jars`]), on free loopback ports ([`ports`]),
//! started, killed and restarted by [`cluster::Cluster`], which also waits until they answer,
//! keeps their logs and makes sure no JVM outlives the process that started it.
//!
//! It knows nothing of the gateway: what a test or the benchmark does with the broker (topics,
//! gateway configs, ACLs) stays with them.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod cluster;
pub mod jars;
pub mod ports;

pub use cluster::{Cluster, ClusterSpec, TlsListeners};
pub use jars::{classpath, compile_java, jars_dir, jars_present, kafka_version};
pub use ports::free_port;

/// Whether `metadata` shows `topic` created with `partitions` partitions, each with a leader:
/// a topic just created answers metadata before its partitions have leaders, and producing or
/// assigning before then fails or waits.
pub fn topic_led(metadata: &rdkafka::metadata::Metadata, topic: &str, partitions: i32) -> bool {
    metadata.topics().iter().any(|t| {
        t.name() == topic
            && t.error().is_none()
            && t.partitions().len() == partitions as usize
            && t.partitions().iter().all(|p| p.leader() >= 0)
    })
}

/// Why a cluster could not be started or a Java program not be built.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `java` or `javac` is not there (Java 17 or newer is needed).
    #[error("{program} does not run (Java 17 or newer is needed): {source}")]
    NoJava {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("formatting the KRaft storage of node {node} failed:\n{log_tail}")]
    Format { node: usize, log_tail: String },
    #[error("Kafka node {node} exited ({status}) before it answered:\n{log_tail}")]
    Exited { node: usize, status: std::process::ExitStatus, log_tail: String },
    #[error("the Kafka cluster did not answer within {limit_s} s:\n{tails}")]
    NotAnswering { limit_s: u64, tails: String },
    #[error("node {0} is running already")]
    Running(usize),
    #[error("no node {0} in this cluster")]
    NoNode(usize),
    #[error("javac {source_file} failed:\n{output}")]
    Compile { source_file: String, output: String },
    #[error("kafka client for the readiness probe: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

impl FixtureError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
