//! Datasets on S3-compatible object storage (MinIO, Ceph RGW, Garage, a
//! cloud bucket), with the `object_store` crate.
//!
//! - [`S3BlobStore`]: a publisher's chunks as objects
//!   `PREFIX/sha256/<hex>` in its bucket, behind [`BlobStore`]. Names are
//!   content addresses, so a re-put writes the same bytes again: nothing
//!   relies on conditional create (which some S3 servers ignore).
//! - [`ObjectUrl`] and [`Buckets`]: `s3://bucket/key` names, resolved
//!   against the node's endpoint and credentials, for publishing an object
//!   already in the store and for receiving a dataset into a bucket.
//!
//! Every failure names the bucket and says what kind it is (the store is
//! unreachable, refused the credentials, has no such object), so an
//! operator can tell a down server from a wrong key.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio_stream::StreamExt;

use super::blob::{BlobError, BlobStore, Sweep};
use crate::digest::Hash;
pub use crate::runtime::config::{S3Config, S3Credentials};

/// Why an object-store operation failed, naming the bucket.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store answered 401 or 403.
    #[error("the object store refused this node's credentials for bucket `{bucket}` ({detail})")]
    Credentials {
        /// The bucket.
        bucket: String,
        /// The store's answer.
        detail: String,
    },
    /// No such object (or no such bucket).
    #[error("{}", if *.bucket_missing { format!("bucket `{bucket}` does not exist") } else { format!("bucket `{bucket}` has no object `{key}`") })]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The key asked for.
        key: String,
        /// Whether the bucket itself is missing.
        bucket_missing: bool,
    },
    /// The store could not be reached (connection refused, timed out).
    #[error("the object store at {endpoint} (bucket `{bucket}`) is unreachable: {detail}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// What failed.
        detail: String,
    },
    /// Any other failure.
    #[error("the object store failed on `{key}` in bucket `{bucket}`: {detail}")]
    Failed {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What failed.
        detail: String,
    },
    /// A name is not an object URL, or the configuration is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl ObjectError {
    /// Whether trying again later may succeed (the store was unreachable).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// One bucket of the node's object store, with what error messages need.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    name: String,
    endpoint: String,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bucket({} at {})", self.name, self.endpoint)
    }
}

