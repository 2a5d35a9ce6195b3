//! What a node runs on: its configuration and data dir, TLS (configs, the
//! accept loop, connections and peer identities), and its metrics. Used by
//! the wire layer, the service and start-up ([`crate::node`]); uses only
//! the domain below it.
//!
//! - [`config`]: the data dir layout and `node.toml` (raw → validated).
//! - [`tls`]: rustls server/client configs, the accept loop, peer identity.
//! - [`http`]: the accept loop and guards of the small HTTP/1.1
//!   listeners (metrics, tlog-tiles, the auditor console).
//! - [`logging`]: the log's formats, which escape and cut every field.
//! - [`metrics`]: Prometheus metrics and the plain-HTTP `/metrics`, `/healthz`, `/readyz` listener.

pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod tls;
