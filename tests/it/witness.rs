//! Witnessing (THREATS.md row 14): checkpoint exchanges with cosignatures,
//! fork detection with evidence, and a node that lost acknowledged entries
//! finding out from its witnesses.

use std::process::Command;

use dsnode::identity::NodeKey;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::node::RunningNode;
use dsnode::peer::{Code as PeerCode, PeerError};
use dsnode::runtime::config::Config;
use dsnode::wire::pb;
use dsnode::witness::protocol::Exchanged;
use tonic::Code;

use crate::support::flows::{POLICY, header, publish};
use crate::support::tamper::copy_dir;
use crate::support::{self, DataSpace, NodeDir};

/// Has `witness` (through its own Admin API) exchange checkpoints with
/// the node at `peer`.
async fn witness(
    witness: &NodeDir,
    node: &RunningNode,
    peer: &RunningNode,
) -> Result<Exchanged, PeerError> {
    support::flows::admin(witness, node)
        .await
        .witness(&peer.local_addr().to_string())
        .await
}

/// Row 14, defence: witnesses keep each log's largest verified checkpoint
/// and accept a new one only with a consistency proof from it
/// (src/witness/mod.rs, `WitnessBook::observe`). Two witnesses watch a
/// publisher, cosign its checkpoints (it keeps and serves the
/// cosignatures), and follow it as it grows. Then the publisher signs a
/// second history (the fork hook): both witnesses find the same size with
/// two roots, refuse to cosign, record `ForkDetected`, keep both signed
/// notes, and `dsnode audit forks` lists the verified evidence.
#[tokio::test]
async fn threat_14_a_forked_log_is_caught_by_both_witnesses_with_evidence() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let w1 = space.node("water-authority", "publisher");
    let w2 = space.node("acme", "consumer");
    let mut p_node = support::start(&publisher, |_| {}).await;
    let w1_node = support::start(&w1, |_| {}).await;
    let w2_node = support::start(&w2, |_| {}).await;
    publish(&publisher, &p_node, header("Lanes", POLICY, 1), b"1")
        .await
        .expect("publish");

    for (w, n) in [(&w1, &w1_node), (&w2, &w2_node)] {
        let r = witness(w, n, &p_node).await.expect("exchange");
        assert_eq!(r.peer.to_string(), publisher.identity.node_id.to_string());
        assert!(r.peer_grew && r.cosigned_by_peer, "{r:?}");
        // The publisher's log grew by one entry since: its record of the
        // witness's checkpoint (every exchange records what is new).
        let again = witness(w, n, &p_node).await.expect("again");
        assert!(
            again.peer_grew && again.peer_size > r.peer_size,
            "{again:?}"
        );
    }
    // The publisher keeps both witnesses' cosignatures and serves them.
    let conn = support::connect(&w1, &p_node).await;
    let served = pb::ledger_client::LedgerClient::new(conn.channel)
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(served.cosigned_checkpoints.len(), 2);
    for w in [&w1, &w2] {
        let ok = served
            .cosigned_checkpoints
            .iter()
            .any(|note| dsnode::witness::cosig::verify(note, &w.identity.public_key).is_ok());
        assert!(
            ok,
            "{}'s cosignature is served and verifies",
            w.identity.node_id
        );
    }

    // The publisher grows; the witnesses follow with a consistency proof.
    publish(&publisher, &p_node, header("Lanes v2", POLICY, 2), b"22")
        .await
        .expect("publish");
    let r = witness(&w1, &w1_node, &p_node).await.expect("grown");
    assert!(r.peer_grew);
    witness(&w2, &w2_node, &p_node).await.expect("grown");
    p_node.shutdown().await.expect("stop");

    // The publisher rewrites its history and signs it.
    let size = support::tamper::ledger_size(&publisher.dir).await;
    support::tamper::rewrite_history(&publisher.dir, |e| e.index < size - 2, size).await;
    p_node = support::start(&publisher, |_| {}).await;

    for (w, n) in [(&w1, &w1_node), (&w2, &w2_node)] {
        let err = witness(w, n, &p_node).await.expect_err("fork");
        assert_eq!(err.code, PeerCode::FailedPrecondition, "{}", err.message);
        assert!(
            err.message.contains("fork in log")
                && err.message.contains("same size, different roots"),
            "{}",
            err.message
        );
        // Once forked, never cosigned again.
        let err = witness(w, n, &p_node).await.expect_err("still forked");
        assert!(err.message.contains("forked"), "{}", err.message);
        // The witness's ledger records it, with both notes.
        let mut a = dsnode::audit::Auditor::new(Box::new(
            support::connect(
                &space.node(&format!("auditor-{}", w.identity.participant), "auditor"),
                n,
            )
            .await,
        ));
        let (_, entries) = a
            .entries(
                Query {
                    kind: Some(EntryKind::ForkDetected),
                    ..Query::default()
                },
                true,
            )
            .await
            .expect("entries");
        assert_eq!(entries.len(), 1, "one fork recorded");
        let detail = &entries[0].entry.draft.detail;
        assert!(
            detail.starts_with("same size, different roots\n"),
            "{detail}"
        );
        let origin = format!("dsnode/{}", publisher.identity.node_id);
        assert_eq!(
            detail.matches(&format!("\n{origin}\n")).count(),
            2,
            "two notes: {detail}"
        );

        // `dsnode audit forks` re-verifies the evidence and exits 1.
        let out = Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(["audit", "forks", "--data-dir"])
            .arg(w.dir.root())
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("FORK in log"), "{text}");
        assert!(text.contains("both signatures verified"), "{text}");
        assert!(text.contains("same size, different roots"), "{text}");
    }
    for n in [p_node, w1_node, w2_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Row 14 and the faults table (a store that lost acknowledged entries):
/// a node restored with an older ledger (its `LAST_CHECKPOINT` restored
/// with it, so the rollback guard inside `ledger/` cannot tell) refuses to
/// start because a witness cosigned a later checkpoint of it; with that
/// record gone too, a configured witness refuses the older checkpoint and
/// shows the node the larger one it signed, and the node, finding its
/// store contradicts its own signature, still refuses to serve.
#[tokio::test]
async fn a_node_whose_store_lost_witnessed_entries_refuses_to_serve() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let w1 = space.node("water-authority", "publisher");
    let w1_node = support::start(&w1, |_| {}).await;
    let p_node = support::start(&publisher, |_| {}).await;
    p_node.shutdown().await.expect("stop");
    let backup = publisher.dir.root().join("ledger.backup");
    copy_dir(&publisher.dir.ledger(), &backup);

    let p_node = support::start(&publisher, |_| {}).await;
    publish(&publisher, &p_node, header("Lanes", POLICY, 1), b"1")
        .await
        .expect("publish");
    witness(&w1, &w1_node, &p_node).await.expect("witnessed");
    p_node.shutdown().await.expect("stop");

    std::fs::remove_dir_all(publisher.dir.ledger()).expect("rm");
    copy_dir(&backup, &publisher.dir.ledger());
    let config = || {
        let mut c = Config::new(publisher.dir.root(), "127.0.0.1:0".parse().expect("addr"));
        c.transport.drain_deadline = std::time::Duration::from_secs(1);
        c
    };
    let err = dsnode::node::start(config()).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "witness {} cosigned this node's checkpoint",
            w1.identity.node_id
        )) && msg.contains("lost acknowledged entries"),
        "{msg}"
    );

    // Without the local record, the configured witness tells it.
    std::fs::remove_dir_all(publisher.dir.witness()).expect("rm witness");
    let mut c = config();
    c.witness.peers = vec![w1_node.local_addr().to_string()];
    let err = dsnode::node::start(c).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("is older than the checkpoint of size"),
        "{msg}"
    );
    assert!(msg.contains("and it is right"), "{msg}");
    assert!(msg.contains("lost acknowledged entries"), "{msg}");
    w1_node.shutdown().await.expect("stop");
}

