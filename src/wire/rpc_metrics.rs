//! Counting every RPC by its final gRPC status, as a tower layer in front
//! of the services. Labels come from a fixed set (the RPCs of the role ×
//! RPC table, gRPC codes), never from a peer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::runtime::metrics::Metrics;

/// The service and method of a gRPC path, if it is one this node serves;
/// anything else is `unknown`, so no label comes from a peer.
fn rpc_labels(path: &str) -> (String, String) {
    const OPEN: [&str; 4] = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let known = OPEN.contains(&path) || super::authz::RPC_ACCESS.iter().any(|(p, _)| *p == path);
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if known => (service.to_owned(), method.to_owned()),
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

fn code_name(value: &http::HeaderValue) -> String {
    format!("{:?}", tonic::Code::from_bytes(value.as_bytes()))
}

/// A tower layer counting every RPC by its final gRPC status (from the
/// response headers for an immediate error, from the trailers otherwise;
/// a stream the client abandoned counts as `Cancelled`).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (service, method) = rpc_labels(req.uri().path());
        let metrics = self.metrics.clone();
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            // An immediate error is trailers-only: its status is here.
            if let Some(code) = response.headers().get("grpc-status") {
                metrics.rpc_done(service, method, code_name(code));
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(CountedBody {
                    inner: body,
                    pending: Some((metrics, service, method)),
                })
            }))
        })
    }
}

/// A response body that records its RPC's status when the trailers pass.
struct CountedBody {
    inner: tonic::body::Body,
    pending: Option<(Arc<Metrics>, String, String)>,
}

impl CountedBody {
    fn record(&mut self, code: String) {
        if let Some((metrics, service, method)) = self.pending.take() {
            metrics.rpc_done(service, method, code);
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let code = code_name(code);
                    self.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.record("Unknown".into()),
            Poll::Ready(None) => self.record("Unknown".into()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        // Dropped before its trailers: the client went away.
        self.record("Cancelled".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_only_from_the_rpc_table() {
        assert_eq!(
            rpc_labels("/dataspace.v1.Exchange/Fetch"),
            ("dataspace.v1.Exchange".into(), "Fetch".into())
        );
        assert_eq!(
            rpc_labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".into(), "Check".into())
        );
        for junk in [
            "/grpc.health.v1.Health/x1",
            "/a/b",
            "",
            "/dataspace.v1.Exchange/Fetch2",
        ] {
            assert_eq!(rpc_labels(junk), ("unknown".into(), "unknown".into()));
        }
        let v = http::HeaderValue::from_static("7");
        assert_eq!(code_name(&v), "PermissionDenied");
        let junk = http::HeaderValue::from_static("x");
        assert_eq!(code_name(&junk), "Unknown");
    }
}
