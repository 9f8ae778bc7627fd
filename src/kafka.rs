//! Kafka side of the gateway: the consumer that owns all partitions of the routed topics, and
//! the record type that flows from it to the dispatcher.
//!
//! The consumer runs on a dedicated thread ([`consumer::spawn`]) and sends [`KafkaEvent`]s to
//! the dispatcher, in order: records, assignments and revocations. It takes
//! [`KafkaCommand`]s back (commit, pause, resume, stop, close). [`replay`] is the reader of an
//! operator's replay, beside the consumer and independent of its group.
//!
//! [`ClientReports`] ([`reports`]) is what every gateway client does with its failures.

mod commits;
pub mod consumer;
pub mod replay;
pub mod reports;
mod topics;
pub mod upgrade;

pub use reports::{ClientReports, ReportingContext};
pub(crate) use topics::principal;

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::error::KafkaError;

use crate::offsets::CommitPoint;

/// A partition of a topic. The topic name is shared, records of one topic point at one string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One Kafka record, detached from librdkafka's buffers so it can be held until acked.
#[derive(Debug, Clone)]
pub struct Record {
    pub tp: TopicPartition,
    pub offset: i64,
    /// None for a record without a key.
    pub key: Option<Bytes>,
    /// None for a tombstone (a null value, as compacted topics use to delete a key).
    pub value: Option<Bytes>,
    /// In the record's order; a name may repeat; None for a header without a value.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Producer or log-append time, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// Which record a delivery carries: stable across redeliveries. Subscribers ack by the
/// delivery's per-stream handle (`subscriptions::AckId`), not by this; its text form
/// `topic/partition/offset` names a record in dedup origins and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    pub tp: TopicPartition,
    pub offset: i64,
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tp.topic, self.tp.partition, self.offset)
    }
}

impl Record {
    /// The record's id: stable across redeliveries.
    pub fn delivery_id(&self) -> DeliveryId {
        DeliveryId { tp: self.tp.clone(), offset: self.offset }
    }

    /// Approximate bytes held for this record.
    pub fn size(&self) -> usize {
        self.value.as_ref().map_or(0, Bytes::len)
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len)).sum::<usize>()
    }
}

/// A partition newly assigned to the gateway, with where the group left it.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub tp: TopicPartition,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// Offsets above `committed` that the previous owner recorded as acked (commit metadata).
    pub acked_above: Vec<(i64, i64)>,
}

/// What the consumer thread tells the dispatcher, in the order it happened.
#[derive(Debug)]
pub enum KafkaEvent {
    Records(Vec<Record>),
    Assigned(Vec<Assignment>),
    /// The partitions are being taken away. The dispatcher drops their buffered messages and
    /// answers with what to commit for them; the consumer commits it before letting go.
    Revoked {
        partitions: Vec<TopicPartition>,
        reply: std::sync::mpsc::SyncSender<Vec<(TopicPartition, CommitPoint)>>,
    },
    /// The partitions were taken away without a revoke (librdkafka's lost assignment: the
    /// group ended this member's session). Another member may own them already and the
    /// coordinator no longer takes this member's commits, so nothing is drained or committed:
    /// the dispatcher forgets them at once.
    Lost(Vec<TopicPartition>),
    /// The partition's fetch position went back to where a resume asked
    /// ([`KafkaCommand::Resume`]): every record of it sent after this event was fetched from
    /// there, since librdkafka discards what it fetched before a seek. The first of them may be
    /// above the offset asked for, when that offset is gone (compaction, retention,
    /// DeleteRecords): the partition then goes on from its first record that remains.
    Sought(TopicPartition),
    /// The consumer's position per assigned partition, sent after every record it fetched
    /// before was sent: offsets below it were handed out, or stepped over by librdkafka
    /// (transaction markers, aborted records), which never hands those out. With nothing owed,
    /// the commit point may move up to it, so a transactional topic's commits and lag reach
    /// the partition's end.
    Positions(Vec<(TopicPartition, i64)>),
}

/// How a commit ended, partition by partition: Kafka stores some partitions of one commit and
/// refuses others (an authorization, a partition gone). The refused ones' points go again with
/// the next commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub landed: Vec<TopicPartition>,
    /// Each with why, as Kafka or librdkafka said it.
    pub refused: Vec<(TopicPartition, String)>,
}

impl CommitOutcome {
    /// Whether every partition landed.
    pub fn is_complete(&self) -> bool {
        self.refused.is_empty()
    }
}

/// What the dispatcher asks of the consumer thread.
#[derive(Debug)]
pub enum KafkaCommand {
    /// Commit these points; `done`, if given, hears the outcome.
    Commit {
        points: Vec<(TopicPartition, CommitPoint)>,
        done: Option<tokio::sync::oneshot::Sender<CommitOutcome>>,
    },
    Pause(Vec<TopicPartition>),
    /// Resume fetching, first seeking to the offset given (records from there on were dropped
    /// at the buffer bound and must be fetched again).
    Resume(Vec<(TopicPartition, Option<i64>)>),
    /// Stop handing out records (shutdown has begun); keep serving the group.
    StopFetching,
    /// Leave the group and end the thread.
    Close,
}

/// A consumer that reads by assignment only, for the operator's tools (replays, dead
/// letters): the gateway's Kafka settings (brokers, security), auto-commit and offset store off.
/// `group` names the group whose commits it may read or write; it never joins it.
pub fn reader(
    config: &crate::config::Config,
    group: &str,
    client_id: &str,
) -> Result<rdkafka::consumer::BaseConsumer, KafkaError> {
    reader_config(config, group, client_id).create()
}

/// The settings of a [`reader`], for a caller that must override one of the gateway's.
pub fn reader_config(config: &crate::config::Config, group: &str, client_id: &str) -> rdkafka::ClientConfig {
    let mut cc = rdkafka::ClientConfig::new();
    for (key, value) in &config.kafka.properties {
        cc.set(key, value);
    }
    cc.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    cc
}

/// A reader's position on a partition it is assigned: the offset it reads next, past any
/// transaction markers and aborted records it stepped over (which no message announces).
pub fn position_of(consumer: &rdkafka::consumer::BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        rdkafka::Offset::Offset(at) => Some(at),
        _ => None,
    }
}

/// The partitions of `topic`, as the cluster's metadata lists them (none: no such topic).
pub fn partitions_of(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Vec<i32>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_read_as_topic_partition_offset() {
        let id = DeliveryId { tp: TopicPartition { topic: Arc::from("orders.v1-eu_2"), partition: 7 }, offset: 12_345 };
        assert_eq!(id.to_string(), "orders.v1-eu_2/7/12345");
    }
}
