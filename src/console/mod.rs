//! `dsnode audit serve`: the auditor's web console (issue 17). A local web
//! server, run by the auditor on its own machine, that acts as the
//! auditor's node (its certificate) towards the nodes it names and shows
//! what [`crate::audit`] verified: the data space, a ledger, a dataset's
//! provenance, a grant, who could use a dataset, and an uploaded evidence
//! bundle checked offline. Every page is read-only and built anew from the
//! live nodes; nothing it shows is taken on a node's word.
//!
//! Safe by default: loopback unless told otherwise; any other address
//! needs TLS (an ECDSA certificate, which browsers accept) and an access
//! token; every outside string is escaped by maud; every response carries
//! a Content-Security-Policy that allows no script at all, and the pages
//! need none.
//!
//! # Layout
//! - `mod.rs`: options, the listener (plain or TLS), the request guard
//!   (host, token, language, security headers), the handlers.
//! - `pages.rs`: the HTML of each page.
//! - [`svg`]: the provenance graph.
//! - [`lang`]: English and Chinese.

pub mod lang;
mod pages;
pub mod svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, VerifiedEntry};
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::Query as Filter;
use crate::ledger::entry::EntryKind;
use crate::peer::EntryQuery;
use crate::runtime::config::DataDir;
use crate::runtime::tls;
use crate::wire::client;
use lang::Lang;

/// Where the console listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
/// Entries on one page of the ledger view.
pub const PAGE_ENTRIES: u32 = 50;
/// Largest upload the bundle check reads (a bundle and a certificate).
pub const MAX_UPLOAD: usize = crate::audit::evidence::MAX_BUNDLE_BYTES + (1 << 20);
/// Largest CA certificate read from an upload.
const MAX_CA_PEM: usize = 64 << 10;
/// Connections served at once, at most.
const MAX_CONNECTIONS: usize = 64;
/// Pages built at once, at most (each reads every node).
const MAX_PAGES: usize = 8;
/// How long one request may take, reading its upload and every node.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The cookie that carries the access token (over TLS, with the
/// `__Host-` prefix: Secure, this host only, path `/`).
const TOKEN_COOKIE: &str = "dsnode_console_token";
const TOKEN_COOKIE_TLS: &str = "__Host-dsnode_console_token";
/// The cookie that keeps the language chosen with `?lang=`.
const LANG_COOKIE: &str = "dsnode_console_lang";

/// The policy every response carries: nothing but this console's own
/// stylesheet and images; no script, no frames, forms only to itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How the console is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The auditor's data dir: the node the console acts as.
    pub data_dir: PathBuf,
    /// The nodes to audit, `HOST:PORT`.
    pub peers: Vec<String>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The language when the request does not choose one (`None`: the
    /// browser's `Accept-Language`, then English).
    pub lang: Option<Lang>,
    /// TLS certificate chain (PEM); required, with the key, off loopback.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, ECDSA).
    pub tls_key: Option<PathBuf>,
    /// A file holding the access token (required off loopback; one is
    /// made up and printed if absent).
    pub token_file: Option<PathBuf>,
}

/// Why the console did not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The options are not safe or not usable.
    #[error("{0}")]
    Options(String),
    /// The auditor's credentials could not be loaded.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    /// The TLS certificate or key is not usable.
    #[error("the console's TLS certificate and key: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started console.
#[derive(Clone, Debug)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// The URL to open first (with the token, when there is one).
    pub url: String,
}

struct Console {
    peers: Vec<String>,
    pages: tokio::sync::Semaphore,
    client_tls: Arc<rustls::ClientConfig>,
    lang: Option<Lang>,
    token: Option<String>,
    secure: bool,
}

type Shared = Arc<Console>;

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ConsoleError> {
    tls::web_server_config(cert, key).map_err(ConsoleError::Tls)
}

