//! Transfer throughput and memory of `dsnode fetch` against nginx and
//! curl over the same mutual TLS 1.3, measured in one run on loopback
//! (issue 15). One command reruns it all:
//!
//! ```text
//! cargo build --release && cargo run --release --example transfer_bench
//! ```
//!
//! For each location of the data, tmpfs (the software's own cost) and the
//! project's disk (what a node gets here), it makes a data space (a CA, a
//! publisher and a consumer `dsnode serve` process), publishes the content,
//! writes the same bytes as a plain file, and times each of these (twice,
//! by default):
//!
//! - nginx serving that file (`sendfile on`, the publisher's certificate
//!   and key, `ssl_verify_client on` against the data space's CA) to
//!   `curl -o FILE` with the consumer's certificate and key. curl never
//!   fsyncs: its file may be in the page cache only when it exits;
//! - the same followed by `sync FILE`, so that the file is on the disk as
//!   a fetch's output is;
//! - `curl … | tee FILE | openssl dgst -sha256`, the digest checked
//!   against the content's;
//! - `dsnode fetch` through the consumer's Admin API with 1 stream and
//!   with N, each on a fresh grant, after removing the output and the
//!   consumer's pack of the previous run (the same file: the output is a
//!   hard link to the node's copy). A fetch verifies every chunk against
//!   the signed chunk list, writes each byte once into the pack, fsyncs
//!   it, links the output, and exchanges signed receipts. The CPU seconds
//!   both nodes spend on it are printed too.
//!
//! On tmpfs it also times (a), a bare tonic stream of the same bytes from
//! memory over the node's own mutual-TLS acceptor and HTTP/2 settings,
//! SHA-256 checked per chunk: what the transport alone costs.
//!
//! It prints MB/s (10^6 bytes a second, end to end) and issue 15's ratios
//! with their targets, then fetches `DSNODE_BENCH_RSS_MIB` MiB on the disk
//! with N streams and checks the peak RSS (VmHWM, reset after publishing)
//! of both nodes against 64 MiB.
//!
//! nginx is installed with apt-get if it is not on `PATH` (which needs
//! root); if that fails the nginx lines are skipped, saying why.
//!
//! # Environment
//!
//! - `DSNODE_BENCH_MIB` (1024): the content's size in MiB.
//! - `DSNODE_BENCH_RSS_MIB` (4096): the size of the memory phase's fetch.
//! - `DSNODE_BENCH_STREAMS` (the cores, at most 4): N.
//! - `DSNODE_BENCH_RUNS` (2): runs of each way; the ways take turns, run
//!   after run, so that a passing load falls on all of them alike.
//! - `DSNODE_BENCH_WARMUP` (1): rounds of every way run first and not
//!   counted (on a virtual machine, the first writes to guest memory
//!   never touched before cost a host fault each, whichever way runs
//!   first).
//! - `DSNODE_BENCH_PHASES` (`tmpfs,disk,rss`): which phases run; `s3`
//!   (not run by default) publishes and fetches with both nodes' chunks
//!   in an S3 bucket (s3s-fs on loopback, which must be installed: `.ci/run`
//!   does) against the same on the local disk, and prints the ratios and
//!   each node's peak RSS.
//! - `DSNODE_BENCH_TRANSPORT` (unset): `[transport]` keys for both nodes'
//!   `node.toml`, `;`-separated (`max_frame_size = 1048576; stream_window
//!   = 16777216`), to compare HTTP/2 settings.
//! - `DSNODE_BENCH_TMPFS` (`/dev/shm`): the tmpfs directory.
//! - `DSNODE_BENCH_PIDS` (unset): if set, print the nodes' process ids (to
//!   watch them with `top` or `perf`).
//!
//! The disk location is a temporary directory in the current directory
//! (the project's, under `cargo run`), not in /tmp, which may be tmpfs;
//! each location's file system type is printed.

mod support;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsnode::fsutil;
use dsnode::node;
use dsnode::runtime::config::DataDir;
use dsnode::runtime::tls;
use dsnode::wire::admin::{AdminClient, FetchEvent, FetchOptions};
use dsnode::wire::client::{self, ClientSettings};
use dsnode::wire::pb;
use support::{
    BoxError, Ca, NodeProcess, cpu_secs, dsnode_binary, env_number, free_port, fs_type,
    load_average, peak_rss_mib, reset_peak_rss,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

const CHUNK: usize = 1 << 20;

/// Issue 15's bound on each node's peak RSS during a fetch, whatever N.
const RSS_LIMIT_MIB: f64 = 64.0;

/// The name nginx serves the content under.
const CONTENT: &str = "content.bin";

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["benchmark"]
roles = ["consumer"]
grant_ttl = "1d"
"#;

/// A part of the run, named in `DSNODE_BENCH_PHASES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Tmpfs,
    Disk,
    Rss,
    S3,
}

/// What to run, from the environment (see the module docs).
struct Settings {
    mib: usize,
    rss_mib: usize,
    streams: u32,
    /// Runs of each way (the machine is noisy).
    rounds: usize,
    phases: Vec<Phase>,
    tmpfs: PathBuf,
    show_pids: bool,
    /// Rounds run first and not counted.
    warmup: usize,
}

