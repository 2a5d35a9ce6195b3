//! A data space made at test time: a CA, nodes with real data dirs and
//! certificates, started on 127.0.0.1:0 with real mutual TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
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

/// A data space with a publisher (city-transport) and a consumer (acme,
/// region CN-HE), both started: the space, their dirs, their nodes.
pub(crate) async fn two_nodes() -> (DataSpace, NodeDir, NodeDir, RunningNode, RunningNode) {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = crate::datasets::consumer_in(&space, "acme", "CN-HE");
    let pub_node = start(&publisher, |_| {}).await;
    let con_node = start(&consumer, |_| {}).await;
    (space, publisher, consumer, pub_node, con_node)
}

/// Starts a node on 127.0.0.1:0 with short test-friendly timings.
pub(crate) async fn start(node: &NodeDir, tweak: impl FnOnce(&mut TransportConfig)) -> RunningNode {
    start_with(node, |c| tweak(&mut c.transport)).await
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
            let key = dsnode::identity::NodeKey::load(&node.dir.key()).expect("key");
            let cert =
                rustls_pki_types::CertificateDer::from_pem_file(node.dir.cert()).expect("cert");
            builder
                .with_client_auth_cert(vec![cert], key.tls_private_key().expect("key der"))
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Rewrites entry `index` of the (closed) ledger in `dir` behind the
/// ledger's back, as an attacker with write access to the store would:
/// `change` edits the entry; with `fix_leaf` the block's stored leaf hash
/// is recomputed too, so only the deeper checks can catch it.
pub(crate) fn rewrite_entry(
    dir: &Path,
    index: u64,
    fix_leaf: bool,
    change: impl FnOnce(&mut dsnode::ledger::entry::Entry),
) {
    use dsnode::ledger::entry::Entry;
    edit_block(dir, index, |block, k| {
        let mut entry = Entry::decode(&block.entries[k]).expect("entry");
        change(&mut entry);
        block.entries[k] = entry.encode().expect("encode");
        if fix_leaf {
            block.leaves[k] = dsnode::ledger::merkle::leaf_hash(&block.entries[k]);
        }
    });
}

/// Edits, behind the ledger's back, the stored block holding entry
/// `index` of the (closed) ledger in `dir`; `edit` gets the block and the
/// entry's offset in it.
fn edit_block(dir: &Path, index: u64, edit: impl FnOnce(&mut dsnode::ledger::store::Block, usize)) {
    use dsnode::ledger::store::{BLOCK_BITS, LedgerStore, SledStore, StoreError};
    // sled releases its lock from a background thread after the last
    // handle is dropped: wait for it.
    let store = (0..200)
        .find_map(|_| match SledStore::open(dir) {
            Ok(s) => Some(s),
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            Err(e) => panic!("raw store: {e}"),
        })
        .expect("the store stays locked");
    let b = index >> BLOCK_BITS;
    let mut block = store.block(b).expect("read").expect("block");
    edit(&mut block, (index - (b << BLOCK_BITS)) as usize);
    let (entries_key, leaves_key) = SledStore::block_keys(b);
    store
        .dangerous_overwrite(&entries_key, &block.encode_entries())
        .expect("overwrite");
    store
        .dangerous_overwrite(&leaves_key, &block.encode_leaves())
        .expect("overwrite");
}

/// Deletes entry `index` from its block of the (closed) ledger in `dir`,
/// as an attacker with write access to the store would: the entries after
/// it in the block move up one place.
pub(crate) fn delete_entry(dir: &Path, index: u64) {
    edit_block(dir, index, |block, k| {
        block.entries.remove(k);
        block.leaves.remove(k);
    });
}

/// The one receipt `consumer` kept for `grant` (`GRANT.TRANSFER.receipt.json`).
pub(crate) fn receipt_file(consumer: &NodeDir, grant: &str) -> std::path::PathBuf {
    let dir = consumer.dir.grants().join("received");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .expect("received dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{grant}.")) && n.ends_with(".receipt.json"))
        .collect();
    assert_eq!(found.len(), 1, "receipts kept: {found:?}");
    found.pop().expect("one").into()
}

/// Opens a closed node's ledger (retrying while sled still holds the lock
/// of the handle just closed).
pub(crate) fn open_ledger(dir: &Path, key: &dsnode::identity::NodeKey) -> dsnode::ledger::Ledger {
    use dsnode::ledger::{Ledger, LedgerError, LedgerOptions};
    for _ in 0..200 {
        match Ledger::open(dir, key.signing_key().clone(), LedgerOptions::default()) {
            Ok((ledger, _)) => return ledger,
            Err(LedgerError::Store(dsnode::ledger::store::StoreError::Locked { .. })) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
    panic!("{} stays locked", dir.display());
}

/// The size of a stopped node's ledger.
pub(crate) async fn ledger_size(dir: &DataDir) -> u64 {
    let key = dsnode::identity::NodeKey::load(&dir.key()).expect("key");
    let ledger = open_ledger(&dir.ledger(), &key);
    let size = ledger.latest().map_or(0, |c| c.checkpoint.size);
    ledger.close().await;
    size
}

/// The test-only history hook: rewrites a stopped node's ledger keeping
/// the entries `keep` accepts (re-appended one by one, so every size has a
/// checkpoint), then other entries up to `size` entries, every checkpoint
/// signed with the node's own key: a node signing a second history (a
/// fork), or one that dropped an entry. Its record of witnesses'
/// cosignatures goes too, as a node hiding that would do.
pub(crate) async fn rewrite_history(
    dir: &DataDir,
    keep: impl Fn(&dsnode::ledger::entry::Entry) -> bool,
    size: u64,
) {
    use dsnode::ledger::entry::{Entry, EntryDraft, EntryKind};
    let key = dsnode::identity::NodeKey::load(&dir.key()).expect("key");
    let old = open_ledger(&dir.ledger(), &key);
    let all = old.entries(0, 1000).expect("entries");
    old.close().await;
    drop(old);
    let rewritten_dir = dir.root().join("ledger.rewritten");
    let rewritten = open_ledger(&rewritten_dir, &key);
    let mut n = 0;
    for (_, bytes) in all {
        let entry = Entry::decode(&bytes).expect("entry");
        if keep(&entry) {
            rewritten.append(entry.draft).await.expect("replay");
            n += 1;
        }
    }
    while n < size {
        let mut draft = EntryDraft::new(EntryKind::NodeStarted);
        draft.detail = format!("rewritten history {n}");
        rewritten.append(draft).await.expect("append");
        n += 1;
    }
    rewritten.close().await;
    drop(rewritten);
    std::fs::remove_dir_all(dir.ledger()).expect("remove");
    std::fs::rename(&rewritten_dir, dir.ledger()).expect("swap");
    std::fs::remove_dir_all(dir.witness()).expect("hide cosignatures");
}
