//! The subscriber library of fanout-gateway.
//!
//! A service subscribes to a route of the gateway and processes what it is sent; this crate
//! does the rest of the contract (`proto/fanout/v1/fanout.proto`) for it:
//!
//! - **every replica**: one `Subscribe` stream per gateway replica, from a fixed list or a DNS
//!   name (the gateway's headless Service) re-resolved so replicas that come and go are
//!   followed; each replica serves only the partitions it owns, so missing one means lag;
//! - **reconnects**: any broken stream is reopened with jittered exponential backoff, reset
//!   after a healthy period; statuses no retry can fix (unknown route, bad hello) end
//!   [`Subscriber::run`] with an [`Error::Refused`] at once, and a refused identity does once
//!   it has lasted the [identity grace](SubscriberBuilder::identity_grace);
//! - **handlers**: an `async fn(Delivery) -> Result<(), Nack>`, run on up to
//!   [`concurrency`](SubscriberBuilder::concurrency) tasks at once, one at a time per key so a
//!   key's messages are processed in the order they arrive; `Ok` is an ack (batched by count
//!   and time), a [`Nack`] asks for a retry (optionally after a delay), a dead letter, or
//!   says the service is [overloaded](Nack::overloaded) (back-pressure: no attempt used up), a
//!   panic is a retry. A [rate](SubscriberBuilder::max_messages_per_second) of its own caps
//!   what each stream takes a second. A retried message comes again later, after the key's messages behind
//!   it (as with the gateway's retries);
//! - **leases**: a handler slower than the route's `ack_timeout_ms` keeps its delivery, and so
//!   do deliveries waiting for a handler: the library extends a delivery's deadline halfway to
//!   it, each time by about as long as handlers recently took, until the
//!   [maximum extension](SubscriberBuilder::max_lease_extension) (an hour by default), after
//!   which the gateway takes it back and redelivers it;
//! - **drain**: when the shutdown future resolves (see [`shutdown_signal`]), every stream sends
//!   `Drain`, the gateway sends nothing new, what is in flight is handled and acked, and `run`
//!   returns: nothing handled is delivered again. Handlers still running when the
//!   [drain timeout](SubscriberBuilder::drain_timeout) passes are not acked; the gateway
//!   redelivers those. A stream the gateway drains unasked (an operator's `fanoutctl drain`
//!   of this pod) is not reopened: the subscriber leaves every replica and stays out until the
//!   process restarts ([`Snapshot::drained_by_gateway`]).
//!
//! No librdkafka and no Kubernetes client: the crate builds gRPC only.
//!
//! # Example
//!
//! ```no_run
//! use fanout_client::{shutdown_signal, Delivery, Nack, Replicas, Subscriber};
//!
//! async fn handle(delivery: Delivery) -> Result<(), Nack> {
//!     let Some(order) = delivery.value.as_deref() else {
//!         return Err(Nack::dead_letter("an order without a body")); // never retried
//!     };
//!     let text = std::str::from_utf8(order)?; // an error is a retry
//!     println!("order {text} (attempt {})", delivery.attempt);
//!     Ok(()) // acked
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), fanout_client::Error> {
//!     Subscriber::builder("orders")
//!         // The gateway's headless Service: a stream to every replica.
//!         .replicas(Replicas::dns("fanout-gateway-headless.fanout.svc.cluster.local:50051"))
//!         .concurrency(8)
//!         .build()?
//!         .run(handle, shutdown_signal())
//!         .await
//! }
//! ```
//!
//! [`stream::Subscription`] is the protocol underneath, one stream acked by hand, for tools and
//! tests that need the wire's detail.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod acks;
mod connection;
mod handler;
mod keyed;
mod lease;
mod pool;
mod replicas;
mod stats;
pub mod stream;
mod subscriber;

pub use fanout_proto::v1 as proto;
pub use fanout_proto::v1::Delivery;
pub use handler::{Handler, Nack, NackDisposition};
pub use replicas::{Replicas, Resolver};
pub use stats::{Snapshot, Stats};
pub use stream::ClientTls;
pub use subscriber::{Subscriber, SubscriberBuilder};

/// Why a [`Subscriber`] could not start, or why it stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No replica to stream from.
    #[error("no gateway replicas: give Replicas::list([\"host:port\", ...]) or Replicas::dns(\"host:port\")")]
    NoReplicas,
    /// A setting is out of range.
    #[error("invalid setting {field}: {reason}")]
    Setting {
        /// The builder method's name.
        field: &'static str,
        /// What a valid value is.
        reason: String,
    },
    /// A replica's address is not a valid endpoint.
    #[error("gateway endpoint {endpoint:?} is not valid: {reason}")]
    Endpoint {
        /// The address as given or resolved.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A replica refused the subscription with a status no retry can fix (or, for identity,
    /// kept refusing it through the identity grace).
    #[error("replica {replica} refused the subscription to route {route:?} ({}): {message}", code_name(*code))]
    Refused {
        /// The replica's `host:port`.
        replica: String,
        /// The route asked for.
        route: String,
        /// NOT_FOUND (no such route), INVALID_ARGUMENT (a bad hello or frame),
        /// PERMISSION_DENIED or UNAUTHENTICATED (identity), UNIMPLEMENTED (not a gateway, or
        /// a proxy in front of it that does not route the call).
        code: tonic::Code,
        /// The gateway's explanation.
        message: String,
    },
    /// The TLS files could not be read.
    #[error(transparent)]
    Client(#[from] stream::ClientError),
    /// A bug in this library (a task of it panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A gRPC status code as gRPC documents it (`PERMISSION_DENIED`, `NOT_FOUND`): how the
/// gateway's docs, fanoutctl and this library name a refusal.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_uppercase()).then_some('_');
            sep.into_iter().chain(c.to_uppercase())
        })
        .collect()
}

/// Resolves on SIGTERM (what Kubernetes sends a pod it stops) or Ctrl-C: the usual shutdown
/// future for [`Subscriber::run`].
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
