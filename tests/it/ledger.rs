//! The ledger on real sled storage: proofs against signed checkpoints,
//! reopen, tamper detection, concurrent appenders, and kill -9 crashes.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dsnode::identity::NodeId;
use dsnode::ledger::entry::{Entry, EntryDraft, EntryKind};
use dsnode::ledger::{Ledger, LedgerError, LedgerOptions, Query, merkle};

use crate::support::tamper::copy_dir;

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

fn open(dir: &Path) -> Ledger {
    Ledger::open(dir, key(), LedgerOptions::default())
        .expect("ledger opens")
        .0
}

/// Opens a ledger that must fail verification. sled releases its file
/// lock from a background thread after the previous handle is dropped, so
/// a "locked" answer right after a tamper helper is retried.
fn open_must_fail(dir: &Path) -> LedgerError {
    for _ in 0..100 {
        match Ledger::open(dir, key(), LedgerOptions::default()) {
            Ok(_) => panic!("a tampered ledger opened"),
            Err(LedgerError::Store(dsnode::ledger::store::StoreError::Locked { .. })) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return e,
        }
    }
    panic!("the store stayed locked");
}

/// `attempt` until the store is not locked: sled releases its file lock
/// from a background thread after the previous handle is dropped.
fn when_unlocked<T>(attempt: impl Fn() -> Result<T, LedgerError>) -> T {
    for _ in 0..100 {
        match attempt() {
            Err(LedgerError::Store(dsnode::ledger::store::StoreError::Locked { .. })) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.expect("the store opens"),
        }
    }
    panic!("the store stayed locked");
}

fn draft(i: u64) -> EntryDraft {
    let mut d = EntryDraft::new(if i.is_multiple_of(3) {
        EntryKind::AccessGranted
    } else {
        EntryKind::TransferCompleted
    });
    d.parties = vec![NodeId::from_public_key(&[(i % 5) as u8; 32])];
    d.dataset = Some(format!("ds_{}", i % 7));
    d.detail = format!("entry {i}");
    d
}

#[tokio::test]
async fn appends_are_proven_under_signed_checkpoints_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let mut acks = Vec::new();
    for i in 0..50 {
        acks.push(ledger.append(draft(i)).await.expect("append"));
    }
    let latest = ledger.latest().expect("checkpoint");
    assert_eq!(latest.checkpoint.size, 50);
    let verifier = ledger.verifier().clone();
    for ack in &acks {
        // Each ack's own checkpoint covers it, and so does the latest.
        let cp = &ack.checkpoint.checkpoint;
        assert!(ack.index < cp.size);
        for (size, root) in [
            (cp.size, cp.root),
            (latest.checkpoint.size, latest.checkpoint.root),
        ] {
            let proof = ledger.prove_inclusion(ack.index, size).expect("proof");
            merkle::verify_inclusion(&ack.leaf_hash, ack.index, size, &proof, &root)
                .expect("verifies");
        }
        let stored = ledger.entry(ack.index).expect("read").expect("present");
        assert_eq!(merkle::leaf_hash(&stored), ack.leaf_hash);
        assert_eq!(
            ledger.leaf_index(&ack.leaf_hash).expect("lookup"),
            Some(ack.index)
        );
    }
    // Consistency between an early checkpoint and the latest.
    let early = &acks[3].checkpoint.checkpoint;
    let proof = ledger
        .prove_consistency(early.size, 50)
        .expect("consistency");
    merkle::verify_consistency(early.size, 50, &proof, &early.root, &latest.checkpoint.root)
        .expect("consistent");
    // Beyond the latest checkpoint: a clear error.
    let err = ledger.prove_inclusion(0, 51).expect_err("beyond");
    assert!(
        err.to_string().contains("beyond the latest checkpoint"),
        "{err}"
    );

    ledger.close().await;
    drop(ledger);
    let (reopened, report) =
        Ledger::open(dir.path(), key(), LedgerOptions::default()).expect("reopen");
    assert_eq!(report.size, 50);
    assert_eq!(report.root, latest.checkpoint.root);
    assert!(report.checkpoints >= 1);
    dsnode::ledger::note::SignedCheckpoint::verify(
        reopened.latest().expect("latest").note.as_bytes(),
        &verifier,
    )
    .expect("latest checkpoint verifies with the published vkey");
    let next = reopened
        .append(draft(50))
        .await
        .expect("append after reopen");
    assert_eq!(next.index, 50);
    reopened.close().await;
}

