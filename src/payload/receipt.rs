//! `ReceiptV1` ↔ [`Receipt`]: the payload of
//! `application/vnd.dsnode.receipt.v1+protobuf`, signed by the consumer.

use prost::Message;

use super::pb;
use crate::dataset::DatasetError;
use crate::exchange::grant::GrantError;
use crate::exchange::receipt::Receipt;
use crate::identity::IdError;

/// The signed payload bytes of `receipt`.
pub fn encode(receipt: &Receipt) -> Vec<u8> {
    pb::ReceiptV1::from(receipt).encode_to_vec()
}

/// Decodes payload bytes into a receipt, every id and hash well formed.
pub fn decode(bytes: &[u8]) -> Result<Receipt, GrantError> {
    super::decode_message::<pb::ReceiptV1>(bytes, "ReceiptV1")?.try_into()
}

impl From<&Receipt> for pb::ReceiptV1 {
    fn from(receipt: &Receipt) -> Self {
        let Receipt {
            grant,
            dataset,
            content_sha256,
            bytes,
            received_at_ms,
            consumer_checkpoint,
            consumer,
            transfer_index,
            chunk_list_sha256,
            content_verified,
        } = receipt;
        Self {
            grant_id: grant.to_string(),
            dataset_id: dataset.to_string(),
            content_sha256: content_sha256.to_vec(),
            bytes: *bytes,
            received_at_ms: *received_at_ms,
            consumer_checkpoint: consumer_checkpoint.clone().into_bytes(),
            consumer: consumer.to_string(),
            transfer_index: *transfer_index,
            chunk_list_sha256: chunk_list_sha256.map(|h| h.to_vec()).unwrap_or_default(),
            content_sha256_verified: *content_verified,
        }
    }
}

impl TryFrom<pb::ReceiptV1> for Receipt {
    type Error = GrantError;

    /// Every field is taken apart, so a new proto field breaks the build
    /// until it is handled.
    fn try_from(message: pb::ReceiptV1) -> Result<Self, GrantError> {
        let pb::ReceiptV1 {
            grant_id,
            dataset_id,
            content_sha256,
            bytes,
            received_at_ms,
            consumer_checkpoint,
            consumer,
            transfer_index,
            chunk_list_sha256,
            content_sha256_verified,
        } = message;
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
                .map_err(|e: IdError| GrantError::Malformed(e.to_string()))?,
            transfer_index,
            chunk_list_sha256: match chunk_list_sha256.len() {
                0 => None,
                _ => Some(chunk_list_sha256.as_slice().try_into().map_err(|_| {
                    GrantError::Malformed("chunk_list_sha256 must be 32 bytes or empty".into())
                })?),
            },
            content_verified: content_sha256_verified,
        })
    }
}

impl crate::codec::Canonical for crate::exchange::receipt::Receipt {
    type Error = crate::exchange::grant::GrantError;

    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, crate::exchange::grant::GrantError> {
        decode(bytes)
    }
}
