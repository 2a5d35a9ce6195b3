//! The project's one hash type: SHA-256, as ring computes it.

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    h
}
