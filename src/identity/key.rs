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
//!
//! Ed25519 files are written as PKCS#8 v1 (RFC 5208: version 0, the
//! 32-byte seed, no public key), the form OpenSSL (`openssl pkey`) and most
//! tools read; files written by earlier versions as PKCS#8 v2 (RFC 5958,
//! with the public key) still load.

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};
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
