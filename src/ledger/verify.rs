//! Full verification of a stored log: the start-up check and
//! `dsnode audit verify`. Recomputes the tree from the stored entries and
//! checks every stored hash, index posting and time run, the head, and
//! every checkpoint's signature and root; reports the first bad index.
//! O(n) reads; memory O(log n) plus one block and the time index's runs
//! (one per group commit).

use std::collections::HashMap;

use super::LedgerError;
use super::entry::Entry;
use super::entry::EntryKind;
use super::keys::LogKeys;
use super::merkle::{self, Frontier};
use super::note::SignedCheckpoint;
use super::store::{BLOCK_BITS, IndexKey, LedgerStore, STORED_LEVEL};
use super::writer::index_keys;
use crate::digest::Hash;

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

fn tampered(index: u64, detail: impl Into<String>) -> LedgerError {
    LedgerError::Tampered {
        index,
        detail: detail.into(),
    }
}

fn bad_checkpoint(size: u64, detail: impl Into<String>) -> LedgerError {
    LedgerError::BadCheckpoint {
        size,
        detail: detail.into(),
    }
}

/// Checks the stored checkpoints, in size order, against the roots of
/// the tree as it is rebuilt.
struct CheckpointCursor<'a> {
    store: &'a dyn LedgerStore,
    keys: &'a LogKeys,
    pending: std::vec::IntoIter<(u64, String)>,
    next: Option<(u64, String)>,
    checked: u64,
    latest: Option<SignedCheckpoint>,
}

impl<'a> CheckpointCursor<'a> {
    fn new(store: &'a dyn LedgerStore, keys: &'a LogKeys) -> Result<Self, LedgerError> {
        let mut c = Self {
            store,
            keys,
            pending: Vec::new().into_iter(),
            next: None,
            checked: 0,
            latest: None,
        };
        c.refill(0)?;
        Ok(c)
    }

    fn refill(&mut self, from: u64) -> Result<(), LedgerError> {
        self.pending = self.store.checkpoints(from, 256)?.into_iter();
        self.next = self.pending.next();
        Ok(())
    }

    /// Checks every checkpoint of size ≤ `size` (the tree has `size`
    /// entries and root `root()`, computed only if a checkpoint needs it).
    fn check_up_to(&mut self, size: u64, root: impl Fn() -> Hash) -> Result<(), LedgerError> {
        while let Some((cp_size, note)) = self.next.take() {
            if cp_size > size {
                self.next = Some((cp_size, note));
                break;
            }
            if cp_size < size {
                return Err(bad_checkpoint(cp_size, "stored out of order"));
            }
            let signed = self
                .keys
                .verify_checkpoint(note.as_bytes())
                .map_err(|e| bad_checkpoint(cp_size, e.to_string()))?;
            if signed.checkpoint.size != cp_size || signed.checkpoint.root != root() {
                return Err(bad_checkpoint(
                    cp_size,
                    format!(
                        "its root is not the root of entries 0..{cp_size}: an entry before index {cp_size} was changed, or the log was forked"
                    ),
                ));
            }
            self.checked += 1;
            self.latest = Some(signed);
            self.next = self.pending.next();
            if self.next.is_none() {
                self.refill(cp_size + 1)?;
            }
        }
        Ok(())
    }
}