/// Bad input from a peer (issue 8): a checkpoint with a bad signature, or
/// a larger one whose consistency proof does not verify, is refused with
/// the reason, nothing is cosigned and nothing is recorded; the witness
/// still holds the checkpoint it verified before.
#[tokio::test]
async fn a_bad_signature_or_an_inconsistent_proof_is_refused_and_nothing_cosigned() {
    use dsnode::ledger::note::{Checkpoint, NoteSigner};
    let space = DataSpace::new();
    let w = space.node("water-authority", "publisher");
    let caller = space.node("city-transport", "publisher");
    let w_node = support::start(&w, |_| {}).await;
    let key = NodeKey::load(&caller.dir.key()).expect("key");
    let origin = dsnode::ledger::origin_for(&caller.identity.node_id);
    let note = |signer: &ed25519_dalek::SigningKey, size: u64, root: [u8; 32]| {
        NoteSigner::new(&origin, signer.clone())
            .expect("signer")
            .sign(
                &Checkpoint {
                    origin: origin.clone(),
                    size,
                    root,
                }
                .text(),
            )
            .into_bytes()
    };
    let call = |req: pb::ExchangeCheckpointsRequest| {
        let (caller, w_node) = (&caller, &w_node);
        async move {
            let conn = support::connect(caller, w_node).await;
            pb::peering_client::PeeringClient::new(conn.channel)
                .exchange_checkpoints(req)
                .await
        }
    };
    let seen_entries = || async {
        let auditor = space.node(&format!("auditor-{}", rand_suffix()), "auditor");
        let mut a =
            dsnode::audit::Auditor::new(Box::new(support::connect(&auditor, &w_node).await));
        let (_, e) = a
            .entries(
                Query {
                    kind: Some(EntryKind::PeerCheckpointSeen),
                    ..Query::default()
                },
                true,
            )
            .await
            .expect("entries");
        e.len()
    };

    // Signed by another key than the caller's certificate carries.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let err = call(pb::ExchangeCheckpointsRequest {
        checkpoint: note(&stranger, 4, [1; 32]),
        ..Default::default()
    })
    .await
    .expect_err("bad signature");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("your checkpoint does NOT verify"),
        "{}",
        err.message()
    );
    assert_eq!(seen_entries().await, 0, "nothing recorded");

    // A real first checkpoint (a two-leaf tree), witnessed and cosigned.
    let leaves = [[1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]];
    let root_of = |n: usize| dsnode::ledger::merkle::root_from_leaves(&leaves[..n]);
    let first = call(pb::ExchangeCheckpointsRequest {
        checkpoint: note(key.signing_key(), 2, root_of(2)),
        ..Default::default()
    })
    .await
    .expect("first")
    .into_inner();
    assert!(!first.cosigned.is_empty());
    assert_eq!(seen_entries().await, 1);

    // A larger one with a proof that does not join them.
    let err = call(pb::ExchangeCheckpointsRequest {
        checkpoint: note(key.signing_key(), 4, root_of(4)),
        old_checkpoint: note(key.signing_key(), 2, root_of(2)),
        consistency_proof: vec![vec![7; 32]],
        ..Default::default()
    })
    .await
    .expect_err("inconsistent proof");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("consistency proof from size 2 to 4 does not verify"),
        "{}",
        err.message()
    );
    assert_eq!(seen_entries().await, 1, "nothing recorded");
    // Without a proof, the witness asks for one from what it saw.
    let again = call(pb::ExchangeCheckpointsRequest {
        checkpoint: note(key.signing_key(), 4, root_of(4)),
        ..Default::default()
    })
    .await
    .expect("asks for a proof")
    .into_inner();
    assert_eq!(again.need_proof_from, 2);
    assert!(again.cosigned.is_empty(), "nothing cosigned");
    w_node.shutdown().await.expect("stop");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Two nodes configured as each other's witnesses start at the same time:
