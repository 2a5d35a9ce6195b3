//! The consumer's side of a transfer: every chunk is checked against the
//! manifest's chunk list and written once, in place, into the transfer's
//! pack (`blobs/packs/partial/<grant>`, see [`crate::dataset::pack`]), at
//! its offset, so parallel streams write disjoint ranges of one file. Only
//! when every chunk has matched is the pack fsynced, sealed as the node's
//! copy of the dataset, and the output put in place as a hard link to it
//! (a copy where the output is on another file system). Nothing is written
//! to the output path otherwise; an interrupted transfer's pack stays, and
//! a resume checks its chunks again and asks only for those missing.
//!
//! The content's identity is its chunk list: each chunk is hashed once, as
//! it lands, and the list the manifest signs is what every chunk was
//! checked against. The whole-content SHA-256 of the manifest is checked
//! too only when asked ([`Incoming::finish`] with `verify_sha256`).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};

use ring::digest;

use super::grant::Grant;
use crate::dataset::blob::BlobError;
use crate::dataset::pack::PackStore;
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
    /// The transfer ended with chunks missing.
    #[error("the transfer ended with {got} of {expected} chunks; transfer aborted")]
    Truncated {
        /// Chunks received.
        got: usize,
        /// Chunks expected.
        expected: usize,
    },
    /// The whole content does not match (checked on request only: every
    /// chunk matched the signed chunk list, so the publisher signed a
    /// content hash its own chunks do not have).
    #[error(
        "every chunk matches the manifest's chunk list, but the content's SHA-256 is not the one the manifest states: the publisher signed an inconsistent manifest; output not written"
    )]
    Content,
    /// Files could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The pack store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A thread of the transfer failed.
    #[error("the transfer's writer: {0}")]
    Thread(std::io::Error),
}

/// Checks that `out` can be written (its directory exists; it does not,
/// unless `force`, and then only as a regular file: never a symlink, a
/// directory, a device, a FIFO or a socket, which `--force` as root once
/// replaced) and returns the temporary path next to it. Run before asking
/// the publisher, so a bad path costs no fetch, and again when the output
/// is put in place.
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
    if let Ok(meta) = out.symlink_metadata() {
        if !force {
            return Err(TransferError::Output(format!(
                "{} exists; pass --force to replace it",
                out.display()
            )));
        }
        let kind = meta.file_type();
        if !kind.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_dir() {
                "a directory"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(TransferError::Output(format!(
                "{} is {what}; --force replaces only a regular file",
                out.display()
            )));
        }
    }
    Ok(dir.join(format!(".{}.dsnode-partial", name.to_string_lossy())))
}

/// Where a fetched dataset goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// A file: a hard link to the node's pack, or a copy of it on another
    /// file system.
    File(PathBuf),
    /// An object in a bucket of the node's object store, uploaded from
    /// the pack once every chunk matched: it appears only then.
    Object(ObjectOutput),
}

/// An object a fetch writes.
#[derive(Clone, Debug)]
pub struct ObjectOutput {
    /// The bucket's client.
    pub bucket: crate::dataset::s3::Bucket,
    /// The object.
    pub url: crate::dataset::s3::ObjectUrl,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Object(o) => write!(f, "{}", o.url),
        }
    }
}

impl From<PathBuf> for Output {
    fn from(p: PathBuf) -> Self {
        Self::File(p)
    }
}

/// A transfer in progress, shared by the streams that fill it: each
/// chunk is verified and written at its offset by whichever stream
/// carries it.
pub struct Incoming {
    out: Output,
    force: bool,
    key: String,
    packs: Arc<PackStore>,
    file: File,
    partial: PathBuf,
    size: u64,
    chunk_size: u64,
    content_sha256: Hash,
    chunk_list_sha256: Hash,
    chunks: Vec<Hash>,
    verified: Vec<AtomicBool>,
    received: AtomicUsize,
    bytes: AtomicU64,
    flusher: Flusher,
    /// Held while a chunk is written: streams hash in parallel but write
    /// one at a time, waiting asleep rather than spinning on the file
    /// system's lock of the file.
    writing: std::sync::Mutex<()>,
}

/// Bytes written between two background flushes of a transfer's pack.
const FLUSH_EVERY: u64 = 64 << 20;

