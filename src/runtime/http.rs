//! The node's small HTTP/1.1 listeners (metrics, tlog-tiles, the auditor
//! console): one accept loop with the same guards for all — a cap on
//! connections (past it a connection is dropped at once), a header
//! deadline, a bounded buffer, a TLS handshake deadline, and a lifetime
//! after which a connection is closed, so a client that stops reading
//! cannot keep a slot.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The guards of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request's headers (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// Largest request head buffered.
    pub max_buf_size: usize,
    /// The longest a connection is served.
    pub lifetime: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
}

/// Serves `service` on `listener` (over TLS with `tls`) with `limits`,
/// until `stop`; `what` names the listener in logs.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    service: S,
    stop: CancellationToken,
    what: &'static str,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // full: drop the connection
        };
        let (service, acceptor, stop) = (service.clone(), acceptor.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let http = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_buf_size)
                .keep_alive(limits.keep_alive)
                .to_owned();
            let served = async {
                match acceptor {
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, what, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => Ok(()),
                        }
                    }
                }
            };
            tokio::select! {
                r = tokio::time::timeout(limits.lifetime, served) => match r {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, what, "connection ended"),
                    Err(_) => tracing::debug!(%peer, what, "connection closed after its lifetime"),
                    Ok(Ok(())) => {}
                },
                () = stop.cancelled() => {}
            }
        });
    }
}
