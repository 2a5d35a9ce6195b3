//! Calling another node: a tonic channel over our own mutual-TLS connector,
//! which also reports the server's identity as its verified certificate
//! states it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::identity::PeerIdentity;
use tokio_stream::StreamExt;

use crate::envelope::Envelope;
use crate::peer::{
    AccessAsk, CatalogPage, CatalogQuery, CheckpointAnswer, CheckpointOffer, Code,
    ConsistencyAnswer, Dialer, EntryPage, EntryQuery, FetchAsk, FetchPart, FetchStream,
    GrantEvidence, InclusionAnswer, LatestCheckpoint, Peer, PeerError, PeerFuture, ReceiptTaken,
};

/// How long a receipt submission may take (as long as a silent publisher
/// is waited for during a transfer).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);
use crate::runtime::tls;
use crate::wire::pb;
use crate::wire::pb::ledger_client::LedgerClient;

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `HOST:PORT`.
    #[error(transparent)]
    Address(#[from] tls::AddressError),
    /// The address is not one an HTTP/2 endpoint can be made of.
    #[error("invalid peer address `{addr}`: {source}")]
    Endpoint {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// TCP or TLS failed; the message names the deepest cause.
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// The peer address.
        addr: String,
        /// The cause, e.g. "received fatal alert: CertificateRequired".
        reason: String,
    },
}

/// HTTP/2 settings of a client channel (see DESIGN.md, Transport).
#[derive(Clone, Copy, Debug)]
pub struct ClientSettings {
    /// TCP connect plus TLS handshake at most this long.
    pub connect_timeout: Duration,
    /// HTTP/2 stream flow-control window.
    pub stream_window: u32,
    /// HTTP/2 connection flow-control window.
    pub connection_window: u32,
    /// Largest HTTP/2 frame we accept.
    pub max_frame_size: u32,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stream_window: 4 << 20,
            connection_window: 8 << 20,
            max_frame_size: 256 << 10,
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// A connection to a peer node.
pub struct PeerChannel {
    /// The gRPC channel; clone it into any generated client.
    pub channel: Channel,
    /// The server's identity from its verified certificate.
    pub server: PeerIdentity,
}

/// Connects to `addr` (`HOST:PORT`) with mutual TLS, eagerly, so that a
/// refused handshake is reported here with its cause.
pub async fn connect(
    config: Arc<ClientConfig>,
    addr: &str,
    settings: ClientSettings,
) -> Result<PeerChannel, ConnectError> {
    let server_name = tls::server_name(addr)?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ConnectError::Endpoint {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(settings.connect_timeout)
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let seen: Arc<Mutex<Option<PeerIdentity>>> = Arc::default();
    let connector = {
        let seen = seen.clone();
        let addr = addr.to_owned();
        let tls = tokio_rustls::TlsConnector::from(config);
        tower::service_fn(move |_uri: http::Uri| {
            let (seen, addr, tls, server_name) =
                (seen.clone(), addr.clone(), tls.clone(), server_name.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let mut stream = tls.connect(server_name, tcp).await?;
                let identity = tls::peer_identity(stream.get_ref().1.peer_certificates())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                {
                    // A channel reconnects by itself: every connection must
                    // reach the node the first one verified.
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(first) = seen.as_ref()
                        && first.public_key != identity.public_key
                    {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "{addr} is now node {}, not node {} this channel connected to",
                                identity.node_id, first.node_id
                            ),
                        ));
                    }
                    *seen = Some(identity);
                }
                let first = await_server_preface(&mut stream).await?;
                Ok::<_, std::io::Error>(TokioIo::new(Prefixed::new(first, stream)))
            }
        })
    };
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Connect {
            addr: addr.to_owned(),
            reason: deepest_cause(&e),
        })?;
    let server = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| ConnectError::Connect {
            addr: addr.to_owned(),
            reason: "the connection carried no verified server certificate".into(),
        })?;
    Ok(PeerChannel { channel, server })
}

/// How long to wait for the server's first bytes after the handshake.
const PREFACE_WAIT: Duration = Duration::from_secs(3);

/// In TLS 1.3 the client finishes its handshake before the server has
/// checked the client certificate, so a refusal (revoked, expired, unknown
/// CA) arrives as an alert only on the first read. An HTTP/2 server sends
/// its SETTINGS frame first thing, so the connector reads once: an alert
/// becomes a clear error here instead of a "broken pipe" on the first call,
/// and the bytes read are replayed to hyper. A server that stays silent is
/// used as is after [`PREFACE_WAIT`].
async fn await_server_preface<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16 << 10];
    match tokio::time::timeout(PREFACE_WAIT, stream.read(&mut buf)).await {
        Err(_) => Ok(Vec::new()),
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the peer closed the connection right after the TLS handshake",
        )),
        Ok(Ok(n)) => {
            buf.truncate(n);
            Ok(buf)
        }
        Ok(Err(e)) => Err(std::io::Error::new(
            e.kind(),
            format!("the peer refused this node's certificate: {e}"),
        )),
    }
}

