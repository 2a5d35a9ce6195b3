//! Transfers between nodes.
//!
//! The publisher's side: `Exchange.Fetch` serves a dataset to the grantee
//! of a valid grant (a new fetch is counted, durably, before any data
//! flows; a resumed one is recorded but not counted) and
//! `Exchange.SubmitReceipt` records the consumer's receipt.
//!
//! The consumer's side: `Admin.Fetch` fetches as this node. Chunks are
//! verified and written on a blocking thread while the next ones arrive;
//! a broken connection is resumed from the first missing chunk, within the
//! call (`retries`) or by a later call, since the publisher's header is
//! kept until the fetch completes and the verified chunks are in the blob
//! store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::NodeContext;
use super::exchange::{book_status, connect_peer, grant_id};
use crate::dataset::Manifest;
use crate::digest::Hash;
use crate::envelope::{Envelope, Verified};
use crate::exchange::book::Held;
use crate::exchange::grant::{Grant, GrantId};
use crate::exchange::transfer::{Incoming, TransferError, check_header, check_output};
use crate::identity::PeerIdentity;
use crate::ledger::entry::{Entry, EntryDraft, EntryKind};
use crate::ledger::keys::LogKeys;
use crate::wire::pb;
use crate::wire::pb::fetch_response::Part;
use crate::wire::status;

/// Resumed transfers one grant may have at most. A resume is not counted
/// as a fetch, so this bounds what a grantee can make the publisher send.
pub(super) const MAX_RESUMES: usize = 32;

/// Chunks queued between the network and the verifying writer at most.
const WRITE_QUEUE: usize = 4;

/// How often a fetch reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Records a refused fetch (stolen, expired, revoked, used up) and returns
/// the status to answer with.
async fn refuse_fetch(
    node: &NodeContext,
    who: &PeerIdentity,
    grant: &Grant,
    why: String,
) -> Status {
    let mut draft = EntryDraft::new(EntryKind::AccessDenied);
    draft.parties = vec![node.identity.node_id.clone(), who.node_id.clone()];
    draft.dataset = Some(grant.dataset.to_string());
    draft.grant = Some(grant.id.to_string());
    draft.detail = format!("fetch refused: {why}").chars().take(2000).collect();
    if let Err(e) = node.ledger.append(draft).await {
        return status::ledger("recording a refused fetch", e);
    }
    node.metrics.fetch_refused();
    tracing::info!(grant = %grant.id, by = %who.node_id, reason = %why, "fetch refused");
    Status::permission_denied(why)
}

/// Counts the ledger entries of `kind` naming `grant`, up to `cap`.
fn count_entries(
    node: &NodeContext,
    grant: &GrantId,
    kind: EntryKind,
    cap: usize,
) -> Result<usize, Status> {
    let q = crate::ledger::Query {
        grant: Some(grant.to_string()),
        kind: Some(kind),
        ..Default::default()
    };
    node.ledger
        .count(&q, cap)
        .map_err(|e| status::ledger("counting fetches", e))
}

/// Whether ledger entry `t` is a `TransferStarted` of grant `grant`.
fn is_transfer_of(node: &NodeContext, t: u64, grant: &GrantId) -> Result<bool, Status> {
    let started = node
        .ledger
        .entry(t)
        .map_err(|e| status::ledger("reading the transfer", e))?
        .and_then(|raw| Entry::decode(&raw).ok());
    Ok(started.is_some_and(|e| {
        e.draft.kind == EntryKind::TransferStarted
            && e.draft.grant.as_deref() == Some(grant.as_str())
    }))
}

/// The `ReceiptRecorded` entry that closes transfer `t` of `grant`, if
/// one was recorded (its detail ends with the transfer's index).
fn receipt_of(node: &NodeContext, grant: &GrantId, t: u64) -> Result<Option<Entry>, Status> {
    let q = crate::ledger::Query {
        grant: Some(grant.to_string()),
        kind: Some(EntryKind::ReceiptRecorded),
        ..Default::default()
    };
    let closes = format!("; transfer entry {t}");
    node.ledger
        .find(&q, |e| e.draft.detail.ends_with(&closes))
        .map_err(|e| status::ledger("looking for the receipt", e))
}

