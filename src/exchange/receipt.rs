//! Transfer receipts: what the consumer says it received, signed by the
//! consumer as a DSSE envelope of payload type
//! `application/vnd.dsnode.receipt.v1+protobuf`. With the publisher-signed
//! manifest and grant, it proves what was offered, allowed and received.
//! The payload is protobuf by design; this module uses the generated type
//! only to encode and decode it.

use prost::Message;

use super::grant::{GrantError, GrantId};
use crate::dataset::{DatasetError, DatasetId};
use crate::digest::Hash;
use crate::envelope::{Envelope, PayloadType, Verified};
use crate::identity::NodeId;
use crate::wire::pb;

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
        pb::ReceiptV1 {
            grant_id: self.grant.to_string(),
            dataset_id: self.dataset.to_string(),
            content_sha256: self.content_sha256.to_vec(),
            bytes: self.bytes,
            received_at_ms: self.received_at_ms,
            consumer_checkpoint: self.consumer_checkpoint.clone().into_bytes(),
            consumer: self.consumer.to_string(),
            transfer_index: self.transfer_index,
        }
        .encode_to_vec()
    }

    /// Decodes a verified payload, taking every field apart.
    pub fn decode(bytes: &[u8]) -> Result<Self, GrantError> {
        let pb::ReceiptV1 {
            grant_id,
            dataset_id,
            content_sha256,
            bytes,
            received_at_ms,
            consumer_checkpoint,
            consumer,
            transfer_index,
        } = pb::ReceiptV1::decode(bytes)
            .map_err(|e| GrantError::Malformed(format!("not a ReceiptV1 protobuf: {e}")))?;
        Ok(Self {
            grant: grant_id.parse()?,
            dataset: dataset_id
                .parse()
                .map_err(|e: DatasetError| GrantError::Malformed(e.to_string()))?,
            content_sha256: content_sha256
                .as_slice()
                .try_into()
                .map_err(|_| GrantError::Malformed("content_sha256 must be 32 bytes".into()))?,
            bytes,
            received_at_ms,
            consumer_checkpoint: String::from_utf8(consumer_checkpoint).map_err(|_| {
                GrantError::Malformed("the consumer checkpoint is not UTF-8".into())
            })?,
            consumer: consumer
                .parse()
                .map_err(|e: crate::identity::IdError| GrantError::Malformed(e.to_string()))?,
            transfer_index,
        })
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
    let verified = envelope.verify(PayloadType::Receipt, consumer_key, Receipt::decode)?;
    let signer = NodeId::from_public_key(consumer_key);
    if verified.value().consumer != signer {
        return Err(GrantError::Malformed(format!(
            "the receipt names consumer {} but was signed by {signer}",
            verified.value().consumer
        )));
    }
    Ok(verified)
}
