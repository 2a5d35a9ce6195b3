//! The publisher's side of a transfer: a fetch is served to the grantee of
//! a valid, unrevoked grant under its fetch count (a new fetch is counted,
//! durably, before any data flows; a resumed one is recorded but not
//! counted), revocation and the grant's window are checked again before
//! every chunk, and the consumer's receipt is checked (its consumer
//! checkpoint too), recorded once and kept next to the grant.
//!
//! A transfer may run over several streams at once, each asking for a
//! range of chunks: the first opens it (a new fetch, or a resume), and
//! the others *join* it. A join is neither recorded nor counted; it is
//! allowed only while the transfer's session is live on this node (opened
//! within [`JOIN_WINDOW`] or a stream of it still running), and a session
//! sends at most twice the dataset's chunks over all its streams, so what
//! a grantee can make this node send stays bounded by the fetches and
//! resumes the ledger records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Publisher;
use super::book::{BookError, GrantBook};
use super::grant::{Grant, GrantId};
use super::receipt::ConsumerCheckpointError;
use crate::clock::Clock;
use crate::dataset::blob::BlobStore;
use crate::dataset::catalog::Dataset;
use crate::envelope::{Envelope, Verified};
use crate::identity::PeerIdentity;
use crate::ledger::entry::{Entry, EntryDraft, EntryKind};
use crate::ledger::{LedgerError, Query};
use crate::peer::{FetchAsk, FetchHeader, FetchPart, ReceiptTaken, Resume};
use crate::runtime::metrics::Metrics;

/// Resumed transfers one grant may have at most. A resume is not counted
/// as a fetch, so this bounds what a grantee can make the publisher send.
pub const MAX_RESUMES: usize = 32;

/// How long after it was opened a transfer's session takes joins even
/// with no stream running.
pub const JOIN_WINDOW: Duration = Duration::from_secs(60);

/// Streams one transfer session may run at once.
pub const MAX_SESSION_STREAMS: usize = 16;

/// Joins one transfer session takes at most (each sends the whole chunk
/// list again in its header); past it, the consumer resumes, which is
/// recorded and opens a session of its own.
pub const MAX_SESSION_JOINS: u64 = 4 * MAX_SESSION_STREAMS as u64;

/// The live streams of one transfer, opened by a fetch or a resume.
pub struct Session {
    grant: String,
    opened: Instant,
    streams: AtomicUsize,
    /// Chunks this session may still send, over all its streams.
    budget: AtomicU64,
    /// Joins it may still take.
    joins: AtomicU64,
}

impl Session {
    /// Takes one chunk of the session's budget; `false` when it is spent.
    fn take(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    }

    fn live(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 0 || self.opened.elapsed() < JOIN_WINDOW
    }
}

/// The transfer sessions of this node, by `TransferStarted` index.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<u64, Arc<Session>>>,
}