/// Opens the transfer a Fetch serves: a new one (checked against the fetch
/// count and recorded before any data flows) or a resumed one of the same
/// grant (recorded, not counted). Returns the `TransferStarted` index and
/// the first chunk to send.
async fn open_transfer(
    node: &NodeContext,
    who: &PeerIdentity,
    g: &Grant,
    resume: Option<pb::FetchResume>,
    chunk_count: usize,
) -> Result<(u64, usize), Status> {
    let id = &g.id;
    // Counting and recording happen under one lock, so parallel requests
    // cannot all count before any records (max_fetches, resume cap).
    let _one = node.opening.lock().await;
    let Some(resume) = resume else {
        if let Some(max) = g.max_fetches {
            let used = count_entries(node, id, EntryKind::TransferStarted, max as usize + 1)?;
            if used >= max as usize {
                let why = format!("grant {id} allowed {max} fetch(es), all used");
                return Err(refuse_fetch(node, who, g, why).await);
            }
        }
        let transfer = node
            .ledger
            .append(g.entry(EntryKind::TransferStarted))
            .await
            .map_err(|e| status::ledger("counting the fetch", e))?;
        node.metrics.transfer("started");
        return Ok((transfer.index, 0));
    };
    let t = resume.transfer_index;
    if !is_transfer_of(node, t, id)? {
        return Err(Status::invalid_argument(format!(
            "ledger entry {t} is not a transfer of grant {id}; fetch without resuming"
        )));
    }
    let from = usize::try_from(resume.from_chunk)
        .ok()
        .filter(|f| *f <= chunk_count)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "cannot resume from chunk {}: the dataset has {chunk_count} chunks",
                resume.from_chunk
            ))
        })?;
    // A completed transfer (its receipt recorded) is not resumed: that
    // would be a free new fetch.
    if receipt_of(node, id, t)?.is_some() {
        let why = format!("transfer entry {t} of grant {id} was completed; fetch anew");
        return Err(refuse_fetch(node, who, g, why).await);
    }
    if count_entries(node, id, EntryKind::TransferResumed, MAX_RESUMES + 1)? >= MAX_RESUMES {
        let why =
            format!("grant {id}'s transfers were resumed {MAX_RESUMES} times, the most allowed");
        return Err(refuse_fetch(node, who, g, why).await);
    }
    let mut draft = g.entry(EntryKind::TransferResumed);
    draft.detail = format!("transfer entry {t} from chunk {from}");
    node.ledger
        .append(draft)
        .await
        .map_err(|e| status::ledger("recording the resume", e))?;
    node.metrics.transfer("resumed");
    Ok((t, from))
}

