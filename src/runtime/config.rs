//! A node's data directory and its `node.toml`, in two stages: serde reads
//! a [`RawConfig`] (unknown keys rejected with their line), which is then
//! validated into a [`Config`] that the node runs from.
//!
//! Data dir layout (operators and scripts may rely on it):
//!
//! | path | what |
//! |---|---|
//! | `node.toml` | this node's configuration |
//! | `node.key` | Ed25519 signing key (node id, signatures), PKCS#8 v1 PEM (v2 files load too), mode 0600 |
//! | `tls.key` | ECDSA P-256 TLS key (the certificate's key), PKCS#8 PEM, mode 0600 |
//! | `node.csr` | certificate signing request for the operator (the TLS key, binding the Ed25519 key) |
//! | `node.crt` | node certificate, written by `dsnode ca issue --out DIR/node.crt` |
//! | `ca.crt` | the data-space CA certificate |
//! | `crl.pem` | the CA's current CRL, distributed by the operator |
//! | `node.vkey` | C2SP verifier key of the node's ledger checkpoints (public) |
//! | `ledger/` | the node's ledger |
//! | `datasets/` | manifests and chunk lists of the datasets this node published |
//! | `grants/` | grants this node holds (`held/`), DSSE JSON (issued grants are ledger records; `issued/`: those of earlier versions); receipts it signed (`received/`) and took as publisher (`taken/`) |
//! | `blobs/` | chunks of published datasets, by SHA-256 (`sha256/`; in a bucket instead with `[storage] kind = "s3"`); received datasets, one read-only file each named by its chunk list's SHA-256, and fetches in progress (`packs/`, `packs/partial/`) |
//! | `s3.credentials` | optional: the object store's key (`[storage] credentials_file`), mode 0600 |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::fsutil::{self, FileError};

/// The environment variable naming the default data dir of client commands.
pub const DATA_DIR_ENV: &str = "DSNODE_DATA_DIR";

/// Paths inside a node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `node.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("node.toml")
    }
    /// `node.key`: the Ed25519 signing key (node id, signatures).
    pub fn key(&self) -> PathBuf {
        self.root.join("node.key")
    }
    /// `tls.key`: the ECDSA P-256 TLS key its certificate carries.
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls.key")
    }
    /// `tls.next.key`: the TLS key a rotation will switch to.
    pub fn next_tls_key(&self) -> PathBuf {
        self.root.join("tls.next.key")
    }
    /// `node.next.key`: the key a rotation will switch to.
    pub fn next_key(&self) -> PathBuf {
        self.root.join("node.next.key")
    }
    /// `node.next.csr`: its certificate signing request.
    pub fn next_csr(&self) -> PathBuf {
        self.root.join("node.next.csr")
    }
    /// `retired/`: certificates of keys this node retired (to revoke).
    pub fn retired(&self) -> PathBuf {
        self.root.join("retired")
    }
    /// `node.csr`.
    pub fn csr(&self) -> PathBuf {
        self.root.join("node.csr")
    }
    /// `node.crt`.
    pub fn cert(&self) -> PathBuf {
        self.root.join("node.crt")
    }
    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// `crl.pem`.
    pub fn crl(&self) -> PathBuf {
        self.root.join("crl.pem")
    }
    /// `node.vkey`.
    pub fn vkey(&self) -> PathBuf {
        self.root.join("node.vkey")
    }
    /// `ledger/`.
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger")
    }
    /// `datasets/`: published manifests and chunk lists.
    pub fn datasets(&self) -> PathBuf {
        self.root.join("datasets")
    }
    /// `grants/`: grants held (`held/`), and issued by earlier versions
    /// (`issued/`; issued grants are ledger records now).
    pub fn grants(&self) -> PathBuf {
        self.root.join("grants")
    }
    /// `witness/`: peers' checkpoints seen, cosignatures received, fork
    /// evidence.
    pub fn witness(&self) -> PathBuf {
        self.root.join("witness")
    }
    /// `seen-versions.json`: the highest version seen of each publisher's
    /// lineages, to notice a catalog rolled back
    /// ([`crate::dataset::seen`]).
    pub fn seen_versions(&self) -> PathBuf {
        self.root.join("seen-versions.json")
    }
    /// `blobs/`.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// `blobs/packs/`: received datasets, one file each.
    pub fn packs(&self) -> PathBuf {
        self.blobs().join("packs")
    }
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `node.toml` could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// `node.toml` is not valid TOML or has unknown keys or bad values.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// toml's message, with line and column and the offending key.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        /// The config file.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A duration written the human way: "10s", "5m", "1h 30m".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration `{text}` ({e}): expected e.g. \"10s\", \"5m\", \"1h\""
                ))
            })
    }
}

