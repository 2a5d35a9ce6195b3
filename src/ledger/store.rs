//! Ledger storage: the [`LedgerStore`] trait and its sled implementation.
//!
//! Entries are stored in blocks of [`BLOCK_LEN`] consecutive entries (with
//! their leaf hashes), because sled costs about 5 µs per key written on
//! these machines whatever the value size: writing one key per entry and
//! per index would cap the ledger near 10,000 entries/s. One sled tree,
//! prefixed keys, integers big-endian (key order is numeric order):
//!
//! | key | value |
//! |---|---|
//! | `E ‖ block` | a [`Block`]'s entries: up to 64 |
//! | `F ‖ block` | the block's leaf hashes (what proofs read) |
//! | `H ‖ level ‖ index` | hash of a complete subtree, levels ≥ [`STORED_LEVEL`] only (lower ones come from a block's leaves) |
//! | `S` | tree size ‖ root |
//! | `C ‖ size` | signed checkpoint note of that size |
//! | `L` | size ‖ root of the last checkpoint signed (anti-fork guard) |
//! | `D ‖ leaf hash` | entry index |
//! | `I ‖ tag ‖ key ‖ 0x00 ‖ block` | 64-bit map of the block's entries under that key: by dataset (`d`), party (`p`), kind (`k`), grant (`g`) |
//! | `T ‖ time ‖ first index` | last index: a run of entries recorded at that time |
//! | `R ‖ name` | a record committed with an entry (e.g. the grant an `AccessGranted` entry hashes, and its end-of-validity index), or an index derived from such records; outside the tree |
//!
//! A group commit is one `apply_batch` holding the blocks it filled, the
//! subtree hashes it completed, its index keys, the new size and root, and
//! the batch's checkpoint, so all of it lands together or not at all.
//! sled 0.34's `flush()` is not an fsync on Linux (it uses
//! `sync_file_range`), so [`LedgerStore::sync`] fsyncs the database file
//! after it.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::digest::Hash;

use super::merkle::{self, ProofError, SubtreeSource};

/// log2 of the block length.
pub const BLOCK_BITS: u32 = 6;
/// Entries per block.
pub const BLOCK_LEN: u64 = 1 << BLOCK_BITS;
/// Lowest subtree level whose hashes are stored; lower levels are computed
/// from a block's leaf hashes (a block is a complete subtree of this level).
pub const STORED_LEVEL: u8 = BLOCK_BITS as u8;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("ledger store {path}: {source}")]
    Sled {
        /// The store directory.
        path: String,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// sled found a checksum failure: bytes on disk were changed.
    #[error(
        "ledger store {path} is corrupted (sled found a record whose checksum fails: bytes on disk were changed); refusing to use it"
    )]
    Corrupted {
        /// The store directory.
        path: String,
    },
    /// Another process (a running node) holds the store.
    #[error("ledger store {path} is in use by another process (is the node running?)")]
    Locked {
        /// The store directory.
        path: String,
    },
    /// The fsync after a flush failed.
    #[error("ledger store {path}: fsync failed: {source}")]
    Sync {
        /// The database file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value has the wrong shape.
    #[error("ledger store: corrupt value under key {key}: {detail}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

fn corrupt(key: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.into(),
        detail: detail.into(),
    }
}

/// Up to [`BLOCK_LEN`] consecutive entries (block `b` holds entries
/// `b·64 …`) with their leaf hashes.
///
/// Stored as two values so that proofs read only the 2 KiB of leaf hashes:
/// entries `u8 count ‖ count × (u16 length ‖ bytes)`, leaves `count × 32`
/// bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// Leaf hash of each entry.
    pub leaves: Vec<Hash>,
    /// Each entry's canonical bytes.
    pub entries: Vec<Vec<u8>>,
}