/// `Exchange.Fetch`: serves a dataset to the grantee of a valid, unrevoked
/// grant under its fetch count. Revocation is checked again before every
/// chunk.
pub(super) async fn serve(
    node: Arc<NodeContext>,
    who: PeerIdentity,
    r: pb::FetchRequest,
) -> Result<ReceiverStream<Result<pb::FetchResponse, Status>>, Status> {
    let id = grant_id(&r.grant_id)?;
    let grant = node
        .grants
        .issued_grant(&id)
        .ok_or_else(|| Status::not_found(format!("no grant {id} issued by this node")))?;
    let g = grant.value().clone();
    if let Err(e) = g.check_use(&who.node_id, node.clock.now_ms()) {
        return Err(refuse_fetch(&node, &who, &g, e.to_string()).await);
    }
    if node
        .grants
        .is_revoked(&id)
        .map_err(|e| book_status("checking revocation", e))?
    {
        return Err(refuse_fetch(&node, &who, &g, format!("grant {id} is revoked")).await);
    }
    let dataset = node.catalog.get(&g.dataset).ok_or_else(|| {
        Status::not_found(format!("dataset {} is no longer published here", g.dataset))
    })?;
    let (transfer_index, first) =
        open_transfer(&node, &who, &g, r.resume, dataset.chunks.len()).await?;

    // Two messages in flight at most: HTTP/2 flow control does the rest,
    // so a slow reader costs the server two chunks of memory.
    let (tx, rx) = mpsc::channel(2);
    let header = pb::FetchResponse {
        part: Some(Part::Header(pb::FetchHeader {
            manifest: Some(dataset.manifest.envelope().into()),
            chunk_hashes: dataset.chunks.iter().map(|h| h.to_vec()).collect(),
            transfer_index,
            first_chunk: first as u64,
        })),
    };
    tokio::spawn(async move {
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        if let Err(status) = send_chunks(&node, &g, &dataset, first, &tx).await {
            node.metrics.transfer("failed");
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends the chunks from `first` on, checking revocation before each.
/// `Err` is the status to end the stream with; a consumer that went away
/// ends it quietly.
async fn send_chunks(
    node: &NodeContext,
    grant: &Grant,
    dataset: &crate::dataset::catalog::Dataset,
    first: usize,
    tx: &mpsc::Sender<Result<pb::FetchResponse, Status>>,
) -> Result<(), Status> {
    let id = &grant.id;
    for (index, hash) in dataset.chunks.iter().enumerate().skip(first) {
        if node
            .grants
            .is_revoked(id)
            .map_err(|e| book_status("checking revocation", e))?
        {
            return Err(Status::permission_denied(format!(
                "grant {id} was revoked during the transfer"
            )));
        }
        if let Err(e) = grant.check_use(&grant.grantee, node.clock.now_ms()) {
            return Err(Status::permission_denied(format!(
                "{e} (during the transfer)"
            )));
        }
        // Not hashed here: the consumer checks every chunk against the
        // signed chunk list and names the one that does not match.
        let blobs = node.blobs.clone();
        let h = *hash;
        let Ok(Ok(Some(chunk))) =
            tokio::task::spawn_blocking(move || blobs.get_unverified(&h)).await
        else {
            tracing::error!(dataset = %dataset.id, chunk = index, "chunk missing on this node's disk");
            return Err(Status::data_loss(format!(
                "chunk {index} of dataset {} is missing on the publisher's disk",
                dataset.id
            )));
        };
        let bytes = chunk.len() as u64;
        let msg = pb::FetchResponse {
            part: Some(Part::Chunk(chunk)),
        };
        if tx.send(Ok(msg)).await.is_err() {
            return Ok(());
        }
        node.metrics.served(bytes);
    }
    Ok(())
}

/// `Exchange.SubmitReceipt`: verifies the consumer's receipt against its
/// certificate and records it.
pub(super) async fn submit_receipt(
    node: &NodeContext,
    who: &PeerIdentity,
    r: pb::SubmitReceiptRequest,
) -> Result<pb::SubmitReceiptResponse, Status> {
    let env: Envelope = r
        .receipt
        .ok_or_else(|| Status::invalid_argument("no receipt"))?
        .into();
    let receipt = crate::exchange::receipt::verify_receipt(env, &who.public_key)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let rc = receipt.value();
    let grant = node
        .grants
        .issued_grant(&rc.grant)
        .ok_or_else(|| Status::not_found(format!("no grant {} issued by this node", rc.grant)))?;
    let g = grant.value();
    if g.grantee != who.node_id || g.dataset != rc.dataset {
        return Err(Status::invalid_argument(
            "the receipt does not match its grant",
        ));
    }
    let dataset = node
        .catalog
        .get(&g.dataset)
        .ok_or_else(|| Status::not_found("the dataset is no longer published here"))?;
    let m = dataset.manifest.value();
    if m.content_sha256 != rc.content_sha256 || m.size != rc.bytes {
        return Err(Status::invalid_argument(
            "the receipt's content hash or size is not the dataset's",
        ));
    }
    // It must close one of this grant's transfers, once.
    let t = rc.transfer_index;
    if !is_transfer_of(node, t, &g.id)? {
        return Err(Status::invalid_argument(format!(
            "ledger entry {t} is not a transfer of grant {}",
            g.id
        )));
    }
    let _one = node.opening.lock().await;
    if let Some(done) = receipt_of(node, &g.id, t)? {
        // Already recorded (a retried submission): the same answer.
        let cp = node
            .ledger
            .latest()
            .ok_or_else(|| Status::internal("no checkpoint"))?;
        return Ok(pb::SubmitReceiptResponse {
            ledger_index: done.index,
            checkpoint: cp.note.clone().into_bytes(),
        });
    }
    let mut draft = g.entry(EntryKind::ReceiptRecorded);
    draft.object_hash = Some(receipt.envelope().payload_hash());
    draft.detail = format!(
        "{} bytes received; transfer entry {}",
        rc.bytes, rc.transfer_index
    );
    let appended = node
        .ledger
        .append(draft)
        .await
        .map_err(|e| status::ledger("recording a receipt", e))?;
    Ok(pb::SubmitReceiptResponse {
        ledger_index: appended.index,
        checkpoint: appended.checkpoint.note.clone().into_bytes(),
    })
}

/// The status of a failed transfer. Local failures (the output, the blob
/// store) are `FailedPrecondition`: retrying over the network cannot fix
/// them, and a retry must never turn into a new, counted fetch.
fn transfer_status(e: TransferError) -> Status {
    match e {
        TransferError::Output(m) => Status::failed_precondition(m),
        TransferError::File(e) => Status::failed_precondition(format!("writing the output: {e}")),
        TransferError::Blob(e) => Status::failed_precondition(format!("storing chunks: {e}")),
        TransferError::Thread(e) => Status::failed_precondition(format!("writing: {e}")),
        other => Status::data_loss(other.to_string()),
    }
}

/// A publisher silent this long on an open stream is treated as a broken
/// connection (and the transfer resumed).
const IDLE: Duration = Duration::from_secs(60);

/// The next message of a stream, or `Unavailable` after [`IDLE`].
async fn next_or_idle<S>(stream: &mut S) -> Option<Result<pb::FetchResponse, Status>>
where
    S: tokio_stream::Stream<Item = Result<pb::FetchResponse, Status>> + Unpin,
{
    match tokio::time::timeout(IDLE, stream.next()).await {
        Ok(next) => next,
        Err(_) => Some(Err(Status::unavailable(format!(
            "the publisher sent nothing for {}s",
            IDLE.as_secs()
        )))),
    }
}

/// Whether a failed call broke off (connection lost, stream reset) rather
/// than being answered: only those are retried.
fn broken(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
    )
}

/// The wait before reconnect `n` (1-based): 200 ms, doubling, at most 5 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.saturating_sub(1).min(5)))
        .min(Duration::from_secs(5))
}

/// Connects to the publisher that issued a held grant: its key is pinned,
/// or (after the publisher rotated its key) must be in its key history.
/// Returns the channel and that history.
async fn connect_publisher(
    node: &NodeContext,
    peer: &str,
    held: &Held,
) -> Result<(Channel, LogKeys), Status> {
    let conn = connect_peer(node, peer).await?;
    let keys = crate::wire::client::peer_keys(&conn).await?;
    if keys.find(&held.publisher_key).is_none() {
        let g = held.grant.value();
        return Err(Status::failed_precondition(format!(
            "{peer} is node {}, not the publisher {} that issued grant {} (nor a successor of its key)",
            conn.server.node_id, g.publisher, g.id
        )));
    }
    Ok((conn.channel, keys))
}

/// Verifies a transfer header: the manifest is signed by the grant's
/// publisher (a key of its history) and is the one the grant names, the chunk list the one the
/// manifest signs.
fn verify_header(
    header: &pb::FetchHeader,
    held: &Held,
    keys: &LogKeys,
) -> Result<(Verified<Manifest>, Vec<Hash>), Status> {
    let g = held.grant.value();
    let env: Envelope = header
        .manifest
        .clone()
        .ok_or_else(|| Status::data_loss("no manifest in the header"))?
        .into();
    // Signed by the publisher's key, or by a key its history retired (a
    // dataset published before the rotation; the publisher serves only
    // those its log recorded before the retirement).
    let ((dataset_id, manifest), _) = keys
        .verify_any(|k| crate::dataset::verify_manifest(env.clone(), k))
        .map_err(|e| Status::data_loss(format!("manifest NOT valid: {e}")))?;
    if dataset_id != g.dataset {
        return Err(Status::data_loss(
            "the publisher sent another dataset than the grant names",
        ));
    }
    let chunks = header
        .chunk_hashes
        .iter()
        .map(|h| crate::ledger::merkle::hash_from_slice(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::data_loss(format!("chunk list: {e}")))?;
    check_header(&manifest, &chunks, g).map_err(transfer_status)?;
    Ok((manifest, chunks))
}

type Events = mpsc::Sender<Result<pb::AdminFetchEvent, Status>>;

/// Marks a grant as being fetched by this node until dropped.
struct FetchGuard<'a> {
    node: &'a NodeContext,
    grant: String,
}

impl<'a> FetchGuard<'a> {
    fn take(node: &'a NodeContext, grant: &GrantId) -> Result<Self, Status> {
        let mut running = node
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !running.insert(grant.to_string()) {
            return Err(Status::failed_precondition(format!(
                "a fetch of grant {grant} is already running on this node"
            )));
        }
        Ok(Self {
            node,
            grant: grant.to_string(),
        })
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        self.node
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.grant);
    }
}

/// A transfer in progress on the consumer: the publisher's transfer entry
/// and the verified output so far.
struct InFlight {
    transfer_index: u64,
    manifest: Envelope,
    incoming: Incoming,
}

/// Progress of one fetch, shared with the writer thread.
struct Progress {
    events: Events,
    chunks: AtomicU64,
    bytes: AtomicU64,
    total_chunks: AtomicU64,
    total_bytes: AtomicU64,
    resumed_chunks: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    fn new(events: Events) -> Self {
        Self {
            events,
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_chunks: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            resumed_chunks: AtomicU64::new(0),
            last: std::sync::Mutex::new(None),
        }
    }

    /// Takes the totals and the position of a transfer.
    fn start(&self, incoming: &Incoming) {
        self.total_chunks
            .store(incoming.chunk_count() as u64, Ordering::Relaxed);
        self.total_bytes.store(incoming.size(), Ordering::Relaxed);
        self.record(incoming);
    }

    fn record(&self, incoming: &Incoming) {
        self.chunks
            .store(incoming.received() as u64, Ordering::Relaxed);
        self.bytes
            .store(incoming.bytes_received(), Ordering::Relaxed);
    }

    /// Sends a progress event if the last was long enough ago (never
    /// waits: a slow reader misses updates, not data).
    fn report(&self, force: bool) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let event = pb::AdminFetchEvent {
            event: Some(pb::admin_fetch_event::Event::Progress(
                pb::AdminFetchProgress {
                    bytes: self.bytes.load(Ordering::Relaxed),
                    total_bytes: self.total_bytes.load(Ordering::Relaxed),
                    chunks: self.chunks.load(Ordering::Relaxed),
                    total_chunks: self.total_chunks.load(Ordering::Relaxed),
                    resumed_chunks: self.resumed_chunks.load(Ordering::Relaxed),
                },
            )),
        };
        let _ = self.events.try_send(Ok(event));
    }
}

