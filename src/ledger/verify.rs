//! Verification of a stored log: the full check (`dsnode audit verify`,
//! and start-up when no verified mark is kept), the check of what is new
//! since a verified mark (start-up), and the background scrub of a live
//! log. Each recomputes the tree from the stored entries it covers and
//! checks every stored hash, index posting and time run, the head, and
//! every checkpoint's signature and root; it reports the first bad index.
//! O(n) reads in what it covers; memory O(log n) plus one page of blocks.

use std::collections::HashMap;

use super::LedgerError;
use super::entry::Entry;
use super::entry::EntryKind;
use super::keys::LogKeys;
use super::merkle::{self, Frontier};
use super::note::SignedCheckpoint;
use super::store::{BLOCK_BITS, BLOCK_LEN, IndexKey, LedgerStore, STORED_LEVEL, StoredTree};
use super::writer::index_keys;
use crate::digest::Hash;

/// What a verification of a stored log found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Entries in the log (the head, or the scrubbed size).
    pub size: u64,
    /// Entries below this index were not re-read: the tree over them was
    /// checked against a verified mark (0 for a full check).
    pub trusted_below: u64,
    /// The recomputed root.
    pub root: Hash,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// The latest checkpoint, if any.
    pub latest: Option<SignedCheckpoint>,
}

