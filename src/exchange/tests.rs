//! The exchange's use cases, both sides at once, over an in-memory peer:
//! a consumer asks a publisher for access and fetches through the fetch
//! states ([`super::fetch`]) while the publisher decides and serves
//! ([`super::access`], [`super::serve`]), with no network between them.
//! The peer can damage or cut the stream, to show what the consumer
//! refuses and how it resumes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use super::Publisher;
use super::access::{self, Ask};
use super::book::GrantBook;
use super::fetch::{self, Consumer, FetchError, FetchOrder, Progress};
use super::serve::ServeError;
use crate::clock::Clock;
use crate::dataset::DatasetId;
use crate::dataset::blob::{BlobStore, LocalBlobStore};
use crate::dataset::catalog::{Catalog, PublishRequest};
use crate::dataset::publish::Publishing;
use crate::digest::sha256;
use crate::envelope::Envelope;
use crate::identity::PeerIdentity;
use crate::ledger::Ledger;
use crate::ledger::entry::{Entry, EntryKind};
use crate::peer::{
    AccessAsk, CheckpointAnswer, CheckpointOffer, Code, ConsistencyAnswer, Dialer, EntryPage,
    EntryQuery, FetchAsk, FetchPart, FetchStream, GrantEvidence, InclusionAnswer, LatestCheckpoint,
    Peer, PeerError, PeerFuture, ReceiptTaken, Resume, unanswered,
};
use crate::policy::Policy;
use crate::runtime::metrics::Metrics;
use crate::testing::TestNode;

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["research"]
roles = ["consumer"]
max_fetches = 2
"#;

/// One node's exchange state in a temporary dir.
struct Node {
    dir: tempfile::TempDir,
    id: PeerIdentity,
    key: SigningKey,
    ledger: Ledger,
    grants: Arc<GrantBook>,
    catalog: Catalog,
    blobs: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
    clock: Clock,
    opening: tokio::sync::Mutex<()>,
    sessions: super::serve::Sessions,
    packs: Arc<crate::dataset::pack::PackStore>,
    fetching: Mutex<HashSet<String>>,
    limits: super::limits::PeerLimits,
    seen: crate::dataset::seen::SeenVersions,
}

impl Node {
    fn new(seed: u8, name: &str, roles: &str) -> Self {
        let TestNode {
            dir,
            key,
            id,
            ledger,
        } = TestNode::new(seed, name, roles);
        let public_key = id.public_key;
        let clock = Clock::default();
        let (grants, _) = GrantBook::open(
            &dir.path().join("grants"),
            public_key,
            ledger.clone(),
            clock.clone(),
        )
        .expect("grants");
        let (catalog, _) =
            Catalog::open(&dir.path().join("datasets"), public_key, &ledger).expect("catalog");
        let blobs: Arc<dyn BlobStore> =
            Arc::new(LocalBlobStore::open(&dir.path().join("blobs")).expect("blobs"));
        let packs = Arc::new(
            crate::dataset::pack::PackStore::open(&dir.path().join("blobs/packs")).expect("packs"),
        );
        let limits = super::limits::PeerLimits::new(
            crate::runtime::config::LimitsConfig::default(),
            id.node_id.clone(),
        );
        let seen = crate::dataset::seen::SeenVersions::new(dir.path().join("seen-versions.json"));
        Self {
            seen,
            dir,
            id,
            key,
            ledger,
            grants: Arc::new(grants),
            catalog,
            blobs,
            metrics: Arc::new(Metrics::new()),
            clock,
            opening: tokio::sync::Mutex::new(()),
            sessions: super::serve::Sessions::default(),
            packs,
            fetching: Mutex::default(),
            limits,
        }
    }

