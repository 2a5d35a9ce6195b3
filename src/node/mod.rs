//! One running node, wired together: credentials from the data dir, the
//! TLS accept loop, tonic with its HTTP/2 guards, the authz layer, health
//! and reflection, the CRL reloader, and the shutdown drain.

pub mod rotation;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::dataset::blob::{BlobStore, LocalBlobStore};
use crate::dataset::catalog::Catalog;
use crate::fsutil::{self, FileError};
use crate::identity::ca::{self, CaError, RevocationList};
use crate::identity::cert::{self, CertError};
use crate::identity::key::KeyError;
use crate::identity::{NodeKey, P256Key, PeerIdentity};
use crate::ledger::entry::{EntryDraft, EntryKind};
use crate::ledger::{Ledger, LedgerOptions};
use crate::runtime::config::{Config, DataDir, Storage};
use crate::runtime::tls::{
    self, AcceptLimits, ConnectionRegistry, ServerConfigCell, TlsError, TlsMaterial,
};
use crate::service::NodeContext;
use crate::wire::authz::AuthzLayer;
use crate::wire::pb;
use crate::wire::server;
use crate::witness::protocol::{ExchangeError, own_fork};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file of the data dir could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The identity key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate could not be read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The certificate or CRL does not check out against the CA.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node's own credentials are unusable; the message says why.
    #[error("{0}")]
    Credentials(String),
    /// The ledger could not be opened or failed its start-up check.
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The store does not hold what a witness cosigned, or the witness
    /// book could not be read.
    #[error(transparent)]
    Witness(#[from] crate::witness::WitnessError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// tonic's server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The server task ended abnormally.
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A node's keys, its verified certificate identity, and its TLS material.
pub struct Credentials {
    /// The Ed25519 signing key (the TLS key is in `material`).
    pub key: NodeKey,
    /// What the node's own certificate attests.
    pub identity: PeerIdentity,
    /// Certificate, key, CA and CRL for rustls.
    pub material: TlsMaterial,
    /// Serials the CRL revokes.
    pub revoked: Vec<Vec<u8>>,
    /// The CRL's number.
    pub crl_number: u64,
    /// When the CRL expires (`nextUpdate`), if it says.
    pub crl_expires: Option<OffsetDateTime>,
}

fn check_time(what: &str, at: Option<OffsetDateTime>, fix: &str) -> Result<(), NodeError> {
    match at {
        Some(t) if t <= OffsetDateTime::now_utc() => Err(NodeError::Credentials(format!(
            "{what} expired at {t}; {fix}"
        ))),
        _ => Ok(()),
    }
}

/// Loads and checks a node's credentials from its data dir: the two keys
/// (mode 0600), `node.crt` signed by `ca.crt` for that very TLS key,
/// binding that very Ed25519 key, and not expired, and `crl.pem` signed by
/// the CA, not expired, and not revoking this node. A data dir made by an
/// earlier build (an Ed25519 certificate or CA, no `tls.key`) is refused,
/// saying what to re-issue.
pub fn load_credentials(dir: &DataDir) -> Result<Credentials, NodeError> {
    let key = NodeKey::load(&dir.key())?;
    let ca_pem = fsutil::read(&dir.ca_cert())?;
    let ca_der = cert::cert_der_from_pem(&ca_pem)?;
    check_ca_key(dir, &ca_der)?;
    let tls_key_path = dir.tls_key();
    if !tls_key_path.exists() {
        return Err(NodeError::Credentials(format!(
            "{} is missing: this data dir was made by an earlier dsnode, whose certificates were over the Ed25519 key (which gRPC's C core and browsers refuse); it cannot be used as it is: make a new data dir with `dsnode init` (it makes tls.key and a CSR) and re-issue with `dsnode ca issue` from a P-256 CA",
            tls_key_path.display()
        )));
    }
    let tls_key = P256Key::load(&tls_key_path)?;
    let cert_path = dir.cert();
    let cert_pem = fsutil::read(&cert_path).map_err(|e| {
        if e.source.kind() == std::io::ErrorKind::NotFound {
            NodeError::Credentials(format!(
                "{} is missing: send {} to the operator and install the certificate they issue (`dsnode ca issue --csr … --out {}`)",
                cert_path.display(),
                dir.csr().display(),
                cert_path.display()
            ))
        } else {
            e.into()
        }
    })?;
    let identity = ca::verify_issued_by(&ca_der, &cert_pem, &cert_path.display().to_string())?;
    if identity.public_key != key.public_key() {
        return Err(NodeError::Credentials(format!(
            "{} binds the signing key of node {} but {} is the key of node {}: install the certificate issued for this node's CSR",
            cert_path.display(),
            identity.node_id,
            dir.key().display(),
            key.node_id()
        )));
    }
    let cert_der: CertificateDer<'static> = cert::cert_der_from_pem(&cert_pem)?;
    if cert::tls_public_key_of(&cert_der)? != tls_key.public_key_der() {
        return Err(NodeError::Credentials(format!(
            "{} certifies another TLS key than {}: install the certificate issued for this node's CSR (or the tls.key made with it)",
            cert_path.display(),
            tls_key_path.display()
        )));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(identity.not_after).ok();
    check_time(
        &cert_path.display().to_string(),
        not_after,
        "ask the operator for a new certificate",
    )?;
    let crl_path = dir.crl();
    let crl_pem = fsutil::read(&crl_path)?;
    let list = ca::parse_crl(&ca_der, &crl_pem, &crl_path)?;
    check_revocation(&crl_path, &list, &identity)?;
    let crl = ca::crl_der_from_pem(&crl_pem)?;
    let material = TlsMaterial {
        cert_chain: vec![cert_der],
        key: Arc::new(tls_key.tls_private_key()),
        ca: ca_der,
        crl,
    };
    Ok(Credentials {
        key,
        identity,
        material,
        revoked: list.revoked.iter().map(|r| r.serial.clone()).collect(),
        crl_number: list.number,
        crl_expires: list.next_update,
    })
}

/// Whether `ca_der` is the Ed25519 CA certificate of an earlier build.
fn is_ed25519_ca(ca_der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(ca_der)
        .is_ok_and(|(_, c)| cert::KeyKind::of(c.public_key()) == cert::KeyKind::Ed25519)
}

/// Refuses a CA certificate of an earlier build (an Ed25519 CA).
fn check_ca_key(dir: &DataDir, ca_der: &[u8]) -> Result<(), NodeError> {
    if is_ed25519_ca(ca_der) {
        return Err(NodeError::Credentials(format!(
            "{} is an Ed25519 CA certificate made by an earlier dsnode; TLS now needs an ECDSA P-256 CA: the operator makes one (`dsnode ca init`) and re-issues this node's certificate with `dsnode ca issue` from a CSR of this build (`dsnode init`)",
            dir.ca_cert().display()
        )));
    }
    Ok(())
}

fn check_revocation(
    crl_path: &Path,
    list: &RevocationList,
    identity: &PeerIdentity,
) -> Result<(), NodeError> {
    check_time(
        &crl_path.display().to_string(),
        list.next_update,
        "the operator must publish a fresh CRL (`dsnode ca crl`) and copy it here",
    )?;
    if list.revoked.iter().any(|r| r.serial == identity.serial) {
        return Err(NodeError::Credentials(format!(
            "this node's certificate (node {}) is revoked by {}",
            identity.node_id,
            crl_path.display()
        )));
    }
    Ok(())
}

/// A node that is serving. Dropping it does not stop it: call
/// [`RunningNode::shutdown`].
pub struct RunningNode {
    local_addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
    tiles_addr: Option<std::net::SocketAddr>,
    identity: PeerIdentity,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The address of the plain-HTTP metrics listener, if configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The address of the tlog-tiles listener, if configured.
    pub fn tiles_addr(&self) -> Option<std::net::SocketAddr> {
        self.tiles_addr
    }

    /// The node's identity from its own certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// A token that starts the shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts the shutdown (health NOT_SERVING, stop accepting, drain) and
    /// waits for it to finish.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// Waits until the node stops (after its shutdown token is cancelled,
    /// or on a fatal error).
    pub async fn wait(self) -> Result<(), NodeError> {
        self.task.await?
    }
}

/// Health service names reported SERVING once ready: the whole server ("")
/// and each dataspace service.
const HEALTH_SERVICES: &[&str] = &[
    "",
    "dataspace.v1.Peering",
    "dataspace.v1.Catalog",
    "dataspace.v1.Exchange",
    "dataspace.v1.Ledger",
    "dataspace.v1.Admin",
];

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(*name, status).await;
    }
}

