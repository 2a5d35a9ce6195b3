//! A real S3 server for the object-storage tests: `s3s-fs` on loopback
//! (one per test, its own root dir), or the server the environment names
//! (`scripts/garage-test.sh` runs the same tests against Garage), and a
//! relay in front of it that an outage test turns off and on.
//!
//! `s3s-fs` is found as `$DSNODE_S3S_FS`, on `PATH`, or in
//! `~/.cargo/bin`; `.ci/run` installs it (`cargo install s3s-fs --version
//! 0.14.1 --features binary --locked`), and so does the first test that
//! misses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dsnode::dataset::s3::{Bucket, ObjectUrl};
use dsnode::runtime::config::{S3Config, S3Credentials, Storage};

use super::NodeDir;

/// The s3s-fs release the tests run against.
const S3S_FS_VERSION: &str = "0.14.1";

/// An S3 server the tests may use.
pub(crate) struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    /// A bucket that exists.
    pub(crate) bucket: String,
    region: String,
    credentials: S3Credentials,
    child: Option<Child>,
    _root: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A random name part, so tests sharing an external bucket never meet.
pub(crate) fn unique(what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}-{:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    )
}

impl S3Server {
    /// The server `DSNODE_TEST_S3_ENDPOINT` (with `…_BUCKET`, `…_REGION`,
    /// `…_ACCESS_KEY`, `…_SECRET_KEY`) names, or a new s3s-fs.
    pub(crate) fn start() -> Self {
        if let Ok(endpoint) = std::env::var("DSNODE_TEST_S3_ENDPOINT") {
            let var = |name: &str| {
                std::env::var(name)
                    .unwrap_or_else(|_| panic!("{name} must be set with DSNODE_TEST_S3_ENDPOINT"))
            };
            return Self {
                endpoint,
                bucket: var("DSNODE_TEST_S3_BUCKET"),
                region: std::env::var("DSNODE_TEST_S3_REGION")
                    .unwrap_or_else(|_| "us-east-1".into()),
                credentials: S3Credentials {
                    access_key_id: var("DSNODE_TEST_S3_ACCESS_KEY"),
                    secret_access_key: var("DSNODE_TEST_S3_SECRET_KEY"),
                    session_token: None,
                },
                child: None,
                _root: None,
            };
        }
        let binary = s3s_fs();
        let root = tempfile::tempdir().expect("s3 root");
        let bucket = "dsnode-test".to_owned();
        // s3s-fs keeps a bucket as a directory of its root.
        std::fs::create_dir(root.path().join(&bucket)).expect("bucket dir");
        let credentials = S3Credentials {
            access_key_id: "AKIDSNODETEST".into(),
            secret_access_key: "dsnode-test-secret-key".into(),
            session_token: None,
        };
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key"])
            .arg(&credentials.access_key_id)
            .arg("--secret-key")
            .arg(&credentials.secret_access_key)
            .arg(root.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        // It says where it listens: "server is running at http://…".
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent = false;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if !sent && let Some(at) = line.find("server is running at ") {
                    let _ = tx.send(line[at + "server is running at ".len()..].trim().to_owned());
                    sent = true;
                }
            }
        });
        let endpoint = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("s3s-fs says where it listens");
        Self {
            endpoint,
            bucket,
            region: "us-east-1".into(),
            credentials,
            child: Some(child),
            _root: Some(root),
        }
    }

    /// The server's socket address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("a loopback endpoint")
    }

    /// `[storage]` for a node reaching the server at `endpoint` (the
    /// server's own, or a relay's), its objects under `prefix`, its
    /// credentials in the data dir's `s3.credentials`.
    pub(crate) fn storage(&self, endpoint: &str, prefix: &str) -> Storage {
        Storage::S3(S3Config {
            endpoint: endpoint.to_owned(),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            region: self.region.clone(),
            allow_http: true,
            credentials_file: Some(PathBuf::from("s3.credentials")),
        })
    }

    /// Writes the server's credentials into `node`'s data dir (or, with
    /// `wrong`, a secret the server refuses).
    pub(crate) fn give_credentials(&self, node: &NodeDir, wrong: bool) {
        let secret = if wrong {
            "not-the-secret"
        } else {
            &self.credentials.secret_access_key
        };
        dsnode::fsutil::write_atomic(
            &node.dir.root().join("s3.credentials"),
            format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\n",
                self.credentials.access_key_id
            )
            .as_bytes(),
            0o600,
        )
        .expect("credentials file");
    }

    /// A client of the test bucket, as the tests' own hands on it.
    pub(crate) fn bucket(&self) -> Bucket {
        let Storage::S3(config) = self.storage(&self.endpoint, "") else {
            unreachable!()
        };
        Bucket::connect(&config, &self.credentials, &self.bucket).expect("bucket client")
    }

    /// `s3://BUCKET/KEY`.
    pub(crate) fn url(&self, key: &str) -> ObjectUrl {
        ObjectUrl::parse(&format!("s3://{}/{key}", self.bucket)).expect("url")
    }
}