impl Block {
    /// The stored entries value.
    pub fn encode_entries(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|e| e.len() + 2).sum();
        let mut out = Vec::with_capacity(1 + size);
        out.push(self.entries.len() as u8);
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u16).to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    /// The stored leaves value.
    pub fn encode_leaves(&self) -> Vec<u8> {
        self.leaves.concat()
    }

    /// Leaf hashes from their stored value.
    pub fn decode_leaves(bytes: &[u8], block: u64) -> Result<Vec<Hash>, StoreError> {
        let n = bytes.len() / 32;
        if bytes.is_empty() || !bytes.len().is_multiple_of(32) || n as u64 > BLOCK_LEN {
            return Err(corrupt(
                format!("F{block}"),
                format!("{} bytes is not 1 to {BLOCK_LEN} leaf hashes", bytes.len()),
            ));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }

    /// A block from its two stored values.
    pub fn decode(entries: &[u8], leaves: &[u8], block: u64) -> Result<Self, StoreError> {
        let key = || format!("E{block}");
        let count = usize::from(
            *entries
                .first()
                .ok_or_else(|| corrupt(key(), "empty block"))?,
        );
        let leaves = Self::decode_leaves(leaves, block)?;
        if count != leaves.len() {
            return Err(corrupt(
                key(),
                format!("{count} entries but {} leaf hashes", leaves.len()),
            ));
        }
        let mut pos = 1;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let len = entries
                .get(pos..pos + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                .ok_or_else(|| corrupt(key(), "truncated entry length"))?;
            let e = entries
                .get(pos + 2..pos + 2 + len)
                .ok_or_else(|| corrupt(key(), "truncated entry"))?;
            out.push(e.to_vec());
            pos += 2 + len;
        }
        if pos != entries.len() {
            return Err(corrupt(key(), "trailing bytes after the block's entries"));
        }
        Ok(Self {
            leaves,
            entries: out,
        })
    }
}

/// A secondary index key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKey {
    /// Entries naming this dataset.
    Dataset(String),
    /// Entries naming this node as a party.
    Party(String),
    /// Entries of this kind (code).
    Kind(u16),
    /// Entries naming this grant.
    Grant(String),
}

impl IndexKey {
    /// The key prefix `I ‖ tag ‖ key ‖ 0x00`.
    fn prefix(&self) -> Vec<u8> {
        let mut k = vec![b'I'];
        match self {
            IndexKey::Dataset(d) => {
                k.push(b'd');
                k.extend_from_slice(d.as_bytes());
            }
            IndexKey::Party(p) => {
                k.push(b'p');
                k.extend_from_slice(p.as_bytes());
            }
            IndexKey::Kind(c) => {
                k.push(b'k');
                k.extend_from_slice(&c.to_be_bytes());
            }
            IndexKey::Grant(g) => {
                k.push(b'g');
                k.extend_from_slice(g.as_bytes());
            }
        }
        k.push(0);
        k
    }
}

/// Everything one group commit writes.
#[derive(Clone, Debug, Default)]
pub struct AppendBatch {
    /// Blocks the batch filled or extended, whole.
    pub blocks: Vec<(u64, Block)>,
    /// Complete subtrees at levels ≥ [`STORED_LEVEL`] the batch completed.
    pub subtrees: Vec<(u8, u64, Hash)>,
    /// (leaf hash, index) of every new entry.
    pub leaves: Vec<(Hash, u64)>,
    /// (key, block, bitmap): the whole new bitmap of each touched posting.
    pub postings: Vec<(IndexKey, u64, u64)>,
    /// (time ms, first index, last index) runs.
    pub times: Vec<(i64, u64, u64)>,
    /// New tree size and root.
    pub head: (u64, Hash),
    /// The checkpoint signed over `head`: its note.
    pub checkpoint: String,
    /// (name, value) records committed with the batch's entries.
    pub records: Vec<Record>,
}

/// A (name, value) record kept beside the log (see [`AppendBatch::records`]).
pub type Record = (Vec<u8>, Vec<u8>);

/// What the ledger needs of a store. Writes are atomic per batch and
/// durable after [`LedgerStore::sync`].
pub trait LedgerStore: Send + Sync + 'static {
    /// Writes a batch atomically (not yet durable).
    fn append_batch(&self, batch: &AppendBatch) -> Result<(), StoreError>;
    /// Makes every written batch durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Writes records outside any entry, atomically (not yet durable):
    /// indexes derived from records already committed with their entries.
    fn put_records(&self, records: &[Record]) -> Result<(), StoreError>;
    /// A block.
    fn block(&self, block: u64) -> Result<Option<Block>, StoreError>;
    /// A block's leaf hashes only.
    fn leaves(&self, block: u64) -> Result<Option<Vec<Hash>>, StoreError>;
    /// Blocks from `from`, in order, at most `limit`.
    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<(u64, Block)>, StoreError>;
    /// A stored subtree hash (levels ≥ [`STORED_LEVEL`]).
    fn hash(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError>;
    /// Tree size and root.
    fn head(&self) -> Result<Option<(u64, Hash)>, StoreError>;
    /// Size and root of the last checkpoint signed.
    fn last_signed(&self) -> Result<Option<(u64, Hash)>, StoreError>;
    /// The checkpoint note of `size`, if one was signed.
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError>;
    /// Checkpoints from size `from`, in order, at most `limit`.
    fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// The index of the entry with this leaf hash.
    fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, StoreError>;
    /// The bitmap of `key` in `block`.
    fn posting(&self, key: &IndexKey, block: u64) -> Result<Option<u64>, StoreError>;
    /// (block, bitmap) postings of `key` from `from` block, at most `limit`.
    fn scan_postings(
        &self,
        key: &IndexKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError>;
    /// (time, first, last) runs from `(time, first)` on, in time order, at
    /// most `limit`.
    fn scan_time(&self, from: (i64, u64), limit: usize)
    -> Result<Vec<(i64, u64, u64)>, StoreError>;
    /// A record by name.
    fn record(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// (name, value) of the records whose name starts with `prefix`, in
    /// name order, after `after` (exclusive), at most `limit`.
    fn records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// An entry's bytes.
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut block) = self.block(index >> BLOCK_BITS)? else {
            return Ok(None);
        };
        let offset = (index & (BLOCK_LEN - 1)) as usize;
        Ok((offset < block.entries.len()).then(|| block.entries.swap_remove(offset)))
    }
}