/// `Admin.Fetch`: runs the fetch in its own task and streams its progress,
/// then its result. If the caller goes away the fetch stops; what it
/// verified is kept for a resume.
pub(super) fn fetch_as_node(
    node: Arc<NodeContext>,
    r: pb::AdminFetchRequest,
) -> ReceiverStream<Result<pb::AdminFetchEvent, Status>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let peer = r.peer.clone();
        let result = fetch(&node, r, tx.clone()).await;
        if result.is_ok() {
            // Having talked, the two nodes witness each other's logs.
            if let Err(e) = node.exchange_checkpoints_with(&peer).await {
                tracing::warn!(peer, error = %e, "checkpoint exchange after the fetch failed");
            }
        }
        let result = result.map(|done| pb::AdminFetchEvent {
            event: Some(pb::admin_fetch_event::Event::Done(done)),
        });
        if let Err(e) = &result {
            tracing::warn!(error = %e.message(), "fetch failed");
        }
        let _ = tx.send(result).await;
    });
    ReceiverStream::new(rx)
}

async fn fetch(
    node: &NodeContext,
    r: pb::AdminFetchRequest,
    events: Events,
) -> Result<pb::AdminFetchResponse, Status> {
    let id = grant_id(&r.grant_id)?;
    let held = node
        .grants
        .held_grant(&id)
        .ok_or_else(|| Status::not_found(format!("this node holds no grant {id}")))?;
    let g = held.grant.value().clone();
    // One fetch per grant at a time: two would share the saved state.
    let _only = FetchGuard::take(node, &id)?;
    let out = PathBuf::from(&r.out);
    check_output(&out, r.force).map_err(transfer_status)?;
    let (mut channel, keys) = connect_publisher(node, &r.peer, &held).await?;

    // An interrupted fetch of this grant resumes: its verified chunks are
    // taken from the blob store (each checked again), the rest asked for.
    let progress = Arc::new(Progress::new(events));
    let mut in_flight = None;
    if let Some(saved) = node
        .grants
        .interrupted_fetch(&id)
        .map_err(|e| book_status("reading the interrupted fetch", e))?
    {
        let header = <pb::FetchHeader as prost::Message>::decode(saved.as_slice()).map_err(|e| {
            Status::failed_precondition(format!(
                "the saved state of an interrupted fetch of grant {id} is not a fetch header ({e}); remove grants/fetching/{id}.* to fetch afresh"
            ))
        })?;
        let (manifest, chunks) = verify_header(&header, &held, &keys)?;
        let mut incoming =
            Incoming::start(&out, r.force, &manifest, chunks, &g, node.blobs.clone())
                .map_err(transfer_status)?;
        let (incoming, taken) = tokio::task::spawn_blocking(move || {
            let taken = incoming.resume_from_store();
            (incoming, taken)
        })
        .await
        .map_err(|e| status::internal("resuming", &e))?;
        let taken = taken.map_err(transfer_status)?;
        tracing::info!(grant = %id, chunks = taken, "resuming an interrupted fetch");
        progress.start(&incoming);
        progress
            .resumed_chunks
            .store(taken as u64, Ordering::Relaxed);
        in_flight = Some(InFlight {
            transfer_index: header.transfer_index,
            manifest: manifest.envelope().clone(),
            incoming,
        });
    }

    let mut reconnects = 0;
    loop {
        let attempted = attempt(
            node,
            channel.clone(),
            (&held, &keys),
            (&out, r.force),
            &mut in_flight,
            &progress,
        );
        let err = match attempted.await {
            Ok(()) => break,
            Err(e) => e,
        };
        if err.code() == Code::InvalidArgument && in_flight.is_some() {
            // The publisher will not resume this transfer: the saved
            // state is of no use; the next fetch starts afresh.
            drop(in_flight.take());
            let _ = node.grants.end_fetch(&id);
            return Err(Status::failed_precondition(format!(
                "the publisher will not resume this transfer ({}); the saved state was dropped: run the same fetch again for a new fetch",
                err.message()
            )));
        }
        if !broken(&err) || reconnects >= r.retries || progress.events.is_closed() {
            return Err(interrupted(err, in_flight.as_ref(), &r));
        }
        // Reconnect (each try counts) and resume from the first chunk not
        // yet verified.
        let mut last = err;
        channel = loop {
            reconnects += 1;
            tracing::warn!(grant = %id, error = %last.message(), reconnect = reconnects, "transfer interrupted; reconnecting to resume");
            tokio::time::sleep(backoff(reconnects)).await;
            match connect_publisher(node, &r.peer, &held).await {
                Ok((c, _)) => break c,
                Err(e) if broken(&e) && reconnects < r.retries => last = e,
                Err(e) => return Err(interrupted(e, in_flight.as_ref(), &r)),
            }
        };
    }

    let InFlight {
        transfer_index,
        manifest,
        incoming,
    } = in_flight.ok_or_else(|| Status::internal("the fetch ended without a transfer"))?;
    let received = tokio::task::spawn_blocking(move || incoming.finish())
        .await
        .map_err(|e| status::internal("finishing the output", &e))?
        .map_err(transfer_status)?;
    progress.report(true);
    node.grants
        .complete_fetch(&id, &g.dataset, &manifest, &received.chunks)
        .map_err(|e| book_status("recording the received dataset", e))?;

    // Both sides record what was received.
    let mut completed = g.entry(EntryKind::TransferCompleted);
    completed.object_hash = Some(received.content_sha256);
    completed.detail = format!("{} bytes", received.bytes);
    node.ledger
        .append(completed)
        .await
        .map_err(|e| status::ledger("recording the transfer", e))?;
    let receipt = crate::exchange::receipt::Receipt {
        grant: id.clone(),
        dataset: g.dataset.clone(),
        content_sha256: received.content_sha256,
        bytes: received.bytes,
        received_at_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        consumer_checkpoint: node
            .ledger
            .latest()
            .map(|c| c.note.clone())
            .unwrap_or_default(),
        consumer: node.identity.node_id.clone(),
        transfer_index,
    };
    let envelope = receipt.sign(&node.signing_key);
    // Kept whatever happens next: it is what an auditor is shown.
    node.grants
        .keep_receipt(&id, transfer_index, &envelope)
        .map_err(|e| book_status("keeping the receipt", e))?;
    let (own, publisher_index) = send_receipt(node, channel, &keys, &g, &envelope)
        .await
        .map_err(|e| {
            Status::new(
                e.code(),
                format!(
                    "the content is at {} and verified, but the publisher did not take the receipt: {}; `dsnode receipts resend` submits it again",
                    received.out.display(),
                    e.message()
                ),
            )
        })?;
    Ok(pb::AdminFetchResponse {
        dataset_id: g.dataset.to_string(),
        bytes: received.bytes,
        content_sha256: received.content_sha256.to_vec(),
        ledger_index: own,
        publisher_ledger_index: publisher_index,
        resumed_chunks: progress.resumed_chunks.load(Ordering::Relaxed),
        reconnects,
    })
}

