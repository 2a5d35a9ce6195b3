//! The consumer's side of a transfer, as states that consume themselves:
//!
//! ```text
//! Fetch::open ─► Opened ─restore─► Transferring ─receive─► Received ─finish─► Signed ─deliver─► Fetched
//!                 (grant held,        (an interrupted         (every chunk      (content durable,   (receipt taken
//!                  one fetch at a      fetch's verified        verified and      TransferCompleted,  by the publisher,
//!                  time, output ok,    chunks taken back)      written)          receipt signed      both ledgers
//!                  publisher's key)                                              and kept)           record it)
//! ```
//!
//! A transfer runs over `streams` streams, each on a connection of its
//! own and each carrying a share of the chunk ranges still missing: the
//! first opens the transfer (a new fetch, or a resume), the others join
//! it. Each stream's chunks are verified and written in place on a
//! blocking thread of its own while the next ones arrive, so hashing and
//! writing use every core. A broken connection is resumed, each range from
//! its first missing chunk, within the call (`retries`) or by a later
//! call: the publisher's header is kept until the fetch completes and the
//! verified chunks are in the transfer's pack. A chunk that does not
//! verify, on any stream, ends the whole transfer.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::book::{BookError, GrantBook, Held};
use super::grant::{Grant, GrantId};
use super::receipt::Receipt;
use super::transfer::{Incoming, ObjectOutput, Output, TransferError, check_header, check_output};
use crate::codec::Canonical;
use crate::dataset::Manifest;
use crate::dataset::pack::PackStore;
use crate::digest::{Hash, sha256};
use crate::envelope::{Envelope, Verified};
use crate::identity::PeerIdentity;
use crate::ledger::entry::EntryKind;
use crate::ledger::keys::LogKeys;
use crate::ledger::{Ledger, LedgerError, Query, merkle};
use crate::peer::{
    Code, Dialer, FetchAsk, FetchHeader, FetchPart, FetchStream, Peer, PeerError, Resume, log_keys,
};

/// Chunks queued between the streams of a transfer and their verifying
/// writers at most, shared out among the streams (at least one each).
const WRITE_QUEUE: usize = 4;

/// How often a fetch reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A publisher silent this long on an open stream is treated as a broken
/// connection (and the transfer resumed).
pub const IDLE: Duration = Duration::from_secs(60);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// This node holds no such grant.
    #[error("this node holds no grant {0}")]
    NoGrant(GrantId),
    /// Something on this node stands in the way (a fetch of the grant
    /// already running, saved state that is no use): retrying over the
    /// network cannot help.
    #[error("{0}")]
    Precondition(String),
    /// Writing the output or the blob store failed, or the output is not
    /// usable: local, never retried (a retry must never turn into a new,
    /// counted fetch).
    #[error("{0}")]
    Local(String),
    /// What the publisher sent does not verify, or breaks the protocol.
    #[error("{0}")]
    BadAnswer(String),
    /// The publisher went silent.
    #[error("the publisher sent nothing for {}s", IDLE.as_secs())]
    Idle,
    /// The one who asked for the fetch went away.
    #[error("the fetch's caller went away")]
    CallerGone,
    /// The publisher could not be reached, or refused.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The transfer broke off with verified chunks kept: a later fetch of
    /// the same grant resumes it.
    #[error(
        "{cause}; {received} of {total} chunks are verified and kept: run the same fetch again to resume"
    )]
    Interrupted {
        /// Why it broke off.
        #[source]
        cause: Box<FetchError>,
        /// Chunks verified.
        received: usize,
        /// Chunks in all.
        total: usize,
    },
    /// The call broke off again after every retry.
    #[error("{cause} (after {retries} retries)")]
    Retried {
        /// The last failure.
        #[source]
        cause: Box<FetchError>,
        /// Retries made.
        retries: u32,
    },
    /// The content is written and verified, but the publisher did not take
    /// the receipt.
    #[error(
        "the content is at {out} and verified, but the publisher did not take the receipt: {cause}; `dsnode receipts resend` submits it again"
    )]
    ReceiptNotTaken {
        /// Where the content is.
        out: Output,
        /// Why the receipt was not taken.
        #[source]
        cause: Box<FetchError>,
    },
    /// The grant book failed.
    #[error("{context}: {source}")]
    Book {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: BookError,
    },
    /// The ledger failed.
    #[error("{context}: {source}")]
    Ledger {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: LedgerError,
    },
    /// A task of this node failed.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl FetchError {
    /// Whether the call broke off (connection lost, stream reset, a
    /// silent publisher) rather than being answered: only those are
    /// retried.
    pub fn is_broken(&self) -> bool {
        match self {
            Self::Peer(e) => e.is_broken(),
            Self::Idle | Self::CallerGone => true,
            Self::Interrupted { cause, .. }
            | Self::Retried { cause, .. }
            | Self::ReceiptNotTaken { cause, .. } => cause.is_broken(),
            _ => false,
        }
    }

    fn book(context: &'static str) -> impl FnOnce(BookError) -> Self {
        move |source| Self::Book { context, source }
    }

    fn ledger(context: &'static str) -> impl FnOnce(LedgerError) -> Self {
        move |source| Self::Ledger { context, source }
    }

    fn internal<E: std::error::Error + Send + Sync + 'static>(
        context: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |e| Self::Internal {
            context,
            source: Box::new(e),
        }
    }
}