/// A stream with some bytes already read from it, replayed first.
struct Prefixed<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(head: Vec<u8>, inner: S) -> Self {
        Self {
            head,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The innermost error message of a chain: tonic wraps the useful TLS
/// reason in several layers.
pub fn deepest_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Peer for PeerChannel {
    fn identity(&self) -> &PeerIdentity {
        &self.server
    }

    fn request_access(&self, request: AccessAsk) -> PeerFuture<'_, Envelope> {
        Box::pin(async move {
            let answer = pb::exchange_client::ExchangeClient::new(self.channel.clone())
                .request_access(pb::RequestAccessRequest::from(request))
                .await?
                .into_inner();
            let pb::RequestAccessResponse { grant } = answer;
            grant.map(Into::into).ok_or_else(|| {
                PeerError::new(Code::Internal, "the publisher answered without a grant")
            })
        })
    }

    fn fetch(&self, request: FetchAsk) -> PeerFuture<'_, FetchStream> {
        Box::pin(async move {
            let mut exchange = pb::exchange_client::ExchangeClient::new(self.channel.clone())
                .max_decoding_message_size(
                    *crate::dataset::CHUNK_SIZE_RANGE.end() as usize + (64 << 10),
                );
            let stream = exchange
                .fetch(pb::FetchRequest::from(request))
                .await?
                .into_inner()
                .map(|m| m.map_err(PeerError::from).and_then(FetchPart::try_from));
            Ok(Box::pin(stream) as FetchStream)
        })
    }

    fn submit_receipt(&self, receipt: &Envelope) -> PeerFuture<'_, ReceiptTaken> {
        let mut submit = tonic::Request::new(pb::SubmitReceiptRequest {
            receipt: Some(receipt.into()),
        });
        submit.set_timeout(RECEIPT_TIMEOUT);
        Box::pin(async move {
            let answer = pb::exchange_client::ExchangeClient::new(self.channel.clone())
                .submit_receipt(submit)
                .await?
                .into_inner();
            Ok(answer.into())
        })
    }

    fn key_rotations(&self) -> PeerFuture<'_, Vec<Vec<u8>>> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner();
            Ok(r.key_rotations)
        })
    }

    fn exchange_checkpoints(&self, offer: CheckpointOffer) -> PeerFuture<'_, CheckpointAnswer> {
        Box::pin(async move {
            let r = pb::peering_client::PeeringClient::new(self.channel.clone())
                .exchange_checkpoints(pb::ExchangeCheckpointsRequest::from(offer))
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    fn prove_consistency(&self, old: u64, new: u64) -> PeerFuture<'_, ConsistencyAnswer> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .prove_consistency(pb::ProveConsistencyRequest {
                    old_size: old,
                    new_size: new,
                })
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    // Ledger reads (the auditor's questions).

    fn checkpoint(&self) -> PeerFuture<'_, LatestCheckpoint> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    fn query_entries(&self, query: EntryQuery) -> PeerFuture<'_, EntryPage> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .query_entries(pb::QueryEntriesRequest::from(query))
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    fn prove_inclusion(&self, index: u64, size: u64) -> PeerFuture<'_, InclusionAnswer> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .prove_inclusion(pb::ProveInclusionRequest {
                    target: Some(pb::prove_inclusion_request::Target::Index(index)),
                    tree_size: size,
                })
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    fn evidence<'a>(&'a self, grant: &'a str) -> PeerFuture<'a, GrantEvidence> {
        Box::pin(async move {
            let r = LedgerClient::new(self.channel.clone())
                .get_evidence(pb::GetEvidenceRequest {
                    grant_id: grant.to_owned(),
                })
                .await?
                .into_inner();
            Ok(r.into())
        })
    }

    fn catalog_page(&self, query: CatalogQuery) -> PeerFuture<'_, CatalogPage> {
        Box::pin(async move {
            let r = pb::catalog_client::CatalogClient::new(self.channel.clone())
                .list_datasets(pb::ListDatasetsRequest {
                    text: query.text,
                    classification: query.classification,
                    publisher: String::new(),
                    limit: 1000,
                    page_token: query.page_token,
                })
                .await?
                .into_inner();
            let mut datasets = Vec::with_capacity(r.datasets.len());
            for e in r.datasets {
                let Some(manifest) = e.manifest else {
                    return Err(PeerError::new(
                        Code::DataLoss,
                        format!("the catalog lists {} without its manifest", e.dataset_id),
                    ));
                };
                datasets.push((e.dataset_id, manifest.into()));
            }
            Ok(CatalogPage {
                datasets,
                next_page_token: r.next_page_token,
            })
        })
    }
}

/// Dials other nodes with this node's current client TLS configuration
/// (replaced when the CRL is reloaded).
pub struct TlsDialer {
    tls: tls::ClientConfigCell,
    settings: ClientSettings,
}

impl TlsDialer {
    /// A dialer presenting the certificate of `tls`.
    pub fn new(tls: tls::ClientConfigCell) -> Self {
        Self {
            tls,
            settings: ClientSettings::default(),
        }
    }

    /// A connection to `addr` as a channel (for the calls that are not on
    /// [`Peer`] yet).
    pub async fn channel(&self, addr: &str) -> Result<PeerChannel, PeerError> {
        connect(self.tls.current(), addr, self.settings)
            .await
            .map_err(|e| PeerError::unreachable(e.to_string()))
    }
}

impl Dialer for TlsDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> PeerFuture<'a, Box<dyn Peer>> {
        Box::pin(async move { Ok(Box::new(self.channel(addr).await?) as Box<dyn Peer>) })
    }

    /// The stream window divided among the streams (at least 256 KiB),
    /// the connection's twice that.
    fn dial_stream<'a>(&'a self, addr: &'a str, streams: usize) -> PeerFuture<'a, Box<dyn Peer>> {
        let share = u32::try_from(streams.max(1)).unwrap_or(u32::MAX);
        let stream_window = (self.settings.stream_window / share).max(256 << 10);
        let settings = ClientSettings {
            stream_window,
            connection_window: stream_window.saturating_mul(2),
            ..self.settings
        };
        Box::pin(async move {
            let channel = connect(self.tls.current(), addr, settings)
                .await
                .map_err(|e| PeerError::unreachable(e.to_string()))?;
            Ok(Box::new(channel) as Box<dyn Peer>)
        })
    }
}