/// each exchanges checkpoints with the other before reporting SERVING
/// (its server already answers, so neither waits for the other), and each
/// keeps the other's cosignature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_witness_each_other_start_together() {
    let space = DataSpace::new();
    let a = space.node("city-transport", "publisher");
    let b = space.node("water-authority", "publisher");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    };
    let (addr_a, addr_b) = (free(), free());
    let config = |dir: &NodeDir, listen, peer: std::net::SocketAddr| {
        let mut c = Config::new(dir.dir.root(), listen);
        c.transport.drain_deadline = std::time::Duration::from_secs(1);
        c.witness.peers = vec![peer.to_string()];
        c
    };
    let started = std::time::Instant::now();
    let (na, nb) = tokio::join!(
        dsnode::node::start(config(&a, addr_a, addr_b)),
        dsnode::node::start(config(&b, addr_b, addr_a)),
    );
    let (na, nb) = (na.expect("a starts"), nb.expect("b starts"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // Whichever started second reached the other: at least one side holds
    // the other's cosignature now; one more exchange gives both.
    let cosigned = |me: &NodeDir, by: &NodeDir| {
        me.dir
            .witness()
            .join("cosigned")
            .join(format!("{}.note", by.identity.node_id))
            .exists()
    };
    assert!(cosigned(&a, &b) || cosigned(&b, &a));
    witness(&a, &na, &nb).await.expect("exchange");
    assert!(cosigned(&a, &b) && cosigned(&b, &a));
    for n in [na, nb] {
        n.shutdown().await.expect("stop");
    }
}
