//! Calling another node: a tonic channel over our own mutual-TLS connector,
//! which also reports the server's identity as its verified certificate
//! states it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::identity::PeerIdentity;
use crate::tls;

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `HOST:PORT`.
    #[error("{0}")]
    Address(String),
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
    let server_name = tls::server_name(addr).map_err(ConnectError::Address)?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError::Address(format!("invalid peer address `{addr}`: {e}")))?
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
                let stream = tls.connect(server_name, tcp).await?;
                let identity = tls::peer_identity(stream.get_ref().1.peer_certificates())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(identity);
                Ok::<_, std::io::Error>(TokioIo::new(stream))
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
        .take()
        .ok_or_else(|| ConnectError::Connect {
            addr: addr.to_owned(),
            reason: "the connection carried no verified server certificate".into(),
        })?;
    Ok(PeerChannel { channel, server })
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