impl Bucket {
    /// A client for `bucket` at the endpoint of `config`. No request is
    /// made.
    pub fn connect(
        config: &S3Config,
        credentials: &S3Credentials,
        bucket: &str,
    ) -> Result<Self, ObjectError> {
        // reqwest is built without a default TLS provider: the node's
        // (ring) is installed once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // No limit on a whole request (reading a large object to publish
        // it takes as long as it takes), but a connection that sends
        // nothing for 30 s is dead.
        let options = object_store::ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(30));
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..Default::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|e| {
            ObjectError::Invalid(format!(
                "object store {} (bucket `{bucket}`): {e}",
                config.endpoint
            ))
        })?;
        Ok(Self {
            store: Arc::new(store),
            name: bucket.to_owned(),
            endpoint: config.endpoint.clone(),
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Classifies a failure on `key`.
    pub fn error(&self, key: &str, e: object_store::Error) -> ObjectError {
        use object_store::Error as E;
        let bucket = self.name.clone();
        match e {
            E::Unauthenticated { source, .. } | E::PermissionDenied { source, .. } => {
                ObjectError::Credentials {
                    bucket,
                    detail: first_line(&source.to_string()),
                }
            }
            E::NotFound { source, .. } => ObjectError::NotFound {
                bucket,
                key: key.to_owned(),
                bucket_missing: source.to_string().contains("NoSuchBucket"),
            },
            other => {
                if unreachable(&other) {
                    ObjectError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        bucket,
                        detail: root_cause(&other),
                    }
                } else {
                    ObjectError::Failed {
                        bucket,
                        key: key.to_owned(),
                        detail: first_line(&other.to_string()),
                    }
                }
            }
        }
    }

    /// The object's size, or `None` if there is none.
    pub async fn size(&self, key: &ObjectPath) -> Result<Option<u64>, ObjectError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { source, .. })
                if !source.to_string().contains("NoSuchBucket") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.error(key.as_ref(), e)),
        }
    }

    /// Reads `key` as a stream of pieces (bounded memory), with its size.
    pub async fn read(
        &self,
        key: &ObjectPath,
    ) -> Result<
        (
            u64,
            impl tokio_stream::Stream<Item = Result<Bytes, ObjectError>> + Unpin + use<>,
        ),
        ObjectError,
    > {
        let got = self
            .store
            .get(key)
            .await
            .map_err(|e| self.error(key.as_ref(), e))?;
        let size = got.meta.size;
        let this = self.clone();
        let name = key.to_string();
        let stream = got
            .into_stream()
            .map(move |piece| piece.map_err(|e| this.error(&name, e)));
        Ok((size, stream))
    }

    /// Puts `bytes` at `key` in one request.
    pub async fn put(&self, key: &ObjectPath, bytes: Bytes) -> Result<(), ObjectError> {
        self.store
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.error(key.as_ref(), e))
    }

    /// Uploads the file at `path` to `key` as a multipart upload, a few
    /// parts in flight: the object appears only when the upload completes,
    /// and a failed upload is aborted (its parts dropped). Returns the
    /// bytes uploaded.
    pub async fn upload_file(
        &self,
        key: &ObjectPath,
        path: &std::path::Path,
    ) -> Result<u64, ObjectError> {
        use tokio::io::AsyncReadExt;
        /// Parts uploading at once (memory: this many parts).
        const PARTS_IN_FLIGHT: usize = 4;
        let failed = |detail: String| ObjectError::Failed {
            bucket: self.name.clone(),
            key: key.to_string(),
            detail,
        };
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| failed(format!("reading {}: {e}", path.display())))?
            .len();
        let part_size = part_size(size);
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.error(key.as_ref(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(failed(format!("reading {}: {e}", path.display())));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.error(key.as_ref(), e));
            }
            writer.write(&buf[..n]);
            total += n as u64;
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error(key.as_ref(), e))?;
        Ok(total)
    }

    /// The keys under `prefix` (a whole listing, for tests and tools).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let dir = if prefix.is_empty() {
            None
        } else {
            Some(object_path("", prefix)?)
        };
        let mut listing = self.store.list(dir.as_ref());
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.error(prefix, e))?;
            keys.push(meta.location.to_string());
        }
        Ok(keys)
    }

    /// Deletes `key` (no error if it is gone).
    pub async fn delete(&self, key: &ObjectPath) -> Result<(), ObjectError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key.as_ref(), e)),
        }
    }

    /// Checks the bucket is reachable and writable: puts, reads back and
    /// deletes a small object under `prefix`.
    pub async fn probe(&self, prefix: &str) -> Result<(), ObjectError> {
        let nonce = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let key = object_path(prefix, &format!(".dsnode-probe/{nonce:016x}"))?;
        let body = Bytes::from(format!("dsnode write probe {nonce:016x}"));
        self.put(&key, body.clone()).await?;
        let got = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.error(key.as_ref(), e))?
            .bytes()
            .await
            .map_err(|e| self.error(key.as_ref(), e))?;
        self.delete(&key).await?;
        if got != body {
            return Err(ObjectError::Failed {
                bucket: self.name.clone(),
                key: key.to_string(),
                detail: "a probe object read back different bytes than were written".into(),
            });
        }
        Ok(())
    }
}

/// The part size of a multipart upload of `size` bytes: 8 MiB (S3 wants
/// at least 5 MiB but for the last part), larger for objects past 70 GiB
/// so that no upload needs more than 9,000 of the 10,000 parts S3 allows.
fn part_size(size: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(9_000).div_ceil(MIB) * MIB;
    usize::try_from(needed.max(8 * MIB)).unwrap_or(usize::MAX)
}

/// The first line of a message (object_store's carry whole XML bodies).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Whether `e` is a failure to reach the store at all.
fn unreachable(e: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind as K;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        // An `HttpError` is a failure of the HTTP exchange itself (no
        // answer came back: refused, reset, closed before a response, timed
        // out, or a transport error object_store could not name, such as a
        // request hyper cancelled when the connection dropped): the store
        // is as down as one that refuses connections. Only an answer that
        // came back and could not be decoded is the store misbehaving.
        if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
            return !matches!(h.kind(), K::Decode);
        }
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost cause of `e`, which says what failed ("Connection
/// refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    first_line(&last.to_string())
}

