//! Datasets on S3-compatible object storage, against a real S3 server
//! (s3s-fs on loopback; `scripts/garage-test.sh` runs the same tests
//! against Garage): chunks stored as objects, a publication read from an
//! object, fetches served from the bucket and received into one, and the
//! faults an object store brings (down at start-up, gone mid-fetch, a
//! corrupted or missing object, refused credentials).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dsnode::dataset::s3::Bucket;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::node::RunningNode;
use dsnode::peer::Code;
use dsnode::runtime::config::Storage;
use dsnode::wire::admin::FetchOptions;
use tokio_stream::StreamExt;

use crate::support::flows::{self, POLICY, admin, fetch_as, granted, header, kinds, publish};
use crate::support::s3::{Outage, S3Server, unique};
use crate::support::{self, DataSpace, NodeDir, consumer_in};

/// Starts `node` with `storage` (and a metrics listener, for `/readyz`).
async fn start_on(node: &NodeDir, storage: Storage) -> RunningNode {
    support::start_with(node, move |c| {
        c.storage = storage;
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await
}

/// Content that is not all one byte, so a swapped chunk shows.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// The keys under `prefix` in the test bucket.
async fn keys_under(bucket: &Bucket, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = bucket
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .collect();
    keys.sort();
    keys
}

/// Reads a whole object.
async fn object_bytes(bucket: &Bucket, key: &str) -> Option<Vec<u8>> {
    let url = format!("s3://{}/{key}", bucket.name());
    let url = dsnode::dataset::s3::ObjectUrl::parse(&url).expect("url");
    bucket.size(&url.key).await.expect("head")?;
    let (_, mut pieces) = bucket.read(&url.key).await.expect("read");
    let mut out = Vec::new();
    while let Some(p) = pieces.next().await {
        out.extend_from_slice(&p.expect("piece"));
    }
    Some(out)
}

/// `/readyz` of `node`: status code and body.
async fn readyz(node: &RunningNode) -> (u16, String) {
    let a = support::http(node.metrics_addr().expect("metrics"), "GET", "/readyz").await;
    (a.status, a.body)
}

/// Waits until `/readyz` answers `status` (within 20 s): its body.
async fn wait_ready(node: &RunningNode, status: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = readyz(node).await;
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fetch_options(streams: u32) -> FetchOptions {
    FetchOptions {
        streams,
        ..FetchOptions::default()
    }
}

async fn fetch_into(
    consumer: &NodeDir,
    con_node: &RunningNode,
    publisher: SocketAddr,
    grant: &str,
    out: &str,
    streams: u32,
) -> Result<flows::FetchRun, dsnode::peer::PeerError> {
    fetch_as(
        consumer,
        con_node,
        publisher,
        grant,
        Path::new(out),
        &fetch_options(streams),
    )
    .await
}

/// A publisher and a consumer running, both with their chunks in the
/// test bucket, each under a prefix of its own.
struct Pair {
    s3: S3Server,
    bucket: Bucket,
    _space: DataSpace,
    publisher: NodeDir,
    consumer: NodeDir,
    pub_prefix: String,
    con_prefix: String,
    pub_node: RunningNode,
    con_node: RunningNode,
}

impl Pair {
    async fn start() -> Self {
        let s3 = S3Server::start();
        let space = DataSpace::new();
        let publisher = space.node("city-transport", "publisher");
        let consumer = consumer_in(&space, "acme", "CN-HE");
        let (pub_prefix, con_prefix) = (unique("pub"), unique("con"));
        s3.give_credentials(&publisher, false);
        s3.give_credentials(&consumer, false);
        let pub_node = start_on(&publisher, s3.storage(&s3.endpoint, &pub_prefix)).await;
        let con_node = start_on(&consumer, s3.storage(&s3.endpoint, &con_prefix)).await;
        Self {
            bucket: s3.bucket(),
            s3,
            _space: space,
            publisher,
            consumer,
            pub_prefix,
            con_prefix,
            pub_node,
            con_node,
        }
    }
}

/// A publisher and a consumer that both keep their data in the bucket.
#[tokio::test]
async fn datasets_are_published_from_served_from_and_received_into_a_bucket() {
    let Pair {
        s3,
        bucket,
        _space,
        publisher,
        consumer,
        pub_prefix,
        con_prefix,
        pub_node,
        con_node,
    } = Pair::start().await;
    assert_eq!(wait_ready(&pub_node, 200).await, "serving\n");

    // A local file's content goes to the bucket as chunk objects.
    let local = content(700_000, 1);
    let mut h = header("Bus positions", POLICY, local.len() as u64);
    h.chunk_size = 64 << 10;
    let ds_local = publish(&publisher, &pub_node, h, &local)
        .await
        .expect("publish to the bucket")
        .dataset_id;
    let chunks = keys_under(&bucket, &format!("{pub_prefix}/sha256")).await;
    assert_eq!(chunks.len(), 11, "{chunks:?}");

    // An object already in the bucket is published where it is: the node
    // reads it, the caller sends no content.
    let source_key = format!("{}/trips-2026.csv", unique("incoming"));
    let original = content(3 << 20, 7);
    bucket
        .put(&s3.url(&source_key).key, original.clone().into())
        .await
        .expect("put the source object");
    let mut h = header("Trips 2026", POLICY, 0);
    h.chunk_size = 256 << 10;
    h.source = format!("s3://{}/{source_key}", s3.bucket);
    let r = admin(&publisher, &pub_node)
        .await
        .publish(h, tokio_stream::empty())
        .await
        .expect("publish an object");
    assert_eq!(r.size, original.len() as u64);
    let manifest: dsnode::envelope::Envelope = r.manifest.expect("manifest").into();
    let manifest = dsnode::dataset::Manifest::decode(&manifest.payload).expect("manifest");
    assert_eq!(manifest.content_sha256, dsnode::digest::sha256(&original));
    assert_eq!(manifest.size, original.len() as u64);
    assert_eq!(
        keys_under(&bucket, &format!("{pub_prefix}/sha256"))
            .await
            .len(),
        11 + 12
    );

    // Served from the bucket, received into the consumer's bucket, over
    // parallel streams; the object is the content.
    let grant = granted(&consumer, &con_node, &r.dataset_id, pub_node.local_addr()).await;
    let out_key = format!("{con_prefix}/received/trips-2026.csv");
    let out = format!("s3://{}/{out_key}", s3.bucket);
    let run = fetch_into(&consumer, &con_node, pub_node.local_addr(), &grant, &out, 3)
        .await
        .expect("fetch into the bucket");
    assert_eq!(run.done.bytes, original.len() as u64);
    assert_eq!(run.done.streams, 3);
    assert_eq!(
        object_bytes(&bucket, &out_key)
            .await
            .expect("output object"),
        original
    );
    // Without --force an existing object is not replaced.
    let grant2 = granted(&consumer, &con_node, &ds_local, pub_node.local_addr()).await;
    let e = fetch_into(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant2,
        &out,
        1,
    )
    .await
    .expect_err("the object exists");
    assert!(e.message.contains("exists; pass --force"), "{}", e.message);
    // And into a file, from a bucket-backed publisher.
    let file = consumer.dir.root().join("bus.bin");
    fetch_into(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant2,
        file.to_str().expect("utf-8"),
        2,
    )
    .await
    .expect("fetch into a file");
    assert_eq!(std::fs::read(&file).expect("output"), local);

    // An s3:// name that is not one is refused before anything happens.
    let mut h = header("Bad", POLICY, 0);
    h.source = "s3://Not_A_Bucket/x".into();
    let e = admin(&publisher, &pub_node)
        .await
        .publish(h, tokio_stream::empty())
        .await
        .expect_err("bad url");
    assert_eq!(e.code, Code::InvalidArgument, "{}", e.message);
    // A missing source object is named.
    let mut h = header("Missing", POLICY, 0);
    h.source = format!("s3://{}/{}/nothing.csv", s3.bucket, unique("none"));
    let e = admin(&publisher, &pub_node)
        .await
        .publish(h, tokio_stream::empty())
        .await
        .expect_err("missing object");
    assert_eq!(e.code, Code::NotFound, "{}", e.message);
    assert!(e.message.contains("nothing.csv"), "{}", e.message);
    pub_node.shutdown().await.expect("shutdown");
    con_node.shutdown().await.expect("shutdown");
}

/// A chunk changed in the bucket is caught by the consumer (the output
/// object never appears) and named by `audit storage`, as is a missing one.
#[tokio::test]
async fn a_damaged_chunk_is_caught_by_the_consumer_and_named_by_the_storage_audit() {
    let Pair {
        s3,
        bucket,
        _space,
        publisher,
        consumer,
        pub_prefix,
        con_prefix,
        pub_node,
        con_node,
    } = Pair::start().await;
    let data = content(600_000, 3);
    let mut h = header("Air quality", POLICY, data.len() as u64);
    h.chunk_size = 100_000;
    let ds = publish(&publisher, &pub_node, h, &data)
        .await
        .expect("publish")
        .dataset_id;
    let clean = admin(&publisher, &pub_node)
        .await
        .audit_storage()
        .await
        .expect("audit");
    assert_eq!((clean.datasets, clean.chunks), (1, 6));
    assert_eq!(clean.bytes, data.len() as u64);
    assert!(clean.damaged.is_empty(), "{:?}", clean.damaged);

    // Chunk 2 is overwritten in the bucket with other bytes.
    let hash2 = dsnode::digest::sha256(&data[200_000..300_000]);
    let key2 = format!("{pub_prefix}/sha256/{}", hex(&hash2));
    bucket
        .put(&s3.url(&key2).key, vec![0u8; 100_000].into())
        .await
        .expect("overwrite");
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let out_key = format!("{con_prefix}/air.bin");
    let out = format!("s3://{}/{out_key}", s3.bucket);
    let e = fetch_into(&consumer, &con_node, pub_node.local_addr(), &grant, &out, 1)
        .await
        .expect_err("a corrupted chunk");
    assert!(
        e.message.contains("chunk 2 does not match"),
        "{}",
        e.message
    );
    assert_eq!(
        object_bytes(&bucket, &out_key).await,
        None,
        "no output object"
    );

    // Chunk 4 goes missing.
    let hash4 = dsnode::digest::sha256(&data[400_000..500_000]);
    bucket
        .delete(&s3.url(&format!("{pub_prefix}/sha256/{}", hex(&hash4))).key)
        .await
        .expect("delete");
    let audit = admin(&publisher, &pub_node)
        .await
        .audit_storage()
        .await
        .expect("audit");
    let found: Vec<(String, u64, String)> = audit
        .damaged
        .iter()
        .map(|d| (d.dataset_id.clone(), d.chunk_index, d.problem.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            (ds.clone(), 2, "corrupt".to_owned()),
            (ds.clone(), 4, "missing".to_owned()),
        ]
    );
    assert_eq!(audit.damaged[0].chunk_sha256, hex(&hash2));
    assert!(audit.store.starts_with("s3://"), "{}", audit.store);
    pub_node.shutdown().await.expect("shutdown");
    con_node.shutdown().await.expect("shutdown");
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// An object store down at start-up: the node starts NOT_SERVING with the
/// reason, and turns SERVING once the store answers.
#[tokio::test]
async fn a_store_down_at_start_up_holds_readiness_until_it_returns() {
    let s3 = S3Server::start();
    let outage = Outage::start(s3.addr()).await;
    outage.down();
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    s3.give_credentials(&publisher, false);
    let node = start_on(&publisher, s3.storage(&outage.endpoint(), &unique("pub"))).await;
    let body = wait_ready(&node, 503).await;
    assert!(
        body.contains("the chunk store is unavailable")
            && body.contains(&format!("bucket `{}`", s3.bucket))
            && body.contains("unreachable"),
        "{body}"
    );
    // Publishing says why it cannot.
    let data = content(10_000, 5);
    let e = publish(&publisher, &node, header("Early", POLICY, 10_000), &data)
        .await
        .expect_err("the store is down");
    assert_eq!(e.code, Code::Unavailable, "{}", e.message);
    assert!(e.message.contains("unreachable"), "{}", e.message);
    outage.up(None);
    assert_eq!(wait_ready(&node, 200).await, "serving\n");
    publish(&publisher, &node, header("Later", POLICY, 10_000), &data)
        .await
        .expect("publish once the store is back");
    node.shutdown().await.expect("shutdown");
}

/// The store goes away in the middle of a fetch: the stream fails with a
/// clear error, the node turns NOT_SERVING, and once the store returns the
/// fetch resumes where it stopped.
#[tokio::test]
async fn a_store_gone_mid_fetch_fails_clearly_and_the_fetch_resumes() {
    let s3 = S3Server::start();
    let outage = Outage::start(s3.addr()).await;
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let auditor = space.node("regulator", "auditor");
    s3.give_credentials(&publisher, false);
    let pub_node = start_on(&publisher, s3.storage(&outage.endpoint(), &unique("pub"))).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let data = content(4 << 20, 9);
    let mut h = header("Traffic counts", POLICY, data.len() as u64);
    h.chunk_size = 128 << 10;
    let ds = publish(&publisher, &pub_node, h, &data)
        .await
        .expect("publish")
        .dataset_id;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    // The store goes down after about a third of the content came back
    // from it.
    outage.up(Some(1_400_000));
    let out = consumer.dir.root().join("traffic.bin");
    let e = fetch_into(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        out.to_str().expect("utf-8"),
        1,
    )
    .await
    .expect_err("the store went away");
    assert!(
        e.message
            .contains("the publisher's chunk store is unavailable; the transfer can resume later"),
        "{}",
        e.message
    );
    assert!(!outage.is_up());
    assert!(!out.exists());
    let body = wait_ready(&pub_node, 503).await;
    assert!(body.contains("unreachable"), "{body}");
    outage.up(None);
    wait_ready(&pub_node, 200).await;
    let run = fetch_into(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        out.to_str().expect("utf-8"),
        1,
    )
    .await
    .expect("the fetch resumes");
    assert!(run.done.resumed_chunks >= 5, "{:?}", run.done);
    assert_eq!(std::fs::read(&out).expect("output"), data);
    let q = Query {
        grant: Some(grant.clone()),
        ..Query::default()
    };
    let seen = kinds(&auditor, &pub_node, q).await;
    assert!(seen.contains(&EntryKind::TransferResumed), "{seen:?}");
    pub_node.shutdown().await.expect("shutdown");
    con_node.shutdown().await.expect("shutdown");
}

/// A publication cut off by the store going away records nothing, and
/// what it stored is removed once the store is back: the ledger never
/// claims a chunk the store does not hold.
#[tokio::test]
async fn a_publication_the_store_cut_off_records_nothing_and_leaves_nothing() {
    let s3 = S3Server::start();
    let bucket = s3.bucket();
    let outage = Outage::start(s3.addr()).await;
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let auditor = space.node("regulator", "auditor");
    let prefix = unique("pub");
    s3.give_credentials(&publisher, false);
    let node = start_on(&publisher, s3.storage(&outage.endpoint(), &prefix)).await;
    wait_ready(&node, 200).await;
    let kept = content(200_000, 2);
    let mut h = header("Kept", POLICY, kept.len() as u64);
    h.chunk_size = 50_000;
    publish(&publisher, &node, h, &kept).await.expect("publish");
    // The store goes down while a second publication stores its chunks
    // (the relay counts bytes coming back: responses to its puts).
    outage.up(Some(8_000));
    let cut = content(3 << 20, 4);
    let mut h = header("Cut off", POLICY, cut.len() as u64);
    h.chunk_size = 64 << 10;
    let e = publish(&publisher, &node, h, &cut)
        .await
        .expect_err("the store went away");
    assert_eq!(e.code, Code::Unavailable, "{}", e.message);
    let q = Query {
        kind: Some(EntryKind::DatasetPublished),
        ..Query::default()
    };
    assert_eq!(kinds(&auditor, &node, q).await.len(), 1, "only the first");
    // The cut publication did store chunks (seen past the relay).
    let left = keys_under(&bucket, &format!("{prefix}/sha256")).await.len();
    assert!(
        left > 4,
        "{left} chunk objects: the publication stored none"
    );
    outage.up(None);
    wait_ready(&node, 200).await;
    // Back: the sweep (at the store's next probe, every 10 s) leaves
    // exactly the first publication's 4 chunks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keys = keys_under(&bucket, &format!("{prefix}/sha256")).await;
        if keys.len() == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} chunk objects: {keys:?}",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    node.shutdown().await.expect("shutdown");
}

/// Credentials the store refuses: `serve --check-config` fails naming the
/// bucket, and a running node's publication fails the same way, recording
/// nothing.
#[tokio::test]
async fn refused_credentials_are_named_with_the_bucket() {
    let s3 = S3Server::start();
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let auditor = space.node("regulator", "auditor");
    let prefix = unique("pub");
    let Storage::S3(cfg) = s3.storage(&s3.endpoint, &prefix) else {
        unreachable!()
    };
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\n[storage]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nregion = \"{}\"\nallow_http = true\ncredentials_file = \"s3.credentials\"\n",
        cfg.endpoint, cfg.bucket, cfg.region
    );
    std::fs::write(publisher.dir.config(), toml).expect("node.toml");
    let check = |wrong: bool| {
        s3.give_credentials(&publisher, wrong);
        std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(["serve", "--check-config", "--data-dir"])
            .arg(publisher.dir.root())
            .output()
            .expect("run")
    };
    let good = check(false);
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(said.contains("is reachable and writable"), "{said}");
    let bad = check(true);
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "refused this node's credentials for bucket `{}`",
            s3.bucket
        )),
        "{said}"
    );

    let node = start_on(&publisher, s3.storage(&s3.endpoint, &prefix)).await;
    let body = wait_ready(&node, 503).await;
    assert!(body.contains("refused this node's credentials"), "{body}");
    let data = content(10_000, 6);
    let e = publish(&publisher, &node, header("Refused", POLICY, 10_000), &data)
        .await
        .expect_err("refused");
    assert_eq!(e.code, Code::PermissionDenied, "{}", e.message);
    assert!(
        e.message.contains(&format!("bucket `{}`", s3.bucket)),
        "{}",
        e.message
    );
    let q = Query {
        kind: Some(EntryKind::DatasetPublished),
        ..Query::default()
    };
    assert!(kinds(&auditor, &node, q).await.is_empty());
    node.shutdown().await.expect("shutdown");
}

