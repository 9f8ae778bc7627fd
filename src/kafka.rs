//! Kafka side of the gateway: the consumer that owns all partitions of the routed topics, and
//! the record type that flows from it to the dispatcher.
//!
//! The consumer runs on a dedicated thread ([`consumer::spawn`]) and sends [`KafkaEvent`]s to
//! the dispatcher, in order: records, assignments and revocations. It takes
//! [`KafkaCommand`]s back (commit, pause, resume, stop, close).

pub mod consumer;
pub mod upgrade;

use std::sync::Arc;

use bytes::Bytes;

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
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// Producer or log-append time, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The id a subscriber acks: stable across redeliveries.
    pub fn delivery_id(&self) -> String {
        format!("{}/{}/{}", self.tp.topic, self.tp.partition, self.offset)
    }

    /// Approximate bytes held for this record.
    pub fn size(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
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
}

/// What the dispatcher asks of the consumer thread.
#[derive(Debug)]
pub enum KafkaCommand {
    /// Commit these points; `done`, if given, hears the outcome.
    Commit {
        points: Vec<(TopicPartition, CommitPoint)>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
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
