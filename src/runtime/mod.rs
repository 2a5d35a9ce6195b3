//! Running a node: its configuration and data dir, TLS, start-up and
//! shutdown, the CRL watch, metrics and health, and key rotation of a
//! stopped node's data dir.
//!
//! - [`config`]: the data dir layout and `node.toml` (raw → validated).
//! - [`tls`]: rustls server/client configs, the accept loop, peer identity.
//! - [`node`]: one running node wired together; start, drain, CRL reload.
//! - [`metrics`]: Prometheus metrics and the plain-HTTP `/metrics`, `/healthz`, `/readyz` listener.
//! - [`rotation`]: `dsnode key new|rotate` on a stopped node's data dir.

pub mod config;
pub mod metrics;
pub mod node;
pub mod rotation;
pub mod tls;
