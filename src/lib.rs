//! # dsnode
//!
//! A trusted data-space exchange node. Every participant of a city-level
//! data circulation platform runs one; nodes talk gRPC over mutual TLS,
//! exchange signed, policy-tagged datasets, and keep a verifiable ledger.
//! The binary (`src/main.rs`) is a thin CLI over this library.
//!
//! # Layout
//!
//! - [`demo`]: `dsnode demo`, a whole data space on loopback and its story, audited.
//! - [`identity`]: node keys, node ids, certificates, the data-space CA, roles.
//! - [`tls`]: rustls server/client configs, the accept loop, peer identity.
//! - [`config`]: the data dir layout and `node.toml` (raw → validated).
//! - [`node`]: one running node wired together; start, drain, CRL reload.
//! - [`client`]: calling another node over mutual TLS.
//! - [`clock`]: the time policy and grant decisions are made at.
//! - [`audit`]: the auditor side: verifies every checkpoint and proof a node serves.
//! - [`ledger`]: the verifiable ledger (Merkle log on sled, checkpoints, proofs).
//! - [`payload`]: the canonical codecs of the signed payloads (manifest,
//!   grant, receipt, key rotation; protobuf package `dsnode.payload.v1`).
//! - [`metrics`]: Prometheus metrics and the plain-HTTP `/metrics`, `/healthz`, `/readyz` listener.
//! - [`rpc`]: tonic services, the role × RPC table, status mapping.
//! - [`fsutil`]: atomic writes and the secret-file permission check.
//! - [`pb`]: generated protobuf and gRPC code (`dataspace.v1`); only
//!   [`rpc`] and [`client`] callers use it.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod dataset;
pub mod digest;
pub mod envelope;
pub mod exchange;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod ledger;
pub mod node;
pub mod payload;
pub mod peer;
pub mod policy;
pub mod runtime;
pub mod service;
pub mod wire;
pub mod witness;
