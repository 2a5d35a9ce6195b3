//! The node's verifiable ledger: an append-only RFC 6962 Merkle log of
//! what happened, with signed checkpoints, proofs and auditor queries.
//!
//! - [`entry`]: the entry format (versioned, deterministic, capped).
//! - [`merkle`]: hashing, proof generation from stored subtrees, and pure
//!   offline proof verification.
//! - [`note`]: C2SP signed notes and `tlog-checkpoint` checkpoints.
//! - [`store`]: the [`store::LedgerStore`] trait and its sled implementation.
//!
//! One sequencer thread owns the writer. Appends queue on a channel; the
//! sequencer takes everything queued (up to `max_batch`) as one group
//! commit: entries, hashes, index keys, the new head and a checkpoint
//! signed over it go into one atomic batch, which is fsynced before any
//! appender of the batch is answered. So many concurrent appenders share
//! one fsync and one signature, and a crash leaves a prefix of whole
//! batches, each with its checkpoint.

pub mod entry;
pub mod merkle;
pub mod note;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::identity::NodeId;
use entry::{Entry, EntryDraft, EntryError, EntryKind};
use merkle::{Frontier, Hash, ProofError};
use note::{Checkpoint, NoteError, NoteSigner, NoteVerifier, SignedCheckpoint};
use store::{AppendBatch, IndexKey, LedgerStore, SledStore, StoreError, StoredTree};

/// Largest page a query or range read returns.
pub const MAX_PAGE: usize = 1000;
/// Entries a query may examine per page beyond those it returns, so no
/// query ever scans the whole log.
const EXAMINE_PER_PAGE: usize = 10_000;

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
    CommitFailed(String),
    /// An earlier commit failed; appends are refused until restart.
    #[error("the ledger stopped accepting appends after a failed commit; restart the node")]
    Failed,
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
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            queue: 16_384,
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

enum Request {
    Append {
        draft: EntryDraft,
        reply: oneshot::Sender<Result<Appended, LedgerError>>,
    },
    /// Stop after the appends queued before it.
    Close,
}

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

/// What a full verification of a stored log found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Entries checked.
    pub size: u64,
    /// The recomputed root.
    pub root: Hash,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// The latest checkpoint, if any.
    pub latest: Option<SignedCheckpoint>,
}

