//! Content-addressed payload storage behind one small trait, so a
//! publisher can move from the local disk to an object store.
//!
//! Blobs are named by their SHA-256 only: no path is ever built from
//! remote input, and a stored blob is checked against its name on read.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fsutil::FileError;
use crate::ledger::merkle::Hash;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The filesystem failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A stored blob does not hash to its name (disk corruption or tampering).
    #[error("blob {0} is corrupt: its content does not match its hash")]
    Corrupt(String),
}

/// Where dataset chunks live.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `hash` (which the caller computed) unless a
    /// blob of that name exists; returns whether it wrote one. The content
    /// is durable when `put` returns; its name after [`BlobStore::sync`].
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<bool, BlobError>;
    /// Removes blobs (those a failed publication wrote).
    fn remove(&self, hashes: &[Hash]);
    /// Makes the named blobs durable.
    fn sync(&self, hashes: &[Hash]) -> Result<(), BlobError>;
    /// The blob's bytes, checked against its hash.
    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError>;
    /// Whether the blob exists.
    fn has(&self, hash: &Hash) -> bool;
}

/// Blobs as files under `DIR/sha256/ab/abcdef…`.
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// A store rooted at `root` (created if missing, mode 0700).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        crate::fsutil::create_private_dir(&root.join("sha256"))?;
        crate::fsutil::create_private_dir(&root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        let hex = data_encoding::HEXLOWER.encode(hash);
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }
}

impl BlobStore for LocalBlobStore {
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<bool, BlobError> {
        let path = self.path(hash);
        if path.exists() {
            return Ok(false);
        }
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| FileError::new("create directory", dir, e))?;
        // Temp file, then rename: a reader never sees a partial blob.
        let hex = data_encoding::HEXLOWER.encode(hash);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{hex}.{}", std::process::id()));
        // The content is fsynced here, on the caller's (writer) thread,
        // so disk write-back overlaps hashing; `sync` then only has to
        // make the names durable.
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(FileError::new("write", &path, e).into());
        }
        Ok(true)
    }

    fn remove(&self, hashes: &[Hash]) {
        for h in hashes {
            let path = self.path(h);
            let _ = fs::remove_file(&path);
            // Drop the fan-out directory if that emptied it.
            if let Some(dir) = path.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    fn sync(&self, hashes: &[Hash]) -> Result<(), BlobError> {
        // Contents were fsynced by `put`; the renames need their
        // directories fsynced.
        let mut dirs = std::collections::BTreeSet::new();
        for h in hashes {
            if let Some(d) = self.path(h).parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            crate::fsutil::sync_dir(&d).map_err(|e| FileError::new("fsync", &d, e))?;
        }
        Ok(())
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("read", &path, e).into()),
        };
        if ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref() != hash {
            return Err(BlobError::Corrupt(data_encoding::HEXLOWER.encode(hash)));
        }
        Ok(Some(bytes))
    }

    fn has(&self, hash: &Hash) -> bool {
        self.path(hash).exists()
    }
}
