//! # dsnode
//!
//! A trusted data-space exchange node. Every participant of a city-level
//! data circulation platform runs one; nodes talk gRPC over mutual TLS,
//! exchange signed, policy-tagged datasets, and keep a verifiable ledger.
//! The binary (`src/main.rs`) is a thin CLI over this library.
//!
//! # Layout
//!
//! From the bottom up; a module imports only modules on its own line or
//! above it (no import circles; `cargo test` does not check this, the
//! closing note of the restructure lists the graph).
//!
//! - Leaves: [`digest`] (the one hash type), [`fsutil`] (atomic writes,
//!   secret-file permissions), [`clock`] (the time policies and grants are
//!   checked at), [`text`] (outside text made safe to show: escaped, cut).
//! - Domain: [`identity`] (keys, node ids, certificates, the CA, roles),
//!   [`codec`] (the canonical-bytes trait the domain names),
//!   [`envelope`] (DSSE: sign, verify, check the signer an object names),
//!   [`policy`] (the model, TOML/ODRL, evaluation), [`ledger`] (the
//!   verifiable log on sled: entries, Merkle tree, checkpoints, proofs),
//!   [`dataset`] (manifests, chunks, the blob store, the catalog,
//!   publishing).
//! - What a node runs on, and how it talks: [`runtime`] (config and data
//!   dir, TLS, metrics), [`peer`] (what this node asks of another node: the
//!   `Peer` trait, in domain terms).
//! - Use cases: [`exchange`] (access, grants, serving and fetching,
//!   receipts), [`witness`] (the checkpoint exchange, cosignatures, forks),
//!   [`audit`] (the auditor, reconciliation, evidence bundles, provenance).
//! - [`console`]: `dsnode audit serve`, the auditor's web console over
//!   [`audit`].
//! - [`service`]: the node's use cases behind one type, `NodeContext`.
//! - [`tiles`]: the ledger as C2SP `tlog-tiles`, on a read-only listener.
//! - Codecs, the only users of prost: [`payload`] (the signed payloads'
//!   protobuf package and the kept fetch header) and [`wire`] (generated
//!   gRPC code, conversions, the one map of errors to `tonic::Status`,
//!   authz, the servers, the mutual-TLS client and the typed Admin client).
//! - Top: [`node`] (one running node wired together; key rotation of a
//!   stopped node), [`cli`] (the command line: `src/main.rs` parses and
//!   calls [`cli::run`]).
//! - `fuzzing` (hidden): the entry points of the fuzz targets.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod console;
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
#[cfg(test)]
mod testing;
pub mod text;
pub mod tiles;
pub mod wire;
pub mod witness;