/// Recomputes the whole tree from the stored entries and checks every
/// stored hash, the head, and every checkpoint's signature and root.
/// Reports the first bad index. O(n) reads; memory O(log n).
pub fn verify_store(
    store: &dyn LedgerStore,
    verifier: &NoteVerifier,
) -> Result<VerifyReport, LedgerError> {
    let head = store.head()?;
    let (size, stored_root) = head.unwrap_or((0, merkle::empty_root()));
    let mut frontier = Frontier::default();
    let mut checkpoints = store.checkpoints(0, 256)?.into_iter().peekable();
    let mut checked = 0u64;
    let mut latest = None;
    let mut next_entry = 0u64;
    loop {
        let page = store.entries(next_entry, 1024)?;
        if page.is_empty() {
            break;
        }
        for (index, bytes) in page {
            if index != next_entry {
                return Err(LedgerError::Tampered {
                    index: next_entry,
                    detail: "entry missing (the next stored entry has a later index)".into(),
                });
            }
            let entry = Entry::decode(&bytes).map_err(|e| LedgerError::Tampered {
                index,
                detail: e.to_string(),
            })?;
            if entry.index != index {
                return Err(LedgerError::Tampered {
                    index,
                    detail: format!("entry stored at {index} says it is entry {}", entry.index),
                });
            }
            let leaf = merkle::leaf_hash(&bytes);
            if store.leaf_index(&leaf)? != Some(index) {
                return Err(LedgerError::Tampered {
                    index,
                    detail: "entry bytes do not match the leaf hash recorded for them".into(),
                });
            }
            let mut bad: Option<(u8, u64)> = None;
            let mut stored_err = None;
            frontier.push(leaf, |level, i, hash| {
                if bad.is_some() || stored_err.is_some() {
                    return;
                }
                match store.hash(level, i) {
                    Ok(Some(h)) if h == hash => {}
                    Ok(_) => bad = Some((level, i)),
                    Err(e) => stored_err = Some(e),
                }
            });
            if let Some(e) = stored_err {
                return Err(e.into());
            }
            if let Some((level, i)) = bad {
                let first = i << level;
                return Err(LedgerError::Tampered {
                    index: if level == 0 { index } else { first },
                    detail: if level == 0 {
                        "entry bytes do not match their stored hash".into()
                    } else {
                        format!(
                            "stored hash of entries {first}..={} does not match them",
                            first + (1u64 << level) - 1
                        )
                    },
                });
            }
            next_entry += 1;
            // Every checkpoint of this size must carry this root.
            while let Some((cp_size, _)) = checkpoints.peek() {
                if *cp_size > next_entry {
                    break;
                }
                let Some((cp_size, note)) = checkpoints.next() else {
                    break;
                };
                if cp_size < next_entry {
                    // Only possible for size 0 (no entries yet then).
                    if cp_size != 0 {
                        return Err(LedgerError::BadCheckpoint {
                            size: cp_size,
                            detail: "stored out of order".into(),
                        });
                    }
                }
                let signed = SignedCheckpoint::verify(note.as_bytes(), verifier).map_err(|e| {
                    LedgerError::BadCheckpoint {
                        size: cp_size,
                        detail: e.to_string(),
                    }
                })?;
                let expect = if cp_size == 0 {
                    merkle::empty_root()
                } else {
                    frontier.root()
                };
                if signed.checkpoint.size != cp_size || signed.checkpoint.root != expect {
                    return Err(LedgerError::BadCheckpoint {
                        size: cp_size,
                        detail: format!(
                            "its root is not the root of entries 0..{cp_size}: an entry before index {cp_size} was changed, or the log was forked"
                        ),
                    });
                }
                checked += 1;
                latest = Some(signed);
                if checkpoints.peek().is_none() {
                    checkpoints = store.checkpoints(cp_size + 1, 256)?.into_iter().peekable();
                }
            }
        }
    }
    if next_entry != size {
        return Err(LedgerError::Tampered {
            index: next_entry.min(size),
            detail: format!("the head says {size} entries but {next_entry} are stored"),
        });
    }
    if let Some((cp_size, _)) = checkpoints.next() {
        return Err(LedgerError::BadCheckpoint {
            size: cp_size,
            detail: format!("a checkpoint beyond the {size} stored entries: entries were lost"),
        });
    }
    let root = frontier.root();
    if root != stored_root {
        return Err(LedgerError::Tampered {
            index: size.saturating_sub(1),
            detail: "the stored head root differs from the recomputed root".into(),
        });
    }
    let last = store.last_signed()?;
    let latest_matches = match (&latest, last) {
        (None, None) => size == 0,
        (Some(cp), Some((s, r))) => cp.checkpoint.size == s && cp.checkpoint.root == r && s == size,
        _ => false,
    };
    if !latest_matches {
        return Err(LedgerError::BadCheckpoint {
            size,
            detail: "the last signed checkpoint does not cover the stored head".into(),
        });
    }
    Ok(VerifyReport {
        size,
        root,
        checkpoints: checked,
        latest,
    })
}

/// Filters of an auditor query; all optional, all must match.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Entries naming this dataset.
    pub dataset: Option<String>,
    /// Entries naming this node.
    pub party: Option<NodeId>,
    /// Entries of this kind.
    pub kind: Option<EntryKind>,
    /// Entries at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Entries before this time (ms).
    pub until_ms: Option<i64>,
}

impl Query {
    fn matches(&self, e: &Entry) -> bool {
        self.dataset
            .as_ref()
            .is_none_or(|d| e.draft.dataset.as_ref() == Some(d))
            && self.party.as_ref().is_none_or(|p| e.names(p))
            && self.kind.is_none_or(|k| e.draft.kind == k)
            && self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.until_ms.is_none_or(|t| e.time_ms < t)
    }