impl From<TransferError> for FetchError {
    /// Local failures (the output, the blob store) are never retried;
    /// anything else is the publisher's data not matching.
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Output(m) => Self::Local(m),
            TransferError::File(e) => Self::Local(format!("writing the output: {e}")),
            TransferError::Blob(e) => Self::Local(format!("storing the content: {e}")),
            TransferError::Thread(e) => Self::Local(format!("writing: {e}")),
            other => Self::BadAnswer(other.to_string()),
        }
    }
}

/// What a consumer needs of its node to fetch.
pub struct Consumer<'a> {
    /// This node, from its own certificate.
    pub identity: &'a PeerIdentity,
    /// Its ledger.
    pub ledger: &'a Ledger,
    /// The grants it holds, and the saved state of interrupted fetches.
    pub grants: &'a Arc<GrantBook>,
    /// Where received datasets (and fetches in progress) are kept.
    pub packs: &'a Arc<PackStore>,
    /// Its signing key, for receipts.
    pub key: &'a SigningKey,
    /// Grants being fetched now (one fetch per grant at a time).
    pub fetching: &'a Mutex<HashSet<String>>,
    /// Connects to the publisher.
    pub dialer: &'a dyn Dialer,
    /// The highest version seen of each publisher's lineages: raised by
    /// every manifest fetched.
    pub seen: &'a crate::dataset::seen::SeenVersions,
}

impl Consumer<'_> {
    /// A grant this node holds.
    fn held(&self, grant: &GrantId) -> Result<Arc<Held>, FetchError> {
        self.grants
            .held_grant(grant)
            .ok_or_else(|| FetchError::NoGrant(grant.clone()))
    }
}

/// What to fetch, from whom, to where.
#[derive(Clone, Debug)]
pub struct FetchOrder {
    /// The grant this node holds.
    pub grant: GrantId,
    /// The publisher's address.
    pub peer: String,
    /// Where the content goes.
    pub out: Output,
    /// Replace the output if it exists.
    pub force: bool,
    /// Reconnects allowed after a broken connection.
    pub retries: u32,
    /// Parallel streams (at least 1), each on its own connection.
    pub streams: usize,
    /// Also check the whole content's SHA-256 before the output is put
    /// in place.
    pub verify_sha256: bool,
}

/// Parallel streams a fetch may ask for at most.
pub const MAX_STREAMS: u32 = 16;

/// Parallel streams when the caller names none: this machine's cores, at
/// most 4 (each stream verifies and writes on a thread of its own; four
/// hash faster than any link below 40 Gbit/s, and each stream costs both
/// nodes memory: BENCHMARKS.md).
pub fn default_streams() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

/// How far a fetch is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchProgress {
    /// Bytes verified.
    pub bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Chunks verified.
    pub chunks: u64,
    /// Chunks in all.
    pub total_chunks: u64,
    /// Chunks taken from an interrupted fetch.
    pub resumed_chunks: u64,
}

/// A completed fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The dataset.
    pub dataset_id: String,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the content (the manifest's).
    pub content_sha256: Hash,
    /// This node's `ReceiptRecorded` entry.
    pub ledger_index: u64,
    /// The publisher's.
    pub publisher_ledger_index: u64,
    /// Chunks taken from an interrupted fetch.
    pub resumed_chunks: u64,
    /// Reconnects made.
    pub reconnects: u32,
    /// SHA-256 of the chunk list every chunk was checked against.
    pub chunk_list_sha256: Hash,
    /// Whether `content_sha256` was checked over the whole content.
    pub content_verified: bool,
    /// Streams the fetch ran over.
    pub streams: usize,
}

/// Progress of one fetch, shared with the writer thread; reports go to a
/// channel whose closing means the caller went away.
pub struct Progress {
    events: mpsc::Sender<FetchProgress>,
    chunks: AtomicU64,
    bytes: AtomicU64,
    total_chunks: AtomicU64,
    total_bytes: AtomicU64,
    resumed_chunks: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    /// Progress reported to `events`.
    pub fn new(events: mpsc::Sender<FetchProgress>) -> Self {
        Self {
            events,
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_chunks: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            resumed_chunks: AtomicU64::new(0),
            last: Mutex::new(None),
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

    fn caller_gone(&self) -> bool {
        self.events.is_closed()
    }

    /// Sends a progress report if the last was long enough ago (never
    /// waits: a slow reader misses updates, not data).
    fn report(&self, force: bool) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.events.try_send(FetchProgress {
            bytes: self.bytes.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            total_chunks: self.total_chunks.load(Ordering::Relaxed),
            resumed_chunks: self.resumed_chunks.load(Ordering::Relaxed),
        });
    }
}

/// Marks a grant as being fetched by this node until dropped.
struct FetchGuard<'a> {
    fetching: &'a Mutex<HashSet<String>>,
    grant: String,
}

impl<'a> FetchGuard<'a> {
    fn take(fetching: &'a Mutex<HashSet<String>>, grant: &GrantId) -> Result<Self, FetchError> {
        let mut running = fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if !running.insert(grant.to_string()) {
            return Err(FetchError::Precondition(format!(
                "a fetch of grant {grant} is already running on this node"
            )));
        }
        Ok(Self {
            fetching,
            grant: grant.to_string(),
        })
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        self.fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.grant);
    }
}