/// Submits a receipt this node signed to the grant's publisher and records
/// it (`ReceiptRecorded`, naming the publisher's entry) with the
/// publisher's checkpoint that covers it (`PeerCheckpointSeen`). The
/// publisher answers a receipt it already has with its first entry, so
/// this may be repeated. Returns this node's entry and the publisher's.
async fn send_receipt(
    node: &NodeContext,
    channel: Channel,
    keys: &LogKeys,
    g: &Grant,
    envelope: &Envelope,
) -> Result<(u64, u64), Status> {
    let mut submit = tonic::Request::new(pb::SubmitReceiptRequest {
        receipt: Some(envelope.into()),
    });
    submit.set_timeout(IDLE);
    let answer = pb::exchange_client::ExchangeClient::new(channel)
        .submit_receipt(submit)
        .await?
        .into_inner();
    // The publisher's checkpoint that covers the receipt, verified, goes
    // into this ledger: an auditor can later prove the publisher's log
    // still extends it (no fork, no rewritten history).
    let witnessed = keys.verify_checkpoint(&answer.checkpoint).map_err(|e| {
        Status::data_loss(format!("the publisher's checkpoint does not verify: {e}"))
    })?;
    if witnessed.checkpoint.size <= answer.ledger_index {
        return Err(Status::data_loss(
            "the publisher's checkpoint does not cover its receipt entry",
        ));
    }
    let mut recorded = g.entry(EntryKind::ReceiptRecorded);
    recorded.object_hash = Some(envelope.payload_hash());
    recorded.detail = format!("publisher entry {}", answer.ledger_index);
    let mut seen = g.entry(EntryKind::PeerCheckpointSeen);
    seen.object_hash = Some(crate::digest::sha256(witnessed.note.as_bytes()));
    seen.detail = witnessed.note.clone();
    let own = node
        .ledger
        .append(recorded)
        .await
        .map_err(|e| status::ledger("recording the receipt", e))?;
    node.ledger
        .append(seen)
        .await
        .map_err(|e| status::ledger("recording the publisher's checkpoint", e))?;
    Ok((own.index, answer.ledger_index))
}

