//! Helpers shared by the registry's tests.

use std::sync::Arc;
use std::time::Duration;

pub(super) use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{SessionMessage, Subscriber};
use crate::config::{EmptyCohort, RouteConfig};
use crate::kafka::{Record, TopicPartition};

pub(super) fn route(name: &str, window: u32) -> RouteConfig {
    let mut r = RouteConfig::new(name, &["t"]);
    r.max_in_flight = window * 2;
    r.default_in_flight = window;
    r
}
pub(super) fn sub(name: &str) -> Subscriber {
    Subscriber { name: name.into(), ..Subscriber::default() }
}
pub(super) fn record(partition: i32, offset: i64, key: &str) -> Arc<Record> {
    Arc::new(Record {
        tp: TopicPartition { topic: Arc::from("t"), partition },
        offset,
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from_static(b"v")),
        headers: vec![],
        timestamp_ms: Some(1_700_000_000_123),
    })
}
/// A delivery as a subscriber would read it, for assertions.
#[derive(Debug)]
pub(super) struct Got {
    pub(super) delivery_id: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Bytes,
    pub(super) attempt: u32,
    pub(super) cohort: String,
}

pub(super) fn received(rx: &mut mpsc::UnboundedReceiver<SessionMessage>) -> Vec<Got> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let SessionMessage::Deliveries(batch) = m {
            out.extend(batch.into_iter().map(|d| Got {
                delivery_id: d.record.delivery_id().to_string(),
                partition: d.record.tp.partition,
                offset: d.record.offset,
                key: d.record.key.clone().unwrap_or_default(),
                attempt: d.attempt,
                cohort: d.cohort.to_string(),
            }));
        }
    }
    out
}

pub(super) fn split_route(empty: EmptyCohort, blue: u32, green: u32) -> RouteConfig {
    let mut r = route("r", 100);
    r.split_label = Some("track".into());
    r.weights = [("blue".to_string(), blue), ("green".to_string(), green)].into_iter().collect();
    r.empty_cohort = empty;
    r
}
pub(super) fn labelled(name: &str, track: &str) -> Subscriber {
    Subscriber {
        name: name.into(),
        labels: [("track".to_string(), track.to_string())].into_iter().collect(),
        ..Subscriber::default()
    }
}

pub(super) fn later(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

pub(super) fn retrying_route(window: u32, max_attempts: u32, dlq: Option<&str>) -> RouteConfig {
    let mut r = route("r", window);
    r.retry = crate::config::RetryPolicy {
        max_attempts,
        initial_backoff_ms: 1_000,
        max_backoff_ms: 4_000,
        retry_topic: None,
    };
    r.dead_letter_topic = dlq.map(str::to_string);
    r
}
