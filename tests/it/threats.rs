//! THREATS.md rows not covered elsewhere (the closing note of the
//! hardening issue maps every row to its test).

use dsnode::peer::Code as PeerCode;

use crate::support::flows::{
    POLICY, fetch_to, grant_and_fetch, granted, header, publish, publish_via, published,
};
use crate::support::{self, DataSpace, Served, TwoNodes, consumer_in};

/// Row 3, defence: versions only go up per lineage, and the latest of
/// each lineage is what the catalog reloads at start-up. After a restart,
/// superseding an older version (rolling the lineage back) is refused as
/// before.
#[tokio::test]
async fn threat_03_a_lineage_cannot_roll_back_after_a_restart() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let node = support::start(&publisher, |_| {}).await;
    let v1 = publish(&publisher, &node, header("Lanes v1", POLICY, 1), b"1")
        .await
        .expect("v1")
        .dataset_id;
    let mut h = header("Lanes v2", POLICY, 2);
    h.supersedes = v1.clone();
    publish(&publisher, &node, h, b"22").await.expect("v2");
    node.shutdown().await.expect("stop");

    let node = support::start(&publisher, |_| {}).await;
    let mut again = header("Lanes v2 again", POLICY, 1);
    again.supersedes = v1;
    let err = publish(&publisher, &node, again, b"x")
        .await
        .expect_err("rollback after restart");
    assert_eq!(err.code, PeerCode::InvalidArgument);
    assert!(
        err.message.contains("not the latest version"),
        "{}",
        err.message
    );
    node.shutdown().await.expect("stop");
}

/// `dsnode catalog` of the publisher at `addr` as `consumer` (off the
/// runtime's thread: the publisher runs in this process).
async fn catalog_cli(
    consumer: &support::NodeDir,
    addr: std::net::SocketAddr,
    text: Option<&str>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"));
    cmd.env_remove("DSNODE_DATA_DIR")
        .arg("catalog")
        .arg("--data-dir")
        .arg(consumer.dir.root())
        .args(["--peer", &addr.to_string()]);
    if let Some(text) = text {
        cmd.args(["--text", text]);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("run dsnode catalog"))
        .await
        .expect("join")
}