    fn publisher(&self) -> Publisher<'_> {
        Publisher {
            identity: &self.id,
            clock: &self.clock,
            ledger: &self.ledger,
            grants: &self.grants,
            catalog: &self.catalog,
            blobs: &self.blobs,
            key: &self.key,
            metrics: &self.metrics,
            opening: &self.opening,
            sessions: &self.sessions,
            limits: &self.limits,
        }
    }

    fn consumer<'a>(&'a self, dialer: &'a dyn Dialer) -> Consumer<'a> {
        Consumer {
            identity: &self.id,
            ledger: &self.ledger,
            grants: &self.grants,
            packs: &self.packs,
            key: &self.key,
            fetching: &self.fetching,
            dialer,
            seen: &self.seen,
        }
    }

    /// Publishes `content` in pieces of 1000 bytes, chunked by 64 KiB.
    async fn publish(&self, content: &[u8]) -> DatasetId {
        let one = tokio::sync::Mutex::new(());
        let publishing = Publishing {
            catalog: &self.catalog,
            blobs: &self.blobs,
            grants: self.grants.as_ref(),
            ledger: &self.ledger,
            key: &self.key,
            one_at_a_time: &one,
        };
        let request = PublishRequest {
            title: "Road sensors".into(),
            description: String::new(),
            media_type: "text/csv".into(),
            policy: Policy::from_toml(POLICY).expect("policy"),
            derived_from: Vec::new(),
            supersedes: None,
            chunk_size: 64 << 10,
        };
        let pieces: Vec<_> = content.chunks(1000).map(|p| Ok(p.to_vec())).collect();
        let (dataset, _) = publishing
            .publish(request, content.len() as u64, tokio_stream::iter(pieces))
            .await
            .expect("publish");
        dataset.id.clone()
    }

    fn kinds(&self) -> Vec<EntryKind> {
        self.ledger
            .entries(0, 1000)
            .expect("entries")
            .iter()
            .map(|(_, raw)| Entry::decode(raw).expect("entry").draft.kind)
            .collect()
    }
}

/// What the in-memory connection does to a transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Flip a byte of chunk `k`, whichever stream carries it.
    Flip(usize),
    /// Break off the stream about to carry chunk `k`, once.
    CutAfter(usize),
    /// Refuse the first join, as a publisher whose session of the
    /// transfer ended does.
    RefuseJoinOnce,
    /// Act as a publisher before ranges and joins: send to the end
    /// whatever was asked, take a join as a resume, say no end.
    BeforeRanges,
}

/// The publisher, reached in memory by the consumer: what a mutual-TLS
/// connection between the two would carry.
struct Loopback {
    publisher: Arc<Node>,
    caller: PeerIdentity,
    fault: Fault,
    transfers: Arc<AtomicUsize>,
    /// Whether [`Fault::CutAfter`] has cut.
    cut: Arc<AtomicBool>,
    /// Chunks carried to the consumer.
    carried: Arc<AtomicUsize>,
}

fn refusal(e: &ServeError) -> PeerError {
    let code = match e {
        ServeError::BadRequest(_) => Code::InvalidArgument,
        ServeError::NotFound(_) => Code::NotFound,
        ServeError::Refused(_) => Code::PermissionDenied,
        ServeError::ConsumerCheckpoint(_) => Code::InvalidArgument,
        _ => Code::Internal,
    };
    PeerError::new(code, e.to_string())
}

impl Peer for Loopback {
    fn identity(&self) -> &PeerIdentity {
        &self.publisher.id
    }

