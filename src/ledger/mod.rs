//! The node's verifiable ledger: an append-only RFC 6962 Merkle log of
//! what happened, with signed checkpoints, proofs and auditor queries.
//!
//! - [`entry`]: the entry format (versioned, deterministic, capped).
//! - [`merkle`]: hashing, proof generation from stored subtrees, and pure
//!   offline proof verification.
//! - [`note`]: C2SP signed notes and `tlog-checkpoint` checkpoints.
//! - [`keys`]: the log's key history (rotations, retired keys).
//! - [`store`]: the [`store::LedgerStore`] trait and its sled implementation
//!   (entries in blocks of 64, packed index postings).
//! - [`writer`]: builds group commits from entries.
//! - [`verify`]: the full check of a stored log (start-up, `audit verify`).
//! - [`query`]: auditor queries over the indices, paginated.
//!
//! One sequencer thread owns the writer. Appends queue on a channel; the
//! sequencer takes everything queued (up to `max_batch`) as one group
//! commit: entries, hashes, index keys, the new head and a checkpoint
//! signed over it go into one atomic batch, which is fsynced before any
//! appender of the batch is answered. So many concurrent appenders share
//! one fsync and one signature, and a crash leaves a prefix of whole
//! batches, each with its checkpoint.

pub mod entry;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod query;
pub mod store;
pub mod verify;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::digest::Hash;
use crate::identity::NodeId;
use entry::{Entry, EntryDraft, EntryError};
use keys::{KeyError, LogKeys};
use merkle::ProofError;
use note::{NoteError, NoteSigner, NoteVerifier, SignedCheckpoint};
pub use query::{Page, Query};
use store::{LedgerStore, SledStore, StoreError, StoredTree};
pub use verify::{VerifyReport, verify_since, verify_store};
use writer::Writer;

/// Largest page a query or range read returns.
pub const MAX_PAGE: usize = 1000;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry was refused.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A proof could not be made.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A checkpoint or note was refused.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The log's key history is broken, or the key is not its current one.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The stored log does not match its hashes or signed checkpoints.
    #[error("ledger tampered at index {index}: {detail}")]
    Tampered {
        /// The first index found bad.
        index: u64,
        /// What does not match.
        detail: String,
    },
    /// A stored checkpoint is bad (wrong signature, or a root that the
    /// entries do not produce).
    #[error("ledger checkpoint of size {size} is bad: {detail}")]
    BadCheckpoint {
        /// The checkpoint's tree size.
        size: u64,
        /// What is wrong.
        detail: String,
    },
    /// The sequencer refused to sign a checkpoint that does not extend the
    /// last one it signed.
    #[error("refusing to sign a fork: {0}")]
    Fork(String),
    /// The commit holding this append failed (disk full, I/O error); the
    /// append is not acknowledged.
    #[error("ledger commit failed: {0}")]
    CommitFailed(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// An earlier commit failed; appends are refused until restart.
    #[error(
        "this node's ledger takes no appends since a write to its storage failed; its operator must fix the storage and restart it"
    )]
    Failed,
    /// An earlier commit failed for lack of space; appends are refused
    /// until the ledger finds room again and re-opens its store (by
    /// itself, without a restart).
    #[error("this node's storage is full; its ledger takes appends again once space is freed")]
    Full,
    /// The store is being re-opened after its storage filled up (or
    /// re-opening it failed and is retried).
    #[error("this node's ledger is re-opening its store after its storage filled up")]
    Reopening,
    /// A request is out of range.
    #[error("{0}")]
    Range(String),
    /// The ledger is shutting down.
    #[error("the ledger is closed")]
    Closed,
}

/// Tuning of the sequencer.
#[derive(Clone, Copy, Debug)]
pub struct LedgerOptions {
    /// Most entries in one group commit.
    pub max_batch: usize,
    /// Appends that may wait in the queue (back-pressure beyond that).
    pub queue: usize,
    /// How often a ledger whose storage filled up probes for room again
    /// (see [`LedgerError::Full`]).
    pub probe_every: std::time::Duration,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            queue: 16_384,
            probe_every: std::time::Duration::from_secs(1),
        }
    }
}

/// An acknowledged append: durable, and covered by `checkpoint`.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The entry's index.
    pub index: u64,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// The checkpoint signed over the batch that holds it.
    pub checkpoint: Arc<SignedCheckpoint>,
}

use store::Record;

/// An append waiting in a batch: the entry, its records, its appender.
type Pending = (
    EntryDraft,
    Vec<Record>,
    oneshot::Sender<Result<Appended, LedgerError>>,
);

enum Request {
    Append {
        draft: EntryDraft,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Appended, LedgerError>>,
    },
    /// Retire the key (see [`Ledger::rotate`]).
    Rotate {
        new_key: SigningKey,
        participant: crate::identity::ParticipantId,
        reply: oneshot::Sender<Result<Appended, LedgerError>>,
    },
    /// Probe the storage and re-open the store, if appends stopped
    /// because it was full.
    Recover,
    /// Stop after the appends queued before it.
    Close,
}

/// File (in the ledger directory, outside sled) holding the last
/// checkpoint signed.
const LAST_CHECKPOINT: &str = "LAST_CHECKPOINT";

/// File (in the ledger directory, outside sled) holding the verified mark:
/// a checkpoint of this log up to which the store was last verified in
/// full (by a start-up check or a scrub pass) or written by this node's
/// own sequencer. Start-up checks only what lies beyond it.
const VERIFIED: &str = "VERIFIED";

/// The verified mark in `path`, if one is kept and verifies under `keys`.
/// A mark that is unreadable or does not verify is ignored (logged): the
/// start-up check is then the full one, which is never less safe.
fn read_mark(path: &Path, keys: &LogKeys) -> Option<SignedCheckpoint> {
    let note = match std::fs::read(path) {
        Ok(note) => note,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the verified mark; checking the whole ledger");
            return None;
        }
    };
    match keys.verify_checkpoint(&note) {
        Ok(mark) => Some(mark),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the verified mark is not a checkpoint of this log; checking the whole ledger");
            None
        }
    }
}

/// Verifies a stopped node's ledger directory in full, as the start-up
/// check does: the store (see [`verify_store`]) and the record of the last
/// checkpoint signed, kept outside the store. For `dsnode audit verify`.
/// `current` is the node's key: the log's key history must end there.
pub fn verify_dir(dir: &Path, current: &[u8; 32]) -> Result<(VerifyReport, LogKeys), LedgerError> {
    let store = SledStore::open(dir)?;
    let keys = LogKeys::from_rotations(&load_rotations(&store)?, current)?;
    let report = verify_store(&store, &keys)?;
    check_guard(&dir.join(LAST_CHECKPOINT), &store, &keys, &report)?;
    Ok((report, keys))
}