fn load_token(options: &Options) -> Result<Option<String>, ConsoleError> {
    let Some(path) = &options.token_file else {
        if options.listen.ip().is_loopback() {
            return Ok(None);
        }
        // Made up here, printed once in the URL.
        let mut bytes = [0u8; 24];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        return Ok(Some(data_encoding::BASE64URL_NOPAD.encode(&bytes)));
    };
    let bytes =
        crate::fsutil::read_secret(path).map_err(|e| ConsoleError::Options(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let token = text.trim();
    // Characters that need no escaping in a URL or a cookie.
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if token.len() < 16 || !token.bytes().all(plain) {
        return Err(ConsoleError::Options(format!(
            "{}: the token must be at least 16 characters of A-Z a-z 0-9 - . _ ~",
            path.display()
        )));
    }
    Ok(Some(token.to_owned()))
}

/// Checks the options, binds, and serves until `stop`; `ready` is told the
/// address and the URL to open once the console listens.
pub async fn serve(
    options: Options,
    stop: CancellationToken,
    ready: impl FnOnce(&Started),
) -> Result<(), ConsoleError> {
    if options.peers.is_empty() {
        return Err(ConsoleError::Options(
            "name the nodes to audit: --peer HOST:PORT (repeatable)".into(),
        ));
    }
    let server_tls = match (&options.tls_cert, &options.tls_key) {
        (Some(c), Some(k)) => Some(Arc::new(server_tls(c, k)?)),
        (None, None) => None,
        _ => {
            return Err(ConsoleError::Options(
                "give both --tls-cert and --tls-key, or neither".into(),
            ));
        }
    };
    if !options.listen.ip().is_loopback() && server_tls.is_none() {
        return Err(ConsoleError::Options(format!(
            "--listen {} is not a loopback address: the console then needs TLS (--tls-cert and --tls-key, a P-256 certificate for the name the browser uses) and an access token (--token-file, or one is made up and printed)",
            options.listen
        )));
    }
    let token = load_token(&options)?;
    let creds = crate::node::load_credentials(&DataDir::new(&options.data_dir))?;
    let client_tls = tls::client_config(&creds.material)
        .map_err(|e| ConsoleError::Options(format!("the auditor's TLS credentials: {e}")))?;
    let listener =
        TcpListener::bind(options.listen)
            .await
            .map_err(|source| ConsoleError::Listen {
                addr: options.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen {
            addr: options.listen,
            source,
        })?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let url = match &token {
        Some(t) => format!("{scheme}://{host}/?token={t}"),
        None => format!("{scheme}://{host}/"),
    };
    let console = Arc::new(Console {
        pages: tokio::sync::Semaphore::new(MAX_PAGES),
        peers: options.peers,
        client_tls,
        lang: options.lang,
        token,
        secure: server_tls.is_some(),
    });
    ready(&Started { addr, url });
    accept_loop(listener, router(console), server_tls, stop).await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req.map(Body::new)).await }
    });
    let limits = crate::runtime::http::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: Duration::from_secs(10),
        max_buf_size: 64 * 1024,
        // Room for a few pages and an upload, each under its deadline.
        lifetime: REQUEST_DEADLINE * 5,
        keep_alive: true,
    };
    crate::runtime::http::serve(listener, server_tls, limits, service, stop, "console").await;
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(space))
        .route("/ledger/{node}", get(ledger))
        .route("/dataset/{id}", get(dataset))
        .route("/grant/{id}", get(grant))
        .route("/grant/{id}/bundle", get(bundle))
        .route(
            "/verify",
            get(verify_form)
                .post(verify_upload)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/who-could", get(who_could))
        .route("/console.css", get(stylesheet))
        .route("/favicon.ico", get(favicon))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// The request's language and whether the token came with it.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    lang: Lang,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    Query::<std::collections::HashMap<String, String>>::try_from_uri(uri)
        .ok()?
        .0
        .remove(name)
}