    fn request_access(&self, request: AccessAsk) -> PeerFuture<'_, Envelope> {
        Box::pin(async move {
            let ask = Ask::try_from(&request)
                .map_err(|e| PeerError::new(Code::InvalidArgument, e.to_string()))?;
            match self.publisher.publisher().decide(&self.caller, ask).await {
                Ok(access::Decided::Granted { grant, .. }) => Ok(grant.envelope().clone()),
                Ok(access::Decided::Denied { reasons }) => Err(PeerError::new(
                    Code::PermissionDenied,
                    format!("access denied: {}", reasons.join("; ")),
                )),
                Err(e) => Err(PeerError::new(Code::Internal, e.to_string())),
            }
        })
    }

    fn fetch(&self, mut request: FetchAsk) -> PeerFuture<'_, FetchStream> {
        Box::pin(async move {
            let joining = request.resume.is_some_and(|r| r.join);
            if self.fault == Fault::RefuseJoinOnce
                && joining
                && !self.cut.swap(true, Ordering::SeqCst)
            {
                return Err(PeerError::new(
                    Code::InvalidArgument,
                    "transfer entry 2 has no live session here to join; resume it instead",
                ));
            }
            if self.fault == Fault::BeforeRanges {
                request.to_chunk = None;
                if let Some(r) = &mut request.resume {
                    r.join = false;
                }
            }
            let mut parts = self
                .publisher
                .publisher()
                .serve(&self.caller, request)
                .await
                .map_err(|e| refusal(&e))?;
            self.transfers.fetch_add(1, Ordering::SeqCst);
            let (fault, cut, carried) = (self.fault, self.cut.clone(), self.carried.clone());
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                let mut chunk = 0;
                while let Some(part) = parts.recv().await {
                    let part = match part {
                        Ok(FetchPart::Header(mut h)) => {
                            chunk = h.first_chunk as usize;
                            if fault == Fault::BeforeRanges {
                                h.end_chunk = 0;
                            }
                            Ok(FetchPart::Header(h))
                        }
                        Ok(FetchPart::Chunk(mut bytes)) => {
                            if fault == Fault::CutAfter(chunk) && !cut.swap(true, Ordering::SeqCst)
                            {
                                let cut = PeerError::new(Code::Unavailable, "connection reset");
                                let _ = tx.send(Err(cut)).await;
                                return;
                            }
                            if fault == Fault::Flip(chunk) {
                                let mut flipped = bytes.to_vec();
                                flipped[0] ^= 1;
                                bytes = flipped.into();
                            }
                            chunk += 1;
                            Ok(FetchPart::Chunk(bytes))
                        }
                        Err(e) => Err(refusal(&e)),
                    };
                    let is_chunk = matches!(part, Ok(FetchPart::Chunk(_)));
                    if tx.send(part).await.is_err() {
                        return;
                    }
                    // Counted once handed to a consumer still reading.
                    if is_chunk {
                        carried.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as FetchStream)
        })
    }

    fn submit_receipt(&self, receipt: &Envelope) -> PeerFuture<'_, ReceiptTaken> {
        let receipt = receipt.clone();
        Box::pin(async move {
            self.publisher
                .publisher()
                .take_receipt(&self.caller, receipt)
                .await
                .map_err(|e| refusal(&e))
        })
    }

    fn key_rotations(&self) -> PeerFuture<'_, Vec<Vec<u8>>> {
        Box::pin(async move { Ok(self.publisher.ledger.rotation_entries().expect("rotations")) })
    }

    fn exchange_checkpoints(&self, _: CheckpointOffer) -> PeerFuture<'_, CheckpointAnswer> {
        unanswered("ExchangeCheckpoints")
    }

    fn prove_consistency(&self, _: u64, _: u64) -> PeerFuture<'_, ConsistencyAnswer> {
        unanswered("ProveConsistency")
    }

    fn checkpoint(&self) -> PeerFuture<'_, LatestCheckpoint> {
        unanswered("GetCheckpoint")
    }

    fn query_entries(&self, _: EntryQuery) -> PeerFuture<'_, EntryPage> {
        unanswered("QueryEntries")
    }

    fn prove_inclusion(&self, _: u64, _: u64) -> PeerFuture<'_, InclusionAnswer> {
        unanswered("ProveInclusion")
    }

    fn evidence<'a>(&'a self, _: &'a str) -> PeerFuture<'a, GrantEvidence> {
        unanswered("GetEvidence")
    }
}

/// Dials the publisher in memory, whatever the address.
struct LoopbackDialer {
    publisher: Arc<Node>,
    caller: PeerIdentity,
    fault: Fault,
    transfers: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    carried: Arc<AtomicUsize>,
}

impl LoopbackDialer {
    fn new(publisher: &Arc<Node>, consumer: &Node, fault: Fault) -> Self {
        Self {
            publisher: publisher.clone(),
            caller: consumer.id.clone(),
            fault,
            transfers: Arc::default(),
            cut: Arc::default(),
            carried: Arc::default(),
        }
    }

    fn peer(&self) -> Loopback {
        Loopback {
            publisher: self.publisher.clone(),
            caller: self.caller.clone(),
            fault: self.fault,
            transfers: self.transfers.clone(),
            cut: self.cut.clone(),
            carried: self.carried.clone(),
        }
    }
}

impl Dialer for LoopbackDialer {
    fn dial<'a>(&'a self, _addr: &'a str) -> PeerFuture<'a, Box<dyn Peer>> {
        Box::pin(async move { Ok(Box::new(self.peer()) as Box<dyn Peer>) })
    }
}

/// A publisher with a 200 KiB dataset (4 chunks), a consumer holding a
/// grant for it, and the dialer between them.
async fn granted(
    fault: Fault,
) -> (
    Arc<Node>,
    Node,
    LoopbackDialer,
    Vec<u8>,
    super::grant::GrantId,
) {
    granted_sized(fault, 200 * 1024).await
}

/// [`granted`], with a dataset of `size` bytes (64 KiB chunks).
async fn granted_sized(
    fault: Fault,
    size: usize,
) -> (
    Arc<Node>,
    Node,
    LoopbackDialer,
    Vec<u8>,
    super::grant::GrantId,
) {
    let publisher = Arc::new(Node::new(1, "city-transport", "publisher"));
    let consumer = Node::new(2, "acme", "consumer");
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let dataset = publisher.publish(&content).await;
    let dialer = LoopbackDialer::new(&publisher, &consumer, fault);
    let ask = Ask::try_from(&AccessAsk {
        dataset_id: dataset.to_string(),
        purpose: "research".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    })
    .expect("ask");
    let (held, _) = access::request(&consumer.grants, &consumer.id.node_id, &dialer.peer(), &ask)
        .await
        .expect("granted");
    let grant = held.grant.value().id.clone();
    (publisher, consumer, dialer, content, grant)
}