/// The command line, against `dsnode serve` processes: `dsnode publish
/// s3://…` publishes an object where it is, `dsnode fetch --out s3://…`
/// puts what it received into a bucket, `dsnode audit storage` checks the
/// chunks.
#[tokio::test]
async fn the_cli_publishes_from_and_fetches_into_a_bucket() {
    let s3 = S3Server::start();
    let bucket = s3.bucket();
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let mut served = Vec::new();
    let mut addrs = Vec::new();
    for node in [&publisher, &consumer] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let Storage::S3(cfg) = s3.storage(&s3.endpoint, &unique("cli")) else {
            unreachable!()
        };
        std::fs::write(
            node.dir.config(),
            format!(
                "listen = \"127.0.0.1:{port}\"\n\n[storage]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"{}\"\nregion = \"{}\"\nallow_http = true\ncredentials_file = \"s3.credentials\"\n",
                cfg.endpoint, cfg.bucket, cfg.prefix, cfg.region
            ),
        )
        .expect("node.toml");
        s3.give_credentials(node, false);
        let s = support::Served::start_serving(node.dir.root());
        addrs.push(s.addr.to_string());
        served.push(s);
    }
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(args)
            .arg("--json")
            .env_remove("DSNODE_DATA_DIR")
            .output()
            .expect("run dsnode");
        assert!(
            out.status.success(),
            "dsnode {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let dir = |n: &NodeDir| n.dir.root().to_str().expect("utf-8").to_owned();
    let policy = publisher.dir.root().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");

    let source = format!("{}/trips.csv", unique("incoming"));
    let original = content(2_500_000, 11);
    bucket
        .put(&s3.url(&source).key, original.clone().into())
        .await
        .expect("put the source");
    let published = cli(&[
        "publish",
        "--data-dir",
        &dir(&publisher),
        &format!("s3://{}/{source}", s3.bucket),
        "--policy",
        policy.to_str().expect("utf-8"),
        "--title",
        "Trips",
    ]);
    assert_eq!(published["size"], original.len() as u64, "{published}");
    let dataset = published["dataset_id"].as_str().expect("id").to_owned();
    let asked = cli(&[
        "request",
        "--data-dir",
        &dir(&consumer),
        "--peer",
        &addrs[0],
        &dataset,
        "--purpose",
        "research",
    ]);
    let grant = asked["grant"]["grant_id"]
        .as_str()
        .expect("grant")
        .to_owned();
    let out_key = format!("{}/trips.csv", unique("inbox"));
    let out = format!("s3://{}/{out_key}", s3.bucket);
    let fetched = cli(&[
        "fetch",
        "--data-dir",
        &dir(&consumer),
        "--peer",
        &addrs[0],
        &grant,
        "--out",
        &out,
    ]);
    assert_eq!(fetched["out"], out.as_str(), "{fetched}");
    assert_eq!(fetched["bytes"], original.len() as u64);
    assert_eq!(
        object_bytes(&bucket, &out_key).await.expect("object"),
        original
    );
    let audit = cli(&["audit", "storage", "--data-dir", &dir(&publisher)]);
    assert_eq!(audit["chunks"], 3, "{audit}");
    assert_eq!(audit["damaged"], serde_json::json!([]));
    for s in served {
        s.terminate_cleanly();
    }
}

