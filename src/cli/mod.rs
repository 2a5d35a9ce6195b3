//! The command line's library half.
//!
//! - [`demo`]: `dsnode demo`, a whole data space on loopback and its story, audited.

pub mod demo;