fn same(a: &str, b: &str) -> bool {
    // Equal-length comparison in constant time over the hashes.
    let h = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let (x, y) = (h(a), h(b));
    x.as_ref()
        .iter()
        .zip(y.as_ref())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// A loopback console without a token answers only to names that cannot
/// be rebound to it by someone else's DNS: IP literals and `localhost`.
fn host_allowed(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Runs a request with at most [`MAX_PAGES`] others at once (each may
/// talk to every node) and a deadline: a node that stops answering
/// costs a page, not the console.
async fn run_bounded(console: &Console, l: Lang, req: Request, next: Next) -> Response {
    let work = async {
        let _permit = console.pages.acquire().await;
        next.run(req).await
    };
    match tokio::time::timeout(REQUEST_DEADLINE, work).await {
        Ok(r) => r,
        Err(_) => pages::refused(
            l,
            StatusCode::GATEWAY_TIMEOUT,
            l.t(
                "The nodes did not answer in time; try again.",
                "节点未能及时响应，请重试。",
            ),
        ),
    }
}

async fn guard(State(console): State<Shared>, mut req: Request, next: Next) -> Response {
    let headers = req.headers().clone();
    let uri = req.uri().clone();
    let chosen = query_param(&uri, "lang").and_then(|l| Lang::parse(&l));
    let lang = chosen
        .or_else(|| cookie(&headers, LANG_COOKIE).and_then(Lang::parse))
        .or(console.lang)
        .or_else(|| {
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::from_accept)
        })
        .unwrap_or(Lang::En);
    let mut response = match &console.token {
        None if !host_allowed(&headers) => pages::refused(
            lang,
            StatusCode::MISDIRECTED_REQUEST,
            lang.t(
                "This console answers only to localhost or an IP address.",
                "本控制台只接受 localhost 或 IP 地址的访问。",
            ),
        ),
        None => {
            req.extensions_mut().insert(Ctx { lang });
            run_bounded(&console, lang, req, next).await
        }
        Some(token) => {
            let given = query_param(&uri, "token");
            let cookie_name = if console.secure {
                TOKEN_COOKIE_TLS
            } else {
                TOKEN_COOKIE
            };
            let presented = given
                .as_deref()
                .or_else(|| cookie(&headers, cookie_name))
                .or_else(|| {
                    headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                });
            match presented {
                Some(p) if same(p, token) => {
                    if given.is_some() {
                        // Into a cookie, and out of the address bar and
                        // the history.
                        let mut r = StatusCode::SEE_OTHER.into_response();
                        // One leading slash: never `//host`, another site.
                        let path = format!("/{}", req.uri().path().trim_start_matches('/'));
                        if let Ok(v) = HeaderValue::from_str(&path) {
                            r.headers_mut().insert(header::LOCATION, v);
                        }
                        let secure = if console.secure { "; Secure" } else { "" };
                        if let Ok(v) = HeaderValue::from_str(&format!(
                            "{cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
                        )) {
                            r.headers_mut().insert(header::SET_COOKIE, v);
                        }
                        r
                    } else {
                        req.extensions_mut().insert(Ctx { lang });
                        run_bounded(&console, lang, req, next).await
                    }
                }
                _ => pages::refused(
                    lang,
                    StatusCode::UNAUTHORIZED,
                    lang.t(
                        "This console needs its access token: open the address it printed when it started (…/?token=…).",
                        "本控制台需要访问令牌：请打开它启动时打印的地址（…/?token=…）。",
                    ),
                ),
            }
        }
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Some(l) = chosen
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={}; Path=/; SameSite=Strict",
            match l {
                Lang::En => "en",
                Lang::Zh => "zh",
            }
        ))
    {
        h.append(header::SET_COOKIE, v);
    }
    response
}

/// A node the console tried to reach.
struct Reached {
    addr: String,
    auditor: Result<Auditor, String>,
}

impl Reached {
    fn identity(&self) -> Option<&PeerIdentity> {
        self.auditor.as_ref().ok().map(Auditor::node)
    }
}

impl Console {
    /// Connects to every node at once, as the auditor's node.
    async fn reach(&self) -> Vec<Reached> {
        let settings = client::ClientSettings {
            connect_timeout: Duration::from_secs(5),
            ..client::ClientSettings::default()
        };
        futures_util::future::join_all(self.peers.iter().map(|addr| {
            let config = self.client_tls.clone();
            async move {
                let auditor = client::connect(config, addr, settings)
                    .await
                    .map(|c| Auditor::new(Box::new(c)))
                    .map_err(|e| {
                        let mut text = e.to_string();
                        let mut cause = std::error::Error::source(&e);
                        while let Some(c) = cause {
                            text.push_str(&format!(": {c}"));
                            cause = c.source();
                        }
                        text
                    });
                Reached {
                    addr: addr.clone(),
                    auditor,
                }
            }
        }))
        .await
    }
}

fn identities(reached: &[Reached]) -> Vec<PeerIdentity> {
    reached
        .iter()
        .filter_map(Reached::identity)
        .cloned()
        .collect()
}

async fn space(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut reached = console.reach().await;
    let known = identities(&reached);
    let mut nodes = Vec::new();
    for r in &mut reached {
        let survey = match &mut r.auditor {
            Ok(a) => crate::audit::space::survey(a, &known)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        nodes.push(survey);
    }
    let mut pairs = Vec::new();
    for i in 0..reached.len() {
        for j in i + 1..reached.len() {
            let (left, right) = reached.split_at_mut(j);
            let (Ok(a), Ok(b)) = (&mut left[i].auditor, &mut right[0].auditor) else {
                let why = ctx.lang.t(
                    "not reconciled: one of the two nodes was not reached",
                    "未对账：其中一个节点未能连接",
                );
                pairs.push((i, j, Err(why.to_owned())));
                continue;
            };
            let result = crate::audit::reconcile::reconcile(a, b, None)
                .await
                .map_err(|e| e.to_string());
            pairs.push((i, j, result));
        }
    }
    let mut datasets = Vec::new();
    let mut catalog_errors = Vec::new();
    for r in &mut reached {
        if let Ok(a) = &mut r.auditor {
            match crate::audit::provenance::catalog_facts(a).await {
                Ok(mut facts) => datasets.append(&mut facts),
                Err(e) => catalog_errors.push(format!("{}: {e}", r.addr)),
            }
        }
    }
    let view = pages::SpaceView {
        datasets,
        catalog_errors,
        nodes: reached
            .iter()
            .zip(nodes)
            .map(|(r, s)| (r.addr.clone(), r.identity().cloned(), s))
            .collect(),
        pairs,
    };
    pages::space(ctx.lang, &view)
}

/// The ledger view's query string.
#[derive(Debug, Default, Deserialize)]
struct LedgerParams {
    dataset: Option<String>,
    party: Option<String>,
    kind: Option<String>,
    grant: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// The next page's token (base64url).
    after: Option<String>,
    /// The tree size the pages run against.
    size: Option<u64>,
    /// Entries per page (default [`PAGE_ENTRIES`], at most 1000).
    limit: Option<u32>,
}

/// A time from a form: RFC 3339, or a `datetime-local` value (UTC).
fn parse_time(l: Lang, v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let rfc = time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(v, &rfc)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{v}:00Z"), &rfc))
        .or_else(|_| time::OffsetDateTime::parse(&format!("{v}Z"), &rfc))
        .map_err(|_| {
            format!(
                "`{v}` {}",
                l.t(
                    "is not a time such as 2026-12-01T08:00:00Z",
                    "不是有效时间，例如 2026-12-01T08:00:00Z"
                )
            )
        })?;
    Ok(Some(
        i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
    ))
}

fn ledger_filter(l: Lang, p: &LedgerParams) -> Result<Filter, String> {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Ok(Filter {
        dataset: given(&p.dataset),
        party: given(&p.party)
            .map(|p| p.parse().map_err(|e| format!("party: {e}")))
            .transpose()?,
        kind: given(&p.kind)
            .map(|k| EntryKind::parse(&k).map_err(|e| format!("kind: {e}")))
            .transpose()?,
        grant: given(&p.grant),
        since_ms: parse_time(l, p.since.as_deref())?,
        until_ms: parse_time(l, p.until.as_deref())?,
    })
}

async fn ledger(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(node): Path<String>,
    Query(params): Query<LedgerParams>,
) -> Response {
    let l = ctx.lang;
    let mut reached = console.reach().await;
    let known = identities(&reached);
    let Some(at) = reached
        .iter()
        .position(|r| r.identity().is_some_and(|i| i.node_id.to_string() == node))
    else {
        return pages::refused(
            l,
            StatusCode::NOT_FOUND,
            l.t(
                "No node the console audits (and reached) has this id.",
                "所审计且已连接的节点中没有该节点标识。",
            ),
        );
    };
    let result = match ledger_filter(l, &params) {
        Err(e) => Err((StatusCode::BAD_REQUEST, e)),
        Ok(filter) => {
            let page_token = match params.after.as_deref().filter(|a| !a.is_empty()) {
                None => Ok(Vec::new()),
                Some(a) => data_encoding::BASE64URL_NOPAD
                    .decode(a.as_bytes())
                    .map_err(|_| {
                        (
                            StatusCode::BAD_REQUEST,
                            "after: not a page token".to_owned(),
                        )
                    }),
            };
            match (page_token, &mut reached[at].auditor) {
                (Err(e), _) => Err(e),
                (Ok(page_token), Ok(a)) => a
                    .entries_page(EntryQuery {
                        filter,
                        limit: params.limit.unwrap_or(PAGE_ENTRIES).clamp(1, 1000),
                        page_token,
                        tree_size: params.size.unwrap_or(0),
                    })
                    .await
                    .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string())),
                (Ok(_), Err(e)) => Err((StatusCode::BAD_GATEWAY, e.clone())),
            }
        }
    };
    let view = pages::LedgerView {
        node: reached[at].identity().cloned(),
        addr: reached[at].addr.clone(),
        known,
        form: [
            ("dataset", params.dataset.clone()),
            ("party", params.party.clone()),
            ("kind", params.kind.clone()),
            ("grant", params.grant.clone()),
            ("since", params.since.clone()),
            ("until", params.until.clone()),
            ("limit", params.limit.map(|n| n.to_string())),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect(),
        first_page: params.after.as_deref().is_none_or(str::is_empty),
    };
    pages::ledger(l, &view, result)
}

async fn dataset(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let l = ctx.lang;
    if id.parse::<crate::dataset::DatasetId>().is_err() {
        return pages::refused(
            l,
            StatusCode::BAD_REQUEST,
            l.t("Not a dataset id.", "不是数据集标识。"),
        );
    }
    let mut reached = console.reach().await;
    // The catalogs first: they name the versions, sources and derivatives
    // whose publication the ledgers must then prove.
    let mut facts = std::collections::BTreeMap::new();
    let mut catalog_errors = Vec::new();
    for r in &mut reached {
        if let Ok(a) = &mut r.auditor {
            match crate::audit::provenance::catalog_facts(a).await {
                Ok(found) => facts.extend(found.into_iter().map(|f| (f.id.clone(), f))),
                Err(e) => catalog_errors.push(format!("{}: {e}", r.addr)),
            }
        }
    }
    let related = crate::audit::provenance::related(&id, &facts);
    let (mut ledgers, mut sides) = ledger_views(&mut reached, &id, &related).await;
    // A superseded version is in no catalog: its manifest comes with the
    // evidence of one of its grants, from the publisher.
    if !facts.contains_key(&id) {
        let grants: Vec<(NodeId, String)> = ledgers
            .iter()
            .flat_map(|l| l.entries.iter().map(move |e| (l, e)))
            .filter(|(l, e)| {
                e.draft.kind == EntryKind::AccessGranted
                    && e.draft.dataset.as_deref() == Some(id.as_str())
                    && e.draft.parties.first() == Some(&l.node)
            })
            .filter_map(|(l, e)| Some((l.node.clone(), e.draft.grant.clone()?)))
            .collect();
        'found: for (publisher, grant) in grants {
            for r in &mut reached {
                if let Ok(a) = &mut r.auditor
                    && a.node().node_id == publisher
                {
                    match crate::audit::provenance::facts_by_grant(a, &id, &grant).await {
                        Ok(Some(f)) => {
                            facts.insert(id.clone(), f);
                            // Its own manifest names its lineage and
                            // sources: read their publications too.
                            let related = crate::audit::provenance::related(&id, &facts);
                            (ledgers, sides) = ledger_views(&mut reached, &id, &related).await;
                            break 'found;
                        }
                        Ok(None) => {}
                        Err(e) => catalog_errors.push(format!("{}: {e}", r.addr)),
                    }
                }
            }
        }
    }
    let graph = crate::audit::provenance::Graph::build(&id, &ledgers, &facts);
    pages::dataset(
        l,
        &pages::DatasetView {
            id: id.clone(),
            facts: facts.get(&id).cloned(),
            catalog_errors,
            sides,
            graph,
        },
    )
}

