//! Faults a node must survive (THREATS.md, "nothing lost").

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dsnode::audit::Auditor;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::peer::Code as PeerCode;
use dsnode::wire::admin::{AdminClient, FetchEvent};
use dsnode::wire::pb;

use crate::support::flows::{POLICY, admin, ask, header, publish, publish_via, published};
use crate::support::{self, DataSpace, Served, consumer_in};

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root): the caller
    /// says so plainly.
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?
            .success();
        ok.then(|| Self {
            path: path.to_path_buf(),
        })
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Disk full: the ledger append behind a grant fails with a clear error,
/// no grant is issued (no file, no entry), reads go on (checkpoint,
/// entries, catalog), and once space returns the node grants again by
/// itself, without a restart, with nothing lost.
#[tokio::test]
async fn disk_full_refuses_cleanly_keeps_reads_and_recovers_by_itself() {
    let space = DataSpace::new();
    let mount_at = space.dir.path().join("small-disk");
    let Some(disk) = SmallDisk::mount(&mount_at, "24m") else {
        eprintln!(
            "disk_full test NOT RUN: this process cannot mount a tmpfs (run as root, as CI does)"
        );
        return;
    };
    // The publisher's data dir lives on the small disk.
    let made = space.node("city-transport", "publisher");
    let on_disk = dsnode::runtime::config::DataDir::new(mount_at.join("transport"));
    let copy = Command::new("cp")
        .args(["-a"])
        .arg(made.dir.root())
        .arg(on_disk.root())
        .status()
        .expect("cp");
    assert!(copy.success());
    let publisher = support::NodeDir {
        dir: on_disk,
        identity: made.identity.clone(),
    };
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let auditor = space.node("regulator", "auditor");
    let pub_node = support::start_with(&publisher, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let metrics = pub_node.metrics_addr().expect("metrics listener");
    let con_node = support::start(&consumer, |_| {}).await;
    let ds = published(&publisher, &pub_node, "Counts", POLICY, b"a,b\n1").await;
    let mut a = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let before = a.checkpoint().await.expect("checkpoint");

    let filler = disk.fill();
    let con_admin = admin(&consumer, &con_node).await;
    let peer = pub_node.local_addr().to_string();
    let err = con_admin
        .request_access(&peer, ask(&ds, "research"))
        .await
        .expect_err("no grant on a full disk");
    // The requester learns the publisher's storage is full (issue 20,
    // finding 5: it was INTERNAL "see the node's log"); the path and
    // errno stay in that node's log.
    assert_eq!(err.code, PeerCode::ResourceExhausted, "{}", err.message);
    assert!(
        err.message.contains("issuing a grant")
            && err.message.contains("this node's storage is full"),
        "{}",
        err.message
    );
    // The publisher says at once that it is not ready, and why.
    let ready = support::http(metrics, "GET", "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("the ledger takes no appends")
            && ready.body.contains("storage is full"),
        "{}",
        ready.body
    );
    // A refusal is recorded in the ledger: on a full disk the append
    // fails, so the refusal is not answered as if recorded.
    let denied = con_admin
        .request_access(&peer, ask(&ds, "marketing"))
        .await
        .expect_err("not answered");
    assert_ne!(
        denied.code,
        PeerCode::PermissionDenied,
        "{}",
        denied.message
    );
    assert!(
        denied.message.contains("recording a denial"),
        "{}",
        denied.message
    );
    // Nothing of the grant was kept: it is committed with its entry.
    let listed = admin(&publisher, &pub_node)
        .await
        .list_grants()
        .await
        .expect("list grants");
    assert!(listed.is_empty(), "no grant left behind: {listed:?}");

    // Reads go on: the same checkpoint, its entries, the catalog.
    let during = a.checkpoint().await.expect("checkpoint while full");
    assert_eq!(during.checkpoint.size, before.checkpoint.size);
    let (_, entries) = a
        .entries(Query::default(), true)
        .await
        .expect("entries while full");
    assert_eq!(entries.len() as u64, before.checkpoint.size);
    let seen = pb::catalog_client::CatalogClient::new(
        support::connect(&consumer, &pub_node).await.channel,
    )
    .list_datasets(pb::ListDatasetsRequest::default())
    .await
    .expect("catalog while full")
    .into_inner();
    assert_eq!(seen.datasets.len(), 1);

    // Space returns: the node finds room by itself (a probe write and
    // fsync), re-opens and re-verifies its ledger, and grants again, with
    // no restart; the log extends what was acknowledged.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = support::http(metrics, "GET", "/readyz").await;
        if ready.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not ready 30 s after space returned: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin(&consumer, &con_node)
        .await
        .request_access(&peer, ask(&ds, "research"))
        .await
        .expect("granted once space returned, without a restart");
    let (old, _, _) = a
        .prove_consistency(before.checkpoint.size, 0)
        .await
        .expect("the log extends what was acknowledged");
    assert_eq!(old.checkpoint.root, before.checkpoint.root);
    // A restart verifies everything written before and after.
    pub_node.shutdown().await.expect("stop");
    let pub_node = support::start(&publisher, |_| {}).await;
    let mut a = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let (old, _, _) = a
        .prove_consistency(before.checkpoint.size, 0)
        .await
        .expect("the log extends what was acknowledged");
    assert_eq!(old.checkpoint.root, before.checkpoint.root);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
    drop(disk);
}

/// A small xorshift, seeded per client: cancellations at random moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 64 concurrent clients × 1,000 requests (reads, and access requests
/// that append to the ledger), a random third of them cancelled at a
/// random moment: no deadlock (it finishes), every acknowledged grant is
/// in the ledger exactly once, every grant file the node kept has its
/// one entry, and every entry verifies under the final checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_random_cancellations_lose_nothing() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let auditor = space.node("regulator", "auditor");
    let policy = POLICY.replace("max_fetches = 3\n", "");
    let pub_node = support::start(&publisher, |t| {
        t.max_concurrent_streams = 256;
        t.concurrency_limit_per_connection = 256;
    })
    .await;
    let ds = published(&publisher, &pub_node, "Counts", &policy, b"a,b\n1").await;
    let started = std::time::Instant::now();
    let mut clients = Vec::new();
    for c in 0..64u64 {
        let channel = support::connect(&consumer, &pub_node).await.channel;
        let ds = ds.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c + 1));
            let mut acked = Vec::new();
            for _ in 0..1_000 {
                let roll = rng.next();
                let cancel_after = roll
                    .is_multiple_of(3)
                    .then(|| Duration::from_micros(rng.next() % 3_000));
                let mut exchange = pb::exchange_client::ExchangeClient::new(channel.clone());
                let mut ledger = pb::ledger_client::LedgerClient::new(channel.clone());
                let ask = pb::RequestAccessRequest {
                    dataset_id: ds.clone(),
                    purpose: "research".into(),
                    actions: vec!["read".into()],
                    duration_secs: 3_600,
                };
                let call = async {
                    if roll.is_multiple_of(10) {
                        exchange
                            .request_access(ask)
                            .await
                            .ok()
                            .and_then(|r| r.into_inner().grant)
                    } else {
                        let _ = ledger.get_checkpoint(pb::GetCheckpointRequest {}).await;
                        None
                    }
                };
                let granted = match cancel_after {
                    Some(after) => tokio::time::timeout(after, call).await.ok().flatten(),
                    None => call.await,
                };
                if let Some(env) = granted {
                    let env: dsnode::envelope::Envelope = env.into();
                    acked.push(env.payload_hash());
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(600), c)
                .await
                .expect("no deadlock")
                .expect("client"),
        );
    }
    let took = started.elapsed();

    let mut a = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let q = Query {
        kind: Some(EntryKind::AccessGranted),
        ..Query::default()
    };
    let (_, entries) = a.entries(q, true).await.expect("every entry verifies");
    let recorded: Vec<[u8; 32]> = entries
        .iter()
        .filter_map(|e| e.entry.draft.object_hash)
        .collect();
    for h in &acked {
        assert_eq!(
            recorded.iter().filter(|r| *r == h).count(),
            1,
            "an acknowledged grant is recorded exactly once"
        );
    }
    // Issuing runs to its end whatever the caller does, and a grant is
    // committed with its entry: every kept grant has its one entry.
    let kept = admin(&publisher, &pub_node)
        .await
        .list_grants()
        .await
        .expect("list grants")
        .len();
    assert_eq!(kept, recorded.len(), "every kept grant has its one entry");
    assert!(!acked.is_empty() && recorded.len() >= acked.len());
    eprintln!(
        "64 x 1000 requests in {took:?}: {} grants acknowledged, {} recorded",
        acked.len(),
        recorded.len()
    );
    pub_node.shutdown().await.expect("stop");
}

