//! Mutual TLS: rustls server and client configurations, the node's own
//! accept loop, and the peer identity taken from a verified session.
//!
//! tonic's built-in TLS cannot load a CRL, so the node runs its own
//! tokio-rustls acceptor: every handshake in its own task under a timeout
//! (a failed handshake never ends the loop), a cap on open connections, and
//! a registry of open connections so that a CRL reload cuts the ones whose
//! certificate it revokes. Both sides: TLS 1.3 only, certificates required
//! and checked against the data-space CA and its CRL (an expired CRL is
//! refused), no session resumption (a resumed session would skip the
//! revocation check), ALPN `h2`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::identity::PeerIdentity;
use crate::identity::cert::CertError;

/// Why a TLS configuration could not be built or a connection not made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (bad key, bad certificate, …).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The CA certificate or CRL could not be used by the verifier.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The peer's certificate did not yield a dsnode identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(#[from] CertError),
    /// The verified session carried no certificate (cannot happen when a
    /// certificate is required, but never assumed).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
}

/// The credentials and trust anchors one node uses on both sides of TLS.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// The node's certificate (chain of one: the CA is the only issuer).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's TLS private key (`tls.key`, ECDSA P-256; never the
    /// Ed25519 signing key, which TLS stacks such as BoringSSL refuse).
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The data-space CA certificate.
    pub ca: CertificateDer<'static>,
    /// The CA's current CRL.
    pub crl: CertificateRevocationListDer<'static>,
}

/// rustls with ring, TLS 1.3 suites only, AES-128-GCM first (faster than
/// AES-256 with ring on these machines).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn roots(material: &TlsMaterial) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(material.ca.clone())?;
    Ok(Arc::new(roots))
}

/// A server configuration for browsers and HTTP tools (the auditor
/// console, the tiles listener): no client certificate, TLS 1.3 or 1.2,
/// ALPN `http/1.1`, from a PEM chain and a PEM private key (mode 0600). An
/// Ed25519 key is refused: browsers do not accept it for TLS.
pub fn web_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let cert_pem = crate::fsutil::read(cert).map_err(|e| e.to_string())?;
    let key_pem = crate::fsutil::read_secret(key).map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e} (expected PEM certificates)", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: {e} (expected a PEM private key)", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    if signing.algorithm() == rustls::SignatureAlgorithm::ED25519 {
        return Err(format!(
            "{} is an Ed25519 key, which browsers do not accept for TLS; use a P-256 (ECDSA) key, e.g. `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=HOST -addext subjectAltName=DNS:HOST -keyout console.key -out console.crt`",
            key.display()
        ));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("the certificate does not match the key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server side: client certificates required and checked against the
/// CA and CRL (expired CRL refused), TLS 1.3 only, no resumption, ALPN h2.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(material)?, provider.clone())
        .with_crls([material.crl.clone()])
        .enforce_revocation_expiration()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.cert_chain.clone(), material.key.clone_key())?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: presents the node's certificate, checks the server's
/// against the CA and CRL, TLS 1.3 only, no resumption, ALPN h2.
pub fn client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(material)?,
        provider.clone(),
    )
    .with_crls([material.crl.clone()])
    .enforce_revocation_expiration()
    .build()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(material.cert_chain.clone(), material.key.clone_key())?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The identity in the end-entity certificate of a verified session.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<PeerIdentity, TlsError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    Ok(PeerIdentity::from_der(leaf)?)
}

/// A peer address that is not `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No port, or not a number.
    #[error("invalid peer address `{0}`: expected HOST:PORT")]
    NotHostPort(String),
    /// The host is neither a DNS name nor an IP literal.
    #[error("invalid peer address `{addr}`: `{host}` is not a host name")]
    NotAHost {
        /// The address.
        addr: String,
        /// Its host part.
        host: String,
    },
}

/// A server name for a `host:port` address (DNS name or IP literal).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, AddressError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(AddressError::NotHostPort(addr.to_owned())),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| AddressError::NotAHost {
        addr: addr.to_owned(),
        host: host.to_owned(),
    })
}

