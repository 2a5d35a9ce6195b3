//! The exchange between nodes: grants now; transfers and receipts follow
//! (issue "The exchange").
//!
//! - [`grant`]: access grants, signed by the publisher as DSSE envelopes.

pub mod grant;