/// Each reached node's proven entries about `id` and the `related`
/// publications and grants; and for each node, the checkpoint size they
/// were proven in, or why not.
async fn ledger_views(
    reached: &mut [Reached],
    id: &str,
    related: &(Vec<String>, Vec<String>),
) -> (Vec<crate::audit::provenance::LedgerView>, Vec<pages::Side>) {
    let mut ledgers = Vec::new();
    let mut sides = Vec::new();
    for r in reached.iter_mut() {
        let outcome: Result<u64, String> = match &mut r.auditor {
            Err(e) => Err(e.clone()),
            Ok(a) => match crate::audit::provenance::ledger_view(a, id, related).await {
                Ok(view) => {
                    let size = view.checkpoint_size;
                    ledgers.push(view);
                    Ok(size)
                }
                Err(e) => Err(e.to_string()),
            },
        };
        sides.push((r.addr.clone(), r.identity().cloned(), outcome));
    }
    (ledgers, sides)
}

/// Proven entries and their checkpoint's size, or why not.
type ProvenOrWhy = Result<(u64, Vec<VerifiedEntry>), String>;

/// A grant as the audited ledgers record it.
struct GrantFound {
    /// Index into the reached nodes of the publisher and the consumer.
    publisher: Option<usize>,
    consumer: Option<usize>,
    /// Each reached node's proven entries about the grant, with the size
    /// of the checkpoint they were proven in (or why not).
    entries: Vec<(usize, ProvenOrWhy)>,
}

