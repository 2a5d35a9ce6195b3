//! The node's Ed25519 identity key: made once by `dsnode init`, kept as a
//! PKCS#8 PEM file with mode 0600, never sent anywhere. The same key signs
//! TLS handshakes (its certificate carries the public half) and the node's
//! application objects.

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
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
    /// The file is not a PKCS#8 Ed25519 private key.
    #[error(
        "{path} is not an Ed25519 private key in PKCS#8 PEM form (\"-----BEGIN PRIVATE KEY-----\"): {detail}"
    )]
    Format {
        /// The key file.
        path: String,
        /// What the decoder said.
        detail: String,
    },
    /// The key could not be converted for a TLS or certificate library.
    #[error("the Ed25519 key could not be encoded: {0}")]
    Encode(String),
}

/// A node's (or the CA's) Ed25519 signing key.
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

    fn pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        let doc = self
            .signing
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(doc.as_bytes().to_vec())
    }

    /// The key as rustls wants it for a TLS certificate.
    pub fn tls_private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            self.pkcs8_der()?,
        )))
    }

    /// The key as rcgen wants it for signing CSRs, certificates and CRLs.
    pub fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, KeyError> {
        let der = PrivatePkcs8KeyDer::from(self.pkcs8_der()?);
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "NodeKey({})", self.node_id())
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
        let rc = back.rcgen_key_pair().expect("rcgen");
        assert_eq!(rc.public_key_raw(), key.public_key());
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
