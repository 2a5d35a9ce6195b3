//! Metrics in the Prometheus (OpenMetrics) text format, and the small
//! plain-HTTP listener that serves them.
//!
//! The listener (`metrics_listen` in `node.toml`; off unless set, and
//! `dsnode init` sets it to loopback) answers `GET /metrics`, `GET
//! /healthz` (the process is up) and `GET /readyz` (200 only while the
//! node is SERVING: after its start-up checks, before shutdown starts), for
//! scrapers and orchestrators' probes that cannot present a client
//! certificate. It carries no data and accepts no input beyond the path.
//!
//! Every label value comes from a fixed set (RPC names from the role × RPC
//! table, gRPC codes, handshake failure reasons), never from a peer, so a
//! peer cannot grow the metric families.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Labels of one RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: String,
    method: String,
    code: String,
}

/// A single bounded label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// A handshake failure reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// A connection limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: &'static str,
}

/// One node's metrics.
pub struct Metrics {
    registry: Registry,
    rpc: Family<RpcLabels, Counter>,
    decisions: Family<Kind, Counter>,
    transfers: Family<Kind, Counter>,
    bytes_served: Counter,
    handshake_failures: Family<Reason, Counter>,
    connections_refused: Family<Limit, Counter>,
    peer_limited: Family<Limit, Counter>,
    denials_coalesced: Counter,
    ledger_size: Gauge,
    open_connections: Gauge,
    batch_size: Histogram,
    append_seconds: Histogram,
    witness: Family<Kind, Counter>,
    forks: Counter,
    scrubs: Family<Kind, Counter>,
    scrubbed: Counter,
    verified: Gauge,
    /// Serialises scrapes (they mirror counters kept elsewhere).
    scrape: Mutex<()>,
    ready: AtomicBool,
    /// Why the node is not serving, for `/readyz`.
    not_ready: Mutex<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dsnode");
        let rpc = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests served, by RPC and final status code",
            rpc.clone(),
        );
        let decisions = Family::<Kind, Counter>::default();
        registry.register(
            "access_decisions",
            "Access requests answered: granted, denied (by policy), fetch_refused",
            decisions.clone(),
        );
        let transfers = Family::<Kind, Counter>::default();
        registry.register(
            "transfers",
            "Transfers served: started (a counted fetch), resumed, failed",
            transfers.clone(),
        );
        let bytes_served = Counter::default();
        registry.register(
            "transfer_bytes_served",
            "Dataset bytes sent to grantees",
            bytes_served.clone(),
        );
        let handshake_failures = Family::<Reason, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused or timed out, by reason",
            handshake_failures.clone(),
        );
        let connections_refused = Family::<Limit, Counter>::default();
        registry.register(
            "connections_refused",
            "Verified connections refused by a limit (per_peer: \
             [transport] max_connections_per_peer; global: max_connections)",
            connections_refused.clone(),
        );
        let peer_limited = Family::<Limit, Counter>::default();
        registry.register(
            "peer_limited",
            "Calls refused by a per-peer limit of [limits] (peer_writes, live_grants)",
            peer_limited.clone(),
        );
        let denials_coalesced = Counter::default();
        registry.register(
            "access_denials_coalesced",
            "Access refusals counted in the window of an identical one instead of \
             recorded at once ([limits] denial_window)",
            denials_coalesced.clone(),
        );
        let ledger_size = Gauge::default();
        registry.register(
            "ledger_entries",
            "Entries in the ledger (its latest checkpoint's size)",
            ledger_size.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Verified mutual-TLS connections open",
            open_connections.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "ledger_append_batch_entries",
            "Entries per committed ledger batch",
            batch_size.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 14));
        registry.register(
            "ledger_append_batch_seconds",
            "Time to commit a ledger batch (hash, write, fsync, sign)",
            append_seconds.clone(),
        );
        let witness = Family::<Kind, Counter>::default();
        registry.register(
            "witness_exchanges",
            "Checkpoint exchanges with peers, by outcome (cosigned, refused, failed), and submissions to external witnesses (external_cosigned, external_refused, external_failed)",
            witness.clone(),
        );
        let forks = Counter::default();
        registry.register(
            "forks_detected",
            "Forks found in peers' logs (evidence kept in witness/forks/)",
            forks.clone(),
        );
        let scrubs = Family::<Kind, Counter>::default();
        registry.register(
            "ledger_scrubs",
            "Background verifications of the whole ledger, by outcome: passed, tampered (the node is NOT_SERVING), failed (could not read; retried)",
            scrubs.clone(),
        );
        let scrubbed = Counter::default();
        registry.register(
            "ledger_scrubbed_entries",
            "Ledger entries re-verified by the background scrub",
            scrubbed.clone(),
        );
        let verified = Gauge::default();
        registry.register(
            "ledger_verified_entries",
            "Entries the last completed scrub pass verified in full (0 until one completes)",
            verified.clone(),
        );
        Self {
            registry,
            rpc,
            decisions,
            transfers,
            bytes_served,
            handshake_failures,
            connections_refused,
            peer_limited,
            denials_coalesced,
            ledger_size,
            open_connections,
            batch_size,
            append_seconds,
            witness,
            forks,
            scrubs,
            scrubbed,
            verified,
            scrape: Mutex::new(()),
            ready: AtomicBool::new(false),
            not_ready: Mutex::new("starting".into()),
        }
    }

    /// An access request was granted.
    pub fn granted(&self) {
        self.decision("granted");
    }

    /// An access request was denied by the policy.
    pub fn denied(&self) {
        self.decision("denied");
    }

    /// A call was refused by the per-peer limit `limit`.
    pub fn peer_limited(&self, limit: &'static str) {
        self.peer_limited.get_or_create(&Limit { limit }).inc();
    }

    /// A refusal was counted in the window of an identical one.
    pub fn denial_coalesced(&self) {
        self.denials_coalesced.inc();
    }

    /// A fetch was refused (stolen, expired, revoked, used up).
    pub fn fetch_refused(&self) {
        self.decision("fetch_refused");
    }

    fn decision(&self, kind: &'static str) {
        self.decisions.get_or_create(&Kind { kind }).inc();
    }

    /// A transfer event: `started`, `resumed` or `failed`.
    pub fn transfer(&self, kind: &'static str) {
        self.transfers.get_or_create(&Kind { kind }).inc();
    }

    /// Dataset bytes sent.
    pub fn served(&self, bytes: u64) {
        self.bytes_served.inc_by(bytes);
    }

    /// A checkpoint exchange ended: `cosigned`, `refused` or `failed`.
    pub fn witnessed(&self, kind: &'static str) {
        self.witness.get_or_create(&Kind { kind }).inc();
    }

    /// A fork was found in a peer's log.
    pub fn fork_detected(&self) {
        self.forks.inc();
    }

    /// A scrub pass ended: `passed`, `tampered` or `failed`.
    pub fn scrub_ended(&self, kind: &'static str) {
        self.scrubs.get_or_create(&Kind { kind }).inc();
    }

    /// The scrub checked `entries` more entries.
    pub fn scrubbed(&self, entries: u64) {
        self.scrubbed.inc_by(entries);
    }

    /// The ledger's first `size` entries were verified in full.
    pub fn set_verified(&self, size: u64) {
        self.verified.set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// A ledger batch committed.
    pub fn committed(&self, entries: usize, took: Duration) {
        self.batch_size.observe(entries as f64);
        self.append_seconds.observe(took.as_secs_f64());
    }

    /// Whether the node is serving (its health status).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the node is serving, and if not why (shown by `/readyz`).
    pub fn set_readiness(&self, why_not: Option<&str>) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why_not.unwrap_or("").to_owned();
        self.set_ready(why_not.is_none());
    }

    fn why_not_ready(&self) -> String {
        self.not_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Counts one finished RPC by its service, method and final gRPC code
    /// (every value from a fixed set: [`crate::wire::rpc_metrics`]).
    pub fn rpc_done(&self, service: String, method: String, code: String) {
        self.rpc
            .get_or_create(&RpcLabels {
                service,
                method,
                code,
            })
            .inc();
    }

    /// The text exposition, with the values kept elsewhere (ledger size,
    /// connections, handshake failures) read now.
    pub fn render(
        &self,
        ledger_size: u64,
        connections: &crate::runtime::tls::ConnectionRegistry,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.ledger_size
            .set(i64::try_from(ledger_size).unwrap_or(i64::MAX));
        self.open_connections
            .set(i64::try_from(connections.open_count()).unwrap_or(i64::MAX));
        for (reason, n) in connections.handshake_failures_by_reason() {
            let c = self.handshake_failures.get_or_create(&Reason { reason });
            c.inc_by(n.saturating_sub(c.get()));
        }
        for (limit, n) in connections.refusals_by_limit() {
            let c = self.connections_refused.get_or_create(&Limit { limit });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What the metrics listener needs of the node.
pub struct Scrape {
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Its ledger (for its size), once opened.
    pub ledger: std::sync::OnceLock<crate::ledger::Ledger>,
    /// Its connections (open count, handshake failures).
    pub connections: Arc<crate::runtime::tls::ConnectionRegistry>,
}

/// Connections the metrics listener serves at once, at most.
const MAX_SCRAPERS: usize = 16;

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 on
/// `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>, stop: CancellationToken) {
    let service = hyper::service::service_fn(move |req| {
        let scrape = scrape.clone();
        async move { Ok::<_, Infallible>(answer(&req, &scrape)) }
    });
    // One request per connection, so idle scrapers hold no slot.
    let limits = crate::runtime::http::Limits {
        max_connections: MAX_SCRAPERS,
        header_timeout: Duration::from_secs(5),
        max_buf_size: 16 * 1024,
        lifetime: Duration::from_secs(30),
        keep_alive: false,
    };
    crate::runtime::http::serve(listener, None, limits, service, stop, "metrics").await;
}

fn answer<B>(req: &Request<B>, scrape: &Scrape) -> Response<http_body_util::Full<Bytes>> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    let plain = "text/plain; charset=utf-8";
    if req.method() != http::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "only GET is served here\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let size = scrape
                .ledger
                .get()
                .and_then(crate::ledger::Ledger::latest)
                .map_or(0, |c| c.checkpoint.size);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                scrape.metrics.render(size, &scrape.connections),
            )
        }
        "/healthz" => text(StatusCode::OK, plain, "alive\n".into()),
        "/readyz" if scrape.metrics.is_ready() => text(StatusCode::OK, plain, "serving\n".into()),
        "/readyz" => {
            let why = scrape.metrics.why_not_ready();
            let body = if why.is_empty() {
                "not serving\n".to_owned()
            } else {
                format!("not serving: {why}\n")
            };
            text(StatusCode::SERVICE_UNAVAILABLE, plain, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            plain,
            "paths: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_mirrors_handshake_failures_and_sizes() {
        let m = Metrics::new();
        m.granted();
        m.committed(3, Duration::from_millis(2));
        let registry = crate::runtime::tls::ConnectionRegistry::default();
        let text = m.render(42, &registry);
        assert!(text.contains("dsnode_ledger_entries 42"), "{text}");
        assert!(
            text.contains("dsnode_access_decisions_total{kind=\"granted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dsnode_ledger_append_batch_entries_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
