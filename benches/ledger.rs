//! Ledger benchmarks: a program, not a timed test. Measures its own
//! baseline in the same run and prints the ratio.
//!
//! 1. Durable append rate through the sequencer (many concurrent
//!    appenders, group commit, one fsync and one signature per batch),
//!    against raw sled `apply_batch` of exactly the same keys and values
//!    with one fsync per batch of the same size.
//! 2. Curves: the log grown to 1,000,000 and then 10,000,000 entries; at
//!    each size the append rate, disk bytes per entry, start-up after a
//!    clean stop and after a crash with 100,000 entries new, the full
//!    verification (an unpaced scrub pass), inclusion and consistency
//!    proofs (p50, p99) and filtered query pages of 100 (p50, p99).
//!
//! `cargo bench --bench ledger`; `DSNODE_BENCH_SIZES=1000000,10000000`
//! sets the sizes, `DSNODE_BENCH_APPENDS=0` skips part 1. Above
//! `DSNODE_BENCH_FULL_MAX` entries (2,000,000) the full verification is
//! skipped and the proofs and queries run in a process of their own.

use std::time::{Duration, Instant};

use dsnode::identity::NodeId;
use dsnode::ledger::entry::{Entry, EntryDraft, EntryKind};
use dsnode::ledger::merkle;
use dsnode::ledger::note::NoteSigner;
use dsnode::ledger::store::SledStore;
use dsnode::ledger::writer::Writer;
use dsnode::ledger::{Ledger, LedgerOptions, Query, origin_for};

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn node() -> NodeId {
    NodeId::from_public_key(&key().verifying_key().to_bytes())
}

/// How many distinct datasets and counterparties the entries name.
#[derive(Clone, Copy)]
struct Spread {
    datasets: u64,
    parties: u64,
}

/// The hard case: 1,000 datasets and 50 counterparties, uniformly
/// interleaved, so nearly every entry touches its own index postings.
const WIDE: Spread = Spread {
    datasets: 1000,
    parties: 50,
};
/// A publisher with a few popular datasets and consumers.
const NARROW: Spread = Spread {
    datasets: 10,
    parties: 10,
};

/// An entry: this node and one counterparty, a dataset, a grant, an
/// object hash, two kinds alternating.
fn draft_in(spread: Spread, i: u64) -> EntryDraft {
    let mut d = EntryDraft::new(if i.is_multiple_of(2) {
        EntryKind::AccessGranted
    } else {
        EntryKind::ReceiptRecorded
    });
    d.parties = vec![
        node(),
        NodeId::from_public_key(&[(i % spread.parties) as u8; 32]),
    ];
    d.dataset = Some(format!("ds_{:026}", i % spread.datasets));
    d.grant = Some(format!("gr_{i:032x}"));
    d.object_hash = Some(merkle::leaf_hash(&i.to_be_bytes()));
    d.detail = "purpose route-planning".into();
    d
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Appends `n` entries with `concurrency` appenders; returns (entries/s,
/// mean batch size) and the ledger.
async fn ledger_run(dir: &std::path::Path, n: u64, concurrency: u64) -> (f64, f64, Ledger) {
    ledger_run_in(WIDE, dir, n, concurrency).await
}

async fn ledger_run_in(
    spread: Spread,
    dir: &std::path::Path,
    n: u64,
    concurrency: u64,
) -> (f64, f64, Ledger) {
    let ledger = open_when_unlocked(dir);
    let (rate, batch) = append_with(&ledger, spread, n, concurrency).await;
    (rate, batch, ledger)
}

/// Appends `n` entries to `ledger` with `concurrency` appenders; returns
/// (entries/s, mean batch size).
async fn append_with(ledger: &Ledger, spread: Spread, n: u64, concurrency: u64) -> (f64, f64) {
    let start = Instant::now();
    let per = n / concurrency;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut sizes = Vec::with_capacity(per as usize);
            for i in 0..per {
                let ack = ledger
                    .append(draft_in(spread, t * per + i))
                    .await
                    .expect("append");
                sizes.push(ack.checkpoint.checkpoint.size);
            }
            sizes
        }));
    }
    let mut batches = std::collections::HashSet::new();
    for t in tasks {
        batches.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    let total = per * concurrency;
    (
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / batches.len() as f64,
    )
}