impl VerifyReport {
    /// Entries read and checked.
    pub fn checked(&self) -> u64 {
        self.size - self.trusted_below
    }
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
    /// A cursor over the checkpoints of size `from` and more.
    fn new(store: &'a dyn LedgerStore, keys: &'a LogKeys, from: u64) -> Result<Self, LedgerError> {
        let mut c = Self {
            store,
            keys,
            pending: Vec::new().into_iter(),
            next: None,
            checked: 0,
            latest: None,
        };
        c.refill(from)?;
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

/// Finds, for each entry checked, the time index's run (one per group
/// commit) that holds it, and checks it records the entry's time. Keeps
/// only the current run: a point lookup per run, memory O(1).
#[derive(Default)]
struct TimeCheck {
    run: Option<(u64, u64, i64)>,
}

impl TimeCheck {
    fn check(
        &mut self,
        store: &dyn LedgerStore,
        index: u64,
        time_ms: i64,
    ) -> Result<(), LedgerError> {
        let missing = || {
            tampered(
                index,
                "the time index does not record this entry at its time",
            )
        };
        if let Some((first, last, time)) = self.run
            && (first..=last).contains(&index)
        {
            return if time == time_ms {
                Ok(())
            } else {
                Err(missing())
            };
        }
        // Runs of this time, in first-index order.
        let mut from = (time_ms, 0u64);
        loop {
            let page = store.scan_time(from, 64)?;
            for &(time, first, last) in &page {
                if time != time_ms || first > index {
                    return Err(missing());
                }
                if index <= last {
                    self.run = Some((first, last, time));
                    return Ok(());
                }
            }
            match page.last() {
                Some(&(_, first, _)) if page.len() == 64 && first < u64::MAX => {
                    from = (time_ms, first + 1);
                }
                _ => return Err(missing()),
            }
        }
    }
}

/// No run of the time index names an entry at or beyond `size`: a full
/// scan of the index, in pages.
fn check_no_runs_beyond(store: &dyn LedgerStore, size: u64) -> Result<(), LedgerError> {
    let mut from = (i64::MIN, 0u64);
    loop {
        let page = store.scan_time(from, 1024)?;
        if let Some(&(_, first, _)) = page.iter().find(|(_, _, last)| *last >= size) {
            return Err(tampered(
                first,
                "the time index names entries that do not exist",
            ));
        }
        match page.last() {
            Some(&(time, first, _)) if page.len() == 1024 => {
                from = match first.checked_add(1) {
                    Some(next) => (time, next),
                    None => match time.checked_add(1) {
                        Some(t) => (t, 0),
                        None => return Ok(()),
                    },
                };
            }
            _ => return Ok(()),
        }
    }
}

/// `limit` blocks from `from`. In a live log (`live`), the last block is
/// rewritten by each commit and its entries and leaf hashes are two
/// keys: a read between the two writes does not decode, so it is tried
/// again (twice) before the failure counts.
fn read_blocks(
    store: &dyn LedgerStore,
    from: u64,
    limit: usize,
    live: bool,
) -> Result<Vec<(u64, super::store::Block)>, LedgerError> {
    let mut tries = 0;
    loop {
        match store.blocks(from, limit) {
            Ok(page) => return Ok(page),
            Err(_) if live && tries < 2 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One pass over stored blocks: the tree rebuilt from a frontier (empty,
/// or read from the stored hashes at a block boundary the caller trusts),
/// each entry and the stored data derived from it checked.
struct Pass<'a> {
    store: &'a dyn LedgerStore,
    keys: &'a LogKeys,
    frontier: Frontier,
    checkpoints: CheckpointCursor<'a>,
    times: TimeCheck,
}

impl<'a> Pass<'a> {
    /// A pass starting at `from` (a multiple of [`BLOCK_LEN`]); the tree
    /// below it is read from the stored subtree hashes, not rebuilt.
    fn new(store: &'a dyn LedgerStore, keys: &'a LogKeys, from: u64) -> Result<Self, LedgerError> {
        debug_assert!(from.is_multiple_of(BLOCK_LEN));
        let frontier = if from == 0 {
            Frontier::default()
        } else {
            Frontier::load(&StoredTree::new(store), from).map_err(|e| {
                tampered(
                    from.saturating_sub(1),
                    format!("the stored tree below entry {from} cannot be read: {e}"),
                )
            })?
        };
        let mut checkpoints = CheckpointCursor::new(store, keys, from)?;
        checkpoints.check_up_to(from, || frontier.root())?;
        Ok(Self {
            store,
            keys,
            frontier,
            checkpoints,
            times: TimeCheck::default(),
        })
    }

    /// Checks the stored entries from the frontier on, up to `end` or the
    /// last stored block. `pace` is told the entries checked after every
    /// block; it returns false to stop the pass (then `Ok(false)`).
    fn run(&mut self, end: u64, pace: &mut dyn FnMut(u64) -> bool) -> Result<bool, LedgerError> {
        let store = self.store;
        let mut next_block = self.frontier.size() >> BLOCK_BITS;
        let live = end != u64::MAX;
        while self.frontier.size() < end {
            // The loop runs only while end > size ≥ 0.
            let last_block = if live {
                (end - 1) >> BLOCK_BITS
            } else {
                u64::MAX
            };
            let want = (last_block - next_block).min(15) as usize + 1;
            let page = read_blocks(store, next_block, want, live)?;
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
                if self.frontier.size() != first {
                    return Err(tampered(first, "a block before this one is not full"));
                }
                let mut postings: HashMap<IndexKey, u64> = HashMap::new();
                let mut checked = 0u64;
                for (k, (bytes, leaf)) in block.entries.iter().zip(&block.leaves).enumerate() {
                    let index = first + k as u64;
                    if index >= end {
                        break;
                    }
                    let entry = self.check_entry(index, bytes, leaf)?;
                    for key in index_keys(&entry) {
                        *postings.entry(key).or_default() |= 1 << k;
                    }
                    checked += 1;
                }
                // Bits of entries not checked (beyond `end`) are left out.
                let mask = if checked == BLOCK_LEN {
                    u64::MAX
                } else {
                    (1u64 << checked) - 1
                };
                for (key, bitmap) in postings {
                    let stored = store.posting(&key, b)?.unwrap_or(0) & mask;
                    if stored != bitmap {
                        let wrong = stored ^ bitmap;
                        return Err(tampered(
                            first + u64::from(wrong.trailing_zeros()),
                            format!("the {key:?} index of block {b} does not match its entries"),
                        ));
                    }
                }
                next_block += 1;
                if !pace(checked) {
                    return Ok(false);
                }
                if self.frontier.size() >= end {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Checks one entry against its index, its leaf hash, the leaf-hash
    /// index, the time index, the key history and the stored subtree
    /// hashes it completes; adds it to the tree and checks the checkpoint
    /// of the new size, if one is stored. Returns the decoded entry.
    fn check_entry(&mut self, index: u64, bytes: &[u8], leaf: &Hash) -> Result<Entry, LedgerError> {
        let store = self.store;
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
        self.times.check(store, index, entry.time_ms)?;
        if entry.draft.kind == EntryKind::KeyRotated
            && !self.keys.rotation_indices().any(|r| r == index)
        {
            return Err(tampered(
                index,
                "a key rotation the key history was not built from",
            ));
        }
        let mut bad = None;
        let mut read_err = None;
        self.frontier.push(*leaf, |level, i, hash| {
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
        let frontier = &self.frontier;
        self.checkpoints
            .check_up_to(frontier.size(), || frontier.root())?;
        Ok(entry)
    }

    /// The checks at the end of a pass over the whole stored log: the
    /// head, the checkpoints and the last signed checkpoint agree with
    /// the rebuilt tree.
    fn finish(mut self, trusted_below: u64) -> Result<VerifyReport, LedgerError> {
        let (size, stored_root) = self.store.head()?.unwrap_or((0, merkle::empty_root()));
        let count = self.frontier.size();
        if count != size {
            return Err(tampered(
                count.min(size),
                format!("the head says {size} entries but {count} are stored"),
            ));
        }
        if let Some((cp_size, _)) = self.checkpoints.next.take() {
            return Err(bad_checkpoint(
                cp_size,
                format!("a checkpoint beyond the {size} stored entries: entries were lost"),
            ));
        }
        let root = self.frontier.root();
        if root != stored_root {
            return Err(tampered(
                size.saturating_sub(1),
                "the stored head root differs from the recomputed root",
            ));
        }
        let latest = self.checkpoints.latest;
        let latest_matches = match (&latest, self.store.last_signed()?) {
            (None, None) => size == 0,
            (Some(cp), Some((s, r))) => {
                cp.checkpoint.size == s && cp.checkpoint.root == r && s == size
            }
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
            trusted_below,
            root,
            checkpoints: self.checkpoints.checked,
            latest,
        })
    }
}

/// Verifies the whole stored log; see the module docs.
pub fn verify_store(store: &dyn LedgerStore, keys: &LogKeys) -> Result<VerifyReport, LedgerError> {
    let mut pass = Pass::new(store, keys, 0)?;
    pass.run(u64::MAX, &mut |_| true)?;
    let report = pass.finish(0)?;
    check_no_runs_beyond(store, report.size)?;
    Ok(report)
}

/// Verifies what the stored log holds beyond `mark`, a checkpoint of this
/// log verified before (its signature is checked here again). The tree
/// below the mark is not rebuilt from its entries: the root recomputed
/// from the stored subtree hashes at the mark's size must be the mark's
/// signed root, so a store whose tree was changed below the mark is
/// refused (after a full check, which names the first bad index); a
/// changed entry whose stored hashes were left alone is found
/// only by a full check ([`verify_store`], [`scrub`]), and so is a
/// changed index posting, leaf-hash index key, time run or checkpoint
/// below that block. Entries from the start of the block the mark ends
/// in (the mark's size rounded down to a multiple of 64) to the head are
/// checked in full, with their index keys and the checkpoints among
/// them, and so is the head.
pub fn verify_since(
    store: &dyn LedgerStore,
    keys: &LogKeys,
    mark: &SignedCheckpoint,
) -> Result<VerifyReport, LedgerError> {
    let marked = mark.checkpoint.size;
    let head = store.head()?.map_or(0, |(s, _)| s);
    if marked > head {
        return Err(bad_checkpoint(
            marked,
            format!(
                "the store ends at {head} entries, before the verified checkpoint of size {marked}: the store was rolled back or lost entries"
            ),
        ));
    }
    let root = merkle::root(&StoredTree::new(store), marked);
    if root.as_ref().ok() != Some(&mark.checkpoint.root) {
        // Something below the mark changed: the full check names the
        // first bad index.
        verify_store(store, keys)?;
        return Err(bad_checkpoint(
            marked,
            match root {
                Ok(_) => "the stored tree's root at the verified checkpoint's size is not that checkpoint's root: entries or hashes before it were changed".to_owned(),
                Err(e) => format!("the stored tree below the verified checkpoint cannot be read: {e}"),
            },
        ));
    }
    let from = marked & !(BLOCK_LEN - 1);
    let mut pass = Pass::new(store, keys, from)?;
    pass.run(u64::MAX, &mut |_| true)?;
    pass.finish(from)
}

/// Verifies the first `size` entries of a live log (a checkpointed size:
/// later appends do not change them), as [`verify_store`] does, pacing
/// itself through `pace` (told the entries checked after every block;
/// false stops the pass, which then returns `Ok(None)`).
pub fn scrub(
    store: &dyn LedgerStore,
    keys: &LogKeys,
    size: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> Result<Option<VerifyReport>, LedgerError> {
    let mut pass = Pass::new(store, keys, 0)?;
    if !pass.run(size, pace)? {
        return Ok(None);
    }
    let count = pass.frontier.size();
    if count != size {
        return Err(tampered(
            count,
            format!("{size} entries were checkpointed but only {count} are stored"),
        ));
    }
    let latest = pass.checkpoints.latest.take();
    if size > 0 && latest.as_ref().map(|c| c.checkpoint.size) != Some(size) {
        return Err(bad_checkpoint(
            size,
            "the checkpoint of this size is no longer stored",
        ));
    }
    Ok(Some(VerifyReport {
        size,
        trusted_below: 0,
        root: pass.frontier.root(),
        checkpoints: pass.checkpoints.checked,
        latest,
    }))
}