    /// The index to scan: the most selective one given.
    fn plan(&self) -> Plan {
        if let Some(d) = &self.dataset {
            Plan::Index(IndexKey::Dataset(d.clone()), b'd')
        } else if let Some(p) = &self.party {
            Plan::Index(IndexKey::Party(p.to_string()), b'p')
        } else if let Some(k) = self.kind {
            Plan::Index(IndexKey::Kind(k.code()), b'k')
        } else if self.since_ms.is_some() || self.until_ms.is_some() {
            Plan::Time
        } else {
            Plan::All
        }
    }
}

enum Plan {
    Index(IndexKey, u8),
    Time,
    All,
}

impl Plan {
    fn tag(&self) -> u8 {
        match self {
            Plan::Index(_, tag) => *tag,
            Plan::Time => b't',
            Plan::All => b'a',
        }
    }
}

/// One page of query results, all below `view.size`.
#[derive(Clone, Debug)]
pub struct Page {
    /// (index, entry bytes).
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Opaque token for the next page, if there may be more.
    pub next: Option<Vec<u8>>,
}

/// The node's ledger.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn LedgerStore>,
    tx: mpsc::Sender<Request>,
    head: watch::Receiver<Option<Arc<SignedCheckpoint>>>,
    verifier: NoteVerifier,
    failed: Arc<AtomicBool>,
    sequencer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Opens the ledger in `dir` (sled), verifies it in full, and starts
    /// the sequencer. A store that fails verification is refused, naming
    /// the first bad index.
    pub fn open(
        dir: &Path,
        key: SigningKey,
        node: &NodeId,
        options: LedgerOptions,
    ) -> Result<(Self, VerifyReport), LedgerError> {
        let store: Arc<dyn LedgerStore> = Arc::new(SledStore::open(dir)?);
        Self::with_store(store, key, node, options)
    }

    /// Like [`Ledger::open`] over any store.
    pub fn with_store(
        store: Arc<dyn LedgerStore>,
        key: SigningKey,
        node: &NodeId,
        options: LedgerOptions,
    ) -> Result<(Self, VerifyReport), LedgerError> {
        let signer = NoteSigner::new(&origin_for(node), key)?;
        let verifier = signer.verifier();
        let report = verify_store(store.as_ref(), &verifier)?;
        let frontier = Frontier::load(&StoredTree(store.as_ref()), report.size)?;
        let (head_tx, head_rx) = watch::channel(report.latest.clone().map(Arc::new));
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let sequencer = Sequencer {
            store: store.clone(),
            signer,
            frontier,
            last_signed: report
                .latest
                .as_ref()
                .map(|c| (c.checkpoint.size, c.checkpoint.root)),
            head: head_tx,
            failed: failed.clone(),
            max_batch: options.max_batch.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("ledger-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(|e| StoreError::Sync {
                path: "sequencer thread".into(),
                source: e,
            })?;
        Ok((
            Self {
                shared: Arc::new(Shared {
                    store,
                    tx,
                    head: head_rx,
                    verifier,
                    failed,
                    sequencer: std::sync::Mutex::new(Some(thread)),
                }),
            },
            report,
        ))
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
    }

    /// Appends an entry; returns once it is durable and signed over.
    pub async fn append(&self, draft: EntryDraft) -> Result<Appended, LedgerError> {
        Entry::check_draft(&draft)?;
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(LedgerError::Failed);
        }
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Request::Append { draft, reply })
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

    /// The verifier for this ledger's checkpoints.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.shared.verifier
    }

    fn size(&self) -> u64 {
        self.latest().map_or(0, |c| c.checkpoint.size)
    }

    /// The entry at `index`, if it is covered by the latest checkpoint.
    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        if index >= self.size() {
            return Ok(None);
        }
        Ok(self.shared.store.entry(index)?)
    }

    /// Entries `[from, from + limit)` below the latest checkpoint.
    pub fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        let size = self.size();
        let limit = limit.min(MAX_PAGE);
        let mut out = self.shared.store.entries(from, limit)?;
        out.retain(|(i, _)| *i < size);
        Ok(out)
    }

    /// The index of the entry with this leaf hash.
    pub fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, LedgerError> {
        Ok(self
            .shared
            .store
            .leaf_index(leaf)?
            .filter(|i| *i < self.size()))
    }

    /// The signed checkpoint of `size`, if the node signed one.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<SignedCheckpoint>, LedgerError> {
        let Some(note) = self.shared.store.checkpoint(size)? else {
            return Ok(None);
        };
        Ok(Some(SignedCheckpoint::verify(
            note.as_bytes(),
            &self.shared.verifier,
        )?))
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
            &StoredTree(self.shared.store.as_ref()),
            index,
            size,
        )?)
    }

    /// The consistency proof from `old` to `new` entries.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size(new)?;
        Ok(merkle::consistency_proof(
            &StoredTree(self.shared.store.as_ref()),
            old,
            new,
        )?)
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
        let limit = limit.clamp(1, MAX_PAGE);
        let plan = query.plan();
        let bad_token =
            || LedgerError::Range("invalid page token: it belongs to another query".into());
        // Token: plan tag ‖ u64 index (‖ i64 time for time plans).
        let (mut from_index, mut from_time) = (0u64, query.since_ms.unwrap_or(i64::MIN));
        if let Some(t) = token {
            if t.first() != Some(&plan.tag()) {
                return Err(bad_token());
            }
            match (&plan, t.len()) {
                (Plan::Time, 17) => {
                    from_time = i64::from_be_bytes(t[1..9].try_into().map_err(|_| bad_token())?);
                    from_index = u64::from_be_bytes(t[9..17].try_into().map_err(|_| bad_token())?);
                }
                (Plan::Index(..) | Plan::All, 9) => {
                    from_index = u64::from_be_bytes(t[1..9].try_into().map_err(|_| bad_token())?);
                }
                _ => return Err(bad_token()),
            }
        }
        let store = self.shared.store.as_ref();
        let mut entries = Vec::new();
        let mut examined = 0usize;
        let chunk = 256;
        loop {
            // Candidates in scan order: (index, time for time plans).
            let candidates: Vec<(u64, Option<i64>)> = match &plan {
                Plan::Index(key, _) => store
                    .scan_index(key, from_index, chunk)?
                    .into_iter()
                    .map(|i| (i, None))
                    .collect(),
                Plan::All => store
                    .entries(from_index, chunk)?
                    .into_iter()
                    .map(|(i, _)| (i, None))
                    .collect(),
                Plan::Time => store
                    .scan_time((from_time, from_index), chunk)?
                    .into_iter()
                    .map(|(t, i)| (i, Some(t)))
                    .collect(),
            };
            let exhausted = candidates.len() < chunk;
            for (index, time) in candidates {
                if time.is_some_and(|t| query.until_ms.is_some_and(|u| t >= u)) {
                    return Ok(Page {
                        entries,
                        next: None,
                    });
                }
                // Index-ordered plans: past the view, nothing more to find.
                if time.is_none() && index >= size {
                    return Ok(Page {
                        entries,
                        next: None,
                    });
                }
                if entries.len() >= limit || examined >= EXAMINE_PER_PAGE {
                    return Ok(Page {
                        entries,
                        next: Some(page_token(plan.tag(), index, time)),
                    });
                }
                examined += 1;
                if index < size
                    && let Some(bytes) = store.entry(index)?
                    && query.matches(&Entry::decode(&bytes)?)
                {
                    entries.push((index, bytes));
                }
                from_index = index.saturating_add(1);
                if let Some(t) = time {
                    from_time = t;
                }
            }
            if exhausted {
                return Ok(Page {
                    entries,
                    next: None,
                });
            }
        }
    }
}

