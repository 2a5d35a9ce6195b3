//! Received datasets, one file (a pack) per dataset: chunk `i` at offset
//! `i × chunk_size`, so a transfer writes each byte once, in place,
//! whatever order its parallel streams deliver chunks in, and the output
//! a consumer asked for is the same file (a hard link) or a copy of it.
//!
//! ```text
//! packs/partial/<key>          a transfer in progress (sparse; resumable)
//! packs/<chunk-list sha256>    a received dataset, read-only (0444)
//! ```
//!
//! A pack is named by the SHA-256 of its chunk list, the identity the
//! consumer verified every chunk against (never by a hash a publisher
//! states), so a pack can only ever hold the content its name commits to.
//! Readers check each chunk against its hash: a pack changed on disk (an
//! output edited in place through its hard link, a bad sector) is found
//! when read.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::digest::Hash;
use crate::fsutil::FileError;

use super::blob::BlobError;

/// Where received datasets live.
pub struct PackStore {
    root: PathBuf,
}

/// The mode of a completed pack (and so of an output linked to it):
/// read-only, so writing through the output's name fails instead of
/// changing the node's copy.
const SEALED_MODE: u32 = 0o444;

impl PackStore {
    /// A store rooted at `root` (created if missing, mode 0700).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        crate::fsutil::create_private_dir(&root.join("partial"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where the pack of the content with chunk list hash `chunk_list` is.
    pub fn path(&self, chunk_list: &Hash) -> PathBuf {
        self.root.join(data_encoding::HEXLOWER.encode(chunk_list))
    }

    /// Where the transfer `key` (a grant id: letters, digits and `_`)
    /// writes.
    pub fn partial_path(&self, key: &str) -> Result<PathBuf, BlobError> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(BlobError::File(FileError::new(
                "name",
                &self.root,
                std::io::Error::other(format!("`{key}` is not a transfer name")),
            )));
        }
        Ok(self.root.join("partial").join(key))
    }

    /// Opens the partial pack of transfer `key`, `size` bytes long: a new,
    /// empty one if `fresh`, else the one an interrupted transfer left
    /// (whose chunks the caller checks again), created if missing. A
    /// transfer interrupted after its pack was sealed (as `sealed`) but
    /// before it completed starts again from a copy of that pack.
    pub fn open_partial(
        &self,
        key: &str,
        size: u64,
        fresh: bool,
        sealed: &Hash,
    ) -> Result<File, BlobError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.partial_path(key)?;
        let done = self.path(sealed);
        if !fresh && !path.exists() && done.exists() {
            fs::copy(&done, &path)
                .and_then(|_| fs::set_permissions(&path, fs::Permissions::from_mode(0o600)))
                .map_err(|e| FileError::new("copy", &done, e))?;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(fresh)
            .open(&path)
            .map_err(|e| FileError::new("open", &path, e))?;
        file.set_len(size)
            .map_err(|e| FileError::new("size", &path, e))?;
        Ok(file)
    }

    /// Makes transfer `key`'s pack (already fsynced by the caller) the
    /// received dataset with chunk list hash `chunk_list`: renamed into
    /// place, read-only, its directory fsynced. Returns its path.
    pub fn seal(&self, key: &str, chunk_list: &Hash) -> Result<PathBuf, BlobError> {
        use std::os::unix::fs::PermissionsExt;
        let partial = self.partial_path(key)?;
        let sealed = self.path(chunk_list);
        fs::set_permissions(&partial, fs::Permissions::from_mode(SEALED_MODE))
            .map_err(|e| FileError::new("chmod", &partial, e))?;
        fs::rename(&partial, &sealed).map_err(|e| FileError::new("rename", &partial, e))?;
        crate::fsutil::sync_dir(&self.root).map_err(|e| FileError::new("fsync", &self.root, e))?;
        Ok(sealed)
    }

    /// Removes transfer `key`'s partial pack, if there is one.
    pub fn remove_partial(&self, key: &str) {
        if let Ok(path) = self.partial_path(key) {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes every partial pack `keep` says no for (transfers whose
    /// saved state is gone); returns how many it removed. Run only when no
    /// fetch is in progress (at start-up).
    pub fn collect_partials(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        let Ok(entries) = fs::read_dir(self.root.join("partial")) else {
            return 0;
        };
        for e in entries.flatten() {
            if !keep(&e.file_name().to_string_lossy()) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// `len` bytes at `offset` of the pack with chunk list hash
    /// `chunk_list` (`None`: no such pack), not checked: the caller checks
    /// them against the chunk's hash.
    pub fn read_at(
        &self,
        chunk_list: &Hash,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(chunk_list);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new("open", &path, e).into()),
        };
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| FileError::new("read", &path, e))?;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_checked_and_sealed_packs_are_read_only() {
        use std::os::unix::fs::{FileExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = PackStore::open(dir.path()).expect("open");
        for bad in ["", "../x", "a/b", "a.b", "gr x"] {
            assert!(packs.partial_path(bad).is_err(), "{bad:?}");
        }
        let f = packs
            .open_partial("gr_1", 10, true, &[7; 32])
            .expect("partial");
        f.write_all_at(b"hello", 5).expect("write");
        drop(f);
        // Reopened (a resume): the bytes stay; fresh: they go.
        let f = packs
            .open_partial("gr_1", 10, false, &[7; 32])
            .expect("again");
        let mut back = [0; 10];
        f.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(&back, b"\0\0\0\0\0hello");
        let sealed = packs.seal("gr_1", &[7; 32]).expect("seal");
        let mode = fs::metadata(&sealed).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(
            packs.read_at(&[7; 32], 5, 5).expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(packs.read_at(&[8; 32], 0, 1).expect("read"), None);
        // Sealed but not completed (the node stopped before the output was
        // placed): a resume starts from a copy of the sealed pack.
        let f = packs
            .open_partial("gr_1", 10, false, &[7; 32])
            .expect("again");
        let mut back = [0; 10];
        f.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(&back, b"\0\0\0\0\0hello");
        f.write_all_at(b"x", 0).expect("the copy is writable");
        let f = packs
            .open_partial("gr_2", 1, true, &[9; 32])
            .expect("partial");
        drop(f);
        assert_eq!(packs.collect_partials(|k| k == "gr_1"), 1);
        assert!(!packs.partial_path("gr_2").expect("path").exists());
    }
}
