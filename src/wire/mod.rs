//! The wire: everything that knows gRPC and protobuf.
//!
//! - [`pb`]: generated code for `proto/dataspace/v1/*.proto`.
//! - [`convert`]: protobuf messages to domain types and back.
//! - [`status`]: the one place domain errors become `tonic::Status`.
//! - [`authz`]: the role × RPC table, enforced as a tower layer.
//! - [`server`]: the tonic services (check input, call the node, convert).
//! - [`client`]: calling another node over mutual TLS.
//! - [`admin`]: a typed client of a node's own Admin API (the CLI's, the
//!   demo's and the tests' way to drive a node).
//! - [`rpc_metrics`]: every RPC counted by its final status.

pub mod admin;
pub mod authz;
pub mod client;
pub mod convert;
pub mod rpc_metrics;
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