/// `node.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on for gRPC over mutual TLS.
    pub listen: SocketAddr,
    /// Plain-HTTP address for `/metrics`, `/healthz`, `/readyz`; none: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Transport limits; every key optional.
    #[serde(default)]
    pub transport: RawTransport,
    /// Checkpoint witnessing; every key optional.
    #[serde(default)]
    pub witness: RawWitness,
    /// Where published datasets' chunks are stored.
    #[serde(default)]
    pub storage: RawStorage,
    /// The C2SP tlog-tiles listener; off unless `listen` is set.
    #[serde(default)]
    pub tiles: RawTiles,
    /// The ledger's background scrub; every key optional.
    #[serde(default)]
    pub ledger: RawLedger,
    /// What one peer may cost this node; every key optional.
    #[serde(default)]
    pub limits: RawLimits,
}

/// `[limits]` as written; see [`LimitsConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawLimits {
    pub peer_write_rate: Option<u32>,
    pub peer_write_burst: Option<u32>,
    pub peer_denial_rate: Option<u32>,
    pub peer_denial_burst: Option<u32>,
    pub denial_window: Option<HumanDuration>,
    pub max_live_grants_per_peer: Option<usize>,
    pub max_fetch_streams_per_peer: Option<usize>,
    pub fetch_buffer_mib: Option<u32>,
}

/// What one certified peer may cost this node, so that it cannot degrade
/// the node for the others: calls that write to the ledger (RequestAccess,
/// Fetch, SubmitReceipt, ExchangeCheckpoints) are rate-limited per peer,
/// identical refusals are recorded once per window with a count, and live
/// grants per grantee are capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Ledger-writing calls a second one peer may make, on average.
    pub peer_write_rate: u32,
    /// Ledger-writing calls one peer may make at once after a quiet spell.
    pub peer_write_burst: u32,
    /// Refusals of one peer recorded a second, on average, beyond the
    /// identical repeats `denial_window` counts.
    pub peer_denial_rate: u32,
    /// Such refusals recorded at once after a quiet spell.
    pub peer_denial_burst: u32,
    /// Identical access refusals of one peer within this window are
    /// recorded once, with a count; zero records each.
    pub denial_window: Duration,
    /// Grants to one grantee live at once (not expired, not revoked).
    pub max_live_grants_per_peer: usize,
    /// Fetch streams one peer may have open at once.
    pub max_fetch_streams_per_peer: usize,
    /// MiB of chunks all fetch streams together may hold in memory (each
    /// stream reserves its read-ahead and queue when it opens).
    pub fetch_buffer_mib: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            peer_write_rate: 50,
            peer_write_burst: 200,
            peer_denial_rate: 1,
            peer_denial_burst: 20,
            denial_window: Duration::from_secs(60),
            max_live_grants_per_peer: 1000,
            max_fetch_streams_per_peer: 16,
            fetch_buffer_mib: 256,
        }
    }
}

/// `[ledger]` as written; see [`LedgerConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawLedger {
    pub scrub_rate: Option<u64>,
    pub scrub_interval: Option<HumanDuration>,
}

/// The ledger's background scrub: after start-up (which checks only what
/// is new since the verified mark) the whole ledger is verified again,
/// paced at `scrub_rate` entries a second, and again every
/// `scrub_interval` after a pass starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Entries checked per second; 0 turns the scrub off.
    pub scrub_rate: u64,
    /// From the start of one pass to the start of the next.
    pub scrub_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            scrub_rate: 20_000,
            scrub_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[tiles]` as written; see [`TilesConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawTiles {
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The read-only C2SP `tlog-tiles` listener ([`crate::tiles`]): the
/// checkpoint and hash tiles, which hold only hashes and sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TilesConfig {
    /// Where to serve them; `None`: off.
    pub listen: Option<SocketAddr>,
    /// A certificate chain and key (PEM) to serve them over TLS; `None`:
    /// plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `[storage]` as written; see [`Storage`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawStorage {
    pub kind: Option<String>,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub credentials_file: Option<PathBuf>,
}

/// Where a node keeps the chunks of the datasets it publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// Files under `blobs/` in the data dir.
    #[default]
    Local,
    /// Objects in an S3-compatible bucket.
    S3(S3Config),
}

/// An S3-compatible object store: where, and where its credentials are.
/// The credentials themselves are never in `node.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host:port` of the S3 API.
    pub endpoint: String,
    /// The bucket holding the node's chunks (it must exist).
    pub bucket: String,
    /// Key prefix of the node's objects in the bucket (no leading `/`).
    pub prefix: String,
    /// The region requests are signed for.
    pub region: String,
    /// Whether a plain-HTTP endpoint is allowed.
    pub allow_http: bool,
    /// A file holding the credentials (TOML: `access_key_id`,
    /// `secret_access_key`, optional `session_token`); `None`: the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`).
    pub credentials_file: Option<PathBuf>,
}