#[tokio::test]
async fn queries_use_indices_and_paginate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    for i in 0..300 {
        ledger.append(draft(i)).await.expect("append");
    }
    let size = ledger.latest().expect("cp").checkpoint.size;
    let q = Query {
        dataset: Some("ds_3".into()),
        kind: Some(EntryKind::AccessGranted),
        ..Query::default()
    };
    let mut found = Vec::new();
    let mut token: Option<Vec<u8>> = None;
    loop {
        let page = ledger.query(&q, token.as_deref(), 7, size).expect("query");
        assert!(page.entries.len() <= 7);
        found.extend(page.entries.iter().map(|(i, _)| *i));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let want: Vec<u64> = (0..300).filter(|i| i % 7 == 3 && i % 3 == 0).collect();
    assert_eq!(found, want);

    let party = NodeId::from_public_key(&[2; 32]);
    let page = ledger
        .query(
            &Query {
                party: Some(party.clone()),
                ..Query::default()
            },
            None,
            1000,
            size,
        )
        .expect("party query");
    assert_eq!(page.entries.len(), 60);
    for (_, bytes) in &page.entries {
        assert!(Entry::decode(bytes).expect("decode").names(&party));
    }
    // A token from another query is refused.
    let other = ledger
        .query(&Query::default(), None, 5, size)
        .expect("all")
        .next
        .expect("more");
    let err = ledger
        .query(&q, Some(&other), 5, size)
        .expect_err("foreign token");
    assert!(err.to_string().contains("page token"), "{err}");
    // Time range: everything was written just now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let page = ledger
        .query(
            &Query {
                since_ms: Some(now - 60_000),
                until_ms: Some(now + 60_000),
                ..Query::default()
            },
            None,
            1000,
            size,
        )
        .expect("time query");
    assert_eq!(page.entries.len(), 300);
    let page = ledger
        .query(
            &Query {
                since_ms: Some(now + 60_000),
                ..Query::default()
            },
            None,
            1000,
            size,
        )
        .expect("future");
    assert!(page.entries.is_empty() && page.next.is_none());
    ledger.close().await;
}

/// Defence: RFC 6962 tree + stored hashes + signed checkpoints (THREATS.md
/// row 13). An entry rewritten behind the ledger's back is found at open,
/// with its index.
#[tokio::test]
async fn tampered_entry_is_found_with_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    for i in 0..20 {
        ledger.append(draft(i)).await.expect("append");
    }
    ledger.close().await;
    drop(ledger);
    // The entry's bytes changed: found by its stored leaf hash.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    crate::support::tamper::rewrite_entry(dir.path(), 7, false, |e| {
        e.draft.detail = "rewritten".into()
    });
    let err = open_must_fail(dir.path());
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );

    // Bytes and leaf hash rewritten together: still found, at the same index.
    crate::support::tamper::rewrite_entry(copy.path(), 7, true, |e| {
        e.draft.detail = "rewritten".into()
    });
    let err = open_must_fail(copy.path());
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );
}

/// Issue 19: an old entry changed behind a clean ledger's back passes
/// the start-up check (it reads only what is new since the verified
/// mark) and is found by the scrub, which names it, stops appends and
/// removes the mark: the next open checks everything and refuses it.
#[tokio::test]
async fn the_scrub_finds_an_old_change_stops_appends_and_drops_the_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    for i in 0..300 {
        ledger.append(draft(i)).await.expect("append");
    }
    ledger.close().await;
    drop(ledger);
    crate::support::tamper::rewrite_entry(dir.path(), 7, false, |e| {
        e.draft.detail = "rewritten".into()
    });
    let ledger =
        when_unlocked(|| Ledger::open(dir.path(), key(), LedgerOptions::default()).map(|(l, _)| l));
    let mut checked = 0;
    let err = ledger
        .scrub(&mut |n| {
            checked += n;
            true
        })
        .expect_err("tampered");
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );
    assert_eq!(checked, 0, "found in the first block");
    assert!(matches!(
        ledger.append(draft(300)).await,
        Err(LedgerError::Failed)
    ));
    assert!(!dir.path().join("VERIFIED").exists());
    ledger.close().await;
    drop(ledger);
    let err = open_must_fail(dir.path());
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );
}