/// What keeps a node from serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// Start-up has not finished.
    Starting,
    /// The chunk store does not answer or refuses writes.
    Storage,
    /// The CRL in force has expired.
    Crl,
    /// A witness reported a fork of this node's log (sticky: an operator
    /// must look).
    Fork,
    /// The background scrub found the ledger's store changed (sticky).
    Tampered,
    /// A ledger commit failed (a full disk, an I/O error): no append is
    /// taken until a restart re-verifies the store (sticky).
    LedgerWrites,
}

/// The node's readiness (gRPC health and `/readyz`): SERVING while no
/// cause holds it back, NOT_SERVING with the causes' reasons otherwise,
/// and NOT_SERVING for good once the shutdown starts.
struct Readiness {
    health: tonic_health::server::HealthReporter,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    /// The causes in force (with their reasons), and whether the node is
    /// stopping.
    state: tokio::sync::Mutex<(std::collections::BTreeMap<Cause, String>, bool)>,
}

impl Readiness {
    fn new(
        health: tonic_health::server::HealthReporter,
        metrics: Arc<crate::runtime::metrics::Metrics>,
    ) -> Self {
        let mut causes = std::collections::BTreeMap::new();
        causes.insert(Cause::Starting, "starting".to_owned());
        Self {
            health,
            metrics,
            state: tokio::sync::Mutex::new((causes, false)),
        }
    }

    /// Sets (`Some` reason) or clears (`None`) a cause.
    async fn set(&self, cause: Cause, reason: Option<String>) {
        let mut state = self.state.lock().await;
        let (causes, stopping) = &mut *state;
        match reason {
            Some(r) => causes.insert(cause, r),
            None => causes.remove(&cause),
        };
        if *stopping {
            return;
        }
        let why: Vec<&str> = causes.values().map(String::as_str).collect();
        if why.is_empty() {
            set_health(&self.health, ServingStatus::Serving).await;
            self.metrics.set_readiness(None);
        } else {
            set_health(&self.health, ServingStatus::NotServing).await;
            self.metrics.set_readiness(Some(&why.join("; ")));
        }
    }

    /// NOT_SERVING from now on: the node is shutting down.
    async fn stop(&self) {
        let mut state = self.state.lock().await;
        state.1 = true;
        set_health(&self.health, ServingStatus::NotServing).await;
        self.metrics.set_readiness(Some("shutting down"));
    }
}

/// The chunk store `config` names: the data dir's `blobs/`, or a bucket
/// (with the client for the node's other `s3://` objects). No request is
/// made to an object store here.
#[allow(clippy::type_complexity)]
fn open_storage(
    config: &Config,
) -> Result<(Arc<dyn BlobStore>, Option<Arc<crate::dataset::s3::Buckets>>), NodeError> {
    match &config.storage {
        Storage::Local => {
            let local = LocalBlobStore::open(&config.data_dir.blobs())
                .map_err(|e| NodeError::Credentials(format!("blob store: {e}")))?;
            Ok((Arc::new(local), None))
        }
        Storage::S3(s3) => {
            let credentials = s3
                .credentials(&config.data_dir)
                .map_err(NodeError::Credentials)?;
            let buckets = Arc::new(crate::dataset::s3::Buckets::new(s3.clone(), credentials));
            let store = crate::dataset::s3::S3BlobStore::open(&buckets)
                .map_err(|e| NodeError::Credentials(format!("chunk store: {e}")))?;
            // The data dir still holds received datasets (packs).
            crate::fsutil::create_private_dir(&config.data_dir.blobs())
                .map_err(|e| NodeError::Credentials(format!("blobs: {e}")))?;
            Ok((Arc::new(store), Some(buckets)))
        }
    }
}

