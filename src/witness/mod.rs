//! Witnessing: nodes watch each other's logs (issue 8, THREATS.md row 14).
//!
//! When two nodes talk, and periodically for configured peers, the caller
//! sends `Peering.ExchangeCheckpoints` its latest checkpoint with a
//! consistency proof from the checkpoint the other node last saw of it;
//! the other node answers with its own, proven from the size the caller
//! last saw. Each side verifies the signature (under the log's key
//! history) and the proof against what it saw before ([`WitnessBook::observe`]),
//! records a newly seen checkpoint as `PeerCheckpointSeen`, and cosigns
//! it (C2SP `tlog-cosignature`, [`cosig`]). A node keeps the latest
//! cosignature each witness gave it and serves them beside its checkpoint.
//!
//! Two signed checkpoints of one log of the same size with different roots
//! are a fork (self-proving: no consistency proof can join them). The
//! witness then refuses to cosign, keeps both signed
//! notes as evidence (`witness/forks/`, a `ForkDetected` ledger entry,
//! the `dsnode_forks_detected_total` metric, an error log), and
//! `dsnode audit forks` lists and re-verifies them. A checkpoint smaller
//! than one seen is refused as stale and the larger one shown to its node,
//! which refuses to serve if its own store contradicts it; a node also
//! checks at start-up that its store holds every checkpoint a witness
//! cosigned for it.
//!
//! Files (in the data dir, outside `ledger/`):
//!
//! - `witness/seen/<origin>.note`: the largest verified checkpoint of each
//!   peer log;
//! - `witness/cosigned/<witness node id>.note`: this node's checkpoint with
//!   that witness's cosignature line, the latest one each witness gave;
//! - `witness/seen/<origin>.keys`: the key history seen of each log (a
//!   new one must extend it); `witness/seen/<node id>.origin`: the log each
//!   key was seen heading;
//! - `witness/forks/<origin>.first.json`: the first fork evidence of a log
//!   (it is never cosigned again).

pub mod cosig;
pub mod external;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::digest::Hash;
use crate::fsutil::{self, FileError};
use crate::identity::NodeId;
use crate::ledger::keys::LogKeys;
use crate::ledger::merkle;
use crate::ledger::note::{NoteVerifier, SignedCheckpoint};

/// Why a peer's checkpoint was not taken.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The log forked; the evidence is kept.
    #[error("fork in log {}: {}", .0.origin, .0.kind)]
    Fork(Box<ForkEvidence>),
    /// The proof does not join the checkpoints (nothing was recorded).
    #[error("{0}")]
    Inconsistent(String),
    /// Evidence of an earlier fork of this log is on file: nothing of it
    /// is cosigned any more.
    #[error("log {} forked before (evidence in witness/forks/); not cosigning it", .0.origin)]
    Forked(Box<ForkEvidence>),
    /// The book's files could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A witness cosigned a checkpoint of this node that its store does
    /// not hold (lost acknowledged entries, or an older copy restored).
    #[error(
        "witness {witness} cosigned this node's checkpoint of size {size} (root {}), but the ledger {}: the store lost acknowledged entries or was replaced by an older copy; restore the ledger that matches it",
        data_encoding::BASE64.encode(.root),
        if .size > .store_size { format!("ends at {}", .store_size) } else { "has another root at that size".to_owned() }
    )]
    StoreBehind {
        /// The witness (a node id, or an external witness's key name).
        witness: String,
        /// The cosigned checkpoint's size.
        size: u64,
        /// Its root.
        root: Hash,
        /// The size of this node's store.
        store_size: u64,
    },
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// A stored file is damaged.
    #[error("{path}: {detail}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// What observing a peer's checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A checkpoint larger than any seen before (or the first): recorded.
    Grew,
    /// The checkpoint already seen.
    Same,
    /// A larger checkpoint, but the proof does not start from the size
    /// last seen: send one from this size.
    NeedProofFrom(u64),
    /// A smaller checkpoint than the one seen (kept here): stale, or the
    /// log lost entries. Not recorded, not cosigned, and not fork evidence
    /// by itself (an honest node's message can arrive late when two nodes
    /// witness each other at once); the node is shown the larger one and
    /// checks it against its own store ([`check_cosigned`], and
    /// [`protocol::own_fork`]).
    Stale(Box<SignedCheckpoint>),
}