/// The start-up sweep removes chunk objects no dataset references (what a
/// crash mid-publication leaves) and nothing else: not the chunks of
/// published datasets, not other objects a person put under the prefix.
#[tokio::test]
async fn the_start_up_sweep_removes_only_unreferenced_chunks() {
    let s3 = S3Server::start();
    let bucket = s3.bucket();
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let prefix = unique("pub");
    s3.give_credentials(&publisher, false);
    let node = start_on(&publisher, s3.storage(&s3.endpoint, &prefix)).await;
    let data = content(300_000, 8);
    let mut h = header("Kept", POLICY, data.len() as u64);
    h.chunk_size = 100_000;
    let ds = publish(&publisher, &node, h, &data)
        .await
        .expect("publish")
        .dataset_id;
    node.shutdown().await.expect("shutdown");
    let published = keys_under(&bucket, &format!("{prefix}/sha256")).await;
    assert_eq!(published.len(), 3);
    // A crash left a chunk no dataset references; a person left files.
    let orphan = format!(
        "{prefix}/sha256/{}",
        hex(&dsnode::digest::sha256(b"orphan"))
    );
    let notes = format!("{prefix}/sha256/README.txt");
    let nested = format!(
        "{prefix}/sha256/old/{}",
        hex(&dsnode::digest::sha256(b"nested"))
    );
    for key in [&orphan, &notes, &nested] {
        bucket
            .put(&s3.url(key).key, bytes::Bytes::from_static(b"x"))
            .await
            .expect("put");
    }
    let node = start_on(&publisher, s3.storage(&s3.endpoint, &prefix)).await;
    let mut left = keys_under(&bucket, &format!("{prefix}/sha256")).await;
    left.sort();
    let mut expected: Vec<String> = published.clone();
    expected.extend([notes, nested]);
    expected.sort();
    assert_eq!(left, expected, "only the orphaned chunk goes");
    let audit = admin(&publisher, &node)
        .await
        .audit_storage()
        .await
        .expect("audit");
    assert!(audit.damaged.is_empty(), "{ds}: {:?}", audit.damaged);
    node.shutdown().await.expect("shutdown");
}