fn order(consumer: &Node, grant: &super::grant::GrantId, retries: u32) -> FetchOrder {
    FetchOrder {
        grant: grant.clone(),
        peer: "publisher.test:443".into(),
        out: consumer.dir.path().join("out.csv").into(),
        force: false,
        retries,
        streams: 1,
        verify_sha256: false,
    }
}

/// Runs `order` as `consumer`'s fetch through `dialer`.
async fn run(
    consumer: &Node,
    dialer: &LoopbackDialer,
    order: FetchOrder,
) -> Result<fetch::Fetched, FetchError> {
    let (progress, _events) = watch();
    fetch::fetch(consumer.consumer(dialer), order, progress).await
}

fn watch() -> (Arc<Progress>, mpsc::Receiver<fetch::FetchProgress>) {
    let (tx, rx) = mpsc::channel(64);
    (Arc::new(Progress::new(tx)), rx)
}

#[tokio::test]
async fn a_granted_dataset_is_fetched_verified_and_receipted_on_both_sides() {
    let (publisher, consumer, dialer, content, grant) = granted(Fault::None).await;
    let done = run(&consumer, &dialer, order(&consumer, &grant, 0))
        .await
        .expect("fetched");
    let out: PathBuf = consumer.dir.path().join("out.csv");
    assert_eq!(std::fs::read(&out).expect("output"), content);
    assert_eq!(done.content_sha256, sha256(&content));
    assert_eq!(done.bytes, content.len() as u64);
    assert_eq!(
        publisher.kinds(),
        [
            EntryKind::DatasetPublished,
            EntryKind::AccessGranted,
            EntryKind::TransferStarted,
            EntryKind::ReceiptRecorded
        ]
    );
    assert_eq!(
        consumer.kinds(),
        [
            EntryKind::GrantReceived,
            EntryKind::TransferCompleted,
            EntryKind::ReceiptRecorded,
            EntryKind::PeerCheckpointSeen
        ]
    );
    assert_eq!(done.publisher_ledger_index, 3);
    // Both sides keep the consumer-signed receipt.
    let signed = consumer.grants.objects(&grant).expect("objects").receipts;
    let taken = publisher.grants.objects(&grant).expect("objects").taken;
    assert_eq!(signed.len(), 1);
    assert_eq!(taken, signed);
    // The same receipt again gets the same answer, and nothing new.
    let (kept, resent) = fetch::resend_receipts(&consumer.consumer(&dialer), &grant, "p")
        .await
        .expect("resend");
    assert_eq!((kept, resent.len()), (1, 0));
}

#[tokio::test]
async fn a_damaged_chunk_is_refused_by_name_and_nothing_is_written() {
    let (_publisher, consumer, dialer, _content, grant) = granted(Fault::Flip(2)).await;
    let err = run(&consumer, &dialer, order(&consumer, &grant, 3))
        .await
        .expect_err("a damaged chunk");
    assert!(matches!(err, FetchError::BadAnswer(_)), "{err}");
    assert!(err.to_string().contains("chunk 2 does not match"), "{err}");
    assert!(!err.is_broken(), "not retried");
    assert!(!consumer.dir.path().join("out.csv").exists());
    assert!(!consumer.kinds().contains(&EntryKind::TransferCompleted));
}

#[tokio::test]
async fn a_cut_transfer_resumes_from_the_first_missing_chunk_without_a_new_fetch() {
    let (publisher, consumer, dialer, content, grant) = granted(Fault::CutAfter(2)).await;
    // No retries: the fetch stops, keeps what it verified, and says how
    // to resume.
    let err = run(&consumer, &dialer, order(&consumer, &grant, 0))
        .await
        .expect_err("cut");
    assert!(
        matches!(
            err,
            FetchError::Interrupted {
                received: 2,
                total: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("run the same fetch again to resume"),
        "{err}"
    );
    // The same fetch again resumes from chunk 2: recorded, not counted.
    let done = run(&consumer, &dialer, order(&consumer, &grant, 0))
        .await
        .expect("resumed");
    assert_eq!(done.resumed_chunks, 2);
    assert_eq!(
        std::fs::read(consumer.dir.path().join("out.csv")).expect("out"),
        content
    );
    let kinds = publisher.kinds();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EntryKind::TransferStarted)
            .count(),
        1
    );
    assert!(kinds.contains(&EntryKind::TransferResumed));
}

/// 1 MiB: 16 chunks of 64 KiB.
const SIXTEEN_CHUNKS: usize = 1 << 20;

