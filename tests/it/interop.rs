//! Interoperability with code no one here wrote: a Python client
//! (`tests/interop/client.py`: grpcio and its own TLS, stubs generated
//! from `proto/` at run time, securesystemslib's DSSE, `cryptography`'s
//! X.509 and Ed25519) against real nodes, and curl and openssl on a node's
//! port and keys. The Python environment is a virtualenv the test makes
//! once (or `$DSNODE_INTEROP_PYTHON`); without python3, venv or pip the
//! test fails, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::support::{self, flows};

/// What the client imports.
/// The independent implementations the interop tests run: a gRPC stack,
/// DSSE and X.509, and two C2SP transparency-log packages (a tiles reader
/// and a witness; both declare Python 3.12 and run on 3.11, hence
/// `--ignore-requires-python`).
const PACKAGES: [&str; 6] = [
    "grpcio",
    "grpcio-tools",
    "securesystemslib",
    "cryptography",
    "aics-tlog==0.2.1",
    "aics-witness==0.1.0",
];
const IMPORTS: &str = "import grpc, grpc_tools.protoc, securesystemslib.dsse, cryptography.x509, aics_tlog, aics_witness";

/// Runs `cmd`, killing it after `limit`: its output, or a panic saying
/// what did not finish or could not start.
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // Ours: the child we spawned, by its id.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what}: did not finish within {limit:?} (killed)");
        }
    }
}

fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Python to run the client with: `$DSNODE_INTEROP_PYTHON`, or the
/// virtualenv `<target dir>/interop-venv`, made when it is missing or
/// lacks the packages.
pub(crate) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DSNODE_INTEROP_PYTHON") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).expect("target dir");
    let venv = target.join("interop-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        python.exists()
            && Command::new(python)
                .args(["-c", IMPORTS])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    // Made under a name of this process's own, then renamed into place:
    // test processes running at once never share a half-made venv (a
    // venv runs from where it is moved to: `python -m pip`, no scripts).
    let started = Instant::now();
    let staging = target.join(format!("interop-venv.tmp-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).expect("remove a stale staging venv");
    }
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&staging);
    let out = run_bounded(
        create,
        Duration::from_secs(120),
        "the interop tests need python3 (with venv and pip) on PATH: python3 -m venv",
    );
    assert!(
        out.status.success(),
        "the interop tests need python3 with the venv module and pip \
         (e.g. apt-get install python3-venv): python3 -m venv failed: {}",
        show(&out)
    );
    let mut pip = Command::new(staging.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--ignore-requires-python",
    ])
    .args(PACKAGES);
    let out = run_bounded(
        pip,
        Duration::from_secs(180),
        "pip install of the interop test packages (needs network to PyPI once)",
    );
    assert!(
        out.status.success(),
        "pip install {PACKAGES:?} into {} failed (the interop tests need pip and \
         network to PyPI on their first run): {}",
        staging.display(),
        show(&out)
    );
    if std::fs::rename(&staging, &venv).is_err() {
        if ready(&python) {
            // Another test process put its venv in place first: use that.
            std::fs::remove_dir_all(&staging).expect("remove the staging venv");
        } else {
            // An unusable venv from an interrupted older run: replace it.
            std::fs::remove_dir_all(&venv).expect("remove the unusable venv");
            std::fs::rename(&staging, &venv).expect("move the venv into place");
        }
    }
    assert!(
        ready(&python),
        "{} cannot import: {IMPORTS}",
        venv.display()
    );
    eprintln!(
        "interop: made {} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    python
}

