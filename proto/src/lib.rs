//! The subscription contract between fanout-gateway and the services behind it
//! (`proto/fanout/v1/fanout.proto`): the generated messages, the `Fanout` client the
//! subscriber library drives and the server stub the gateway implements. One crate, so the
//! gateway and its subscribers can never disagree on a field.
#![forbid(unsafe_code)]

/// Generated from `fanout/v1/fanout.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fanout.v1");

    /// The contract's descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fanout_descriptor");
}