/// Entries appended after the last start, before a simulated crash.
const CRASH_TAIL: u64 = 100_000;

/// Raw sled: the same keys and values, prebuilt, one fsync per batch.
fn raw_sled_run(spread: Spread, dir: &std::path::Path, n: u64, batch_size: u64) -> f64 {
    let store = SledStore::open(dir).expect("store");
    let signer = NoteSigner::new(&origin_for(&node()), key()).expect("signer");
    // The writer builds exactly the batches the sequencer would.
    let mut writer = Writer::open(&store, 0).expect("writer");
    let mut batches = Vec::new();
    let mut i = 0;
    while i < n {
        for _ in 0..batch_size.min(n - i) {
            let entry = Entry::new(
                i,
                1_790_000_000_000 + i as i64 / batch_size as i64,
                draft_in(spread, i),
            );
            writer.add(&store, &entry).expect("entry");
            i += 1;
        }
        let (batch, _) = writer.seal(&signer);
        batches.push(SledStore::sled_batch(&batch));
    }
    let start = Instant::now();
    for b in batches {
        store.apply_raw(b).expect("apply");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes_list: Vec<u64> = std::env::var("DSNODE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("DSNODE_BENCH_SIZES: comma-separated entry counts")
        })
        .collect();
    let sizes = sizes_list;
    // Child mode: append this many entries to this ledger, then exit.
    if let (Ok(dir), Ok(n)) = (
        std::env::var("DSNODE_BENCH_GROW_DIR"),
        std::env::var("DSNODE_BENCH_GROW"),
    ) {
        let n: u64 = n.parse().expect("DSNODE_BENCH_GROW: an entry count");
        let (rate, _, ledger) = ledger_run(std::path::Path::new(&dir), n, 2_000).await;
        ledger.close().await;
        println!("{rate:.0} {:.0}", status_mib("VmHWM"));
        return;
    }
    // Child mode: proofs and queries of the closed ledger in this
    // directory, in a process that has read nothing else.
    if let Ok(dir) = std::env::var("DSNODE_BENCH_READ_DIR") {
        let ledger = open_when_unlocked(std::path::Path::new(&dir));
        let opened = status_mib("VmRSS");
        reads(&ledger);
        ledger.close().await;
        println!(
            "reads in a process of their own: RSS {opened:.0} MiB after opening, peak {:.0} MiB",
            status_mib("VmHWM")
        );
        return;
    }
    let full_max: u64 = std::env::var("DSNODE_BENCH_FULL_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let appends = std::env::var("DSNODE_BENCH_APPENDS").map_or(true, |v| v != "0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = 200_000u64;
    let concurrency = 2_000u64;

    for (name, spread) in [
        ("wide: 1,000 datasets x 50 parties", WIDE),
        ("narrow: 10 datasets x 10 parties", NARROW),
    ]
    .into_iter()
    .filter(|_| appends)
    {
        println!("== durable appends, {name}: {n} entries, {concurrency} concurrent appenders");
        let (rate1, batch1, l1) = ledger_run_in(
            spread,
            &tmp.path().join(format!("l1{}", spread.datasets)),
            n,
            concurrency,
        )
        .await;
        l1.close().await;
        drop(l1);
        let batch = batch1.round().max(1.0) as u64;
        let raw = raw_sled_run(
            spread,
            &tmp.path().join(format!("raw{}", spread.datasets)),
            n,
            batch,
        );
        let (rate2, batch2, l2) = ledger_run_in(
            spread,
            &tmp.path().join(format!("l2{}", spread.datasets)),
            n,
            concurrency,
        )
        .await;
        l2.close().await;
        drop(l2);
        let ledger_rate = (rate1 + rate2) / 2.0;
        println!(
            "raw sled apply_batch + fsync, same keys, batches of {batch}: {raw:>8.0} entries/s"
        );
        println!(
            "ledger via sequencer (mean batch {batch1:.0}, {batch2:.0}):        {ledger_rate:>8.0} entries/s (runs: {rate1:.0}, {rate2:.0})"
        );
        println!("ratio ledger / raw sled: {:.2}\n", ledger_rate / raw);
    }

    let mut built = 0u64;
    let dir = tmp.path().join("big");
    for size in sizes {
        if size <= built {
            continue;
        }
        println!("== grown to {size} entries (wide spread)");
        // In steps of at most 1 M entries, each in a process of its own
        // (as a node restarts now and then): sled 0.34 keeps in memory
        // the tree nodes a process has written or read, about 5 KB of RSS
        // per entry appended here, and does not give it back when the
        // database is closed, so one process growing a ledger to 10 M
        // entries does not fit in this machine's 24 GiB.
        let build = Instant::now();
        let mut rates = Vec::new();
        let mut peak: f64 = 0.0;
        while built < size {
            let step = (size - built).min(1_000_000);
            let out = std::process::Command::new(std::env::current_exe().expect("exe"))
                .arg("--bench")
                .env("DSNODE_BENCH_GROW_DIR", &dir)
                .env("DSNODE_BENCH_GROW", step.to_string())
                .output()
                .expect("grow step");
            let text = String::from_utf8_lossy(&out.stdout);
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<f64>().unwrap_or(0.0));
            rates.push(fields.next().unwrap_or(0.0));
            peak = peak.max(fields.next().unwrap_or(0.0));
            built += step;
        }
        println!(
            "appended up to {size} entries in {:.1}s: {:.0} entries/s (mean of {} steps of up to 1 M, each a process of its own, peak RSS {peak:.0} MiB)",
            build.elapsed().as_secs_f64(),
            rates.iter().sum::<f64>() / rates.len() as f64,
            rates.len()
        );
        println!(
            "disk: {:.0} bytes per entry ({:.1} MiB in ledger/); this process: RSS {:.0} MiB, peak {:.0} MiB",
            dir_bytes(&dir) as f64 / built as f64,
            dir_bytes(&dir) as f64 / (1 << 20) as f64,
            status_mib("VmRSS"),
            status_mib("VmHWM")
        );
        curves(&dir, built <= full_max).await;
        built += CRASH_TAIL;
    }
}

