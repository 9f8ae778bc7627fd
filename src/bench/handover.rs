//! The status quo a deploy goes through without the gateway: each service version is its own
//! set of consumers in the service's consumer group, so a blue-green deploy is a group
//! handover (green consumers join, blue consumers leave), and every membership change is a
//! rebalance that stops consumption.
//!
//! Stub: being written.

use std::time::Duration;

use rdkafka::error::KafkaError;

/// Partition assignment protocol of the status-quo consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// librdkafka's default (`range,roundrobin`): every rebalance revokes every partition.
    Eager,
    /// `cooperative-sticky`: only moved partitions are revoked.
    Cooperative,
}

#[derive(Debug, Clone)]
pub struct HandoverOptions {
    /// Messages produced per second while the deploy runs.
    pub rate: u32,
    /// How long to produce; green joins at a third, blue leaves at two thirds.
    pub duration: Duration,
    /// Consumers per cohort.
    pub per_cohort: usize,
    pub partitions: i32,
    pub strategy: Strategy,
}

/// What an operator checks after a deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoverReport {
    pub rebalances: u64,
    pub max_gap_ms: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub produced: u64,
}

/// Runs the handover against `bootstrap`, on `topic` (created by the caller with
/// `options.partitions` partitions).
pub async fn status_quo(bootstrap: &str, topic: &str, options: &HandoverOptions) -> Result<HandoverReport, KafkaError> {
    let _ = (bootstrap, topic, options);
    Ok(HandoverReport::default())
}
