//! fanout-gateway: long-lived Kafka consumer groups in front of many services, which subscribe
//! over gRPC and ack what they process.
//!
//! Each route is a pipeline of its own (its consumer group, consumer thread and dispatcher
//! task), so one route's idle, slow or at-most-once subscribers never hold back another's.
//! Data flows one way through a pipeline:
//!
//! ```text
//! kafka::consumer ──► dispatcher ──► subscriptions (keys, windows) ──► grpc::fanout ──► subscriber
//!       ▲                 │  ▲                                                 │
//!       └─ commit/pause ◄─┘  └─────────── acks / nacks / credits ◄────────────┘
//!                     (offsets: highest contiguous acked offset per partition)
//! ```
//!
//! The rooms, each owning one concern:
//! - [`config`]: the TOML config; `config/validate.rs` checks it once, every problem with its
//!   field's path.
//! - [`gateway`]: wiring: a pipeline per route, the gRPC and admin servers, the stop.
//! - [`pipeline`]: one route's consumer, dispatcher and pod watch; [`pipeline::Routes`] is the
//!   front door the gRPC layer reaches them through.
//! - [`kafka`]: the consumer thread (rdkafka), rebalance callbacks, commits, pause/resume, the
//!   upgrade from a shared group, and the reader of an operator's replay.
//! - [`dispatcher`]: the task that owns a route's moving state: partitions and flow control,
//!   commits, the dedup gate, the dead-letter loop, subscriber identity.
//! - [`subscriptions`]: the route's session registry: sessions, key ownership and parking, retries,
//!   commit windows, at-most-once staging, batching, revokes, membership.
//! - [`rollout`]: progressive delivery; [`rollout::judge`] compares a candidate cohort with the
//!   stable one (failure rate, ack latency) with tests sound for a canary step's samples.
//! - [`offsets`], [`routing`], [`retry`], [`selector`]: pure decisions (what may be committed,
//!   which cohort and subscriber, when to retry, which labels match; `selector/parse.rs` holds the
//!   selector grammar).
//! - [`dead_letters`]: the producer for dead-letter and retry topics; [`dedup`]: idempotency-key
//!   stores for effectively-once routes.
//! - [`discovery`]: subscribers' labels and identity, from Kubernetes pods or from their Hello.
//! - [`grpc`]: the tonic `Fanout` and `Admin` services; the only room that builds the contract's types
//!   ([`proto`]) or maps errors to a `tonic::Status`.
//! - [`admin`]: the operator's control surface behind the admin API (`grpc::admin`, guarded by
//!   `grpc::auth`): status, weights in the source of truth (file or ConfigMap), hot reload
//!   (`admin::Control::follow` applies the source of truth's changes), drains, replays, dead
//!   letters.
//! - [`stats`]: counters the pipelines add to; [`metrics`] turns them and the routes'
//!   snapshots into the Prometheus exposition; [`readiness`] decides whether the replica is
//!   ready (`/readyz`, grpc.health); [`redact`] keeps Kafka secrets out of logs and errors.
//!
//! Not in this crate: the demo, scenarios, bench, dev-kafka and the `subscribe` command are
//! `fanout-tools` (`tools/`), which uses this library's public API as any user would;
//! `fanoutctl` (`ctl/`) is built on the admin contract in `fanout-proto` alone; the subscriber
//! library is `fanout-client` (`client/`).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod dead_letters;
pub mod dedup;
pub mod discovery;
pub mod dispatcher;
pub mod gateway;
pub mod grpc;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod readiness;
pub mod redact;
pub mod retry;
pub mod rollout;
pub mod routing;
pub mod selector;
pub mod stats;
pub mod subscriptions;

/// The subscription contract (`proto/fanout/v1/fanout.proto`), generated once in the
/// `fanout-proto` crate that the subscriber library shares.
pub mod proto {
    pub use fanout_proto::v1::*;

    /// The operator's API (`proto/fanout/admin/v1/admin.proto`), also in `fanout-proto`:
    /// fanoutctl builds on that crate alone.
    pub use fanout_proto::admin;
}