/// A transfer in progress: the publisher's transfer entry and the
/// verified content so far.
struct InFlight {
    transfer_index: u64,
    manifest: Envelope,
    incoming: Arc<Incoming>,
}

/// Splits the missing chunks into at most `streams` shares of about the
/// same number of chunks, each a list of ranges in order.
fn plan(missing: &[Range<usize>], streams: usize) -> Vec<Vec<Range<usize>>> {
    let total: usize = missing.iter().map(ExactSizeIterator::len).sum();
    if total == 0 {
        return Vec::new();
    }
    let per = total.div_ceil(streams.max(1));
    let (mut shares, mut share, mut room) = (Vec::new(), Vec::new(), per);
    for run in missing {
        let mut run = run.clone();
        while !run.is_empty() {
            let take = room.min(run.len());
            share.push(run.start..run.start + take);
            run.start += take;
            room -= take;
            if room == 0 {
                shares.push(std::mem::take(&mut share));
                room = per;
            }
        }
    }
    if !share.is_empty() {
        shares.push(share);
    }
    shares
}

/// The wait before reconnect `n` (1-based): 200 ms, doubling, at most 5 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.saturating_sub(1).min(5)))
        .min(Duration::from_secs(5))
}

/// The publisher that issued a held grant, connected: its key is pinned,
/// or (after the publisher rotated its key) must be in its key history.
/// Returns the connection and that history.
async fn connect_publisher(
    dialer: &dyn Dialer,
    peer: &str,
    held: &Held,
) -> Result<(Box<dyn Peer>, LogKeys), FetchError> {
    let conn = dialer.dial(peer).await?;
    let keys = log_keys(conn.as_ref()).await?;
    if keys.find(&held.publisher_key).is_none() {
        let g = held.grant.value();
        return Err(FetchError::Precondition(format!(
            "{peer} is node {}, not the publisher {} that issued grant {} (nor a successor of its key)",
            conn.identity().node_id,
            g.publisher,
            g.id
        )));
    }
    Ok((conn, keys))
}

/// Verifies a transfer header: the manifest is signed by the grant's
/// publisher (a key of its history) and is the one the grant names, the
/// chunk list the one the manifest signs.
fn verify_header(
    header: &FetchHeader,
    held: &Held,
    keys: &LogKeys,
) -> Result<(Verified<Manifest>, Vec<Hash>), FetchError> {
    let g = held.grant.value();
    let env = header
        .manifest
        .clone()
        .ok_or_else(|| FetchError::BadAnswer("no manifest in the header".into()))?;
    // Signed by the publisher's key, or by a key its history retired (a
    // dataset published before the rotation; the publisher serves only
    // those its log recorded before the retirement).
    let ((dataset_id, manifest), _) = keys
        .verify_any(|k| crate::dataset::verify_manifest(env.clone(), k))
        .map_err(|e| FetchError::BadAnswer(format!("manifest NOT valid: {e}")))?;
    if dataset_id != g.dataset {
        return Err(FetchError::BadAnswer(
            "the publisher sent another dataset than the grant names".into(),
        ));
    }
    let chunks = header
        .chunk_hashes
        .iter()
        .map(|h| merkle::hash_from_slice(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FetchError::BadAnswer(format!("chunk list: {e}")))?;
    check_header(&manifest, &chunks, g)?;
    Ok((manifest, chunks))
}

/// Raises the highest version seen of the manifest's lineage (so a
/// catalog of that publisher rolled back below it is noticed later). A
/// failure is logged: the fetch does not depend on it.
async fn record_seen(
    seen: &crate::dataset::seen::SeenVersions,
    publisher: &crate::identity::NodeId,
    id: &crate::dataset::DatasetId,
    manifest: &Manifest,
) {
    let (seen, publisher, id, manifest) = (
        seen.clone(),
        publisher.clone(),
        id.clone(),
        manifest.clone(),
    );
    let now = crate::clock::Clock::system().now_ms();
    let recorded =
        tokio::task::spawn_blocking(move || seen.record(&publisher, [(&id, &manifest)], now)).await;
    match recorded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the version fetched"),
        Err(e) => tracing::warn!(error = %e, "cannot record the version fetched"),
    }
}

/// The next part of a stream, or [`FetchError::Idle`] after [`IDLE`].
async fn next_or_idle(stream: &mut FetchStream) -> Option<Result<FetchPart, FetchError>> {
    match tokio::time::timeout(IDLE, stream.next()).await {
        Ok(next) => next.map(|r| r.map_err(FetchError::from)),
        Err(_) => Some(Err(FetchError::Idle)),
    }
}