/// Two signed checkpoints of one log that no consistency proof joins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForkEvidence {
    /// Always `dsnode-fork-evidence`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The log's origin.
    pub origin: String,
    /// The log's node (its current key) when the fork was found.
    pub node_id: String,
    /// The C2SP vkeys of every key of the log's history.
    pub vkeys: Vec<String>,
    /// "same size, different roots".
    pub kind: String,
    /// The checkpoint seen first (signed note).
    pub seen: String,
    /// The checkpoint that contradicts it (signed note).
    pub conflicting: String,
    /// When it was found (ms since the Unix epoch, this node's clock).
    pub detected_at_ms: i64,
}

const SAME_SIZE: &str = "same size, different roots";

impl ForkEvidence {
    /// Checks the evidence on its own: both notes verify under one of the
    /// vkeys, are of the stated log, and contradict each other as stated.
    pub fn verify(&self) -> Result<(SignedCheckpoint, SignedCheckpoint), EvidenceError> {
        if self.format != "dsnode-fork-evidence" || self.version != 1 {
            return Err(EvidenceError::Format {
                format: self.format.clone(),
                version: self.version,
            });
        }
        let verifiers = self
            .vkeys
            .iter()
            .map(|v| NoteVerifier::from_vkey(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EvidenceError::Vkey(Arc::new(e)))?;
        let check = |what: &'static str, note: &str| {
            verifiers
                .iter()
                .filter(|v| v.name() == self.origin)
                .find_map(|v| SignedCheckpoint::verify(note.as_bytes(), v).ok())
                .ok_or_else(|| EvidenceError::NotSigned {
                    what,
                    origin: self.origin.clone(),
                })
        };
        let (a, b) = (
            check("seen", &self.seen)?,
            check("conflicting", &self.conflicting)?,
        );
        let contradicts = match self.kind.as_str() {
            SAME_SIZE => {
                a.checkpoint.size == b.checkpoint.size && a.checkpoint.root != b.checkpoint.root
            }
            other => return Err(EvidenceError::UnknownKind(other.to_owned())),
        };
        if !contradicts {
            return Err(EvidenceError::NoContradiction(self.kind.clone()));
        }
        Ok((a, b))
    }
}

/// Why fork evidence does not prove a fork, or could not be read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Not the evidence format.
    #[error("not dsnode fork evidence v1 (format `{format}`, version {version})")]
    Format {
        /// The format it states.
        format: String,
        /// The version it states.
        version: u32,
    },
    /// A verifier key does not parse.
    #[error(transparent)]
    Vkey(Arc<crate::ledger::note::NoteError>),
    /// A checkpoint is not signed by a key of the log.
    #[error("the {what} checkpoint is not signed by a key of log {origin}")]
    NotSigned {
        /// Which checkpoint ("seen", "conflicting").
        what: &'static str,
        /// The log.
        origin: String,
    },
    /// A kind of fork this node does not know.
    #[error("unknown kind of fork `{0}`")]
    UnknownKind(String),
    /// The checkpoints do not contradict each other as stated.
    #[error("the two checkpoints do not show `{0}`")]
    NoContradiction(String),
    /// The file could not be read or is not JSON evidence.
    #[error("{0}")]
    Unreadable(String),
}

/// An evidence file and what reading it gave.
pub type FoundEvidence = (PathBuf, Result<ForkEvidence, EvidenceError>);