/// Verifies the whole stored log; see the module docs.
pub fn verify_store(store: &dyn LedgerStore, keys: &LogKeys) -> Result<VerifyReport, LedgerError> {
    let (size, stored_root) = store.head()?.unwrap_or((0, merkle::empty_root()));
    let mut frontier = Frontier::default();
    let mut checkpoints = CheckpointCursor::new(store, keys)?;
    checkpoints.check_up_to(0, merkle::empty_root)?;
    let mut runs = TimeRuns::load(store)?;
    let mut next_block = 0u64;
    loop {
        let page = store.blocks(next_block, 64)?;
        if page.is_empty() {
            break;
        }
        for (b, block) in page {
            let first = b << BLOCK_BITS;
            if b != next_block {
                return Err(tampered(
                    next_block << BLOCK_BITS,
                    "entries missing (the next stored block starts later)",
                ));
            }
            if frontier.size() != first {
                return Err(tampered(first, "a block before this one is not full"));
            }
            let mut postings: HashMap<IndexKey, u64> = HashMap::new();
            for (k, (bytes, leaf)) in block.entries.iter().zip(&block.leaves).enumerate() {
                let index = first + k as u64;
                let entry = Entry::decode(bytes).map_err(|e| tampered(index, e.to_string()))?;
                if entry.index != index {
                    return Err(tampered(
                        index,
                        format!("entry stored at {index} says it is entry {}", entry.index),
                    ));
                }
                if merkle::leaf_hash(bytes) != *leaf {
                    return Err(tampered(
                        index,
                        "entry bytes do not match their stored leaf hash",
                    ));
                }
                if store.leaf_index(leaf)? != Some(index) {
                    return Err(tampered(
                        index,
                        "the leaf-hash index does not point at this entry",
                    ));
                }
                runs.check(index, entry.time_ms)?;
                if entry.draft.kind == EntryKind::KeyRotated
                    && !keys.rotation_indices().any(|r| r == index)
                {
                    return Err(tampered(
                        index,
                        "a key rotation the key history was not built from",
                    ));
                }
                for key in index_keys(&entry) {
                    *postings.entry(key).or_default() |= 1 << k;
                }
                let mut bad = None;
                let mut read_err = None;
                frontier.push(*leaf, |level, i, hash| {
                    if level < STORED_LEVEL || bad.is_some() || read_err.is_some() {
                        return;
                    }
                    match store.hash(level, i) {
                        Ok(Some(h)) if h == hash => {}
                        Ok(_) => bad = Some((level, i)),
                        Err(e) => read_err = Some(e),
                    }
                });
                if let Some(e) = read_err {
                    return Err(e.into());
                }
                if let Some((level, i)) = bad {
                    let lo = i << level;
                    return Err(tampered(
                        lo,
                        format!(
                            "stored hash of entries {lo}..={} does not match them",
                            lo + (1u64 << level) - 1
                        ),
                    ));
                }
                checkpoints.check_up_to(frontier.size(), || frontier.root())?;
            }
            for (key, bitmap) in postings {
                let stored = store.posting(&key, b)?.unwrap_or(0);
                if stored != bitmap {
                    let wrong = stored ^ bitmap;
                    return Err(tampered(
                        first + u64::from(wrong.trailing_zeros()),
                        format!("the {key:?} index of block {b} does not match its entries"),
                    ));
                }
            }
            next_block += 1;
        }
    }
    let count = frontier.size();
    if count != size {
        return Err(tampered(
            count.min(size),
            format!("the head says {size} entries but {count} are stored"),
        ));
    }
    runs.finish(size)?;
    if let Some((cp_size, _)) = checkpoints.next.take() {
        return Err(bad_checkpoint(
            cp_size,
            format!("a checkpoint beyond the {size} stored entries: entries were lost"),
        ));
    }
    let root = frontier.root();
    if root != stored_root {
        return Err(tampered(
            size.saturating_sub(1),
            "the stored head root differs from the recomputed root",
        ));
    }
    let latest = checkpoints.latest;
    let latest_matches = match (&latest, store.last_signed()?) {
        (None, None) => size == 0,
        (Some(cp), Some((s, r))) => cp.checkpoint.size == s && cp.checkpoint.root == r && s == size,
        _ => false,
    };
    if !latest_matches {
        return Err(bad_checkpoint(
            size,
            "the last signed checkpoint does not cover the stored head",
        ));
    }
    Ok(VerifyReport {
        size,
        root,
        checkpoints: checkpoints.checked,
        latest,
    })
}

/// The time index's runs, sorted by first index, checked against entries
/// in index order: every entry is in exactly one run, with its time.
struct TimeRuns {
    runs: std::vec::IntoIter<(u64, u64, i64)>,
    current: Option<(u64, u64, i64)>,
}

impl TimeRuns {
    fn load(store: &dyn LedgerStore) -> Result<Self, LedgerError> {
        let mut runs = Vec::new();
        let mut from = (i64::MIN, 0u64);
        loop {
            let page = store.scan_time(from, 1024)?;
            let Some(&(t, f, _)) = page.last() else { break };
            runs.extend(page.iter().map(|&(time, first, last)| (first, last, time)));
            if f == u64::MAX {
                break;
            }
            from = (t, f + 1);
        }
        runs.sort_unstable();
        let mut runs = runs.into_iter();
        let current = runs.next();
        Ok(Self { runs, current })
    }

    fn check(&mut self, index: u64, time_ms: i64) -> Result<(), LedgerError> {
        while let Some((_, last, _)) = self.current {
            if last >= index {
                break;
            }
            self.current = self.runs.next();
        }
        match self.current {
            Some((first, _, time)) if first <= index && time == time_ms => Ok(()),
            _ => Err(tampered(
                index,
                "the time index does not record this entry at its time",
            )),
        }
    }

    fn finish(mut self, size: u64) -> Result<(), LedgerError> {
        let beyond = self
            .current
            .take()
            .into_iter()
            .chain(self.runs)
            .find(|(_, last, _)| *last >= size);
        match beyond {
            Some((first, _, _)) => Err(tampered(
                first,
                "the time index names entries that do not exist",
            )),
            None => Ok(()),
        }
    }
}
