//! fanout-gateway's two contracts, generated once: the subscription contract between the
//! gateway and the services behind it (`proto/fanout/v1/fanout.proto`: the messages, the
//! `Fanout` client the subscriber library drives and the server stub the gateway implements),
//! and the operator's admin API (`proto/fanout/admin/v1/admin.proto`: the gateway serves it,
//! fanoutctl calls it). One crate, so no two sides can disagree on a field, and a client needs
//! neither librdkafka nor the gateway to build.
#![forbid(unsafe_code)]

/// Generated from `fanout/v1/fanout.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fanout.v1");

    /// The contract's descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fanout_descriptor");
}

/// The longest one `Extend` moves a delivery's ack deadline (the contract's limit, as Pub/Sub's
/// modifyAckDeadline): the gateway cuts longer extensions to it and the subscriber library asks
/// for no more. A subscriber extends again while it works, so a crashed one holds its deliveries
/// no longer than this.
pub const MAX_EXTENSION: std::time::Duration = std::time::Duration::from_secs(600);

/// Generated from `fanout/admin/v1/admin.proto`: the operator's API (the gateway serves it,
/// fanoutctl calls it). `serde::Serialize` with the `serde` feature.
pub mod admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fanout.admin.v1");

    /// The admin API's descriptors, for server reflection on the admin port.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fanout_admin_descriptor");
}
