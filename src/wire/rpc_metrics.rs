//! Counting every RPC by its final gRPC status, as a tower layer in front
//! of the services. Labels come from a fixed set (the RPCs of the role ×
//! RPC table, gRPC codes), never from a peer.
//!
//! The same layer sees every status the node sends, and makes each safe
//! to send ([`tidy_status`]): messages often quote the request, so each is
//! cut to [`MESSAGE_MAX`] bytes and escaped (a 3.9 MB field once came
//! back as a 3.9 MB `grpc-message`, past the header limit of common
//! clients); and a request body tonic could not decode, which it answers
//! `Internal`, is answered `InvalidArgument`: the caller's mistake, not
//! the node's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::runtime::metrics::Metrics;
use crate::text::{MESSAGE_MAX, is_plain, shown_at_most};

/// How tonic begins its message for a request body it could not decode.
const UNDECODABLE: &str = "failed to decode Protobuf message";

/// Bytes percent-encoded in a `grpc-message` (the gRPC spec: anything
/// outside printable ASCII, and `%`).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Makes the status in `headers` (response headers of a trailers-only
/// answer, or trailers) safe to send: the message cut to [`MESSAGE_MAX`]
/// bytes and escaped, an undecodable request `InvalidArgument`.
pub fn tidy_status(headers: &mut http::HeaderMap) {
    let Some(message) = headers.get("grpc-message") else {
        return;
    };
    let text = percent_encoding::percent_decode(message.as_bytes())
        .decode_utf8_lossy()
        .into_owned();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|c| tonic::Code::from_bytes(c.as_bytes()) == tonic::Code::Internal);
    let undecodable = internal && text.starts_with(UNDECODABLE);
    if !undecodable && is_plain(&text, MESSAGE_MAX) {
        return;
    }
    let text = if undecodable {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
        format!(
            "the request is not a valid protobuf message of this RPC's request type: {}",
            text.trim_start_matches(UNDECODABLE)
                .trim_start_matches(':')
                .trim()
        )
    } else {
        text
    };
    let shown = shown_at_most(&text, MESSAGE_MAX).to_string();
    let encoded = percent_encoding::utf8_percent_encode(&shown, GRPC_MESSAGE).to_string();
    if let Ok(value) = http::HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", value);
    }
}

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
            let mut response = future.await?;
            // An immediate error is trailers-only: its status is here.
            tidy_status(response.headers_mut());
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
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    tidy_status(trailers);
                }
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

    fn status(code: tonic::Code, message: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from(code as i32));
        let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
        h.insert("grpc-message", encoded.parse().expect("header"));
        h
    }

    fn message(h: &http::HeaderMap) -> String {
        let v = h.get("grpc-message").expect("message");
        percent_encoding::percent_decode(v.as_bytes())
            .decode_utf8()
            .expect("utf-8")
            .into_owned()
    }

    #[test]
    fn a_status_echoing_a_huge_or_hostile_value_is_cut_and_escaped() {
        let huge = format!("classification `{}` is unknown", "x".repeat(3_900_000));
        let mut h = status(tonic::Code::InvalidArgument, &huge);
        tidy_status(&mut h);
        let m = message(&h);
        assert!(m.len() < MESSAGE_MAX + 40, "{}", m.len());
        assert!(m.ends_with("(3900028 bytes in all)"), "{m}");
        assert_eq!(h["grpc-status"], "3");

        let mut h = status(tonic::Code::NotFound, "no dataset `a\nb\u{1b}`");
        tidy_status(&mut h);
        assert_eq!(message(&h), "no dataset `a\\nb\\u{1b}`");

        // Plain messages pass untouched, Chinese included.
        let mut h = status(tonic::Code::PermissionDenied, "用途 `marketing` 不在许可中");
        let before = h.clone();
        tidy_status(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn an_undecodable_request_is_the_callers_mistake() {
        let mut h = status(
            tonic::Code::Internal,
            "failed to decode Protobuf message: invalid wire type value: 7",
        );
        tidy_status(&mut h);
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(
            message(&h),
            "the request is not a valid protobuf message of this RPC's request type: invalid wire type value: 7"
        );
        // The node's own internal errors stay Internal.
        let mut h = status(
            tonic::Code::Internal,
            "internal error while reading; see the node's log",
        );
        tidy_status(&mut h);
        assert_eq!(h["grpc-status"], "13");
    }
}
