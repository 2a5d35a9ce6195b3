//! Canonical codecs of what the node signs or keeps: the only users of
//! prost outside the wire layer.
//!
//! - [`fetch_state`]: the saved header of an interrupted fetch.

pub mod fetch_state;
