//! A node's two keys, each made by `dsnode init` (and again by `dsnode key
//! new`), kept as PKCS#8 PEM files with mode 0600, never sent anywhere:
//!
//! - [`NodeKey`] (`node.key`), Ed25519: signs the node's application
//!   objects (manifests, grants, receipts, checkpoints, cosignatures) and
//!   names the node ([`NodeId`]).
//! - [`P256Key`] (`tls.key`), ECDSA P-256: signs TLS handshakes, the key
//!   every TLS stack accepts (gRPC's BoringSSL-based stacks and browsers
//!   refuse Ed25519 certificates). The node certificate carries its public
//!   half and binds the Ed25519 key (see [`super::cert`]). The data-space
//!   CA's key (`ca.key`) is a [`P256Key`] too.

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::NodeId;
use crate::fsutil::{self, FileError, SecretError};

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or is exposed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The key file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not a PKCS#8 private key of the expected kind.
    #[error(
        "{path} is not an {expected} private key in PKCS#8 PEM form (\"-----BEGIN PRIVATE KEY-----\"): {detail}"
    )]
    Format {
        /// The key file.
        path: String,
        /// The kind of key expected ("Ed25519", "ECDSA P-256").
        expected: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// The key could not be converted for a TLS or certificate library.
    #[error("the Ed25519 key could not be encoded: {0}")]
    Encode(String),
    /// An ECDSA P-256 key could not be made or used.
    #[error("ECDSA P-256 key: {source}")]
    P256 {
        /// rcgen's (ring's) error.
        #[source]
        source: rcgen::Error,
    },
}

/// A node's Ed25519 signing key.
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    /// Makes a new random key from the operating system's generator.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Reads a key file, refusing it if group or others may read it.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = fsutil::read_secret(path)?;
        let format_error = |detail: String| KeyError::Format {
            path: path.display().to_string(),
            expected: "Ed25519",
            detail,
        };
        let pem = std::str::from_utf8(&bytes).map_err(|e| format_error(e.to_string()))?;
        let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| format_error(e.to_string()))?;
        Ok(Self { signing })
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        fsutil::create_new_atomic(path, pem.as_bytes(), fsutil::SECRET_MODE)?;
        Ok(())
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The node id derived from the public key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public_key())
    }

    /// The ed25519-dalek signing key, for application signatures.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "NodeKey({})", self.node_id())
    }
}

/// An ECDSA P-256 key (PKCS#8): a node's TLS key (`tls.key`) or the
/// data-space CA's key (`ca.key`).
pub struct P256Key {
    /// The PKCS#8 document (what rcgen and rustls take).
    pkcs8: Vec<u8>,
    /// The public key as an X.509 SubjectPublicKeyInfo (DER).
    spki: Vec<u8>,
}

impl P256Key {
    /// Makes a new random key from the operating system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| KeyError::P256 { source })?;
        Ok(Self::from_pair(&pair))
    }

    fn from_pair(pair: &rcgen::KeyPair) -> Self {
        use rcgen::PublicKeyData;
        Self {
            pkcs8: pair.serialize_der(),
            spki: pair.subject_public_key_info(),
        }
    }

    /// Reads a key file, refusing it if group or others may read it or
    /// if it is not an ECDSA P-256 key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = fsutil::read_secret(path)?;
        let format_error = |detail: String| KeyError::Format {
            path: path.display().to_string(),
            expected: "ECDSA P-256",
            detail,
        };
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(&bytes).map_err(|e| format_error(e.to_string()))?;
        let pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| format_error(e.to_string()))?;
        Ok(Self::from_pair(&pair))
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self.rcgen_key_pair()?.serialize_pem();
        fsutil::create_new_atomic(path, pem.as_bytes(), fsutil::SECRET_MODE)?;
        Ok(())
    }

    /// The public key as an X.509 SubjectPublicKeyInfo (DER), as a
    /// certificate or CSR carries it.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// The key as rustls wants it for a TLS certificate.
    pub fn tls_private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    /// The key as rcgen wants it for signing CSRs, certificates and CRLs.
    pub fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, KeyError> {
        let der = PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| KeyError::P256 { source })
    }
}

impl std::fmt::Debug for P256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("P256Key(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let key = NodeKey::generate();
        key.save_new(&path).expect("save");
        let back = NodeKey::load(&path).expect("load");
        assert_eq!(back.public_key(), key.public_key());
        assert!(key.save_new(&path).is_err(), "must not overwrite a key");
    }

    #[test]
    fn p256_key_round_trips_with_mode_0600_and_ed25519_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.key");
        let key = P256Key::generate().expect("generate");
        key.save_new(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = P256Key::load(&path).expect("load");
        assert_eq!(back.public_key_der(), key.public_key_der());
        assert!(key.save_new(&path).is_err(), "must not overwrite a key");
        let pair = back.rcgen_key_pair().expect("rcgen");
        assert_eq!(pair.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);

        let ed = dir.path().join("node.key");
        NodeKey::generate().save_new(&ed).expect("save");
        let msg = P256Key::load(&ed).expect_err("ed25519").to_string();
        assert!(msg.contains("not an ECDSA P-256 private key"), "{msg}");
    }

    #[test]
    fn garbage_key_file_is_refused_with_the_expected_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        fsutil::write_atomic(&path, b"not a key", fsutil::SECRET_MODE).expect("write");
        let msg = NodeKey::load(&path).expect_err("garbage").to_string();
        assert!(msg.contains("PKCS#8"), "{msg}");
    }
}