/// Row 13, defence: the tree is recomputed from the stored entries at
/// open and checked against the stored hashes and signed checkpoints. Two
/// entries swapped (their leaf hashes fixed up too), or one deleted from
/// its block, are found and the first bad index named.
#[tokio::test]
async fn threat_13_a_swapped_or_deleted_entry_is_found_with_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    for i in 0..20 {
        ledger.append(draft(i)).await.expect("append");
    }
    ledger.close().await;
    drop(ledger);
    let deleted = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), deleted.path());

    // Swap entries 7 and 8 (each keeps its index field; leaves fixed up).
    let (mut d7, mut d8) = (None, None);
    crate::support::tamper::rewrite_entry(dir.path(), 8, false, |e| d8 = Some(e.draft.clone()));
    crate::support::tamper::rewrite_entry(dir.path(), 7, true, |e| {
        d7 = Some(std::mem::replace(&mut e.draft, d8.clone().expect("8")));
    });
    crate::support::tamper::rewrite_entry(dir.path(), 8, true, |e| {
        e.draft = d7.clone().expect("7")
    });
    let err = open_must_fail(dir.path());
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );

    // Delete entry 7 from its block (the later ones move up one place).
    crate::support::tamper::delete_entry(deleted.path(), 7);
    let err = open_must_fail(deleted.path());
    assert!(
        matches!(err, LedgerError::Tampered { index: 7, .. }),
        "{err}"
    );
}

/// Defence: the last signed checkpoint is kept outside the store, so a
/// store rolled back to an older copy is refused instead of being extended
/// into a fork (THREATS.md row 14).
#[tokio::test]
async fn rolled_back_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    for i in 0..10 {
        ledger.append(draft(i)).await.expect("append");
    }
    ledger.close().await;
    drop(ledger);
    let old = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), old.path());
    let ledger = open(dir.path());
    for i in 10..20 {
        ledger.append(draft(i)).await.expect("append");
    }
    ledger.close().await;
    drop(ledger);
    // Put the older store back, keeping the newer record of what was signed.
    let guard = std::fs::read(dir.path().join("LAST_CHECKPOINT")).expect("guard");
    std::fs::remove_dir_all(dir.path()).expect("rm");
    copy_dir(old.path(), dir.path());
    std::fs::write(dir.path().join("LAST_CHECKPOINT"), guard).expect("write guard");
    let err = open_must_fail(dir.path());
    assert!(err.to_string().contains("rolled back"), "{err}");
}

/// 64 tasks × 1,000 appends: indices distinct and contiguous, proofs verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_contiguous_indices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(1000);
            for i in 0..1000u64 {
                acks.push(ledger.append(draft(t * 1000 + i)).await.expect("append"));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("task"));
    }
    let mut indices: Vec<u64> = acks.iter().map(|a| a.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..64_000).collect::<Vec<_>>());
    let latest = ledger.latest().expect("cp").checkpoint.clone();
    assert_eq!(latest.size, 64_000);
    let batches: std::collections::HashSet<u64> =
        acks.iter().map(|a| a.checkpoint.checkpoint.size).collect();
    assert!(
        batches.len() < 64_000,
        "appends were batched ({} commits)",
        batches.len()
    );
    for ack in acks.iter().step_by(997) {
        let cp = &ack.checkpoint.checkpoint;
        let proof = ledger.prove_inclusion(ack.index, cp.size).expect("proof");
        merkle::verify_inclusion(&ack.leaf_hash, ack.index, cp.size, &proof, &cp.root)
            .expect("own checkpoint");
        let proof = ledger
            .prove_consistency(cp.size, latest.size)
            .expect("consistency");
        merkle::verify_consistency(cp.size, latest.size, &proof, &cp.root, &latest.root)
            .expect("consistent");
    }
    ledger.close().await;
}