/// Checks that the object a fetch writes does not exist (unless
/// `force`): the object store is asked, which also checks it answers and
/// takes the node's credentials before the publisher is asked for
/// anything. (S3 has no portable create-if-absent, so an object another
/// writer puts meanwhile is replaced at the end.)
async fn check_object_output(o: &ObjectOutput, force: bool) -> Result<(), FetchError> {
    let failed = |e| FetchError::Local(format!("{}: {e}", o.url));
    match o.bucket.size(&o.url.key).await {
        Ok(Some(_)) if !force => {
            return Err(FetchError::Local(format!(
                "{} exists; pass --force to replace it",
                o.url
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(failed(e)),
    }
    // The bucket exists and takes the node's writes: a probe object
    // beside the output comes and goes (a missing bucket or a read-only
    // key is found before anything is transferred).
    let dir = o.url.key.as_ref().rsplit_once('/').map_or("", |(d, _)| d);
    o.bucket.probe(dir).await.map_err(failed)
}

/// A fetch about to start: the grant is held, no other fetch of it runs,
/// the output can be written, the publisher is connected and its key
/// checked.
pub struct Opened<'a> {
    consumer: Consumer<'a>,
    order: FetchOrder,
    held: Arc<Held>,
    publisher: Arc<dyn Peer>,
    keys: LogKeys,
    progress: Arc<Progress>,
    _only: FetchGuard<'a>,
}

impl<'a> Opened<'a> {
    /// Checks what can be checked before the publisher is asked for
    /// anything (a bad path costs no fetch), then connects.
    pub async fn open(
        consumer: Consumer<'a>,
        order: FetchOrder,
        progress: Arc<Progress>,
    ) -> Result<Self, FetchError> {
        let held = consumer.held(&order.grant)?;
        // One fetch per grant at a time: two would share the saved state.
        let only = FetchGuard::take(consumer.fetching, &order.grant)?;
        match &order.out {
            Output::File(path) => {
                check_output(path, order.force)?;
            }
            Output::Object(o) => check_object_output(o, order.force).await?,
        }
        let (publisher, keys) = connect_publisher(consumer.dialer, &order.peer, &held).await?;
        Ok(Self {
            consumer,
            order,
            held,
            publisher: Arc::from(publisher),
            keys,
            progress,
            _only: only,
        })
    }

    /// Takes back an interrupted fetch of this grant, if there is one: its
    /// verified chunks come from the blob store (each checked again), the
    /// rest will be asked for.
    pub async fn restore(self) -> Result<Transferring<'a>, FetchError> {
        let id = &self.order.grant;
        let mut in_flight = None;
        if let Some(saved) = self
            .consumer
            .grants
            .interrupted_fetch(id)
            .map_err(FetchError::book("reading the interrupted fetch"))?
        {
            let header = FetchHeader::decode(&saved).map_err(|e| {
                FetchError::Precondition(format!(
                    "the saved state of an interrupted fetch of grant {id} is {e}; remove grants/fetching/{id}.* to fetch afresh"
                ))
            })?;
            let (manifest, chunks) = verify_header(&header, &self.held, &self.keys)?;
            let incoming = Arc::new(Incoming::start(
                &self.order.out,
                self.order.force,
                &manifest,
                chunks,
                self.held.grant.value(),
                self.consumer.packs.clone(),
                false,
            )?);
            let checking = incoming.clone();
            let taken = tokio::task::spawn_blocking(move || checking.resume_from_pack())
                .await
                .map_err(FetchError::internal("resuming"))??;
            tracing::info!(grant = %id, chunks = taken, "resuming an interrupted fetch");
            self.progress.start(&incoming);
            self.progress
                .resumed_chunks
                .store(taken as u64, Ordering::Relaxed);
            in_flight = Some(InFlight {
                transfer_index: header.transfer_index,
                manifest: manifest.envelope().clone(),
                incoming,
            });
        }
        Ok(Transferring {
            opened: self,
            in_flight,
            reconnects: 0,
        })
    }
}

/// A fetch receiving chunks, resuming after a broken connection.
pub struct Transferring<'a> {
    opened: Opened<'a>,
    in_flight: Option<InFlight>,
    reconnects: u32,
}

impl<'a> Transferring<'a> {
    /// Receives every chunk: calls the publisher, and after a broken
    /// connection reconnects (each try counts against the retries) and
    /// resumes from the first chunk not yet verified.
    pub async fn receive(mut self) -> Result<Received<'a>, FetchError> {
        let id = self.opened.order.grant.clone();
        loop {
            let err = match self.attempt().await {
                Ok(()) => break,
                Err(e) => e,
            };
            if self.in_flight.is_some()
                && matches!(&err, FetchError::Peer(e) if e.code == Code::InvalidArgument)
            {
                // The publisher will not resume this transfer: the saved
                // state is of no use; the next fetch starts afresh.
                drop(self.in_flight.take());
                let _ = self.opened.consumer.grants.end_fetch(&id);
                self.opened.consumer.packs.remove_partial(id.as_str());
                return Err(FetchError::Precondition(format!(
                    "the publisher will not resume this transfer ({err}); the saved state was dropped: run the same fetch again for a new fetch"
                )));
            }
            let retries = self.opened.order.retries;
            if !err.is_broken() || self.reconnects >= retries || self.opened.progress.caller_gone()
            {
                return Err(self.interrupted(err));
            }
            // Reconnect (each try counts) and resume from the first chunk
            // not yet verified.
            let mut last = err;
            self.opened.publisher = loop {
                self.reconnects += 1;
                tracing::warn!(grant = %id, error = %last, reconnect = self.reconnects, "transfer interrupted; reconnecting to resume");
                tokio::time::sleep(backoff(self.reconnects)).await;
                let o = &self.opened;
                match connect_publisher(o.consumer.dialer, &o.order.peer, &o.held).await {
                    Ok((c, _)) => break Arc::from(c),
                    Err(e) if e.is_broken() && self.reconnects < retries => last = e,
                    Err(e) => return Err(self.interrupted(e)),
                }
            };
        }
        let in_flight = self
            .in_flight
            .take()
            .ok_or_else(|| FetchError::BadAnswer("the fetch ended without a transfer".into()))?;
        Ok(Received {
            opened: self.opened,
            in_flight,
            reconnects: self.reconnects,
        })
    }

    /// The error a fetch ends with; a broken transfer says how to resume it.
    fn interrupted(&self, err: FetchError) -> FetchError {
        let retries = self.opened.order.retries;
        match &self.in_flight {
            Some(f) if err.is_broken() => FetchError::Interrupted {
                cause: Box::new(err),
                received: f.incoming.received(),
                total: f.incoming.chunk_count(),
            },
            _ if err.is_broken() && retries > 0 => FetchError::Retried {
                cause: Box::new(err),
                retries,
            },
            _ => err,
        }
    }

    /// One call: a new transfer, or a resume of the one in flight, each
    /// missing range from its first chunk, over the order's streams.
    async fn attempt(&mut self) -> Result<(), FetchError> {
        let o = &self.opened;
        let g = o.held.grant.value();
        let streams = o.order.streams.max(1);
        // A resume knows its ranges now; a new transfer once its header
        // says how many chunks there are: over one stream it asks for all
        // of them, over more for chunk 0 only, and the streams then share
        // the rest.
        let planned = match &self.in_flight {
            Some(f) => {
                let shares = plan(&f.incoming.missing(), streams);
                if shares.is_empty() {
                    return Ok(()); // every chunk is verified already
                }
                Some(shares)
            }
            None => None,
        };
        let first = planned
            .as_ref()
            .and_then(|shares| shares.first()?.first().cloned());
        let resume = self
            .in_flight
            .as_ref()
            .zip(first.clone())
            .map(|(f, r)| Resume {
                transfer_index: f.transfer_index,
                from_chunk: r.start as u64,
                join: false,
            });
        let to_chunk = match &first {
            Some(r) => Some(r.end),
            None if streams > 1 => Some(1),
            None => None,
        };
        let mut stream = o
            .publisher
            .fetch(FetchAsk {
                grant_id: g.id.to_string(),
                resume,
                to_chunk: to_chunk.map(|e| e as u64),
            })
            .await?;
        let part = next_or_idle(&mut stream)
            .await
            .ok_or_else(|| FetchError::BadAnswer("the publisher sent nothing".into()))??;
        let FetchPart::Header(header) = part else {
            return Err(FetchError::BadAnswer(
                "the publisher's stream does not start with its header".into(),
            ));
        };
        // A resumed header passes only if it is the same manifest and chunk
        // list: the grant pins the manifest's hash, which pins the list.
        let (manifest, chunks) = verify_header(&header, &o.held, &o.keys)?;
        if self.in_flight.is_none() {
            record_seen(o.consumer.seen, &g.publisher, &g.dataset, manifest.value()).await;
        }
        if header.first_chunk != first.as_ref().map_or(0, |r| r.start as u64)
            || self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.transfer_index != header.transfer_index)
        {
            return Err(FetchError::BadAnswer(
                "the publisher resumed another transfer or chunk than asked for".into(),
            ));
        }
        if self.in_flight.is_none() {
            // Kept first: the publisher has counted this fetch already.
            o.consumer
                .grants
                .begin_fetch(&g.id, &header.encode(), &chunks)
                .map_err(|e| FetchError::Local(format!("keeping the transfer header: {e}")))?;
            let incoming = Incoming::start(
                &o.order.out,
                o.order.force,
                &manifest,
                chunks,
                g,
                o.consumer.packs.clone(),
                true,
            )?;
            o.progress.start(&incoming);
            self.in_flight = Some(InFlight {
                transfer_index: header.transfer_index,
                manifest: manifest.envelope().clone(),
                incoming: Arc::new(incoming),
            });
        }
        o.progress.report(true);
        let Some(flight) = &self.in_flight else {
            return Err(FetchError::BadAnswer("no transfer".into()));
        };
        let count = flight.incoming.chunk_count();
        let asked = to_chunk.unwrap_or(count).min(count);
        // A publisher before ranges (no end in its header) sends to the
        // end whatever was asked, and would record every join as a
        // resume: one stream then, carrying everything missing.
        let (shares, carries) = match header.end_chunk {
            0 if count > 0 => (plan(&flight.incoming.missing(), 1), count),
            end if end as usize == asked => (
                planned.unwrap_or_else(|| plan(&flight.incoming.missing(), streams)),
                asked,
            ),
            end => {
                return Err(FetchError::BadAnswer(format!(
                    "the publisher's stream ends at chunk {end}, not at {asked} as asked"
                )));
            }
        };
        let lanes = Lanes {
            grant: g.id.to_string(),
            transfer_index: flight.transfer_index,
            manifest_sha256: g.manifest_sha256,
            incoming: flight.incoming.clone(),
            progress: o.progress.clone(),
            cancel: CancellationToken::new(),
            streams,
        };
        lanes.run(o, shares, (stream, carries)).await
    }
}