/// Starts the disk's write-back of a transfer's pack while the transfer
/// runs (`fdatasync` on a thread of its own every [`FLUSH_EVERY`] bytes),
/// so the fsync before the receipt finds little left to write instead of
/// the whole content.
struct Flusher {
    unflushed: AtomicU64,
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// The first write-back error: the file's open description records a
    /// write-back error once, so the final fsync would not see it again.
    failed: Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl Flusher {
    fn start(file: &File) -> Self {
        let failed = Arc::new(std::sync::Mutex::new(None));
        let Ok(file) = file.try_clone() else {
            // No second handle: the final fsync does all the work.
            return Self {
                unflushed: AtomicU64::new(0),
                wake: None,
                failed,
            };
        };
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let record = failed.clone();
        let spawned = std::thread::Builder::new()
            .name("transfer-flush".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    if let Err(e) = file.sync_data() {
                        let mut first = record.lock().unwrap_or_else(PoisonError::into_inner);
                        first.get_or_insert(e);
                        return;
                    }
                }
            });
        Self {
            unflushed: AtomicU64::new(0),
            wake: spawned.ok().map(|_| wake),
            failed,
        }
    }

    /// The write-back error the flusher met, if any.
    fn failure(&self) -> Option<std::io::Error> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Counts `len` bytes written; wakes the flusher after enough.
    fn wrote(&self, len: u64) {
        let before = self.unflushed.fetch_add(len, Ordering::AcqRel);
        if before + len >= FLUSH_EVERY
            && self
                .unflushed
                .compare_exchange(before + len, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            && let Some(wake) = &self.wake
        {
            // Full: a flush is pending already and will cover these.
            let _ = wake.try_send(());
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
    /// SHA-256 of the chunk list every chunk was checked against (the
    /// manifest's): the content's identity, computed by this node.
    pub chunk_list_sha256: Hash,
    /// The content's SHA-256 as the manifest states it.
    pub content_sha256: Hash,
    /// Whether this node hashed the whole content and found
    /// `content_sha256` (only when asked to).
    pub content_verified: bool,
    /// Where it goes.
    pub out: Output,
    /// The node's own copy (the sealed pack).
    pub pack: PathBuf,
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
    /// Checks the header against the grant and opens the transfer's pack:
    /// a new, empty one if `fresh`, else the one an interrupted transfer
    /// of the grant left (see [`Incoming::resume_from_pack`]).
    pub fn start(
        out: &Output,
        force: bool,
        manifest: &Verified<Manifest>,
        chunks: Vec<Hash>,
        grant: &Grant,
        packs: Arc<PackStore>,
        fresh: bool,
    ) -> Result<Self, TransferError> {
        check_header(manifest, &chunks, grant)?;
        if let Output::File(path) = out {
            check_output(path, force)?;
        }
        let m = manifest.value();
        let key = grant.id.to_string();
        let file = packs.open_partial(&key, m.size, fresh, &m.chunk_list_sha256)?;
        let partial = packs.partial_path(&key)?;
        let flusher = Flusher::start(&file);
        Ok(Self {
            flusher,
            writing: std::sync::Mutex::new(()),
            out: out.clone(),
            force,
            key,
            packs,
            file,
            partial,
            size: m.size,
            chunk_size: u64::from(m.chunk_size),
            content_sha256: m.content_sha256,
            chunk_list_sha256: m.chunk_list_sha256,
            verified: chunks.iter().map(|_| AtomicBool::new(false)).collect(),
            chunks,
            received: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// Chunks verified so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Chunks in all.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The chunk hashes, in order.
    pub fn chunks(&self) -> &[Hash] {
        &self.chunks
    }

    /// Bytes verified so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
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

    /// The chunks not yet verified, as ranges of indices in order.
    pub fn missing(&self) -> Vec<Range<usize>> {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (i, v) in self.verified.iter().enumerate() {
            if v.load(Ordering::Acquire) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    }

    /// Takes the chunks an interrupted transfer already wrote into the
    /// pack: each is read and checked against its hash again (a chunk
    /// never written, or damaged, is asked for again). Returns how many
    /// were taken.
    pub fn resume_from_pack(&self) -> Result<usize, TransferError> {
        let mut buf = vec![0; usize::try_from(self.chunk_size).unwrap_or(usize::MAX)];
        let mut taken = 0;
        for (index, hash) in self.chunks.iter().enumerate() {
            if self.verified[index].load(Ordering::Acquire) {
                continue;
            }
            let len = self.expected_len(index) as usize;
            let piece = &mut buf[..len];
            self.file
                .read_exact_at(piece, self.chunk_size * index as u64)
                .map_err(|e| FileError::new("read", &self.partial, e))?;
            if digest::digest(&digest::SHA256, piece).as_ref() == hash {
                self.mark(index, len as u64);
                taken += 1;
            }
        }
        Ok(taken)
    }

    fn mark(&self, index: usize, len: u64) {
        if !self.verified[index].swap(true, Ordering::AcqRel) {
            self.received.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Verifies chunk `index` (its length and hash against the signed
    /// chunk list) and writes it at its place in the pack.
    pub fn chunk(&self, index: usize, data: &[u8]) -> Result<(), TransferError> {
        let expected_hash = *self.chunks.get(index).ok_or(TransferError::Extra)?;
        let expected_len = self.expected_len(index);
        if data.len() as u64 != expected_len {
            return Err(TransferError::ChunkLength {
                index,
                got: data.len(),
                expected: expected_len,
            });
        }
        if digest::digest(&digest::SHA256, data).as_ref() != expected_hash {
            return Err(TransferError::BadChunk { index });
        }
        {
            let _one = self
                .writing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.file
                .write_all_at(data, self.chunk_size * index as u64)
                .map_err(|e| FileError::new("write", &self.partial, e))?;
        }
        self.flusher.wrote(expected_len);
        self.mark(index, expected_len);
        Ok(())
    }

    /// SHA-256 of the pack's content, read back.
    fn content_hash(&self) -> Result<Hash, TransferError> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0; 1 << 20];
        let mut offset = 0;
        while offset < self.size {
            let n = (self.size - offset).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], offset)
                .map_err(|e| FileError::new("read", &self.partial, e))?;
            ctx.update(&buf[..n]);
            offset += n as u64;
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(ctx.finish().as_ref());
        Ok(h)
    }

    /// Ends the transfer: every chunk verified (and, with `verify_sha256`,
    /// the whole content's SHA-256 the manifest's); the pack fsynced and
    /// sealed as the node's copy; the output linked to it (or copied, on
    /// another file system) and its directory fsynced.
    pub fn finish(self, verify_sha256: bool) -> Result<Received, TransferError> {
        let got = self.received();
        if got != self.chunks.len() {
            return Err(TransferError::Truncated {
                got,
                expected: self.chunks.len(),
            });
        }
        if verify_sha256 && self.content_hash()? != self.content_sha256 {
            return Err(TransferError::Content);
        }
        self.file
            .sync_all()
            .map_err(|e| FileError::new("fsync", &self.partial, e))?;
        if let Some(e) = self.flusher.failure() {
            return Err(FileError::new("fsync", &self.partial, e).into());
        }
        let pack = self.packs.seal(&self.key, &self.chunk_list_sha256)?;
        if let Output::File(path) = &self.out {
            place_output(&pack, path, self.force)?;
        }
        Ok(Received {
            chunks: self.chunks,
            bytes: self.size,
            chunk_list_sha256: self.chunk_list_sha256,
            content_sha256: self.content_sha256,
            content_verified: verify_sha256,
            out: self.out,
            pack,
        })
    }
}

/// Puts the sealed pack at `out`: a hard link (no byte written again),
/// or, where `out` is on another file system, a copy (`copy_file_range`,
/// which clones extents on file systems that can) fsynced first. Without
/// `force` a file that appeared at `out` meanwhile is never replaced.
fn place_output(pack: &Path, out: &Path, force: bool) -> Result<(), TransferError> {
    let tmp = {
        let mut t = check_output(out, true)?.into_os_string();
        t.push(format!(
            ".{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        PathBuf::from(t)
    };
    let linked = if force {
        // Link under a temporary name, then rename over the old output.
        std::fs::hard_link(pack, &tmp).is_ok()
    } else {
        match std::fs::hard_link(pack, out) {
            Ok(()) => {
                sync_parent(out)?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(appeared(out));
            }
            Err(_) => false,
        }
    };
    if !linked {
        let copied = (|| {
            std::fs::copy(pack, &tmp)?;
            // Writable again: the copy is the user's, not the node's.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            File::open(&tmp)?.sync_all()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(FileError::new("copy", out, e).into());
        }
    }
    let placed = if force {
        std::fs::rename(&tmp, out).map_err(|e| FileError::new("rename", &tmp, e).into())
    } else {
        match std::fs::hard_link(&tmp, out) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(appeared(out)),
            Err(e) => Err(FileError::new("link", out, e).into()),
        }
    };
    let _ = std::fs::remove_file(&tmp);
    placed?;
    sync_parent(out)
}

fn appeared(out: &Path) -> TransferError {
    TransferError::Output(format!(
        "{} appeared during the transfer; pass --force to replace it",
        out.display()
    ))
}

fn sync_parent(out: &Path) -> Result<(), TransferError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::sync_dir(dir).map_err(|e| FileError::new("fsync", dir, e))?;
    }
    Ok(())
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

    const CS: usize = 4096;

    fn setup(content: &[u8]) -> (Verified<Manifest>, Grant, Vec<Vec<u8>>, Vec<Hash>) {
        fixture(content, CS)
    }

    fn packs(dir: &Path) -> Arc<PackStore> {
        Arc::new(PackStore::open(&dir.join("packs")).expect("packs"))
    }

    fn start(dir: &Path, content: &[u8]) -> (Incoming, Vec<Vec<u8>>) {
        let (m, g, pieces, hashes) = setup(content);
        let incoming = Incoming::start(
            &dir.join("out").into(),
            false,
            &m,
            hashes,
            &g,
            packs(dir),
            true,
        )
        .expect("start");
        (incoming, pieces)
    }

    /// A transfer to `dir/out` of `(manifest, grant, pieces, hashes)` with
    /// every piece received.
    fn filled(
        dir: &Path,
        force: bool,
        (m, g, pieces, hashes): (&Verified<Manifest>, &Grant, &[Vec<u8>], Vec<Hash>),
    ) -> Incoming {
        let t = Incoming::start(
            &dir.join("out").into(),
            force,
            m,
            hashes,
            g,
            packs(dir),
            true,
        )
        .expect("start");
        for (i, p) in pieces.iter().enumerate() {
            t.chunk(i, p).expect("chunk");
        }
        t
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
    fn a_complete_transfer_lands_whole_in_any_order_written_once() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..3 * CS + 100).map(|i| (i % 251) as u8).collect();
        let (t, pieces) = start(dir.path(), &content);
        // Parallel streams deliver ranges in any order.
        for i in [2, 0, 3, 1] {
            t.chunk(i, &pieces[i]).expect("chunk");
        }
        assert!(t.missing().is_empty());
        let r = t.finish(true).expect("finish");
        assert!(r.content_verified);
        assert_eq!(r.bytes, content.len() as u64);
        let out = dir.path().join("out");
        assert_eq!(std::fs::read(&out).expect("out"), content);
        // One file, two names: the output is the node's copy.
        let (o, p) = (
            std::fs::metadata(&out).expect("out"),
            std::fs::metadata(&r.pack).expect("pack"),
        );
        assert_eq!((o.ino(), o.nlink()), (p.ino(), 2));
    }

    /// Defences of THREATS.md row 2: a flipped byte, a chunk in another's
    /// place, missing chunks and data past the end all abort with nothing
    /// written at the output.
    #[test]
    fn substituted_reordered_truncated_or_extra_data_aborts() {
        let content: Vec<u8> = (0..3 * CS + 100).map(|i| (i % 251) as u8).collect();

        let dir = tempfile::tempdir().expect("tempdir");
        let (t, mut pieces) = start(dir.path(), &content);
        t.chunk(0, &pieces[0]).expect("chunk 0");
        pieces[1][5] ^= 1;
        assert!(matches!(
            t.chunk(1, &pieces[1]),
            Err(TransferError::BadChunk { index: 1 })
        ));
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (t, pieces) = start(dir.path(), &content);
        assert!(
            matches!(
                t.chunk(0, &pieces[1]),
                Err(TransferError::BadChunk { index: 0 })
            ),
            "reordered"
        );
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (t, pieces) = start(dir.path(), &content);
        t.chunk(0, &pieces[0]).expect("chunk 0");
        t.chunk(2, &pieces[2]).expect("chunk 2");
        assert_eq!(t.missing(), vec![1..2, 3..4]);
        assert!(matches!(
            t.finish(false),
            Err(TransferError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (t, pieces) = start(dir.path(), &content);
        assert!(matches!(t.chunk(4, &pieces[0]), Err(TransferError::Extra)));
        drop(t);
        nothing_written(dir.path());

        let dir = tempfile::tempdir().expect("tempdir");
        let (t, pieces) = start(dir.path(), &content);
        let mut long = pieces[0].clone();
        long.push(0);
        assert!(matches!(
            t.chunk(0, &long),
            Err(TransferError::ChunkLength { index: 0, .. })
        ));
        drop(t);
        nothing_written(dir.path());
    }

    /// A manifest whose content hash its own (signed) chunks do not have
    /// passes chunk by chunk, and is caught when the whole content is
    /// checked on request: nothing is written.
    #[test]
    fn an_inconsistent_manifest_is_caught_by_verify_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..2 * CS).map(|i| (i % 13) as u8).collect();
        let (mut m, g, pieces, hashes) = setup(&content);
        let mut lying = m.value().clone();
        lying.content_sha256 = [9; 32];
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let (_, verified) =
            crate::dataset::verify_manifest(lying.sign(&key), &key.verifying_key().to_bytes())
                .expect("manifest");
        m = verified;
        let g = Grant {
            manifest_sha256: m.envelope().payload_hash(),
            ..g
        };
        let t = filled(dir.path(), false, (&m, &g, &pieces, hashes));
        assert!(matches!(t.finish(true), Err(TransferError::Content)));
        nothing_written(dir.path());
    }

    /// An interrupted transfer's pack is taken back: every chunk in it is
    /// checked again, a damaged or never-written one is asked for again.
    #[test]
    fn a_resumed_transfer_takes_the_verified_chunks_of_its_pack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..5 * CS + 7).map(|i| (i % 241) as u8).collect();
        let (m, g, pieces, hashes) = setup(&content);
        let packs = packs(dir.path());
        let out = dir.path().join("out");
        let first = Incoming::start(
            &out.clone().into(),
            false,
            &m,
            hashes.clone(),
            &g,
            packs.clone(),
            true,
        )
        .expect("start");
        for i in [0, 1, 2, 4] {
            first.chunk(i, &pieces[i]).expect("chunk");
        }
        drop(first);
        nothing_written(dir.path());

        // Chunk 2 is damaged on disk.
        let partial = packs.partial_path(g.id.as_str()).expect("path");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .expect("open");
        f.write_all_at(b"not the chunk", 2 * CS as u64)
            .expect("damage");
        drop(f);
        let again = Incoming::start(&out.clone().into(), false, &m, hashes, &g, packs, false)
            .expect("start");
        assert_eq!(again.resume_from_pack().expect("resume"), 3);
        assert_eq!(again.missing(), vec![2..4, 5..6]);
        assert_eq!(again.bytes_received(), 3 * CS as u64);
        for i in [2, 3, 5] {
            again.chunk(i, &pieces[i]).expect("chunk");
        }
        again.finish(true).expect("finish");
        assert_eq!(std::fs::read(&out).expect("out"), content);
        assert!(!partial.exists(), "the pack was sealed");
    }

    /// An output on another file system than the pack is a copy, fsynced,
    /// and writable; `force` replaces an existing output, and without it
    /// one that appeared during the transfer is left alone.
    #[test]
    fn outputs_are_linked_or_copied_and_never_clobbered_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..CS + 1).map(|i| (i % 7) as u8).collect();
        let (t, pieces) = start(dir.path(), &content);
        for (i, p) in pieces.iter().enumerate() {
            t.chunk(i, p).expect("chunk");
        }
        std::fs::write(dir.path().join("out"), b"appeared").expect("write");
        assert!(matches!(t.finish(false), Err(TransferError::Output(_))));
        assert_eq!(
            std::fs::read(dir.path().join("out")).expect("out"),
            b"appeared"
        );

        let (m, g, pieces, hashes) = setup(&content);
        let t = filled(dir.path(), true, (&m, &g, &pieces, hashes));
        let r = t.finish(false).expect("replaced");
        assert!(!r.content_verified);
        assert_eq!(std::fs::read(dir.path().join("out")).expect("out"), content);

        // /dev/shm is another file system than the temp dir on most hosts.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let pack = r.pack;
        let out = shm.path().join("copy");
        place_output(&pack, &out, false).expect("placed");
        assert_eq!(std::fs::read(&out).expect("copy"), content);
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
        // --force replaces a regular file, nothing else.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&out, &link).expect("symlink");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("dir");
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
        for (path, says) in [
            (&link, "is a symbolic link"),
            (&sub, "is a directory"),
            (&socket, "is a socket"),
        ] {
            match check_output(path, true) {
                Err(TransferError::Output(m)) => {
                    assert!(m.contains(says), "{m}");
                    assert!(m.contains("--force replaces only a regular file"), "{m}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        // As root, a device node too (`mknod` needs CAP_MKNOD).
        let device = dir.path().join("null");
        if std::process::Command::new("mknod")
            .arg(&device)
            .args(["c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success())
        {
            match check_output(&device, true) {
                Err(TransferError::Output(m)) => assert!(m.contains("is a device"), "{m}"),
                other => panic!("a device replaced: {other:?}"),
            }
        }
        let missing = dir.path().join("no/such/dir/file");
        assert!(matches!(
            check_output(&missing, false),
            Err(TransferError::Output(_))
        ));
    }
}
