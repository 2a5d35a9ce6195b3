//! Transfer receipts: what the consumer says it received, signed by the
//! consumer as a DSSE envelope of payload type
//! `application/vnd.dsnode.receipt.v1+protobuf`. With the publisher-signed
//! manifest and grant, it proves what was offered, allowed and received.
//! The payload is protobuf by design; its codec is
//! [`crate::payload::receipt`].

use super::grant::{GrantError, GrantId};
use crate::codec::Canonical;
use crate::dataset::DatasetId;
use crate::digest::Hash;
use crate::envelope::{Envelope, PayloadType, SignedBy, Verified};
use crate::identity::NodeId;

/// A receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The grant the transfer used.
    pub grant: GrantId,
    /// The dataset received.
    pub dataset: DatasetId,
    /// SHA-256 of the content received.
    pub content_sha256: Hash,
    /// Bytes received.
    pub bytes: u64,
    /// When, ms since the Unix epoch (consumer's clock).
    pub received_at_ms: i64,
    /// The consumer's latest checkpoint when it signed.
    pub consumer_checkpoint: String,
    /// The consumer's node id (the signer).
    pub consumer: NodeId,
    /// The publisher's TransferStarted entry this receipt closes.
    pub transfer_index: u64,
}

impl Receipt {
    /// The signed payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        Canonical::encode(self)
    }

    /// Decodes a verified payload, every id and hash well formed.
    pub fn decode(bytes: &[u8]) -> Result<Self, GrantError> {
        <Self as Canonical>::decode(bytes)
    }

    /// Signs the receipt with the consumer's key.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Envelope {
        Envelope::sign(
            PayloadType::Receipt,
            self.encode(),
            key,
            self.consumer.as_str(),
        )
    }
}

/// Verifies a receipt against the consumer's key (from its certificate);
/// the receipt must name that consumer.
pub fn verify_receipt(
    envelope: Envelope,
    consumer_key: &[u8; 32],
) -> Result<Verified<Receipt>, GrantError> {
    envelope.verify_signed(consumer_key)
}

impl SignedBy for Receipt {
    const TYPE: PayloadType = PayloadType::Receipt;
    const NOUN: &'static str = "receipt";
    const SIGNER_ROLE: &'static str = "consumer";
    fn signer(&self) -> &NodeId {
        &self.consumer
    }

    fn wrong_signer(message: String) -> GrantError {
        GrantError::Malformed(message)
    }
}