/// What tonic hands to every handler of a connection as a request
/// extension: who is calling, as verified by TLS.
#[derive(Clone, Debug)]
pub struct PeerConnectInfo {
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// The peer's identity from its verified certificate.
    pub identity: Arc<PeerIdentity>,
    /// Connection number, for logs.
    pub connection: u64,
    /// Set when a connection limit refused this connection: every call on
    /// it is answered `ResourceExhausted` with this text (naming the
    /// limit), and the connection is closed shortly after.
    pub refused: Option<Arc<str>>,
}

/// A TLS configuration in force; swapped when the CRL reloads.
pub struct ConfigCell<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for ConfigCell<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> ConfigCell<T> {
    /// A cell holding `config`.
    pub fn new(config: Arc<T>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the configuration for handshakes from now on.
    pub fn replace(&self, config: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

/// The server's configuration in force.
pub type ServerConfigCell = ConfigCell<ServerConfig>;

/// The configuration this node's outgoing connections use (its CRL too:
/// a publisher revoked since start-up is refused).
pub type ClientConfigCell = ConfigCell<ClientConfig>;

/// The open connections, so that a CRL reload or a forced shutdown can cut
/// them.
#[derive(Default)]
pub struct ConnectionRegistry {
    next: AtomicU64,
    state: Mutex<Registry>,
    handshake_failures: Counts,
    refusals: Counts,
}

/// Events counted by a fixed label (a metrics label: never text from a
/// peer).
#[derive(Default)]
struct Counts(Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl Counts {
    fn add(&self, label: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(label)
            .or_default() += 1;
    }

    fn by_label(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(l, n)| (*l, *n))
            .collect()
    }
}

/// An open verified connection.
struct Open {
    serial: Vec<u8>,
    peer: crate::identity::NodeId,
    token: CancellationToken,
}

/// Why a verified connection was not registered.
#[derive(Debug, PartialEq, Eq)]
enum NotRegistered {
    /// The CRL now in force revokes its certificate.
    Revoked,
    /// Its certificate already has this many connections open.
    PerPeer(usize),
}

#[derive(Default)]
struct Registry {
    open: HashMap<u64, Open>,
    /// Open connections by the peer's node id (its certificate's key).
    per_peer: HashMap<crate::identity::NodeId, usize>,
    /// Serials the CRL in force revokes. A handshake that began under an
    /// older CRL is checked against this when it registers, so a reload
    /// racing a handshake cannot let a revoked peer in.
    revoked: std::collections::HashSet<Vec<u8>>,
}

impl ConnectionRegistry {
    /// Registers a verified connection, unless its serial is revoked or
    /// its peer already has `per_peer` connections open.
    fn register(
        &self,
        identity: &PeerIdentity,
        per_peer: usize,
    ) -> Result<(u64, CancellationToken), NotRegistered> {
        let mut state = self.lock();
        if state.revoked.contains(&identity.serial) {
            return Err(NotRegistered::Revoked);
        }
        let count = state.per_peer.entry(identity.node_id.clone()).or_default();
        if *count >= per_peer {
            return Err(NotRegistered::PerPeer(*count));
        }
        *count += 1;
        let id = self.next_id();
        let token = CancellationToken::new();
        state.open.insert(
            id,
            Open {
                serial: identity.serial.clone(),
                peer: identity.node_id.clone(),
                token: token.clone(),
            },
        );
        Ok((id, token))
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets connection `id` (closed).
    fn unregister(&self, id: u64) {
        let mut state = self.lock();
        if let Some(open) = state.open.remove(&id)
            && let Some(n) = state.per_peer.get_mut(&open.peer)
        {
            *n -= 1;
            if *n == 0 {
                state.per_peer.remove(&open.peer);
            }
        }
    }

    /// Connections refused by a limit since start, by limit (`per_peer`,
    /// `global`).
    pub fn refusals_by_limit(&self) -> Vec<(&'static str, u64)> {
        self.refusals.by_label()
    }

    fn refused(&self, limit: &'static str) {
        self.refusals.add(limit);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of open connections.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Number of handshakes that failed or timed out since start.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures_by_reason()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// Failed handshakes since start, by reason (see [`failure_reason`]).
    pub fn handshake_failures_by_reason(&self) -> Vec<(&'static str, u64)> {
        self.handshake_failures.by_label()
    }

    fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures.add(reason);
    }

    /// Makes `serials` the revoked set (the CRL now in force) and cuts
    /// every open connection whose certificate it lists; returns how many
    /// were cut.
    pub fn revoke_serials(&self, serials: Vec<Vec<u8>>) -> usize {
        let mut state = self.lock();
        state.revoked = serials.into_iter().collect();
        let mut cut = 0;
        for open in state.open.values() {
            if state.revoked.contains(&open.serial) {
                open.token.cancel();
                cut += 1;
            }
        }
        cut
    }

    /// Cuts every open connection (end of the shutdown drain).
    pub fn cut_all(&self) {
        for open in self.lock().open.values() {
            open.token.cancel();
        }
    }
}

/// A verified TLS connection as tonic serves it. Reads and writes fail once
/// the connection is cut (its certificate was revoked, or the drain deadline
/// passed), which makes hyper drop the connection at once.
pub struct PeerConnection {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerConnectInfo,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    registry: Arc<ConnectionRegistry>,
    /// A slot of `max_connections` (none for the node's own certificate,
    /// which always gets one), or of the refusals lingering.
    _permit: Option<OwnedSemaphorePermit>,
}

impl PeerConnection {
    fn check_cut(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut by the node (certificate revoked or shutdown deadline)",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.registry.unregister(self.info.connection);
    }
}

impl tonic::transport::server::Connected for PeerConnection {
    type ConnectInfo = PeerConnectInfo;
    fn connect_info(&self) -> PeerConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A short, bounded label for why a TLS handshake failed (a metrics label:
/// never text from the peer).
pub fn failure_reason(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => "revoked",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer => "unknown_issuer",
            C::BadSignature => "bad_signature",
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => "crl_expired",
            _ => "bad_certificate",
        },
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::AlertReceived(_) => "alert",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "protocol",
        _ => "other",
    }
}

/// The TLS handshakes in progress, oldest first.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    running: Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
}

impl Pending {
    /// Registers a new handshake; if `max` are already running, the
    /// oldest is told to stop. Returns its id and its eviction token.
    fn start(&self, max: usize, registry: &ConnectionRegistry) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while running.len() >= max.max(1) {
            let Some((_, oldest)) = running.pop_first() else {
                break;
            };
            oldest.cancel();
            registry.handshake_failed("evicted");
        }
        running.insert(id, token.clone());
        (id, token)
    }

    fn finish(&self, id: u64) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// A handshake not finished in this time is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at most; past it the oldest pending one is
    /// dropped. Separate from connections, so that stalled handshakes
    /// (which cost an attacker no certificate) cannot take the slots of
    /// verified peers, nor hold real clients in a queue.
    pub max_handshakes: usize,
    /// Verified connections open at most; beyond it new peers are refused.
    /// The node's own certificate is not counted: it always gets a slot.
    pub max_connections: usize,
    /// Verified connections one certificate (one node id) may hold open
    /// at most, so that one participant cannot take every slot.
    pub max_connections_per_peer: usize,
}

/// Refused connections kept open at once to say why (each answers its
/// calls `ResourceExhausted` naming the limit, then closes); past it a
/// refused connection is closed without a word.
const MAX_REFUSALS: usize = 32;

/// How long a refused connection stays open to answer its calls.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Accepts TCP connections on `listener` and completes TLS handshakes, each
/// in its own task, sending verified connections to the returned channel
/// until `stop` is cancelled or the receiver is dropped.
pub fn accept_loop(
    listener: TcpListener,
    config: ServerConfigCell,
    limits: AcceptLimits,
    own: crate::identity::NodeId,
    registry: Arc<ConnectionRegistry>,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<PeerConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let pending = Arc::new(Pending::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let own = Arc::new(own);
    tokio::spawn(async move {
        loop {
            // Every connection is accepted at once (a queue in the kernel
            // backlog would put real clients behind stalled ones); when
            // `max_handshakes` are in progress, the oldest is dropped:
            // real handshakes finish in milliseconds, so the oldest is a
            // stalled one.
            let (tcp, remote_addr) = tokio::select! {
                _ = stop.cancelled() => break,
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let tx = tx.clone();
            let registry = registry.clone();
            let slots = slots.clone();
            let refusals = refusals.clone();
            let own = own.clone();
            let (handshake_id, evicted) = pending.start(limits.max_handshakes, &registry);
            let pending = pending.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                let outcome = tokio::select! {
                    () = evicted.cancelled() => {
                        tracing::debug!(peer = %remote_addr, "stalled TLS handshake dropped for a newer one");
                        return;
                    }
                    outcome = handshake => outcome,
                };
                pending.finish(handshake_id);
                let stream = match outcome {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        registry.handshake_failed(failure_reason(&e));
                        tracing::info!(peer = %remote_addr, reason = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        registry.handshake_failed("timeout");
                        tracing::info!(peer = %remote_addr, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = match peer_identity(stream.get_ref().1.peer_certificates()) {
                    Ok(id) => id,
                    Err(e) => {
                        registry.handshake_failed("identity");
                        tracing::info!(peer = %remote_addr, reason = %e, "peer certificate refused");
                        return;
                    }
                };
                let identity = Arc::new(identity);
                let refuse = |stream, limit: &'static str, why: String| {
                    registry.refused(limit);
                    tracing::warn!(peer = %remote_addr, node = %identity.node_id, limit, "connection refused: {why}");
                    // Said to the peer on every call, for a moment; past
                    // MAX_REFUSALS lingering, the connection just closes.
                    let permit = refusals.clone().try_acquire_owned().ok()?;
                    let token = CancellationToken::new();
                    let linger = token.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(REFUSAL_LINGER).await;
                        linger.cancel();
                    });
                    Some(PeerConnection {
                        inner: stream,
                        info: PeerConnectInfo {
                            remote_addr,
                            identity: identity.clone(),
                            connection: registry.next_id(),
                            refused: Some(why.into()),
                        },
                        cut: Box::pin(token.cancelled_owned()),
                        registry: registry.clone(),
                        _permit: Some(permit),
                    })
                };
                // The node's own certificate (its operator's CLI) is not
                // counted against max_connections: it always gets a slot.
                let permit = if identity.node_id == *own {
                    None
                } else {
                    match slots.try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            let why = format!(
                                "this node has all its {} connection slots in use ([transport] max_connections); retry later",
                                limits.max_connections
                            );
                            if let Some(conn) = refuse(stream, "global", why) {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            return;
                        }
                    }
                };
                let (connection, token) = match registry
                    .register(&identity, limits.max_connections_per_peer)
                {
                    Ok(registered) => registered,
                    Err(NotRegistered::Revoked) => {
                        registry.handshake_failed("revoked");
                        tracing::info!(peer = %remote_addr, node = %identity.node_id, "certificate revoked by the CRL now in force; refusing");
                        return;
                    }
                    Err(NotRegistered::PerPeer(open)) => {
                        drop(permit);
                        let why = format!(
                            "this certificate ({}) already has {open} connections open to this node, its limit ([transport] max_connections_per_peer); reuse or close them",
                            identity.node_id
                        );
                        if let Some(conn) = refuse(stream, "per_peer", why) {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        return;
                    }
                };
                tracing::debug!(peer = %remote_addr, node = %identity.node_id, connection, "connection open");
                let conn = PeerConnection {
                    inner: stream,
                    info: PeerConnectInfo {
                        remote_addr,
                        identity,
                        connection,
                        refused: None,
                    },
                    cut: Box::pin(token.cancelled_owned()),
                    registry,
                    _permit: permit,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
        tracing::debug!("accept loop stopped");
    });
    rx
}