fn streams(order: FetchOrder, streams: usize) -> FetchOrder {
    FetchOrder { streams, ..order }
}

fn count(kinds: &[EntryKind], kind: EntryKind) -> usize {
    kinds.iter().filter(|k| **k == kind).count()
}

#[tokio::test]
async fn parallel_streams_share_the_ranges_of_one_recorded_transfer_and_write_once() {
    use std::os::unix::fs::MetadataExt;
    let (publisher, consumer, dialer, content, grant) =
        granted_sized(Fault::None, SIXTEEN_CHUNKS).await;
    let done = run(&consumer, &dialer, streams(order(&consumer, &grant, 0), 4))
        .await
        .expect("fetched");
    let out = consumer.dir.path().join("out.csv");
    assert_eq!(std::fs::read(&out).expect("output"), content);
    assert_eq!(done.bytes, content.len() as u64);
    // Every chunk carried once, over more than one stream.
    assert_eq!(dialer.carried.load(Ordering::SeqCst), 16);
    assert!(dialer.transfers.load(Ordering::SeqCst) >= 4);
    // One fetch, one transfer, one receipt: joins are not recorded.
    assert_eq!(
        publisher.kinds(),
        [
            EntryKind::DatasetPublished,
            EntryKind::AccessGranted,
            EntryKind::TransferStarted,
            EntryKind::ReceiptRecorded
        ]
    );
    // The receipt attests the chunk list the consumer checked every chunk
    // against; the whole content was not hashed again.
    let (_, signed) = consumer
        .grants
        .objects(&grant)
        .expect("objects")
        .receipts
        .pop()
        .expect("receipt");
    let receipt = super::receipt::Receipt::decode(&signed.payload).expect("receipt");
    assert_eq!(
        receipt.chunk_list_sha256,
        Some(crate::dataset::chunk_list_hash(
            &content.chunks(64 << 10).map(sha256).collect::<Vec<_>>()
        ))
    );
    assert!(!receipt.content_verified);
    // One write per byte: the output is the node's copy.
    let pack = consumer
        .packs
        .path(&receipt.chunk_list_sha256.expect("chunk list"));
    let (o, p) = (
        std::fs::metadata(&out).expect("out"),
        std::fs::metadata(&pack).expect("pack"),
    );
    assert_eq!((o.ino(), o.nlink()), (p.ino(), 2));
}

#[tokio::test]
async fn a_tampered_chunk_in_any_range_aborts_the_whole_transfer() {
    let (publisher, consumer, dialer, _content, grant) =
        granted_sized(Fault::Flip(13), SIXTEEN_CHUNKS).await;
    let err = run(&consumer, &dialer, streams(order(&consumer, &grant, 3), 4))
        .await
        .expect_err("a tampered chunk");
    assert!(err.to_string().contains("chunk 13 does not match"), "{err}");
    assert!(!err.is_broken(), "not retried");
    assert!(!consumer.dir.path().join("out.csv").exists());
    assert!(!consumer.kinds().contains(&EntryKind::TransferCompleted));
    assert_eq!(count(&publisher.kinds(), EntryKind::TransferResumed), 0);
}

#[tokio::test]
async fn a_cut_with_parallel_streams_resumes_each_range_from_its_first_missing_chunk() {
    let (publisher, consumer, dialer, content, grant) =
        granted_sized(Fault::CutAfter(10), SIXTEEN_CHUNKS).await;
    let err = run(&consumer, &dialer, streams(order(&consumer, &grant, 0), 4))
        .await
        .expect_err("cut");
    let FetchError::Interrupted {
        received, total, ..
    } = err
    else {
        panic!("{err}");
    };
    assert_eq!(total, 16);
    assert!(received < 16, "{received}");
    // The next fetch asks only for what is missing, range by range, and
    // takes the rest from the transfer's pack.
    let before = dialer.carried.load(Ordering::SeqCst);
    let done = run(&consumer, &dialer, streams(order(&consumer, &grant, 0), 4))
        .await
        .expect("resumed");
    assert_eq!(done.resumed_chunks, received as u64);
    assert_eq!(
        dialer.carried.load(Ordering::SeqCst) - before,
        16 - received
    );
    assert_eq!(
        std::fs::read(consumer.dir.path().join("out.csv")).expect("out"),
        content
    );
    let kinds = publisher.kinds();
    assert_eq!(count(&kinds, EntryKind::TransferStarted), 1);
    assert_eq!(count(&kinds, EntryKind::TransferResumed), 1);
    assert_eq!(count(&kinds, EntryKind::ReceiptRecorded), 1);
}

