//! A data space made at test time: a CA, nodes with real data dirs and
//! certificates, started on 127.0.0.1:0 with real mutual TLS.
//!
//! - `mod.rs`: the data space and its nodes, started in this process or
//!   as `dsnode serve` processes; connections to them (mutual TLS, a
//!   cutting relay, hand-built TLS for attacks, plain HTTP to the metrics
//!   listener).
//! - [`flows`]: publishing, asking for access and fetching, as the tests
//!   share them.
//! - [`tamper`]: editing a stopped node's store behind its back.
//! - [`browser`]: headless Chromium through chromedriver.
//! - [`s3`]: a real S3 server (s3s-fs, or the one the environment names)
//!   and a relay that takes it down and up.

pub(crate) mod browser;
pub(crate) mod flows;
pub(crate) mod s3;
pub(crate) mod tamper;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dsnode::fsutil;
use dsnode::identity::ca::{CaDir, CertificateAuthority, IssueRequest};
use dsnode::identity::cert::Host;
use dsnode::identity::{PeerIdentity, RoleSet};
use dsnode::node::{self, RunningNode};
use dsnode::runtime::config::{Config, DataDir, TransportConfig};
use dsnode::runtime::tls;
use dsnode::wire::client::{self, ClientSettings, PeerChannel};
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use time::OffsetDateTime;

/// A CA in a temporary directory, and the nodes it certified.
pub(crate) struct DataSpace {
    pub(crate) dir: TempDir,
    pub(crate) ca: CaDir,
}

/// A node's data dir and what its certificate attests.
pub(crate) struct NodeDir {
    pub(crate) dir: DataDir,
    pub(crate) identity: PeerIdentity,
}

impl DataSpace {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        CertificateAuthority::init(&ca_dir, "Test Data Space CA").expect("ca init");
        let ca = CaDir::open(&ca_dir).expect("ca open");
        Self { dir, ca }
    }

    /// A node `name` with `roles`, certified by this CA, with the CA's CRL.
    pub(crate) fn node(&self, name: &str, roles: &str) -> NodeDir {
        self.node_with(
            name,
            IssueRequest::new(RoleSet::parse_list(roles).expect("roles")),
        )
    }

    /// A node certified with a custom issue request (validity, region, …).
    pub(crate) fn node_with(&self, name: &str, req: IssueRequest) -> NodeDir {
        self.node_issued_by(name, req, self.ca.ca())
    }

    /// A node whose certificate comes from `issuer` (possibly another CA);
    /// it still trusts this data space's CA and CRL.
    pub(crate) fn node_issued_by(
        &self,
        name: &str,
        req: IssueRequest,
        issuer: &CertificateAuthority,
    ) -> NodeDir {
        let dir = DataDir::new(self.dir.path().join(name));
        node::init_data_dir(
            &dir,
            &name.parse().expect("participant"),
            self.ca.ca().cert_pem().as_bytes(),
            ("127.0.0.1:0".parse().expect("addr"), None),
            vec![Host::Ip("127.0.0.1".parse().expect("ip"))],
        )
        .expect("init");
        let csr = std::fs::read_to_string(dir.csr()).expect("csr");
        let issued = issuer.issue(&csr, &req).expect("issue");
        fsutil::write_atomic(&dir.cert(), issued.pem.as_bytes(), fsutil::PUBLIC_MODE)
            .expect("cert");
        self.publish_crl(&dir);
        NodeDir {
            dir,
            identity: issued.identity,
        }
    }

    /// Copies the CA's current CRL into a node's data dir.
    pub(crate) fn publish_crl(&self, dir: &DataDir) {
        let crl = std::fs::read(self.ca.crl_path()).expect("crl");
        fsutil::write_atomic(&dir.crl(), &crl, fsutil::PUBLIC_MODE).expect("write crl");
    }

    /// Revokes a node's certificate (new CRL in the CA dir only).
    pub(crate) fn revoke(&self, node: &NodeDir) {
        let pem = std::fs::read(node.dir.cert()).expect("cert");
        self.ca.revoke(&pem, "node.crt").expect("revoke");
    }
}

/// An expired validity window: yesterday's.
pub(crate) fn expired(roles: &str) -> IssueRequest {
    let now = OffsetDateTime::now_utc();
    let mut req = IssueRequest::new(RoleSet::parse_list(roles).expect("roles"));
    req.not_before = Some(now - Duration::from_secs(2 * 86_400));
    req.not_after = Some(now - Duration::from_secs(86_400));
    req
}

