//! The exchange between nodes: access requests, grants, transfers and
//! receipts, both sides.
//!
//! - [`access`]: access requests: the publisher's decision, the consumer's ask.
//! - [`serve`]: the publisher's side of a fetch and of a receipt.
//! - [`fetch`]: the consumer's side of a fetch, as states that consume themselves.
//! - [`grant`]: access grants, signed by the publisher as DSSE envelopes.
//! - [`book`]: the grants a node issued and holds, settled against the ledger.
//! - [`transfer`]: the consumer's side of a fetch: verify, write, rename.
//! - [`receipt`]: consumer-signed receipts.

pub mod access;
pub mod book;
pub mod fetch;
pub mod grant;
pub mod limits;
pub mod receipt;
pub mod serve;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::clock::Clock;
use crate::dataset::blob::BlobStore;
use crate::dataset::catalog::Catalog;
use crate::identity::PeerIdentity;
use crate::ledger::Ledger;
use crate::runtime::metrics::Metrics;

/// What the publisher's side of the exchange needs of its node.
pub struct Publisher<'a> {
    /// This node, from its own certificate.
    pub identity: &'a PeerIdentity,
    /// The clock grant windows and policies are checked against.
    pub clock: &'a Clock,
    /// Its ledger: every decision, transfer and receipt is recorded.
    pub ledger: &'a Ledger,
    /// The grants it issued.
    pub grants: &'a Arc<book::GrantBook>,
    /// The datasets it publishes.
    pub catalog: &'a Catalog,
    /// Where their chunks are.
    pub blobs: &'a Arc<dyn BlobStore>,
    /// Its signing key, for grants.
    pub key: &'a SigningKey,
    /// Its metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Held while a transfer is counted and recorded, so parallel requests
    /// cannot all count before any records.
    pub opening: &'a tokio::sync::Mutex<()>,
    /// Transfers with streams running or just opened, which other streams
    /// may join.
    pub sessions: &'a serve::Sessions,
    /// What one peer may cost this node.
    pub limits: &'a limits::PeerLimits,
}