/// Whether `name` follows S3's bucket naming rules: 3 to 63 lower-case
/// letters, digits, `.` and `-`, starting with a letter or digit.
pub fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// The default S3 region (servers that ignore regions accept it).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// An access key for an object store. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The credentials, from `credentials_file` (relative to `data_dir`)
    /// or else from the environment; the message says which was tried.
    pub fn credentials(&self, data_dir: &DataDir) -> Result<S3Credentials, String> {
        if let Some(file) = &self.credentials_file {
            let path = data_dir.root().join(file);
            let bytes = fsutil::read_secret(&path).map_err(|e| e.to_string())?;
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
            // toml's own message quotes the offending line, which may hold
            // the secret: only its line number and what was wrong are said.
            let creds: S3Credentials = toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                format!(
                    "{}{}: {} (expected access_key_id = \"…\" and secret_access_key = \"…\")",
                    path.display(),
                    line.map(|l| format!(" line {l}")).unwrap_or_default(),
                    e.message()
                )
            })?;
            if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
                return Err(format!(
                    "{}: access_key_id and secret_access_key must not be empty",
                    path.display()
                ));
            }
            return Ok(creds);
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => Err(format!(
                "no credentials for bucket `{}`: set storage.credentials_file in node.toml, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the node's environment",
                self.bucket
            )),
        }
    }
}

/// `[witness]` as written; see [`WitnessConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawWitness {
    pub peers: Option<Vec<String>>,
    pub interval: Option<HumanDuration>,
    pub external: Option<Vec<RawExternalWitness>>,
    pub external_interval: Option<HumanDuration>,
}

/// One `[witness] external` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawExternalWitness {
    pub url: String,
    pub vkey: String,
}

/// Which peers this node exchanges checkpoints with on its own (it also
/// does with every publisher it fetches from), and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    /// `HOST:PORT` of nodes to witness (and be witnessed by): at start-up,
    /// before serving, and every `interval`.
    pub peers: Vec<String>,
    /// Time between exchanges with each peer.
    pub interval: Duration,
    /// Independent C2SP tlog-witness services to submit checkpoints to.
    pub external: Vec<crate::witness::external::ExternalWitness>,
    /// Least time between two submissions to the external witnesses.
    pub external_interval: Duration,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            interval: Duration::from_secs(300),
            external: Vec::new(),
            external_interval: Duration::from_secs(10),
        }
    }
}

/// `[transport]` as written; every key optional, see [`TransportConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawTransport {
    pub handshake_timeout: Option<HumanDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub max_connection_age: Option<HumanDuration>,
    pub max_connection_age_grace: Option<HumanDuration>,
    pub max_concurrent_streams: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub max_pending_accept_reset_streams: Option<usize>,
    pub max_local_error_reset_streams: Option<usize>,
    pub keepalive_interval: Option<HumanDuration>,
    pub keepalive_timeout: Option<HumanDuration>,
    pub concurrency_limit_per_connection: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub max_frame_size: Option<u32>,
    pub stream_window: Option<u32>,
    pub connection_window: Option<u32>,
    pub max_decoding_message_size: Option<usize>,
    pub crl_reload_interval: Option<HumanDuration>,
    pub drain_deadline: Option<HumanDuration>,
}

