//! Building group commits: the writer owns the tree's right edge, the
//! partly filled tail block and its postings, and turns entries into an
//! [`AppendBatch`]. Used by the sequencer, and by the benchmarks to build
//! exactly the batches the sequencer would.

use std::collections::{BTreeMap, HashMap};

use super::LedgerError;
use super::entry::Entry;
use super::merkle::{self, Frontier};
use super::note::{Checkpoint, NoteSigner, SignedCheckpoint};
use super::store::{
    AppendBatch, BLOCK_BITS, BLOCK_LEN, Block, IndexKey, LedgerStore, STORED_LEVEL, StoredTree,
};
use crate::digest::Hash;

/// The index keys an entry is filed under.
pub fn index_keys(entry: &Entry) -> Vec<IndexKey> {
    let d = &entry.draft;
    let mut keys = Vec::with_capacity(2 + d.parties.len());
    if let Some(ds) = &d.dataset {
        keys.push(IndexKey::Dataset(ds.clone()));
    }
    for p in &d.parties {
        keys.push(IndexKey::Party(p.to_string()));
    }
    keys.push(IndexKey::Kind(d.kind.code()));
    if let Some(g) = &d.grant {
        keys.push(IndexKey::Grant(g.clone()));
    }
    keys
}

/// Turns entries into group commits.
pub struct Writer {
    frontier: Frontier,
    /// Index of the block entries are being added to.
    tail_index: u64,
    tail: Block,
    /// Bitmaps of the tail block known so far (read from the store the
    /// first time a key is touched, unless the block is new).
    tail_postings: HashMap<IndexKey, u64>,
    tail_is_new: bool,
    batch: AppendBatch,
    touched: BTreeMap<(IndexKey, u64), u64>,
}

impl Writer {
    /// A writer continuing the stored tree of `size` entries.
    pub fn open(store: &dyn LedgerStore, size: u64) -> Result<Self, LedgerError> {
        let frontier = Frontier::load(&StoredTree::new(store), size)?;
        let tail_index = size >> BLOCK_BITS;
        let tail_is_new = size.is_multiple_of(BLOCK_LEN);
        let tail = if tail_is_new {
            Block::default()
        } else {
            store
                .block(tail_index)?
                .ok_or_else(|| LedgerError::Tampered {
                    index: tail_index << BLOCK_BITS,
                    detail: "the last block is missing".into(),
                })?
        };
        Ok(Self {
            frontier,
            tail_index,
            tail,
            tail_postings: HashMap::new(),
            tail_is_new,
            batch: AppendBatch::default(),
            touched: BTreeMap::new(),
        })
    }

    /// Entries so far, including those of the batch being built.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Root so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Adds an entry (whose index must be [`Writer::size`]) to the batch
    /// being built; returns its leaf hash.
    pub fn add(&mut self, store: &dyn LedgerStore, entry: &Entry) -> Result<Hash, LedgerError> {
        debug_assert_eq!(entry.index, self.frontier.size());
        let bytes = entry.encode()?;
        let leaf = merkle::leaf_hash(&bytes);
        let index = entry.index;
        let block = index >> BLOCK_BITS;
        if block != self.tail_index {
            let full = std::mem::take(&mut self.tail);
            if !full.entries.is_empty() {
                self.batch.blocks.push((self.tail_index, full));
            }
            self.tail_index = block;
            self.tail_postings.clear();
            self.tail_is_new = true;
        }
        let bit = 1u64 << (index & (BLOCK_LEN - 1));
        for key in index_keys(entry) {
            let known = match self.tail_postings.get(&key) {
                Some(b) => *b,
                None if self.tail_is_new => 0,
                None => store.posting(&key, block)?.unwrap_or(0),
            };
            let bitmap = known | bit;
            self.tail_postings.insert(key.clone(), bitmap);
            self.touched.insert((key, block), bitmap);
        }
        let subtrees = &mut self.batch.subtrees;
        self.frontier.push(leaf, |level, i, h| {
            if level >= STORED_LEVEL {
                subtrees.push((level, i, h));
            }
        });
        self.tail.leaves.push(leaf);
        self.tail.entries.push(bytes);
        self.batch.leaves.push((leaf, index));
        match self.batch.times.last_mut() {
            Some((t, _, last)) if *t == entry.time_ms && *last + 1 == index => *last = index,
            _ => self.batch.times.push((entry.time_ms, index, index)),
        }
        Ok(leaf)
    }

    /// Seals the batch: writes the tail block and postings, the new head
    /// and the checkpoint signed over it. Returns the batch to commit.
    pub fn seal(&mut self, signer: &NoteSigner) -> (AppendBatch, SignedCheckpoint) {
        let mut batch = std::mem::take(&mut self.batch);
        if self.tail.entries.len() as u64 == BLOCK_LEN {
            // A full block is final: write it once and start the next.
            batch
                .blocks
                .push((self.tail_index, std::mem::take(&mut self.tail)));
            self.tail_index += 1;
            self.tail_postings.clear();
            self.tail_is_new = true;
        } else if !self.tail.entries.is_empty() {
            batch.blocks.push((self.tail_index, self.tail.clone()));
        }
        batch.postings = std::mem::take(&mut self.touched)
            .into_iter()
            .map(|((key, block), bitmap)| (key, block, bitmap))
            .collect();
        let head = (self.frontier.size(), self.frontier.root());
        let signed = SignedCheckpoint::sign(
            Checkpoint {
                origin: signer.verifier().name().to_owned(),
                size: head.0,
                root: head.1,
            },
            signer,
        );
        batch.head = head;
        batch.checkpoint = signed.note.clone();
        (batch, signed)
    }
}
