//! The node's Ed25519 identity key: made once by `dsnode init`, kept as a
//! PKCS#8 PEM file with mode 0600, never sent anywhere. The same key signs
//! TLS handshakes (its certificate carries the public half) and the node's
//! application objects.
//!
//! Files are written as PKCS#8 v1 (RFC 5208: version 0, the 32-byte seed,
//! no public key), the form OpenSSL (`openssl pkey`) and most tools read;
//! files written by earlier versions as PKCS#8 v2 (RFC 5958, with the
//! public key) still load.

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};
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

    /// Writes the key to a new file with mode 0600 as a PKCS#8 v1 PEM
    /// (RFC 5208 `PrivateKeyInfo`, version 0, no public key; see the
    /// module docs); refuses to overwrite. `SigningKey::to_pkcs8_pem`
    /// would write v2 (RFC 5958, with the public key), which OpenSSL 3
    /// refuses as "unsupported".
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        // Both the seed copy and the PEM are zeroized when dropped (the
        // crate's `zeroize` feature).
        let v1 = KeypairBytes {
            secret_key: self.signing.to_bytes(),
            public_key: None,
        };
        let pem = v1
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

    /// The DER of an Ed25519 PKCS#8 v1 key before its 32-byte seed:
    /// SEQUENCE, INTEGER 0 (v1), the Ed25519 algorithm, OCTET STRING
    /// holding the OCTET STRING of the seed; no public key.
    const V1_PREFIX: &str = "302e020100300506032b657004220420";

    fn der_of(path: &Path) -> Vec<u8> {
        let text = std::fs::read_to_string(path).expect("read");
        let pem = pem::parse(text).expect("pem");
        assert_eq!(pem.tag(), "PRIVATE KEY");
        pem.contents().to_vec()
    }

    #[test]
    fn a_written_key_is_pkcs8_v1_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let key = NodeKey::generate();
        key.save_new(&path).expect("save");
        let der = der_of(&path);
        let mut expected = data_encoding::HEXLOWER
            .decode(V1_PREFIX.as_bytes())
            .expect("hex");
        expected.extend_from_slice(&key.signing_key().to_bytes());
        assert_eq!(
            der, expected,
            "48 bytes: version 0, the seed, no public key"
        );
        let info = ed25519_dalek::pkcs8::PrivateKeyInfo::try_from(der.as_slice()).expect("info");
        assert_eq!(info.version() as u8, 0, "version 0 (v1)");
        assert!(info.public_key.is_none());
        let back = NodeKey::load(&path).expect("load");
        assert_eq!(back.signing_key().to_bytes(), key.signing_key().to_bytes());
        assert_eq!(back.node_id(), key.node_id());
    }

    #[test]
    fn a_pkcs8_v2_key_written_by_earlier_versions_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let key = NodeKey::generate();
        // What `save_new` wrote before: v2, with the public key.
        let v2 = key.signing_key().to_pkcs8_pem(LineEnding::LF).expect("v2");
        fsutil::create_new_atomic(&path, v2.as_bytes(), fsutil::SECRET_MODE).expect("write");
        let der = der_of(&path);
        let info = ed25519_dalek::pkcs8::PrivateKeyInfo::try_from(der.as_slice()).expect("info");
        assert_eq!(info.version() as u8, 1, "version 1 (v2)");
        let back = NodeKey::load(&path).expect("a v2 file loads");
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn openssl_reads_a_written_key_and_derives_the_same_public_key() {
        let openssl = Path::new("/usr/bin/openssl");
        if !openssl.exists() {
            println!("skipped: /usr/bin/openssl is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let key = NodeKey::generate();
        key.save_new(&path).expect("save");
        let check = std::process::Command::new(openssl)
            .args(["pkey", "-noout", "-in"])
            .arg(&path)
            .output()
            .expect("run openssl");
        assert!(
            check.status.success(),
            "openssl pkey -noout: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let public = std::process::Command::new(openssl)
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&path)
            .output()
            .expect("run openssl");
        assert!(
            public.status.success(),
            "openssl pkey -pubout: {}",
            String::from_utf8_lossy(&public.stderr)
        );
        // SubjectPublicKeyInfo of Ed25519: a 12-byte header, then the key.
        let spki = public.stdout;
        assert_eq!(spki.len(), 44, "{spki:?}");
        assert_eq!(
            data_encoding::HEXLOWER.encode(&spki[..12]),
            "302a300506032b6570032100"
        );
        assert_eq!(spki[12..], key.public_key());
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
