//! The ledger in the transparency-log ecosystem (C2SP tlog-tiles,
//! tlog-witness, tlog-proof), checked by code no one here wrote: the PyPI
//! packages aics-tlog (a tiles reader and verifier) and aics-witness (a
//! witness), in the interop virtualenv.

use std::path::Path;
use std::process::Command;

use dsnode::audit::Auditor;
use dsnode::identity::key::NodeKey;
use dsnode::ledger::entry::{EntryDraft, EntryKind};
use dsnode::ledger::{Ledger, LedgerOptions};
use dsnode::node::RunningNode;

use crate::support::{self, DataSpace, NodeDir};

/// `method path` over plain HTTP/1.1: status, head and body bytes.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full response");
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    Answer {
        status,
        head,
        body: raw[at + 4..].to_vec(),
    }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Entries the node's ledger holds before it starts.
const ENTRIES: u64 = 3000;

/// Fills the (stopped) node's ledger with `n` entries, appended in
/// concurrent bursts so that the log has checkpoints of many sizes.
async fn fill(node: &NodeDir, n: u64) {
    let key = NodeKey::load(&node.dir.key()).expect("node key");
    let (ledger, _) = Ledger::open(
        &node.dir.ledger(),
        key.signing_key().clone(),
        LedgerOptions::default(),
    )
    .expect("ledger");
    let mut done = 0;
    while done < n {
        let burst = (n - done).min(97);
        let appends: Vec<_> = (0..burst)
            .map(|i| {
                let ledger = ledger.clone();
                let mut d = EntryDraft::new(EntryKind::DatasetPublished);
                d.parties = vec![node.identity.node_id.clone()];
                d.detail = format!("entry {}", done + i);
                tokio::spawn(async move { ledger.append(d).await })
            })
            .collect();
        for a in appends {
            a.await.expect("task").expect("append");
        }
        done += burst;
    }
    ledger.close().await;
}

async fn tiles_node(space: &DataSpace) -> (NodeDir, RunningNode) {
    let node = space.node("transport", "publisher");
    fill(&node, ENTRIES).await;
    let running = support::start_with(&node, |c| {
        c.tiles.listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    (node, running)
}

fn vkey(node: &NodeDir) -> String {
    std::fs::read_to_string(node.dir.vkey())
        .expect("node.vkey")
        .trim()
        .to_owned()
}

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_tiles_reader_proves_a_real_entry_from_the_served_tiles() {
    let space = DataSpace::new();
    let (_node, running) = tiles_node(&space).await;
    let node = &_node;
    let tiles = running.tiles_addr().expect("tiles listener");
    // The entry and its leaf hash, as an auditor reads them over mTLS.
    let regulator = space.node("regulator", "auditor");
    let mut auditor = Auditor::new(Box::new(support::connect(&regulator, &running).await));
    let index = 2345;
    let (cp, entry, _) = auditor.prove_inclusion(index, 0).await.expect("proven");
    assert!(cp.checkpoint.size > ENTRIES, "{}", cp.checkpoint.size);
    let python = crate::interop::python();
    let out = Command::new(&python)
        .arg(script("tiles_check.py"))
        .arg(format!("http://{tiles}/"))
        .arg(vkey(node))
        .arg(index.to_string())
        .arg(data_encoding::HEXLOWER.encode(&entry.leaf_hash))
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("aics-tlog: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["checkpoint_verified"], true);
    assert_eq!(v["included"], true);
    assert_eq!(v["included_at_next_index"], false, "a wrong index fails");
    assert!(v["size"].as_u64().expect("size") >= cp.checkpoint.size);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_are_served_exactly_for_checkpointed_sizes_and_nothing_else() {
    let space = DataSpace::new();
    let (_node, running) = tiles_node(&space).await;
    let tiles = running.tiles_addr().expect("tiles listener");
    let checkpoint = http(tiles, "GET", "/checkpoint").await;
    assert_eq!(checkpoint.status, 200);
    let size: u64 = String::from_utf8_lossy(&checkpoint.body)
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("size line");
    assert!(size > ENTRIES);
    // Full tiles below the checkpoint: 256 hashes.
    let full = http(tiles, "GET", "/tile/0/000").await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), 256 * 32);
    assert!(full.head.contains("immutable"), "{}", full.head);
    let head = http(tiles, "HEAD", "/tile/0/000").await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let partial = dsnode::tiles::tile_path(0, size / 256, (size % 256) as u16);
    assert_eq!(http(tiles, "GET", &partial).await.status, 200, "{partial}");
    let level1 = dsnode::tiles::tile_path(1, 0, (size / 256) as u16);
    assert_eq!(http(tiles, "GET", &level1).await.status, 200, "{level1}");
    // Beyond the checkpoint, sizes never checkpointed, entry bundles,
    // garbage: 404, and no panic.
    for path in [
        dsnode::tiles::tile_path(0, size / 256 + 1, 256),
        dsnode::tiles::tile_path(0, size / 256, (size % 256) as u16 + 1),
        dsnode::tiles::tile_path(2, 0, 256),
        dsnode::tiles::tile_path(7, u64::MAX / 1000, 256),
        "/tile/entries/000".into(),
        "/tile/0/000.p/0".into(),
        "/tile/0/-1".into(),
        "/tile/0/x000/000".into(),
        "/tile/99/000".into(),
        "/tile/0/../../checkpoint".into(),
        "/tile/0/%2e%2e".into(),
        "/".into(),
    ] {
        assert_eq!(http(tiles, "GET", &path).await.status, 404, "{path}");
    }
    assert_eq!(http(tiles, "POST", "/checkpoint").await.status, 405);
    running.shutdown().await.expect("shutdown");
}
