//! The ledger in the transparency-log ecosystem (C2SP tlog-tiles,
//! tlog-witness, tlog-proof), checked by code no one here wrote: the PyPI
//! packages aics-tlog (a tiles reader and verifier) and aics-witness (a
//! witness), in the interop virtualenv.

use std::path::Path;
use std::process::Command;

use dsnode::audit::Auditor;
use dsnode::node::RunningNode;

use crate::support::{self, DataSpace, NodeDir};

/// `method path` over plain HTTP/1.1: status, head and body bytes.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> Answer {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n");
    let (status, head, body) =
        tokio::task::spawn_blocking(move || support::raw_http(&addr.to_string(), &head, b""))
            .await
            .expect("request");
    Answer { status, head, body }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Entries the node's ledger holds before it starts.
const ENTRIES: u64 = 3000;

async fn tiles_node(space: &DataSpace) -> (NodeDir, RunningNode) {
    let node = space.node("transport", "publisher");
    support::fill_ledger(&node, ENTRIES).await;
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
        dsnode::tiles::tile_path(7, u64::MAX, 256),
        dsnode::tiles::tile_path(7, u64::MAX, 255),
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

/// An aics-witness process on loopback, trusting the node's log.
struct AicsWitness {
    child: std::process::Child,
    url: String,
    vkey: String,
    _dir: tempfile::TempDir,
}

impl Drop for AicsWitness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AicsWitness {
    fn start(log_origin: &str, log_vkey: &str) -> AicsWitness {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("witness.json");
        let python = crate::interop::python();
        let witness = |args: &[&str]| {
            let mut c = Command::new(&python);
            c.args(["-m", "aics_witness"])
                .args(args)
                .arg("--config")
                .arg(&config)
                .env("WITNESS_SEED_HEX", "11".repeat(32));
            c
        };
        let init = witness(&[
            "init",
            "--name",
            "witness.test/w1",
            "--listen",
            "127.0.0.1:0",
            "--new-database",
        ])
        .output()
        .expect("aics-witness init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let vkey = String::from_utf8_lossy(&init.stdout)
            .lines()
            .find(|l| l.starts_with("witness.test/w1+"))
            .expect("the witness's vkey")
            .trim()
            .to_owned();
        let add = witness(&["add-log", "--origin", log_origin, "--vkey", log_vkey])
            .output()
            .expect("aics-witness add-log");
        assert!(
            add.status.success(),
            "{}",
            String::from_utf8_lossy(&add.stderr)
        );
        let mut child = witness(&["serve", "--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("aics-witness serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("http://127.0.0.1:"))
                    .map(str::to_owned)
            })
            .expect("aics-witness listening");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        AicsWitness {
            child,
            url,
            vkey,
            _dir: dir,
        }
    }
}

/// Waits for the node to keep a cosignature of at least `size` from the
/// external witness; the kept note.
async fn cosigned_at_least(
    node: &NodeDir,
    witness: &dsnode::witness::external::ExternalWitness,
    size: u64,
) -> String {
    let path = node
        .dir
        .root()
        .join("witness")
        .join("cosigned")
        .join("external")
        .join(format!("{}.note", witness.file_stem()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(note) = std::fs::read_to_string(&path) {
            let kept: u64 = note
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if kept >= size {
                return note;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cosignature of size {size} at {}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_witness_cosigns_the_nodes_checkpoints() {
    let space = DataSpace::new();
    let node = space.node("transport", "publisher");
    support::fill_ledger(&node, ENTRIES).await;
    let log_vkey = vkey(&node);
    let origin = log_vkey.split('+').next().expect("origin").to_owned();
    let witness = AicsWitness::start(&origin, &log_vkey);
    let external = dsnode::witness::external::ExternalWitness::parse(&witness.url, &witness.vkey)
        .expect("the witness's vkey");
    let with_witness = |c: &mut dsnode::runtime::config::Config| {
        c.witness.external = vec![external.clone()];
        c.witness.external_interval = std::time::Duration::from_millis(100);
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    };
    let running = support::start_with(&node, with_witness).await;
    let first = cosigned_at_least(&node, &external, ENTRIES + 1).await;
    // The witness's cosignature verifies with dsnode's own verifier, over
    // a checkpoint the log signed.
    let t = dsnode::witness::cosig::verify_named(
        first.as_bytes(),
        &external.name,
        &external.public_key,
    )
    .expect("the aics-witness cosignature verifies");
    println!("aics-witness cosigned:\n{first}(cosignature time {t})");
    // GetCheckpoint serves it to auditors.
    let regulator = space.node("regulator", "auditor");
    let mut auditor = Auditor::new(Box::new(support::connect(&regulator, &running).await));
    let answer = auditor.checkpoint_answer().await.expect("checkpoint");
    assert!(
        answer
            .cosigned_checkpoints
            .iter()
            .any(|n| String::from_utf8_lossy(n).contains("\u{2014} witness.test/w1 ")),
        "served with the checkpoint"
    );
    // A replay of an old submission: the witness answers 409 with its size.
    let size: u64 = first
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("size");
    let body = dsnode::witness::external::request_body(
        &first
            .lines()
            .take_while(|l| !l.starts_with("\u{2014} witness.test/w1"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        0,
        &[],
    );
    let replay = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
            "--data-binary",
            &body,
        ])
        .arg(format!("{}/add-checkpoint", witness.url))
        .output()
        .expect("curl");
    let replay = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(replay.starts_with("409 text/x.tlog.size"), "{replay}");
    running.shutdown().await.expect("shutdown");

    // The node forgets what the witness saw (its kept note is removed)
    // and grows: the witness answers 409 with its size, and the node
    // resends from it with a consistency proof.
    let backup = tempfile::tempdir().expect("backup");
    support::tamper::copy_dir(&node.dir.ledger(), backup.path());
    std::fs::remove_file(
        node.dir
            .root()
            .join("witness/cosigned/external")
            .join(format!("{}.note", external.file_stem())),
    )
    .expect("remove");
    support::fill_ledger(&node, 25).await;
    let running = support::start_with(&node, with_witness).await;
    let second = cosigned_at_least(&node, &external, size + 25).await;
    assert!(second.contains("\u{2014} witness.test/w1 "));
    // It got there through the witness's 409 and a resend.
    let text = support::http(running.metrics_addr().expect("metrics"), "GET", "/metrics")
        .await
        .body;
    assert!(
        text.contains("dsnode_witness_exchanges_total{kind=\"external_cosigned_after_409\"} 1"),
        "{text}"
    );
    running.shutdown().await.expect("shutdown");

    // The store put back to before the witness's latest cosignature:
    // refused at start-up, naming the witness.
    std::fs::remove_dir_all(node.dir.ledger()).expect("remove ledger");
    support::tamper::copy_dir(backup.path(), &node.dir.ledger());
    let mut config =
        dsnode::runtime::config::Config::new(node.dir.root(), "127.0.0.1:0".parse().expect("addr"));
    with_witness(&mut config);
    let refused = dsnode::node::start(config).await;
    let err = refused
        .err()
        .expect("a store behind a witnessed checkpoint is refused")
        .to_string();
    assert!(
        err.contains("witness.test_w1") || err.contains("witness.test/w1"),
        "{err}"
    );
}

/// A fake witness that misbehaves in one way.
async fn bad_witness(mode: &'static str) -> (String, dsnode::witness::external::ExternalWitness) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let pk = key.verifying_key().to_bytes();
    let name = format!("bad.example/{mode}");
    let mut typed = vec![0x04];
    typed.extend_from_slice(&pk);
    let vkey = format!(
        "{name}+{}+{}",
        data_encoding::HEXLOWER.encode(&dsnode::witness::cosig::cosignature_key_id(&name, &pk)),
        data_encoding::BASE64.encode(&typed)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    // A real cosignature, over another checkpoint.
    let forged = {
        let other = "dsnode/other\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let msg = format!("cosignature/v1\ntime 1\n{other}");
        let sig = ed25519_dalek::Signer::sign(&key, msg.as_bytes());
        let mut blob = dsnode::witness::cosig::cosignature_key_id(&name, &pk).to_vec();
        blob.extend_from_slice(&1u64.to_be_bytes());
        blob.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {name} {}\n", data_encoding::BASE64.encode(&blob))
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let forged = forged.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut buf))
                        .await;
                let body: Vec<u8> = match mode {
                    "hang" => {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                    "garbage" => b"\xff\xfe not a cosignature".to_vec(),
                    "forged" => forged.into_bytes(),
                    _ => vec![b'x'; 200 << 10],
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    let w = dsnode::witness::external::ExternalWitness::parse(&url, &vkey).expect("vkey");
    (mode.to_owned(), w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_that_answer_garbage_hang_or_forge_are_counted_and_never_kept() {
    let space = DataSpace::new();
    let node = space.node("transport", "publisher");
    support::fill_ledger(&node, 10).await;
    let mut witnesses = Vec::new();
    for mode in ["garbage", "forged", "huge", "hang"] {
        witnesses.push(bad_witness(mode).await.1);
    }
    let running = support::start_with(&node, |c| {
        c.witness.external = witnesses.clone();
        c.witness.external_interval = std::time::Duration::from_millis(100);
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let metrics = running.metrics_addr().expect("metrics");
    let count = |text: &str, kind: &str| -> f64 {
        let needle = format!("dsnode_witness_exchanges_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = support::http(metrics, "GET", "/metrics").await.body;
        // The hanging one holds nothing up: the other three are counted.
        if count(&text, "external_refused") >= 2.0 && count(&text, "external_failed") >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The node still serves, and kept no cosignature.
    assert_eq!(support::http(metrics, "GET", "/readyz").await.status, 200);
    let kept = std::fs::read_dir(node.dir.root().join("witness/cosigned/external"))
        .expect("dir")
        .count();
    assert_eq!(kept, 0);
    running.shutdown().await.expect("shutdown");
}
