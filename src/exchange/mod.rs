//! The exchange between nodes: grants now; transfers and receipts follow
//! (issue "The exchange").
//!
//! - [`grant`]: access grants, signed by the publisher as DSSE envelopes.
//! - [`book`]: the grants a node issued and holds, settled against the ledger.

pub mod book;
pub mod grant;
