//! The wire: everything that knows gRPC and protobuf.
//!
//! - [`pb`]: generated code for `proto/dataspace/v1/*.proto`.
//! - [`status`]: the one place domain errors become `tonic::Status`.
//! - [`authz`]: the role × RPC table, enforced as a tower layer.
//! - [`server`]: the tonic services (check input, call the node, convert).
//! - [`client`]: calling another node over mutual TLS.

pub mod authz;
pub mod client;
pub mod server;
pub mod status;

/// Generated code for `proto/dataspace/v1/*.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dataspace.v1");

    /// The encoded descriptor set of `dataspace.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/dataspace_descriptor.bin"));
}