/// The fetch put the content in place after one reconnect, and the
/// publisher recorded one transfer, resumed once.
fn resumed_once(publisher: &Node, consumer: &Node, content: &[u8], done: &fetch::Fetched) {
    assert_eq!(done.reconnects, 1);
    assert_eq!(
        std::fs::read(consumer.dir.path().join("out.csv")).expect("out"),
        content
    );
    let kinds = publisher.kinds();
    assert_eq!(count(&kinds, EntryKind::TransferStarted), 1);
    assert_eq!(count(&kinds, EntryKind::TransferResumed), 1);
}

#[tokio::test]
async fn a_cut_within_the_call_is_resumed_over_the_streams() {
    let (publisher, consumer, dialer, content, grant) =
        granted_sized(Fault::CutAfter(5), SIXTEEN_CHUNKS).await;
    let done = run(
        &consumer,
        &dialer,
        FetchOrder {
            verify_sha256: true,
            ..streams(order(&consumer, &grant, 1), 3)
        },
    )
    .await
    .expect("fetched after one reconnect");
    resumed_once(&publisher, &consumer, &content, &done);
}

#[tokio::test]
async fn a_refused_join_resumes_the_transfer_and_keeps_its_state() {
    let (publisher, consumer, dialer, content, grant) =
        granted_sized(Fault::RefuseJoinOnce, SIXTEEN_CHUNKS).await;
    let done = run(&consumer, &dialer, streams(order(&consumer, &grant, 2), 4))
        .await
        .expect("fetched after a resume");
    resumed_once(&publisher, &consumer, &content, &done);
}

#[tokio::test]
async fn a_publisher_before_ranges_is_fetched_over_one_stream() {
    let (publisher, consumer, dialer, content, grant) =
        granted_sized(Fault::BeforeRanges, SIXTEEN_CHUNKS).await;
    let done = run(&consumer, &dialer, streams(order(&consumer, &grant, 0), 4))
        .await
        .expect("fetched");
    assert_eq!(done.bytes, content.len() as u64);
    // One call, every chunk once, nothing recorded as a resume.
    assert_eq!(dialer.transfers.load(Ordering::SeqCst), 1);
    assert_eq!(dialer.carried.load(Ordering::SeqCst), 16);
    assert_eq!(count(&publisher.kinds(), EntryKind::TransferResumed), 0);
}

/// Serves `ask` as `consumer` and reads the stream to its end: the
/// header's first chunk, the chunks, and the error that ended it, if any.
async fn serve_all(
    publisher: &Node,
    consumer: &Node,
    ask: FetchAsk,
) -> Result<(u64, usize, Option<ServeError>), ServeError> {
    let mut parts = publisher.publisher().serve(&consumer.id, ask).await?;
    let (mut first, mut chunks) = (None, 0);
    while let Some(part) = parts.recv().await {
        match part {
            Ok(FetchPart::Header(h)) => first = Some(h.first_chunk),
            Ok(FetchPart::Chunk(_)) => chunks += 1,
            Err(e) => return Ok((first.unwrap_or(0), chunks, Some(e))),
        }
    }
    Ok((first.unwrap_or(0), chunks, None))
}

#[tokio::test]
async fn a_join_needs_a_live_session_of_its_grant_and_stays_within_its_budget() {
    let (publisher, consumer, _dialer, _content, grant) =
        granted_sized(Fault::None, SIXTEEN_CHUNKS).await;
    let join = |transfer_index, from_chunk, to_chunk| FetchAsk {
        grant_id: grant.to_string(),
        resume: Some(Resume {
            transfer_index,
            from_chunk,
            join: true,
        }),
        to_chunk,
    };
    // Nothing to join yet.
    let err = serve_all(&publisher, &consumer, join(1, 0, None))
        .await
        .expect_err("no session");
    assert!(err.to_string().contains("no live session"), "{err}");
    let t = started(&publisher, &consumer, &grant).await;
    let before = publisher.kinds().len();
    // A range of it: exactly those chunks, nothing recorded.
    let (first, chunks, end) = serve_all(&publisher, &consumer, join(t, 2, Some(5)))
        .await
        .expect("joined");
    assert_eq!((first, chunks), (2, 3));
    assert!(end.is_none());
    assert_eq!(publisher.kinds().len(), before);
    // A range past the end stops at the end; an empty one is refused.
    let (_, chunks, _) = serve_all(&publisher, &consumer, join(t, 14, Some(99)))
        .await
        .expect("joined");
    assert_eq!(chunks, 2);
    let err = serve_all(&publisher, &consumer, join(t, 16, None))
        .await
        .expect_err("empty");
    assert!(err.to_string().contains("the range is empty"), "{err}");
    // A resume the wrong way round is refused before it is recorded.
    let backwards = FetchAsk {
        resume: Some(Resume {
            transfer_index: t,
            from_chunk: 5,
            join: false,
        }),
        to_chunk: Some(3),
        ..join(t, 0, None)
    };
    let err = serve_all(&publisher, &consumer, backwards)
        .await
        .expect_err("backwards");
    assert!(err.to_string().contains("the range is empty"), "{err}");
    assert_eq!(publisher.kinds().len(), before);
    // The session sends twice the dataset's chunks at most.
    let (_, _, _) = serve_all(&publisher, &consumer, join(t, 0, None))
        .await
        .expect("joined");
    let (_, chunks, end) = serve_all(&publisher, &consumer, join(t, 0, None))
        .await
        .expect("joined");
    assert!(chunks < 16, "{chunks}");
    let end = end.expect("refused mid-stream").to_string();
    assert!(end.contains("twice the dataset's chunks"), "{end}");
    // Nor can a transfer that has no session here.
    let err = serve_all(&publisher, &consumer, join(t + 100, 0, None))
        .await
        .expect_err("not a session");
    assert!(err.to_string().contains("no live session"), "{err}");
}

