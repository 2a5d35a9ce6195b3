//! The Ledger service over real mTLS, checked by the auditor client that
//! verifies every signature and proof; access rules; bad input; and the
//! start-up check refusing a tampered ledger.

use dsnode::audit::{AuditError, Auditor};
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::peer::{Code as PeerCode, EntryQuery, PeerError};
use dsnode::wire::pb;
use tonic::Code;

use crate::support::{self, DataSpace};

fn query(kind: Option<EntryKind>) -> Query {
    Query {
        kind,
        ..Query::default()
    }
}

#[tokio::test]
async fn auditor_reads_and_verifies_everything() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let auditor_dir = space.node("auditor", "auditor");
    // Three starts: three NodeStarted entries in three batches.
    for _ in 0..2 {
        support::start(&server, |_| {})
            .await
            .shutdown()
            .await
            .expect("stop");
    }
    let node = support::start(&server, |_| {}).await;
    let mut auditor = Auditor::new(Box::new(support::connect(&auditor_dir, &node).await));

    let cp = auditor.checkpoint().await.expect("checkpoint verifies");
    assert_eq!(cp.checkpoint.size, 3);
    assert_eq!(
        cp.checkpoint.origin,
        format!("dsnode/{}", server.identity.node_id)
    );

    let (at, entries) = auditor
        .entries(query(Some(EntryKind::NodeStarted)), true)
        .await
        .expect("entries verify");
    assert_eq!(at.checkpoint.size, 3);
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.entry.index, i as u64);
        assert_eq!(e.entry.draft.kind, EntryKind::NodeStarted);
        assert_eq!(e.entry.draft.parties, vec![server.identity.node_id.clone()]);
    }
    // Pagination with a page of one still proves every entry.
    let one = EntryQuery {
        limit: 1,
        ..query(None).into()
    };
    let (_, paged) = auditor.entries(one, true).await.expect("paged");
    assert_eq!(paged.len(), 3);

    let (cp2, e, _) = auditor
        .prove_inclusion(0, 2)
        .await
        .expect("inclusion at an older signed size");
    assert_eq!((cp2.checkpoint.size, e.entry.index), (2, 0));
    let (old, new, _) = auditor.prove_consistency(1, 0).await.expect("consistency");
    assert_eq!((old.checkpoint.size, new.checkpoint.size), (1, 3));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn non_auditors_see_only_entries_naming_them_and_bad_input_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let consumer = space.node("consumer", "consumer");
    let node = support::start(&server, |_| {}).await;
    let conn = support::connect(&consumer, &node).await;
    let mut raw = pb::ledger_client::LedgerClient::new(conn.channel.clone());
    let mut auditor = Auditor::new(Box::new(conn));

    // The checkpoint and consistency proofs are public; entries are not.
    auditor.checkpoint().await.expect("checkpoint");
    let (_, mine) = auditor.entries(query(None), true).await.expect("query");
    assert!(mine.is_empty(), "the consumer is named by no entry");
    let other = Query {
        party: Some(server.identity.node_id.clone()),
        ..Query::default()
    };
    match auditor.entries(other, false).await {
        Err(AuditError::Peer(PeerError {
            code: PeerCode::PermissionDenied,
            message,
            ..
        })) => {
            assert!(message.contains("only auditors"), "{message}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    // An entry that does not name the caller looks exactly like a missing one.
    match auditor.prove_inclusion(0, 0).await {
        Err(AuditError::Peer(PeerError {
            code: PeerCode::NotFound,
            ..
        })) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    let entries = raw
        .get_entries(pb::GetEntriesRequest {
            start: 0,
            limit: 10,
        })
        .await
        .expect("get")
        .into_inner();
    assert!(entries.entries.is_empty(), "range reads are filtered too");

    // Bad input: clear InvalidArgument, never a panic.
    let bad = [
        pb::QueryEntriesRequest {
            limit: 1001,
            ..Default::default()
        },
        pb::QueryEntriesRequest {
            kind: "Bogus".into(),
            ..Default::default()
        },
        pb::QueryEntriesRequest {
            party: "../etc".into(),
            ..Default::default()
        },
        pb::QueryEntriesRequest {
            page_token: vec![0xff; 3],
            ..Default::default()
        },
        pb::QueryEntriesRequest {
            tree_size: 999,
            ..Default::default()
        },
    ];
    for req in bad {
        let status = raw.query_entries(req.clone()).await.expect_err("bad query");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{req:?}: {}",
            status.message()
        );
    }
    let status = raw
        .prove_inclusion(pb::ProveInclusionRequest {
            target: Some(pb::prove_inclusion_request::Target::LeafHash(vec![1; 31])),
            tree_size: 0,
        })
        .await
        .expect_err("short hash");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("32 bytes"),
        "{}",
        status.message()
    );
    let status = raw
        .prove_consistency(pb::ProveConsistencyRequest {
            old_size: 5,
            new_size: 0,
        })
        .await
        .expect_err("old beyond new");
    assert_eq!(status.code(), Code::InvalidArgument);
    node.shutdown().await.expect("shutdown");
}

/// Defence: the start-up check and `audit verify` (THREATS.md row 13).
/// An entry rewritten on disk (with valid store checksums, as an attacker
/// with access to the store would) stops the node from starting and is
/// named by index; a raw byte flip is refused by the store's checksums.
#[tokio::test]
async fn tampered_ledger_refuses_to_start_and_audit_verify_names_the_index() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    for _ in 0..4 {
        support::start(&server, |_| {})
            .await
            .shutdown()
            .await
            .expect("stop");
    }
    let ledger_dir = server.dir.ledger();
    let out = audit_verify(server.dir.root());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified: 4 entries"));
    crate::support::tamper::rewrite_entry(&ledger_dir, 2, false, |e| {
        e.draft.detail = "dsnode 9.9.9".into()
    });
    let out = audit_verify(server.dir.root());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tampered at index 2"), "{stderr}");

    let err = start_refused(server.dir.root(), "a node with a tampered ledger started").await;
    assert!(err.contains("tampered at index 2"), "{err}");
}