/// The log's KeyRotated entries, in index order, found through the kind
/// index (the full verification then checks that index against every
/// entry, so a rotation cannot be hidden from it).
fn load_rotations(store: &dyn LedgerStore) -> Result<Vec<Entry>, LedgerError> {
    let key = store::IndexKey::Kind(entry::EntryKind::KeyRotated.code());
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let page = store.scan_postings(&key, from, 64)?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        for (b, bits) in &page {
            let block = store.block(*b)?.ok_or_else(|| LedgerError::Tampered {
                index: b << store::BLOCK_BITS,
                detail: "the kind index names a block that is not stored".into(),
            })?;
            let mut bits = *bits;
            while bits != 0 {
                let offset = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let index = (b << store::BLOCK_BITS) + offset as u64;
                let bytes = block
                    .entries
                    .get(offset)
                    .ok_or_else(|| LedgerError::Tampered {
                        index,
                        detail: "the kind index names an entry that is not stored".into(),
                    })?;
                out.push(Entry::decode(bytes).map_err(|e| LedgerError::Tampered {
                    index,
                    detail: e.to_string(),
                })?);
                if out.len() > keys::MAX_ROTATIONS {
                    return Ok(out);
                }
            }
        }
        from = last + 1;
    }
    Ok(out)
}

/// Refuses a store that is behind, or disagrees with, the last checkpoint
/// this node signed.
fn check_guard(
    path: &Path,
    store: &dyn LedgerStore,
    keys: &LogKeys,
    report: &VerifyReport,
) -> Result<(), LedgerError> {
    let note = match std::fs::read(path) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if report.size > 0 {
                tracing::warn!(path = %path.display(), "no record of the last signed checkpoint outside the store; trusting the store");
            }
            return Ok(());
        }
        Err(e) => {
            return Err(StoreError::Sync {
                path: path.display().to_string(),
                source: e,
            }
            .into());
        }
    };
    let last = keys
        .verify_checkpoint(&note)
        .map_err(|e| LedgerError::BadCheckpoint {
            size: 0,
            detail: format!("{}: {e}", path.display()),
        })?;
    let signed = last.checkpoint.size;
    if signed > report.size {
        return Err(LedgerError::BadCheckpoint {
            size: signed,
            detail: format!(
                "this node signed a checkpoint of size {signed} but its store ends at {}: the store was rolled back or lost entries",
                report.size
            ),
        });
    }
    let stored = store.checkpoint(signed)?;
    if stored.as_deref().map(str::as_bytes) != Some(last.note.as_bytes()) {
        return Err(LedgerError::BadCheckpoint {
            size: signed,
            detail:
                "the store's checkpoint of this size differs from the one this node last signed"
                    .into(),
        });
    }
    Ok(())
}

/// How [`Ledger::failure`] begins when a commit failed for lack of space.
pub const STORAGE_FULL: &str = "the node's storage is full";

/// The name under which a node signs its checkpoints (origin line and
/// note key name).
pub fn origin_for(node: &NodeId) -> String {
    format!("dsnode/{node}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The log's key history, replaced when the key rotates.
type SharedKeys = Arc<std::sync::RwLock<Arc<LogKeys>>>;

/// The store, replaced when the sequencer re-opens it after its storage
/// filled up; `None` while re-opening it fails (it is retried).
type StoreSlot = Arc<std::sync::RwLock<Option<Arc<dyn LedgerStore>>>>;

/// Opens the store in a directory again (after a failed commit).
type Opener = Arc<dyn Fn(&Path) -> Result<Arc<dyn LedgerStore>, StoreError> + Send + Sync>;

/// File (in the ledger directory) written and fsynced to learn whether
/// the storage has room again; removed at once.
const PROBE: &str = "PROBE";

/// Bytes the probe writes: room for a batch of appends, so the ledger
/// does not re-open only to fail again at once.
const PROBE_BYTES: usize = 1 << 20;

/// Whether appends are refused, and whether the ledger may take them
/// again by itself (its storage was full).
#[derive(Default)]
struct WriteState {
    /// Appends are refused.
    failed: AtomicBool,
    /// ... because the storage was full: the sequencer probes for room
    /// and re-opens the store once there is.
    full: AtomicBool,
}

impl WriteState {
    fn refusal(&self) -> Option<LedgerError> {
        if !self.failed.load(Ordering::Acquire) {
            None
        } else if self.full.load(Ordering::Acquire) {
            Some(LedgerError::Full)
        } else {
            Some(LedgerError::Failed)
        }
    }
}

/// The node's ledger.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

/// Told of every committed batch: its entry count and how long the commit
/// (hashing, store write, fsync, checkpoint) took.
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

struct Shared {
    store: StoreSlot,
    /// Counts the store's re-openings: a long reader (the scrub) that sees
    /// it change lets go of the old store and starts again.
    generation: Arc<std::sync::atomic::AtomicU64>,
    observer: Arc<std::sync::OnceLock<CommitObserver>>,
    tx: mpsc::Sender<Request>,
    head: watch::Receiver<Option<Arc<SignedCheckpoint>>>,
    keys: SharedKeys,
    state: Arc<WriteState>,
    /// Why appends stopped (the failed commit's cause), once they did.
    failure: watch::Receiver<Option<String>>,
    sequencer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where the verified mark is kept (`None`: not kept).
    mark: Option<std::path::PathBuf>,
    /// The size of the mark kept (its writes are serialised here);
    /// `None` also once the store was found changed (the mark is then
    /// removed and never written again by this process).
    marked: std::sync::Mutex<Option<u64>>,
    /// The store was found changed behind the node's back.
    tampered: AtomicBool,
}

/// Whether `err` (or an error it wraps) is the file system saying it is
/// full: ENOSPC or EDQUOT, or `StorageFull`.
pub fn is_storage_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(28 | 122)))
        {
            return true;
        }
        if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(28 | 122)))
        {
            return true;
        }
        next = e.source();
    }
    false
}

impl LedgerError {
    /// Whether the storage was full (a commit failed for lack of space).
    pub fn is_storage_full(&self) -> bool {
        is_storage_full(self)
    }
}

impl Ledger {
    /// Opens the ledger in `dir` (sled), verifies it, and starts the
    /// sequencer. With a verified mark (`dir/VERIFIED`, see
    /// [`verify_since`]) only what lies beyond the mark is checked entry
    /// by entry, so start-up time follows what is new, not the log's
    /// size; without one the whole log is ([`verify_store`]). A store that
    /// fails verification is refused, naming the first bad index; so is a
    /// store behind the last checkpoint this node signed (kept outside
    /// sled, in `dir/LAST_CHECKPOINT`): a rolled back or truncated store
    /// would otherwise make the node sign a fork. [`Ledger::scrub`]
    /// re-checks everything in the background.
    pub fn open(
        dir: &Path,
        key: SigningKey,
        options: LedgerOptions,
    ) -> Result<(Self, VerifyReport), LedgerError> {
        let opener: Opener = Arc::new(|dir| Ok(Arc::new(SledStore::open(dir)?)));
        Self::start(opener(dir)?, key, options, Some((dir, opener)))
    }

    /// Like [`Ledger::open`] over any store, without the rollback guard.
    pub fn with_store(
        store: Arc<dyn LedgerStore>,
        key: SigningKey,
        options: LedgerOptions,
    ) -> Result<(Self, VerifyReport), LedgerError> {
        Self::start(store, key, options, None)
    }