#[tokio::test]
async fn a_second_fetch_of_one_grant_waits_its_turn_and_a_bad_output_costs_nothing() {
    let (publisher, consumer, dialer, _content, grant) = granted(Fault::None).await;
    // A fetch of this grant is running: another is refused at once.
    consumer
        .fetching
        .lock()
        .expect("lock")
        .insert(grant.to_string());
    let err = run(&consumer, &dialer, order(&consumer, &grant, 0))
        .await
        .expect_err("busy");
    assert!(err.to_string().contains("already running"), "{err}");
    consumer.fetching.lock().expect("lock").clear();
    // An output in a directory that does not exist: refused before the
    // publisher is asked, so no fetch is counted.
    let mut bad = order(&consumer, &grant, 0);
    bad.out = consumer.dir.path().join("no/such/dir/out.csv").into();
    let (progress, _events) = watch();
    let err = fetch::fetch(consumer.consumer(&dialer), bad, progress)
        .await
        .expect_err("bad output");
    assert!(matches!(err, FetchError::Local(_)), "{err}");
    assert!(!publisher.kinds().contains(&EntryKind::TransferStarted));
}

#[tokio::test]
async fn requests_the_policy_denies_are_recorded_with_their_reasons() {
    let publisher = Arc::new(Node::new(1, "city-transport", "publisher"));
    let consumer = Node::new(2, "acme", "consumer");
    let dataset = publisher.publish(b"a,b\n1,2\n").await;
    let dialer = LoopbackDialer::new(&publisher, &consumer, Fault::None);
    let ask = Ask::try_from(&AccessAsk {
        dataset_id: dataset.to_string(),
        purpose: "marketing".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    })
    .expect("ask");
    let err = access::request(&consumer.grants, &consumer.id.node_id, &dialer.peer(), &ask)
        .await
        .expect_err("denied");
    assert!(
        err.to_string()
            .contains("purpose `marketing` is not in [research]"),
        "{err}"
    );
    assert!(publisher.kinds().contains(&EntryKind::AccessDenied));
    assert!(consumer.grants.held().expect("held").is_empty());
    // A dataset the publisher does not have is not found.
    let mut missing = ask.clone();
    missing.dataset = DatasetId::of_payload(b"nothing");
    let err = publisher
        .publisher()
        .decide(&consumer.id, missing)
        .await
        .expect_err("missing");
    assert!(err.to_string().contains("visible to you"), "{err}");
}

/// Opens a transfer of `grant` as `consumer` (the publisher records
/// `TransferStarted`) and returns its index; the stream is dropped.
async fn started(publisher: &Node, consumer: &Node, grant: &super::grant::GrantId) -> u64 {
    let mut parts = publisher
        .publisher()
        .serve(
            &consumer.id,
            FetchAsk {
                grant_id: grant.to_string(),
                resume: None,
                to_chunk: None,
            },
        )
        .await
        .expect("served");
    match parts.recv().await {
        Some(Ok(FetchPart::Header(h))) => h.transfer_index,
        _ => panic!("no header"),
    }
}