impl Sessions {
    /// Opens a session of transfer `t` of `grant` (replacing any earlier
    /// one of it: a resume starts afresh).
    fn open(&self, t: u64, grant: &GrantId, chunk_count: usize) -> Arc<Session> {
        let session = Arc::new(Session {
            grant: grant.to_string(),
            opened: Instant::now(),
            streams: AtomicUsize::new(0),
            budget: AtomicU64::new(2 * chunk_count as u64),
            joins: AtomicU64::new(MAX_SESSION_JOINS),
        });
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|_, s| s.live());
        live.insert(t, session.clone());
        session
    }

    /// The live session of transfer `t` of `grant`, if there is one that
    /// takes another join.
    fn join(&self, t: u64, grant: &GrantId) -> Option<Arc<Session>> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(&t)
            .filter(|s| {
                s.grant == grant.as_str()
                    && s.live()
                    && s.joins
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |j| j.checked_sub(1))
                        .is_ok()
            })
            .cloned()
    }

    /// Sessions live now.
    pub fn len(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.values().filter(|s| s.live()).count()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts a running stream of a session until dropped.
struct StreamGuard(Arc<Session>);

impl StreamGuard {
    fn new(session: Arc<Session>) -> Result<Self, ServeError> {
        let n = session.streams.fetch_add(1, Ordering::AcqRel);
        let guard = Self(session);
        if n >= MAX_SESSION_STREAMS {
            return Err(ServeError::BadRequest(format!(
                "this transfer already has {MAX_SESSION_STREAMS} streams running, the most allowed"
            )));
        }
        Ok(guard)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a fetch or a receipt was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or names something it may not.
    #[error("{0}")]
    BadRequest(String),
    /// No such grant or dataset here.
    #[error("{0}")]
    NotFound(String),
    /// Refused (stolen, expired, revoked, used up): recorded as
    /// `AccessDenied` where a fetch was refused.
    #[error("{0}")]
    Refused(String),
    /// The chunk store (an object store) could not be read; the detail
    /// is in the publisher's log, not told to peers.
    #[error("the publisher's chunk store is unavailable; the transfer can resume later")]
    StoreUnavailable,
    /// A chunk of the dataset is missing in this node's chunk store.
    #[error("chunk {chunk} of dataset {dataset} is missing in the publisher's chunk store")]
    MissingChunk {
        /// The chunk's index.
        chunk: usize,
        /// The dataset.
        dataset: String,
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
    /// This node has no checkpoint to answer with.
    #[error("no checkpoint")]
    NoCheckpoint,
    /// The receipt's consumer checkpoint does not verify: the receipt is
    /// refused and nothing is recorded.
    #[error("receipt refused: {0}")]
    ConsumerCheckpoint(#[source] ConsumerCheckpointError),
    /// A per-peer limit refused the stream.
    #[error(transparent)]
    Limited(super::limits::Limited),
}

fn ledger(context: &'static str) -> impl FnOnce(LedgerError) -> ServeError {
    move |source| ServeError::Ledger { context, source }
}

fn book(context: &'static str) -> impl FnOnce(BookError) -> ServeError {
    move |source| ServeError::Book { context, source }
}

/// The parts of a transfer as they are sent: the header, then chunks; an
/// `Err` ends the stream.
pub type Parts = mpsc::Receiver<Result<FetchPart, ServeError>>;

/// Counts the ledger entries of `kind` naming `grant`, up to `cap`.
fn count(
    p: &Publisher<'_>,
    grant: &GrantId,
    kind: EntryKind,
    cap: usize,
) -> Result<usize, ServeError> {
    let q = Query {
        grant: Some(grant.to_string()),
        kind: Some(kind),
        ..Default::default()
    };
    p.ledger.count(&q, cap).map_err(ledger("counting fetches"))
}

/// `from` as the first chunk to send of a dataset of `count` chunks
/// (`count` itself: none left), or why not, for a request to `what`.
fn chunk_index(from: u64, count: usize, what: &str) -> Result<usize, ServeError> {
    usize::try_from(from)
        .ok()
        .filter(|f| *f <= count)
        .ok_or_else(|| {
            ServeError::BadRequest(format!(
                "cannot {what} from chunk {from}: the dataset has {count} chunks"
            ))
        })
}

/// Whether ledger entry `t` is a `TransferStarted` of grant `grant`.
fn is_transfer_of(p: &Publisher<'_>, t: u64, grant: &GrantId) -> Result<bool, ServeError> {
    let started = p
        .ledger
        .entry(t)
        .map_err(ledger("reading the transfer"))?
        .and_then(|raw| Entry::decode(&raw).ok());
    Ok(started.is_some_and(|e| {
        e.draft.kind == EntryKind::TransferStarted
            && e.draft.grant.as_deref() == Some(grant.as_str())
    }))
}

/// Whether `receipt` (a `ReceiptRecorded` of this node) closes transfer
/// `t`: its `transfer` field names it. A version 1 entry, written before
/// entries carried typed references, names it only in its detail text
/// ("… bytes received; transfer entry T"); that text is matched for v1
/// entries alone, so ledgers written by older nodes keep working.
fn closes(receipt: &Entry, t: u64) -> bool {
    if receipt.version.has_references() {
        receipt.draft.transfer == Some(t)
    } else {
        receipt
            .draft
            .detail
            .ends_with(&format!("; transfer entry {t}"))
    }
}

/// The `ReceiptRecorded` entry that closes transfer `t` of `grant`, if
/// one was recorded (see [`closes`]).
fn receipt_of(p: &Publisher<'_>, grant: &GrantId, t: u64) -> Result<Option<Entry>, ServeError> {
    let q = Query {
        grant: Some(grant.to_string()),
        kind: Some(EntryKind::ReceiptRecorded),
        ..Default::default()
    };
    p.ledger
        .find(&q, |e| closes(e, t))
        .map_err(ledger("looking for the receipt"))
}

impl Publisher<'_> {
    /// A grant this node issued.
    fn issued(&self, id: &GrantId) -> Result<Arc<Verified<Grant>>, ServeError> {
        self.grants
            .issued_grant(id)
            .map_err(book("reading an issued grant"))?
            .ok_or_else(|| ServeError::NotFound(format!("no grant {id} issued by this node")))
    }

    /// Records a refused fetch (stolen, expired, revoked, used up) and
    /// returns the refusal.
    async fn refuse(&self, who: &PeerIdentity, grant: &Grant, why: String) -> ServeError {
        let mut draft = EntryDraft::new(EntryKind::AccessDenied);
        draft.parties = vec![self.identity.node_id.clone(), who.node_id.clone()];
        draft.dataset = Some(grant.dataset.to_string());
        draft.grant = Some(grant.id.to_string());
        draft.detail = format!("fetch refused: {why}").chars().take(2000).collect();
        if let Err(source) = self.ledger.append(draft).await {
            return ServeError::Ledger {
                context: "recording a refused fetch",
                source,
            };
        }
        self.metrics.fetch_refused();
        tracing::info!(grant = %grant.id, by = %who.node_id, reason = %why, "fetch refused");
        ServeError::Refused(why)
    }

    /// Opens the transfer a fetch serves: a new one (checked against the
    /// fetch count and recorded before any data flows), a resumed one of
    /// the same grant (recorded, not counted), or another stream of one
    /// whose session is live (neither). Returns the `TransferStarted`
    /// index, the first chunk to send and the session.
    async fn open_transfer(
        &self,
        who: &PeerIdentity,
        g: &Grant,
        resume: Option<Resume>,
        chunk_count: usize,
    ) -> Result<(u64, usize, Arc<Session>), ServeError> {
        let id = &g.id;
        if let Some(r) = resume.filter(|r| r.join) {
            let t = r.transfer_index;
            let session = self.sessions.join(t, id).ok_or_else(|| {
                ServeError::BadRequest(format!(
                    "transfer entry {t} of grant {id} has no live session here to join (or it took {MAX_SESSION_JOINS} joins); resume it instead"
                ))
            })?;
            return Ok((t, chunk_index(r.from_chunk, chunk_count, "join")?, session));
        }
        // Counting and recording happen under one lock, so parallel requests
        // cannot all count before any records (max_fetches, resume cap).
        let _one = self.opening.lock().await;
        let Some(resume) = resume else {
            if let Some(max) = g.max_fetches {
                let used = count(self, id, EntryKind::TransferStarted, max as usize + 1)?;
                if used >= max as usize {
                    let why = format!("grant {id} allowed {max} fetch(es), all used");
                    return Err(self.refuse(who, g, why).await);
                }
            }
            let transfer = self
                .ledger
                .append(g.entry(EntryKind::TransferStarted))
                .await
                .map_err(ledger("counting the fetch"))?;
            self.metrics.transfer("started");
            let session = self.sessions.open(transfer.index, id, chunk_count);
            return Ok((transfer.index, 0, session));
        };
        let t = resume.transfer_index;
        if !is_transfer_of(self, t, id)? {
            return Err(ServeError::BadRequest(format!(
                "ledger entry {t} is not a transfer of grant {id}; fetch without resuming"
            )));
        }
        let from = chunk_index(resume.from_chunk, chunk_count, "resume")?;
        // A completed transfer (its receipt recorded) is not resumed: that
        // would be a free new fetch.
        if receipt_of(self, id, t)?.is_some() {
            let why = format!("transfer entry {t} of grant {id} was completed; fetch anew");
            return Err(self.refuse(who, g, why).await);
        }
        if count(self, id, EntryKind::TransferResumed, MAX_RESUMES + 1)? >= MAX_RESUMES {
            let why = format!(
                "grant {id}'s transfers were resumed {MAX_RESUMES} times, the most allowed"
            );
            return Err(self.refuse(who, g, why).await);
        }
        let mut draft = g.entry(EntryKind::TransferResumed);
        draft.transfer = Some(t);
        draft.detail = format!("transfer entry {t} from chunk {from}");
        self.ledger
            .append(draft)
            .await
            .map_err(ledger("recording the resume"))?;
        self.metrics.transfer("resumed");
        Ok((t, from, self.sessions.open(t, id, chunk_count)))
    }

    /// Serves a fetch to `who`: a dataset to the grantee of a valid,
    /// unrevoked grant under its fetch count. Revocation is checked again
    /// before every chunk.
    pub async fn serve(&self, who: &PeerIdentity, ask: FetchAsk) -> Result<Parts, ServeError> {
        let id: GrantId = ask
            .grant_id
            .parse()
            .map_err(|e: super::grant::GrantError| ServeError::BadRequest(e.to_string()))?;
        let g = self.issued(&id)?.value().clone();
        if let Err(e) = g.check_use(&who.node_id, self.clock.now_ms()) {
            return Err(self.refuse(who, &g, e.to_string()).await);
        }
        if self
            .grants
            .is_revoked(&id)
            .map_err(book("checking revocation"))?
        {
            return Err(self.refuse(who, &g, format!("grant {id} is revoked")).await);
        }
        let dataset = self.catalog.get(&g.dataset).ok_or_else(|| {
            ServeError::NotFound(format!("dataset {} is no longer published here", g.dataset))
        })?;
        // Up to the end asked for, or the dataset's end if that is sooner.
        let count = dataset.chunks.len();
        let end = ask.to_chunk.map_or(count, |e| {
            usize::try_from(e).unwrap_or(usize::MAX).min(count)
        });
        // An empty range (or one the wrong way round) is refused before
        // anything is recorded; a join must ask for at least one chunk.
        if let Some(r) = &ask.resume {
            let from = chunk_index(r.from_chunk, count, if r.join { "join" } else { "resume" })?;
            if from > end || (r.join && from == end) {
                return Err(ServeError::BadRequest(format!(
                    "cannot send chunks {from}..{end}: the range is empty"
                )));
            }
        }
        // Its place among the grantee's streams, and the memory it may
        // hold (its read-ahead, one queued and one being sent), before
        // anything is recorded.
        let ahead = self.blobs.parallel_requests().clamp(1, MAX_READ_AHEAD);
        let chunk_size = dataset.manifest.value().chunk_size as usize;
        let slot = self
            .limits
            .open_stream(&who.node_id, (ahead + 2) * chunk_size)
            .map_err(|l| {
                self.metrics.peer_limited(l.limit);
                ServeError::Limited(l)
            })?;
        let (transfer_index, first, session) =
            self.open_transfer(who, &g, ask.resume, count).await?;
        let stream = StreamGuard::new(session)?;

        // One message queued at most (another being read, one being sent):
        // HTTP/2 flow control does the rest, so a stream costs the server
        // a few chunks of memory, however slow its reader and however many
        // streams a transfer runs.
        let (tx, rx) = mpsc::channel(1);
        let header = FetchPart::Header(FetchHeader {
            manifest: Some(dataset.manifest.envelope().clone()),
            chunk_hashes: dataset.chunks.iter().map(|h| h.to_vec()).collect(),
            transfer_index,
            first_chunk: first as u64,
            end_chunk: end as u64,
        });
        let sender = ChunkSender {
            grants: self.grants.clone(),
            clock: self.clock.clone(),
            blobs: self.blobs.clone(),
            metrics: self.metrics.clone(),
            grant: g,
            dataset,
            stream,
            ahead,
            _slot: slot,
        };
        tokio::spawn(async move {
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            if let Err(e) = sender.send(first..end, &tx).await {
                sender.metrics.transfer("failed");
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// Checks the consumer's receipt (signed by `who`, for one of this
    /// grant's transfers, of the dataset's content, its consumer
    /// checkpoint empty or signed by `who`'s key: see
    /// [`super::receipt::verify_consumer_checkpoint`]), records it and
    /// keeps it next to the grant, once: a receipt submitted again gets
    /// the first answer.
    pub async fn take_receipt(
        &self,
        who: &PeerIdentity,
        env: Envelope,
    ) -> Result<ReceiptTaken, ServeError> {
        let receipt = super::receipt::verify_receipt(env, &who.public_key)
            .map_err(|e| ServeError::BadRequest(e.to_string()))?;
        let rc = receipt.value();
        super::receipt::verify_consumer_checkpoint(&rc.consumer_checkpoint, &who.public_key)
            .map_err(ServeError::ConsumerCheckpoint)?;
        let grant = self.issued(&rc.grant)?;
        let g = grant.value();
        if g.grantee != who.node_id || g.dataset != rc.dataset {
            return Err(ServeError::BadRequest(
                "the receipt does not match its grant".into(),
            ));
        }
        let dataset = self.catalog.get(&g.dataset).ok_or_else(|| {
            ServeError::NotFound("the dataset is no longer published here".into())
        })?;
        let m = dataset.manifest.value();
        if m.content_sha256 != rc.content_sha256
            || m.size != rc.bytes
            || rc
                .chunk_list_sha256
                .is_some_and(|h| h != m.chunk_list_sha256)
        {
            return Err(ServeError::BadRequest(
                "the receipt's content hash, chunk list hash or size is not the dataset's".into(),
            ));
        }
        // It must close one of this grant's transfers, once.
        let t = rc.transfer_index;
        if !is_transfer_of(self, t, &g.id)? {
            return Err(ServeError::BadRequest(format!(
                "ledger entry {t} is not a transfer of grant {}",
                g.id
            )));
        }
        let _one = self.opening.lock().await;
        if let Some(done) = receipt_of(self, &g.id, t)? {
            // Already recorded (a retried submission): the same answer.
            // The very receipt recorded is kept again (the same bytes), in
            // case it was not: keeping failed after the append, or the
            // node recorded it before publishers kept receipts.
            if done.draft.object_hash == Some(receipt.envelope().payload_hash()) {
                self.grants
                    .keep_taken_receipt(&g.id, t, receipt.envelope())
                    .map_err(book("keeping the receipt"))?;
            }
            let cp = self.ledger.latest().ok_or(ServeError::NoCheckpoint)?;
            return Ok(ReceiptTaken {
                ledger_index: done.index,
                checkpoint: cp.note.clone().into_bytes(),
            });
        }
        let mut draft = g.entry(EntryKind::ReceiptRecorded);
        draft.object_hash = Some(receipt.envelope().payload_hash());
        draft.transfer = Some(t);
        draft.detail = format!(
            "{} bytes received; transfer entry {}",
            rc.bytes, rc.transfer_index
        );
        let appended = self
            .ledger
            .append(draft)
            .await
            .map_err(ledger("recording a receipt"))?;
        // Kept once recorded, so every kept receipt is in the ledger; if
        // keeping fails, the consumer's retry (`dsnode receipts resend`)
        // keeps it.
        self.grants
            .keep_taken_receipt(&g.id, t, receipt.envelope())
            .map_err(book("keeping the receipt"))?;
        Ok(ReceiptTaken {
            ledger_index: appended.index,
            checkpoint: appended.checkpoint.note.clone().into_bytes(),
        })
    }
}

/// Chunk reads a stream keeps in flight at most (memory: this many chunks
/// a stream).
const MAX_READ_AHEAD: usize = 4;

/// Sends a transfer's chunks, in a task of its own.
struct ChunkSender {
    grants: Arc<GrantBook>,
    clock: Clock,
    blobs: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
    grant: Grant,
    dataset: Arc<Dataset>,
    /// The session's count of this stream, and its budget.
    stream: StreamGuard,
    /// Chunk reads kept in flight.
    ahead: usize,
    /// The stream's place among its peer's, and its reserved memory.
    _slot: super::limits::StreamSlot,
}

impl ChunkSender {
    /// Sends the chunks of `range`, checking revocation and the grant's
    /// window before each. `Err` ends the stream; a consumer that went
    /// away ends it quietly.
    async fn send(
        &self,
        range: std::ops::Range<usize>,
        tx: &mpsc::Sender<Result<FetchPart, ServeError>>,
    ) -> Result<(), ServeError> {
        let (grant, dataset) = (&self.grant, &self.dataset);
        let id = &grant.id;
        // Reads run ahead of sending by as many chunks as the store takes
        // requests at once (one for a disk, a few for an object store,
        // where each read is a round trip); each chunk is still sent only
        // after the grant is checked for it.
        let ahead = self.ahead;
        let mut reads = std::collections::VecDeque::new();
        let end = range.end.min(dataset.chunks.len());
        let mut next = range.start;
        for index in range.start..end {
            while next < end && next < index + ahead {
                let blobs = self.blobs.clone();
                let h = dataset.chunks[next];
                reads.push_back(tokio::task::spawn_blocking(move || {
                    blobs.get_unverified(&h)
                }));
                next += 1;
            }
            let Some(read) = reads.pop_front() else { break };
            if !self.stream.0.take() {
                return Err(ServeError::Refused(format!(
                    "this transfer session of grant {id} has sent twice the dataset's chunks; resume the transfer to go on"
                )));
            }
            if self
                .grants
                .is_revoked(id)
                .map_err(book("checking revocation"))?
            {
                return Err(ServeError::Refused(format!(
                    "grant {id} was revoked during the transfer"
                )));
            }
            if let Err(e) = grant.check_use(&grant.grantee, self.clock.now_ms()) {
                return Err(ServeError::Refused(format!("{e} (during the transfer)")));
            }
            // Not hashed here: the consumer checks every chunk against the
            // signed chunk list and names the one that does not match.
            let chunk = match read.await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Err(crate::dataset::blob::BlobError::Object(e))) => {
                    tracing::error!(dataset = %dataset.id, chunk = index, error = %e, "could not read a chunk from the chunk store");
                    return Err(ServeError::StoreUnavailable);
                }
                _ => {
                    tracing::error!(dataset = %dataset.id, chunk = index, "chunk missing in this node's chunk store");
                    return Err(ServeError::MissingChunk {
                        chunk: index,
                        dataset: dataset.id.to_string(),
                    });
                }
            };
            let bytes = chunk.len() as u64;
            if tx.send(Ok(FetchPart::Chunk(chunk.into()))).await.is_err() {
                return Ok(());
            }
            self.metrics.served(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::EntryVersion;

    fn receipt(version: EntryVersion, transfer: Option<u64>, detail: &str) -> Entry {
        let mut draft = EntryDraft::new(EntryKind::ReceiptRecorded);
        draft.transfer = transfer;
        draft.detail = detail.into();
        let mut e = Entry::new(9, 0, draft);
        e.version = version;
        e
    }

    #[test]
    fn a_receipt_closes_the_transfer_its_typed_field_names() {
        let e = receipt(
            EntryVersion::V2,
            Some(3),
            "12 bytes received; transfer entry 3",
        );
        assert!(closes(&e, 3));
        assert!(!closes(&e, 13));
        // The detail text is not read from version 2 entries.
        let e = receipt(
            EntryVersion::V2,
            Some(4),
            "12 bytes received; transfer entry 3",
        );
        assert!(closes(&e, 4) && !closes(&e, 3));
        let e = receipt(
            EntryVersion::V2,
            None,
            "12 bytes received; transfer entry 3",
        );
        assert!(!closes(&e, 3));
    }

    #[test]
    fn a_version_1_receipt_is_matched_by_its_detail() {
        let e = receipt(
            EntryVersion::V1,
            None,
            "12 bytes received; transfer entry 3",
        );
        assert!(closes(&e, 3));
        assert!(!closes(&e, 13) && !closes(&e, 2));
        let e = receipt(
            EntryVersion::V1,
            None,
            "12 bytes received; transfer entry 13",
        );
        assert!(closes(&e, 13) && !closes(&e, 3));
    }
}
