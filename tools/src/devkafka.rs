//! A standalone Kafka for development and crash tests: librdkafka's mock cluster in a process
//! of its own, so that gateway processes can be killed and restarted against brokers that
//! keep their topics, offsets and commits.
//!
//! `fanout-tools dev-kafka` parses its `--topic NAME:PARTITIONS` arguments here
//! ([`TopicSpec`]), starts the cluster ([`DevKafka::start`]), prints where it listens and
//! lives until told to stop. The cluster is not `Send` (librdkafka's mock handle), so it stays
//! in the future that [`DevKafka::run`] returns, which `main` runs on its own thread.

use std::future::Future;
use std::str::FromStr;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tracing::info;

/// Kafka's own limit on topic name length.
const MAX_TOPIC_NAME: usize = 249;
/// Replicas per partition are capped here: enough to exercise follower fetching and leader
/// moves, and the usual production setting.
const MAX_REPLICATION: i32 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicSpecError {
    #[error("`{0}` is not NAME:PARTITIONS (e.g. events:8)")]
    Shape(String),
    #[error("`{arg}`: topic name {reason}")]
    Name { arg: String, reason: &'static str },
    #[error("`{arg}`: partitions must be a whole number from 1 to 10000")]
    Partitions { arg: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DevKafkaError {
    #[error("--brokers must be at least 1, got {0}")]
    Brokers(i32),
    #[error("topic `{0}` is given twice")]
    DuplicateTopic(String),
    #[error("cannot start the mock cluster: {0}")]
    Cluster(#[source] KafkaError),
    #[error("cannot create topic `{topic}`: {source}")]
    CreateTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// One `--topic NAME:PARTITIONS` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl FromStr for TopicSpec {
    type Err = TopicSpecError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let Some((name, partitions)) = arg.rsplit_once(':') else {
            return Err(TopicSpecError::Shape(arg.to_string()));
        };
        let bad_name = |reason| Err(TopicSpecError::Name { arg: arg.to_string(), reason });
        if name.is_empty() {
            return bad_name("is empty");
        }
        if name.len() > MAX_TOPIC_NAME {
            return bad_name("is longer than 249 characters");
        }
        if name == "." || name == ".." {
            return bad_name("cannot be `.` or `..`");
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad_name("may only contain letters, digits, `.`, `_` and `-`");
        }
        let partitions = partitions
            .parse::<i32>()
            .ok()
            .filter(|p| (1..=10_000).contains(p))
            .ok_or_else(|| TopicSpecError::Partitions { arg: arg.to_string() })?;
        Ok(Self { name: name.to_string(), partitions })
    }
}

/// A running mock cluster with its topics created. Dropping it shuts the brokers down.
pub struct DevKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevKafka {
    /// Starts `brokers` brokers and creates `topics` with replication factor
    /// min(3, brokers).
    pub fn start(brokers: i32, topics: &[TopicSpec]) -> Result<Self, DevKafkaError> {
        if brokers < 1 {
            return Err(DevKafkaError::Brokers(brokers));
        }
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            if !seen.insert(t.name.as_str()) {
                return Err(DevKafkaError::DuplicateTopic(t.name.clone()));
            }
        }
        let cluster = MockCluster::new(brokers).map_err(DevKafkaError::Cluster)?;
        let replication = brokers.min(MAX_REPLICATION);
        for t in topics {
            cluster
                .create_topic(&t.name, t.partitions, replication)
                .map_err(|source| DevKafkaError::CreateTopic { topic: t.name.clone(), source })?;
        }
        info!(brokers, topics = topics.len(), bootstrap = %cluster.bootstrap_servers(), "mock cluster up");
        Ok(Self { cluster })
    }

    /// `host:port,...` of every broker.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Keeps the cluster up until `stop` resolves, then shuts it down.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        stop.await;
        info!("stopping the mock cluster");
        drop(self.cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_spec_parses_name_and_partitions() {
        assert_eq!("events:8".parse(), Ok(TopicSpec { name: "events".into(), partitions: 8 }));
        assert_eq!("a.b_c-d:1".parse(), Ok(TopicSpec { name: "a.b_c-d".into(), partitions: 1 }));
    }

    #[test]
    fn bad_topic_specs_name_the_argument() {
        for bad in ["events", "events:x", "events:0", "events:-1", ":4", "ev/ents:4", "..:2", "events:99999"] {
            let error = bad.parse::<TopicSpec>().expect_err(bad).to_string();
            assert!(error.contains(&format!("`{bad}`")), "{bad}: {error}");
        }
    }
}