    /// The store, unless it is being re-opened (after its storage filled
    /// up) and that failed.
    fn store(&self) -> Result<Arc<dyn LedgerStore>, LedgerError> {
        self.shared
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(LedgerError::Reopening)
    }

    /// Opens the ledger over `store`; with a directory (and how to open
    /// the store there again), keeps the rollback guard and verified mark
    /// in it and re-opens the store by itself after its storage filled up.
    fn start(
        store: Arc<dyn LedgerStore>,
        key: SigningKey,
        options: LedgerOptions,
        home: Option<(&Path, Opener)>,
    ) -> Result<(Self, VerifyReport), LedgerError> {
        let dir = home.as_ref().map(|(d, _)| *d);
        // The key must be the log's current one: a retired key (a node
        // restored with an old key file) is refused here, by name.
        let log_keys = LogKeys::from_rotations(
            &load_rotations(store.as_ref())?,
            &key.verifying_key().to_bytes(),
        )?;
        let guard = dir.map(|d| d.join(LAST_CHECKPOINT));
        let mark_path = dir.map(|d| d.join(VERIFIED));
        let mark = mark_path.as_deref().and_then(|p| read_mark(p, &log_keys));
        let report = match &mark {
            Some(mark) => verify_since(store.as_ref(), &log_keys, mark)?,
            None => verify_store(store.as_ref(), &log_keys)?,
        };
        if let Some(path) = &guard {
            check_guard(path, store.as_ref(), &log_keys, &report)?;
        }
        let signer = NoteSigner::new(log_keys.origin(), key)?;
        let keys = Arc::new(std::sync::RwLock::new(Arc::new(log_keys)));
        let writer = Writer::open(store.as_ref(), report.size)?;
        let (head_tx, head_rx) = watch::channel(report.latest.clone().map(Arc::new));
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let state = Arc::new(WriteState::default());
        let (failure_tx, failure) = watch::channel(None);
        let observer = Arc::new(std::sync::OnceLock::new());
        let slot: StoreSlot = Arc::new(std::sync::RwLock::new(Some(store)));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sequencer = Sequencer {
            store: slot.clone(),
            generation: generation.clone(),
            home: home.map(|(d, opener)| (d.to_path_buf(), opener)),
            probe_every: options.probe_every,
            requests: tx.downgrade(),
            observer: observer.clone(),
            signer,
            keys: keys.clone(),
            writer,
            last_signed: report
                .latest
                .as_ref()
                .map(|c| (c.checkpoint.size, c.checkpoint.root)),
            head: head_tx,
            state: state.clone(),
            failure: failure_tx,
            max_batch: options.max_batch.max(1),
            guard,
        };
        let thread = std::thread::Builder::new()
            .name("ledger-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(|e| StoreError::Sync {
                path: "sequencer thread".into(),
                source: e,
            })?;
        let ledger = Self {
            shared: Arc::new(Shared {
                store: slot,
                generation,
                observer,
                tx,
                head: head_rx,
                keys,
                state,
                failure,
                sequencer: std::sync::Mutex::new(Some(thread)),
                mark: mark_path,
                marked: std::sync::Mutex::new(mark.map(|m| m.checkpoint.size)),
                tampered: AtomicBool::new(false),
            }),
        };
        if let Some(latest) = &report.latest {
            ledger.advance_mark(latest);
        }
        Ok((ledger, report))
    }

    /// Moves the verified mark to `checkpoint` (a checkpoint of this log
    /// whose entries were verified, or written by this process), if it is
    /// beyond the mark. A failed write only costs a longer start-up check.
    fn advance_mark(&self, checkpoint: &SignedCheckpoint) {
        let Some(path) = &self.shared.mark else {
            return;
        };
        let mut marked = self
            .shared
            .marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shared.tampered.load(Ordering::Acquire)
            || marked.is_some_and(|m| m >= checkpoint.checkpoint.size)
        {
            return;
        }
        match crate::fsutil::write_atomic(
            path,
            checkpoint.note.as_bytes(),
            crate::fsutil::PUBLIC_MODE,
        ) {
            Ok(()) => *marked = Some(checkpoint.checkpoint.size),
            Err(e) => tracing::warn!(error = %e, "cannot record the verified mark"),
        }
    }

    /// Verifies the log in full up to its latest checkpoint, beside the
    /// appends going on: what [`verify_store`] checks, for those entries.
    /// `pace` is told the entries checked after every block of 64 and
    /// returns false to stop (then `Ok(None)`). A pass that completes
    /// moves the verified mark to the checkpoint it covered.
    pub fn scrub(
        &self,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Option<VerifyReport>, LedgerError> {
        // A pass over a store that is re-opened meanwhile lets go of it
        // (so it can close) and starts again over the new one.
        let report = loop {
            let Some(latest) = self.latest() else {
                return Ok(None);
            };
            let keys = self.keys();
            let generation = self.shared.generation.load(Ordering::Acquire);
            let reopened = || self.shared.generation.load(Ordering::Acquire) != generation;
            let mut paced = |n| !reopened() && pace(n) && !reopened();
            let store = self.store()?;
            let result = verify::scrub(store.as_ref(), &keys, latest.checkpoint.size, &mut paced);
            drop(store);
            match result {
                Ok(None) if reopened() => continue,
                Ok(report) => break report.map(|r| (r, latest)),
                Err(e @ (LedgerError::Tampered { .. } | LedgerError::BadCheckpoint { .. })) => {
                    self.found_tampered();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        let Some((report, latest)) = report else {
            return Ok(None);
        };
        self.advance_mark(&latest);
        Ok(Some(report))
    }

    /// The store was found changed behind the node's back: no more
    /// appends (so no grant, transfer or receipt is recorded on it), and
    /// the verified mark is removed, so the next start-up checks the
    /// whole log and refuses it.
    fn found_tampered(&self) {
        self.shared.tampered.store(true, Ordering::Release);
        // For good: no probe re-opens the write path of a changed store.
        self.shared.state.full.store(false, Ordering::Release);
        self.shared.state.failed.store(true, Ordering::Release);
        let mut marked = self
            .shared
            .marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *marked = None;
        if let Some(path) = &self.shared.mark
            && let Err(e) = crate::fsutil::remove_file_durably(path)
        {
            tracing::error!(error = %e, path = %path.display(), "cannot remove the verified mark: remove it by hand before the next start");
        }
    }

    /// Sets the function told of every committed batch (metrics); only the
    /// first call has an effect.
    pub fn observe_commits(&self, observer: CommitObserver) {
        let _ = self.shared.observer.set(observer);
    }

    /// Stops the sequencer after the appends already queued, and waits for
    /// it. Later appends fail with [`LedgerError::Closed`]. The store closes
    /// when the last clone of this ledger is dropped.
    pub async fn close(&self) {
        let _ = self.shared.tx.send(Request::Close).await;
        let handle = self
            .shared
            .sequencer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Everything up to the last checkpoint was written by this
        // process: the next start-up checks only what comes after it.
        if !self.shared.state.failed.load(Ordering::Acquire)
            && let Some(latest) = self.latest()
        {
            let ledger = self.clone();
            let _ = tokio::task::spawn_blocking(move || ledger.advance_mark(&latest)).await;
        }
    }

    /// Why appends stopped (a failed commit's cause), as it changes:
    /// `None` while they work.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.failure.clone()
    }

    /// Appends an entry; returns once it is durable and signed over.
    pub async fn append(&self, draft: EntryDraft) -> Result<Appended, LedgerError> {
        self.append_inner(draft, Vec::new()).await
    }

    /// Appends an entry with records (`name`, `value`) committed in the
    /// same atomic batch: durable exactly when the entry is (e.g. the
    /// grant its `AccessGranted` entry hashes). Records are outside the
    /// tree; whoever reads one checks it against its entry. A record of
    /// the same name is replaced.
    pub async fn append_with_records(
        &self,
        draft: EntryDraft,
        records: Vec<Record>,
    ) -> Result<Appended, LedgerError> {
        self.append_inner(draft, records).await
    }

    /// Writes records outside any entry, atomically and durably: indexes
    /// derived from records committed with their entries (e.g. built for
    /// a store written before the index existed). Refused while appends
    /// are.
    pub fn put_records(&self, records: &[Record]) -> Result<(), LedgerError> {
        if let Some(refusal) = self.shared.state.refusal() {
            return Err(refusal);
        }
        let store = self.store()?;
        store.put_records(records)?;
        Ok(store.sync()?)
    }

    /// A record by name (see [`Ledger::append_with_records`]).
    pub fn record(&self, name: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.store()?.record(name)?)
    }

    /// The records whose name starts with `prefix`, in name order, after
    /// `after`, at most `limit`.
    pub fn records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, LedgerError> {
        Ok(self.store()?.records(prefix, after, limit)?)
    }

    async fn append_inner(
        &self,
        draft: EntryDraft,
        records: Vec<Record>,
    ) -> Result<Appended, LedgerError> {
        Entry::check_draft(&draft)?;
        if let Some(refusal) = self.shared.state.refusal() {
            return Err(refusal);
        }
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Request::Append {
                draft,
                records,
                reply,
            })
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Option<Arc<SignedCheckpoint>> {
        self.shared.head.borrow().clone()
    }

    /// A receiver that sees every new checkpoint.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<SignedCheckpoint>>> {
        self.shared.head.clone()
    }

    /// The verifier for this ledger's new checkpoints (the log's origin,
    /// the current key).
    pub fn verifier(&self) -> NoteVerifier {
        self.keys().verifier().clone()
    }

    /// The log's key history.
    pub fn keys(&self) -> Arc<LogKeys> {
        self.shared
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The log's KeyRotated entries (canonical bytes), in index order: what
    /// a client needs to rebuild the key history.
    pub fn rotation_entries(&self) -> Result<Vec<Vec<u8>>, LedgerError> {
        let keys = self.keys();
        let mut out = Vec::new();
        for index in keys.rotation_indices() {
            out.push(self.store()?.entry(index)?.ok_or_else(|| {
                LedgerError::Range(format!("key rotation entry {index} is not stored"))
            })?);
        }
        Ok(out)
    }

    /// Retires the log's key for `new_key`: appends a KeyRotated entry
    /// (signed by both keys, for `participant`) and signs the checkpoint
    /// over it with both; later checkpoints are signed by `new_key` only.
    /// The caller installs the new key and certificate for the node once
    /// this returns (the old key cannot open the ledger any more).
    pub async fn rotate(
        &self,
        new_key: SigningKey,
        participant: crate::identity::ParticipantId,
    ) -> Result<Appended, LedgerError> {
        if let Some(refusal) = self.shared.state.refusal() {
            return Err(refusal);
        }
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Request::Rotate {
                new_key,
                participant,
                reply,
            })
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    fn size(&self) -> u64 {
        self.latest().map_or(0, |c| c.checkpoint.size)
    }

    /// The entry at `index`, if it is covered by the latest checkpoint.
    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        if index >= self.size() {
            return Ok(None);
        }
        Ok(self.store()?.entry(index)?)
    }

    /// Entries `[from, from + limit)` below the latest checkpoint.
    pub fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        let size = self.size();
        let end = from.saturating_add(limit.min(MAX_PAGE) as u64).min(size);
        let mut out = Vec::new();
        let mut block = u64::MAX;
        let mut decoded = store::Block::default();
        for index in from..end {
            if index >> store::BLOCK_BITS != block {
                block = index >> store::BLOCK_BITS;
                let Some(b) = self.store()?.block(block)? else {
                    break;
                };
                decoded = b;
            }
            let offset = (index & (store::BLOCK_LEN - 1)) as usize;
            if let Some(e) = decoded.entries.get(offset) {
                out.push((index, e.clone()));
            }
        }
        Ok(out)
    }

    /// The index of the entry with this leaf hash.
    pub fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, LedgerError> {
        Ok(self.store()?.leaf_index(leaf)?.filter(|i| *i < self.size()))
    }

    /// The signed checkpoint of `size`, if the node signed one.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<SignedCheckpoint>, LedgerError> {
        let Some(note) = self.store()?.checkpoint(size)? else {
            return Ok(None);
        };
        Ok(Some(self.keys().verify_checkpoint(note.as_bytes())?))
    }

    fn check_size(&self, size: u64) -> Result<(), LedgerError> {
        let latest = self.size();
        if size > latest {
            return Err(LedgerError::Range(format!(
                "tree size {size} is beyond the latest checkpoint ({latest})"
            )));
        }
        Ok(())
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size(size)?;
        Ok(merkle::inclusion_proof(
            &StoredTree::new(self.store()?.as_ref()),
            index,
            size,
        )?)
    }

    /// The hashes of tile `level`/`index` holding `width` hashes (C2SP
    /// `tlog-tiles`, height 8: 256 for a full tile), or `None` unless a
    /// tree the node signed a checkpoint for holds it: a full tile once the
    /// latest checkpoint covers it, a partial one only if a checkpointed
    /// size `s` has `⌊s / 256^level⌋ = 256·index + width`. At most 256
    /// reads of the stored tree.
    pub fn tile(
        &self,
        level: u8,
        index: u64,
        width: u16,
    ) -> Result<Option<Vec<Hash>>, LedgerError> {
        if level > crate::tiles::MAX_LEVEL
            || width == 0
            || u64::from(width) > crate::tiles::TILE_WIDTH
        {
            return Ok(None);
        }
        // Checked, in u128: index and level come from a request, and
        // 256^7 · 256 · u64::MAX overflows even that.
        let unit: u128 = 1 << (8 * u32::from(level));
        let first = u128::from(index) * u128::from(crate::tiles::TILE_WIDTH);
        let end = first + u128::from(width);
        let Some(covered) = end.checked_mul(unit) else {
            return Ok(None);
        };
        if covered > u128::from(self.size()) {
            return Ok(None);
        }
        if u64::from(width) < crate::tiles::TILE_WIDTH {
            // `covered` ≤ the tree size, a u64: these cannot overflow.
            let (lo, hi) = (covered, covered + unit);
            let Ok(lo) = u64::try_from(lo) else {
                return Ok(None);
            };
            let signed = self.store()?.checkpoints(lo, 1)?;
            if signed.first().is_none_or(|(s, _)| u128::from(*s) >= hi) {
                return Ok(None);
            }
        }
        let store = self.store()?;
        let tree = StoredTree::new(store.as_ref());
        let mut out = Vec::with_capacity(usize::from(width));
        for i in first..end {
            let i = u64::try_from(i).map_err(|_| LedgerError::Range("tile index".into()))?;
            out.push(merkle::SubtreeSource::subtree(&tree, 8 * level, i)?);
        }
        Ok(Some(out))
    }

    /// The consistency proof from `old` to `new` entries.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size(new)?;
        Ok(merkle::consistency_proof(
            &StoredTree::new(self.store()?.as_ref()),
            old,
            new,
        )?)
    }

    /// Visits every entry below the latest checkpoint that matches
    /// `query`, in the query's order, until `visit` breaks (every page is
    /// followed: a page examines a bounded number of entries and may be
    /// short).
    pub fn scan(
        &self,
        query: &Query,
        mut visit: impl FnMut(entry::Entry) -> std::ops::ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        let size = self.size();
        if size == 0 {
            return Ok(());
        }
        let mut token: Option<Vec<u8>> = None;
        loop {
            let page = self.query(query, token.as_deref(), MAX_PAGE, size)?;
            for (_, raw) in &page.entries {
                if visit(entry::Entry::decode(raw)?).is_break() {
                    return Ok(());
                }
            }
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// How many entries match `query`, counting up to `cap`.
    pub fn count(&self, query: &Query, cap: usize) -> Result<usize, LedgerError> {
        let mut found = 0;
        if cap == 0 {
            return Ok(0);
        }
        self.scan(query, |_| {
            found += 1;
            if found >= cap {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    /// The first entry that matches `query` and `wanted`.
    pub fn find(
        &self,
        query: &Query,
        wanted: impl Fn(&entry::Entry) -> bool,
    ) -> Result<Option<entry::Entry>, LedgerError> {
        let mut hit = None;
        self.scan(query, |e| {
            if wanted(&e) {
                hit = Some(e);
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        Ok(hit)
    }

    /// One page of entries matching `query`, below `size` (normally the
    /// latest checkpoint's), in index order (time order for time-only
    /// queries). Examines a bounded number of entries per page: a page may
    /// be short and still carry a `next` token.
    pub fn query(
        &self,
        query: &Query,
        token: Option<&[u8]>,
        limit: usize,
        size: u64,
    ) -> Result<Page, LedgerError> {
        self.check_size(size)?;
        query::run(self.store()?.as_ref(), query, token, limit, size)
    }
}

struct Sequencer {
    store: StoreSlot,
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// The store's directory and how to open it again: without them a
    /// full disk needs a restart.
    home: Option<(std::path::PathBuf, Opener)>,
    probe_every: std::time::Duration,
    /// Where the prober asks for [`Request::Recover`]; weak, so the
    /// channel still closes when the ledger is dropped.
    requests: mpsc::WeakSender<Request>,
    observer: Arc<std::sync::OnceLock<CommitObserver>>,
    signer: NoteSigner,
    keys: SharedKeys,
    writer: Writer,
    last_signed: Option<(u64, Hash)>,
    head: watch::Sender<Option<Arc<SignedCheckpoint>>>,
    state: Arc<WriteState>,
    failure: watch::Sender<Option<String>>,
    max_batch: usize,
    /// Where the last signed checkpoint is kept outside the store.
    guard: Option<std::path::PathBuf>,
}

impl Sequencer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut rotate = None;
            let mut recover = false;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        draft,
                        records,
                        reply,
                    } => batch.push((draft, records, reply)),
                    Request::Rotate {
                        new_key,
                        participant,
                        reply,
                    } => {
                        // Alone in its batch, after what was queued before.
                        rotate = Some((new_key, participant, reply));
                        break;
                    }
                    Request::Recover => {
                        recover = true;
                        break;
                    }
                    Request::Close => {
                        closing = true;
                        break;
                    }
                }
                if batch.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(refusal) = self.state.refusal() {
                let refuse = |reply: oneshot::Sender<_>| {
                    let _ = reply.send(Err(match refusal {
                        LedgerError::Full => LedgerError::Full,
                        _ => LedgerError::Failed,
                    }));
                };
                batch.into_iter().for_each(|(_, _, reply)| refuse(reply));
                if let Some((_, _, reply)) = rotate {
                    refuse(reply);
                }
                if recover {
                    self.recover();
                }
                continue;
            }
            if !batch.is_empty() {
                self.commit(batch, None);
            }
            if let Some((new_key, participant, reply)) = rotate {
                self.rotate(new_key, participant, reply);
            }
        }
        rx.close();
        // Answer whatever raced in behind the close.
        while let Ok(request) = rx.try_recv() {
            match request {
                Request::Append { reply, .. } | Request::Rotate { reply, .. } => {
                    let _ = reply.send(Err(LedgerError::Closed));
                }
                Request::Recover | Request::Close => {}
            }
        }
    }

    /// Appends the KeyRotated entry (the next index) and commits it with
    /// a checkpoint signed by both keys; then signs with the new key only.
    fn rotate(
        &mut self,
        new_key: SigningKey,
        participant: crate::identity::ParticipantId,
        reply: oneshot::Sender<Result<Appended, LedgerError>>,
    ) {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let statement = keys::KeyRotation {
            origin: keys.origin().to_owned(),
            index: self.writer.size(),
            old_key: self.signer.signing_key().verifying_key().to_bytes(),
            new_key: new_key.verifying_key().to_bytes(),
            participant,
        };
        let draft = statement.entry(self.signer.signing_key(), &new_key);
        let mut after = (*keys).clone();
        let prepared = Entry::check_draft(&draft)
            .map_err(LedgerError::from)
            .and_then(|()| {
                after.push(&Entry::new(statement.index, 0, draft.clone()))?;
                Ok(NoteSigner::new(keys.origin(), new_key)?)
            });
        match prepared {
            Ok(successor) => {
                self.commit(vec![(draft, Vec::new(), reply)], Some((successor, after)))
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Commits a batch under one checkpoint. With a `handover`, the
    /// successor key cosigns that checkpoint and signs from then on.
    fn commit(&mut self, requests: Vec<Pending>, handover: Option<(NoteSigner, LogKeys)>) {
        // Anti-fork guard: the tree being extended must be exactly the one
        // last signed, so the new checkpoint is consistent with it.
        let extends_signed = match self.last_signed {
            Some((size, root)) => size == self.writer.size() && root == self.writer.root(),
            None => self.writer.size() == 0,
        };
        if !extends_signed {
            let msg = format!(
                "the tree in memory (size {}) is not the last signed tree {:?}",
                self.writer.size(),
                self.last_signed.map(|(s, _)| s)
            );
            self.fail(
                requests.into_iter().map(|(_, _, r)| r),
                LedgerError::Fork(msg),
            );
            return;
        }
        let store = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(store) = store else {
            // Only while failed (re-opening failed): refused above.
            self.fail(
                requests.into_iter().map(|(_, _, r)| r),
                LedgerError::Reopening,
            );
            return;
        };
        let started = std::time::Instant::now();
        let time_ms = now_ms();
        let mut accepted = Vec::with_capacity(requests.len());
        let mut records = Vec::new();
        for (draft, its_records, reply) in requests {
            records.extend(its_records);
            let entry = Entry::new(self.writer.size(), time_ms, draft);
            // Drafts were checked before queueing, so encoding cannot fail;
            // a store read failing here fails the whole batch.
            match self.writer.add(store.as_ref(), &entry) {
                Ok(leaf) => accepted.push((entry.index, leaf, reply)),
                Err(e) => {
                    let replies = accepted.into_iter().map(|(_, _, r)| r);
                    self.fail(replies.chain([reply]), e);
                    return;
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let (mut batch, mut signed) = self.writer.seal(&self.signer);
        batch.records = records;
        if let Some((successor, _)) = &handover {
            match successor.cosign(&signed.note) {
                Ok(note) => {
                    batch.checkpoint = note.clone();
                    signed.note = note;
                }
                Err(e) => {
                    let replies = accepted.into_iter().map(|(_, _, r)| r);
                    self.fail(replies, LedgerError::Note(e));
                    return;
                }
            }
        }
        let (size, root) = batch.head;
        let mut result = store
            .append_batch(&batch)
            .and_then(|()| store.sync())
            .map_err(LedgerError::from);
        drop(store);
        if let (Ok(()), Some(path)) = (&result, &self.guard) {
            result = crate::fsutil::write_atomic(
                path,
                signed.note.as_bytes(),
                crate::fsutil::PUBLIC_MODE,
            )
            .map_err(|e| LedgerError::CommitFailed(Arc::new(e)));
        }
        match result {
            Ok(()) => {
                if let Some(observe) = self.observer.get() {
                    observe(accepted.len(), started.elapsed());
                }
                self.last_signed = Some((size, root));
                if let Some((successor, after)) = handover {
                    tracing::info!(index = size - 1, key = %after.current().node_id, "ledger key rotated");
                    self.signer = successor;
                    *self
                        .keys
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(after);
                }
                let signed = Arc::new(signed);
                self.head.send_replace(Some(signed.clone()));
                for (index, leaf_hash, reply) in accepted {
                    let _ = reply.send(Ok(Appended {
                        index,
                        leaf_hash,
                        checkpoint: signed.clone(),
                    }));
                }
            }
            Err(e) => {
                let replies = accepted.into_iter().map(|(_, _, r)| r);
                self.fail(replies, e);
            }
        }
    }

    /// A commit failed: the batch may or may not be on disk, and the
    /// writer's state is ahead of it. Stop appending until the store is
    /// verified again (as databases do after a failed fsync): when the
    /// storage was full, by this sequencer once a probe finds room again
    /// ([`Sequencer::recover`]); otherwise by a restart.
    fn fail(
        &self,
        replies: impl Iterator<Item = oneshot::Sender<Result<Appended, LedgerError>>>,
        err: LedgerError,
    ) {
        // Every waiter gets the same cause, kept as the error's source.
        let cause: Arc<dyn std::error::Error + Send + Sync> = match err {
            LedgerError::CommitFailed(cause) => cause,
            other => Arc::new(other),
        };
        let full = is_storage_full(&*cause);
        if full && self.home.is_some() {
            tracing::error!(error = %cause, "ledger commit failed: the storage is full; appends are refused until there is room again");
            self.state.full.store(true, Ordering::Release);
            self.start_prober();
        } else {
            tracing::error!(error = %cause, "ledger commit failed; refusing further appends until restart");
        }
        self.state.failed.store(true, Ordering::Release);
        self.failure.send_replace(Some(if full {
            format!("{STORAGE_FULL} ({cause})")
        } else {
            cause.to_string()
        }));
        for reply in replies {
            let _ = reply.send(Err(LedgerError::CommitFailed(cause.clone())));
        }
    }

    /// Asks this sequencer to [`Sequencer::recover`] every `probe_every`
    /// while the storage is full.
    fn start_prober(&self) {
        let (requests, state, every) =
            (self.requests.clone(), self.state.clone(), self.probe_every);
        let spawned = std::thread::Builder::new()
            .name("ledger-prober".into())
            .spawn(move || {
                while state.full.load(Ordering::Acquire) {
                    std::thread::sleep(every);
                    let Some(tx) = requests.upgrade() else {
                        return;
                    };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Request::Recover)
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the storage prober: restart the node once space is freed");
        }
    }

    /// If appends stopped because the storage was full and a probe write
    /// and fsync now succeed: closes the store, opens it again, verifies
    /// what lies beyond the verified mark and the record of the last
    /// signed checkpoint (as a start-up does), and takes appends again.
    /// Nothing unsure is acknowledged: the batch whose commit failed may
    /// be in the store or not, and the tree goes on from what the store
    /// holds and verifies.
    fn recover(&mut self) {
        if !self.state.full.load(Ordering::Acquire) {
            return;
        }
        let Some((dir, opener)) = self.home.clone() else {
            return;
        };
        if let Err(e) = probe(&dir) {
            tracing::debug!(error = %e, "the ledger's storage has no room yet");
            return;
        }
        match self.reopen(&dir, &opener) {
            Ok(report) => {
                self.state.full.store(false, Ordering::Release);
                self.state.failed.store(false, Ordering::Release);
                self.failure.send_replace(None);
                tracing::info!(
                    entries = report.size,
                    checked = report.size - report.trusted_below,
                    "the storage has room again: the ledger re-opened and verified its store and takes appends again"
                );
            }
            Err(
                e @ (LedgerError::Tampered { .. }
                | LedgerError::BadCheckpoint { .. }
                | LedgerError::Keys(_)
                | LedgerError::Note(_)),
            ) => {
                tracing::error!(error = %e, "the ledger's store, re-opened after the storage filled up, does not verify: appends stay refused; run `dsnode audit verify` on a copy");
                self.state.full.store(false, Ordering::Release);
                self.failure
                    .send_replace(Some(format!("re-opening the store after a full disk: {e}")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-opening the ledger's store failed; retrying");
            }
        }
    }

    /// Replaces the store by a freshly opened one and rebuilds the tree's
    /// state from what it verifiably holds. The store stays available to
    /// readers unless re-opening it fails (it is then retried).
    fn reopen(&mut self, dir: &Path, opener: &Opener) -> Result<VerifyReport, LedgerError> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let slot = self.store.clone();
        let mut slot = slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = slot.take() {
            // Readers hold the store for one call; the scrub lets go at
            // its next step. Sled keeps its files locked until the last
            // handle is dropped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 {
                if std::time::Instant::now() > deadline {
                    *slot = Some(old);
                    return Err(LedgerError::Reopening);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let store = loop {
            match opener(dir) {
                Ok(store) => break store,
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        *slot = Some(store.clone());
        drop(slot);
        let current = self.signer.signing_key().verifying_key().to_bytes();
        let keys = LogKeys::from_rotations(&load_rotations(store.as_ref())?, &current)?;
        let report = match read_mark(&dir.join(VERIFIED), &keys) {
            Some(mark) => verify_since(store.as_ref(), &keys, &mark)?,
            None => verify_store(store.as_ref(), &keys)?,
        };
        if let Some(guard) = &self.guard {
            check_guard(guard, store.as_ref(), &keys, &report)?;
        }
        self.writer = Writer::open(store.as_ref(), report.size)?;
        self.last_signed = report
            .latest
            .as_ref()
            .map(|c| (c.checkpoint.size, c.checkpoint.root));
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        // The failed batch, if it reached the disk, is signed and
        // verified: its checkpoint becomes the head.
        let head = self.head.borrow().as_ref().map(|c| c.checkpoint.size);
        if report.latest.as_ref().map(|c| c.checkpoint.size) != head {
            self.head.send_replace(report.latest.clone().map(Arc::new));
        }
        Ok(report)
    }
}

/// Writes [`PROBE_BYTES`] to a file in `dir`, fsyncs and removes it: an
/// error says the storage has no room yet.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(PROBE);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    //! The sequencer: group commit, one checkpoint per batch, and what a
    //! failed commit does to the appends waiting on it and after it.

    use super::*;
    use crate::ledger::entry::EntryKind;
    use crate::ledger::store::{AppendBatch, Block, IndexKey};
    use std::sync::atomic::AtomicBool;

    /// The sled store, with an fsync that fails on demand (as a full
    /// disk, with `full`).
    struct FailingSync {
        inner: SledStore,
        fail: AtomicBool,
        full: AtomicBool,
    }

    impl LedgerStore for FailingSync {
        fn append_batch(&self, batch: &AppendBatch) -> Result<(), StoreError> {
            self.inner.append_batch(batch)
        }
        fn put_records(&self, records: &[Record]) -> Result<(), StoreError> {
            self.inner.put_records(records)
        }
        fn sync(&self) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Sync {
                    path: "test".into(),
                    source: std::io::Error::other("disk full"),
                });
            }
            if self.full.load(Ordering::SeqCst) {
                return Err(StoreError::Sync {
                    path: "test".into(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                });
            }
            self.inner.sync()
        }
        fn block(&self, block: u64) -> Result<Option<Block>, StoreError> {
            self.inner.block(block)
        }
        fn leaves(&self, block: u64) -> Result<Option<Vec<Hash>>, StoreError> {
            self.inner.leaves(block)
        }
        fn blocks(&self, from: u64, limit: usize) -> Result<Vec<(u64, Block)>, StoreError> {
            self.inner.blocks(from, limit)
        }
        fn hash(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
            self.inner.hash(level, index)
        }
        fn head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
            self.inner.head()
        }
        fn last_signed(&self) -> Result<Option<(u64, Hash)>, StoreError> {
            self.inner.last_signed()
        }
        fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
            self.inner.checkpoint(size)
        }
        fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
            self.inner.checkpoints(from, limit)
        }
        fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
            self.inner.leaf_index(leaf)
        }
        fn posting(&self, key: &IndexKey, block: u64) -> Result<Option<u64>, StoreError> {
            self.inner.posting(key, block)
        }
        fn scan_postings(
            &self,
            key: &IndexKey,
            from: u64,
            limit: usize,
        ) -> Result<Vec<(u64, u64)>, StoreError> {
            self.inner.scan_postings(key, from, limit)
        }
        fn scan_time(
            &self,
            from: (i64, u64),
            limit: usize,
        ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
            self.inner.scan_time(from, limit)
        }
        fn record(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.record(name)
        }
        fn records(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Record>, StoreError> {
            self.inner.records(prefix, after, limit)
        }
    }

    fn failing(dir: &Path) -> Result<Arc<FailingSync>, StoreError> {
        Ok(Arc::new(FailingSync {
            inner: SledStore::open(dir)?,
            fail: AtomicBool::new(false),
            full: AtomicBool::new(false),
        }))
    }

    fn ledger(dir: &Path) -> (Ledger, Arc<FailingSync>) {
        let store = failing(dir).expect("store");
        let key = SigningKey::from_bytes(&[7; 32]);
        let (ledger, _) =
            Ledger::with_store(store.clone(), key, LedgerOptions::default()).expect("ledger");
        (ledger, store)
    }

    fn draft(n: usize) -> EntryDraft {
        let mut d = EntryDraft::new(EntryKind::DatasetPublished);
        d.detail = format!("entry {n}");
        d
    }

    /// A partial tile exists exactly for the sizes the log signed a
    /// checkpoint of; a full tile holds the leaf hashes; no index overflows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiles_exist_exactly_for_checkpointed_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, _) = ledger(dir.path());
        // Bursts: a batch signs one checkpoint for several entries, so
        // some sizes below the latest are never checkpointed.
        for burst in 0..20 {
            let tasks: Vec<_> = (0..(burst % 7 + 1))
                .map(|n| {
                    let ledger = ledger.clone();
                    tokio::spawn(async move { ledger.append(draft(n)).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("append");
            }
        }
        let size = ledger.size();
        let mut skipped = 0;
        for s in 1..=size {
            let signed = ledger.checkpoint_at(s).expect("read").is_some();
            let tile = ledger
                .tile(0, 0, u16::try_from(s).expect("small"))
                .expect("tile");
            assert_eq!(tile.is_some(), signed, "size {s}");
            skipped += usize::from(!signed);
            if let Some(hashes) = tile {
                let leaves: Vec<Hash> = (0..s)
                    .map(|i| merkle::leaf_hash(&ledger.entry(i).expect("read").expect("entry")))
                    .collect();
                assert_eq!(hashes, leaves);
            }
        }
        assert!(skipped > 0, "the bursts left sizes unsigned");
        assert_eq!(
            ledger
                .tile(0, 0, u16::try_from(size + 1).expect("small"))
                .expect("tile"),
            None
        );
        assert_eq!(ledger.tile(0, 1, 256).expect("tile"), None);
        assert_eq!(ledger.tile(7, u64::MAX, 256).expect("no overflow"), None);
        assert_eq!(ledger.tile(7, u64::MAX, 255).expect("no overflow"), None);
        assert_eq!(ledger.tile(8, 0, 1).expect("level"), None);
        assert_eq!(ledger.tile(0, 0, 0).expect("width"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_checkpoints_and_get_every_index_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, _) = ledger(dir.path());
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.append(draft(n)).await })
            })
            .collect();
        let mut indices = Vec::new();
        let mut checkpoints = std::collections::BTreeSet::new();
        for t in tasks {
            let a = t.await.expect("task").expect("append");
            // Acknowledged under a signed checkpoint that covers it.
            assert!(a.checkpoint.checkpoint.size > a.index);
            indices.push(a.index);
            checkpoints.insert(a.checkpoint.checkpoint.size);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..200).collect::<Vec<u64>>());
        assert!(
            checkpoints.len() < 200,
            "appends waiting together share one checkpoint ({} for 200 appends)",
            checkpoints.len()
        );
        assert_eq!(ledger.latest().expect("head").checkpoint.size, 200);
    }

    #[tokio::test]
    async fn a_failed_commit_is_not_acknowledged_and_stops_appends_until_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, store) = ledger(dir.path());
        ledger.append(draft(0)).await.expect("first");
        store.fail.store(true, Ordering::SeqCst);
        let err = ledger.append(draft(1)).await.expect_err("fsync failed");
        assert!(matches!(err, LedgerError::CommitFailed(_)), "{err}");
        // The cause is kept, not only its text.
        let source = std::error::Error::source(&err).expect("source");
        assert!(source.to_string().contains("disk full"), "{source}");
        // Nothing is acknowledged after it, even once the disk recovers:
        // the store must be re-verified first (a restart).
        store.fail.store(false, Ordering::SeqCst);
        let err = ledger.append(draft(2)).await.expect_err("stopped");
        assert!(matches!(err, LedgerError::Failed), "{err}");
        assert_eq!(ledger.latest().expect("head").checkpoint.size, 1);
    }

    /// A ledger in `home` (key `[7; 32]`) that re-opens its store after
    /// a full disk, probing every 20 ms: one entry appended, then the
    /// store's fsync says the disk is full and the next append fails so.
    /// The probe finds no room until the caller removes `home/PROBE` (a
    /// directory where its file goes). Returns the ledger and the first
    /// append.
    async fn filled(home: &Path) -> (Ledger, Appended) {
        std::fs::create_dir_all(home.join(PROBE).join("x")).expect("block the probe");
        // Weak: a handle kept here would keep the old store from closing.
        let latest: Arc<std::sync::Mutex<std::sync::Weak<FailingSync>>> = Arc::default();
        let opened = latest.clone();
        let opener: Opener = Arc::new(move |dir| {
            let store = failing(dir)?;
            *opened.lock().expect("lock") = Arc::downgrade(&store);
            Ok(store)
        });
        let options = LedgerOptions {
            probe_every: std::time::Duration::from_millis(20),
            ..LedgerOptions::default()
        };
        let key = SigningKey::from_bytes(&[7; 32]);
        let (ledger, _) = Ledger::start(
            opener(home).expect("store"),
            key,
            options,
            Some((home, opener)),
        )
        .expect("ledger");
        let first = ledger.append(draft(0)).await.expect("first");
        let store = latest.lock().expect("lock").upgrade().expect("opened");
        store.full.store(true, Ordering::SeqCst);
        drop(store);
        let err = ledger.append(draft(1)).await.expect_err("no room");
        assert!(err.is_storage_full(), "{err}");
        (ledger, first)
    }

    /// A full disk: appends are refused as `Full` while a probe finds no
    /// room; once it does, the sequencer re-opens and re-verifies the
    /// store and appends go on from what the store holds, with every
    /// acknowledged entry kept and the tree extending the last checkpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_stops_appends_until_a_probe_finds_room_then_they_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("ledger");
        let blocked = home.join(PROBE);
        let (ledger, first) = filled(&home).await;
        let mut failure = ledger.failure();
        // While there is no room: refused as full (the caller may retry),
        // the failure is told, reads go on.
        for _ in 0..5 {
            let err = ledger.append(draft(2)).await.expect_err("still full");
            assert!(matches!(err, LedgerError::Full), "{err}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let told = failure.borrow_and_update().clone().expect("failure told");
        assert!(told.starts_with(STORAGE_FULL), "{told}");
        assert_eq!(
            ledger.entry(0).expect("read").map(|e| !e.is_empty()),
            Some(true)
        );
        // Room returns: the next probe succeeds and the store is re-opened
        // (a new one, no longer failing).
        std::fs::remove_dir_all(&blocked).expect("free");
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            failure.wait_for(Option::is_none),
        )
        .await
        .expect("recovered in time")
        .expect("failure cleared");
        assert!(!home.join(PROBE).exists(), "the probe's file is removed");
        let next = ledger.append(draft(3)).await.expect("appends resumed");
        // Entry 1's commit failed after sled took it in memory: sled wrote
        // it when the old store closed, so the re-verified store holds it
        // (unacknowledged, signed). Either way the tree extends the last
        // acknowledged checkpoint.
        assert!(next.index == 1 || next.index == 2, "{}", next.index);
        let proof = ledger
            .prove_consistency(
                first.checkpoint.checkpoint.size,
                next.checkpoint.checkpoint.size,
            )
            .expect("consistency");
        merkle::verify_consistency(
            first.checkpoint.checkpoint.size,
            next.checkpoint.checkpoint.size,
            &proof,
            &first.checkpoint.checkpoint.root,
            &next.checkpoint.checkpoint.root,
        )
        .expect("the log extends what was acknowledged");
        ledger.close().await;
        // A restart verifies it all.
        let key = SigningKey::from_bytes(&[7; 32]);
        drop(ledger);
        let (_, report) = Ledger::open(&home, key, LedgerOptions::default()).expect("reopen");
        assert_eq!(report.size, next.index + 1);
    }

    /// What the re-opened store holds is verified before anything more is
    /// acknowledged: here the record of the last signed checkpoint (kept
    /// outside the store) says the log is longer than the store, as after
    /// a rollback while the disk was full. The re-open refuses it, appends
    /// stay refused for good (no more probing), and the failure says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_does_not_verify_when_re_opened_stays_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("ledger");
        let blocked = home.join(PROBE);
        let (ledger, _) = filled(&home).await;
        let mut failure = ledger.failure();
        let key = SigningKey::from_bytes(&[7; 32]);
        // Meanwhile the record of the last signed checkpoint is replaced
        // by one of a longer log (signed with the log's own key).
        let signer = NoteSigner::new(ledger.keys().origin(), key).expect("signer");
        let longer = SignedCheckpoint::sign(
            note::Checkpoint {
                origin: ledger.keys().origin().to_owned(),
                size: 100,
                root: [9; 32],
            },
            &signer,
        );
        std::fs::write(home.join(LAST_CHECKPOINT), longer.note.as_bytes()).expect("guard");
        std::fs::remove_dir_all(&blocked).expect("free");
        let told = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            failure.wait_for(|f| f.as_deref().is_some_and(|f| f.starts_with("re-opening"))),
        )
        .await
        .expect("the re-open was tried")
        .expect("failure")
        .clone()
        .expect("told");
        assert!(told.contains("rolled back"), "{told}");
        let err = ledger.append(draft(2)).await.expect_err("refused for good");
        assert!(matches!(err, LedgerError::Failed), "{err}");
        // Reads go on from the re-opened store.
        assert!(ledger.entry(0).expect("read").is_some());
        assert_eq!(ledger.latest().expect("head").checkpoint.size, 1);
    }
}
