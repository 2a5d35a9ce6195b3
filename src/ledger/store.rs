//! Ledger storage: the [`LedgerStore`] trait and its sled implementation.
//!
//! One sled tree, prefixed keys (all integers big-endian, so key order is
//! numeric order):
//!
//! | key | value |
//! |---|---|
//! | `E ‖ index` | entry bytes |
//! | `H ‖ level ‖ index` | hash of a complete subtree (level 0 = leaf hash) |
//! | `S` | tree size ‖ root |
//! | `C ‖ size` | signed checkpoint note of that size |
//! | `L` | size ‖ root of the last checkpoint signed (anti-fork guard) |
//! | `D ‖ leaf hash` | index |
//! | `I ‖ tag ‖ key ‖ 0x00 ‖ index` | (empty): by dataset (`d`), party (`p`), kind (`k`) |
//! | `T ‖ time ‖ index` | (empty): by time |
//!
//! A group commit is one `apply_batch` holding the entries, their hashes,
//! their index keys, the new size and root, and the batch's checkpoint, so
//! all of it lands together or not at all. sled 0.34's `flush()` is not an
//! fsync on Linux (it uses `sync_file_range`), so [`LedgerStore::sync`]
//! fsyncs the database file after it.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::merkle::{Hash, ProofError, SubtreeSource};

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

/// A secondary index key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexKey {
    /// Entries naming this dataset.
    Dataset(String),
    /// Entries naming this node as a party.
    Party(String),
    /// Entries of this kind (code).
    Kind(u16),
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
        }
        k.push(0);
        k
    }
}

/// Everything one group commit writes.
#[derive(Clone, Debug, Default)]
pub struct AppendBatch {
    /// (index, encoded entry, leaf hash).
    pub entries: Vec<(u64, Vec<u8>, Hash)>,
    /// Complete subtrees the batch completes, leaves included: (level, index, hash).
    pub subtrees: Vec<(u8, u64, Hash)>,
    /// Secondary index keys: (key, entry index).
    pub index_keys: Vec<(IndexKey, u64)>,
    /// Time index: (time ms, entry index).
    pub times: Vec<(i64, u64)>,
    /// New tree size and root.
    pub head: (u64, Hash),
    /// The checkpoint signed over `head`: its note.
    pub checkpoint: String,
}

/// What the ledger needs of a store. Writes are atomic per batch and
/// durable after [`LedgerStore::sync`].
pub trait LedgerStore: Send + Sync + 'static {
    /// Writes a batch atomically (not yet durable).
    fn append_batch(&self, batch: &AppendBatch) -> Result<(), StoreError>;
    /// Makes every written batch durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// An entry's bytes.
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries from `from`, in order, at most `limit`.
    fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// A complete subtree's hash.
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
    /// Entry indices under `key`, from index `from`, at most `limit`.
    fn scan_index(&self, key: &IndexKey, from: u64, limit: usize) -> Result<Vec<u64>, StoreError>;
    /// (time, index) pairs with time ≥ `from.0` (and index ≥ `from.1` at
    /// that time), in time order, at most `limit`.
    fn scan_time(&self, from: (i64, u64), limit: usize) -> Result<Vec<(i64, u64)>, StoreError>;
}

/// The sled implementation.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    db_file: File,
}

fn be_u64(v: &[u8], key: &str) -> Result<u64, StoreError> {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            key: key.into(),
            detail: format!("expected at least 8 bytes, got {}", v.len()),
        })
}

fn hash_value(v: &[u8], key: &str) -> Result<Hash, StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        key: key.into(),
        detail: format!("expected a 32-byte hash, got {} bytes", v.len()),
    })
}