/// Checks the chunk store `config` names takes a write (for an object
/// store: it is reachable, the credentials are accepted, the bucket exists
/// and is writable); says what was checked.
pub async fn check_storage(config: &Config) -> Result<String, NodeError> {
    let (blobs, _) = open_storage(config)?;
    let store = blobs.clone();
    tokio::task::spawn_blocking(move || store.probe())
        .await
        .map_err(|e| NodeError::Credentials(format!("probing the chunk store: {e}")))?
        .map_err(|e| {
            NodeError::Credentials(format!(
                "the chunk store {} does not take a write: {e}",
                blobs.describe()
            ))
        })?;
    Ok(format!(
        "chunk store {} is reachable and writable",
        blobs.describe()
    ))
}

/// Removes chunks no dataset references (those of publications that
/// failed or were cut off by a crash), and names any chunk a published
/// dataset references that the store does not hold.
fn sweep_chunks(
    blobs: &dyn BlobStore,
    catalog: &Catalog,
    grants: &crate::exchange::book::GrantBook,
) {
    let published = catalog.referenced_chunks();
    let mut keep = catalog.chunks_on_disk();
    keep.extend(grants.received_chunks());
    match blobs.collect_garbage(&keep) {
        Ok(sweep) => {
            if sweep.removed > 0 {
                tracing::info!(
                    removed = sweep.removed,
                    "removed chunks no dataset references"
                );
            }
            let missing: Vec<String> = sweep
                .missing
                .iter()
                .filter(|h| published.contains(*h))
                .map(|h| data_encoding::HEXLOWER.encode(h))
                .collect();
            if !missing.is_empty() {
                tracing::error!(
                    store = %blobs.describe(),
                    count = missing.len(),
                    first = %missing[0],
                    "chunks of published datasets are missing from the chunk store; fetches of those datasets fail (`dsnode audit storage` names the datasets)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not collect unreferenced chunks"),
    }
}

/// Watches the chunk store: NOT_SERVING (with the reason) while its probe
/// fails, SERVING again once it answers. Once it answers, the start-up
/// sweep runs if start-up found it down, and the chunks a failed
/// publication left are removed (with publications held off, so none of
/// their new chunks is taken for garbage).
async fn watch_storage(
    ctx: Arc<NodeContext>,
    readiness: Arc<Readiness>,
    mut down: bool,
    shutdown: CancellationToken,
) {
    // The full sweep is owed when start-up found the store down.
    let owed = Arc::new(std::sync::atomic::AtomicBool::new(down));
    let sweeping = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let wait = if down {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let store = ctx.blobs.clone();
        let probed = tokio::task::spawn_blocking(move || store.probe())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match probed {
            Ok(()) => {
                if down {
                    down = false;
                    tracing::info!(store = %ctx.blobs.describe(), "the chunk store answers again");
                    readiness.set(Cause::Storage, None).await;
                }
                // Clean-up runs beside the probes (it waits for any
                // publication to end, then holds publications off).
                let pending = owed.load(std::sync::atomic::Ordering::SeqCst)
                    || !ctx.blobs.leftovers().is_empty();
                if let (true, Ok(one)) = (pending, sweeping.clone().try_lock_owned()) {
                    let (ctx, owed) = (ctx.clone(), owed.clone());
                    tokio::spawn(async move {
                        let _one = one;
                        let _publications = ctx.publishing.lock().await;
                        let full = owed.swap(false, std::sync::atomic::Ordering::SeqCst);
                        let c = ctx.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            if full {
                                sweep_chunks(c.blobs.as_ref(), &c.catalog, &c.grants);
                            } else {
                                let mut keep = c.catalog.chunks_on_disk();
                                keep.extend(c.grants.received_chunks());
                                let tried = c.blobs.remove_leftovers(&keep);
                                tracing::info!(tried, "removed chunks a failed publication left");
                            }
                        })
                        .await;
                    });
                }
            }
            Err(reason) => {
                if !down {
                    tracing::error!(store = %ctx.blobs.describe(), error = %reason, "the chunk store is unavailable: NOT_SERVING until it answers");
                }
                down = true;
                readiness
                    .set(
                        Cause::Storage,
                        Some(format!("the chunk store is unavailable: {reason}")),
                    )
                    .await;
            }
        }
    }
}