/// The streams of one call, sharing the transfer.
#[derive(Clone)]
struct Lanes {
    grant: String,
    transfer_index: u64,
    manifest_sha256: Hash,
    incoming: Arc<Incoming>,
    progress: Arc<Progress>,
    /// Cancelled when a stream fails: the others stop too.
    cancel: CancellationToken,
    /// Streams of the transfer.
    streams: usize,
}

impl Lanes {
    /// Runs one stream per share: the first on the opened stream and
    /// connection, each other on a connection of its own, joining the
    /// transfer. The first failure stops every stream; a chunk that did
    /// not verify beats a broken connection as the reason.
    async fn run(
        self,
        o: &Opened<'_>,
        shares: Vec<Vec<Range<usize>>>,
        opened: (FetchStream, usize),
    ) -> Result<(), FetchError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut shares = shares.into_iter();
        let first = shares.next().unwrap_or_default();
        tasks.spawn(self.clone().share(o.publisher.clone(), first, Some(opened)));
        let mut outcome = Ok(());
        for share in shares {
            let conn = match o
                .consumer
                .dialer
                .dial_stream(&o.order.peer, o.order.streams)
                .await
            {
                Ok(c) if c.identity().public_key == o.publisher.identity().public_key => c,
                Ok(c) => {
                    outcome = Err(FetchError::BadAnswer(format!(
                        "{} is now node {}, not the publisher this transfer started with",
                        o.order.peer,
                        c.identity().node_id
                    )));
                    break;
                }
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            };
            tasks.spawn(self.clone().share(Arc::from(conn), share, None));
        }
        if outcome.is_err() {
            self.cancel.cancel();
        }
        while let Some(done) = tasks.join_next().await {
            let result = done.unwrap_or_else(|e| Err(FetchError::internal("a stream")(e)));
            if let Err(e) = result {
                self.cancel.cancel();
                // The first failure is the reason, unless it was a broken
                // connection and another stream found something worse.
                outcome = match outcome {
                    Ok(()) => Err(e),
                    Err(first) if first.is_broken() && !e.is_broken() => Err(e),
                    kept => kept,
                };
            }
        }
        outcome
    }

    /// One stream's share: its ranges in order, each asked for on `peer`;
    /// the first, or its start up to the chunk the opened stream carries
    /// up to, on `opened`, if given.
    async fn share(
        self,
        peer: Arc<dyn Peer>,
        ranges: Vec<Range<usize>>,
        mut opened: Option<(FetchStream, usize)>,
    ) -> Result<(), FetchError> {
        for mut range in ranges {
            if let Some((stream, carries)) = opened.take() {
                let end = carries.clamp(range.start, range.end);
                self.receive(stream, range.start..end).await?;
                range.start = end;
            }
            if range.is_empty() || self.cancel.is_cancelled() {
                continue;
            }
            let stream = self.join(peer.as_ref(), &range).await?;
            self.receive(stream, range).await?;
        }
        Ok(())
    }

    /// Opens another stream of the transfer for `range`; its header must
    /// be the transfer's. A join the publisher refuses (its session of the
    /// transfer ended: a restart, a minute without streams, too many
    /// joins) is a broken call: the transfer is resumed, its saved state
    /// kept.
    async fn join(&self, peer: &dyn Peer, range: &Range<usize>) -> Result<FetchStream, FetchError> {
        let ask = FetchAsk {
            grant_id: self.grant.clone(),
            resume: Some(Resume {
                transfer_index: self.transfer_index,
                from_chunk: range.start as u64,
                join: true,
            }),
            to_chunk: Some(range.end as u64),
        };
        let opened = tokio::select! {
            () = self.cancel.cancelled() => return Err(FetchError::CallerGone),
            opened = peer.fetch(ask) => opened,
        };
        let mut stream = opened.map_err(|e| match e.code {
            Code::InvalidArgument => FetchError::Peer(PeerError::new(
                Code::Unavailable,
                format!(
                    "the publisher did not take another stream ({}); resuming",
                    e.message
                ),
            )),
            _ => FetchError::Peer(e),
        })?;
        let header = tokio::select! {
            () = self.cancel.cancelled() => return Err(FetchError::CallerGone),
            header = next_or_idle(&mut stream) => header,
        };
        let same = match header {
            Some(Ok(FetchPart::Header(h))) => {
                h.transfer_index == self.transfer_index
                    && h.first_chunk == range.start as u64
                    && h.end_chunk == range.end as u64
                    && h.manifest
                        .is_some_and(|m| m.payload_hash() == self.manifest_sha256)
                    && h.chunk_hashes.len() == self.incoming.chunk_count()
                    && h.chunk_hashes
                        .iter()
                        .zip(self.incoming.chunks())
                        .all(|(a, b)| a.as_slice() == b)
            }
            Some(Ok(FetchPart::Chunk(_))) => false,
            Some(Err(e)) => return Err(e),
            None => false,
        };
        if !same {
            return Err(FetchError::BadAnswer(
                "a joined stream does not carry the transfer it joined".into(),
            ));
        }
        Ok(stream)
    }

    /// Receives `range` from `stream`; a blocking thread verifies and
    /// writes each chunk while the next arrives. Stops at the range's end
    /// (a publisher that sends past it is not read further).
    async fn receive(
        &self,
        mut stream: FetchStream,
        range: Range<usize>,
    ) -> Result<(), FetchError> {
        let depth = (WRITE_QUEUE / self.streams).max(1);
        let (queue, mut queued) = mpsc::channel::<(usize, Bytes)>(depth);
        let (incoming, progress) = (self.incoming.clone(), self.progress.clone());
        let writer = tokio::task::spawn_blocking(move || {
            while let Some((index, chunk)) = queued.blocking_recv() {
                incoming.chunk(index, &chunk)?;
                progress.record(&incoming);
            }
            Ok::<_, TransferError>(())
        });
        let mut outcome = Ok(());
        let mut next = range.start;
        while next < range.end {
            let part = tokio::select! {
                () = self.cancel.cancelled() => break,
                part = next_or_idle(&mut stream) => part,
            };
            match part {
                Some(Ok(FetchPart::Chunk(chunk))) => {
                    if queue.send((next, chunk)).await.is_err() {
                        break; // the writer stopped: its error says why
                    }
                    next += 1;
                }
                Some(Ok(FetchPart::Header(_))) => {
                    outcome = Err(FetchError::BadAnswer(
                        "a second header in the stream".into(),
                    ));
                    break;
                }
                Some(Err(e)) => {
                    outcome = Err(e);
                    break;
                }
                None => {
                    outcome = Err(FetchError::BadAnswer(format!(
                        "the publisher ended the stream of chunks {}..{} after {} of them",
                        range.start,
                        range.end,
                        next - range.start
                    )));
                    break;
                }
            }
            if self.progress.caller_gone() {
                outcome = Err(FetchError::CallerGone);
                break;
            }
            self.progress.report(false);
        }
        drop((queue, stream));
        // A chunk that did not verify beats a broken stream as the reason.
        writer
            .await
            .map_err(|e| FetchError::Local(format!("writing the content: {e}")))??;
        outcome
    }
}