async fn find_grant(reached: &mut [Reached], grant: &str) -> GrantFound {
    let mut found = GrantFound {
        publisher: None,
        consumer: None,
        entries: Vec::new(),
    };
    for (i, r) in reached.iter_mut().enumerate() {
        let Ok(a) = &mut r.auditor else { continue };
        let me = a.node().node_id.clone();
        let result = a
            .entries(
                Filter {
                    grant: Some(grant.to_owned()),
                    ..Filter::default()
                },
                true,
            )
            .await
            .map(|(cp, e)| (cp.checkpoint.size, e))
            .map_err(|e| e.to_string());
        if let Ok((_, entries)) = &result {
            // Each role only from the ledger of the node the entry names
            // in it: the publisher first, the consumer second; the first
            // such node given wins.
            for e in entries {
                let d = &e.entry.draft;
                match d.kind {
                    EntryKind::AccessGranted if d.parties.first() == Some(&me) => {
                        found.publisher.get_or_insert(i);
                    }
                    EntryKind::GrantReceived if d.parties.get(1) == Some(&me) => {
                        found.consumer.get_or_insert(i);
                    }
                    _ => {}
                }
            }
        }
        found.entries.push((i, result));
    }
    found
}

/// The proven entries of node `i` about the grant, if it was read.
fn entries_of(found: &GrantFound, i: usize) -> &[VerifiedEntry] {
    found
        .entries
        .iter()
        .find(|(j, _)| *j == i)
        .and_then(|(_, r)| r.as_ref().ok())
        .map_or(&[], |(_, e)| e.as_slice())
}