/// Transport limits and tuning (DESIGN.md, Transport). tonic leaves most
/// HTTP/2 guards off; every one is set here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// A TLS handshake not finished in this time is dropped (slow-loris).
    pub handshake_timeout: Duration,
    /// Verified connections open at most; more are refused. The node's
    /// own certificate is not counted (its operator always gets in).
    pub max_connections: usize,
    /// Verified connections one certificate may hold open at most; more
    /// are refused, naming this limit, so that one participant cannot
    /// take every slot.
    pub max_connections_per_peer: usize,
    /// TLS handshakes in progress at most; past it the oldest pending one
    /// is dropped (slow-loris connections never queue real clients).
    pub max_handshakes: usize,
    /// After this age a connection is closed gracefully (bounds how long a
    /// peer keeps a connection after its certificate is revoked).
    pub max_connection_age: Duration,
    /// After `max_connection_age`, in-flight calls get this long to finish
    /// before the connection is cut.
    pub max_connection_age_grace: Duration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header list accepted (bytes).
    pub max_header_list_size: u32,
    /// Streams reset by the client before the server accepted them, at
    /// most (rapid-reset guard).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset for protocol errors before it sends
    /// GOAWAY (error-reset flood guard).
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// A ping not answered in this time closes the connection.
    pub keepalive_timeout: Duration,
    /// In-flight requests per connection.
    pub concurrency_limit_per_connection: usize,
    /// In-flight requests across all connections.
    pub max_in_flight: usize,
    /// HTTP/2 frame size (about 256 KiB for bulk transfers).
    pub max_frame_size: u32,
    /// HTTP/2 stream flow-control window.
    pub stream_window: u32,
    /// HTTP/2 connection flow-control window.
    pub connection_window: u32,
    /// Largest gRPC message any service decodes (bytes).
    pub max_decoding_message_size: usize,
    /// How often `crl.pem` is checked for changes (SIGHUP reloads at once).
    pub crl_reload_interval: Duration,
    /// How long in-flight calls may run after shutdown starts.
    pub drain_deadline: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_connections_per_peer: 64,
            max_handshakes: 256,
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(60),
            max_concurrent_streams: 128,
            max_header_list_size: 16 << 10,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 32,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            concurrency_limit_per_connection: 64,
            max_in_flight: 1024,
            max_frame_size: 256 << 10,
            stream_window: 4 << 20,
            connection_window: 8 << 20,
            max_decoding_message_size: 4 << 20,
            crl_reload_interval: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(20),
        }
    }
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node's data directory.
    pub data_dir: DataDir,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Plain-HTTP address for `/metrics`, `/healthz` and `/readyz`
    /// (unauthenticated: keep it on loopback or a private network); `None`
    /// turns the listener off.
    pub metrics_listen: Option<SocketAddr>,
    /// Transport limits.
    pub transport: TransportConfig,
    /// Checkpoint witnessing.
    pub witness: WitnessConfig,
    /// Where published datasets' chunks are stored.
    pub storage: Storage,
    /// The tlog-tiles listener.
    pub tiles: TilesConfig,
    /// The ledger's background scrub.
    pub ledger: LedgerConfig,
    /// What one peer may cost this node.
    pub limits: LimitsConfig,
    /// The clock policy and grant windows are checked against (the system
    /// clock; tests inject one).
    pub clock: crate::clock::Clock,
}