/// Issue 19, start-up in time proportional to what is new: a node that
/// stopped cleanly keeps a verified mark (a checkpoint it signed), and
/// its next start-up checks only the entries beyond it. An old entry
/// changed behind its back (its stored hashes left alone) is then found
/// by the background scrub: NOT_SERVING naming the index, the
/// `tampered` metric, and by `audit verify`. An entry rewritten with
/// every stored hash above it changes the stored tree below the mark:
/// refused at start-up, naming the index.
#[tokio::test]
async fn an_old_entry_changed_behind_the_nodes_back_is_found_by_the_scrub() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    support::fill_ledger(&server, 700).await;
    let copy = tempfile::tempdir().expect("tempdir");
    crate::support::tamper::copy_dir(server.dir.root(), copy.path());
    let marked = std::fs::read_to_string(server.dir.ledger().join("VERIFIED")).expect("mark");
    assert!(marked.contains("\n700\n"), "{marked}");

    crate::support::tamper::rewrite_entry(&server.dir.ledger(), 7, false, |e| {
        e.draft.detail = "rewritten".into()
    });
    let node = support::start_with(&server, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.ledger.scrub_rate = 1_000_000;
    })
    .await;
    let metrics = node.metrics_addr().expect("metrics");
    let mut ready = support::http(metrics, "GET", "/readyz").await;
    for _ in 0..200 {
        if ready.status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ready = support::http(metrics, "GET", "/readyz").await;
    }
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready
            .body
            .contains("ledger scrub: ledger tampered at index 7"),
        "{}",
        ready.body
    );
    let text = support::http(metrics, "GET", "/metrics").await.body;
    assert!(
        text.contains("dsnode_ledger_scrubs_total{kind=\"tampered\"} 1"),
        "{text}"
    );
    // Nothing more is recorded on the changed store (so nothing is
    // granted or served), and the mark is gone: the next start-up checks
    // everything and refuses it.
    assert!(!server.dir.ledger().join("VERIFIED").exists());
    node.shutdown().await.expect("stop");
    let err = start_refused(
        server.dir.root(),
        "a node whose scrub found tampering started again",
    )
    .await;
    assert!(err.contains("tampered at index 7"), "{err}");
    let out = audit_verify(server.dir.root());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tampered at index 7"), "{stderr}");

    // The entry and every stored hash above it rewritten, below the
    // mark: the stored tree no longer has the mark's root; start-up
    // refuses, naming 7.
    let copied = dsnode::runtime::config::DataDir::new(copy.path());
    crate::support::tamper::rewrite_entry_and_tree(&copied.ledger(), 7, |e| {
        e.draft.detail = "rewritten".into()
    });
    let err = start_refused(
        copy.path(),
        "a node whose tree changed below its mark started",
    )
    .await;
    assert!(err.contains("tampered at index 7"), "{err}");
}