/// Every chunk verified and written; the output not yet in place.
pub struct Received<'a> {
    opened: Opened<'a>,
    in_flight: InFlight,
    reconnects: u32,
}

impl<'a> Received<'a> {
    /// Puts the output in place (durable), remembers the dataset, records
    /// `TransferCompleted`, and signs and keeps the receipt.
    pub async fn finish(self) -> Result<Signed<'a>, FetchError> {
        let Self {
            opened,
            in_flight,
            reconnects,
        } = self;
        let InFlight {
            transfer_index,
            manifest,
            incoming,
        } = in_flight;
        let c = &opened.consumer;
        let g = opened.held.grant.value().clone();
        let incoming = Arc::try_unwrap(incoming)
            .map_err(|_| FetchError::Local("a stream of the transfer is still writing".into()))?;
        let verify = opened.order.verify_sha256;
        let received = tokio::task::spawn_blocking(move || incoming.finish(verify))
            .await
            .map_err(FetchError::internal("finishing the output"))??;
        if let Output::Object(o) = &opened.order.out {
            // Every chunk matched: the object may appear now. A failed
            // upload leaves the fetch to resume (from the sealed pack).
            check_object_output(o, opened.order.force).await?;
            o.bucket
                .upload_file(&o.url.key, &received.pack)
                .await
                .map_err(|e| FetchError::Local(format!("writing {}: {e}", o.url)))?;
        }
        opened.progress.report(true);
        c.grants
            .complete_fetch(&g.id, &g.dataset, &manifest, &received.chunks)
            .map_err(FetchError::book("recording the received dataset"))?;