/// The child side of the crash test: appends forever, printing every
/// acknowledged index and leaf hash. Run only by the crash test.
#[tokio::test]
#[ignore = "child process of kill9_crash_loop_loses_no_acknowledged_entry"]
async fn crash_child_appender() {
    let Ok(dir) = std::env::var("DSNODE_CRASH_DIR") else {
        panic!("run by kill9_crash_loop_loses_no_acknowledged_entry only");
    };
    let ledger = open(Path::new(&dir));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for t in 0..16u64 {
        let (ledger, tx) = (ledger.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let ack = ledger
                    .append(draft(t * 1_000_000 + i))
                    .await
                    .expect("append");
                if tx.send(ack).is_err() {
                    break;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(ack) = rx.recv().await {
        writeln!(
            out,
            "ACK {} {}",
            ack.index,
            data_encoding::HEXLOWER.encode(&ack.leaf_hash)
        )
        .expect("stdout");
        out.flush().expect("flush");
    }
}

/// Durability: a writer killed with SIGKILL at a random moment loses no
/// acknowledged entry; the reopened ledger verifies in full (indices from
/// 0 without gaps, every checkpoint's root recomputed). Cycles:
/// `DSNODE_CRASH_CYCLES` (default 24); `scripts/crash-test.sh` runs 1,000.
#[test]
fn kill9_crash_loop_loses_no_acknowledged_entry() {
    let cycles: u64 = std::env::var("DSNODE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut acked: std::collections::BTreeMap<u64, String> = Default::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        // A fresh log every 50 cycles keeps verification time flat.
        let ledger_dir = dir.path().join(format!("ledger-{}", cycle / 50));
        if cycle % 50 == 0 {
            acked.clear();
        }
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "ledger::crash_child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DSNODE_CRASH_DIR", &ledger_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(20 + seed % 300);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first ack, then let it run a random while, then kill.
        let first = rx.recv_timeout(Duration::from_secs(30));
        assert!(first.is_ok(), "child never acknowledged an append");
        let mut lines = vec![first.expect("first")];
        std::thread::sleep(run_for);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        lines.extend(rx.try_iter());
        for line in lines {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ACK") {
                continue;
            }
            let (Some(i), Some(h)) = (parts.next(), parts.next()) else {
                continue;
            };
            acked.insert(i.parse().expect("index"), h.to_owned());
        }
        // Reopen: full verification, then every acked entry at its index.
        runtime.block_on(async {
            let (ledger, report) = Ledger::open(&ledger_dir, key(), LedgerOptions::default())
                .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
            for (index, leaf) in &acked {
                assert!(
                    *index < report.size,
                    "cycle {cycle}: acked {index} beyond size {}",
                    report.size
                );
                let bytes = ledger
                    .entry(*index)
                    .expect("read")
                    .expect("acked entry present");
                assert_eq!(
                    &data_encoding::HEXLOWER.encode(&merkle::leaf_hash(&bytes)),
                    leaf,
                    "cycle {cycle}: entry {index} changed"
                );
            }
            ledger.close().await;
        });
    }
    eprintln!(
        "crash test: {cycles} kill -9 cycles, {} acknowledged entries in the last log, all present; {:?}",
        acked.len(),
        started.elapsed()
    );
}

/// A store a node wrote before entries carried typed references (version
/// 1 entries, built here by the same writer the sequencer uses): the
/// start-up re-verification and `audit verify` pass, its entries read
/// back as the bytes their leaf hashes are over, and new entries (version
/// 2) extend it.
#[tokio::test]
async fn a_store_of_version_1_entries_still_verifies_and_grows() {
    use dsnode::ledger::entry::EntryVersion;
    use dsnode::ledger::note::NoteSigner;
    use dsnode::ledger::store::{LedgerStore, SledStore};
    use dsnode::ledger::writer::Writer;

    let dir = tempfile::tempdir().expect("tempdir");
    let public = key().verifying_key().to_bytes();
    {
        let store = SledStore::open(dir.path()).expect("store");
        let origin = dsnode::ledger::origin_for(&NodeId::from_public_key(&public));
        let signer = NoteSigner::new(&origin, key()).expect("signer");
        let mut writer = Writer::open(&store, 0).expect("writer");
        for batch in [0..3u64, 3..5] {
            for i in batch {
                let mut e = Entry::new(i, 1_764_000_000_000 + i as i64, draft(i));
                e.version = EntryVersion::V1;
                writer.add(&store, &e).expect("a v1 entry");
            }
            let (batch, _) = writer.seal(&signer);
            store.append_batch(&batch).expect("commit");
        }
        store.sync().expect("sync");
    }

    let (report, _) = when_unlocked(|| dsnode::ledger::verify_dir(dir.path(), &public));
    assert_eq!((report.size, report.checkpoints), (5, 2));
    let (ledger, report) =
        when_unlocked(|| Ledger::open(dir.path(), key(), LedgerOptions::default()));
    assert_eq!(report.size, 5);
    for (i, bytes) in ledger.entries(0, 10).expect("entries") {
        let e = Entry::decode(&bytes).expect("a v1 entry decodes");
        assert_eq!((e.version, e.index, bytes[0]), (EntryVersion::V1, i, 1));
        assert_eq!(e.draft, draft(i));
        assert_eq!(e.encode().expect("re-encode"), bytes, "entry {i}");
    }

    let mut linked = draft(5);
    linked.transfer = Some(1);
    assert_eq!(ledger.append(linked).await.expect("append").index, 5);
    let stored = ledger.entry(5).expect("read").expect("stored");
    let e = Entry::decode(&stored).expect("decode");
    assert_eq!(
        (e.version, e.draft.transfer, stored[0]),
        (EntryVersion::V2, Some(1), 2)
    );
    ledger.close().await;
    drop(ledger);

    // Both versions in one log: it still verifies, and reopens.
    let (report, _) = when_unlocked(|| dsnode::ledger::verify_dir(dir.path(), &public));
    assert_eq!(report.size, 6);
    let (reopened, _) = when_unlocked(|| Ledger::open(dir.path(), key(), LedgerOptions::default()));
    reopened.close().await;
}
