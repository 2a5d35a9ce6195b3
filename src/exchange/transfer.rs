//! The consumer's side of a transfer: every chunk is checked against the
//! manifest's chunk list before it is written, the content goes to a
//! temporary file next to the output, and only when every byte matches the
//! manifest is it fsynced and renamed into place. The chunks also land in
//! the node's blob store. Nothing is written to the output path otherwise:
//! a failed transfer removes its temporary file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest;

use super::grant::Grant;
use crate::dataset::blob::{BlobError, BlobStore};
use crate::dataset::{Manifest, chunk_list_hash};
use crate::digest::Hash;
use crate::envelope::Verified;
use crate::fsutil::FileError;

/// Why a transfer was aborted.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The output path is not usable.
    #[error("{0}")]
    Output(String),
    /// The manifest or chunk list does not match the grant or itself.
    #[error("the publisher's manifest does not match: {0}")]
    Manifest(String),
    /// A chunk does not hash to its entry in the chunk list.
    #[error("chunk {index} does not match its hash in the manifest's chunk list; transfer aborted")]
    BadChunk {
        /// Which chunk (0-based).
        index: usize,
    },
    /// A chunk has the wrong length.
    #[error("chunk {index} is {got} bytes; the manifest says {expected}; transfer aborted")]
    ChunkLength {
        /// Which chunk.
        index: usize,
        /// Its length.
        got: usize,
        /// The expected length.
        expected: u64,
    },
    /// More data than the manifest describes.
    #[error("the publisher sent data past the manifest's length; transfer aborted")]
    Extra,
    /// The stream ended early.
    #[error("the stream ended after {got} of {expected} chunks; transfer aborted")]
    Truncated {
        /// Chunks received.
        got: usize,
        /// Chunks expected.
        expected: usize,
    },
    /// The whole content does not match.
    #[error("the content's SHA-256 does not match the manifest; transfer aborted")]
    Content,
    /// Files could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The transfer's second thread could not start or failed.
    #[error("the transfer's store thread: {0}")]
    Thread(std::io::Error),
}