/// The grant's terms, from its publisher: the object its `AccessGranted`
/// entry hashes, signed by the publisher, issued to the consumer found.
async fn terms_of(
    l: Lang,
    reached: &mut [Reached],
    found: &GrantFound,
) -> Result<crate::exchange::grant::Grant, String> {
    let Some(p) = found.publisher else {
        return Err(l
            .t(
                "the publisher's ledger (its AccessGranted entry) is not among the audited nodes: the terms cannot be checked",
                "所审计的节点中没有发布方的账本（其授权条目）：无法核验条款",
            )
            .to_owned());
    };
    let granted = entries_of(found, p)
        .iter()
        .find(|e| e.entry.draft.kind == EntryKind::AccessGranted)
        .map(|e| e.entry.clone())
        .ok_or_else(|| "no AccessGranted entry".to_owned())?;
    let consumer = found
        .consumer
        .and_then(|c| reached[c].identity())
        .map(|i| i.node_id.clone());
    let Ok(a) = &mut reached[p].auditor else {
        return Err("the publisher was not reached".into());
    };
    let keys = a.keys().await.map_err(|e| e.to_string())?.clone();
    let grant = crate::audit::reconcile::granted_terms(a, &keys, &granted)
        .await
        .map_err(|e| e.to_string())?;
    let g = grant.value().clone();
    if granted.draft.parties.get(1) != Some(&g.grantee)
        || consumer.as_ref().is_some_and(|c| c != &g.grantee)
    {
        return Err(format!(
            "the grant is issued to {}, not to the consumer the ledgers name",
            g.grantee
        ));
    }
    Ok(g)
}