/// A token that resumes a query at candidate `index` (at `time` for time
/// plans): tag ‖ [time] ‖ index.
fn page_token(tag: u8, index: u64, time: Option<i64>) -> Vec<u8> {
    let mut t = vec![tag];
    if let Some(time) = time {
        t.extend_from_slice(&time.to_be_bytes());
    }
    t.extend_from_slice(&index.to_be_bytes());
    t
}

struct Sequencer {
    store: Arc<dyn LedgerStore>,
    signer: NoteSigner,
    frontier: Frontier,
    last_signed: Option<(u64, Hash)>,
    head: watch::Sender<Option<Arc<SignedCheckpoint>>>,
    failed: Arc<AtomicBool>,
    max_batch: usize,
}

impl Sequencer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append { draft, reply } => batch.push((draft, reply)),
                    Request::Close => {
                        closing = true;
                        break;
                    }
                }
                if batch.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            if self.failed.load(Ordering::Acquire) {
                for (_, reply) in batch {
                    let _ = reply.send(Err(LedgerError::Failed));
                }
                continue;
            }
            self.commit(batch);
        }
        rx.close();
        // Answer whatever raced in behind the close.
        while let Ok(request) = rx.try_recv() {
            if let Request::Append { reply, .. } = request {
                let _ = reply.send(Err(LedgerError::Closed));
            }
        }
    }

    fn commit(
        &mut self,
        requests: Vec<(EntryDraft, oneshot::Sender<Result<Appended, LedgerError>>)>,
    ) {
        // Anti-fork guard: the tree being extended must be exactly the one
        // last signed, so the new checkpoint is consistent with it.
        let extends_signed = match self.last_signed {
            Some((size, root)) => size == self.frontier.size() && root == self.frontier.root(),
            None => self.frontier.size() == 0,
        };
        if !extends_signed {
            self.failed.store(true, Ordering::Release);
            let msg = format!(
                "the tree in memory (size {}) is not the last signed tree {:?}",
                self.frontier.size(),
                self.last_signed.map(|(s, _)| s)
            );
            tracing::error!(%msg, "ledger refuses to sign");
            for (_, reply) in requests {
                let _ = reply.send(Err(LedgerError::Fork(msg.clone())));
            }
            return;
        }
        let before = self.frontier.clone();
        let time_ms = now_ms();
        let mut batch = AppendBatch::default();
        let mut accepted = Vec::with_capacity(requests.len());
        for (draft, reply) in requests {
            let entry = Entry {
                index: self.frontier.size(),
                time_ms,
                draft,
            };
            let bytes = match entry.encode() {
                Ok(b) => b,
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            };
            let leaf = merkle::leaf_hash(&bytes);
            let subtrees = &mut batch.subtrees;
            self.frontier
                .push(leaf, |level, i, h| subtrees.push((level, i, h)));
            let d = &entry.draft;
            if let Some(ds) = &d.dataset {
                batch
                    .index_keys
                    .push((IndexKey::Dataset(ds.clone()), entry.index));
            }
            for p in &d.parties {
                batch
                    .index_keys
                    .push((IndexKey::Party(p.to_string()), entry.index));
            }
            batch
                .index_keys
                .push((IndexKey::Kind(d.kind.code()), entry.index));
            batch.times.push((time_ms, entry.index));
            batch.entries.push((entry.index, bytes, leaf));
            accepted.push((entry.index, leaf, reply));
        }
        if accepted.is_empty() {
            return;
        }
        let size = self.frontier.size();
        let root = self.frontier.root();
        let signed = SignedCheckpoint::sign(
            Checkpoint {
                origin: self.signer.verifier().name().to_owned(),
                size,
                root,
            },
            &self.signer,
        );
        batch.head = (size, root);
        batch.checkpoint = signed.note.clone();
        let result = self
            .store
            .append_batch(&batch)
            .and_then(|()| self.store.sync());
        match result {
            Ok(()) => {
                self.last_signed = Some((size, root));
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
                // The batch may or may not be on disk: stop appending
                // until a restart re-verifies the store (as databases do
                // after a failed fsync).
                tracing::error!(error = %e, "ledger commit failed; refusing further appends");
                self.frontier = before;
                self.failed.store(true, Ordering::Release);
                let msg = e.to_string();
                for (_, _, reply) in accepted {
                    let _ = reply.send(Err(LedgerError::CommitFailed(msg.clone())));
                }
            }
        }
    }
}
