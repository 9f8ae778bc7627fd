//! `fanout-gateway bench`: what the gateway costs against a plain consumer, and what a deploy
//! costs with and without it, measured in one run on the same embedded Kafka.

pub mod handover;