impl Settings {
    fn from_env() -> Result<Self, BoxError> {
        let default_streams = dsnode::exchange::fetch::default_streams();
        let phases = std::env::var("DSNODE_BENCH_PHASES")
            .unwrap_or_else(|_| "tmpfs,disk,rss".into())
            .split(',')
            .map(|name| match name.trim() {
                "tmpfs" => Ok(Phase::Tmpfs),
                "disk" => Ok(Phase::Disk),
                "rss" => Ok(Phase::Rss),
                "s3" => Ok(Phase::S3),
                other => Err(format!(
                    "DSNODE_BENCH_PHASES names {other:?}: expected tmpfs, disk, rss or s3"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mib: env_number("DSNODE_BENCH_MIB", 1024)?,
            rss_mib: env_number("DSNODE_BENCH_RSS_MIB", 4096)?,
            streams: u32::try_from(env_number("DSNODE_BENCH_STREAMS", default_streams)?)?,
            rounds: env_number("DSNODE_BENCH_RUNS", 2)?,
            phases,
            tmpfs: std::env::var_os("DSNODE_BENCH_TMPFS")
                .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from),
            show_pids: std::env::var_os("DSNODE_BENCH_PIDS").is_some(),
            warmup: env_number("DSNODE_BENCH_WARMUP", 1)?,
        })
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// The benchmark's content, MiB by MiB: pseudo-random, the same every time.
fn piece(i: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ (i as u32).wrapping_mul(0x85eb_ca6b);
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The SHA-256 of the first `mib` MiB of the content.
fn content_sha256(mib: usize) -> [u8; 32] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for i in 0..mib {
        hash.update(&piece(i));
    }
    let mut h = [0u8; 32];
    h.copy_from_slice(hash.finish().as_ref());
    h
}

/// Writes `mib` MiB of content to `path` as a plain file (what nginx
/// serves), fsynced so that no write-back runs during the timed runs;
/// returns its SHA-256.
fn write_content(path: &Path, mib: usize) -> Result<[u8; 32], BoxError> {
    let mut file = std::fs::File::create(path)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for i in 0..mib {
        let p = piece(i);
        hash.update(&p);
        file.write_all(&p)?;
    }
    file.sync_all()?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    Ok(sha256)
}

/// A CA and two nodes (publisher, consumer) under `root`, their
/// certificates valid for 127.0.0.1 (what curl checks too).
struct Space {
    root: PathBuf,
    publisher: DataDir,
    consumer: DataDir,
}

impl Space {
    fn new(root: &Path) -> Result<Self, BoxError> {
        let ca = Ca::new(root)?;
        // `[transport]` is the file's last table: keys appended land in it.
        let extra = std::env::var("DSNODE_BENCH_TRANSPORT")
            .map(|keys| {
                keys.split(';')
                    .map(|k| format!("{}\n", k.trim()))
                    .collect::<String>()
            })
            .unwrap_or_default();
        Ok(Self {
            root: root.to_path_buf(),
            publisher: ca.node("publisher", "publisher", &extra)?,
            consumer: ca.node("consumer", "consumer", &extra)?,
        })
    }
}

/// A data space in a directory, its publisher and consumer running, and
/// `mib` MiB published.
struct Nodes {
    space: Space,
    publisher: NodeProcess,
    consumer: NodeProcess,
    dataset: String,
}

/// One `dsnode fetch` as measured.
struct FetchRun {
    mb_s: f64,
    /// CPU seconds each node spent during it.
    publisher_cpu: f64,
    consumer_cpu: f64,
}

impl Nodes {
    async fn start(bin: &Path, root: &Path, mib: usize, show_pids: bool) -> Result<Self, BoxError> {
        let space = Space::new(root)?;
        let publisher = NodeProcess::start(bin, &space.publisher).await?;
        let consumer = NodeProcess::start(bin, &space.consumer).await?;
        if show_pids {
            eprintln!(
                "pids: publisher {} consumer {}",
                publisher.pid(),
                consumer.pid()
            );
        }
        let header = pb::PublishHeader {
            title: format!("bench {mib} MiB"),
            description: "transfer benchmark".into(),
            media_type: "application/octet-stream".into(),
            policy_toml: POLICY.into(),
            size: (mib * CHUNK) as u64,
            ..Default::default()
        };
        let dataset = AdminClient::new(&publisher.connect().await?)
            .publish(header, tokio_stream::iter(0..mib).map(piece))
            .await?
            .dataset_id;
        Ok(Self {
            space,
            publisher,
            consumer,
            dataset,
        })
    }

    /// A fresh grant to the consumer for the dataset.
    async fn grant(&self) -> Result<String, BoxError> {
        ask_grant(&self.consumer, &self.publisher, &self.dataset).await
    }

    /// Removes the output and the consumer's copy of what it received
    /// (its pack, the same file), as curl's runs remove their file: each
    /// way then writes into page cache the previous run freed.
    fn clear_consumer(&self) -> Result<(), BoxError> {
        remove_if_exists(&self.output())?;
        let packs = self.space.consumer.packs();
        if packs.exists() {
            for entry in std::fs::read_dir(&packs)? {
                let path = entry?.path();
                if path.is_file() {
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(())
    }

    fn output(&self) -> PathBuf {
        self.space.root.join("out.bin")
    }

    /// One fetch with `streams` streams through the consumer's Admin API,
    /// on a fresh grant, into an emptied output and pack store; checks the
    /// content's SHA-256.
    async fn fetch(&self, streams: u32, sha256: &[u8; 32]) -> Result<FetchRun, BoxError> {
        self.clear_consumer()?;
        let grant = self.grant().await?;
        let admin = AdminClient::new(&self.consumer.connect().await?);
        let cpu = |p: &NodeProcess| cpu_secs(p.pid());
        let (p0, c0) = (cpu(&self.publisher)?, cpu(&self.consumer)?);
        let options = FetchOptions {
            force: true,
            streams,
            ..Default::default()
        };
        let (secs, bytes) = run_fetch(
            &admin,
            &self.publisher,
            &grant,
            &self.output(),
            &options,
            sha256,
        )
        .await?;
        Ok(FetchRun {
            mb_s: bytes as f64 / secs / 1e6,
            publisher_cpu: cpu(&self.publisher)? - p0,
            consumer_cpu: cpu(&self.consumer)? - c0,
        })
    }
}

/// A fresh grant to `consumer` for `dataset` of `publisher`.
async fn ask_grant(
    consumer: &NodeProcess,
    publisher: &NodeProcess,
    dataset: &str,
) -> Result<String, BoxError> {
    let ask = dsnode::peer::AccessAsk {
        dataset_id: dataset.to_owned(),
        purpose: "benchmark".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    };
    let r = AdminClient::new(&consumer.connect().await?)
        .request_access(&publisher.addr.to_string(), ask)
        .await?;
    let env: dsnode::envelope::Envelope = r.grant.ok_or("no grant")?.into();
    Ok(dsnode::exchange::grant::Grant::decode(&env.payload)?
        .id
        .to_string())
}

/// One fetch through the consumer's Admin API, to its end; checks the
/// content's SHA-256. Returns its seconds and bytes.
async fn run_fetch(
    admin: &AdminClient,
    publisher: &NodeProcess,
    grant: &str,
    out: &Path,
    options: &FetchOptions,
    sha256: &[u8; 32],
) -> Result<(f64, u64), BoxError> {
    let started = Instant::now();
    let mut events = admin
        .fetch(&publisher.addr.to_string(), grant, out, options)
        .await?;
    while let Some(e) = events.next().await? {
        if let FetchEvent::Done(done) = e {
            let secs = started.elapsed().as_secs_f64();
            if done.content_sha256 != *sha256 {
                return Err("the fetched content's SHA-256 is not the content's".into());
            }
            return Ok((secs, done.bytes));
        }
    }
    Err("the fetch ended without a result".into())
}

fn remove_if_exists(path: &Path) -> Result<(), BoxError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// nginx's binary: on `PATH`, else installed with apt-get (nginx-light,
/// else nginx; the package lists updated if the first try fails). The
/// error says why there is none: the nginx lines are then skipped.
fn nginx_binary() -> Result<PathBuf, String> {
    if let Some(bin) = on_path("nginx") {
        return Ok(bin);
    }
    eprintln!("nginx is not on PATH: installing it with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut why = String::new();
    for (update_first, package) in [
        (false, "nginx-light"),
        (true, "nginx-light"),
        (false, "nginx"),
    ] {
        if update_first {
            let _ = apt(&["update"]);
        }
        match apt(&["install", "-y", "--no-install-recommends", package]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                why = format!(
                    "apt-get install {package} failed ({}): {}",
                    o.status,
                    stderr.lines().last().unwrap_or("")
                );
            }
            Err(e) => why = format!("apt-get could not run: {e}"),
        }
        if let Some(bin) = on_path("nginx") {
            return Ok(bin);
        }
    }
    Err(why)
}

/// Where `name` is on `PATH` (or in /usr/sbin, where Debian puts nginx).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// An nginx serving the files of a directory over mutual TLS 1.3 in one
/// process (`master_process off`), so that killing it on drop ends it all.
/// Its configuration and logs are in a temporary directory of its own.
struct Nginx {
    child: Child,
    port: u16,
    conf: tempfile::TempDir,
}

impl Nginx {
    /// Serves `www` with `server`'s certificate and key, asking every
    /// client for a certificate issued by `server`'s CA.
    fn start(bin: &Path, www: &Path, server: &DataDir) -> Result<Self, BoxError> {
        let conf = tempfile::tempdir()?;
        let port = free_port()?.port();
        let dir = conf.path().display();
        let config = format!(
            r#"# transfer_bench: one process, everything in {dir}.
master_process off;
daemon off;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log "{dir}/access.log";
    client_body_temp_path "{dir}/client_body";
    proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi";
    uwsgi_temp_path "{dir}/uwsgi";
    scgi_temp_path "{dir}/scgi";
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        ssl_client_certificate "{ca}";
        ssl_verify_client on;
        root "{www}";
    }}
}}
"#,
            // As root, nginx would otherwise serve as nobody, who cannot
            // read the private temporary directories.
            user = if running_as_root() { "user root;" } else { "" },
            cert = server.cert().display(),
            key = server.tls_key().display(),
            ca = server.ca_cert().display(),
            www = www.display(),
        );
        let conf_file = conf.path().join("nginx.conf");
        std::fs::write(&conf_file, config)?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(conf.path())
            .arg("-e")
            .arg(conf.path().join("error.log"))
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(conf.path().join("stderr.log"))?)
            .spawn()?;
        let mut nginx = Self { child, port, conf };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                return Err(format!("nginx exited ({status}): {}", nginx.log()).into());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(format!("nginx did not listen in 10 s: {}", nginx.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/{CONTENT}", self.port)
    }

    /// Its error log and standard error, for a failure's message.
    fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.conf.path().join(f)).ok())
            .collect::<Vec<_>>()
            .join("")
            .trim()
            .to_owned()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// curl against nginx with the consumer's certificate and key, TLS 1.3
/// only, checking nginx's certificate against the data space's CA (it is
/// valid for 127.0.0.1, the address in the URL).
struct Curl {
    tls: Vec<OsString>,
    client_cert: Vec<OsString>,
    url: String,
}

impl Curl {
    fn new(client: &DataDir, url: String) -> Self {
        let os = |s: &str| OsString::from(s);
        Self {
            tls: vec![os("--tlsv1.3"), os("--cacert"), client.ca_cert().into()],
            client_cert: vec![
                os("--cert"),
                client.cert().into(),
                os("--key"),
                client.tls_key().into(),
            ],
            url,
        }
    }

    /// The arguments of a silent, failing-on-error GET of the content.
    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-sS".into(), "--fail".into()];
        args.extend(self.tls.iter().cloned());
        args.extend(self.client_cert.iter().cloned());
        args.push(self.url.clone().into());
        args
    }

    /// What curl and nginx negotiate, from `curl -v` on the first byte
    /// (e.g. "TLSv1.3 / TLS_AES_256_GCM_SHA384, HTTP/1.1"). Also checks
    /// that nginx turns away a client without a certificate.
    fn negotiated(&self) -> Result<String, BoxError> {
        let o = Command::new("curl")
            .args(self.args())
            .args([
                "-v",
                "-r",
                "0-0",
                "-o",
                "/dev/null",
                "-w",
                "HTTP/%{http_version}",
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            return Err(format!("curl could not fetch from nginx: {stderr}").into());
        }
        let cipher = stderr
            .lines()
            .find_map(|l| l.split_once("SSL connection using ").map(|(_, c)| c.trim()))
            .unwrap_or("TLS version and cipher not shown by curl -v");
        let http = String::from_utf8_lossy(&o.stdout);
        let anonymous = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(&self.tls)
            .arg(&self.url)
            .output()?;
        let code = String::from_utf8_lossy(&anonymous.stdout);
        if code.trim() == "200" {
            return Err("nginx served a client without a certificate".into());
        }
        Ok(format!(
            "{cipher}, {http}; without a client certificate: HTTP {code}"
        ))
    }
}

/// Runs a command to its end; an error says how it failed.
fn run(command: &mut Command) -> Result<(), BoxError> {
    let o = command.stdout(Stdio::null()).output()?;
    if !o.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A way of taking the content from one place to another: a line of the
/// table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// (a): the bare tonic stream.
    Bare,
    /// nginx to `curl -o FILE`.
    CurlOutput,
    /// nginx to `curl -o FILE && sync FILE`.
    CurlOutputSync,
    /// nginx to `curl | tee FILE | openssl dgst -sha256`.
    CurlTeeDigest,
    /// `dsnode fetch` with this many streams.
    Fetch(u32),
}

impl Way {
    fn label(self) -> String {
        match self {
            Way::Bare => "(a) bare tonic mTLS stream, SHA-256/chunk".into(),
            Way::CurlOutput => "nginx -> curl -o FILE (not fsynced)".into(),
            Way::CurlOutputSync => "nginx -> curl -o FILE && sync FILE".into(),
            Way::CurlTeeDigest => "nginx -> curl | tee FILE | openssl sha256".into(),
            Way::Fetch(1) => "dsnode fetch, 1 stream (fsynced)".into(),
            Way::Fetch(n) => format!("dsnode fetch, {n} streams (fsynced)"),
        }
    }

    /// The short name a ratio uses.
    fn short(self) -> String {
        match self {
            Way::Bare => "bare".into(),
            Way::CurlOutput => "curl -o".into(),
            Way::CurlOutputSync => "(curl -o && sync)".into(),
            Way::CurlTeeDigest => "(curl|tee|openssl)".into(),
            Way::Fetch(n) => format!("dsnode({n})"),
        }
    }
}

/// Times one curl way into `out` (removed first); MB/s. The file's size
/// and, for the digest pipeline, its printed SHA-256 are checked.
fn time_curl(
    way: Way,
    curl: &Curl,
    out: &Path,
    mib: usize,
    sha256: &[u8; 32],
) -> Result<f64, BoxError> {
    remove_if_exists(out)?;
    let started = Instant::now();
    match way {
        Way::CurlOutput => run(Command::new("curl").args(curl.args()).arg("-o").arg(out))?,
        Way::CurlOutputSync => {
            run(Command::new("curl").args(curl.args()).arg("-o").arg(out))?;
            run(Command::new("sync").arg(out))?;
        }
        Way::CurlTeeDigest => {
            let o = Command::new("sh")
                .arg("-c")
                .arg(r#"curl "$@" | tee "$OUT" | openssl dgst -sha256"#)
                .arg("sh")
                .args(curl.args())
                .env("OUT", out)
                .output()?;
            let printed = String::from_utf8_lossy(&o.stdout);
            let digest = printed.split_whitespace().last().unwrap_or("");
            if digest != data_encoding::HEXLOWER.encode(sha256) {
                return Err(format!(
                    "curl | tee | openssl printed {:?}, not the content's SHA-256: {}",
                    printed.trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )
                .into());
            }
        }
        Way::Bare | Way::Fetch(_) => return Err(format!("{way:?} is not a curl way").into()),
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(out)?.len();
    if bytes != (mib * CHUNK) as u64 {
        return Err(format!("{way:?} wrote {bytes} bytes, not {}", mib * CHUNK).into());
    }
    remove_if_exists(out)?;
    Ok(bytes as f64 / secs / 1e6)
}

/// The bare server of (a): streams chunks from memory.
struct Bare {
    pieces: Arc<Vec<Vec<u8>>>,
}

#[tonic::async_trait]
impl pb::exchange_server::Exchange for Bare {
    async fn fetch(
        &self,
        _: Request<pb::FetchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::FetchResponse>>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let pieces = self.pieces.clone();
        tokio::spawn(async move {
            for p in pieces.iter() {
                let msg = pb::FetchResponse {
                    part: Some(pb::fetch_response::Part::Chunk(p.clone().into())),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// (a): the bare stream, SHA-256 of each chunk checked on receipt; MB/s.
async fn bare_fetch(space: &Space, addr: SocketAddr, hashes: &[[u8; 32]]) -> Result<f64, BoxError> {
    let material = node::load_credentials(&space.consumer)?.material;
    let conn = client::connect(
        tls::client_config(&material)?,
        &addr.to_string(),
        ClientSettings::default(),
    )
    .await?;
    let started = Instant::now();
    let mut stream = pb::exchange_client::ExchangeClient::new(conn.channel)
        .max_decoding_message_size(CHUNK + (64 << 10))
        .fetch(pb::FetchRequest::default())
        .await?
        .into_inner();
    let (mut bytes, mut index) = (0u64, 0usize);
    while let Some(msg) = stream.message().await? {
        if let Some(pb::fetch_response::Part::Chunk(c)) = msg.part {
            let h = ring::digest::digest(&ring::digest::SHA256, &c);
            if Some(h.as_ref()) != hashes.get(index).map(|x| x.as_slice()) {
                return Err(format!("chunk {index} does not match").into());
            }
            bytes += c.len() as u64;
            index += 1;
        }
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Times (a) `rounds` times on `nodes`' space, the content in memory.
async fn time_bare(nodes: &Nodes, mib: usize, rounds: usize) -> Result<Vec<f64>, BoxError> {
    let pieces: Arc<Vec<Vec<u8>>> = Arc::new((0..mib).map(piece).collect());
    let hashes: Vec<[u8; 32]> = pieces
        .iter()
        .map(|p| {
            let mut h = [0u8; 32];
            h.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, p).as_ref());
            h
        })
        .collect();
    let (addr, stop) = support::bare_exchange(&nodes.space.publisher, Bare { pieces }).await?;
    let mut runs = Vec::new();
    for _ in 0..rounds {
        runs.push(bare_fetch(&nodes.space, addr, &hashes).await?);
    }
    stop.cancel();
    Ok(runs)
}

/// The kernel's count of connections that sent through kernel TLS
/// (`TlsTxSw` + `TlsTxDevice` in /proc/net/tls_stat); `None` if its TLS
/// module is not loaded.
fn ktls_tx_connections() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        stat.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(name, _)| matches!(*name, "TlsTxSw" | "TlsTxDevice"))
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// What one location measured: each way's runs, in MB/s.
struct Column {
    name: &'static str,
    lines: Vec<(Way, Vec<f64>)>,
}

impl Column {
    fn mean(&self, way: Way) -> Option<f64> {
        self.lines
            .iter()
            .find(|(w, _)| *w == way)
            .map(|(_, runs)| runs.iter().sum::<f64>() / runs.len() as f64)
    }

    fn record(&mut self, way: Way, runs: Vec<f64>) {
        let list = runs
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mean = runs.iter().sum::<f64>() / runs.len() as f64;
        println!("  {:<44} {mean:7.0} MB/s  (runs {list})", way.label());
        self.lines.push((way, runs));
    }
}

/// Measures every way with the data in a new temporary directory in `dir`.
/// The ways take turns, round after round, so that a load that comes and
/// goes on the machine falls on all of them alike.
async fn measure(
    name: &'static str,
    dir: &Path,
    bin: &Path,
    nginx: Option<&Path>,
    s: &Settings,
) -> Result<Column, BoxError> {
    let root = tempfile::Builder::new()
        .prefix(".transfer-bench-")
        .tempdir_in(dir)?;
    println!(
        "== {name}: {} ({}), {} MiB; load average {}",
        root.path().display(),
        fs_type(root.path()),
        s.mib,
        load_average()
    );
    let nodes = Nodes::start(bin, root.path(), s.mib, s.show_pids).await?;
    let mut column = Column {
        name,
        lines: Vec::new(),
    };
    if name == "tmpfs" {
        column.record(Way::Bare, time_bare(&nodes, s.mib, s.rounds).await?);
    }

    let www = root.path().join("www");
    std::fs::create_dir(&www)?;
    let sha256 = write_content(&www.join(CONTENT), s.mib)?;
    let mut ways = Vec::new();
    let server = match nginx {
        Some(bin) => {
            let server = Nginx::start(bin, &www, &nodes.space.publisher)?;
            let curl = Curl::new(&nodes.space.consumer, server.url());
            println!("  curl <-> nginx: {}", curl.negotiated()?);
            ways.extend([Way::CurlOutput, Way::CurlOutputSync, Way::CurlTeeDigest]);
            Some((server, curl))
        }
        None => None,
    };
    ways.push(Way::Fetch(1));
    if s.streams != 1 {
        ways.push(Way::Fetch(s.streams));
    }

    let ktls_before = ktls_tx_connections();
    let curl_out = root.path().join("curl.out");
    let mut tallies: Vec<Tally> = ways.iter().map(|_| Tally::default()).collect();
    // Warm-up rounds first, not counted: on a virtual machine the first
    // write to a page of guest memory the guest never touched costs the
    // host a fault, so whichever way ran first would pay for warming the
    // page cache for the others.
    for round in 0..s.warmup + s.rounds {
        let counted = round >= s.warmup;
        for (way, tally) in ways.iter().zip(&mut tallies) {
            match (*way, &server) {
                (Way::Fetch(n), _) => {
                    let run = nodes.fetch(n, &sha256).await?;
                    if counted {
                        tally.runs.push(run.mb_s);
                        tally.publisher_cpu += run.publisher_cpu / s.rounds as f64;
                        tally.consumer_cpu += run.consumer_cpu / s.rounds as f64;
                    }
                }
                (_, Some((_, curl))) => {
                    let mb_s = time_curl(*way, curl, &curl_out, s.mib, &sha256)?;
                    if counted {
                        tally.runs.push(mb_s);
                    }
                }
                (_, None) => return Err(format!("{way:?} needs nginx").into()),
            }
        }
    }
    let ktls_after = ktls_tx_connections();
    drop(server);
    std::fs::remove_dir_all(&www)?;

    for (way, tally) in ways.into_iter().zip(tallies) {
        column.record(way, tally.runs);
        if let Way::Fetch(_) = way {
            println!(
                "      CPU a fetch: publisher {:.2} s, consumer {:.2} s",
                tally.publisher_cpu, tally.consumer_cpu
            );
        }
    }
    if nginx.is_some() {
        match ktls_before.zip(ktls_after) {
            Some((before, after)) => println!(
                "  kernel TLS: {} connections sent through it during the runs (0: nginx encrypted in user space, without sendfile)",
                after - before
            ),
            None => println!(
                "  kernel TLS: not loaded (no /proc/net/tls_stat): nginx read the file and encrypted it in user space; `sendfile on` does not apply to TLS"
            ),
        }
    }
    Ok(column)
}

/// One way's runs in a location.
#[derive(Default)]
struct Tally {
    /// MB/s, run by run.
    runs: Vec<f64>,
    /// CPU seconds each node spent in a run, on average (fetches only).
    publisher_cpu: f64,
    consumer_cpu: f64,
}

/// A ratio issue 15 sets a target for (or asks to see).
struct Ratio {
    of: Way,
    to: Way,
    target: Option<f64>,
}

/// Width of the table's first column.
const LABEL: usize = 62;

/// Prints each way's mean and the ratios, a column per location.
fn print_table(columns: &[Column], s: &Settings) {
    println!();
    let title = format!("== {} MiB, MB/s (mean of {} runs)", s.mib, s.rounds);
    print!("{title:<LABEL$}");
    for c in columns {
        print!("{:>12}", c.name);
    }
    println!();
    let n = s.streams;
    let mut ways = vec![
        Way::CurlOutput,
        Way::CurlOutputSync,
        Way::CurlTeeDigest,
        Way::Fetch(1),
    ];
    if n != 1 {
        ways.push(Way::Fetch(n));
    }
    ways.push(Way::Bare);
    for way in ways {
        print!("{:<LABEL$}", way.label());
        for c in columns {
            print!(
                "{:>12}",
                c.mean(way).map_or("-".into(), |v| format!("{v:.0}"))
            );
        }
        println!();
    }
    let ratios = [
        Ratio {
            of: Way::Fetch(1),
            to: Way::CurlOutput,
            target: Some(1.0),
        },
        Ratio {
            of: Way::Fetch(n),
            to: Way::CurlOutput,
            target: Some(1.0),
        },
        Ratio {
            of: Way::Fetch(n),
            to: Way::CurlOutputSync,
            target: None,
        },
        Ratio {
            of: Way::Fetch(n),
            to: Way::CurlTeeDigest,
            target: Some(2.0),
        },
    ];
    // With N = 1 the second ratio is the first.
    for (i, r) in ratios.into_iter().enumerate() {
        if i == 1 && n == 1 {
            continue;
        }
        let target = r
            .target
            .map_or("(no target)".into(), |t| format!("(target >= {t:.1})"));
        let label = format!("{} / {}  {target}", r.of.short(), r.to.short());
        print!("{label:<LABEL$}");
        for c in columns {
            let ratio = c.mean(r.of).zip(c.mean(r.to)).map(|(a, b)| a / b);
            let cell = match (ratio, r.target) {
                (Some(v), Some(t)) => format!("{v:.2} {}", if v >= t { "ok" } else { "NO" }),
                (Some(v), None) => format!("{v:.2}   "),
                (None, _) => "-   ".into(),
            };
            print!("{cell:>12}");
        }
        println!();
    }
}

/// Fetches `rss_mib` MiB on the disk with N streams; prints both nodes'
/// peak RSS (reset after publishing) against the limit.
async fn measure_rss(bin: &Path, s: &Settings) -> Result<(), BoxError> {
    let root = tempfile::Builder::new()
        .prefix(".transfer-bench-")
        .tempdir_in(std::env::current_dir()?)?;
    println!();
    println!(
        "== peak RSS, {} MiB fetch on disk with streams N = {} ({}, {}); load average {}",
        s.rss_mib,
        s.streams,
        root.path().display(),
        fs_type(root.path()),
        load_average()
    );
    let nodes = Nodes::start(bin, root.path(), s.rss_mib, s.show_pids).await?;
    let sha256 = content_sha256(s.rss_mib);
    for p in [&nodes.publisher, &nodes.consumer] {
        reset_peak_rss(p.pid())?;
    }
    let run = nodes.fetch(s.streams, &sha256).await?;
    println!("  fetch: {:.0} MB/s", run.mb_s);
    for (name, p) in [
        ("publisher", &nodes.publisher),
        ("consumer", &nodes.consumer),
    ] {
        let peak = peak_rss_mib(p.pid())?;
        let verdict = if peak <= RSS_LIMIT_MIB { "ok" } else { "NO" };
        println!("  peak RSS {name:<9} {peak:6.1} MiB  (limit {RSS_LIMIT_MIB:.0} MiB) {verdict}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let s = Settings::from_env()?;
    let bin = dsnode_binary()?;

    let mut locations: Vec<(&'static str, PathBuf)> = Vec::new();
    if s.runs(Phase::Tmpfs) {
        locations.push(("tmpfs", s.tmpfs.clone()));
    }
    if s.runs(Phase::Disk) {
        locations.push(("disk", std::env::current_dir()?));
    }
    let nginx = if locations.is_empty() {
        None
    } else {
        match nginx_binary() {
            Ok(bin) => Some(bin),
            Err(why) => {
                println!("no nginx, so no nginx lines: {why}");
                None
            }
        }
    };
    if !locations.is_empty() {
        println!(
            "== transfer of {} MiB in 1 MiB chunks, loopback, mutual TLS 1.3; streams N = {}; load average {}",
            s.mib,
            s.streams,
            load_average()
        );
    }
    let mut columns = Vec::new();
    for (name, dir) in locations {
        columns.push(measure(name, &dir, &bin, nginx.as_deref(), &s).await?);
    }
    if !columns.is_empty() {
        print_table(&columns, &s);
    }

    if s.runs(Phase::Rss) {
        measure_rss(&bin, &s).await?;
    }
    if s.runs(Phase::S3) {
        s3::measure(&bin, &s).await?;
    }
    Ok(())
}

/// The `s3` phase (issue 16): publish and fetch with both nodes' chunks in
/// an S3 bucket (s3s-fs on loopback, its root on the same disk) against the
/// same with both on the local disk, in one run; peak RSS of each node.
mod s3 {
    use super::*;

    /// s3s-fs's access key for the bench (loopback only).
    const KEY: (&str, &str) = ("AKIDSNODEBENCH", "dsnode-bench-secret");
    const BUCKET: &str = "bench";

    /// s3s-fs on loopback, killed on drop.
    struct Server {
        child: Child,
        endpoint: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_server(root: &Path) -> Result<Server, BoxError> {
        use std::io::BufRead;
        let home = std::env::var("HOME").unwrap_or_default();
        let bin = on_path("s3s-fs")
            .or_else(|| Some(PathBuf::from(format!("{home}/.cargo/bin/s3s-fs"))))
            .filter(|p| p.exists())
            .ok_or("no s3s-fs: cargo install s3s-fs --version 0.14.1 --features binary --locked")?;
        std::fs::create_dir_all(root.join(BUCKET))?;
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key", KEY.0])
            .args(["--secret-key", KEY.1])
            .arg(root)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(out).lines();
        let endpoint = loop {
            let line = lines.next().ok_or("s3s-fs ended")??;
            if let Some(at) = line.find("server is running at ") {
                break line[at + "server is running at ".len()..].trim().to_owned();
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, endpoint })
    }

    /// Puts both nodes of `space` on the bucket, each under its prefix.
    fn use_bucket(space: &Space, endpoint: &str, prefix: &str) -> Result<(), BoxError> {
        for (dir, role) in [
            (&space.publisher, "publisher"),
            (&space.consumer, "consumer"),
        ] {
            let mut toml = std::fs::read_to_string(dir.config())?;
            toml.push_str(&format!(
                "\n[storage]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}/{role}\"\nallow_http = true\ncredentials_file = \"s3.credentials\"\n"
            ));
            std::fs::write(dir.config(), toml)?;
            fsutil::write_atomic(
                &dir.root().join("s3.credentials"),
                format!(
                    "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                    KEY.0, KEY.1
                )
                .as_bytes(),
                0o600,
            )?;
        }
        Ok(())
    }

    /// One way's figures.
    #[derive(Default)]
    struct Run {
        publish_mb_s: f64,
        publish_object_mb_s: Option<f64>,
        /// The bucket alone: a multipart upload and one GET of the content.
        bucket_put_mb_s: Option<f64>,
        bucket_get_mb_s: Option<f64>,
        /// Fetched into a file (for the bucket: served from the bucket).
        fetch_file_mb_s: f64,
        /// Fetched into an object (the bucket only).
        fetch_object_mb_s: Option<f64>,
        publisher_rss: f64,
        consumer_rss: f64,
    }

    fn header(mib: usize, source: Option<String>) -> pb::PublishHeader {
        pb::PublishHeader {
            title: format!("bench {mib} MiB"),
            description: "object storage benchmark".into(),
            media_type: "application/octet-stream".into(),
            policy_toml: POLICY.into(),
            size: (mib * CHUNK) as u64,
            source: source.unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Publishes (streamed through the Admin API, as `dsnode publish
    /// FILE` does), and for the bucket also from an object already in it;
    /// then fetches with N streams into a file (local) or an object.
    async fn one_way(
        bin: &Path,
        root: &Path,
        server: Option<(&Server, &str)>,
        s: &Settings,
        sha256: &[u8; 32],
    ) -> Result<Run, BoxError> {
        let space = Space::new(root)?;
        if let Some((server, prefix)) = server {
            use_bucket(&space, &server.endpoint, prefix)?;
        }
        let publisher = NodeProcess::start(bin, &space.publisher).await?;
        let consumer = NodeProcess::start(bin, &space.consumer).await?;
        for p in [&publisher, &consumer] {
            reset_peak_rss(p.pid())?;
        }
        let bytes = (s.mib * CHUNK) as f64;
        let admin = AdminClient::new(&publisher.connect().await?);
        let started = Instant::now();
        let dataset = admin
            .publish(header(s.mib, None), tokio_stream::iter(0..s.mib).map(piece))
            .await?
            .dataset_id;
        let mut run = Run {
            publish_mb_s: bytes / started.elapsed().as_secs_f64() / 1e6,
            ..Run::default()
        };
        if let Some((server, prefix)) = server {
            // The same content as an object of its own, published where it
            // is; its upload and one GET of it time the bucket alone.
            let key = format!("{prefix}/incoming/content.bin");
            let file = root.join(CONTENT);
            write_content(&file, s.mib)?;
            let config = dsnode::runtime::config::S3Config {
                endpoint: server.endpoint.clone(),
                bucket: BUCKET.into(),
                prefix: String::new(),
                region: "us-east-1".into(),
                allow_http: true,
                credentials_file: None,
            };
            let creds = dsnode::runtime::config::S3Credentials {
                access_key_id: KEY.0.into(),
                secret_access_key: KEY.1.into(),
                session_token: None,
            };
            let bucket = dsnode::dataset::s3::Bucket::connect(&config, &creds, BUCKET)?;
            let url = dsnode::dataset::s3::ObjectUrl::parse(&format!("s3://{BUCKET}/{key}"))?;
            let started = Instant::now();
            bucket.upload_file(&url.key, &file).await?;
            run.bucket_put_mb_s = Some(bytes / started.elapsed().as_secs_f64() / 1e6);
            std::fs::remove_file(&file)?;
            let started = Instant::now();
            let (_, mut pieces) = bucket.read(&url.key).await?;
            while let Some(p) = pieces.next().await {
                p?;
            }
            run.bucket_get_mb_s = Some(bytes / started.elapsed().as_secs_f64() / 1e6);
            let mut h = header(s.mib, Some(url.to_string()));
            h.title = format!("bench {} MiB, from an object", s.mib);
            let started = Instant::now();
            admin.publish(h, tokio_stream::empty()).await?;
            run.publish_object_mb_s = Some(bytes / started.elapsed().as_secs_f64() / 1e6);
        }
        let consumer_admin = AdminClient::new(&consumer.connect().await?);
        let fetch = |out: PathBuf| {
            let (admin, publisher, dataset) = (&consumer_admin, &publisher, dataset.clone());
            let consumer = &consumer;
            async move {
                let grant = ask_grant(consumer, publisher, &dataset).await?;
                let options = FetchOptions {
                    streams: s.streams,
                    ..Default::default()
                };
                let (secs, _) = run_fetch(admin, publisher, &grant, &out, &options, sha256).await?;
                Ok::<f64, BoxError>(bytes / secs / 1e6)
            }
        };
        run.fetch_file_mb_s = fetch(root.join("out.bin")).await?;
        if let Some((_, prefix)) = server {
            // The consumer's copy of the first fetch goes, so that this one
            // transfers again (the same pack would be reused).
            for entry in std::fs::read_dir(space.consumer.packs())? {
                let path = entry?.path();
                if path.is_file() {
                    std::fs::remove_file(path)?;
                }
            }
            let out = PathBuf::from(format!("s3://{BUCKET}/{prefix}/received/out.bin"));
            run.fetch_object_mb_s = Some(fetch(out).await?);
        }
        run.publisher_rss = peak_rss_mib(publisher.pid())?;
        run.consumer_rss = peak_rss_mib(consumer.pid())?;
        Ok(run)
    }

    pub(super) async fn measure(bin: &Path, s: &Settings) -> Result<(), BoxError> {
        let root = tempfile::Builder::new()
            .prefix(".s3-bench-")
            .tempdir_in(std::env::current_dir()?)?;
        println!();
        println!(
            "== object storage: {} MiB published and fetched (N = {} streams), chunks on the local disk vs in an S3 bucket (s3s-fs on loopback, root on the same disk: {}, {}); load average {}",
            s.mib,
            s.streams,
            root.path().display(),
            fs_type(root.path()),
            load_average()
        );
        let server = match start_server(&root.path().join("s3")) {
            Ok(server) => server,
            Err(why) => {
                println!("  skipped: {why}");
                return Ok(());
            }
        };
        let sha256 = content_sha256(s.mib);
        let mut local = Vec::new();
        let mut bucket = Vec::new();
        // The ways take turns, run after run.
        for round in 0..s.rounds {
            let dir = root.path().join(format!("local-{round}"));
            local.push(one_way(bin, &dir, None, s, &sha256).await?);
            std::fs::remove_dir_all(&dir)?;
            let dir = root.path().join(format!("s3-{round}"));
            let prefix = format!("round-{round}");
            bucket.push(one_way(bin, &dir, Some((&server, &prefix)), s, &sha256).await?);
            std::fs::remove_dir_all(&dir)?;
            std::fs::remove_dir_all(root.path().join("s3").join(BUCKET).join(&prefix))?;
        }
        let most = |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).fold(0.0, f64::max);
        let line = |label: &str, l: f64, b: f64| {
            println!(
                "  {label:<48} local {l:7.0}   s3 {b:7.0}   s3/local {:5.2}",
                b / l
            );
        };
        let only = |label: &str, b: f64| println!("  {label:<48} {:>13}   s3 {b:7.0}", "");
        let some = |f: fn(&Run) -> Option<f64>| bucket.iter().filter_map(f).fold(0.0, f64::max);
        println!(
            "  (MB/s: the best of {} runs; peak RSS: the largest, MiB)",
            s.rounds
        );
        only(
            "the bucket alone: multipart upload (8 MiB parts)",
            some(|r| r.bucket_put_mb_s),
        );
        only("the bucket alone: one GET", some(|r| r.bucket_get_mb_s));
        line(
            "publish (streamed through the Admin API)",
            most(&local, |r| r.publish_mb_s),
            most(&bucket, |r| r.publish_mb_s),
        );
        only(
            "publish s3://object (read by the node)",
            some(|r| r.publish_object_mb_s),
        );
        line(
            "fetch into a file (s3: served from the bucket)",
            most(&local, |r| r.fetch_file_mb_s),
            most(&bucket, |r| r.fetch_file_mb_s),
        );
        line(
            "fetch (local: into a file; s3: into s3://)",
            most(&local, |r| r.fetch_file_mb_s),
            some(|r| r.fetch_object_mb_s),
        );
        line(
            "peak RSS publisher",
            most(&local, |r| r.publisher_rss),
            most(&bucket, |r| r.publisher_rss),
        );
        line(
            "peak RSS consumer",
            most(&local, |r| r.consumer_rss),
            most(&bucket, |r| r.consumer_rss),
        );
        Ok(())
    }
}