/// Keeps what this node witnessed of other logs and the cosignatures it
/// received for its own; see the module docs.
pub struct WitnessBook {
    dir: PathBuf,
    /// One observation at a time (compare, then store).
    lock: Mutex<()>,
    /// One exchange at a time with each peer (two interleaved exchanges
    /// could show it this log's checkpoints out of order).
    exchanges: Mutex<std::collections::HashMap<NodeId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// A file name for a log origin (origins are `dsnode/dsn1…`).
fn slug(origin: &str) -> String {
    origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The size of the checkpoint in the note kept at `path` (0: none).
fn kept_size(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|kept| {
            let text = crate::ledger::note::unverified_text(&kept).ok()?;
            crate::ledger::note::Checkpoint::parse(text)
                .ok()
                .map(|c| c.size)
        })
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

impl WitnessBook {
    /// The book in `dir` (created, mode 0700).
    pub fn open(dir: &Path) -> Result<Self, WitnessError> {
        for sub in ["seen", "cosigned", "cosigned/external", "forks"] {
            fsutil::create_private_dir(&dir.join(sub))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
            exchanges: Mutex::default(),
        })
    }

    /// Waits for, then holds, the right to exchange with `peer`.
    pub async fn exchange_slot(&self, peer: &NodeId) -> tokio::sync::OwnedMutexGuard<()> {
        let slot = self
            .exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(peer.clone())
            .or_default()
            .clone();
        slot.lock_owned().await
    }

    fn seen_path(&self, origin: &str) -> PathBuf {
        self.dir.join("seen").join(format!("{}.note", slug(origin)))
    }

    /// The largest checkpoint of log `origin` seen (verified with `keys`).
    pub fn seen(&self, keys: &LogKeys) -> Result<Option<SignedCheckpoint>, WitnessError> {
        let path = self.seen_path(keys.origin());
        let note = match std::fs::read(&path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("read", &path, e).into()),
        };
        keys.verify_checkpoint(&note)
            .map(Some)
            .map_err(|e| WitnessError::Damaged {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
    }

    /// The first fork evidence kept for log `origin`, if any.
    fn forked(&self, origin: &str) -> Result<Option<ForkEvidence>, WitnessError> {
        let path = self
            .dir
            .join("forks")
            .join(format!("{}.first.json", slug(origin)));
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| WitnessError::Damaged {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::new("read", &path, e).into()),
        }
    }

    /// Checks that a log's key history extends the one seen before for its
    /// origin, and that its current key was never seen heading another
    /// log; records both. (A stolen retired key cannot pose as the log's
    /// current key once a witness saw the rotation; a certificate cannot
    /// open one log after another.)
    fn check_history(&self, keys: &LogKeys) -> Result<(), WitnessError> {
        let origin = keys.origin();
        let hex = |k: &[u8; 32]| data_encoding::HEXLOWER.encode(k);
        let now: Vec<String> = keys.keys().iter().map(|k| hex(&k.public_key)).collect();
        let path = self.dir.join("seen").join(format!("{}.keys", slug(origin)));
        let before: Vec<String> = match std::fs::read_to_string(&path) {
            Ok(t) => t.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(FileError::new("read", &path, e).into()),
        };
        if before.len() > now.len() || before[..] != now[..before.len()] {
            return Err(WitnessError::Inconsistent(format!(
                "log {origin} presented a key history that does not extend the {} key(s) seen before (a retired key posing as current?)",
                before.len()
            )));
        }
        let current = &keys.current().node_id;
        let by_key = self.dir.join("seen").join(format!("{current}.origin"));
        match std::fs::read_to_string(&by_key) {
            Ok(o) if o.trim() != origin => {
                return Err(WitnessError::Inconsistent(format!(
                    "node {current} presented log {} before, now log {origin}",
                    o.trim()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fsutil::write_atomic(&by_key, origin.as_bytes(), fsutil::PUBLIC_MODE)?;
            }
            Err(e) => return Err(FileError::new("read", &by_key, e).into()),
        }
        if before.len() != now.len() {
            fsutil::write_atomic(
                &path,
                format!("{}\n", now.join("\n")).as_bytes(),
                fsutil::PUBLIC_MODE,
            )?;
        }
        Ok(())
    }

    /// Compares a peer's verified checkpoint `new` with the largest seen of
    /// its log. `old` is the peer's checkpoint its `proof` starts from.
    /// A fork is recorded here (evidence file) and returned as an error;
    /// the caller records it in the ledger and metrics.
    pub fn observe(
        &self,
        keys: &LogKeys,
        new: &SignedCheckpoint,
        old: Option<&SignedCheckpoint>,
        proof: &[Hash],
    ) -> Result<Observed, WitnessError> {
        let _one = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let origin = keys.origin();
        if let Some(evidence) = self.forked(origin)? {
            return Err(WitnessError::Forked(Box::new(evidence)));
        }
        self.check_history(keys)?;
        let fork = |seen: &SignedCheckpoint, conflicting: &SignedCheckpoint, kind: &str| {
            let evidence = ForkEvidence {
                format: "dsnode-fork-evidence".into(),
                version: 1,
                origin: origin.to_owned(),
                node_id: keys.current().node_id.to_string(),
                vkeys: keys
                    .keys()
                    .iter()
                    .filter_map(|k| NoteVerifier::new(origin, &k.public_key).ok())
                    .map(|v| v.vkey())
                    .collect(),
                kind: kind.to_owned(),
                seen: seen.note.clone(),
                conflicting: conflicting.note.clone(),
                detected_at_ms: now_ms(),
            };
            self.keep_evidence(&evidence)
                .map(|()| WitnessError::Fork(Box::new(evidence)))
                .unwrap_or_else(|e| e)
        };
        let Some(seen) = self.seen(keys)? else {
            self.store_seen(origin, new)?;
            return Ok(Observed::Grew);
        };
        let (s, n) = (&seen.checkpoint, &new.checkpoint);
        if n.size == s.size {
            return if n.root == s.root {
                Ok(Observed::Same)
            } else {
                Err(fork(&seen, new, SAME_SIZE))
            };
        }
        if n.size < s.size {
            return Ok(Observed::Stale(Box::new(seen)));
        }
        let Some(old) = old.filter(|o| o.checkpoint.size == s.size) else {
            return Ok(Observed::NeedProofFrom(s.size));
        };
        if old.checkpoint.root != s.root {
            return Err(fork(&seen, old, SAME_SIZE));
        }
        merkle::verify_consistency(s.size, n.size, proof, &s.root, &n.root).map_err(|e| {
            WitnessError::Inconsistent(format!(
                "the consistency proof from size {} to {} does not verify: {e}",
                s.size, n.size
            ))
        })?;
        self.store_seen(origin, new)?;
        Ok(Observed::Grew)
    }

    fn store_seen(&self, origin: &str, cp: &SignedCheckpoint) -> Result<(), WitnessError> {
        Ok(fsutil::write_atomic(
            &self.seen_path(origin),
            cp.note.as_bytes(),
            fsutil::PUBLIC_MODE,
        )?)
    }

    /// Keeps the first evidence of a log's fork (later contradictions of
    /// an already forked log are refused without new files).
    fn keep_evidence(&self, evidence: &ForkEvidence) -> Result<(), WitnessError> {
        let path = self
            .dir
            .join("forks")
            .join(format!("{}.first.json", slug(&evidence.origin)));
        let json = serde_json::to_vec_pretty(evidence).map_err(|e| WitnessError::Damaged {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(fsutil::write_atomic(&path, &json, fsutil::PUBLIC_MODE)?)
    }

    /// Every fork evidence file, read (not verified: see
    /// [`ForkEvidence::verify`]), with its path.
    pub fn forks(dir: &Path) -> Result<Vec<FoundEvidence>, WitnessError> {
        let forks = dir.join("forks");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&forks) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(FileError::new("read", &forks, e).into()),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let read = fsutil::read(&path)
                .map_err(|e| EvidenceError::Unreadable(e.to_string()))
                .and_then(|b| {
                    serde_json::from_slice(&b)
                        .map_err(|e| EvidenceError::Unreadable(format!("not fork evidence: {e}")))
                });
            out.push((path, read));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Keeps the cosignature `witness` gave this node's checkpoint (the
    /// cosigned note), if it is for a checkpoint at least as large as the
    /// one kept from that witness.
    pub fn keep_cosigned(
        &self,
        witness: &NodeId,
        cosigned: &SignedCheckpoint,
    ) -> Result<(), WitnessError> {
        let _one = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.cosigned_size(witness) > cosigned.checkpoint.size {
            return Ok(());
        }
        let path = self.cosigned_path(witness);
        Ok(fsutil::write_atomic(
            &path,
            cosigned.note.as_bytes(),
            fsutil::PUBLIC_MODE,
        )?)
    }

    fn cosigned_path(&self, witness: &NodeId) -> PathBuf {
        self.dir.join("cosigned").join(format!("{witness}.note"))
    }

    /// The size of this node's checkpoint `witness` last cosigned (0: none).
    pub fn cosigned_size(&self, witness: &NodeId) -> u64 {
        kept_size(&self.cosigned_path(witness))
    }

    fn external_path(&self, witness: &str) -> PathBuf {
        self.dir
            .join("cosigned")
            .join("external")
            .join(format!("{witness}.note"))
    }

    /// Keeps the cosigned note an external witness (key name `witness`)
    /// gave this node's checkpoint of `size`, unless one of a larger size
    /// is kept from it. The caller verified the cosignature.
    pub fn keep_cosigned_external(
        &self,
        witness: &str,
        size: u64,
        cosigned: &str,
    ) -> Result<(), WitnessError> {
        let _one = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.cosigned_external_size(witness) > size {
            return Ok(());
        }
        Ok(fsutil::write_atomic(
            &self.external_path(witness),
            cosigned.as_bytes(),
            fsutil::PUBLIC_MODE,
        )?)
    }

    /// The size of this node's checkpoint the external witness `witness`
    /// last cosigned (0: none kept).
    pub fn cosigned_external_size(&self, witness: &str) -> u64 {
        kept_size(&self.external_path(witness))
    }

    /// The cosigned checkpoints kept from external witnesses, by file
    /// name (unverified bytes).
    pub fn cosigned_external(&self) -> Result<Vec<(String, Vec<u8>)>, WitnessError> {
        let dir = self.dir.join("cosigned").join("external");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(FileError::new("read", &dir, e).into()),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".note") else {
                continue;
            };
            // Only regular files of a cosigned note's size: anything else
            // here is not ours, and must not stop the node.
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.len() <= 64 << 10 => {
                    out.push((stem.to_owned(), fsutil::read(&path)?));
                }
                _ => tracing::warn!(path = %path.display(), "ignored: not a kept cosigned note"),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The cosigned checkpoints kept, by witness node id (unverified bytes).
    pub fn cosigned(&self) -> Result<Vec<(NodeId, Vec<u8>)>, WitnessError> {
        let dir = self.dir.join("cosigned");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| FileError::new("read", &dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(Ok(witness)) = name.strip_suffix(".note").map(str::parse::<NodeId>) else {
                continue;
            };
            let path = entry.path();
            out.push((witness, fsutil::read(&path)?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Checks that the ledger holds every checkpoint a witness cosigned for
/// this node: each kept cosigned note whose own signature verifies must be
/// a checkpoint the store still has, with the same root. A store restored
/// from an older backup (or that lost acknowledged entries) fails here.
pub fn check_cosigned(
    book: &WitnessBook,
    ledger: &crate::ledger::Ledger,
) -> Result<(), WitnessError> {
    let keys = ledger.keys();
    let size = ledger.latest().map_or(0, |c| c.checkpoint.size);
    let peers = book
        .cosigned()?
        .into_iter()
        .map(|(w, note)| (w.to_string(), note));
    for (witness, note) in peers.chain(book.cosigned_external()?) {
        let Ok(cp) = keys.verify_checkpoint(&note) else {
            tracing::warn!(%witness, "a kept cosigned checkpoint is not this log's; ignored");
            continue;
        };
        let n = &cp.checkpoint;
        let stored = if n.size <= size {
            ledger.checkpoint_at(n.size)?
        } else {
            None
        };
        if stored.as_ref().is_none_or(|s| s.checkpoint.root != n.root) {
            return Err(WitnessError::StoreBehind {
                witness,
                size: n.size,
                root: n.root,
                store_size: size,
            });
        }
    }
    Ok(())
}
