//! Content-addressed payload storage behind one small trait, so a
//! publisher can move from the local disk to an object store.
//!
//! Blobs are named by their SHA-256 only: no path is ever built from
//! remote input, and a stored blob is checked against its name on read.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Hash;
use crate::fsutil::FileError;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The filesystem failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A stored blob does not hash to its name (disk corruption or tampering).
    #[error("blob {0} is corrupt: its content does not match its hash")]
    Corrupt(String),
    /// The object store failed (it names the bucket and what kind of
    /// failure it was).
    #[error(transparent)]
    Object(#[from] super::s3::ObjectError),
}

/// What a start-up sweep of a store found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Blobs removed: no dataset references them.
    pub removed: usize,
    /// Blobs a dataset references that the store does not hold.
    pub missing: Vec<Hash>,
}

/// Where dataset chunks live.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `hash` (which the caller computed) unless a
    /// blob of that name exists; returns whether it wrote one. The content
    /// is durable when `put` returns; its name after [`BlobStore::sync`].
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<bool, BlobError>;
    /// Removes blobs (those a failed publication wrote).
    fn remove(&self, hashes: &[Hash]);
    /// Removes every blob not in `keep` and any leftover temporary file
    /// (after a crash); says how many it removed and which blobs of `keep`
    /// are missing. Run only when no publication is in progress (at
    /// start-up).
    fn collect_garbage(&self, keep: &std::collections::HashSet<Hash>) -> Result<Sweep, BlobError>;
    /// Makes the named blobs durable.
    fn sync(&self, hashes: &[Hash]) -> Result<(), BlobError>;
    /// The blob's bytes, checked against its hash.
    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError>;
    /// The blob's bytes, not checked: for serving a transfer, whose
    /// receiver checks every chunk against the signed chunk list anyway.
    fn get_unverified(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError>;
    /// Whether the blob exists.
    fn has(&self, hash: &Hash) -> bool;
    /// Checks the store takes a durable write (and, for a remote store,
    /// is reachable with the node's credentials).
    fn probe(&self) -> Result<(), BlobError>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// Blobs a failed publication may have left behind (a removal
    /// failed, or a put failed without saying whether it stored): what
    /// [`BlobStore::remove_leftovers`] will try.
    fn leftovers(&self) -> Vec<Hash> {
        Vec::new()
    }
    /// Removes the leftovers not in `keep` (every blob a dataset
    /// references, on disk or published); returns how many it tried. Run
    /// only when no publication is in progress.
    fn remove_leftovers(&self, _keep: &std::collections::HashSet<Hash>) -> usize {
        0
    }
    /// Requests worth having in flight at once: puts of a publication,
    /// reads ahead of a transfer stream (a remote store fills its link
    /// with several).
    fn parallel_requests(&self) -> usize {
        1
    }
}

/// Makes temporary names unique within the process.
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| FileError::new("create directory", dir, e))?;
            // The new fan-out directory must survive a power loss too.
            let fanout = self.root.join("sha256");
            crate::fsutil::sync_dir(&fanout).map_err(|e| FileError::new("fsync", &fanout, e))?;
        }
        // Temp file, then rename: a reader never sees a partial blob. The
        // name is unique and created exclusively (O_EXCL), so concurrent
        // writers never share it and a planted symlink is not followed.
        let hex = data_encoding::HEXLOWER.encode(hash);
        let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{hex}.{}.{seq}", std::process::id()));
        // The content is fsynced here, on the caller's (writer) thread,
        // so disk write-back overlaps hashing; `sync` then only has to
        // make the names durable.
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
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

    fn collect_garbage(&self, keep: &std::collections::HashSet<Hash>) -> Result<Sweep, BlobError> {
        let tmp = self.root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let fanout = self.root.join("sha256");
        let mut removed = 0;
        let mut seen = std::collections::HashSet::new();
        let dirs = fs::read_dir(&fanout).map_err(|e| FileError::new("read", &fanout, e))?;
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let hash = data_encoding::HEXLOWER
                    .decode(name.to_string_lossy().as_bytes())
                    .ok()
                    .and_then(|b| <Hash>::try_from(b.as_slice()).ok());
                match hash {
                    Some(h) if keep.contains(&h) => {
                        seen.insert(h);
                    }
                    _ => {
                        let _ = fs::remove_file(f.path());
                        removed += 1;
                    }
                }
            }
        }
        let mut missing: Vec<Hash> = keep.difference(&seen).copied().collect();
        missing.sort_unstable();
        Ok(Sweep { removed, missing })
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
        let Some(bytes) = self.get_unverified(hash)? else {
            return Ok(None);
        };
        if ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref() != hash {
            return Err(BlobError::Corrupt(data_encoding::HEXLOWER.encode(hash)));
        }
        Ok(Some(bytes))
    }

    fn get_unverified(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hash);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::new("read", &path, e).into()),
        }
    }

    fn has(&self, hash: &Hash) -> bool {
        self.path(hash).exists()
    }

    fn probe(&self) -> Result<(), BlobError> {
        Ok(crate::fsutil::probe_write(&self.root.join("tmp"))?)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