/// A dataset of a few chunks: 3 MiB and a bit, in 1 MiB chunks (4 chunks).
fn content() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 777u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn a_python_client_verifies_catalog_manifest_access_fetch_and_ledger() {
    let python = tokio::task::spawn_blocking(python).await.expect("python");
    let nodes = support::two_nodes().await;
    let auditor = nodes.space.node("regulator", "auditor");
    let data = content();
    let mut header = flows::header("Interop sensors", flows::POLICY, data.len() as u64);
    header.chunk_size = 1024 * 1024;
    flows::publish(&nodes.publisher, &nodes.publisher_node, header, &data)
        .await
        .expect("publish");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(python);
    cmd.arg(root.join("tests/interop/client.py"))
        .arg("--addr")
        .arg(nodes.publisher_node.local_addr().to_string())
        .arg("--proto")
        .arg(root.join("proto"))
        .arg("--ca")
        .arg(nodes.consumer.dir.ca_cert())
        .arg("--cert")
        .arg(nodes.consumer.dir.cert())
        .arg("--key")
        .arg(nodes.consumer.dir.tls_key())
        .arg("--auditor-cert")
        .arg(auditor.dir.cert())
        .arg("--auditor-key")
        .arg(auditor.dir.tls_key())
        .arg("--publisher-cert")
        .arg(nodes.publisher.dir.cert())
        .arg("--publisher-key-hex")
        .arg(to_hex(nodes.publisher.identity.public_key))
        .args(["--title", "Interop sensors"])
        .args(["--purpose", "research", "--denied-purpose", "marketing"]);
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(cmd, Duration::from_secs(60), "the Python interop client")
    })
    .await
    .expect("client");
    println!("{}", show(&out));
    assert!(
        out.status.success(),
        "the Python client failed: {}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in [
        "ok catalog: ",
        "ok manifest signature (securesystemslib): ",
        "ok access granted: ",
        "ok access refused: PERMISSION_DENIED: ",
        &format!("ok fetched {} bytes, 4 chunks verified", data.len()),
        "ok checkpoint size ",
        "ok inclusion of entry 1 in size ",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(step)),
            "no line starting {step:?} in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn curl_checks_health_over_mtls_and_openssl_reads_the_keys() {
    let space = support::DataSpace::new();
    let node = space.node("city-transport", "publisher");
    let running = support::start(&node, |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let request = dir.path().join("request");
    // A gRPC message: uncompressed, length 0 (an empty HealthCheckRequest).
    std::fs::write(&request, [0u8; 5]).expect("request");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let url = format!(
        "https://{}/grpc.health.v1.Health/Check",
        running.local_addr()
    );
    let mut curl = Command::new("curl");
    curl.args(["--silent", "--show-error", "--http2", "--max-time", "30"])
        .arg("--cacert")
        .arg(node.dir.ca_cert())
        .arg("--cert")
        .arg(node.dir.cert())
        .arg("--key")
        .arg(node.dir.tls_key())
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", request.display()))
        .arg("--dump-header")
        .arg(&headers)
        .arg("--output")
        .arg(&body)
        .arg(&url);
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(curl, Duration::from_secs(60), "curl (needs curl on PATH)")
    })
    .await
    .expect("curl");
    assert!(out.status.success(), "curl failed: {}", show(&out));
    let headers = std::fs::read_to_string(&headers).expect("headers");
    let body = std::fs::read(&body).expect("body");
    println!(
        "curl headers and trailers:\n{headers}body: {}",
        to_hex(&body)
    );
    assert!(headers.starts_with("HTTP/2 200"), "{headers}");
    assert!(
        headers.lines().any(|l| l.trim() == "grpc-status: 0"),
        "{headers}"
    );
    // Uncompressed, length 2, HealthCheckResponse { status: SERVING (1) }.
    assert_eq!(to_hex(&body), "00000000020801");

    for key in [node.dir.key(), node.dir.tls_key()] {
        let mut openssl = Command::new("openssl");
        openssl.args(["pkey", "-noout", "-in"]).arg(&key);
        let out = run_bounded(
            openssl,
            Duration::from_secs(30),
            "openssl (needs it on PATH)",
        );
        assert!(
            out.status.success(),
            "openssl pkey -in {} -noout: {}",
            key.display(),
            show(&out)
        );
        println!("openssl pkey -in {} -noout: {}", key.display(), out.status);
    }
}
