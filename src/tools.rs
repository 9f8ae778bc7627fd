//! The tools around the service, in a place of their own: the embedded demo and its deploy
//! scenarios, the benchmark, a standalone mock Kafka (`dev-kafka`), the command line that runs
//! them ([`cli`]); `fanoutctl` is a crate of its own (`ctl/`). They drive the service through its public surface
//! (`gateway::start`, the gRPC contract) and subscribe with the subscriber library
//! (`fanout-client`); no service room uses them.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod devkafka;
pub mod scenario;