/// `Admin.ResendReceipts`: submits again every receipt this node keeps for
/// a held grant that its ledger does not record as taken by the publisher
/// (a publisher that stopped between the last chunk and the receipt).
pub(super) async fn resend_receipts(
    node: &NodeContext,
    r: pb::AdminResendReceiptsRequest,
) -> Result<pb::AdminResendReceiptsResponse, Status> {
    let id = grant_id(&r.grant_id)?;
    let held = node
        .grants
        .held_grant(&id)
        .ok_or_else(|| Status::not_found(format!("this node holds no grant {id}")))?;
    let g = held.grant.value().clone();
    let kept = node
        .grants
        .objects(&id)
        .map_err(|e| book_status("reading the kept receipts", e))?
        .receipts;
    let recorded = |hash: crate::digest::Hash| {
        let q = crate::ledger::Query {
            grant: Some(id.to_string()),
            kind: Some(EntryKind::ReceiptRecorded),
            ..crate::ledger::Query::default()
        };
        node.ledger
            .find(&q, |e| e.draft.object_hash == Some(hash))
            .map(|e| e.is_some())
            .map_err(|e| status::ledger("reading the ledger", e))
    };
    let mut out = pb::AdminResendReceiptsResponse {
        kept: kept.len() as u64,
        resent: Vec::new(),
    };
    let mut pending = Vec::new();
    for (transfer, envelope) in kept {
        if !recorded(envelope.payload_hash())? {
            pending.push((transfer, envelope));
        }
    }
    if pending.is_empty() {
        return Ok(out);
    }
    let (channel, keys) = connect_publisher(node, &r.peer, &held).await?;
    for (transfer, envelope) in pending {
        let (own, publisher) = send_receipt(node, channel.clone(), &keys, &g, &envelope).await?;
        out.resent.push(pb::ResentReceipt {
            transfer_index: transfer,
            ledger_index: own,
            publisher_ledger_index: publisher,
        });
    }
    Ok(out)
}

