//! Values with one canonical byte form: the signed payloads (manifest,
//! grant, receipt, key rotation) and the kept header of an interrupted
//! fetch. The domain names the trait; the codecs live in
//! [`crate::payload`], the only user of prost outside the wire layer, so
//! the domain imports no codec and no generated code.

use std::sync::Arc;

use crate::identity::IdError;

/// A value with one canonical encoding.
pub trait Canonical: Sized {
    /// Why bytes do not decode to a value.
    type Error: std::fmt::Display;
    /// The canonical bytes.
    fn encode(&self) -> Vec<u8>;
    /// The value of `bytes`, refusing anything that is not a well-formed
    /// one with an error that says what was expected.
    fn decode(bytes: &[u8]) -> Result<Self, Self::Error>;
}

/// Why payload bytes were refused before they became a domain value.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The bytes are not a protobuf encoding of the message expected.
    #[error("not a {message} protobuf: {source}")]
    Protobuf {
        /// The message expected (`ManifestV1`, `GrantV1`, …).
        message: &'static str,
        /// What the protobuf decoder found wrong with the bytes.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A field meant to hold a raw Ed25519 public key has another length.
    #[error("{field} is {got} bytes, expected 32")]
    KeyLength {
        /// The field.
        field: &'static str,
        /// Its length.
        got: usize,
    },
    /// The participant a statement names is not a participant id.
    #[error(transparent)]
    Participant(#[from] IdError),
}

impl PartialEq for PayloadError {
    /// Equal when they say the same (a decoder's error has no equality of
    /// its own).
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for PayloadError {}