async fn grant(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let l = ctx.lang;
    if id.parse::<crate::exchange::grant::GrantId>().is_err() {
        return pages::refused(
            l,
            StatusCode::BAD_REQUEST,
            l.t("Not a grant id.", "不是授权标识。"),
        );
    }
    let mut reached = console.reach().await;
    let found = find_grant(&mut reached, &id).await;
    let terms = terms_of(l, &mut reached, &found).await;
    // The receipts the publisher (else the consumer) holds, each checked
    // against the consumer's ledger and key history.
    let mut receipts = Vec::new();
    let consumer_keys = match found.consumer.map(|c| &mut reached[c].auditor) {
        Some(Ok(a)) => a.keys().await.cloned().map_err(|e| e.to_string()),
        _ => Err(l
            .t(
                "the consumer's ledger is not among the audited nodes: receipts cannot be checked",
                "所审计的节点中没有使用方的账本：无法核验回执",
            )
            .to_owned()),
    };
    if let Some(h) = found.publisher.or(found.consumer)
        && let Ok(a) = &mut reached[h].auditor
    {
        match a.evidence(&id).await {
            Err(e) => receipts.push(Err(e.to_string())),
            Ok(ev) => {
                for text in &ev.receipts {
                    receipts.push(match (&consumer_keys, found.consumer) {
                        (Ok(keys), Some(c)) => crate::audit::reconcile::recorded_receipt(
                            text,
                            &id,
                            keys,
                            entries_of(&found, c),
                        )
                        .map_err(|e| e.to_string()),
                        (Err(e), _) => Err(e.clone()),
                        (Ok(_), None) => Err("no consumer".into()),
                    });
                }
            }
        }
    }
    let view = pages::GrantView {
        id: id.clone(),
        terms,
        receipts,
        publisher: found.publisher.and_then(|p| reached[p].identity().cloned()),
        consumer: found.consumer.and_then(|c| reached[c].identity().cloned()),
        timeline: found
            .entries
            .iter()
            .map(|(i, r)| {
                (
                    reached[*i].identity().cloned(),
                    reached[*i].addr.clone(),
                    r.clone(),
                )
            })
            .collect(),
        bundle: matches!((found.publisher, found.consumer), (Some(p), Some(c)) if p != c),
    };
    pages::grant(l, &view)
}

