//! What this node asks of another node, in domain terms: the one seam
//! between the use cases and the network.
//!
//! [`crate::wire::client`] implements [`Peer`] and [`Dialer`] over mutual
//! TLS; unit tests implement them in memory, so a use case that talks to
//! another node (the witness protocol, a fetch) can be tested without one.
//! Messages here are what the other node sent, unverified: the use case
//! that receives them checks every signature and proof.

use std::future::Future;
use std::pin::Pin;

use crate::envelope::Envelope;
use crate::identity::PeerIdentity;

/// A future a [`Peer`] returns (boxed: peers are used as trait objects).
pub type PeerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PeerError>> + Send + 'a>>;

/// The parts of a transfer as the publisher sends them: one header, then
/// the chunks in order.
pub type FetchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<FetchPart, PeerError>> + Send>>;

/// Another node, reached over a connection whose certificate was verified.
pub trait Peer: Send + Sync {
    /// The node at the other end, as its verified certificate states it.
    fn identity(&self) -> &PeerIdentity;

    /// Asks the node (a publisher) for access to one of its datasets
    /// (`Exchange.RequestAccess`); the answer is its signed grant, not yet
    /// verified.
    fn request_access(&self, request: AccessAsk) -> PeerFuture<'_, Envelope>;

    /// Opens a transfer of a granted dataset (`Exchange.Fetch`), new or
    /// resumed.
    fn fetch(&self, request: FetchAsk) -> PeerFuture<'_, FetchStream>;

    /// Hands the node (the grant's publisher) a receipt this node signed
    /// (`Exchange.SubmitReceipt`).
    fn submit_receipt(&self, receipt: &Envelope) -> PeerFuture<'_, ReceiptTaken>;

    /// The raw `KeyRotated` entries of its log (`Ledger.GetCheckpoint`),
    /// to rebuild and check its key history.
    fn key_rotations(&self) -> PeerFuture<'_, Vec<Vec<u8>>>;

    /// One call of the checkpoint exchange (`Peering.ExchangeCheckpoints`).
    fn exchange_checkpoints(&self, offer: CheckpointOffer) -> PeerFuture<'_, CheckpointAnswer>;

    /// Its checkpoint of size `old` and a consistency proof from it to
    /// `new` (`Ledger.ProveConsistency`).
    fn prove_consistency(&self, old: u64, new: u64) -> PeerFuture<'_, ConsistencyAnswer>;
}

/// Opens connections to other nodes by address (`HOST:PORT`).
pub trait Dialer: Send + Sync {
    /// Connects, with this node's certificate, and verifies the other's.
    fn dial<'a>(&'a self, addr: &'a str) -> PeerFuture<'a, Box<dyn Peer>>;
}

/// An access request as sent to a publisher (the requester is the
/// certificate of the connection, never a field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessAsk {
    /// The dataset.
    pub dataset_id: String,
    /// The purpose asked for.
    pub purpose: String,
    /// The actions asked for (read, derive, redistribute, aggregate).
    pub actions: Vec<String>,
    /// Wanted grant lifetime in seconds; 0: as long as the policy allows.
    pub duration_secs: u64,
}

/// A transfer request: a new fetch of a grant, or a resume of one of its
/// transfers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchAsk {
    /// The grant.
    pub grant_id: String,
    /// Set to resume: (the publisher's `TransferStarted` index, the first
    /// chunk wanted).
    pub resume: Option<Resume>,
}

/// Where a resumed transfer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The publisher's `TransferStarted` entry of the interrupted transfer.
    pub transfer_index: u64,
    /// The first chunk wanted (every one before it is verified).
    pub from_chunk: u64,
}

/// One part of a transfer stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchPart {
    /// The first part: what the transfer carries.
    Header(FetchHeader),
    /// The next chunk's bytes.
    Chunk(Vec<u8>),
}

/// What a transfer carries, as the publisher states it (unverified).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchHeader {
    /// The publisher-signed manifest (`None`: the publisher sent none).
    pub manifest: Option<Envelope>,
    /// SHA-256 of every chunk, in order (each should be 32 bytes).
    pub chunk_hashes: Vec<Vec<u8>>,
    /// The publisher's `TransferStarted` entry.
    pub transfer_index: u64,
    /// The index of the first chunk the stream carries.
    pub first_chunk: u64,
}

/// A publisher's answer to a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptTaken {
    /// The publisher's `ReceiptRecorded` entry.
    pub ledger_index: u64,
    /// Its checkpoint that covers that entry (a signed note, unverified).
    pub checkpoint: Vec<u8>,
}

/// One side's log as sent in a checkpoint exchange: the caller's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointOffer {
    /// The sender's latest checkpoint (a signed note).
    pub checkpoint: Vec<u8>,
    /// The sender's `KeyRotated` entries (its key history).
    pub key_rotations: Vec<Vec<u8>>,
    /// The sender's checkpoint the proof starts from (empty: none).
    pub old_checkpoint: Vec<u8>,
    /// A consistency proof from `old_checkpoint` to `checkpoint`.
    pub consistency_proof: Vec<Vec<u8>>,
    /// The size of the receiver's log the sender saw last (0: none), so
    /// the answer can be proven from it.
    pub seen_size: u64,
    /// The receiver's checkpoint with the sender's cosignature (empty:
    /// none).
    pub cosigned: Vec<u8>,
}

/// The other side's answer to a [`CheckpointOffer`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointAnswer {
    /// The answering node's latest checkpoint.
    pub checkpoint: Vec<u8>,
    /// Its key history.
    pub key_rotations: Vec<Vec<u8>>,
    /// Its checkpoint of the size the caller saw last (empty: none).
    pub old_checkpoint: Vec<u8>,
    /// A consistency proof from `old_checkpoint` to `checkpoint`.
    pub consistency_proof: Vec<Vec<u8>>,
    /// The caller's checkpoint with the answering node's cosignature
    /// (empty: not cosigned).
    pub cosigned: Vec<u8>,
    /// Non-zero: the answering node wants the caller's proof from this
    /// size (the last it saw), and cosigned nothing.
    pub need_proof_from: u64,
}

/// A node's checkpoint and a consistency proof from it to a larger size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyAnswer {
    /// The checkpoint of the smaller size (a signed note).
    pub old_checkpoint: Vec<u8>,
    /// The proof.
    pub proof: Vec<Vec<u8>>,
}

/// How a call to another node failed, as gRPC classes it (the wire maps
/// these one to one to and from `tonic::Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the gRPC status codes, by their usual names
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// A call to another node that failed: not reached, broken off, or
/// answered with a refusal.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PeerError {
    /// The class of failure.
    pub code: Code,
    /// What the other node (or the connection) said.
    pub message: String,
    /// A checkpoint of this node's own log the other node holds and showed
    /// with its refusal (a witness refusing a fork or a stale
    /// checkpoint), so this node can check the claim against its store.
    pub shown: Option<ShownCheckpoint>,
}

/// A checkpoint of a log that a witness showed with a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownCheckpoint {
    /// The log's origin.
    pub origin: String,
    /// The signed note, as the witness holds it.
    pub note: Vec<u8>,
}

impl PeerError {
    /// A failure of `code` saying `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            shown: None,
        }
    }

    /// The other node could not be reached.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// Whether the call broke off (connection lost, stream reset) rather
    /// than being answered: only those are worth retrying.
    pub fn is_broken(&self) -> bool {
        matches!(
            self.code,
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
        )
    }
}
