//! fanout-tools: what a developer runs around the gateway, never the service itself: the
//! embedded demo ([`demo`]) and its deploy scenarios ([`scenario`], and the gateway's own
//! rollouts in [`rollout_scenario`]), the benchmark ([`bench`]),
//! a standalone mock Kafka ([`devkafka`]) and the command line that runs them ([`cli`]).
//!
//! Its own crate so that the service's binary links none of it (no benchmark, no subscriber
//! library, no histogram crate in the image). It uses the gateway as any user of the library
//! would: `fanout_gateway::gateway::start` and the handle it returns (stats through
//! `Stats::counters`), the config types, the gRPC contract; it subscribes with the subscriber
//! library (`fanout-client`) as a service would.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod demo;
pub mod devkafka;
pub mod rollout_scenario;
pub mod scenario;
