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

/// Which record a delivery carries, and what a subscriber acks: stable across redeliveries.
/// Inside the gateway it stays a value (hashed and compared, never formatted); the wire form
/// `topic/partition/offset` exists only at the gRPC edge and in dedup origins.
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

/// A delivery id that is not `topic/partition/offset`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery id {0:?} is not topic/partition/offset (send back the id of a delivery as received)")]
pub struct MalformedDeliveryId(pub String);

impl std::str::FromStr for DeliveryId {
    type Err = MalformedDeliveryId;

    /// Topic names cannot contain `/` (Kafka allows `[a-zA-Z0-9._-]`), so the last two `/`
    /// separate partition and offset.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || MalformedDeliveryId(s.chars().take(200).collect());
        let mut parts = s.rsplitn(3, '/');
        let offset = parts.next().and_then(|o| o.parse::<i64>().ok()).filter(|o| *o >= 0).ok_or_else(malformed)?;
        let partition = parts.next().and_then(|p| p.parse::<i32>().ok()).filter(|p| *p >= 0).ok_or_else(malformed)?;
        let topic = parts.next().filter(|t| !t.is_empty()).ok_or_else(malformed)?;
        Ok(DeliveryId { tp: TopicPartition { topic: Arc::from(topic), partition }, offset })
    }
}

impl Record {
    /// The id a subscriber acks: stable across redeliveries.
    pub fn delivery_id(&self) -> DeliveryId {
        DeliveryId { tp: self.tp.clone(), offset: self.offset }
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

/// Why a commit did not land. The next commit (a tick later) carries the same points again.
#[derive(Debug, thiserror::Error)]
#[error("offset commit failed")]
pub struct CommitError(#[source] pub rdkafka::error::KafkaError);

/// What the dispatcher asks of the consumer thread.
#[derive(Debug)]
pub enum KafkaCommand {
    /// Commit these points; `done`, if given, hears the outcome.
    Commit {
        points: Vec<(TopicPartition, CommitPoint)>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), CommitError>>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_go_to_text_and_back() {
        let id = DeliveryId { tp: TopicPartition { topic: Arc::from("orders.v1-eu_2"), partition: 7 }, offset: 12_345 };
        assert_eq!(id.to_string(), "orders.v1-eu_2/7/12345");
        assert_eq!("orders.v1-eu_2/7/12345".parse::<DeliveryId>(), Ok(id));
    }

    #[test]
    fn malformed_delivery_ids_are_refused() {
        for bad in
            ["", "orders", "orders/1", "/1/2", "orders/x/2", "orders/1/y", "orders/-1/2", "orders/1/-2", "orders/1/2/"]
        {
            assert!(bad.parse::<DeliveryId>().is_err(), "{bad:?} parsed");
        }
    }
}