/// `prefix/name` as an object path, refusing names object stores treat
/// specially (empty segments, `.` and `..`).
pub fn object_path(prefix: &str, name: &str) -> Result<ObjectPath, ObjectError> {
    let full = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{name}", prefix.trim_end_matches('/'))
    };
    ObjectPath::parse(&full)
        .map_err(|e| ObjectError::Invalid(format!("`{full}` is not a usable object name: {e}")))
}

/// An object named `s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    /// The bucket.
    pub bucket: String,
    /// The key within it.
    pub key: ObjectPath,
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl ObjectUrl {
    /// Whether `text` names an object (starts with `s3://`).
    pub fn is_url(text: &str) -> bool {
        text.starts_with("s3://")
    }

    /// Parses `s3://bucket/key`. Bucket names follow S3's rules (3 to 63
    /// lower-case letters, digits, `.` and `-`); the key is non-empty with
    /// no empty, `.` or `..` segment.
    pub fn parse(text: &str) -> Result<Self, ObjectError> {
        let bad = |why: &str| {
            ObjectError::Invalid(format!(
                "`{text}` is not an object URL: {why}; expected s3://BUCKET/KEY"
            ))
        };
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("it names no key"))?;
        if !crate::runtime::config::is_bucket_name(bucket) {
            return Err(bad(
                "a bucket name is 3 to 63 lower-case letters, digits, `.` and `-`",
            ));
        }
        if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
            return Err(bad("the key is empty, or starts or ends with /"));
        }
        let key = ObjectPath::parse(key).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            bucket: bucket.to_owned(),
            key,
        })
    }
}

/// The node's object store: its own bucket and any other it is asked to
/// read from or write to, all at one endpoint with one set of credentials.
pub struct Buckets {
    config: S3Config,
    credentials: S3Credentials,
    open: std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
}

