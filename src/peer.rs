//! What this node asks of another node, in domain terms: the one seam
//! between the use cases and the network.
//!
//! [`crate::wire::client`] implements [`Peer`] and [`Dialer`] over mutual
//! TLS; unit tests implement them in memory, so a use case that talks to
//! another node (the witness protocol, an audit, a fetch) can be tested
//! without one.
//! Messages here are what the other node sent, unverified: the use case
//! that receives them checks every signature and proof.

use std::future::Future;
use std::pin::Pin;

use crate::envelope::Envelope;
use crate::identity::PeerIdentity;
use crate::ledger::Query;
use crate::ledger::keys::{LogKeys, decode_rotations};

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

    /// Its checkpoints of sizes `old` and `new` (0: its latest) and a
    /// consistency proof from the one to the other
    /// (`Ledger.ProveConsistency`).
    fn prove_consistency(&self, old: u64, new: u64) -> PeerFuture<'_, ConsistencyAnswer>;

    // Ledger reads: what an auditor asks of a node
    // (`dataspace.v1.Ledger`). `crate::audit::Auditor` verifies every
    // answer against the node's certificate key before using it.

    /// Its latest checkpoint, verifier key, key history and the
    /// cosignatures witnesses gave it (`Ledger.GetCheckpoint`).
    fn checkpoint(&self) -> PeerFuture<'_, LatestCheckpoint>;

    /// One page of its entries matching `query`, each with an inclusion
    /// proof (`Ledger.QueryEntries`).
    fn query_entries(&self, query: EntryQuery) -> PeerFuture<'_, EntryPage>;

    /// Its entry `index` with an inclusion proof in its checkpoint of
    /// `size` entries (0: its latest) (`Ledger.ProveInclusion`).
    fn prove_inclusion(&self, index: u64, size: u64) -> PeerFuture<'_, InclusionAnswer>;

    /// The signed objects it holds about grant `grant`, and its
    /// certificate (`Ledger.GetEvidence`; auditors only).
    fn evidence<'a>(&'a self, grant: &'a str) -> PeerFuture<'a, GrantEvidence>;

    /// One page of its catalog (`Catalog.ListDatasets`): dataset ids and
    /// their signed manifests, not yet verified
    /// ([`crate::dataset::read_catalog`] verifies them).
    fn catalog_page(&self, query: CatalogQuery) -> PeerFuture<'_, CatalogPage> {
        let _ = query;
        unanswered("Catalog.ListDatasets")
    }
}

/// The key history of `peer`'s log, read from it and checked: every
/// rotation signed by the key it retires and the key it introduces, the
/// chain ending at the key of the peer's certificate. Old manifests and
/// checkpoints of that node verify under it. (An auditor also proves each
/// rotation is in the log: [`crate::audit::Auditor::keys`].) A history that
/// does not verify is `DataLoss`.
pub async fn log_keys(peer: &dyn Peer) -> Result<LogKeys, PeerError> {
    decode_rotations(&peer.key_rotations().await?)
        .and_then(|rotations| LogKeys::of_node(&rotations, peer.identity()))
        .map_err(|e| {
            PeerError::new(
                Code::DataLoss,
                format!("the node's key history does NOT verify: {e}"),
            )
        })
}

/// The answer of a peer that does not serve a call: `Unimplemented`, as a
/// gRPC server answers a method it does not have (for peers that stand in
/// for one side only, such as in-memory test peers).
pub fn unanswered<'a, T: Send + 'a>(call: &'static str) -> PeerFuture<'a, T> {
    Box::pin(async move {
        Err(PeerError::new(
            Code::Unimplemented,
            format!("this peer does not answer {call}"),
        ))
    })
}

/// Opens connections to other nodes by address (`HOST:PORT`).
pub trait Dialer: Send + Sync {
    /// Connects, with this node's certificate, and verifies the other's.
    fn dial<'a>(&'a self, addr: &'a str) -> PeerFuture<'a, Box<dyn Peer>>;

    /// Connects for one of the `streams` parallel streams of a transfer:
    /// a dialer with flow-control windows shares them out, so that a
    /// transfer over many streams buffers about as much as over one.
    fn dial_stream<'a>(&'a self, addr: &'a str, streams: usize) -> PeerFuture<'a, Box<dyn Peer>> {
        let _ = streams;
        self.dial(addr)
    }
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
    /// One past the last chunk wanted (`None`: to the last chunk).
    pub to_chunk: Option<u64>,
}

/// Where a resumed transfer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The publisher's `TransferStarted` entry of the interrupted transfer.
    pub transfer_index: u64,
    /// The first chunk wanted (every one before it is verified).
    pub from_chunk: u64,
    /// Another stream of a transfer being received now (a parallel
    /// range), not a resume after a break.
    pub join: bool,
}

