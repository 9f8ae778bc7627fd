//! fanout-gateway: one long-lived Kafka consumer group in front of many services, which
//! subscribe over gRPC and ack what they process.
//!
//! Data flows one way:
//!
//! ```text
//! kafka::consumer ──► dispatcher ──► subscriptions (routing, windows) ──► grpc::fanout ──► subscriber
//!       ▲                 │  ▲                                                  │
//!       └─ commit/pause ◄─┘  └──────────── acks / nacks / credits ◄────────────┘
//!                     (offsets: highest contiguous acked offset per partition)
//! ```
//!
//! - [`config`]: the TOML config, validated once.
//! - [`kafka`]: the consumer thread (rdkafka), rebalance callbacks, commits, pause/resume.
//! - [`offsets`]: per-partition tracking of acked offsets; what may be committed. Pure.
//! - [`routing`]: which subscriber gets a message. Pure.
//! - [`subscriptions`]: sessions, windows, queues and in-flight deliveries.
//! - [`dispatcher`]: the task that owns all of the above and moves messages between them.
//! - [`grpc`]: the tonic `Fanout` service.
//! - [`discovery`]: subscribers' labels and identity, from Kubernetes pods or from Hello.
//! - [`gateway`]: wiring; [`client`]: a subscriber client; [`demo`] and [`scenario`]: the
//!   embedded demo and its blue-green and canary deploys.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod config;
pub mod deadletter;
pub mod dedup;
pub mod discovery;
pub mod dispatcher;
pub mod gateway;
pub mod grpc;
pub mod kafka;
pub mod offsets;
pub mod pipeline;
pub mod retry;
pub mod routing;
pub mod selector;
pub mod stats;
pub mod subscriptions;
pub mod tools;

/// Generated from `proto/fanout/v1/fanout.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fanout.v1");
}