/// A consumer `name` in `region`, certified by the space's CA.
pub(crate) fn consumer_in(space: &DataSpace, name: &str, region: &str) -> NodeDir {
    let mut req = IssueRequest::new(RoleSet::parse_list("consumer").expect("roles"));
    req.region = Some(region.parse().expect("region"));
    space.node_with(name, req)
}

/// A data space with a publisher and a consumer, both started.
pub(crate) struct TwoNodes {
    /// The CA (and the directory every node lives in).
    pub(crate) space: DataSpace,
    /// city-transport, a publisher.
    pub(crate) publisher: NodeDir,
    /// acme, a consumer in region CN-HE (which the test policy allows).
    pub(crate) consumer: NodeDir,
    /// The publisher, running.
    pub(crate) publisher_node: RunningNode,
    /// The consumer, running.
    pub(crate) consumer_node: RunningNode,
}

/// A data space with a publisher (city-transport) and a consumer (acme,
/// region CN-HE), both started.
pub(crate) async fn two_nodes() -> TwoNodes {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let publisher_node = start(&publisher, |_| {}).await;
    let consumer_node = start(&consumer, |_| {}).await;
    TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node,
        consumer_node,
    }
}

/// Starts a node on 127.0.0.1:0 with short test-friendly timings.
pub(crate) async fn start(node: &NodeDir, tweak: impl FnOnce(&mut TransportConfig)) -> RunningNode {
    start_with(node, |c| tweak(&mut c.transport)).await
}