async fn bundle(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let l = ctx.lang;
    let Ok(grant_id) = id.parse::<crate::exchange::grant::GrantId>() else {
        return pages::refused(
            l,
            StatusCode::BAD_REQUEST,
            l.t("Not a grant id.", "不是授权标识。"),
        );
    };
    let mut reached = console.reach().await;
    let found = find_grant(&mut reached, &id).await;
    let (Some(p), Some(c)) = (found.publisher, found.consumer) else {
        return pages::refused(
            l,
            StatusCode::NOT_FOUND,
            l.t(
                "A bundle needs both the publisher's and the consumer's ledger: one of them was not found among the audited nodes.",
                "证据包需要发布方和使用方双方的账本：在审计的节点中未找到其中一方。",
            ),
        );
    };
    if p == c {
        return pages::refused(
            l,
            StatusCode::CONFLICT,
            l.t(
                "This grant's publisher and consumer are the same node: an evidence bundle needs two.",
                "该授权的发布方与使用方是同一节点：证据包需要双方。",
            ),
        );
    }
    let (left, right) = reached.split_at_mut(p.max(c));
    let (pa, ca) = if p < c {
        (&mut left[p].auditor, &mut right[0].auditor)
    } else {
        (&mut right[0].auditor, &mut left[c].auditor)
    };
    let (Ok(pa), Ok(ca)) = (pa, ca) else {
        return pages::refused(
            l,
            StatusCode::BAD_GATEWAY,
            l.t("A node was not reached.", "未能连接节点。"),
        );
    };
    match crate::audit::evidence::build(pa, ca, &id).await {
        Ok(b) => {
            let mut r = Response::new(Body::from(b.to_bytes()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"evidence-{grant_id}.json\""
            )) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => pages::refused(l, StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

async fn verify_form(axum::Extension(ctx): axum::Extension<Ctx>) -> Response {
    pages::verify(ctx.lang, None)
}

/// Reads one uploaded file, at most `max` bytes.
async fn field_bytes(
    field: &mut axum::extract::multipart::Field<'_>,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| e.body_text())? {
        if out.len() + chunk.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn verify_upload(
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let l = ctx.lang;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD as u64) {
        return pages::refused(
            l,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} {MAX_UPLOAD} {}",
                l.t("An upload may be at most", "上传内容最多"),
                l.t("bytes.", "字节。")
            ),
        );
    }
    let read = async {
        let mut multipart = multipart.map_err(|e| e.body_text())?;
        let (mut bundle, mut ca) = (None, None);
        while let Some(mut field) = multipart.next_field().await.map_err(|e| e.body_text())? {
            match field.name() {
                Some("bundle") => {
                    bundle = Some(
                        field_bytes(&mut field, crate::audit::evidence::MAX_BUNDLE_BYTES)
                            .await
                            .map_err(|e| format!("bundle: {e}"))?,
                    );
                }
                Some("ca") => {
                    ca = Some(
                        field_bytes(&mut field, MAX_CA_PEM)
                            .await
                            .map_err(|e| format!("CA certificate: {e}"))?,
                    );
                }
                _ => {}
            }
        }
        match (
            bundle.filter(|b| !b.is_empty()),
            ca.filter(|c| !c.is_empty()),
        ) {
            (Some(b), Some(c)) => Ok((b, c)),
            _ => Err(l
                .t(
                    "choose both files: the evidence bundle and the CA certificate (PEM)",
                    "请选择两个文件：证据包和 CA 证书（PEM）",
                )
                .to_owned()),
        }
    };
    let outcome = match read.await {
        Err(e) => Err(e),
        Ok((bundle, ca)) => tokio::task::spawn_blocking(move || {
            crate::audit::evidence::verify(&bundle, &ca).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the check stopped: {e}"))),
    };
    pages::verify(l, Some(outcome))
}

/// The who-could view's query string.
#[derive(Debug, Default, Deserialize)]
struct WhoCouldParams {
    dataset: Option<String>,
    at: Option<String>,
}

async fn who_could(
    State(console): State<Shared>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Query(params): Query<WhoCouldParams>,
) -> Response {
    let l = ctx.lang;
    let dataset = params.dataset.clone().unwrap_or_default().trim().to_owned();
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX);
    let at = match parse_time(l, params.at.as_deref()) {
        Ok(t) => t.unwrap_or(now),
        Err(e) => return pages::who_could(l, &dataset, params.at.as_deref(), Some(Err(e))),
    };
    if dataset.is_empty() {
        return pages::who_could(l, "", params.at.as_deref(), None);
    }
    if dataset.parse::<crate::dataset::DatasetId>().is_err() {
        let e = l
            .t("not a dataset id (ds_…)", "不是数据集标识（ds_…）")
            .to_owned();
        return pages::who_could(l, &dataset, params.at.as_deref(), Some(Err(e)));
    }
    let mut reached = console.reach().await;
    let mut outcome = Err(l
        .t(
            "no audited node records publishing this dataset",
            "所审计的节点中没有发布该数据集的记录",
        )
        .to_owned());
    for r in &mut reached {
        let Ok(a) = &mut r.auditor else { continue };
        let published = a
            .entries(
                Filter {
                    dataset: Some(dataset.clone()),
                    kind: Some(EntryKind::DatasetPublished),
                    ..Filter::default()
                },
                false,
            )
            .await;
        let me = a.node().node_id.clone();
        match published {
            // The publisher: the node whose own publication it is.
            Ok((_, e)) if e.iter().any(|e| e.entry.draft.parties.first() == Some(&me)) => {
                outcome = crate::audit::reconcile::who_could(a, &dataset, at)
                    .await
                    .map(|found| (a.node().clone(), at, found))
                    .map_err(|e| e.to_string());
                break;
            }
            Ok(_) => {}
            Err(e) => outcome = Err(format!("{}: {e}", r.addr)),
        }
    }
    pages::who_could(l, &dataset, params.at.as_deref(), Some(outcome))
}

async fn stylesheet() -> Response {
    let mut r = Response::new(Body::from(include_str!("console.css")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

async fn favicon() -> Response {
    let mut r = Response::new(Body::from(pages::FAVICON));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    r
}

async fn not_found(axum::Extension(ctx): axum::Extension<Ctx>) -> Response {
    let l = ctx.lang;
    pages::refused(
        l,
        StatusCode::NOT_FOUND,
        l.t("No such page.", "没有这个页面。"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_are_served_without_a_token() {
        let with = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).expect("header"));
            host_allowed(&h)
        };
        assert!(with("127.0.0.1:8480"));
        assert!(with("localhost:8480"));
        assert!(with("[::1]:8480"));
        assert!(with("LOCALHOST"));
        assert!(!with("attacker.example:8480"));
        assert!(!with("localhost.attacker.example"));
        assert!(!host_allowed(&HeaderMap::new()));
    }

    #[test]
    fn form_times_are_utc() {
        assert_eq!(
            parse_time(Lang::En, Some("2026-12-01T08:00")),
            Ok(Some(1_796_112_000_000))
        );
        assert_eq!(
            parse_time(Lang::En, Some("2026-12-01T08:00:00Z")),
            Ok(Some(1_796_112_000_000))
        );
        assert_eq!(parse_time(Lang::En, Some(" ")), Ok(None));
        assert!(parse_time(Lang::En, Some("yesterday")).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!same("abcdefghijklmnop", "abcdefghijklmno"));
        assert!(!same("abcdefghijklmnop", "abcdefghijklmnoq"));
    }
}
