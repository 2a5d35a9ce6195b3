//! Values with one canonical byte form: the signed payloads (manifest,
//! grant, receipt, key rotation) and the kept header of an interrupted
//! fetch. The domain names the trait; the codecs live in
//! [`crate::payload`], the only user of prost outside the wire layer, so
//! the domain imports no codec and no generated code.

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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// The bytes are not a protobuf encoding of the message expected.
    #[error("not a {message} protobuf: {detail}")]
    Protobuf {
        /// The message expected (`ManifestV1`, `GrantV1`, …).
        message: &'static str,
        /// What the protobuf decoder found wrong with the bytes (its error
        /// carries nothing but this account).
        detail: String,
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