fn size_root(v: &[u8], key: &str) -> Result<(u64, Hash), StoreError> {
    if v.len() != 40 {
        return Err(StoreError::Corrupt {
            key: key.into(),
            detail: format!("expected size and root (40 bytes), got {}", v.len()),
        });
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

/// Time as an order-preserving unsigned key.
fn time_key(time_ms: i64, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'T';
    k[1..9].copy_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let sled_err = |source| StoreError::Sled {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| sled_err(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 << 20)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked {
                        path: dir.display().to_string(),
                    }
                }
                sled::Error::Corruption { .. } => StoreError::Corrupted {
                    path: dir.display().to_string(),
                },
                _ => sled_err(e),
            })?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|source| StoreError::Sync {
            path: db_path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            db_file,
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        if let sled::Error::Corruption { .. } = source {
            return StoreError::Corrupted {
                path: self.dir.display().to_string(),
            };
        }
        StoreError::Sled {
            path: self.dir.display().to_string(),
            source,
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    /// Raw access for tamper tests and forensics: replaces a stored value
    /// without any of the ledger's checks. Named `dangerous_` because it
    /// breaks the log's integrity on purpose.
    pub fn dangerous_overwrite(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The key of entry `index`, for [`Self::dangerous_overwrite`].
    pub fn entry_key(index: u64) -> Vec<u8> {
        key_u64(b'E', index).to_vec()
    }
}

impl LedgerStore for SledStore {
    fn append_batch(&self, b: &AppendBatch) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (index, bytes, leaf) in &b.entries {
            batch.insert(&key_u64(b'E', *index), bytes.as_slice());
            let mut d = Vec::with_capacity(33);
            d.push(b'D');
            d.extend_from_slice(leaf);
            batch.insert(d, &index.to_be_bytes());
        }
        for (level, index, hash) in &b.subtrees {
            batch.insert(&hash_key(*level, *index), hash);
        }
        for (key, index) in &b.index_keys {
            let mut k = key.prefix();
            k.extend_from_slice(&index.to_be_bytes());
            batch.insert(k, &[]);
        }
        for (time, index) in &b.times {
            batch.insert(&time_key(*time, *index), &[]);
        }
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&b.head.0.to_be_bytes());
        head.extend_from_slice(&b.head.1);
        batch.insert(&key_u64(b'C', b.head.0), b.checkpoint.as_bytes());
        batch.insert(b"S", head.as_slice());
        batch.insert(b"L", head);
        self.db.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        self.db_file.sync_all().map_err(|source| StoreError::Sync {
            path: self.dir.join("db").display().to_string(),
            source,
        })
    }

    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(&key_u64(b'E', index))?.map(|v| v.to_vec()))
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.range(key_u64(b'E', from)..).take(limit) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if k.first() != Some(&b'E') {
                break;
            }
            out.push((be_u64(&k[1..], "E")?, v.to_vec()));
        }
        Ok(out)
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
                String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt {
                    key: format!("C{size}"),
                    detail: "checkpoint is not UTF-8".into(),
                })
            })
            .transpose()
    }

    fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.range(key_u64(b'C', from)..).take(limit) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if k.first() != Some(&b'C') {
                break;
            }
            let size = be_u64(&k[1..], "C")?;
            let note = String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt {
                key: format!("C{size}"),
                detail: "checkpoint is not UTF-8".into(),
            })?;
            out.push((size, note));
        }
        Ok(out)
    }

    fn leaf_index(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        let mut k = Vec::with_capacity(33);
        k.push(b'D');
        k.extend_from_slice(leaf);
        self.get(&k)?.map(|v| be_u64(&v, "D")).transpose()
    }

    fn scan_index(&self, key: &IndexKey, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let prefix = key.prefix();
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.db.range(start..).take(limit) {
            let (k, _) = kv.map_err(|e| self.err(e))?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            out.push(be_u64(&k[prefix.len()..], "I")?);
        }
        Ok(out)
    }

    fn scan_time(&self, from: (i64, u64), limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.range(time_key(from.0, from.1)..).take(limit) {
            let (k, _) = kv.map_err(|e| self.err(e))?;
            if k.first() != Some(&b'T') || k.len() != 17 {
                break;
            }
            let time = (be_u64(&k[1..9], "T")? ^ (1 << 63)) as i64;
            out.push((time, be_u64(&k[9..], "T")?));
        }
        Ok(out)
    }
}

/// Stored subtree hashes as a [`SubtreeSource`] for proofs.
pub struct StoredTree<'a>(pub &'a dyn LedgerStore);

impl SubtreeSource for StoredTree<'_> {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        self.0
            .hash(level, index)
            .map_err(|e| ProofError::Store(e.to_string()))?
            .ok_or(ProofError::Missing { level, index })
    }
}
