//! The exchange between nodes: grants, transfers and receipts.
//!
//! - [`grant`]: access grants, signed by the publisher as DSSE envelopes.
//! - [`book`]: the grants a node issued and holds, settled against the ledger.
//! - [`transfer`]: the consumer's side of a fetch: verify, write, rename.
//! - [`receipt`]: consumer-signed receipts.

pub mod book;
pub mod grant;
pub mod receipt;
pub mod transfer;