/// Issue 19: a clean node's start-up reads only what lies beyond its
/// verified mark, and says so; the scrub then verifies everything and
/// the metric says how much.
#[tokio::test]
async fn start_up_checks_only_what_is_new_and_the_scrub_the_rest() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    support::fill_ledger(&server, 1000).await;
    let key = dsnode::identity::key::NodeKey::load(&server.dir.key()).expect("key");
    let (ledger, report) = dsnode::ledger::Ledger::open(
        &server.dir.ledger(),
        key.signing_key().clone(),
        dsnode::ledger::LedgerOptions::default(),
    )
    .expect("reopen");
    assert_eq!(report.size, 1000);
    // The mark is at 1000, in block 15 (960..1024): 40 entries re-read.
    assert_eq!((report.trusted_below, report.checked()), (960, 40));
    ledger.close().await;
    drop(ledger);

    let node = support::start_with(&server, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.ledger.scrub_rate = 1_000_000;
    })
    .await;
    let metrics = node.metrics_addr().expect("metrics");
    let mut text = String::new();
    for _ in 0..200 {
        text = support::http(metrics, "GET", "/metrics").await.body;
        if text.contains("dsnode_ledger_scrubs_total{kind=\"passed\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("dsnode_ledger_scrubs_total{kind=\"passed\"} 1"),
        "{text}"
    );
    // Everything up to the NodeStarted entry's checkpoint, at least.
    let verified: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dsnode_ledger_verified_entries "))
        .and_then(|v| v.trim().parse().ok())
        .expect("gauge");
    assert!(verified >= 1001, "{text}");
    assert_eq!(support::http(metrics, "GET", "/readyz").await.status, 200);
    node.shutdown().await.expect("stop");
}

/// Starts the node of the data dir `root`, which must refuse to start
/// (`why` says what it would mean if it did); its error.
async fn start_refused(root: &std::path::Path, why: &str) -> String {
    let mut config =
        dsnode::runtime::config::Config::new(root, "127.0.0.1:0".parse().expect("addr"));
    config.transport.drain_deadline = std::time::Duration::from_secs(1);
    match dsnode::node::start(config).await {
        Ok(_) => panic!("{why}"),
        Err(e) => e.to_string(),
    }
}

/// `dsnode audit verify` on a stopped node's data dir (retried while sled
/// still holds the store's lock after the node stopped).
fn audit_verify(root: &std::path::Path) -> std::process::Output {
    for _ in 0..100 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(["audit", "verify", "--data-dir"])
            .arg(root)
            .output()
            .expect("run");
        if !String::from_utf8_lossy(&out.stderr).contains("the node is running") {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the ledger stayed locked");
}

/// Issue 20, finding 8: `audit verify` on the data dir of a running node
/// said "does NOT verify … in use by another process", which reads like
/// tampering. It says the node is running, and what to do instead.
#[tokio::test]
async fn audit_verify_on_a_running_node_says_it_is_running() {
    let space = DataSpace::new();
    let node = space.node("transport", "publisher");
    let running = support::start(&node, |_| {}).await;
    let root = node.dir.root().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(["audit", "verify", "--data-dir"])
            .arg(&root)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the node is running"), "{stderr}");
    assert!(!stderr.contains("does NOT verify"), "{stderr}");
    running.shutdown().await.expect("stop");
}