/// Checks that `out` can be written (its directory exists; it does not,
/// unless `force`) and returns the temporary path next to it. Run before
/// asking the publisher, so a bad path costs no fetch.
pub fn check_output(out: &Path, force: bool) -> Result<PathBuf, TransferError> {
    let name = out
        .file_name()
        .ok_or_else(|| TransferError::Output(format!("{} is not a file path", out.display())))?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(TransferError::Output(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    if !force && out.symlink_metadata().is_ok() {
        return Err(TransferError::Output(format!(
            "{} exists; pass --force to replace it",
            out.display()
        )));
    }
    Ok(dir.join(format!(".{}.dsnode-partial", name.to_string_lossy())))
}

/// A transfer in progress.
pub struct Incoming {
    out: PathBuf,
    force: bool,
    tmp: PathBuf,
    file: Option<File>,
    size: u64,
    chunk_size: u64,
    content_sha256: Hash,
    chunks: Vec<Hash>,
    next: usize,
    side: Side,
    blobs: Arc<dyn BlobStore>,
}

/// Verified chunks queued for the second stage at most.
const SIDE_QUEUE: usize = 4;

/// A transfer's second stage, on its own thread: the whole-content hash
/// and the blob store, while the first verifies chunks and writes the
/// output. Verifying, hashing and writing twice is too much for one core.
struct Side {
    queue: Option<std::sync::mpsc::SyncSender<(Hash, Vec<u8>, bool)>>,
    worker: Option<std::thread::JoinHandle<Result<Hash, BlobError>>>,
}

impl Side {
    fn start(blobs: Arc<dyn BlobStore>) -> Result<Self, TransferError> {
        let (queue, chunks) = std::sync::mpsc::sync_channel::<(Hash, Vec<u8>, bool)>(SIDE_QUEUE);
        let worker = std::thread::Builder::new()
            .name("transfer-store".into())
            .spawn(move || {
                let mut whole = digest::Context::new(&digest::SHA256);
                for (hash, data, store) in chunks {
                    whole.update(&data);
                    if store {
                        blobs.put(&hash, &data)?;
                    }
                }
                let mut h = [0u8; 32];
                h.copy_from_slice(whole.finish().as_ref());
                Ok(h)
            })
            .map_err(TransferError::Thread)?;
        Ok(Self {
            queue: Some(queue),
            worker: Some(worker),
        })
    }

    fn send(&mut self, hash: Hash, data: Vec<u8>, store: bool) -> Result<(), TransferError> {
        match self.queue.as_ref().map(|q| q.send((hash, data, store))) {
            Some(Ok(())) => Ok(()),
            // The worker stopped: its error says why.
            _ => Err(self.finish().err().unwrap_or_else(|| {
                TransferError::Thread(std::io::Error::other("it stopped early"))
            })),
        }
    }

    /// Waits for every queued chunk; the whole content's SHA-256.
    fn finish(&mut self) -> Result<Hash, TransferError> {
        self.queue = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| TransferError::Thread(std::io::Error::other("it already ended")))?;
        match worker.join() {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(TransferError::Thread(std::io::Error::other("it panicked"))),
        }
    }
}

/// What a completed transfer received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The chunk hashes, in order.
    pub chunks: Vec<Hash>,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the content (equal to the manifest's).
    pub content_sha256: Hash,
    /// Where it was written.
    pub out: PathBuf,
}

/// Checks a transfer's header: the manifest is the one the grant names
/// (the grant pins its hash), and the chunk list the one it signs. A
/// resumed transfer's header passes only if it is the same as the first.
pub fn check_header(
    manifest: &Verified<Manifest>,
    chunks: &[Hash],
    grant: &Grant,
) -> Result<(), TransferError> {
    let m = manifest.value();
    if manifest.envelope().payload_hash() != grant.manifest_sha256 {
        return Err(TransferError::Manifest(
            "it is not the manifest the grant names".into(),
        ));
    }
    if chunks.len() as u64 != m.chunk_count || chunk_list_hash(chunks) != m.chunk_list_sha256 {
        return Err(TransferError::Manifest(
            "the chunk list is not the one the manifest signs".into(),
        ));
    }
    Ok(())
}

impl Incoming {
    /// Checks the header against the grant and opens the temporary file.
    pub fn start(
        out: &Path,
        force: bool,
        manifest: &Verified<Manifest>,
        chunks: Vec<Hash>,
        grant: &Grant,
        blobs: Arc<dyn BlobStore>,
    ) -> Result<Self, TransferError> {
        check_header(manifest, &chunks, grant)?;
        let m = manifest.value();
        // A name of its own (created exclusively), so two transfers to the
        // same path can never write into each other's file.
        let mut tmp = check_output(out, force)?.into_os_string();
        tmp.push(format!(
            ".{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        let tmp = PathBuf::from(tmp);
        let side = Side::start(blobs.clone())?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FileError::new("create", &tmp, e))?;
        Ok(Self {
            out: out.to_path_buf(),
            force,
            tmp,
            file: Some(file),
            size: m.size,
            chunk_size: u64::from(m.chunk_size),
            content_sha256: m.content_sha256,
            chunks,
            next: 0,
            side,
            blobs,
        })
    }

    /// Chunks received so far.
    pub fn received(&self) -> usize {
        self.next
    }

    /// Chunks in all.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.size.min(self.chunk_size * self.next as u64)
    }

    /// Bytes in all.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn expected_len(&self, index: usize) -> u64 {
        if index + 1 == self.chunks.len() {
            self.size - self.chunk_size * index as u64
        } else {
            self.chunk_size
        }
    }

    /// Takes the chunks an interrupted transfer already put in the blob
    /// store, in order from the next one, up to the first missing (or
    /// damaged) one; each is verified against its hash again as it is
    /// read. Returns how many were taken: the transfer resumes after them.
    pub fn resume_from_store(&mut self) -> Result<usize, TransferError> {
        let before = self.next;
        while let Some(hash) = self.chunks.get(self.next).copied() {
            match self.blobs.get(&hash) {
                Ok(Some(data)) if data.len() as u64 == self.expected_len(self.next) => {
                    self.append(hash, data, false)?;
                }
                Ok(None) => break,
                Ok(Some(_)) | Err(BlobError::Corrupt(_)) => {
                    // Damaged: removed, so the fetched copy replaces it.
                    self.blobs.remove(&[hash]);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.next - before)
    }

    /// Writes a verified chunk to the output and queues it for the whole
    /// hash (and the blob store, if `store`).
    fn append(&mut self, hash: Hash, data: Vec<u8>, store: bool) -> Result<(), TransferError> {
        let file = self.file.as_mut().ok_or(TransferError::Extra)?;
        file.write_all(&data)
            .map_err(|e| FileError::new("write", &self.tmp, e))?;
        self.side.send(hash, data, store)?;
        self.next += 1;
        Ok(())
    }

    /// Verifies and writes the next chunk.
    pub fn chunk(&mut self, data: Vec<u8>) -> Result<(), TransferError> {
        let index = self.next;
        let expected_hash = *self.chunks.get(index).ok_or(TransferError::Extra)?;
        let expected_len = self.expected_len(index);
        if data.len() as u64 != expected_len {
            return Err(TransferError::ChunkLength {
                index,
                got: data.len(),
                expected: expected_len,
            });
        }
        if digest::digest(&digest::SHA256, &data).as_ref() != expected_hash {
            return Err(TransferError::BadChunk { index });
        }
        self.append(expected_hash, data, true)
    }

    /// Ends the transfer: all chunks, the right content; fsync, rename.
    pub fn finish(mut self) -> Result<Received, TransferError> {
        if self.next != self.chunks.len() {
            return Err(TransferError::Truncated {
                got: self.next,
                expected: self.chunks.len(),
            });
        }
        let whole = self.side.finish()?;
        if whole != self.content_sha256 {
            return Err(TransferError::Content);
        }
        let file = self.file.take().ok_or(TransferError::Extra)?;
        file.sync_all()
            .map_err(|e| FileError::new("fsync", &self.tmp, e))?;
        drop(file);
        self.blobs.sync(&self.chunks)?;
        if self.force {
            std::fs::rename(&self.tmp, &self.out)
                .map_err(|e| FileError::new("rename", &self.tmp, e))?;
        } else {
            // Never replaces a file that appeared meanwhile: a hard link
            // fails if the name exists.
            match std::fs::hard_link(&self.tmp, &self.out) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(TransferError::Output(format!(
                        "{} appeared during the transfer; pass --force to replace it",
                        self.out.display()
                    )));
                }
                // A file system without hard links: check, then rename.
                Err(_) if !self.out.exists() => {
                    std::fs::rename(&self.tmp, &self.out)
                        .map_err(|e| FileError::new("rename", &self.tmp, e))?;
                }
                Err(e) => return Err(FileError::new("link", &self.out, e).into()),
            }
            if self.tmp.exists() {
                std::fs::remove_file(&self.tmp)
                    .map_err(|e| FileError::new("remove", &self.tmp, e))?;
            }
        }
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::sync_dir(dir).map_err(|e| FileError::new("fsync", dir, e))?;
        }
        Ok(Received {
            chunks: std::mem::take(&mut self.chunks),
            bytes: self.size,
            content_sha256: self.content_sha256,
            out: self.out.clone(),
        })
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        // Chunks verified before an interruption are in the blob store
        // when the transfer is dropped, ready for a resume.
        if self.worker.is_some() {
            let _ = self.finish();
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Finished transfers renamed their file away; anything else leaves
        // no partial output behind.
        if self.file.is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// For tests and fuzzing: a manifest over `content` in `chunk_size` chunks signed by a fixed
/// test key, a grant naming it, the pieces and the chunk list.
#[doc(hidden)]
pub fn fixture(
    content: &[u8],
    chunk_size: usize,
) -> (Verified<Manifest>, Grant, Vec<Vec<u8>>, Vec<Hash>) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let publisher = crate::identity::NodeId::from_public_key(&key.verifying_key().to_bytes());
    let pieces: Vec<Vec<u8>> = content.chunks(chunk_size).map(<[u8]>::to_vec).collect();
    let hashes: Vec<Hash> = pieces.iter().map(|p| crate::digest::sha256(p)).collect();
    let policy = crate::policy::Policy {
        classification: crate::policy::Classification::General,
        permissions: vec![],
        prohibitions: vec![],
        obligations: vec![],
    };
    let manifest = Manifest {
        title: "t".into(),
        description: String::new(),
        media_type: "x".into(),
        size: content.len() as u64,
        chunk_size: chunk_size as u32,
        chunk_count: pieces.len() as u64,
        content_sha256: crate::digest::sha256(content),
        chunk_list_sha256: crate::dataset::chunk_list_hash(&hashes),
        classification: crate::policy::Classification::General,
        policy,
        derived_from: vec![],
        supersedes: None,
        version: 1,
        lineage: None,
        created_at_ms: 0,
        publisher: publisher.clone(),
    };
    let env: crate::envelope::Envelope = manifest.sign(&key);
    let (id, verified) =
        crate::dataset::verify_manifest(env, &key.verifying_key().to_bytes()).expect("manifest");
    let grant = Grant {
        id: super::grant::GrantId::random().expect("id"),
        dataset: id,
        manifest_sha256: verified.envelope().payload_hash(),
        publisher,
        grantee: crate::identity::NodeId::from_public_key(&[4; 32]),
        purpose: "research".into(),
        actions: [crate::policy::Action::Read].into(),
        not_before_ms: 0,
        not_after_ms: 1,
        max_fetches: None,
        obligations: vec![],
        policy_sha256: [0; 32],
        issued_at_ms: 0,
    };
    (verified, grant, pieces, hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::blob::LocalBlobStore;

    const CS: usize = 4096;

    fn setup(content: &[u8]) -> (Verified<Manifest>, Grant, Vec<Vec<u8>>, Vec<Hash>) {
        fixture(content, CS)
    }

    fn start(dir: &Path, content: &[u8]) -> (Incoming, Vec<Vec<u8>>) {
        let (m, g, pieces, hashes) = setup(content);
        let blobs: Arc<dyn BlobStore> =
            Arc::new(LocalBlobStore::open(&dir.join("blobs")).expect("blobs"));
        let incoming =
            Incoming::start(&dir.join("out"), false, &m, hashes, &g, blobs).expect("start");
        (incoming, pieces)
    }

    fn nothing_written(dir: &Path) {
        assert!(!dir.join("out").exists(), "output written");
        let partial = std::fs::read_dir(dir).expect("ls").flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".out.dsnode-partial")
        });
        assert!(!partial, "partial file left");
    }

    #[test]
    fn a_complete_transfer_lands_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..3 * CS + 100).map(|i| (i % 251) as u8).collect();
        let (mut t, pieces) = start(dir.path(), &content);
        for p in &pieces {
            t.chunk(p.clone()).expect("chunk");
        }
        let r = t.finish().expect("finish");
        assert_eq!(r.bytes, content.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("out")).expect("out"), content);
    }

    /// Defences of THREATS.md row 2: a flipped byte, reordered chunks, a
    /// truncated stream and extra data all abort with nothing written.
    #[test]
    fn substituted_reordered_truncated_or_extra_data_aborts() {
        let content: Vec<u8> = (0..3 * CS + 100).map(|i| (i % 251) as u8).collect();

        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, mut pieces) = start(dir.path(), &content);
        t.chunk(pieces[0].clone()).expect("chunk 0");
        pieces[1][5] ^= 1;
        assert!(matches!(
            t.chunk(pieces[1].clone()),
            Err(TransferError::BadChunk { index: 1 })
        ));
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, pieces) = start(dir.path(), &content);
        assert!(
            matches!(
                t.chunk(pieces[1].clone()),
                Err(TransferError::BadChunk { index: 0 })
            ),
            "reordered"
        );
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, pieces) = start(dir.path(), &content);
        t.chunk(pieces[0].clone()).expect("chunk 0");
        assert!(matches!(
            t.finish(),
            Err(TransferError::Truncated {
                got: 1,
                expected: 4
            })
        ));
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, pieces) = start(dir.path(), &content);
        for p in &pieces {
            t.chunk(p.clone()).expect("chunk");
        }
        assert!(matches!(
            t.chunk(pieces[0].clone()),
            Err(TransferError::Extra)
        ));
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, pieces) = start(dir.path(), &content);
        let mut long = pieces[0].clone();
        long.push(0);
        assert!(matches!(
            t.chunk(long),
            Err(TransferError::ChunkLength { index: 0, .. })
        ));
        drop(t);
        nothing_written(dir.path());
    }

    /// An interrupted transfer's chunks are taken back from the blob
    /// store, each checked again, up to the first missing or damaged one.
    #[test]
    fn a_resumed_transfer_takes_the_stored_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..5 * CS + 7).map(|i| (i % 241) as u8).collect();
        let (m, g, pieces, hashes) = setup(&content);
        let blobs: Arc<dyn BlobStore> =
            Arc::new(LocalBlobStore::open(&dir.path().join("blobs")).expect("blobs"));
        let out = dir.path().join("out");
        let mut first =
            Incoming::start(&out, false, &m, hashes.clone(), &g, blobs.clone()).expect("start");
        for p in &pieces[..3] {
            first.chunk(p.clone()).expect("chunk");
        }
        drop(first);
        nothing_written(dir.path());

        // Chunk 2's blob is damaged: the resume stops before it.
        let hex = data_encoding::HEXLOWER.encode(&hashes[2]);
        let damaged = dir.path().join("blobs/sha256").join(&hex[..2]).join(&hex);
        let good = std::fs::read(&damaged).expect("blob");
        std::fs::write(&damaged, b"not the chunk").expect("damage");
        let mut again =
            Incoming::start(&out, false, &m, hashes.clone(), &g, blobs.clone()).expect("start");
        assert_eq!(again.resume_from_store().expect("resume"), 2);
        drop(again);
        assert!(
            !damaged.exists(),
            "a damaged chunk is removed, to be fetched again"
        );

        blobs.put(&hashes[2], &good).expect("fetched again");
        let mut resumed = Incoming::start(&out, false, &m, hashes, &g, blobs).expect("start");
        assert_eq!(resumed.resume_from_store().expect("resume"), 3);
        assert_eq!(resumed.bytes_received(), 3 * CS as u64);
        for p in &pieces[3..] {
            resumed.chunk(p.clone()).expect("chunk");
        }
        resumed.finish().expect("finish");
        assert_eq!(std::fs::read(&out).expect("out"), content);
    }

    #[test]
    fn output_paths_are_checked_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("exists");
        std::fs::write(&out, b"x").expect("write");
        assert!(matches!(
            check_output(&out, false),
            Err(TransferError::Output(_))
        ));
        assert!(check_output(&out, true).is_ok());
        let missing = dir.path().join("no/such/dir/file");
        assert!(matches!(
            check_output(&missing, false),
            Err(TransferError::Output(_))
        ));
    }
}
