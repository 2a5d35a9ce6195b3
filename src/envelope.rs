//! DSSE (Dead Simple Signing Envelope) signing and verification.
//!
//! Every signed object (manifest, grant, receipt) is a DSSE envelope: the
//! signature covers `PAE(payloadType, payload)` over the exact payload
//! bytes, so a signature made for one payload type can never be accepted
//! for another. Verification comes before decoding, and what comes out of
//! it is a [`Verified`] value, a different type from anything unverified.
//! Envelopes export to the DSSE JSON form so third-party verifiers
//! (in-toto, securesystemslib) accept them.

use data_encoding::BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Largest envelope payload accepted.
pub const MAX_PAYLOAD: usize = 256 << 10;
/// Most signatures an envelope may carry (each costs a verification).
pub const MAX_SIGNATURES: usize = 4;

/// The kinds of signed object, each with its own payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadType {
    /// A dataset manifest, signed by its publisher.
    Manifest,
    /// An access grant, signed by the publisher.
    Grant,
    /// A transfer receipt, signed by the consumer.
    Receipt,
    /// A log's key rotation, signed by the retired and the new key.
    KeyRotation,
}

impl PayloadType {
    /// The DSSE `payloadType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadType::Manifest => "application/vnd.dsnode.manifest.v1+protobuf",
            PayloadType::Grant => "application/vnd.dsnode.grant.v1+protobuf",
            PayloadType::Receipt => "application/vnd.dsnode.receipt.v1+protobuf",
            PayloadType::KeyRotation => "application/vnd.dsnode.key-rotation.v1+protobuf",
        }
    }
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The envelope is for another kind of object.
    #[error("envelope payload type is `{got}`, expected `{expected}`")]
    WrongType {
        /// What the envelope says.
        got: String,
        /// What the caller expected.
        expected: &'static str,
    },
    /// No signature verifies with the expected key.
    #[error("no valid signature by the expected key ({0}) on the envelope")]
    BadSignature(String),
    /// The envelope is not well formed.
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

/// The pre-authentication encoding the signature covers:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature on an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// Who signed (a node id; informational, never trusted for lookup).
    pub keyid: String,
    /// The Ed25519 signature.
    pub sig: Vec<u8>,
}

/// A DSSE envelope as received or stored: not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The payload type.
    pub payload_type: String,
    /// The exact signed payload bytes.
    pub payload: Vec<u8>,
    /// Signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// A signed object that names the node that signs it (a manifest its
/// publisher, a grant its publisher, a receipt its consumer): verified
/// with [`Envelope::verify_signed`], which checks both.
pub trait SignedBy: crate::codec::Canonical {
    /// Its payload type.
    const TYPE: PayloadType;
    /// What it is called in errors ("manifest").
    const NOUN: &'static str;
    /// What its signer is called in errors ("publisher").
    const SIGNER_ROLE: &'static str;
    /// The node it names as its signer.
    fn signer(&self) -> &crate::identity::NodeId;
    /// The error for an object signed by another node than it names.
    fn wrong_signer(message: String) -> Self::Error;
}

/// A value whose envelope verified with a known key. Only this module
/// makes one, so holding a `Verified<T>` proves the check was done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
    envelope: Envelope,
    signer: [u8; 32],
}

impl<T> Verified<T> {
    /// The verified value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The envelope it came in.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The Ed25519 key that signed it.
    pub fn signer(&self) -> &[u8; 32] {
        &self.signer
    }
}

impl<T: SignedBy> Verified<T> {
    /// Signs `value` with `key` here: a signature this process just made
    /// verifies by construction, so no check is run (issuing a grant
    /// costs one signature, not a signature and a verification). `None`
    /// if `value` names another signer than the node of `key`.
    pub fn sign_here(value: T, key: &SigningKey) -> Option<Self> {
        let signer = key.verifying_key().to_bytes();
        if *value.signer() != crate::identity::NodeId::from_public_key(&signer) {
            return None;
        }
        let envelope = Envelope::sign(T::TYPE, value.encode(), key, value.signer().as_str());
        Some(Self {
            value,
            envelope,
            signer,
        })
    }
}