/// Fills the (stopped) node's ledger with `n` entries, appended in
/// concurrent bursts so that the log has checkpoints of many sizes.
pub(crate) async fn fill_ledger(node: &NodeDir, n: u64) {
    let key = dsnode::identity::key::NodeKey::load(&node.dir.key()).expect("node key");
    let ledger = tamper::open_ledger(&node.dir.ledger(), &key);
    let mut done = 0;
    while done < n {
        let burst = (n - done).min(97);
        let appends: Vec<_> = (0..burst)
            .map(|i| {
                let ledger = ledger.clone();
                let mut d = dsnode::ledger::entry::EntryDraft::new(
                    dsnode::ledger::entry::EntryKind::DatasetPublished,
                );
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

/// Starts a node with a changed configuration (an injected clock, …).
pub(crate) async fn start_with(node: &NodeDir, tweak: impl FnOnce(&mut Config)) -> RunningNode {
    let mut config = Config::new(node.dir.root(), "127.0.0.1:0".parse().expect("addr"));
    config.transport.crl_reload_interval = Duration::from_millis(100);
    config.transport.drain_deadline = Duration::from_secs(2);
    config.transport.handshake_timeout = Duration::from_secs(5);
    tweak(&mut config);
    node::start(config).await.expect("node starts")
}

/// A `dsnode serve` process, serving; its log lines arrive on a
/// channel.
pub(crate) struct Served {
    pub(crate) child: std::process::Child,
    /// The address it serves on (from its `serving` log event).
    pub(crate) addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// Starts `dsnode serve` on `data_dir` with JSON logs and waits until
    /// it serves.
    pub(crate) fn start_serving(data_dir: &Path) -> Self {
        Self::start_logging(data_dir, "json")
    }

    /// Starts `dsnode serve` on `data_dir` with logs in `format` (`json`
    /// or `human`) and waits until it serves.
    pub(crate) fn start_logging(data_dir: &Path, format: &str) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_dsnode"))
            .args(["--log-format", format, "serve", "--data-dir"])
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Made before it serves, so that a panic while waiting still
        // kills the process (on drop).
        let mut served = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
        };
        let addr = if format == "json" {
            served.wait_for("serving")["fields"]["addr"]
                .as_str()
                .expect("addr")
                .to_owned()
        } else {
            let line = served.wait_for_line(|l| l.contains(" serving "));
            let (_, rest) = line.split_once("addr=").expect("addr");
            rest.split_whitespace().next().expect("addr").to_owned()
        };
        served.addr = addr.parse().expect("addr");
        served
    }

    /// Waits for a log line `want` accepts, and returns it as written.
    pub(crate) fn wait_for_line(&self, mut want: impl FnMut(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no such log line"));
            if want(&line) {
                return line;
            }
        }
    }

    /// Waits for a log event whose message is `message` (JSON logs).
    pub(crate) fn wait_for(&self, message: &str) -> serde_json::Value {
        let line = self.wait_for_line(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
            value["fields"]["message"] == message
        });
        serde_json::from_str(&line).expect("JSON")
    }

    /// Sends SIGTERM and waits for the process to exit 0; on anything
    /// else, fails showing the exit status and the log it wrote.
    pub(crate) fn terminate_cleanly(mut self) {
        self.signal("TERM");
        let status = self.child.wait().expect("exit");
        if !status.success() {
            let log: Vec<String> = self.lines.try_iter().collect();
            panic!(
                "dsnode serve ended with {status} after SIGTERM; its log:\n{}",
                log.join("\n")
            );
        }
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
pub(crate) struct HttpAnswer {
    /// Its status code.
    pub(crate) status: u16,
    /// Its body.
    pub(crate) body: String,
}

/// `method path` over plain HTTP/1.1 (a node's metrics listener): the
/// status code and body.
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    HttpAnswer {
        status,
        body: body.to_owned(),
    }
}

/// A raw HTTP/1.1 request (`head` and `body` as given, e.g. a
/// `Connection: close` request): status, head and body bytes.
pub(crate) fn raw_http(addr: &str, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
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
    (status, head, raw[at + 4..].to_vec())
}

/// A TCP relay to a node that cuts its first `cuts` connections once
/// `after` bytes have gone from the node to the client: a connection
/// dropped mid-stream, below TLS (the client sees the TCP stream end).
pub(crate) struct CutProxy {
    pub(crate) addr: std::net::SocketAddr,
    cuts_made: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub(crate) async fn start(target: std::net::SocketAddr, after: u64, cuts: usize) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cuts_made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let made = cuts_made.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = made
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < cuts).then_some(n + 1)
                    })
                    .is_ok();
                tokio::spawn(relay(client, target, cut.then_some(after)));
            }
        });
        Self {
            addr,
            cuts_made,
            task,
        }
    }

    /// Connections cut so far.
    pub(crate) fn cuts_made(&self) -> usize {
        self.cuts_made.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: tokio::net::TcpStream, target: std::net::SocketAddr, cut: Option<u64>) {
    use tokio::io::AsyncReadExt;
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let mut limited = server_read.take(cut.unwrap_or(u64::MAX));
    let down = tokio::io::copy(&mut limited, &mut client_write);
    // Whichever direction ends first (or the cut) closes both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The TLS material of a node's data dir.
pub(crate) fn material(node: &NodeDir) -> tls::TlsMaterial {
    node::load_credentials(&node.dir)
        .expect("credentials")
        .material
}

/// Connects to `server` as `as_node`.
pub(crate) async fn connect(as_node: &NodeDir, server: &RunningNode) -> PeerChannel {
    try_connect(as_node, server).await.expect("connect")
}

/// Connects to the node at `addr` (a node in another process) as `as_node`.
pub(crate) async fn connect_addr(as_node: &NodeDir, addr: std::net::SocketAddr) -> PeerChannel {
    let config = tls::client_config(&material(as_node)).expect("client config");
    client::connect(config, &addr.to_string(), ClientSettings::default())
        .await
        .expect("connect")
}

pub(crate) async fn try_connect(
    as_node: &NodeDir,
    server: &RunningNode,
) -> Result<PeerChannel, client::ConnectError> {
    let config = tls::client_config(&material(as_node)).expect("client config");
    client::connect(
        config,
        &server.local_addr().to_string(),
        ClientSettings::default(),
    )
    .await
}

/// What a raw TLS client got from the server after sending the HTTP/2
/// preface: `Ok` once the server sent application data (its HTTP/2
/// SETTINGS), `Err(reason)` if the handshake or the first read failed.
/// Runs on a blocking thread with real sockets.
pub(crate) fn raw_tls_attempt(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Result<(), String> {
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(0) => Err("connection closed without data".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A client config like a node's, but built by hand for attack tests.
pub(crate) fn client_config_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca_pem: &Path,
    client_cert: Option<&NodeDir>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca_pem).expect("ca pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(node) => {
            // Read the files directly: these certificates may be expired or
            // foreign, which `load_credentials` would (rightly) refuse.
            let key = dsnode::identity::P256Key::load(&node.dir.tls_key()).expect("tls key");
            let cert =
                rustls_pki_types::CertificateDer::from_pem_file(node.dir.cert()).expect("cert");
            builder
                .with_client_auth_cert(vec![cert], key.tls_private_key())
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}
