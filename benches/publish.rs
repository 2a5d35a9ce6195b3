//! Publish throughput: read a file, chunk it, hash every chunk and the
//! whole content, store the chunks (fsynced), against the speed of one
//! core doing nothing but SHA-256 over the same bytes, measured in the
//! same run. Target: publish ≥ 0.8 × single-core SHA-256.
//!
//! `cargo bench --bench publish` (`DSNODE_BENCH_MIB` sets the size, 512).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use dsnode::dataset::blob::{BlobStore, LocalBlobStore};
use dsnode::dataset::chunk::chunk_file;

fn main() {
    let mib: usize = std::env::var("DSNODE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data.bin");
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9u32;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    {
        let mut f = std::fs::File::create(&path).expect("create");
        for i in 0..mib {
            block[0] = i as u8;
            f.write_all(&block).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let bytes = (mib as f64) * 1048576.0;

    // Baseline: one core, SHA-256 only, over the same bytes in memory.
    let mut best_sha = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for i in 0..mib {
            block[0] = i as u8;
            ctx.update(&block);
        }
        std::hint::black_box(ctx.finish());
        best_sha = best_sha.max(bytes / t.elapsed().as_secs_f64());
    }

    let mut best_publish = 0f64;
    for run in 0..3 {
        let store: Arc<dyn BlobStore> =
            Arc::new(LocalBlobStore::open(&dir.path().join(format!("blobs{run}"))).expect("store"));
        let t = Instant::now();
        let out = chunk_file(&path, store, 1 << 20).expect("chunk");
        let rate = bytes / t.elapsed().as_secs_f64();
        assert_eq!(out.size as f64, bytes);
        best_publish = best_publish.max(rate);
        std::fs::remove_dir_all(dir.path().join(format!("blobs{run}"))).expect("cleanup");
    }
    // The same pipeline with a store that discards chunks: the CPU-bound
    // ceiling (read, two SHA-256 passes), to show where the time goes.
    let mut best_cpu = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        chunk_file(&path, Arc::new(Discard), 1 << 20).expect("chunk");
        best_cpu = best_cpu.max(bytes / t.elapsed().as_secs_f64());
    }
    println!("{mib} MiB file, 1 MiB chunks, best of 3:");
    println!(
        "single-core SHA-256:                  {:>8.0} MiB/s",
        best_sha / 1048576.0
    );
    println!(
        "publish (read, chunk, hash, store):   {:>8.0} MiB/s",
        best_publish / 1048576.0
    );
    println!("ratio publish / SHA-256: {:.2}", best_publish / best_sha);
    println!(
        "(read + chunk + both hashes, chunks discarded: {:.0} MiB/s, ratio {:.2})",
        best_cpu / 1048576.0,
        best_cpu / best_sha
    );
}

/// A store that keeps nothing: for the breakdown only.
struct Discard;

type H = dsnode::digest::Hash;
type E = dsnode::dataset::blob::BlobError;

impl BlobStore for Discard {
    fn put(&self, _: &H, _: &[u8]) -> Result<bool, E> {
        Ok(true)
    }
    fn remove(&self, _: &[H]) {}
    fn collect_garbage(
        &self,
        _: &std::collections::HashSet<H>,
    ) -> Result<dsnode::dataset::blob::Sweep, E> {
        Ok(Default::default())
    }
    fn sync(&self, _: &[H]) -> Result<(), E> {
        Ok(())
    }
    fn get(&self, _: &H) -> Result<Option<Vec<u8>>, E> {
        Ok(None)
    }
    fn get_unverified(&self, _: &H) -> Result<Option<Vec<u8>>, E> {
        Ok(None)
    }
    fn has(&self, _: &H) -> bool {
        false
    }
    fn probe(&self) -> Result<(), E> {
        Ok(())
    }
    fn describe(&self) -> String {
        "nowhere".into()
    }
}