/// The sled implementation.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    db_file: File,
    /// sled blob files already fsynced (see [`LedgerStore::sync`]).
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

fn be_u64(v: &[u8], key: &str) -> Result<u64, StoreError> {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, format!("expected 8 bytes, got {}", v.len())))
}

fn hash_value(v: &[u8], key: &str) -> Result<Hash, StoreError> {
    v.try_into().map_err(|_| {
        corrupt(
            key,
            format!("expected a 32-byte hash, got {} bytes", v.len()),
        )
    })
}

fn size_root(v: &[u8], key: &str) -> Result<(u64, Hash), StoreError> {
    if v.len() != 40 {
        return Err(corrupt(
            key,
            format!("expected size and root (40 bytes), got {}", v.len()),
        ));
    }
    Ok((be_u64(&v[..8], key)?, hash_value(&v[8..], key)?))
}

fn key_u64(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn hash_key(level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'H';
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn leaf_key(leaf: &Hash) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'D';
    k[1..].copy_from_slice(leaf);
    k
}

fn posting_key(key: &IndexKey, block: u64) -> Vec<u8> {
    let mut k = key.prefix();
    k.extend_from_slice(&block.to_be_bytes());
    k
}

/// Time as an order-preserving unsigned key.
fn record_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'R');
    k.extend_from_slice(name);
    k
}