/// Starts a node from `config`: checks its credentials, binds the listen
/// address, and serves until [`RunningNode::shutdown`].
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    // Stamped before the CRL is read: a change after this is reloaded.
    let crl_stamp = file_stamp(&config.data_dir.crl());
    let creds = load_credentials(&config.data_dir)?;
    check_crl_number(&config.data_dir, creds.crl_number)?;
    let t = config.transport.clone();
    let server_config = tls::server_config(&creds.material)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let tiles_listener = match config.tiles.listen {
        Some(addr) => {
            let tls = match &config.tiles.tls {
                Some((cert, key)) => Some(Arc::new(
                    crate::runtime::tls::web_server_config(cert, key)
                        .map_err(NodeError::Credentials)?,
                )),
                None => None,
            };
            let (l, bound) = bind(addr).await?;
            Some((l, bound, tls))
        }
        None => None,
    };
    let metrics = Arc::new(crate::runtime::metrics::Metrics::new());
    let registry = Arc::new(ConnectionRegistry::default());
    // Metrics and probes answer from now on (readiness 503 until SERVING;
    // a long start-up check must not look like a dead process), through
    // the drain, and stop with the node (or if start-up fails).
    let stop_metrics = CancellationToken::new();
    let metrics_guard = stop_metrics.clone().drop_guard();
    let scrape = Arc::new(crate::runtime::metrics::Scrape {
        metrics: metrics.clone(),
        ledger: std::sync::OnceLock::new(),
        connections: registry.clone(),
    });
    let metrics_addr = metrics_listener.map(|(l, bound)| {
        tokio::spawn(crate::runtime::metrics::serve(
            l,
            scrape.clone(),
            stop_metrics.clone(),
        ));
        tracing::info!(addr = %bound, "metrics, health and readiness over plain HTTP");
        bound
    });

    // The start-up check: what is new since the verified mark (the whole
    // log if none is kept) is recomputed from the stored entries and
    // compared with every signed checkpoint, and the stored tree must
    // have the mark's signed root. A mismatch stops the node here, naming
    // the first bad index: it never reports SERVING. The rest is checked
    // again by the background scrub.
    let ledger = open_ledger(&config.data_dir, &creds).await?;
    let _ = scrape.ledger.set(ledger.clone());
    let observed = metrics.clone();
    ledger.observe_commits(Arc::new(move |n, took| observed.committed(n, took)));
    // The store must still hold every checkpoint a witness cosigned for
    // this node (kept outside ledger/, so a whole ledger restored from an
    // older backup is caught here), checked before this start signs
    // anything: a store that is behind would otherwise sign a checkpoint
    // contradicting one a witness holds.
    let witness = Arc::new(
        crate::witness::WitnessBook::open(&config.data_dir.witness())
            .map_err(|e| NodeError::Credentials(format!("witness book: {e}")))?,
    );
    crate::witness::check_cosigned(&witness, &ledger)?;
    let mut started = EntryDraft::new(EntryKind::NodeStarted);
    started.parties = vec![creds.identity.node_id.clone()];
    started.detail = server::SOFTWARE_VERSION.to_owned();
    let started = ledger.append(started).await?;
    tracing::info!(
        index = started.index,
        size = started.checkpoint.checkpoint.size,
        "ledger verified; NodeStarted recorded"
    );

    registry.revoke_serials(creds.revoked.clone());
    let cell = ServerConfigCell::new(server_config);
    let client_cell = tls::ClientConfigCell::new(tls::client_config(&creds.material)?);
    let stop_accept = CancellationToken::new();
    let incoming = ReceiverStream::new(tls::accept_loop(
        listener,
        cell.clone(),
        AcceptLimits {
            handshake_timeout: t.handshake_timeout,
            max_handshakes: t.max_handshakes,
            max_connections: t.max_connections,
            max_connections_per_peer: t.max_connections_per_peer,
        },
        creds.identity.node_id.clone(),
        registry.clone(),
        stop_accept.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    // tonic-health reports the server ("") SERVING until told otherwise:
    // not before start-up has finished.
    set_health(&health, ServingStatus::NotServing).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Credentials(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| NodeError::Credentials(format!("reflection: {e}")))?;

    let (blobs, buckets) = open_storage(&config)?;
    check_writable(&config.data_dir)?;
    let (catalog, warnings) = Catalog::open(
        &config.data_dir.datasets(),
        creds.identity.public_key,
        &ledger,
    )
    .map_err(|e| NodeError::Credentials(format!("catalog: {e}")))?;
    for w in warnings {
        tracing::warn!(warning = %w, "catalog");
    }
    let (grants, warnings) = crate::exchange::book::GrantBook::open(
        &config.data_dir.grants(),
        creds.identity.public_key,
        ledger.clone(),
        config.clock.clone(),
    )
    .map_err(|e| NodeError::Credentials(format!("grants: {e}")))?;
    for w in warnings {
        tracing::warn!(warning = %w, "grants");
    }
    // The tiles: only once the ledger is verified and holds every
    // checkpoint a witness cosigned (immutable tiles of a rolled-back
    // store must never leave the node), and with the node.
    let tiles_addr = tiles_listener.map(|(l, bound, tls)| {
        tracing::info!(url = %crate::tiles::describe(bound, tls.is_some()), "C2SP tlog-tiles (checkpoint and hash tiles)");
        tokio::spawn(crate::tiles::serve(l, ledger.clone(), tls, stop_metrics.clone()));
        bound
    });
    // The chunk store must take a write before the node serves; an object
    // store that is down leaves the node NOT_SERVING until it answers.
    let probe_store = blobs.clone();
    let storage_down = tokio::task::spawn_blocking(move || probe_store.probe())
        .await
        .map_err(|e| NodeError::Credentials(format!("probing the chunk store: {e}")))?
        .err()
        .map(|e| e.to_string());
    let (catalog, grants) = (Arc::new(catalog), Arc::new(grants));
    if storage_down.is_none() {
        // Blocking (an object store's listing): off the runtime's threads.
        let (b, c, g) = (blobs.clone(), catalog.clone(), grants.clone());
        tokio::task::spawn_blocking(move || sweep_chunks(b.as_ref(), &c, &g))
            .await
            .map_err(|e| NodeError::Credentials(format!("sweeping the chunk store: {e}")))?;
    }
    // Received datasets, and the packs of fetches in progress: those whose
    // saved state is gone (dropped, or a crash before it was kept) go.
    let packs = Arc::new(
        crate::dataset::pack::PackStore::open(&config.data_dir.packs())
            .map_err(|e| NodeError::Credentials(format!("packs: {e}")))?,
    );
    let removed = packs.collect_partials(|key| {
        key.parse()
            .ok()
            .and_then(|id| grants.interrupted_fetch(&id).ok().flatten())
            .is_some()
    });
    if removed > 0 {
        tracing::info!(removed, "removed packs of fetches no longer in progress");
    }
    let ctx = Arc::new(NodeContext {
        seen: crate::dataset::seen::SeenVersions::new(config.data_dir.seen_versions()),
        identity: creds.identity.clone(),
        clock: config.clock.clone(),
        metrics: metrics.clone(),
        opening: tokio::sync::Mutex::new(()),
        sessions: crate::exchange::serve::Sessions::default(),
        packs,
        fetching: std::sync::Mutex::default(),
        started: Instant::now(),
        connections: registry.clone(),
        ledger: ledger.clone(),
        signing_key: creds.key.signing_key().clone(),
        blobs,
        buckets,
        catalog,
        publishing: tokio::sync::Mutex::new(()),
        grants,
        dialer: Arc::new(crate::wire::client::TlsDialer::new(client_cell.clone())),
        witness,
        certificate_pem: fsutil::read(&config.data_dir.cert())?,
        limits: crate::exchange::limits::PeerLimits::new(
            config.limits,
            creds.identity.node_id.clone(),
        ),
    });
    let limit = t.max_decoding_message_size;
    let router = Server::builder()
        .max_concurrent_streams(t.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(t.max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(t.max_local_error_reset_streams))
        .http2_max_header_list_size(t.max_header_list_size)
        .http2_keepalive_interval(Some(t.keepalive_interval))
        .http2_keepalive_timeout(Some(t.keepalive_timeout))
        .max_connection_age(t.max_connection_age)
        .max_connection_age_grace(t.max_connection_age_grace)
        .concurrency_limit_per_connection(t.concurrency_limit_per_connection)
        .max_frame_size(t.max_frame_size)
        .initial_stream_window_size(t.stream_window)
        .initial_connection_window_size(t.connection_window)
        .tcp_nodelay(true)
        // Past `max_in_flight` (or the per-connection limit) a request is
        // refused at once (ResourceExhausted) instead of queueing: under
        // overload, latency stays bounded and clients back off.
        .load_shed(true)
        .layer(crate::wire::rpc_metrics::MetricsLayer::new(metrics.clone()))
        .layer(AuthzLayer::new(creds.identity.node_id.clone()))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            t.max_in_flight,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::peering_server::PeeringServer::new(server::PeeringService::new(ctx.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            pb::admin_server::AdminServer::new(server::AdminService::new(ctx.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            pb::catalog_server::CatalogServer::new(server::CatalogService::new(ctx.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            pb::exchange_server::ExchangeServer::new(server::ExchangeService::new(ctx.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            pb::ledger_server::LedgerServer::new(server::LedgerService::new(ctx.clone()))
                .max_decoding_message_size(limit),
        );

    let (stop_serving_tx, stop_serving_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_serving_rx.await;
    }));
    // Configured witnesses before reporting SERVING (the server already
    // answers, so two nodes that witness each other can start together):
    // a peer holding a cosigned checkpoint that this store no longer has
    // reports a fork of this log, and the node does not serve.
    for peer in &config.witness.peers {
        if let Err(e) = witness_once(&ctx, peer).await {
            let _ = stop_serving_tx.send(());
            let _ = server.await;
            ledger.close().await;
            return Err(e);
        }
    }
    let shutdown = CancellationToken::new();
    let readiness = Arc::new(Readiness::new(health.clone(), metrics.clone()));
    match &storage_down {
        Some(reason) => {
            tracing::error!(store = %ctx.blobs.describe(), error = %reason, "the chunk store is unavailable: NOT_SERVING until it answers");
            readiness
                .set(
                    Cause::Storage,
                    Some(format!("the chunk store is unavailable: {reason}")),
                )
                .await;
        }
        None => readiness.set(Cause::Storage, None).await,
    }
    readiness.set(Cause::Starting, None).await;
    tokio::spawn(watch_storage(
        ctx.clone(),
        readiness.clone(),
        storage_down.is_some(),
        shutdown.clone(),
    ));
    metrics_guard.disarm();
    tokio::spawn(watch_crl(
        config.data_dir.clone(),
        (creds.material.clone(), crl_stamp, creds.crl_number),
        (cell, client_cell),
        registry.clone(),
        (readiness.clone(), creds.crl_expires),
        t.crl_reload_interval,
        shutdown.clone(),
    ));
    if !config.witness.external.is_empty() {
        tokio::spawn(crate::witness::external::run(
            ctx.ledger.clone(),
            ctx.witness.clone(),
            config.witness.external.clone(),
            config.witness.external_interval,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    // Awaited before the ledger closes: the store is released only
    // once the scrub has let go of it.
    let scrub = (config.ledger.scrub_rate > 0).then(|| {
        tokio::spawn(scrub_ledger(
            ctx.ledger.clone(),
            readiness.clone(),
            metrics.clone(),
            config.ledger,
            shutdown.clone(),
        ))
    });
    tokio::spawn(watch_ledger_writes(
        ctx.ledger.failure(),
        readiness.clone(),
        shutdown.clone(),
    ));
    if !config.limits.denial_window.is_zero() {
        tokio::spawn(flush_denials(
            ctx.clone(),
            config.limits.denial_window,
            shutdown.clone(),
        ));
    }
    if !config.witness.peers.is_empty() {
        tokio::spawn(witness_loop(
            ctx.clone(),
            readiness.clone(),
            config.witness.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        addr = %local_addr,
        node = %creds.identity,
        "serving"
    );

    let task = {
        let shutdown = shutdown.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut server = server;
            tokio::select! {
                result = &mut server => {
                    // The server ended by itself: a failure. Still say so
                    // to health watchers and close the ledger cleanly.
                    tracing::error!("gRPC server stopped unexpectedly");
                    readiness.stop().await;
                    shutdown.cancel();
                    if let Some(scrub) = scrub {
                        let _ = scrub.await;
                    }
                    flush_denials_now(&ctx, true).await;
                    ledger.close().await;
                    stop_metrics.cancel();
                    result??;
                    return Ok(());
                }
                () = shutdown.cancelled() => {}
            }
            tracing::info!(deadline = ?t.drain_deadline, "shutting down: NOT_SERVING, draining");
            readiness.stop().await;
            stop_accept.cancel();
            let _ = stop_serving_tx.send(());
            match tokio::time::timeout(t.drain_deadline, &mut server).await {
                Ok(result) => result??,
                Err(_) => {
                    tracing::warn!(
                        open = registry.open_count(),
                        "drain deadline passed; cutting the remaining connections"
                    );
                    registry.cut_all();
                    match tokio::time::timeout(Duration::from_secs(2), &mut server).await {
                        Ok(result) => result??,
                        Err(_) => server.abort(),
                    }
                }
            }
            if let Some(scrub) = scrub {
                let _ = scrub.await;
            }
            flush_denials_now(&ctx, true).await;
            ledger.close().await;
            stop_metrics.cancel();
            tracing::info!("stopped");
            Ok(())
        })
    };
    Ok(RunningNode {
        local_addr,
        metrics_addr,
        tiles_addr,
        identity: creds.identity,
        shutdown,
        task,
    })
}

/// Makes the node NOT_SERVING, naming the cause, as soon as a ledger
/// commit fails: nothing can be granted, transferred or receipted until
/// the storage is fixed and the node restarted.
async fn watch_ledger_writes(
    mut failure: tokio::sync::watch::Receiver<Option<String>>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    loop {
        let reason = failure.borrow_and_update().clone();
        // A full disk clears by itself (the ledger probes for room and
        // re-opens its store); anything else needs the operator.
        let reason = reason.map(|reason| {
            if reason.starts_with(crate::ledger::STORAGE_FULL) {
                format!(
                    "the ledger takes no appends since a commit failed: {reason}; it takes them again by itself once space is freed"
                )
            } else {
                format!(
                    "the ledger takes no appends since a commit failed: {reason}; fix the disk, then restart the node"
                )
            }
        });
        readiness.set(Cause::LedgerWrites, reason).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = failure.changed() => if changed.is_err() { return },
        }
    }
}

/// Records the repeats of identical refusals whose window has ended
/// (`all`: of every window, at a clean stop), so the ledger counts every
/// refusal; a failure is logged (the refusals were answered; only their
/// count is missing from the ledger).
async fn flush_denials_now(ctx: &NodeContext, all: bool) {
    match ctx
        .limits
        .flush_denials(&ctx.ledger, Instant::now(), ctx.clock.now(), all)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(refusals = n, "repeated refusals recorded"),
        Err(e) => {
            tracing::warn!(error = %e, "repeated refusals could not be recorded");
        }
    }
}

/// Every half `window`, records the repeats of refusals whose window has
/// ended ([`crate::exchange::limits::PeerLimits::flush_denials`]).
async fn flush_denials(ctx: Arc<NodeContext>, window: Duration, shutdown: CancellationToken) {
    let tick = (window / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => flush_denials_now(&ctx, false).await,
        }
    }
}

/// Verifies the whole ledger again in the background, paced at
/// `scrub_rate` entries a second, every `scrub_interval`: start-up checks
/// only what is new since the verified mark, so a changed old entry is
/// found here (and by `dsnode audit verify`). Tampering makes the node
/// NOT_SERVING for good, with the first bad index in the reason, the log
/// and the `dsnode_ledger_scrubs_total{kind="tampered"}` metric.
async fn scrub_ledger(
    ledger: Ledger,
    readiness: Arc<Readiness>,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    config: crate::runtime::config::LedgerConfig,
    shutdown: CancellationToken,
) {
    loop {
        let started = tokio::time::Instant::now();
        let (l, m, stop) = (ledger.clone(), metrics.clone(), shutdown.clone());
        let rate = config.scrub_rate;
        let pass = tokio::task::spawn_blocking(move || {
            let begun = std::time::Instant::now();
            let mut done = 0u64;
            l.scrub(&mut |n| {
                done += n;
                m.scrubbed(n);
                // Sleep off any lead over the rate, in short steps so a
                // shutdown is not held up.
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                while let Some(lead) = due.checked_sub(begun.elapsed()) {
                    if stop.is_cancelled() {
                        return false;
                    }
                    std::thread::sleep(lead.min(Duration::from_millis(100)));
                }
                !stop.is_cancelled()
            })
            .map(|report| (report, begun.elapsed()))
        })
        .await;
        match pass {
            Ok(Ok((Some(report), took))) => {
                metrics.scrub_ended("passed");
                metrics.set_verified(report.size);
                tracing::info!(
                    entries = report.size,
                    checkpoints = report.checkpoints,
                    seconds = took.as_secs_f64(),
                    "ledger scrub passed: every entry, hash, index and checkpoint verified"
                );
            }
            Ok(Ok((None, _))) => return,
            Ok(Err(
                e @ (crate::ledger::LedgerError::Tampered { .. }
                | crate::ledger::LedgerError::BadCheckpoint { .. }),
            )) => {
                metrics.scrub_ended("tampered");
                tracing::error!(error = %e, "the ledger scrub found the store changed: NOT_SERVING; run `dsnode audit verify` on a copy and restore the ledger from a backup");
                readiness
                    .set(Cause::Tampered, Some(format!("ledger scrub: {e}")))
                    .await;
                return;
            }
            Ok(Err(e)) => {
                metrics.scrub_ended("failed");
                tracing::warn!(error = %e, "the ledger scrub could not finish; it runs again later");
            }
            Err(e) => {
                metrics.scrub_ended("failed");
                tracing::warn!(error = %e, "the ledger scrub stopped");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(started + config.scrub_interval) => {}
        }
    }
}

/// One checkpoint exchange with a configured witness. A peer reporting a
/// fork of this node's own log is fatal; anything else is logged.
async fn witness_once(ctx: &NodeContext, peer: &str) -> Result<(), NodeError> {
    let exchange = ctx.exchange_checkpoints_with(peer);
    match tokio::time::timeout(Duration::from_secs(15), exchange).await {
        Ok(Ok(done)) => {
            tracing::info!(peer, node = %done.peer, size = done.peer_size, cosigned = done.cosigned_by_peer, "checkpoints exchanged");
            Ok(())
        }
        Ok(Err(ExchangeError::Peer(refusal)))
            if let Some(lost) = own_fork(&ctx.ledger, &refusal) =>
        {
            Err(NodeError::Credentials(format!(
                "witness {peer} refused this node's checkpoint ({}), and it is right: {lost}; the store lost acknowledged entries or was replaced; not serving",
                refusal.message
            )))
        }
        Ok(Err(e)) => {
            tracing::warn!(peer, error = %e, "checkpoint exchange failed");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(peer, "checkpoint exchange timed out");
            Ok(())
        }
    }
}

/// Exchanges checkpoints with every configured witness every interval.
async fn witness_loop(
    ctx: Arc<NodeContext>,
    readiness: Arc<Readiness>,
    config: crate::runtime::config::WitnessConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for peer in &config.peers {
            if let Err(e) = witness_once(&ctx, peer).await {
                tracing::error!(error = %e, "FORK of this node's log reported by a witness");
                readiness
                    .set(
                        Cause::Fork,
                        Some(format!("a witness reported a fork of this node's log: {e}")),
                    )
                    .await;
            }
        }
    }
}

/// The highest CRL number this node has put in force is kept in
/// `crl.number`: an older CRL could un-revoke certificates, so it is
/// refused at start as it is at reload.
fn check_crl_number(dir: &DataDir, number: u64) -> Result<(), NodeError> {
    check_crl_not_older(dir, number)?;
    record_crl_number(dir, number)
}

/// Refuses CRL number `number` if it is older than the one this node had
/// in force (`crl.number`); writes nothing (`serve --check-config` runs
/// the check `serve` does).
pub fn check_crl_not_older(dir: &DataDir, number: u64) -> Result<(), NodeError> {
    let path = dir.root().join("crl.number");
    let seen = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if number < seen {
        return Err(NodeError::Credentials(format!(
            "{} is CRL #{number}, older than CRL #{seen} this node had in force; an older CRL could un-revoke certificates: install the current one",
            dir.crl().display()
        )));
    }
    Ok(())
}

fn record_crl_number(dir: &DataDir, number: u64) -> Result<(), NodeError> {
    fsutil::write_atomic(
        &dir.root().join("crl.number"),
        format!("{number}\n").as_bytes(),
        fsutil::PUBLIC_MODE,
    )?;
    Ok(())
}

/// Checks that the data dir and blob store take a durable write (a full
/// disk or a read-only mount is found here, before SERVING).
fn check_writable(dir: &DataDir) -> Result<(), NodeError> {
    for d in [dir.root().to_path_buf(), dir.blobs()] {
        fsutil::probe_write(&d)
            .map_err(|e| NodeError::Credentials(format!("storage is not writable: {e}")))?;
    }
    Ok(())
}

/// Opens and verifies the node's ledger (a blocking O(n) check).
/// A listener on `addr`, and the address it is bound to (with port 0,
/// the port given).
async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), NodeError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    Ok((l, bound))
}

async fn open_ledger(dir: &DataDir, creds: &Credentials) -> Result<Ledger, NodeError> {
    let path = dir.ledger();
    let key = creds.key.signing_key().clone();
    let (ledger, report) = tokio::task::spawn_blocking(move || {
        // sled releases its file lock from a background thread after the
        // previous handle closes (a restart in the same process, or a node
        // started right after `audit verify`): wait briefly for it.
        let mut tries = 0;
        loop {
            match Ledger::open(&path, key.clone(), LedgerOptions::default()) {
                Err(crate::ledger::LedgerError::Store(
                    crate::ledger::store::StoreError::Locked { .. },
                )) if tries < 150 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    })
    .await?
    .map_err(|e| match e {
        crate::ledger::LedgerError::Keys(keys @ crate::ledger::keys::KeyError::NotCurrent { .. }) => {
            NodeError::Credentials(format!(
                "{keys}: this node's ledger refuses {}; a retired key never signs for the node again (if node.key was restored from a backup, restore the current key; if a rotation was interrupted, run `dsnode key rotate` again)",
                dir.key().display()
            ))
        }
        other => other.into(),
    })?;
    tracing::info!(
        size = report.size,
        checked = report.checked(),
        checkpoints = report.checkpoints,
        "ledger start-up check passed (entries below the verified mark are re-checked by the background scrub)"
    );
    Ok(ledger)
}

/// What identifies one version of a file: a rename (atomic write) changes
/// the inode, an in-place edit the length or mtime.
/// What identifies a version of a file: inode, length, modification time.
type CrlStamp = (u64, u64, SystemTime);

fn file_stamp(path: &Path) -> Option<CrlStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}

/// Reloads `crl.pem` when it changes (checked every `interval`) and on
/// SIGHUP. A CRL that is unreadable or not signed by the CA is ignored
/// (the previous one stays in force) and logged. After a reload, open
/// connections whose certificate the new CRL revokes are cut.
async fn watch_crl(
    dir: DataDir,
    (mut material, mut stamp, mut crl_number): (TlsMaterial, Option<CrlStamp>, u64),
    cells: (ServerConfigCell, tls::ClientConfigCell),
    registry: Arc<ConnectionRegistry>,
    (readiness, mut expires): (Arc<Readiness>, Option<OffsetDateTime>),
    interval: Duration,
    shutdown: CancellationToken,
) {
    let path = dir.crl();
    // Whether the CRL in force has expired: every handshake is then
    // refused, so the node reports NOT_SERVING (gRPC health, /readyz)
    // until a fresh CRL is installed.
    let mut lapsed = false;
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; CRL reloads on change only");
            None
        }
    };
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = file_stamp(&path);
        if forced || now != stamp {
            stamp = now;
            if let Some(list) = reload(
                &dir,
                &path,
                &mut material,
                &cells,
                &registry,
                &mut crl_number,
            ) {
                expires = list.next_update;
            }
        }
        let expired = expires.is_some_and(|t| t <= OffsetDateTime::now_utc());
        if expired != lapsed && !shutdown.is_cancelled() {
            lapsed = expired;
            if expired {
                tracing::error!(
                    crl = %path.display(),
                    "the CRL in force has expired: every handshake is refused; NOT_SERVING until the operator installs a fresh CRL"
                );
                readiness
                    .set(
                        Cause::Crl,
                        Some("the CRL in force has expired: every handshake is refused".into()),
                    )
                    .await;
            } else {
                tracing::info!("a valid CRL is in force again");
                readiness.set(Cause::Crl, None).await;
            }
        }
    }
}

/// One CRL reload, logged; the list put in force, if any.
fn reload(
    dir: &DataDir,
    path: &Path,
    material: &mut TlsMaterial,
    cells: &(ServerConfigCell, tls::ClientConfigCell),
    registry: &ConnectionRegistry,
    crl_number: &mut u64,
) -> Option<RevocationList> {
    match reload_crl(path, material, cells, registry, crl_number) {
        Ok((list, cut)) => {
            if let Err(e) = record_crl_number(dir, list.number) {
                tracing::warn!(error = %e, "could not record the CRL number");
            }
            tracing::info!(
                crl_number = list.number,
                revoked = list.revoked.len(),
                connections_cut = cut,
                "CRL reloaded"
            );
            Some(list)
        }
        Err(e) => {
            tracing::error!(error = %e, "CRL reload failed; keeping the previous CRL");
            None
        }
    }
}

fn reload_crl(
    path: &Path,
    material: &mut TlsMaterial,
    (cell, client_cell): &(ServerConfigCell, tls::ClientConfigCell),
    registry: &ConnectionRegistry,
    current_number: &mut u64,
) -> Result<(RevocationList, usize), NodeError> {
    // Read once: the list checked and the CRL installed are the same bytes.
    let pem = fsutil::read(path)?;
    let list = ca::parse_crl(&material.ca, &pem, path)?;
    if list.number < *current_number {
        return Err(NodeError::Credentials(format!(
            "{} is CRL #{}, older than CRL #{} in force; an older CRL could un-revoke certificates, so it is ignored",
            path.display(),
            list.number,
            current_number
        )));
    }
    if let Some(next) = list.next_update.filter(|t| *t <= OffsetDateTime::now_utc()) {
        tracing::warn!(
            expired = %next,
            "the new CRL has expired: every peer will be refused until the operator publishes a fresh one"
        );
    }
    let crl = ca::crl_der_from_pem(&pem)?;
    let mut next = material.clone();
    next.crl = crl;
    let config = tls::server_config(&next)?;
    let client_config = tls::client_config(&next)?;
    // Revoked set first, then the new config: a handshake finishing under
    // the old config is refused when it registers.
    let serials: Vec<Vec<u8>> = list.revoked.iter().map(|r| r.serial.clone()).collect();
    let cut = registry.revoke_serials(serials);
    cell.replace(config);
    client_cell.replace(client_config);
    *material = next;
    *current_number = list.number;
    Ok((list, cut))
}

/// What `dsnode init` made.
#[derive(Debug)]
pub struct Initialized {
    /// The new node's id.
    pub node_id: crate::identity::NodeId,
    /// The CSR to send to the operator.
    pub csr_path: std::path::PathBuf,
    /// The C2SP verifier key of the node's ledger checkpoints.
    pub vkey: String,
    /// The host names the CSR asks for.
    pub hosts: Vec<cert::Host>,
}

/// The host names a node listening on `listen` asks to be certified for,
/// when the operator names none: the address itself, and for loopback or
/// unspecified addresses also `localhost` and 127.0.0.1.
pub fn default_hosts(listen: std::net::SocketAddr) -> Vec<cert::Host> {
    let ip = listen.ip();
    let mut hosts = Vec::new();
    if ip.is_unspecified() || ip.is_loopback() {
        hosts.push(cert::Host::Dns("localhost".into()));
        hosts.push(cert::Host::Ip(std::net::Ipv4Addr::LOCALHOST.into()));
    }
    if !ip.is_unspecified() && !hosts.contains(&cert::Host::Ip(ip)) {
        hosts.push(cert::Host::Ip(ip));
    }
    hosts
}

/// Creates a node's data dir: a new Ed25519 signing key and a new ECDSA
/// P-256 TLS key (both mode 0600), `node.toml`, a CSR for the TLS key
/// binding the signing key, naming `participant` and `hosts`, and a copy of
/// the CA certificate. Refuses a directory that already holds a key.
pub fn init_data_dir(
    dir: &DataDir,
    participant: &crate::identity::ParticipantId,
    ca_cert_pem: &[u8],
    (listen, metrics_listen): (std::net::SocketAddr, Option<std::net::SocketAddr>),
    hosts: Vec<cert::Host>,
) -> Result<Initialized, NodeError> {
    if dir.key().exists() || dir.tls_key().exists() {
        return Err(NodeError::Credentials(format!(
            "{} already holds a node key; refusing to overwrite a node's identity",
            dir.root().display()
        )));
    }
    // Validate the CA certificate before writing anything.
    let ca_der = cert::cert_der_from_pem(ca_cert_pem)?;
    if is_ed25519_ca(&ca_der) {
        return Err(NodeError::Credentials(
            "the CA certificate is an Ed25519 CA made by an earlier dsnode; TLS now needs an ECDSA P-256 CA: the operator makes one with `dsnode ca init`".into(),
        ));
    }
    fsutil::create_private_dir(dir.root())?;
    let key = NodeKey::generate();
    let tls_key = P256Key::generate()?;
    let csr = cert::make_csr(&key, &tls_key, participant, &hosts)?;
    key.save_new(&dir.key())?;
    tls_key.save_new(&dir.tls_key())?;
    fsutil::write_atomic(&dir.ca_cert(), ca_cert_pem, fsutil::PUBLIC_MODE)?;
    fsutil::write_atomic(&dir.csr(), csr.as_bytes(), fsutil::PUBLIC_MODE)?;
    fsutil::write_atomic(
        &dir.config(),
        Config::initial_toml(listen, metrics_listen).as_bytes(),
        fsutil::PUBLIC_MODE,
    )?;
    let vkey = crate::ledger::note::NoteVerifier::new(
        &crate::ledger::origin_for(&key.node_id()),
        &key.public_key(),
    )
    .map_err(|e| NodeError::Credentials(e.to_string()))?
    .vkey();
    fsutil::write_atomic(
        &dir.vkey(),
        format!("{vkey}\n").as_bytes(),
        fsutil::PUBLIC_MODE,
    )?;
    Ok(Initialized {
        node_id: key.node_id(),
        csr_path: dir.csr(),
        vkey,
        hosts,
    })
}
