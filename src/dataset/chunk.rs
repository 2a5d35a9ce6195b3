//! Splitting content into fixed-size chunks: each chunk is hashed and
//! stored content-addressed, and the whole content is hashed too. Three
//! stages overlap: the caller hashes chunks, one thread hashes the whole
//! content, one writes chunks to the store; so the two SHA-256 passes use
//! both cores. Memory stays bounded by a few chunks whatever the size.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use ring::digest;

use super::blob::{BlobError, BlobStore};
use crate::digest::Hash;

/// What chunking produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// Content length.
    pub size: u64,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<Hash>,
    /// SHA-256 of the whole content.
    pub content_sha256: Hash,
    /// Chunks this run wrote (the others existed already): what to remove
    /// if the publication fails.
    pub created: Vec<Hash>,
}

/// The thread hashing the whole content, and the channel feeding it.
type WholeHasher = (mpsc::SyncSender<Arc<Vec<u8>>>, JoinHandle<Hash>);
/// The threads storing chunks (each returns those it created), and their
/// channel.
type Writer = (
    mpsc::SyncSender<(Hash, Arc<Vec<u8>>)>,
    Vec<JoinHandle<Result<Vec<Hash>, BlobError>>>,
);

/// Accepts content in pieces of any size and chunks it.
pub struct Chunker {
    store: Arc<dyn BlobStore>,
    chunk_size: usize,
    buf: Vec<u8>,
    size: u64,
    chunks: Vec<Hash>,
    whole: Option<WholeHasher>,
    writer: Option<Writer>,
}

use crate::digest::sha256;

impl Chunker {
    /// A chunker writing into `store`.
    pub fn new(store: Arc<dyn BlobStore>, chunk_size: u32) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(2);
        let whole = std::thread::spawn(move || {
            let mut ctx = digest::Context::new(&digest::SHA256);
            for piece in rx {
                ctx.update(&piece);
            }
            let mut h = [0u8; 32];
            h.copy_from_slice(ctx.finish().as_ref());
            h
        });
        // As many writers as the store takes puts at once (one for a
        // disk, several for an object store, where each put is a round
        // trip); after one fails the others stop taking chunks.
        let (wtx, wrx) = mpsc::sync_channel::<(Hash, Arc<Vec<u8>>)>(2);
        let wrx = Arc::new(std::sync::Mutex::new(wrx));
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = (0..store.parallel_requests().max(1))
            .map(|_| {
                let store = store.clone();
                let wrx = wrx.clone();
                let failed = failed.clone();
                std::thread::spawn(move || {
                    let mut created = Vec::new();
                    loop {
                        let next = wrx
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok((hash, chunk)) = next else { break };
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            continue;
                        }
                        match store.put(&hash, &chunk) {
                            Ok(true) => created.push(hash),
                            Ok(false) => {}
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                // Leave nothing behind (disk full, I/O error).
                                store.remove(&created);
                                return Err(e);
                            }
                        }
                    }
                    Ok(created)
                })
            })
            .collect();
        Self {
            store,
            chunk_size: chunk_size as usize,
            buf: Vec::with_capacity(chunk_size as usize),
            size: 0,
            chunks: Vec::new(),
            whole: Some((tx, whole)),
            writer: Some((wtx, writers)),
        }
    }

    fn emit(&mut self) -> Result<(), BlobError> {
        let chunk = Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.chunk_size),
        ));
        if let Some((tx, _)) = &self.whole {
            // The hasher thread only ends when we drop the sender.
            let _ = tx.send(chunk.clone());
        }
        let hash = sha256(&chunk);
        self.chunks.push(hash);
        // A send fails only if the writer stopped on an error, which
        // `finish` reports.
        if let Some((tx, _)) = &self.writer {
            let _ = tx.send((hash, chunk));
        }
        Ok(())
    }

    /// Adds content.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        while !data.is_empty() {
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            self.size += take as u64;
            data = &data[take..];
            if self.buf.len() == self.chunk_size {
                self.emit()?;
            }
        }
        Ok(())
    }

    /// Ends the content: stores the last chunk and makes every chunk
    /// durable.
    pub fn finish(mut self) -> Result<Chunked, BlobError> {
        if !self.buf.is_empty() {
            self.emit()?;
        }
        let created = match self.writer.take() {
            Some((tx, handles)) => {
                drop(tx);
                let mut created = Vec::new();
                let mut failure = None;
                for handle in handles {
                    match handle.join() {
                        Ok(Ok(mut c)) => created.append(&mut c),
                        Ok(Err(e)) => failure = failure.or(Some(e)),
                        Err(_) => {
                            failure =
                                failure.or(Some(BlobError::File(crate::fsutil::FileError::new(
                                    "write",
                                    std::path::Path::new("chunk"),
                                    std::io::Error::other("a chunk writer thread panicked"),
                                ))));
                        }
                    }
                }
                if let Some(e) = failure {
                    // The failed writer removed its own; the others' go too.
                    self.store.remove(&created);
                    return Err(e);
                }
                created
            }
            None => Vec::new(),
        };
        if let Err(e) = self.store.sync(&created) {
            self.store.remove(&created);
            return Err(e);
        }
        let thread_failed = || {
            BlobError::File(crate::fsutil::FileError::new(
                "hash",
                std::path::Path::new("content"),
                std::io::Error::other("the content-hashing thread panicked"),
            ))
        };
        let content_sha256 = match self.whole.take() {
            Some((tx, handle)) => {
                drop(tx);
                handle.join().map_err(|_| thread_failed())?
            }
            None => return Err(thread_failed()),
        };
        Ok(Chunked {
            size: self.size,
            chunks: std::mem::take(&mut self.chunks),
            content_sha256,
            created,
        })
    }
}

/// Chunks a file from disk.
pub fn chunk_file(
    path: &std::path::Path,
    store: Arc<dyn BlobStore>,
    chunk_size: u32,
) -> Result<Chunked, BlobError> {
    use std::io::Read;
    let io = |e| crate::fsutil::FileError::new("read", path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut chunker = Chunker::new(store, chunk_size);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        chunker.push(&buf[..n])?;
    }
    chunker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::blob::LocalBlobStore;

    #[test]
    fn chunking_round_trips_at_the_edges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::open(dir.path()).expect("store"));
        let cs = 4096u32;
        for size in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 17, 3 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mut c = Chunker::new(store.clone(), cs);
            // Odd piece sizes, as a network stream delivers them.
            for piece in data.chunks(1000) {
                c.push(piece).expect("push");
            }
            let out = c.finish().expect("finish");
            assert_eq!(out.size, size as u64);
            assert_eq!(out.chunks.len(), size.div_ceil(cs as usize));
            assert_eq!(out.content_sha256, sha256(&data));
            let mut back = Vec::new();
            for h in &out.chunks {
                back.extend(store.get(h).expect("get").expect("present"));
            }
            assert_eq!(back, data, "size {size}");
        }
    }
}