fn time_key(time_ms: i64, first: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'T';
    k[1..9].copy_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    k[9..].copy_from_slice(&first.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled {
            path: path.clone(),
            source: sled::Error::Io(e),
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(1 << 30)
            // Every commit is flushed and fsynced by the sequencer; sled's
            // background flusher would only compete for the two cores.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked { path: path.clone() }
                }
                sled::Error::Corruption { .. } => StoreError::Corrupted { path: path.clone() },
                _ => StoreError::Sled {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|source| StoreError::Sync {
            path: db_path.display().to_string(),
            source,
        })?;
        // The store's files and directories must survive a power loss
        // from the first commit on.
        for d in [dir, &dir.join("blobs")] {
            if d.exists() {
                crate::fsutil::sync_dir(d).map_err(|source| StoreError::Sync {
                    path: d.display().to_string(),
                    source,
                })?;
            }
        }
        if let Some(parent) = dir.parent() {
            let _ = crate::fsutil::sync_dir(parent);
        }
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            db_file,
            synced_blobs: Default::default(),
        })
    }

    /// sled 0.34 writes values and nodes larger than a quarter segment to
    /// separate files under `blobs/` without fsyncing them: fsync every new
    /// one, and the directory, before a commit is acknowledged.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let sync_err = |path: &Path, source| StoreError::Sync {
            path: path.display().to_string(),
            source,
        };
        let Ok(listing) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut any = false;
        for entry in listing.flatten() {
            let name = entry.file_name();
            if synced.contains(&name) {
                continue;
            }
            match File::open(entry.path()).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // sled garbage-collects blobs; a vanished one needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(sync_err(&entry.path(), e)),
            }
            synced.insert(name);
            any = true;
        }
        if any {
            crate::fsutil::sync_dir(&blobs).map_err(|e| sync_err(&blobs, e))?;
        }
        Ok(())
    }

    fn err(&self, source: sled::Error) -> StoreError {
        let path = self.dir.display().to_string();
        match source {
            sled::Error::Corruption { .. } => StoreError::Corrupted { path },
            source => StoreError::Sled { path, source },
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    /// The sled batch a group commit writes (public so that benchmarks can
    /// measure raw sled on exactly the same keys and values).
    pub fn sled_batch(b: &AppendBatch) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (index, block) in &b.blocks {
            batch.insert(&key_u64(b'E', *index), block.encode_entries());
            batch.insert(&key_u64(b'F', *index), block.encode_leaves());
        }
        for (leaf, index) in &b.leaves {
            batch.insert(&leaf_key(leaf)[..], &index.to_be_bytes());
        }
        for (level, index, hash) in &b.subtrees {
            batch.insert(&hash_key(*level, *index), hash);
        }
        for (key, block, bitmap) in &b.postings {
            batch.insert(posting_key(key, *block), &bitmap.to_be_bytes());
        }
        for (time, first, last) in &b.times {
            batch.insert(&time_key(*time, *first), &last.to_be_bytes());
        }
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&b.head.0.to_be_bytes());
        head.extend_from_slice(&b.head.1);
        for (name, value) in &b.records {
            batch.insert(record_key(name), value.as_slice());
        }
        batch.insert(&key_u64(b'C', b.head.0), b.checkpoint.as_bytes());
        batch.insert(b"S", head.as_slice());
        batch.insert(b"L", head);
        batch
    }

    /// Applies a prebuilt sled batch and makes it durable (benchmarks).
    pub fn apply_raw(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        self.sync()
    }

    /// Raw access for tamper tests and forensics: replaces a stored value
    /// without any of the ledger's checks. Named `dangerous_` because it
    /// breaks the log's integrity on purpose.
    pub fn dangerous_overwrite(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The keys of block `block`'s entries and leaves, for
    /// [`Self::dangerous_overwrite`].
    pub fn block_keys(block: u64) -> (Vec<u8>, Vec<u8>) {
        (key_u64(b'E', block).to_vec(), key_u64(b'F', block).to_vec())
    }

    /// The key of a record, for [`Self::dangerous_overwrite`].
    pub fn record_key(name: &[u8]) -> Vec<u8> {
        record_key(name)
    }

    /// The key of a stored subtree hash, for [`Self::dangerous_overwrite`].
    pub fn subtree_key(level: u8, index: u64) -> Vec<u8> {
        hash_key(level, index).to_vec()
    }

    fn range_u64<T>(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.range(start..).take(limit) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(f(&k[prefix.len()..], &v)?);
        }
        Ok(out)
    }
}

impl LedgerStore for SledStore {
    fn append_batch(&self, b: &AppendBatch) -> Result<(), StoreError> {
        self.db
            .apply_batch(Self::sled_batch(b))
            .map_err(|e| self.err(e))
    }

    fn put_records(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (name, value) in records {
            batch.insert(record_key(name), value.as_slice());
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        self.sync_blobs()?;
        self.db_file.sync_all().map_err(|source| StoreError::Sync {
            path: self.dir.join("db").display().to_string(),
            source,
        })
    }

    fn block(&self, block: u64) -> Result<Option<Block>, StoreError> {
        let Some(entries) = self.get(&key_u64(b'E', block))? else {
            return Ok(None);
        };
        let leaves = self
            .get(&key_u64(b'F', block))?
            .ok_or_else(|| corrupt(format!("F{block}"), "block without leaf hashes"))?;
        Ok(Some(Block::decode(&entries, &leaves, block)?))
    }

    fn leaves(&self, block: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        self.get(&key_u64(b'F', block))?
            .map(|v| Block::decode_leaves(&v, block))
            .transpose()
    }

    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<(u64, Block)>, StoreError> {
        let raw = self.range_u64(&key_u64(b'E', from), b"E", limit, |k, v| {
            Ok((be_u64(k, "E")?, v.to_vec()))
        })?;
        raw.into_iter()
            .map(|(b, entries)| {
                let leaves = self
                    .get(&key_u64(b'F', b))?
                    .ok_or_else(|| corrupt(format!("F{b}"), "block without leaf hashes"))?;
                Ok((b, Block::decode(&entries, &leaves, b)?))
            })
            .collect()
    }

    fn hash(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
        self.get(&hash_key(level, index))?
            .map(|v| hash_value(&v, "H"))
            .transpose()
    }

    fn head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        self.get(b"S")?.map(|v| size_root(&v, "S")).transpose()
    }