/// One part of a transfer stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchPart {
    /// The first part: what the transfer carries.
    Header(FetchHeader),
    /// The next chunk's bytes.
    Chunk(bytes::Bytes),
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
    /// One past the last chunk the stream carries (0: a publisher before
    /// ranges, which sends to the end).
    pub end_chunk: u64,
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
    /// The checkpoint of the larger size (a signed note): the one asked
    /// for, or the latest when asked for size 0.
    pub new_checkpoint: Vec<u8>,
    /// The proof.
    pub proof: Vec<Vec<u8>>,
}

// Ledger reads: the answers to an auditor's questions
// (`dataspace.v1.Ledger`), as the node sent them.

/// A node's latest checkpoint and what verifies it
/// (`Ledger.GetCheckpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatestCheckpoint {
    /// The latest checkpoint (a signed note).
    pub checkpoint: Vec<u8>,
    /// The verifier key (C2SP vkey) the node publishes for its
    /// checkpoints: the log's origin as key name, its current key. It must
    /// be the one its certificate and key history imply.
    pub vkey: String,
    /// The log's key history: every `KeyRotated` entry (canonical bytes),
    /// in index order; empty while the key that started the log still
    /// signs.
    pub key_rotations: Vec<Vec<u8>>,
    /// The latest cosignature each witness gave the log: the cosigned
    /// checkpoint (the log's signature lines and one witness line).
    pub cosigned_checkpoints: Vec<Vec<u8>>,
}

/// One page of a query over a node's entries (`Ledger.QueryEntries`).
#[derive(Clone, Debug, Default)]
pub struct EntryQuery {
    /// The filters; every one given must match.
    pub filter: Query,
    /// Most entries to return (the node caps it at 1000; 0: its default,
    /// 100).
    pub limit: u32,
    /// The previous page's `next_page_token`; empty for the first page.
    pub page_token: Vec<u8>,
    /// The tree size the whole pagination runs against (0: the latest);
    /// the first page's checkpoint size keeps the view stable.
    pub tree_size: u64,
}

impl From<Query> for EntryQuery {
    /// The first page of `filter`, of the node's default size, against
    /// its latest checkpoint.
    fn from(filter: Query) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }
}

/// An entry and its inclusion proof, as a node served them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvenEntry {
    /// The entry's index.
    pub index: u64,
    /// The entry's canonical bytes (its leaf hash is computed over them).
    pub entry: Vec<u8>,
    /// Its RFC 6962 audit path in the answer's checkpoint, innermost
    /// sibling first.
    pub inclusion_proof: Vec<Vec<u8>>,
}

/// One page of entries matching a query (`Ledger.QueryEntries`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryPage {
    /// The checkpoint every proof in the page is against (a signed note).
    pub checkpoint: Vec<u8>,
    /// The matching entries of the page.
    pub entries: Vec<ProvenEntry>,
    /// The token for the next page; empty when there is nothing more.
    pub next_page_token: Vec<u8>,
}

/// An entry proven in a checkpoint (`Ledger.ProveInclusion`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InclusionAnswer {
    /// The checkpoint of the size asked for (a signed note).
    pub checkpoint: Vec<u8>,
    /// The entry and its proof; `None` if the node sent none (which an
    /// auditor refuses).
    pub entry: Option<ProvenEntry>,
}

/// The signed objects a node holds about one grant, for an evidence
/// bundle (`Ledger.GetEvidence`); the entries and proofs come from
/// [`Peer::query_entries`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantEvidence {
    /// The node's certificate (PEM), issued by the data space's CA.
    pub certificate_pem: Vec<u8>,
    /// The grant, issued or held by the node (DSSE JSON).
    pub grant: String,
    /// The manifest the grant names, published or received by the node
    /// (DSSE JSON); empty when not held there.
    pub manifest: String,
    /// The consumer-signed receipts for the grant the node keeps: signed
    /// there (consumer side) or taken and recorded there (publisher side),
    /// as DSSE JSON in transfer order; empty when it holds none.
    pub receipts: Vec<String>,
}

/// One page of a catalog listing (`Catalog.ListDatasets`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogQuery {
    /// Text to find in titles or descriptions; empty: any.
    pub text: String,
    /// A classification; empty: any.
    pub classification: String,
    /// The previous page's `next_page_token`; empty for the first page.
    pub page_token: String,
}

/// One page of a node's catalog, as the node sent it.
#[derive(Clone, Debug, Default)]
pub struct CatalogPage {
    /// Dataset ids, each with the signed manifest the node says is its.
    pub datasets: Vec<(String, Envelope)>,
    /// The token for the next page; empty when there is nothing more.
    pub next_page_token: String,
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
    /// For a call that broke off on this side without an answer (a reset
    /// connection, a TLS alert): the deepest cause the transport reported,
    /// which `message` (e.g. "transport error") does not say; `None` for an
    /// answer.
    pub cause: Option<String>,
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
            cause: None,
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