/// A corrupted or truncated store file: the node either recovers within
/// the rules (its log still extends every checkpoint it signed) or refuses
/// to start with a message naming the problem; it never serves a root
/// that contradicts a signed checkpoint.
#[tokio::test]
async fn damaged_store_files_are_recovered_within_the_rules_or_refused() {
    for damage in ["truncate", "flip", "zero-conf"] {
        let space = DataSpace::new();
        let publisher = space.node("city-transport", "publisher");
        let auditor = space.node("regulator", "auditor");
        let node = support::start(&publisher, |_| {}).await;
        for i in 0..20u8 {
            publish(&publisher, &node, header("Counts", POLICY, 1), &[i])
                .await
                .expect("publish");
        }
        let mut a = Auditor::new(Box::new(support::connect(&auditor, &node).await));
        let signed = a.checkpoint().await.expect("checkpoint");
        node.shutdown().await.expect("stop");

        let ledger = publisher.dir.ledger();
        match damage {
            "truncate" => {
                let db = ledger.join("db");
                let len = std::fs::metadata(&db).expect("db").len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&db)
                    .expect("open")
                    .set_len(len / 2)
                    .expect("truncate");
            }
            "flip" => {
                let db = ledger.join("db");
                let mut bytes = std::fs::read(&db).expect("db");
                let at = bytes.len() / 3;
                for b in &mut bytes[at..at + 64] {
                    *b ^= 0x5a;
                }
                std::fs::write(&db, bytes).expect("write");
            }
            _ => std::fs::write(ledger.join("conf"), b"").expect("conf"),
        }

        let mut config = dsnode::runtime::config::Config::new(
            publisher.dir.root(),
            "127.0.0.1:0".parse().expect("addr"),
        );
        config.transport.drain_deadline = Duration::from_secs(2);
        match dsnode::node::start(config).await {
            Err(e) => {
                let msg = e.to_string();
                eprintln!("{damage}: refused to start: {msg}");
                assert!(
                    msg.contains("ledger") || msg.contains("store") || msg.contains("checkpoint"),
                    "{damage}: the refusal names the problem: {msg}"
                );
            }
            Ok(node) => {
                // Recovered: it must still extend what it signed.
                let mut a = Auditor::new(Box::new(support::connect(&auditor, &node).await));
                let (old, _, _) = a
                    .prove_consistency(signed.checkpoint.size, 0)
                    .await
                    .unwrap_or_else(|e| panic!("{damage}: recovered but inconsistent: {e}"));
                assert_eq!(old.checkpoint.root, signed.checkpoint.root, "{damage}");
                eprintln!(
                    "{damage}: recovered, extends checkpoint {}",
                    signed.checkpoint.size
                );
                node.shutdown().await.expect("stop");
            }
        }
    }
}