/// Row 3, consumer side (issue 20, finding 9): a publisher whose data dir
/// is restored from before version 2 of a lineage serves version 1 as the
/// latest again. A consumer that saw version 2 (in a listing, or by
/// fetching it) is told by `dsnode catalog`, naming both versions; a
/// listing filtered so that version 2 does not match is no false alarm,
/// nor is a consumer that never saw version 2.
#[tokio::test]
async fn threat_03_a_consumer_notices_a_catalog_rolled_back() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let lister = consumer_in(&space, "acme", "CN-HE");
    let fetcher = consumer_in(&space, "globex", "CN-HE");
    let newcomer = consumer_in(&space, "initech", "CN-HE");
    let node = support::start(&publisher, |_| {}).await;
    let v1 = publish(&publisher, &node, header("Lanes v1", POLICY, 1), b"1")
        .await
        .expect("v1")
        .dataset_id;
    node.shutdown().await.expect("stop");
    let backup = space.dir.path().join("publisher-backup");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(publisher.dir.root())
        .arg(&backup)
        .status()
        .expect("cp");
    assert!(copied.success());

    let node = support::start(&publisher, |_| {}).await;
    let mut h = header("Lanes v2", POLICY, 2);
    h.supersedes = v1.clone();
    let v2 = publish(&publisher, &node, h, b"22")
        .await
        .expect("v2")
        .dataset_id;
    // One consumer lists the catalog (a filtered listing without v2 is
    // no rollback: v2 is still there), another fetches v2.
    for text in [None, Some("v1")] {
        let listed = catalog_cli(&lister, node.local_addr(), text).await;
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let con_node = support::start(&fetcher, |_| {}).await;
    let out = space.dir.path().join("lanes-v2.csv");
    grant_and_fetch(&fetcher, &con_node, &v2, node.local_addr(), &out)
        .await
        .expect("fetch v2");
    con_node.shutdown().await.expect("stop");
    node.shutdown().await.expect("stop");

    // The publisher's data dir goes back to before v2.
    std::fs::remove_dir_all(publisher.dir.root()).expect("remove");
    std::fs::rename(&backup, publisher.dir.root()).expect("restore");
    let node = support::start(&publisher, |_| {}).await;
    for (who, text) in [(&lister, None), (&lister, Some("Lanes")), (&fetcher, None)] {
        let told = catalog_cli(who, node.local_addr(), text).await;
        let stderr = String::from_utf8_lossy(&told.stderr);
        assert!(!told.status.success(), "rollback not noticed ({text:?})");
        assert!(
            stderr.contains("ROLLBACK")
                && stderr.contains(&format!("offers version 1 ({v1})"))
                && stderr.contains(&format!("saw version 2 ({v2})")),
            "{stderr}"
        );
    }
    let fresh = catalog_cli(&newcomer, node.local_addr(), None).await;
    assert!(
        fresh.status.success(),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    node.shutdown().await.expect("stop");
}

/// Row 17, defence: policy size and nesting limits, checked at publish
/// (src/policy/mod.rs, `MAX_POLICY_BYTES` and the depth limit): a huge
/// policy and a deeply nested one are refused with the limit named, and
/// nothing is published.
#[tokio::test]
async fn threat_17_a_huge_or_deep_policy_is_refused_at_publish() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let node = support::start(&publisher, |_| {}).await;
    let huge = format!(
        "{POLICY}\n[[permission]]\nactions = [\"read\"]\npurpose = [{}]\n",
        (0..20_000)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let deep = format!(
        "classification = \"general\"\nx = {}1{}\n",
        "[".repeat(64),
        "]".repeat(64)
    );
    for (policy, why) in [(huge, "at most 65536"), (deep, "")] {
        let err = publish(&publisher, &node, header("Big", &policy, 1), b"1")
            .await
            .expect_err("refused");
        assert_eq!(err.code, PeerCode::InvalidArgument, "{}", err.message);
        assert!(err.message.contains(why), "{why}: {}", err.message);
    }
    let datasets = std::fs::read_dir(publisher.dir.datasets())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(datasets, 0, "nothing published");
    node.shutdown().await.expect("stop");
}

/// Row 12, defence: blobs are written to a fresh temporary name (O_EXCL)
/// and renamed over their hash's name, never opened for writing through
/// a path that exists. A symlink planted in the consumer's blob store
/// under the name of a chunk it is about to receive (one to a file that
/// exists, one dangling) makes the node write through neither: the
/// victim file is unchanged, the dangling target never created, and the
/// fetched output is right.
#[tokio::test]
async fn threat_12_symlinks_planted_in_the_blob_store_are_not_written_through() {
    use std::os::unix::fs::symlink;
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let content: Vec<u8> = (0..2 * 4096u32).map(|i| (i % 199) as u8).collect();
    let mut h = header("Two chunks", POLICY, content.len() as u64);
    h.chunk_size = 4096;
    let ds = publish(&publisher, &pub_node, h, &content)
        .await
        .expect("publish")
        .dataset_id;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;

    let victim = space.dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").expect("victim");
    let never = space.dir.path().join("never-created");
    let blob_path = |chunk: &[u8]| {
        let hex = data_encoding::HEXLOWER.encode(&dsnode::digest::sha256(chunk));
        let dir = consumer.dir.blobs().join("sha256").join(&hex[..2]);
        std::fs::create_dir_all(&dir).expect("fan-out");
        dir.join(hex)
    };
    symlink(&victim, blob_path(&content[..4096])).expect("plant");
    symlink(&never, blob_path(&content[4096..])).expect("plant dangling");

    let out = space.dir.path().join("out.bin");
    fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect("fetch");
    assert_eq!(
        std::fs::read(&victim).expect("victim"),
        b"precious",
        "written through a symlink"
    );
    assert!(!never.exists(), "a dangling symlink was followed");
    assert_eq!(std::fs::read(&out).expect("out"), content);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Row 4, defence: the fetch count is read from fsynced `TransferStarted`
/// entries, not from memory: a publisher killed with `kill -9` right after
/// serving a one-fetch grant refuses a second fetch after it restarts.
#[tokio::test]
async fn threat_04_a_used_grant_stays_used_after_kill_9() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    std::fs::write(publisher.dir.config(), "listen = \"127.0.0.1:0\"\n").expect("config");
    let mut served = Served::start_serving(publisher.dir.root());
    let addr = served.addr;
    let own = support::connect_addr(&publisher, addr).await;
    let policy = POLICY.replace("max_fetches = 3", "max_fetches = 1");
    let ds = publish_via(&own, header("Once", &policy, 4), b"once")
        .await
        .expect("publish")
        .dataset_id;
    let con_node = support::start(&consumer, |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let grant = grant_and_fetch(&consumer, &con_node, &ds, addr, &dir.path().join("a"))
        .await
        .expect("the one fetch")
        .grant;
    served.child.kill().expect("kill -9");
    let _ = served.child.wait();

    let mut served = Served::start_serving(publisher.dir.root());
    let addr = served.addr;
    let err = fetch_to(
        &consumer,
        &con_node,
        addr,
        &grant,
        &dir.path().join("b"),
        false,
    )
    .await
    .expect_err("used up");
    assert_eq!(err.code, PeerCode::PermissionDenied, "{}", err.message);
    assert!(err.message.contains("all used"), "{}", err.message);
    served.signal("TERM");
    let _ = served.child.wait();
    con_node.shutdown().await.expect("stop");
}

/// Rows 4 and 16, defence: an issued grant is honoured at start-up only if
/// its bytes are the grant the ledger recorded (`AccessGranted` holds its
/// hash; grant ids are random, not hashes). A grant replaced in the store
/// by another grant under the same id, validly signed with the
/// publisher's own key (say, more fetches), is not served.
#[tokio::test]
async fn a_grant_swapped_on_disk_is_not_honoured() {
    let TwoNodes {
        space: _space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let ds = published(&publisher, &pub_node, "Lanes", POLICY, b"ab").await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    pub_node.shutdown().await.expect("stop");

    // Issued grants are ledger records, committed with their entries.
    let name = format!("grant/issued/{grant}");
    let kept = crate::support::tamper::read_record(&publisher.dir.ledger(), &name).expect("grant");
    let env = dsnode::envelope::Envelope::from_json(std::str::from_utf8(&kept).expect("utf-8"))
        .expect("envelope");
    let mut g = dsnode::exchange::grant::Grant::decode(&env.payload).expect("grant");
    g.max_fetches = Some(1000);
    let key = dsnode::identity::NodeKey::load(&publisher.dir.key()).expect("key");
    crate::support::tamper::rewrite_record(
        &publisher.dir.ledger(),
        &name,
        g.sign(key.signing_key()).to_json().as_bytes(),
    );

    let pub_node = support::start(&publisher, |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &dir.path().join("out"),
        false,
    )
    .await
    .expect_err("the swapped grant is not served");
    assert_eq!(err.code, PeerCode::NotFound, "{}", err.message);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}