impl Envelope {
    /// Signs `payload` as `payload_type` with `key`.
    pub fn sign(
        payload_type: PayloadType,
        payload: Vec<u8>,
        key: &SigningKey,
        keyid: &str,
    ) -> Self {
        let sig = key.sign(&pae(payload_type.as_str(), &payload));
        Self {
            payload_type: payload_type.as_str().to_owned(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: keyid.to_owned(),
                sig: sig.to_bytes().to_vec(),
            }],
        }
    }

    /// Adds a signature by `key` over the same payload (an object two keys
    /// must both vouch for).
    pub fn cosign(&mut self, key: &SigningKey, keyid: &str) {
        let sig = key.sign(&pae(&self.payload_type, &self.payload));
        self.signatures.push(EnvelopeSignature {
            keyid: keyid.to_owned(),
            sig: sig.to_bytes().to_vec(),
        });
    }

    /// Verifies the envelope is of `expected` type and signed by `key`
    /// (`verify_strict`), then decodes the payload with `decode`: nothing
    /// is decoded before the signature checks out.
    pub fn verify<T, E: std::fmt::Display>(
        self,
        expected: PayloadType,
        key: &[u8; 32],
        decode: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<Verified<T>, EnvelopeError> {
        if self.payload_type != expected.as_str() {
            return Err(EnvelopeError::WrongType {
                got: self.payload_type.chars().take(100).collect(),
                expected: expected.as_str(),
            });
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::Malformed(format!(
                "{} signatures; at most {MAX_SIGNATURES}",
                self.signatures.len()
            )));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(EnvelopeError::Malformed(format!(
                "payload of {} bytes; at most {MAX_PAYLOAD}",
                self.payload.len()
            )));
        }
        let who = crate::identity::NodeId::from_public_key(key).to_string();
        let vk =
            VerifyingKey::from_bytes(key).map_err(|_| EnvelopeError::BadSignature(who.clone()))?;
        let message = pae(&self.payload_type, &self.payload);
        let verified = self.signatures.iter().any(|s| {
            Signature::from_slice(&s.sig).is_ok_and(|sig| vk.verify_strict(&message, &sig).is_ok())
        });
        if !verified {
            return Err(EnvelopeError::BadSignature(who));
        }
        let value = decode(&self.payload).map_err(|e| {
            EnvelopeError::Malformed(format!("signed payload does not decode: {e}"))
        })?;
        Ok(Verified {
            value,
            envelope: self,
            signer: *key,
        })
    }

    /// Verifies an object that names its signer ([`SignedBy`]): the
    /// signature by `key` as [`Envelope::verify`] does, then that the node
    /// the object names as its signer is the node of `key`.
    pub fn verify_signed<T>(self, key: &[u8; 32]) -> Result<Verified<T>, T::Error>
    where
        T: SignedBy,
        T::Error: From<EnvelopeError>,
    {
        let verified = self.verify(T::TYPE, key, <T as crate::codec::Canonical>::decode)?;
        let signer = crate::identity::NodeId::from_public_key(key);
        if *verified.value().signer() != signer {
            return Err(T::wrong_signer(format!(
                "the {} names {} {} but was signed by {signer}",
                T::NOUN,
                T::SIGNER_ROLE,
                verified.value().signer()
            )));
        }
        Ok(verified)
    }

    /// The DSSE JSON envelope.
    pub fn to_json(&self) -> String {
        let json = JsonEnvelope {
            payload: BASE64.encode(&self.payload),
            payload_type: self.payload_type.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|s| JsonSignature {
                    keyid: s.keyid.clone(),
                    sig: BASE64.encode(&s.sig),
                })
                .collect(),
        };
        // Serializing plain strings cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// Reads a DSSE JSON envelope.
    pub fn from_json(text: &str) -> Result<Self, EnvelopeError> {
        let json: JsonEnvelope = serde_json::from_str(text)
            .map_err(|e| EnvelopeError::Malformed(format!("not a DSSE JSON envelope: {e}")))?;
        let b64 = |field: &str, v: &str| {
            BASE64
                .decode(v.as_bytes())
                .map_err(|_| EnvelopeError::Malformed(format!("{field} is not base64")))
        };
        Ok(Self {
            payload: b64("payload", &json.payload)?,
            payload_type: json.payload_type,
            signatures: json
                .signatures
                .iter()
                .map(|s| {
                    Ok(EnvelopeSignature {
                        keyid: s.keyid.clone(),
                        sig: b64("sig", &s.sig)?,
                    })
                })
                .collect::<Result<_, EnvelopeError>>()?,
        })
    }

    /// SHA-256 of the signed payload: what ledger entries reference.
    pub fn payload_hash(&self) -> [u8; 32] {
        crate::digest::sha256(&self.payload)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEnvelope {
    payload: String,
    #[serde(rename = "payloadType")]
    payload_type: String,
    signatures: Vec<JsonSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn ok(p: &[u8]) -> Result<Vec<u8>, String> {
        Ok(p.to_vec())
    }

    #[test]
    fn pae_matches_the_spec_vector() {
        let want = include_bytes!("../tests/vectors/dsse/pae.txt");
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            want.to_vec()
        );
    }

    #[test]
    fn any_flipped_byte_wrong_key_or_wrong_type_is_refused() {
        let k = key(1);
        let pk = k.verifying_key().to_bytes();
        let env = Envelope::sign(PayloadType::Manifest, b"manifest bytes".to_vec(), &k, "me");
        assert_eq!(
            env.clone()
                .verify(PayloadType::Manifest, &pk, ok)
                .expect("verifies")
                .value(),
            b"manifest bytes"
        );
        for i in 0..env.payload.len() {
            let mut e = env.clone();
            e.payload[i] ^= 1;
            assert!(
                e.verify(PayloadType::Manifest, &pk, ok).is_err(),
                "payload byte {i}"
            );
        }
        for i in 0..64 {
            let mut e = env.clone();
            e.signatures[0].sig[i] ^= 1;
            assert!(
                e.verify(PayloadType::Manifest, &pk, ok).is_err(),
                "sig byte {i}"
            );
        }
        let other = key(2).verifying_key().to_bytes();
        assert!(matches!(
            env.clone().verify(PayloadType::Manifest, &other, ok),
            Err(EnvelopeError::BadSignature(_))
        ));
        // A grant envelope presented as a manifest.
        let grant = Envelope::sign(PayloadType::Grant, b"manifest bytes".to_vec(), &k, "me");
        assert!(matches!(
            grant.clone().verify(PayloadType::Manifest, &pk, ok),
            Err(EnvelopeError::WrongType { .. })
        ));
        // Even relabelled, the grant's signature does not carry over.
        let mut relabelled = grant;
        relabelled.payload_type = PayloadType::Manifest.as_str().into();
        assert!(relabelled.verify(PayloadType::Manifest, &pk, ok).is_err());
        // A valid signature moved onto another payload.
        let mut moved = Envelope::sign(PayloadType::Manifest, b"other".to_vec(), &k, "me");
        moved.signatures = env.signatures;
        assert!(moved.verify(PayloadType::Manifest, &pk, ok).is_err());
    }

    #[test]
    fn json_round_trip() {
        let k = key(3);
        let env = Envelope::sign(PayloadType::Receipt, vec![0, 1, 2, 255], &k, "dsn1x");
        let json = env.to_json();
        assert!(json.contains("\"payloadType\""));
        assert_eq!(Envelope::from_json(&json).expect("parse"), env);
        assert!(Envelope::from_json("{\"payload\": 1}").is_err());
    }
}