        // Both sides record what was received.
        let mut completed = g.entry(EntryKind::TransferCompleted);
        completed.object_hash = Some(received.content_sha256);
        completed.transfer = Some(transfer_index);
        completed.detail = format!("{} bytes", received.bytes);
        c.ledger
            .append(completed)
            .await
            .map_err(FetchError::ledger("recording the transfer"))?;
        let receipt = Receipt {
            grant: g.id.clone(),
            dataset: g.dataset.clone(),
            content_sha256: received.content_sha256,
            bytes: received.bytes,
            received_at_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
            consumer_checkpoint: c
                .ledger
                .latest()
                .map(|cp| cp.note.clone())
                .unwrap_or_default(),
            consumer: c.identity.node_id.clone(),
            transfer_index,
            chunk_list_sha256: Some(received.chunk_list_sha256),
            content_verified: received.content_verified,
        };
        let envelope = receipt.sign(c.key);
        // Kept whatever happens next: it is what an auditor is shown.
        c.grants
            .keep_receipt(&g.id, transfer_index, &envelope)
            .map_err(FetchError::book("keeping the receipt"))?;
        Ok(Signed {
            opened,
            grant: g,
            transfer_index,
            received,
            envelope,
            reconnects,
        })
    }
}

/// The content is in place and the receipt signed and kept.
pub struct Signed<'a> {
    opened: Opened<'a>,
    grant: Grant,
    /// The publisher's `TransferStarted` entry the receipt closes.
    transfer_index: u64,
    received: super::transfer::Received,
    envelope: Envelope,
    reconnects: u32,
}

impl Signed<'_> {
    /// Hands the receipt to the publisher and records its answer.
    pub async fn deliver(self) -> Result<Fetched, FetchError> {
        let o = &self.opened;
        let (own, publisher_index) = send_receipt(
            o.consumer.ledger,
            o.publisher.as_ref(),
            &o.keys,
            &self.grant,
            self.transfer_index,
            &self.envelope,
        )
        .await
        .map_err(|e| FetchError::ReceiptNotTaken {
            out: self.received.out.clone(),
            cause: Box::new(e),
        })?;
        Ok(Fetched {
            dataset_id: self.grant.dataset.to_string(),
            bytes: self.received.bytes,
            content_sha256: self.received.content_sha256,
            ledger_index: own,
            publisher_ledger_index: publisher_index,
            resumed_chunks: o.progress.resumed_chunks.load(Ordering::Relaxed),
            reconnects: self.reconnects,
            chunk_list_sha256: self.received.chunk_list_sha256,
            content_verified: self.received.content_verified,
            streams: o.order.streams,
        })
    }
}