impl Config {
    /// A configuration with default transport settings, for code and tests.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: DataDir::new(data_dir),
            listen,
            metrics_listen: None,
            transport: TransportConfig::default(),
            witness: WitnessConfig::default(),
            storage: Storage::Local,
            tiles: TilesConfig::default(),
            ledger: LedgerConfig::default(),
            limits: LimitsConfig::default(),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Reads and validates `node.toml` of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let dir = DataDir::new(data_dir);
        let path = dir.config();
        let text = fsutil::read_to_string(&path)?;
        Self::parse(dir, &path.display().to_string(), &text)
    }

    fn parse(data_dir: DataDir, path: &str, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::validate(data_dir, path, raw)
    }

    fn validate(data_dir: DataDir, path: &str, raw: RawConfig) -> Result<Self, ConfigError> {
        let d = TransportConfig::default();
        let t = raw.transport;
        let dur = |v: Option<HumanDuration>, default: Duration| v.map_or(default, |h| h.0);
        let transport = TransportConfig {
            handshake_timeout: dur(t.handshake_timeout, d.handshake_timeout),
            max_connections: t.max_connections.unwrap_or(d.max_connections),
            max_connections_per_peer: t
                .max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            max_handshakes: t.max_handshakes.unwrap_or(d.max_handshakes),
            max_connection_age: dur(t.max_connection_age, d.max_connection_age),
            max_connection_age_grace: dur(t.max_connection_age_grace, d.max_connection_age_grace),
            max_concurrent_streams: t.max_concurrent_streams.unwrap_or(d.max_concurrent_streams),
            max_header_list_size: t.max_header_list_size.unwrap_or(d.max_header_list_size),
            max_pending_accept_reset_streams: t
                .max_pending_accept_reset_streams
                .unwrap_or(d.max_pending_accept_reset_streams),
            max_local_error_reset_streams: t
                .max_local_error_reset_streams
                .unwrap_or(d.max_local_error_reset_streams),
            keepalive_interval: dur(t.keepalive_interval, d.keepalive_interval),
            keepalive_timeout: dur(t.keepalive_timeout, d.keepalive_timeout),
            concurrency_limit_per_connection: t
                .concurrency_limit_per_connection
                .unwrap_or(d.concurrency_limit_per_connection),
            max_in_flight: t.max_in_flight.unwrap_or(d.max_in_flight),
            max_frame_size: t.max_frame_size.unwrap_or(d.max_frame_size),
            stream_window: t.stream_window.unwrap_or(d.stream_window),
            connection_window: t.connection_window.unwrap_or(d.connection_window),
            max_decoding_message_size: t
                .max_decoding_message_size
                .unwrap_or(d.max_decoding_message_size),
            crl_reload_interval: dur(t.crl_reload_interval, d.crl_reload_interval),
            drain_deadline: dur(t.drain_deadline, d.drain_deadline),
        };
        let invalid = |key: &'static str, problem: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem: problem.to_owned(),
        };
        // HTTP/2 (RFC 9113 §6.5.2) bounds the frame size.
        if !(16_384..=16_777_215).contains(&transport.max_frame_size) {
            return Err(invalid(
                "transport.max_frame_size",
                "must be between 16384 and 16777215 bytes",
            ));
        }
        let positive: [(&'static str, bool); 10] = [
            ("transport.max_connections", transport.max_connections > 0),
            (
                "transport.max_connections_per_peer",
                transport.max_connections_per_peer > 0,
            ),
            ("transport.max_handshakes", transport.max_handshakes > 0),
            (
                "transport.max_concurrent_streams",
                transport.max_concurrent_streams > 0,
            ),
            ("transport.max_in_flight", transport.max_in_flight > 0),
            (
                "transport.concurrency_limit_per_connection",
                transport.concurrency_limit_per_connection > 0,
            ),
            (
                "transport.max_decoding_message_size",
                transport.max_decoding_message_size > 0,
            ),
            (
                "transport.handshake_timeout",
                !transport.handshake_timeout.is_zero(),
            ),
            (
                "transport.max_connection_age",
                !transport.max_connection_age.is_zero(),
            ),
            (
                "transport.crl_reload_interval",
                !transport.crl_reload_interval.is_zero(),
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(invalid(key, "must be greater than zero"));
        }
        let mut external: Vec<crate::witness::external::ExternalWitness> = Vec::new();
        for e in raw.witness.external.unwrap_or_default() {
            let w = crate::witness::external::ExternalWitness::parse(&e.url, &e.vkey)
                .map_err(|why| invalid("witness.external", &why))?;
            if external.iter().any(|o| o.name == w.name) {
                return Err(invalid(
                    "witness.external",
                    &format!("witness key name `{}` is given twice", w.name),
                ));
            }
            external.push(w);
        }
        let witness = WitnessConfig {
            peers: raw.witness.peers.unwrap_or_default(),
            interval: dur(raw.witness.interval, WitnessConfig::default().interval),
            external,
            external_interval: dur(
                raw.witness.external_interval,
                WitnessConfig::default().external_interval,
            ),
        };
        if witness.external_interval < Duration::from_millis(100) {
            return Err(invalid(
                "witness.external_interval",
                "must be at least 100ms",
            ));
        }
        if witness.interval < Duration::from_secs(1) {
            return Err(invalid("witness.interval", "must be at least 1s"));
        }
        if let Some(bad) = witness.peers.iter().find(|p| {
            p.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(invalid(
                "witness.peers",
                &format!("`{bad}` is not HOST:PORT"),
            ));
        }
        let storage = Self::storage(raw.storage, &invalid)?;
        let tiles = TilesConfig {
            listen: raw.tiles.listen,
            tls: match (raw.tiles.tls_cert, raw.tiles.tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "tiles.tls_cert",
                        "give tls_cert and tls_key together",
                    ));
                }
            },
        };
        let ledger = LedgerConfig {
            scrub_rate: raw
                .ledger
                .scrub_rate
                .unwrap_or(LedgerConfig::default().scrub_rate),
            scrub_interval: dur(
                raw.ledger.scrub_interval,
                LedgerConfig::default().scrub_interval,
            ),
        };
        if !(Duration::from_secs(1)..=Duration::from_secs(366 * 86_400))
            .contains(&ledger.scrub_interval)
        {
            return Err(invalid(
                "ledger.scrub_interval",
                "must be between 1s and 366 days",
            ));
        }
        let d = LimitsConfig::default();
        let limits = LimitsConfig {
            peer_write_rate: raw.limits.peer_write_rate.unwrap_or(d.peer_write_rate),
            peer_write_burst: raw.limits.peer_write_burst.unwrap_or(d.peer_write_burst),
            peer_denial_rate: raw.limits.peer_denial_rate.unwrap_or(d.peer_denial_rate),
            peer_denial_burst: raw.limits.peer_denial_burst.unwrap_or(d.peer_denial_burst),
            denial_window: dur(raw.limits.denial_window, d.denial_window),
            max_live_grants_per_peer: raw
                .limits
                .max_live_grants_per_peer
                .unwrap_or(d.max_live_grants_per_peer),
            max_fetch_streams_per_peer: raw
                .limits
                .max_fetch_streams_per_peer
                .unwrap_or(d.max_fetch_streams_per_peer),
            fetch_buffer_mib: raw.limits.fetch_buffer_mib.unwrap_or(d.fetch_buffer_mib),
        };
        for (key, ok) in [
            ("limits.peer_write_rate", limits.peer_write_rate > 0),
            ("limits.peer_write_burst", limits.peer_write_burst > 0),
            ("limits.peer_denial_rate", limits.peer_denial_rate > 0),
            ("limits.peer_denial_burst", limits.peer_denial_burst > 0),
            (
                "limits.max_live_grants_per_peer",
                limits.max_live_grants_per_peer > 0,
            ),
            (
                "limits.max_fetch_streams_per_peer",
                limits.max_fetch_streams_per_peer > 0,
            ),
        ] {
            if !ok {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        // One stream of the largest chunks (16 MiB, read ahead and queued)
        // must fit.
        if !(96..=65_536).contains(&limits.fetch_buffer_mib) {
            return Err(invalid(
                "limits.fetch_buffer_mib",
                "must be between 96 (one stream of 16 MiB chunks) and 65536",
            ));
        }
        if limits.denial_window > Duration::from_secs(86_400) {
            return Err(invalid("limits.denial_window", "must be at most 24h"));
        }
        Ok(Self {
            data_dir,
            listen: raw.listen,
            metrics_listen: raw.metrics_listen,
            transport,
            witness,
            storage,
            tiles,
            ledger,
            limits,
            clock: crate::clock::Clock::system(),
        })
    }

    fn storage(
        raw: RawStorage,
        invalid: &dyn Fn(&'static str, &str) -> ConfigError,
    ) -> Result<Storage, ConfigError> {
        match raw.kind.as_deref().unwrap_or("local") {
            "local" => {
                let set = [
                    ("storage.endpoint", raw.endpoint.is_some()),
                    ("storage.bucket", raw.bucket.is_some()),
                    ("storage.prefix", raw.prefix.is_some()),
                    ("storage.region", raw.region.is_some()),
                    ("storage.allow_http", raw.allow_http.is_some()),
                    ("storage.credentials_file", raw.credentials_file.is_some()),
                ];
                if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(invalid(key, "applies only with kind = \"s3\""));
                }
                Ok(Storage::Local)
            }
            "s3" => {
                let endpoint = raw
                    .endpoint
                    .ok_or_else(|| invalid("storage.endpoint", "is required with kind = \"s3\""))?;
                let allow_http = raw.allow_http.unwrap_or(false);
                let endpoint = endpoint.trim_end_matches('/').to_owned();
                match endpoint.split_once("://") {
                    Some(("https", host)) if !host.is_empty() => {}
                    Some(("http", host)) if !host.is_empty() => {
                        if !allow_http {
                            return Err(invalid(
                                "storage.endpoint",
                                "is plain http: set storage.allow_http = true to allow it (credentials and data then cross the network unencrypted)",
                            ));
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "storage.endpoint",
                            &format!("`{endpoint}` is not an http(s)://HOST[:PORT] URL"),
                        ));
                    }
                }
                let bucket = raw
                    .bucket
                    .ok_or_else(|| invalid("storage.bucket", "is required with kind = \"s3\""))?;
                if !is_bucket_name(&bucket) {
                    return Err(invalid(
                        "storage.bucket",
                        &format!(
                            "`{bucket}` is not an S3 bucket name (3 to 63 lower-case letters, digits, `.` and `-`)"
                        ),
                    ));
                }
                let prefix = raw.prefix.unwrap_or_default();
                let prefix = prefix.trim_end_matches('/').to_owned();
                if !prefix.is_empty()
                    && prefix
                        .split('/')
                        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                {
                    return Err(invalid(
                        "storage.prefix",
                        &format!(
                            "`{prefix}` is not a key prefix (no leading `/`, no empty, `.` or `..` segment)"
                        ),
                    ));
                }
                Ok(Storage::S3(S3Config {
                    endpoint,
                    bucket,
                    prefix,
                    region: raw.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_owned()),
                    allow_http,
                    credentials_file: raw.credentials_file,
                }))
            }
            other => Err(invalid(
                "storage.kind",
                &format!("`{other}` is not a storage kind: \"local\" or \"s3\""),
            )),
        }
    }

    /// The `node.toml` text `dsnode init` writes: the listen address and
    /// the transport defaults, commented, so operators see what they can set.
    pub fn initial_toml(listen: SocketAddr, metrics_listen: Option<SocketAddr>) -> String {
        let d = TransportConfig::default();
        let metrics = match metrics_listen {
            Some(a) => format!("metrics_listen = \"{a}\"\n"),
            None => "# metrics_listen = \"127.0.0.1:9464\"\n".to_owned(),
        };
        format!(
            "# dsnode node configuration. Reference: docs/configuration.md\n\
             # Identity (participant, roles, region) comes from node.crt, never from here.\n\
             listen = \"{listen}\"\n\
             # Plain HTTP: /metrics, /healthz, /readyz. Unauthenticated: loopback or a private network.\n\
             {metrics}\
             \n\
             [transport]\n\
             # handshake_timeout = \"{}\"\n\
             # max_connections = {}\n\
             # max_connections_per_peer = {}\n\
             # max_connection_age = \"{}\"\n\
             # max_connection_age_grace = \"{}\"\n\
             # max_concurrent_streams = {}\n\
             # crl_reload_interval = \"{}\"\n\
             # drain_deadline = \"{}\"\n",
            humantime::format_duration(d.handshake_timeout),
            d.max_connections,
            d.max_connections_per_peer,
            humantime::format_duration(d.max_connection_age),
            humantime::format_duration(d.max_connection_age_grace),
            d.max_concurrent_streams,
            humantime::format_duration(d.crl_reload_interval),
            humantime::format_duration(d.drain_deadline),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(DataDir::new("/tmp/x"), "node.toml", text)
    }

    #[test]
    fn initial_toml_parses_to_the_defaults() {
        let cfg = parse(&Config::initial_toml(
            "127.0.0.1:7443".parse().expect("addr"),
            Some("127.0.0.1:9464".parse().expect("addr")),
        ))
        .expect("parse");
        assert_eq!(cfg.listen.port(), 7443);
        assert_eq!(cfg.metrics_listen.map(|a| a.port()), Some(9464));
        let off = parse(&Config::initial_toml(
            "127.0.0.1:7443".parse().expect("addr"),
            None,
        ))
        .expect("parse");
        assert_eq!(off.metrics_listen, None);
        assert_eq!(cfg.transport.max_concurrent_streams, 128);
    }

    /// Every key `[section]` accepts, sorted (serde lists them all when
    /// it refuses an unknown one).
    fn accepted_keys(section: &str) -> Vec<String> {
        let err = parse(&format!(
            "listen = \"127.0.0.1:1\"\n[{section}]\nno_such_key = 1\n"
        ))
        .expect_err("unknown")
        .to_string();
        // serde lists the fields as "expected one of `a`, `b`, …" or
        // "expected `a` or `b`".
        let expected = err.split("expected").nth(1).expect("field list");
        let mut accepted: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        accepted.sort();
        accepted
    }

    /// docs/configuration.md names every `[transport]` key with the
    /// default the code uses.
    #[test]
    fn the_configuration_reference_matches_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        let table = doc
            .split("## `[transport]`")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("a [transport] section");
        let mut documented = Vec::new();
        let mut toml = String::from("listen = \"127.0.0.1:1\"\n[transport]\n");
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`');
            let default = cells[2].trim_matches('`');
            documented.push(key.to_owned());
            toml.push_str(&format!("{key} = {default}\n"));
        }
        // The documented defaults are the code's defaults...
        let cfg = parse(&toml).expect("documented defaults parse");
        assert_eq!(cfg.transport, TransportConfig::default());
        // ...and every key the code accepts is documented (serde lists
        // them all when it refuses an unknown one).
        documented.sort();
        assert_eq!(accepted_keys("transport"), documented);
    }

    /// The keys a docs/configuration.md table names, sorted.
    fn documented_keys(table: &str) -> Vec<String> {
        let mut documented: Vec<String> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.split('|')
                    .nth(1)
                    .expect("key")
                    .trim()
                    .trim_matches('`')
                    .to_owned()
            })
            .collect();
        documented.sort();
        documented
    }

    /// docs/configuration.md names every `[witness]` and `[tiles]` key;
    /// external witnesses need a verifiable vkey.
    #[test]
    fn the_witness_and_tiles_references_match_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        for section in ["witness", "tiles", "ledger", "limits"] {
            let table = doc
                .split(&format!("## `[{section}]`"))
                .nth(1)
                .and_then(|t| t.split("\n## ").next())
                .unwrap_or_else(|| panic!("a [{section}] section"));
            assert_eq!(
                accepted_keys(section),
                documented_keys(table),
                "[{section}]"
            );
        }
        let tiles =
            parse("listen = \"127.0.0.1:1\"\n[tiles]\nlisten = \"0.0.0.0:8481\"\n").expect("tiles");
        assert_eq!(tiles.tiles.listen.map(|a| a.port()), Some(8481));
        assert!(parse("listen = \"127.0.0.1:1\"\n[tiles]\ntls_cert = \"a.crt\"\n").is_err());
        let bad = parse(
            "listen = \"127.0.0.1:1\"\n[witness]\nexternal = [{ url = \"http://w.example\", vkey = \"w+00000000+AAAA\" }]\n",
        )
        .expect_err("a vkey that does not verify");
        assert!(bad.to_string().contains("witness.external"), "{bad}");
    }

    /// docs/configuration.md names every `[storage]` key, and the
    /// defaults it gives are the code's.
    #[test]
    fn the_storage_reference_matches_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        let table = doc
            .split("## `[storage]`")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("a [storage] section");
        assert_eq!(accepted_keys("storage"), documented_keys(table));
        assert!(table.contains("| `kind` | `\"local\"` |"));
        assert!(table.contains(&format!("| `region` | `\"{DEFAULT_S3_REGION}\"` |")));
        assert!(table.contains("| `prefix` | `\"\"` |"));
        assert!(table.contains("| `allow_http` | `false` |"));
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\n").expect("local").storage,
            Storage::Local
        );
        let s3 = parse(
            "listen = \"127.0.0.1:1\"\n[storage]\nkind = \"s3\"\nendpoint = \"https://s3.example/\"\nbucket = \"city-data\"\n",
        )
        .expect("s3");
        assert_eq!(
            s3.storage,
            Storage::S3(S3Config {
                endpoint: "https://s3.example".into(),
                bucket: "city-data".into(),
                prefix: String::new(),
                region: DEFAULT_S3_REGION.into(),
                allow_http: false,
                credentials_file: None,
            })
        );
    }

    /// The compose overlay's `[storage]` section is one this node takes.
    #[test]
    fn the_deploy_storage_section_parses() {
        let text = format!(
            "listen = \"0.0.0.0:7443\"\n{}",
            include_str!("../../deploy/garage/publisher-storage.toml")
        );
        let Storage::S3(s3) = parse(&text).expect("parses").storage else {
            panic!("not s3")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("dsnode", "garage")
        );
        assert_eq!(s3.prefix, "publisher");
    }

    #[test]
    fn bad_storage_settings_are_named() {
        let base = "listen = \"127.0.0.1:1\"\n[storage]\n";
        for (body, key, says) in [
            ("kind = \"ftp\"", "storage.kind", "\"local\" or \"s3\""),
            (
                "kind = \"s3\"\nbucket = \"b-1\"",
                "storage.endpoint",
                "is required",
            ),
            (
                "kind = \"s3\"\nendpoint = \"https://x\"",
                "storage.bucket",
                "is required",
            ),
            (
                "kind = \"s3\"\nendpoint = \"http://x:9000\"\nbucket = \"b-1\"",
                "storage.endpoint",
                "allow_http = true",
            ),
            (
                "kind = \"s3\"\nendpoint = \"s3.example\"\nbucket = \"b-1\"",
                "storage.endpoint",
                "not an http(s)",
            ),
            (
                "kind = \"s3\"\nendpoint = \"https://x\"\nbucket = \"My_Bucket\"",
                "storage.bucket",
                "not an S3 bucket name",
            ),
            (
                "kind = \"s3\"\nendpoint = \"https://x\"\nbucket = \"b-1\"\nprefix = \"a//b\"",
                "storage.prefix",
                "not a key prefix",
            ),
            (
                "bucket = \"b-1\"",
                "storage.bucket",
                "only with kind = \"s3\"",
            ),
        ] {
            let msg = parse(&format!("{base}{body}\n"))
                .expect_err(body)
                .to_string();
            assert!(msg.contains(key) && msg.contains(says), "{body}: {msg}");
        }
    }

    #[test]
    fn credentials_come_from_a_file_and_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path());
        let cfg = S3Config {
            endpoint: "https://x".into(),
            bucket: "b-1".into(),
            prefix: String::new(),
            region: DEFAULT_S3_REGION.into(),
            allow_http: false,
            credentials_file: Some("s3.credentials".into()),
        };
        let missing = cfg.credentials(&data).expect_err("no file");
        assert!(missing.contains("s3.credentials"), "{missing}");
        let file = dir.path().join("s3.credentials");
        let write = |text: &str, mode: u32| {
            fsutil::write_atomic(&file, text.as_bytes(), mode).expect("write");
        };
        write("access_key_id = \"AK\"\n", 0o600);
        let partial = cfg.credentials(&data).expect_err("no secret");
        assert!(partial.contains("secret_access_key"), "{partial}");
        write(
            "access_key_id = \"AK\"\nsecret_access_key = very-secret\n",
            0o600,
        );
        let unquoted = cfg.credentials(&data).expect_err("not TOML");
        assert!(
            unquoted.contains("line 2") && !unquoted.contains("very-secret"),
            "{unquoted}"
        );
        let full = "access_key_id = \"AK\"\nsecret_access_key = \"very-secret\"\n";
        write(full, 0o644);
        let exposed = cfg.credentials(&data).expect_err("world-readable");
        assert!(exposed.contains("chmod 600"), "{exposed}");
        write(full, 0o600);
        let creds = cfg.credentials(&data).expect("credentials");
        assert_eq!(creds.access_key_id, "AK");
        assert!(!format!("{creds:?}").contains("very-secret"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            parse("listen = \"127.0.0.1:1\"\n[transport]\nmax_conections = 3\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("max_conections"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let msg = parse("listen = \"nowhere\"\n")
            .expect_err("addr")
            .to_string();
        assert!(msg.contains("line 1"), "{msg}");
        let msg = parse("listen = \"127.0.0.1:1\"\n[transport]\ndrain_deadline = \"soon\"\n")
            .expect_err("duration")
            .to_string();
        assert!(msg.contains("invalid duration `soon`"), "{msg}");
        let msg = parse("listen = \"127.0.0.1:1\"\n[transport]\nmax_frame_size = 10\n")
            .expect_err("frame")
            .to_string();
        assert!(msg.contains("transport.max_frame_size"), "{msg}");
    }
}