/// What the publisher acknowledged before it was killed.
#[derive(Default)]
struct Acked {
    /// Payload hashes of grants received by the consumer.
    grants: Vec<[u8; 32]>,
    /// Datasets whose publication returned.
    datasets: Vec<String>,
    /// (publisher ledger index, receipt hash) of completed fetches.
    receipts: Vec<(u64, [u8; 32])>,
}

/// kill -9 of a publishing node at random moments while it publishes,
/// grants and serves fetches (whose receipts it records), many cycles: it
/// starts every time (its whole ledger verified), and everything it
/// acknowledged is in its ledger exactly once. `DSNODE_CRASH_CYCLES`
/// (default 12) sets the number of cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_node_operations_loses_nothing() {
    use std::sync::{Arc, Mutex};
    let cycles: usize = std::env::var("DSNODE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let auditor = space.node("regulator", "auditor");
    std::fs::write(publisher.dir.config(), "listen = \"127.0.0.1:0\"\n").expect("config");
    let con_node = support::start(&consumer, |_| {}).await;
    let policy = POLICY.replace("max_fetches = 3\n", "");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let out = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for cycle in 0..cycles {
        let mut served = Served::start_serving(publisher.dir.root());
        let addr = served.addr;

        // Everything acknowledged before is there, once.
        let mut a = Auditor::new(Box::new(support::connect_addr(&auditor, addr).await));
        let (_, entries) = a
            .entries(Query::default(), true)
            .await
            .expect("the whole ledger verifies");
        {
            let acked = acked.lock().expect("acked");
            let count = |kind: dsnode::ledger::entry::EntryKind, h: &[u8; 32]| {
                entries
                    .iter()
                    .filter(|e| e.entry.draft.kind == kind && e.entry.draft.object_hash == Some(*h))
                    .count()
            };
            for g in &acked.grants {
                assert_eq!(
                    count(dsnode::ledger::entry::EntryKind::AccessGranted, g),
                    1,
                    "cycle {cycle}: grant"
                );
            }
            for (index, h) in &acked.receipts {
                let e = entries
                    .iter()
                    .find(|e| e.entry.index == *index)
                    .expect("receipt entry");
                assert_eq!(
                    e.entry.draft.object_hash,
                    Some(*h),
                    "cycle {cycle}: receipt"
                );
            }
            for ds in &acked.datasets {
                let published = entries.iter().any(|e| {
                    e.entry.draft.kind == dsnode::ledger::entry::EntryKind::DatasetPublished
                        && e.entry.draft.dataset.as_deref() == Some(ds.as_str())
                });
                assert!(published, "cycle {cycle}: dataset {ds}");
            }
        }

        // Work until killed.
        let work = {
            let acked = acked.clone();
            let own = support::connect_addr(&publisher, addr).await;
            let con = support::connect(&consumer, &con_node).await;
            let policy = policy.clone();
            let out = out.path().to_path_buf();
            tokio::spawn(async move {
                for i in 0.. {
                    let mut h = header("Counts", &policy, 70_000);
                    h.chunk_size = 4096;
                    let content = vec![(cycle * 31 + i) as u8; 70_000];
                    let Ok(r) = publish_via(&own, h, &content).await else {
                        return;
                    };
                    let ds = r.dataset_id;
                    acked.lock().expect("acked").datasets.push(ds.clone());
                    let cadmin = AdminClient::new(&con);
                    let Ok(g) = cadmin
                        .request_access(&addr.to_string(), ask(&ds, "research"))
                        .await
                    else {
                        return;
                    };
                    let env: dsnode::envelope::Envelope = g.grant.expect("grant").into();
                    acked.lock().expect("acked").grants.push(env.payload_hash());
                    let grant = dsnode::exchange::grant::Grant::decode(&env.payload)
                        .expect("grant")
                        .id
                        .to_string();
                    let target = out.join(format!("{cycle}-{i}"));
                    let Ok(mut events) = cadmin
                        .fetch(
                            &addr.to_string(),
                            &grant,
                            &target,
                            &dsnode::wire::admin::FetchOptions {
                                force: true,
                                ..Default::default()
                            },
                        )
                        .await
                    else {
                        return;
                    };
                    let done = loop {
                        match events.next().await {
                            Ok(Some(FetchEvent::Done(d))) => break Some(d),
                            Ok(Some(_)) => {}
                            _ => break None,
                        }
                    };
                    let Some(done) = done else {
                        return;
                    };
                    // The receipt's hash, from the consumer's own entry:
                    // the publisher's entry at its index must hold it.
                    let receipt_hash = receipt_hash_of(&con.channel, done.ledger_index).await;
                    acked
                        .lock()
                        .expect("acked")
                        .receipts
                        .push((done.publisher_ledger_index, receipt_hash));
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(50 + rng.next() % 400)).await;
        served.child.kill().expect("kill -9");
        let _ = served.child.wait();
        work.abort();
        let _ = work.await;
    }
    let (datasets, grants, receipts) = {
        let acked = acked.lock().expect("acked");
        (
            acked.datasets.len(),
            acked.grants.len(),
            acked.receipts.len(),
        )
    };
    eprintln!(
        "{cycles} kill -9 cycles: {datasets} publications, {grants} grants, {receipts} receipts acknowledged, none lost"
    );
    assert!(grants > 0, "the cycles did some work");
    con_node.shutdown().await.expect("stop");
}

/// The object hash of entry `index` of the node behind `channel` (its own
/// ledger, read through the Ledger service as the node itself).
async fn receipt_hash_of(channel: &tonic::transport::Channel, index: u64) -> [u8; 32] {
    let r = pb::ledger_client::LedgerClient::new(channel.clone())
        .prove_inclusion(pb::ProveInclusionRequest {
            target: Some(pb::prove_inclusion_request::Target::Index(index)),
            tree_size: 0,
        })
        .await
        .expect("entry")
        .into_inner();
    let entry =
        dsnode::ledger::entry::Entry::decode(&r.entry.expect("entry").entry).expect("decode");
    entry.draft.object_hash.expect("receipt hash")
}