/// A field of this process's /proc/self/status (kB), in MiB; 0 if absent.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Size of everything under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Opens the ledger in `dir` (retrying while sled still holds the lock
/// of the handle just dropped); the start-up check's report.
fn open_with_report(dir: &std::path::Path) -> (Ledger, dsnode::ledger::VerifyReport) {
    loop {
        match Ledger::open(dir, key(), LedgerOptions::default()) {
            Err(dsnode::ledger::LedgerError::Store(
                dsnode::ledger::store::StoreError::Locked { .. },
            )) => std::thread::sleep(Duration::from_millis(20)),
            other => return other.expect("open"),
        }
    }
}

fn open_when_unlocked(dir: &std::path::Path) -> Ledger {
    open_with_report(dir).0
}

/// Opens the sled store alone (retrying while the last handle's lock is
/// being released): what start-up costs before the ledger's own check.
fn sled_open_seconds(dir: &std::path::Path) -> f64 {
    loop {
        let t = Instant::now();
        match SledStore::open(dir) {
            Err(dsnode::ledger::store::StoreError::Locked { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                let took = t.elapsed().as_secs_f64();
                drop(other.expect("store"));
                return took;
            }
        }
    }
}

/// Start-up, scrub, proofs and queries of the closed ledger in `dir`.
async fn curves(dir: &std::path::Path, full: bool) {
    println!(
        "opening the sled store alone: {:.3}s",
        sled_open_seconds(dir)
    );
    // Start-up after a clean stop: only what lies beyond the verified mark.
    let check = Instant::now();
    let (ledger, report) = open_with_report(dir);
    println!(
        "start-up after a clean stop: {:.3}s ({} entries, {} re-read beyond the verified mark)",
        check.elapsed().as_secs_f64(),
        report.size,
        report.checked()
    );
    // A crash: 100,000 entries appended, the ledger dropped unclosed
    // (the mark stays where this start put it).
    append_with(&ledger, WIDE, CRASH_TAIL, 1_000).await;
    drop(ledger);
    let check = Instant::now();
    let (ledger, report) = open_with_report(dir);
    println!(
        "start-up after a crash, {CRASH_TAIL} entries new: {:.3}s ({} re-read)",
        check.elapsed().as_secs_f64(),
        report.checked()
    );
    if !full {
        // sled 0.34 keeps every page a process reads or writes: the
        // proofs and queries run in a fresh process that only opens the
        // store, as a restarted node would.
        ledger.close().await;
        drop(ledger);
        println!(
            "full verification: not run above DSNODE_BENCH_FULL_MAX entries (sled holds every page it reads in memory: see BENCHMARKS.md)"
        );
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("--bench")
            .env("DSNODE_BENCH_READ_DIR", dir)
            .status()
            .expect("reads");
        assert!(status.success(), "the reads process failed: {status}");
        return;
    }
    // The full check, as `audit verify` and the scrub do it (unpaced).
    let check = Instant::now();
    let scrubbed = ledger
        .scrub(&mut |_| true)
        .expect("scrub")
        .expect("complete");
    let full = check.elapsed().as_secs_f64();
    println!(
        "full verification (scrub pass, unpaced) of {} entries, {} checkpoints: {full:.1}s ({:.0} entries/s; at the default scrub_rate of 20,000/s: {:.0}s)",
        scrubbed.size,
        scrubbed.checkpoints,
        scrubbed.size as f64 / full,
        scrubbed.size as f64 / 20_000.0
    );
    reads(&ledger);
    ledger.close().await;
}

/// Inclusion and consistency proofs at random indexes, and filtered
/// query pages, against the ledger's latest checkpoint.
fn reads(ledger: &Ledger) {
    let cp = ledger.latest().expect("checkpoint").checkpoint.clone();
    let size = cp.size;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let mut prove = Vec::new();
    let mut verify = Vec::new();
    for _ in 0..10_000 {
        let index = next() % size;
        let t = Instant::now();
        let proof = ledger.prove_inclusion(index, size).expect("proof");
        prove.push(t.elapsed());
        let leaf = merkle::leaf_hash(&ledger.entry(index).expect("read").expect("entry"));
        let t = Instant::now();
        merkle::verify_inclusion(&leaf, index, size, &proof, &cp.root).expect("verifies");
        verify.push(t.elapsed());
    }
    println!(
        "inclusion proof:   p50 {:.3} ms  p99 {:.3} ms   (verify p99 {:.3} ms)",
        ms(percentile(&mut prove, 0.5)),
        ms(percentile(&mut prove, 0.99)),
        ms(percentile(&mut verify, 0.99))
    );

    let mut prove = Vec::new();
    for _ in 0..10_000 {
        let old = 1 + next() % size;
        let t = Instant::now();
        let proof = ledger.prove_consistency(old, size).expect("proof");
        prove.push(t.elapsed());
        assert!(proof.len() < 64);
    }
    println!(
        "consistency proof: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&mut prove, 0.5)),
        ms(percentile(&mut prove, 0.99))
    );

    for (name, make) in [
        (
            "dataset + kind",
            Box::new(|r: u64| Query {
                dataset: Some(format!("ds_{:026}", r % 1000)),
                kind: Some(EntryKind::AccessGranted),
                ..Query::default()
            }) as Box<dyn Fn(u64) -> Query>,
        ),
        (
            "party",
            Box::new(|r: u64| Query {
                party: Some(NodeId::from_public_key(&[(r % 50) as u8; 32])),
                ..Query::default()
            }),
        ),
        (
            "kind + time range",
            Box::new(|_| Query {
                kind: Some(EntryKind::ReceiptRecorded),
                since_ms: Some(0),
                until_ms: Some(i64::MAX),
                ..Query::default()
            }),
        ),
    ] {
        let mut lat = Vec::new();
        let mut got = 0usize;
        for _ in 0..2_000 {
            let q = make(next());
            let t = Instant::now();
            let page = ledger.query(&q, None, 100, size).expect("query");
            lat.push(t.elapsed());
            got += page.entries.len();
        }
        println!(
            "query page of 100, {name:<18}: p50 {:.3} ms  p99 {:.3} ms  (mean {:.0} entries/page)",
            ms(percentile(&mut lat, 0.5)),
            ms(percentile(&mut lat, 0.99)),
            got as f64 / 2000.0
        );
    }
}
