//! Transfer receipts: what the consumer says it received, signed by the
//! consumer as a DSSE envelope of payload type
//! `application/vnd.dsnode.receipt.v1+protobuf`. With the publisher-signed
//! manifest and grant, it proves what was offered, allowed and received.
//! The payload is protobuf by design; its codec is
//! [`crate::payload::receipt`].
//!
//! The receipt's `consumer_checkpoint` is the consumer's latest checkpoint
//! (a C2SP signed note of its log) when it signed, or empty from a client
//! with no ledger of its own. The publisher takes a receipt only if that
//! checkpoint is empty or verifies ([`verify_consumer_checkpoint`]), and
//! keeps the receipt next to the grant it issued.

use super::grant::{GrantError, GrantId};
use crate::codec::Canonical;
use crate::dataset::DatasetId;
use crate::digest::Hash;
use crate::envelope::{Envelope, PayloadType, SignedBy, Verified};
use crate::identity::NodeId;
use crate::ledger::note::{self, Checkpoint, NoteError, NoteVerifier, SignedCheckpoint};

/// The prefix of every dsnode log's origin (`dsnode/<node id>`).
const ORIGIN_PREFIX: &str = "dsnode/";

/// Why a receipt's `consumer_checkpoint` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerCheckpointError {
    /// Not a signed note holding a checkpoint.
    #[error("the receipt's consumer_checkpoint is not a C2SP signed checkpoint (or empty): {0}")]
    Malformed(#[source] NoteError),
    /// A checkpoint, but not of a dsnode log.
    #[error(
        "the receipt's consumer_checkpoint is of log `{origin}`; expected a node's log, `dsnode/` and a node id"
    )]
    Origin {
        /// The origin the note names.
        origin: String,
    },
    /// Not signed by the consumer's key.
    #[error(
        "the receipt's consumer_checkpoint (log `{origin}`) is not signed by the consumer's certificate key (node {consumer}): {source}"
    )]
    Unsigned {
        /// The origin the note names.
        origin: String,
        /// The consumer, by its certificate key.
        consumer: NodeId,
        /// What the verifier said.
        #[source]
        source: NoteError,
    },
}

/// Verifies a receipt's `consumer_checkpoint` under the consumer's
/// current key (the one its TLS certificate and the receipt's signature
/// use): empty (a client with no ledger of its own) is `None`; anything
/// else must be a C2SP signed checkpoint of a dsnode log (`dsnode/<node
/// id>`) with a valid signature by `consumer_key` under that origin.
///
/// Only the current key counts: the receipt itself must be signed by it,
/// so a checkpoint signed only by a key the consumer retired is refused.
/// A log keeps the origin of the key that started it, so after the
/// consumer rotated its key the origin names an earlier key of the
/// consumer; the publisher, which does not hold the consumer's key
/// history, cannot tie that origin to the consumer. An auditor does, from
/// the consumer's history (`Ledger.GetCheckpoint`, evidence bundles).
pub fn verify_consumer_checkpoint(
    note_text: &str,
    consumer_key: &[u8; 32],
) -> Result<Option<SignedCheckpoint>, ConsumerCheckpointError> {
    if note_text.is_empty() {
        return Ok(None);
    }
    let bytes = note_text.as_bytes();
    let origin = note::unverified_text(bytes)
        .and_then(Checkpoint::parse)
        .map_err(ConsumerCheckpointError::Malformed)?
        .origin;
    if origin
        .strip_prefix(ORIGIN_PREFIX)
        .is_none_or(|id| id.parse::<NodeId>().is_err())
    {
        return Err(ConsumerCheckpointError::Origin { origin });
    }
    let unsigned = |source| ConsumerCheckpointError::Unsigned {
        origin: origin.clone(),
        consumer: NodeId::from_public_key(consumer_key),
        source,
    };
    let verifier = NoteVerifier::new(&origin, consumer_key).map_err(unsigned)?;
    SignedCheckpoint::verify(bytes, &verifier)
        .map(Some)
        .map_err(unsigned)
}

/// A receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The grant the transfer used.
    pub grant: GrantId,
    /// The dataset received.
    pub dataset: DatasetId,
    /// SHA-256 of the content received, as the manifest states it (and
    /// as the consumer computed it when `content_verified`).
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
    /// SHA-256 of the chunk list every chunk received was checked
    /// against, computed by the consumer: the content's identity (`None`
    /// in receipts of consumers before it existed).
    pub chunk_list_sha256: Option<Hash>,
    /// Whether the consumer hashed the whole content itself.
    pub content_verified: bool,
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