/// The s3s-fs binary, installed if missing (once, under a lock, for all
/// test processes).
fn s3s_fs() -> PathBuf {
    if let Ok(p) = std::env::var("DSNODE_S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let installed = Path::new(&cargo_home).join("bin").join("s3s-fs");
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    if installed.is_file() {
        return installed;
    }
    let lock = std::env::temp_dir().join("dsnode-s3s-fs-install.lock");
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if installed.is_file() => return installed,
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(2)),
        }
    }
    eprintln!(
        "s3s-fs is missing: cargo install s3s-fs --version {S3S_FS_VERSION} (about 10 minutes, once)"
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "s3s-fs",
            "--version",
            S3S_FS_VERSION,
            "--features",
            "binary",
            "--locked",
        ])
        .status();
    let _ = std::fs::remove_file(&lock);
    assert!(
        matches!(status, Ok(s) if s.success()) && installed.is_file(),
        "could not install s3s-fs ({status:?}); install it by hand: cargo install s3s-fs --version {S3S_FS_VERSION} --features binary --locked"
    );
    installed
}

/// A TCP relay to an S3 server that a test turns off (open connections
/// cut, new ones reset at once: the store is down) and on again, by hand
/// or once `after` bytes have come back from the server. It keeps its
/// port all along, so nothing else can take it while the store is down.
pub(crate) struct Outage {
    /// Where the relay listens (the endpoint the node is given).
    pub(crate) addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes from the server after which the relay goes down by itself
    /// (`u64::MAX`: never).
    cut_at: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// A relay to `target`, on.
    pub(crate) async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let relayed = Arc::new(AtomicU64::new(0));
        let changed = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (up, cut_at, relayed, changed) =
                (up.clone(), cut_at.clone(), relayed.clone(), changed.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { return };
                            if !up.load(Ordering::SeqCst) {
                                // Down: the connection is reset at once.
                                let _ = client.set_zero_linger();
                                continue;
                            }
                            let relay = Relay {
                                up: up.clone(),
                                cut_at: cut_at.clone(),
                                relayed: relayed.clone(),
                                changed: changed.clone(),
                            };
                            conns.spawn(async move {
                                if let Ok(server) = tokio::net::TcpStream::connect(target).await {
                                    relay.pipe(client, server).await;
                                }
                            });
                        }
                        () = changed.notified() => {
                            if !up.load(Ordering::SeqCst) {
                                conns.abort_all();
                            }
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
            })
        };
        Arc::new(Self {
            addr,
            up,
            cut_at,
            relayed,
            changed,
            task,
        })
    }

    /// `http://ADDR` of the relay.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store goes down: open connections are cut, new ones reset.
    pub(crate) fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The store comes back; with `cut_after`, it goes down again once
    /// that many more bytes came back from it.
    pub(crate) fn up(&self, cut_after: Option<u64>) {
        let at = cut_after.map_or(u64::MAX, |n| self.relayed.load(Ordering::SeqCst) + n);
        self.cut_at.store(at, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }

    /// Whether the relay is on.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one relayed connection shares with the relay.
struct Relay {
    up: Arc<std::sync::atomic::AtomicBool>,
    cut_at: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
}

impl Relay {
    /// Copies both ways; counts bytes from the server; at the cut, takes
    /// the store down.
    async fn pipe(self, client: tokio::net::TcpStream, server: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async move {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
        };
        let down = async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let total = self.relayed.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                if total >= self.cut_at.load(Ordering::SeqCst) {
                    self.up.store(false, Ordering::SeqCst);
                    self.changed.notify_one();
                    break;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }
}