/// The error a fetch ends with; a broken transfer says how to resume it.
fn interrupted(err: Status, in_flight: Option<&InFlight>, r: &pb::AdminFetchRequest) -> Status {
    match in_flight {
        Some(f) if broken(&err) => Status::new(
            Code::Unavailable,
            format!(
                "{}; {} of {} chunks are verified and kept: run the same fetch again to resume",
                err.message(),
                f.incoming.received(),
                f.incoming.chunk_count()
            ),
        ),
        _ if broken(&err) && r.retries > 0 => Status::new(
            err.code(),
            format!("{} (after {} retries)", err.message(), r.retries),
        ),
        _ => err,
    }
}

/// One Fetch call: a new transfer, or a resume of `in_flight` from its
/// first missing chunk. Chunks go to a blocking thread that verifies and
/// writes them while the next ones arrive.
async fn attempt(
    node: &NodeContext,
    channel: Channel,
    (held, keys): (&Held, &LogKeys),
    (out, force): (&Path, bool),
    in_flight: &mut Option<InFlight>,
    progress: &Arc<Progress>,
) -> Result<(), Status> {
    let g = held.grant.value();
    let mut exchange = pb::exchange_client::ExchangeClient::new(channel).max_decoding_message_size(
        crate::dataset::CHUNK_SIZE_RANGE.end().to_owned() as usize + (64 << 10),
    );
    let resume = in_flight.as_ref().map(|f| pb::FetchResume {
        transfer_index: f.transfer_index,
        from_chunk: f.incoming.received() as u64,
    });
    let expected_first = resume.as_ref().map_or(0, |r| r.from_chunk);
    let mut stream = exchange
        .fetch(pb::FetchRequest {
            grant_id: g.id.to_string(),
            resume,
        })
        .await?
        .into_inner();
    let first = next_or_idle(&mut stream)
        .await
        .ok_or_else(|| Status::data_loss("the publisher sent nothing"))??;
    let Some(Part::Header(header)) = first.part else {
        return Err(Status::data_loss(
            "the publisher's stream does not start with its header",
        ));
    };
    // A resumed header passes only if it is the same manifest and chunk
    // list: the grant pins the manifest's hash, which pins the list.
    let (manifest, chunks) = verify_header(&header, held, keys)?;
    if header.first_chunk != expected_first
        || in_flight
            .as_ref()
            .is_some_and(|f| f.transfer_index != header.transfer_index)
    {
        return Err(Status::data_loss(
            "the publisher resumed another transfer or chunk than asked for",
        ));
    }
    let flight = match in_flight.take() {
        Some(f) => f,
        None => {
            // Kept first: the publisher has counted this fetch already.
            let saved = prost::Message::encode_to_vec(&header);
            node.grants
                .begin_fetch(&g.id, &saved, &chunks)
                .map_err(|e| {
                    Status::failed_precondition(format!("keeping the transfer header: {e}"))
                })?;
            let incoming = Incoming::start(out, force, &manifest, chunks, g, node.blobs.clone())
                .map_err(transfer_status)?;
            progress.start(&incoming);
            InFlight {
                transfer_index: header.transfer_index,
                manifest: manifest.envelope().clone(),
                incoming,
            }
        }
    };
    progress.report(true);

    let InFlight {
        transfer_index,
        manifest,
        mut incoming,
    } = flight;
    let (queue, mut queued) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let shared = progress.clone();
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = queued.blocking_recv() {
            incoming.chunk(chunk)?;
            shared.record(&incoming);
        }
        Ok::<_, TransferError>(incoming)
    });
    let mut outcome = Ok(());
    while let Some(msg) = next_or_idle(&mut stream).await {
        match msg {
            Ok(pb::FetchResponse {
                part: Some(Part::Chunk(chunk)),
            }) => {
                if queue.send(chunk).await.is_err() {
                    break; // the writer stopped: its error says why
                }
            }
            Ok(_) => {
                outcome = Err(Status::data_loss("a second header in the stream"));
                break;
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        if progress.events.is_closed() {
            outcome = Err(Status::cancelled("the fetch's caller went away"));
            break;
        }
        progress.report(false);
    }
    drop(queue);
    // A chunk that did not verify beats a broken stream as the reason.
    let incoming = writer
        .await
        .map_err(|e| Status::failed_precondition(format!("writing the output: {e}")))?
        .map_err(transfer_status)?;
    *in_flight = Some(InFlight {
        transfer_index,
        manifest,
        incoming,
    });
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn only_broken_calls_are_retried() {
        assert!(broken(&Status::unavailable("connection reset")));
        assert!(broken(&Status::unknown("h2 protocol error")));
        assert!(!broken(&Status::permission_denied("revoked")));
        assert!(!broken(&Status::data_loss("chunk 3 does not match")));
        assert!(!broken(&Status::not_found("no grant")));
    }
}