impl Buckets {
    /// The store `config` names, with `credentials`.
    pub fn new(config: S3Config, credentials: S3Credentials) -> Self {
        Self {
            config,
            credentials,
            open: std::sync::Mutex::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Whether `url` names an object of the node's chunk store (under its
    /// prefix's `sha256/` or probe names), which the store may remove.
    pub fn owns(&self, url: &ObjectUrl) -> bool {
        let own = |dir: &str| {
            object_path(&self.config.prefix, dir).is_ok_and(|d| url.key.prefix_matches(&d))
        };
        url.bucket == self.config.bucket && (own("sha256") || own(".dsnode-probe"))
    }

    /// A client of its own for `bucket` (its own connection pool).
    pub fn connect(&self, name: &str) -> Result<Bucket, ObjectError> {
        Bucket::connect(&self.config, &self.credentials, name)
    }

    /// A client for `bucket` (made once).
    pub fn bucket(&self, name: &str) -> Result<Bucket, ObjectError> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = open.get(name) {
            return Ok(b.clone());
        }
        let b = Bucket::connect(&self.config, &self.credentials, name)?;
        open.insert(name.to_owned(), b.clone());
        Ok(b)
    }
}

/// Runs object-store futures for callers on plain threads (the
/// [`BlobStore`] trait is synchronous: chunk writers and servers call it
/// from blocking threads). Its own small runtime, so a caller on any
/// runtime, or none, can wait without starving it.
struct Io {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Io {
    fn new() -> Result<Self, BlobError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dsnode-s3")
            .enable_all()
            .build()
            .map_err(|e| {
                BlobError::Object(ObjectError::Invalid(format!(
                    "starting the object store's I/O threads: {e}"
                )))
            })?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    fn run<T, F>(&self, f: F) -> Result<T, BlobError>
    where
        F: Future<Output = Result<T, BlobError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(runtime) = &self.runtime else {
            return Err(stopped());
        };
        runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> BlobError {
    BlobError::Object(ObjectError::Invalid(
        "the object store's I/O threads stopped".into(),
    ))
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task panics; this never
        // blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A publisher's chunks in its bucket, as `PREFIX/sha256/<hex>`.
pub struct S3BlobStore {
    bucket: Bucket,
    prefix: String,
    /// `PREFIX/sha256`.
    dir: ObjectPath,
    io: Io,
    /// Chunks a failed publication may have left: a removal failed, or a
    /// put failed without saying whether it stored the object (the store
    /// went away). [`BlobStore::remove_leftovers`] removes those nothing
    /// references once the store answers.
    leftovers: std::sync::Mutex<HashSet<Hash>>,
}

impl S3BlobStore {
    /// The store in `config`'s bucket under its prefix. No request is
    /// made (see [`BlobStore::probe`]).
    pub fn open(buckets: &Buckets) -> Result<Self, BlobError> {
        let config = buckets.config();
        Ok(Self {
            // A client of its own: its connections are driven by `io`.
            bucket: buckets.connect(&config.bucket)?,
            prefix: config.prefix.clone(),
            dir: object_path(&config.prefix, "sha256")?,
            io: Io::new()?,
            leftovers: std::sync::Mutex::default(),
        })
    }

    fn key(&self, hash: &Hash) -> ObjectPath {
        self.dir.clone().join(data_encoding::HEXLOWER.encode(hash))
    }

    fn left(&self, hashes: impl IntoIterator<Item = Hash>) {
        self.leftovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(hashes);
    }
}

impl BlobStore for S3BlobStore {
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<bool, BlobError> {
        let bucket = self.bucket.clone();
        let key = self.key(hash);
        let body = Bytes::copy_from_slice(bytes);
        let put = self.io.run(async move {
            // Whether this put created the chunk decides whether a failed
            // publication removes it; a chunk another dataset shares is
            // never removed. Publications run one at a time.
            if bucket.size(&key).await?.is_some() {
                return Ok(false);
            }
            bucket.put(&key, body).await?;
            Ok(true)
        });
        if put.is_err() {
            // The object may have been stored all the same.
            self.left([*hash]);
        }
        put
    }

    fn parallel_requests(&self) -> usize {
        // Each put is a round trip: several in flight fill the link.
        8
    }

    fn remove(&self, hashes: &[Hash]) {
        let bucket = self.bucket.clone();
        let keys: Vec<(Hash, ObjectPath)> = hashes.iter().map(|h| (*h, self.key(h))).collect();
        let result = self.io.run(async move {
            for (i, (_, key)) in keys.iter().enumerate() {
                // Past the first failure the rest are left for later (a
                // store that went away fails each after its retries).
                if let Err(e) = bucket.delete(key).await {
                    return Ok(Some((
                        e,
                        keys[i..].iter().map(|(h, _)| *h).collect::<Vec<_>>(),
                    )));
                }
            }
            Ok(None)
        });
        match result {
            Ok(None) => {}
            Ok(Some((e, left))) => {
                tracing::warn!(error = %e, left = left.len(), "could not remove chunks; they are removed once the store answers");
                self.left(left);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not remove chunks; they are removed once the store answers");
                self.left(hashes.iter().copied());
            }
        }
    }

    fn leftovers(&self) -> Vec<Hash> {
        self.leftovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    fn remove_leftovers(&self, keep: &HashSet<Hash>) -> usize {
        let taken: Vec<Hash> = std::mem::take(
            &mut *self
                .leftovers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        // Those a dataset references now (a later publication of the
        // same bytes) stay; a removal that fails again is queued again.
        let gone: Vec<Hash> = taken.into_iter().filter(|h| !keep.contains(h)).collect();
        self.remove(&gone);
        gone.len()
    }

    fn collect_garbage(&self, keep: &HashSet<Hash>) -> Result<Sweep, BlobError> {
        let bucket = self.bucket.clone();
        let dir = self.dir.clone();
        let keep = keep.clone();
        let swept = self.io.run(async move {
            let mut listing = bucket.store.list(Some(&dir));
            let mut seen = HashSet::new();
            let mut unreferenced = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| bucket.error(dir.as_ref(), e))?;
                // Only names this store makes (`sha256/<64 hex>` right
                // under the prefix) are ever removed: anything else a
                // person put there is left alone.
                let direct = meta.location.prefix_match(&dir).map(Iterator::count) == Some(1);
                let hash = meta
                    .location
                    .filename()
                    .filter(|n| n.len() == 64)
                    .and_then(|n| data_encoding::HEXLOWER.decode(n.as_bytes()).ok())
                    .and_then(|b| <Hash>::try_from(b.as_slice()).ok());
                match hash {
                    Some(h) if direct && keep.contains(&h) => {
                        seen.insert(h);
                    }
                    Some(_) if direct => unreferenced.push(meta.location),
                    _ => {}
                }
            }
            let removed = unreferenced.len();
            for key in unreferenced {
                bucket.delete(&key).await?;
            }
            let mut missing: Vec<Hash> = keep.difference(&seen).copied().collect();
            missing.sort_unstable();
            Ok(Sweep { removed, missing })
        });
        if swept.is_ok() {
            // Everything unreferenced is gone, leftovers included.
            self.leftovers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        swept
    }

    fn sync(&self, _hashes: &[Hash]) -> Result<(), BlobError> {
        // An S3 PUT is durable when it returns.
        Ok(())
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(bytes) = self.get_unverified(hash)? else {
            return Ok(None);
        };
        if crate::digest::sha256(&bytes) != *hash {
            return Err(BlobError::Corrupt(data_encoding::HEXLOWER.encode(hash)));
        }
        Ok(Some(bytes))
    }

    fn get_unverified(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        let bucket = self.bucket.clone();
        let key = self.key(hash);
        self.io.run(async move {
            let got = match bucket.store.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { source, .. })
                    if !source.to_string().contains("NoSuchBucket") =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(bucket.error(key.as_ref(), e).into()),
            };
            let bytes = got
                .bytes()
                .await
                .map_err(|e| bucket.error(key.as_ref(), e))?;
            Ok(Some(bytes.to_vec()))
        })
    }

    fn has(&self, hash: &Hash) -> bool {
        let bucket = self.bucket.clone();
        let key = self.key(hash);
        self.io
            .run(async move { Ok(bucket.size(&key).await?.is_some()) })
            .unwrap_or(false)
    }

    fn probe(&self) -> Result<(), BlobError> {
        let bucket = self.bucket.clone();
        let prefix = self.prefix.clone();
        self.io.run(async move { Ok(bucket.probe(&prefix).await?) })
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket.name)
        } else {
            format!(
                "s3://{}/{}",
                self.bucket.name,
                self.prefix.trim_end_matches('/')
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_parse_and_refuse_what_they_should() {
        let u = ObjectUrl::parse("s3://city-data/transport/2026/trips.csv").expect("url");
        assert_eq!(u.bucket, "city-data");
        assert_eq!(u.key.as_ref(), "transport/2026/trips.csv");
        assert_eq!(u.to_string(), "s3://city-data/transport/2026/trips.csv");
        for bad in [
            "city-data/x",
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3://Bucket/x",
            "s3://ab/x",
            "s3://-bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/dir/",
            "s3://bucket//key",
        ] {
            let e = ObjectUrl::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("expected s3://BUCKET/KEY"), "{bad}: {e}");
        }
    }

    #[test]
    fn parts_stay_within_the_part_limit() {
        assert_eq!(part_size(0), 8 << 20);
        assert_eq!(part_size(1 << 30), 8 << 20);
        for size in [80u64 << 30, 1 << 40, 5 << 40] {
            let part = part_size(size) as u64;
            assert!(size.div_ceil(part) <= 9_000, "{size}");
            assert_eq!(part % (1 << 20), 0);
        }
    }

    #[test]
    fn object_paths_join_a_prefix() {
        assert_eq!(
            object_path("", "sha256/ab").expect("p").as_ref(),
            "sha256/ab"
        );
        assert_eq!(
            object_path("pub/", "sha256/ab").expect("p").as_ref(),
            "pub/sha256/ab"
        );
        assert!(object_path("a/../b", "x").is_err());
    }
}
