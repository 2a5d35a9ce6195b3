//! Faults a node must survive (THREATS.md, "nothing lost").

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dsnode::audit::Auditor;
use dsnode::pb;

use crate::datasets::{POLICY, consumer_in, header, publish};
use crate::support::{self, DataSpace};

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
/// entries, catalog), and once space returns a restarted node serves and
/// appends again with nothing lost.
#[tokio::test]
async fn disk_full_refuses_cleanly_keeps_reads_and_recovers() {
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
    let on_disk = dsnode::config::DataDir::new(mount_at.join("transport"));
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
    let pub_node = support::start(&publisher, |_| {}).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let ds = publish(
        &publisher,
        &pub_node,
        header("Counts", POLICY, 5),
        b"a,b\n1",
    )
    .await
    .expect("publish")
    .dataset_id;
    let mut a = Auditor::new(support::connect(&auditor, &pub_node).await).expect("auditor");
    let before = a.checkpoint().await.expect("checkpoint");

    let filler = disk.fill();
    let conn = support::connect(&consumer, &con_node).await;
    let mut admin = pb::admin_client::AdminClient::new(conn.channel);
    let err = admin
        .request_access(crate::exchange::ask(&ds, "research", pub_node.local_addr()))
        .await
        .expect_err("no grant on a full disk");
    // The requester learns it failed on the publisher's side (the cause,
    // "No space left on device" with its path, stays in that node's log).
    assert_eq!(err.code(), tonic::Code::Internal, "{}", err.message());
    assert!(
        err.message().contains("issuing a grant"),
        "{}",
        err.message()
    );
    // A refusal is recorded in the ledger: on a full disk the append
    // fails, so the refusal is not answered as if recorded.
    let denied = admin
        .request_access(crate::exchange::ask(
            &ds,
            "marketing",
            pub_node.local_addr(),
        ))
        .await
        .expect_err("not answered");
    assert_ne!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "{}",
        denied.message()
    );
    assert!(
        denied.message().contains("recording a denial"),
        "{}",
        denied.message()
    );
    let issued = std::fs::read_dir(publisher.dir.grants().join("issued"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(issued, 0, "no grant file left behind");

    // Reads go on: the same checkpoint, its entries, the catalog.
    let during = a.checkpoint().await.expect("checkpoint while full");
    assert_eq!(during.checkpoint.size, before.checkpoint.size);
    let (_, entries) = a
        .entries(pb::QueryEntriesRequest::default(), true)
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

    // Space returns; after a restart (a failed commit stops appends until
    // the store is verified again, as databases do after a failed fsync)
    // the node serves and appends, with nothing lost.
    std::fs::remove_file(&filler).expect("free space");
    pub_node.shutdown().await.expect("stop");
    let pub_node = support::start(&publisher, |_| {}).await;
    let mut a = Auditor::new(support::connect(&auditor, &pub_node).await).expect("auditor");
    let (old, _, _) = a
        .prove_consistency(before.checkpoint.size, 0)
        .await
        .expect("the log extends what was acknowledged");
    assert_eq!(old.checkpoint.root, before.checkpoint.root);
    let conn = support::connect(&consumer, &con_node).await;
    pb::admin_client::AdminClient::new(conn.channel)
        .request_access(crate::exchange::ask(&ds, "research", pub_node.local_addr()))
        .await
        .expect("granted once space returned");
    tokio::time::sleep(Duration::from_millis(10)).await;
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
    drop(disk);
}