/// Fetches as `consumer`, through every state.
pub async fn fetch(
    consumer: Consumer<'_>,
    order: FetchOrder,
    progress: Arc<Progress>,
) -> Result<Fetched, FetchError> {
    Opened::open(consumer, order, progress)
        .await?
        .restore()
        .await?
        .receive()
        .await?
        .finish()
        .await?
        .deliver()
        .await
}

/// Submits a receipt this node signed (closing the publisher's transfer
/// entry `transfer`) to the grant's publisher and records it
/// (`ReceiptRecorded`, naming the transfer and the publisher's entry) with
/// the publisher's checkpoint that covers it (`PeerCheckpointSeen`). The
/// publisher answers a receipt it already has with its first entry, so
/// this may be repeated. Returns this node's entry and the publisher's.
async fn send_receipt(
    ledger: &Ledger,
    publisher: &dyn Peer,
    keys: &LogKeys,
    g: &Grant,
    transfer: u64,
    envelope: &Envelope,
) -> Result<(u64, u64), FetchError> {
    let answer = publisher.submit_receipt(envelope).await?;
    // The publisher's checkpoint that covers the receipt, verified, goes
    // into this ledger: an auditor can later prove the publisher's log
    // still extends it (no fork, no rewritten history).
    let witnessed = keys.verify_checkpoint(&answer.checkpoint).map_err(|e| {
        FetchError::BadAnswer(format!("the publisher's checkpoint does not verify: {e}"))
    })?;
    if witnessed.checkpoint.size <= answer.ledger_index {
        return Err(FetchError::BadAnswer(
            "the publisher's checkpoint does not cover its receipt entry".into(),
        ));
    }
    let mut recorded = g.entry(EntryKind::ReceiptRecorded);
    recorded.object_hash = Some(envelope.payload_hash());
    recorded.transfer = Some(transfer);
    recorded.peer_entry = Some(answer.ledger_index);
    recorded.detail = format!("publisher entry {}", answer.ledger_index);
    let mut seen = g.entry(EntryKind::PeerCheckpointSeen);
    seen.object_hash = Some(sha256(witnessed.note.as_bytes()));
    seen.detail = witnessed.note.clone();
    let own = ledger
        .append(recorded)
        .await
        .map_err(FetchError::ledger("recording the receipt"))?;
    ledger
        .append(seen)
        .await
        .map_err(FetchError::ledger("recording the publisher's checkpoint"))?;
    Ok((own.index, answer.ledger_index))
}

/// A receipt submitted again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resent {
    /// The publisher's `TransferStarted` entry the receipt closes.
    pub transfer_index: u64,
    /// This node's `ReceiptRecorded` entry.
    pub ledger_index: u64,
    /// The publisher's.
    pub publisher_ledger_index: u64,
}

/// Submits again every receipt this node keeps for a held grant that its
/// ledger does not record as taken by the publisher (a publisher that
/// stopped between the last chunk and the receipt). Returns how many are
/// kept and those resent.
pub async fn resend_receipts(
    consumer: &Consumer<'_>,
    grant: &GrantId,
    peer: &str,
) -> Result<(u64, Vec<Resent>), FetchError> {
    let held = consumer.held(grant)?;
    let g = held.grant.value().clone();
    let kept = consumer
        .grants
        .objects(grant)
        .map_err(FetchError::book("reading the kept receipts"))?
        .receipts;
    let recorded = |hash: Hash| {
        let q = Query {
            grant: Some(grant.to_string()),
            kind: Some(EntryKind::ReceiptRecorded),
            ..Query::default()
        };
        consumer
            .ledger
            .find(&q, |e| e.draft.object_hash == Some(hash))
            .map(|e| e.is_some())
            .map_err(FetchError::ledger("reading the ledger"))
    };
    let count = kept.len() as u64;
    let mut pending = Vec::new();
    for (transfer, envelope) in kept {
        if !recorded(envelope.payload_hash())? {
            pending.push((transfer, envelope));
        }
    }
    let mut resent = Vec::new();
    if pending.is_empty() {
        return Ok((count, resent));
    }
    let (publisher, keys) = connect_publisher(consumer.dialer, peer, &held).await?;
    for (transfer, envelope) in pending {
        let (own, publisher_ledger_index) = send_receipt(
            consumer.ledger,
            publisher.as_ref(),
            &keys,
            &g,
            transfer,
            &envelope,
        )
        .await?;
        resent.push(Resent {
            transfer_index: transfer,
            ledger_index: own,
            publisher_ledger_index,
        });
    }
    Ok((count, resent))
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
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::Aborted,
            Code::Internal,
        ] {
            assert!(FetchError::Peer(PeerError::new(code, "x")).is_broken());
        }
        for code in [
            Code::PermissionDenied,
            Code::NotFound,
            Code::InvalidArgument,
            Code::DataLoss,
            Code::FailedPrecondition,
        ] {
            assert!(!FetchError::Peer(PeerError::new(code, "x")).is_broken());
        }
        assert!(FetchError::Idle.is_broken());
        assert!(!FetchError::Local("disk full".into()).is_broken());
        assert!(!FetchError::BadAnswer("chunk 3 does not match".into()).is_broken());
    }
}