/// A receipt for transfer `transfer` of `grant` (the whole content),
/// signed by `consumer`, carrying `checkpoint`.
fn receipt(
    consumer: &Node,
    grant: &super::grant::GrantId,
    content: &[u8],
    transfer: u64,
    checkpoint: String,
) -> Envelope {
    let held = consumer.grants.held_grant(grant).expect("held");
    super::receipt::Receipt {
        grant: grant.clone(),
        dataset: held.grant.value().dataset.clone(),
        content_sha256: sha256(content),
        bytes: content.len() as u64,
        received_at_ms: 1,
        consumer_checkpoint: checkpoint,
        consumer: consumer.id.node_id.clone(),
        transfer_index: transfer,
        chunk_list_sha256: None,
        content_verified: false,
    }
    .sign(&consumer.key)
}

fn recorded_receipts(node: &Node) -> usize {
    node.kinds()
        .iter()
        .filter(|k| **k == EntryKind::ReceiptRecorded)
        .count()
}

#[tokio::test]
async fn a_receipt_whose_consumer_checkpoint_does_not_verify_is_refused_and_not_recorded() {
    use crate::ledger::note::{Checkpoint, NoteSigner};
    let (publisher, consumer, _dialer, content, grant) = granted(Fault::None).await;
    let t = started(&publisher, &consumer, &grant).await;
    // The consumer's own log, signed by a stranger's key.
    let origin = crate::ledger::origin_for(&consumer.id.node_id);
    let text = Checkpoint {
        origin: origin.clone(),
        size: 1,
        root: [7; 32],
    }
    .text();
    let stranger = NoteSigner::new(&origin, SigningKey::from_bytes(&[9; 32]))
        .expect("signer")
        .sign(&text);
    // A checkpoint the consumer's key signed, of a log that is no node's.
    let elsewhere = NoteSigner::new("example.com/log", consumer.key.clone())
        .expect("signer")
        .sign(
            &Checkpoint {
                origin: "example.com/log".into(),
                size: 1,
                root: [7; 32],
            }
            .text(),
        );
    // Another node's checkpoint (the publisher's own).
    let others = publisher.ledger.latest().expect("checkpoint").note.clone();
    for (checkpoint, why) in [
        (
            "not a checkpoint".to_owned(),
            "not a C2SP signed checkpoint",
        ),
        (stranger, "not signed by the consumer's certificate key"),
        (others, "not signed by the consumer's certificate key"),
        (elsewhere, "expected a node's log"),
    ] {
        let env = receipt(&consumer, &grant, &content, t, checkpoint);
        let err = publisher
            .publisher()
            .take_receipt(&consumer.id, env)
            .await
            .expect_err("refused");
        assert!(matches!(err, ServeError::ConsumerCheckpoint(_)), "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(refusal(&err).code, Code::InvalidArgument);
    }
    assert_eq!(recorded_receipts(&publisher), 0, "nothing recorded");
    let objects = publisher.grants.objects(&grant).expect("objects");
    assert!(objects.taken.is_empty(), "nothing kept");
}

#[tokio::test]
async fn a_receipt_with_a_good_or_no_consumer_checkpoint_is_kept_by_the_publisher() {
    let (publisher, consumer, _dialer, content, grant) = granted(Fault::None).await;
    let t = started(&publisher, &consumer, &grant).await;
    let own = consumer.ledger.latest().expect("checkpoint").note.clone();
    let env = receipt(&consumer, &grant, &content, t, own);
    let taken = publisher
        .publisher()
        .take_receipt(&consumer.id, env.clone())
        .await
        .expect("taken");
    assert_eq!(recorded_receipts(&publisher), 1);
    let objects = publisher.grants.objects(&grant).expect("objects");
    assert_eq!(objects.taken, [(t, env.clone())]);
    assert!(objects.receipts.is_empty(), "the publisher signed none");
    // Kept under its own name, next to the grant.
    let path = super::book::taken_receipt_path(&publisher.dir.path().join("grants"), &grant, t);
    assert_eq!(std::fs::read_to_string(path).expect("kept"), env.to_json());
    // The same receipt again: the same answer, kept once.
    let again = publisher
        .publisher()
        .take_receipt(&consumer.id, env)
        .await
        .expect("again");
    assert_eq!(again.ledger_index, taken.ledger_index);
    assert_eq!(
        publisher
            .grants
            .objects(&grant)
            .expect("objects")
            .taken
            .len(),
        1
    );

    // A client with no ledger of its own sends an empty checkpoint.
    let t2 = started(&publisher, &consumer, &grant).await;
    let bare = receipt(&consumer, &grant, &content, t2, String::new());
    publisher
        .publisher()
        .take_receipt(&consumer.id, bare.clone())
        .await
        .expect("taken without a checkpoint");
    let taken = publisher.grants.objects(&grant).expect("objects").taken;
    assert_eq!(taken, [(t, taken[0].1.clone()), (t2, bare)]);
}