    fn last_signed(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        self.get(b"L")?.map(|v| size_root(&v, "L")).transpose()
    }

    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.get(&key_u64(b'C', size))?
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| corrupt(format!("C{size}"), "checkpoint is not UTF-8"))
            })
            .transpose()
    }

    fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.range_u64(&key_u64(b'C', from), b"C", limit, |k, v| {
            let size = be_u64(k, "C")?;
            let note = String::from_utf8(v.to_vec())
                .map_err(|_| corrupt(format!("C{size}"), "checkpoint is not UTF-8"))?;
            Ok((size, note))
        })
    }

    fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        self.get(&leaf_key(leaf))?
            .map(|v| be_u64(&v, "D"))
            .transpose()
    }

    fn posting(&self, key: &IndexKey, block: u64) -> Result<Option<u64>, StoreError> {
        self.get(&posting_key(key, block))?
            .map(|v| be_u64(&v, "I"))
            .transpose()
    }

    fn scan_postings(
        &self,
        key: &IndexKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let prefix = key.prefix();
        self.range_u64(&posting_key(key, from), &prefix, limit, |k, v| {
            Ok((be_u64(k, "I")?, be_u64(v, "I")?))
        })
    }

    fn scan_time(
        &self,
        from: (i64, u64),
        limit: usize,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        self.range_u64(&time_key(from.0, from.1), b"T", limit, |k, v| {
            if k.len() != 16 {
                return Err(corrupt("T", "time key of the wrong length"));
            }
            let time = (be_u64(&k[..8], "T")? ^ (1 << 63)) as i64;
            Ok((time, be_u64(&k[8..], "T")?, be_u64(v, "T")?))
        })
    }

    fn record(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(&record_key(name))?.map(|v| v.to_vec()))
    }

    fn records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let full = record_key(prefix);
        let start = match after {
            Some(a) => {
                let mut k = record_key(a);
                k.push(0);
                k
            }
            None => full.clone(),
        };
        let mut out = Vec::new();
        for kv in self.db.range(start..).take(limit) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if !k.starts_with(&full) {
                break;
            }
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// Stored subtree hashes as a [`SubtreeSource`] for proofs: levels below
/// [`STORED_LEVEL`] are computed from the leaf hashes of one block (the
/// last block read is kept, so a proof reads each block once).
pub struct StoredTree<'a> {
    store: &'a dyn LedgerStore,
    leaves: RefCell<Option<(u64, Vec<Hash>)>>,
}

impl<'a> StoredTree<'a> {
    /// A view of `store`.
    pub fn new(store: &'a dyn LedgerStore) -> Self {
        Self {
            store,
            leaves: RefCell::new(None),
        }
    }
}

impl SubtreeSource for StoredTree<'_> {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        let store_err = |e: StoreError| ProofError::Store(e.to_string());
        let missing = ProofError::Missing { level, index };
        if level >= STORED_LEVEL {
            return self
                .store
                .hash(level, index)
                .map_err(store_err)?
                .ok_or(missing);
        }
        let first = index << level;
        let block = first >> BLOCK_BITS;
        let mut cache = self.leaves.borrow_mut();
        if cache.as_ref().is_none_or(|(b, _)| *b != block) {
            let leaves = self
                .store
                .leaves(block)
                .map_err(store_err)?
                .ok_or(missing.clone())?;
            *cache = Some((block, leaves));
        }
        let leaves = cache.as_ref().map(|(_, l)| l.as_slice()).unwrap_or(&[]);
        let offset = (first & (BLOCK_LEN - 1)) as usize;
        let span = leaves
            .get(offset..offset + (1usize << level))
            .ok_or(missing)?;
        Ok(perfect_root(span))
    }
}

/// The root of a power-of-two run of leaf hashes.
fn perfect_root(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let half = leaves.len() / 2;
    merkle::node_hash(
        &perfect_root(&leaves[..half]),
        &perfect_root(&leaves[half..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_and_rejects_garbage() {
        let block = Block {
            leaves: vec![[1; 32], [2; 32]],
            entries: vec![b"one".to_vec(), b"two!".to_vec()],
        };
        let (e, l) = (block.encode_entries(), block.encode_leaves());
        assert_eq!(Block::decode(&e, &l, 0).expect("decode"), block);
        for cut in 0..e.len() {
            assert!(Block::decode(&e[..cut], &l, 0).is_err(), "cut {cut}");
        }
        let mut long = e.clone();
        long.push(0);
        assert!(Block::decode(&long, &l, 0).is_err());
        assert!(Block::decode(&e, &l[..32], 0).is_err(), "count mismatch");
        assert!(
            Block::decode_leaves(&[0; 65 * 32], 0).is_err(),
            "more than 64 leaves"
        );
    }
}
