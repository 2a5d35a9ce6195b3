//! Transfer throughput and memory, measured in one run on loopback.
//!
//! (a) the baseline: a bare tonic server stream of the same bytes over the
//!     node's own mutual-TLS acceptor and HTTP/2 settings, the receiver
//!     checking SHA-256 of each chunk (in this process, bytes from memory);
//! (b) a real `dsnode` fetch between two `dsnode serve` processes: the
//!     publisher reads its blob store, the consumer verifies every chunk
//!     and the whole content, writes the output and its own blob store,
//!     fsyncs, renames, signs and exchanges receipts.
//!
//! (b) runs with the data dirs on tmpfs (the software's cost) and on the
//! disk (what a node gets here; the disk's own fsynced write rate is
//! measured in the same run). Then a 4 GiB fetch on disk reports the peak
//! RSS (VmHWM, reset after publishing) of both node processes.
//!
//! ```text
//! cargo build --release && cargo run --release --example transfer_bench
//! ```
//!
//! `DSNODE_BENCH_MIB` (1024) and `DSNODE_BENCH_RSS_MIB` (4096) set the
//! sizes; `DSNODE_BENCH_TMPFS` (/dev/shm) the tmpfs directory.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsnode::fsutil;
use dsnode::identity::RoleSet;
use dsnode::identity::ca::{CaDir, CertificateAuthority, IssueRequest};
use dsnode::identity::cert::Host;
use dsnode::node;
use dsnode::runtime::config::{DataDir, TransportConfig};
use dsnode::runtime::tls;
use dsnode::wire::admin::{AdminClient, FetchEvent};
use dsnode::wire::client::{self, ClientSettings};
use dsnode::wire::pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

const CHUNK: usize = 1 << 20;

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["benchmark"]
roles = ["consumer"]
grant_ttl = "1d"
"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benchmark's content: `mib` pseudo-random MiB, the same every time.
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

fn free_port() -> Result<SocketAddr, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A CA and two nodes (publisher, consumer) under `root`.
struct Space {
    root: PathBuf,
    publisher: DataDir,
    consumer: DataDir,
}

impl Space {
    fn new(root: &Path) -> Result<Self, BoxError> {
        let ca_dir = root.join("ca");
        CertificateAuthority::init(&ca_dir, "Bench CA")?;
        let ca = CaDir::open(&ca_dir)?;
        let make = |name: &str, roles: &str| -> Result<DataDir, BoxError> {
            let dir = DataDir::new(root.join(name));
            node::init_data_dir(
                &dir,
                &name.parse()?,
                ca.ca().cert_pem().as_bytes(),
                (free_port()?, None),
                vec![Host::Ip("127.0.0.1".parse()?)],
            )?;
            let csr = std::fs::read_to_string(dir.csr())?;
            let issued = ca
                .ca()
                .issue(&csr, &IssueRequest::new(RoleSet::parse_list(roles)?))?;
            fsutil::write_atomic(&dir.cert(), issued.pem.as_bytes(), fsutil::PUBLIC_MODE)?;
            let crl = std::fs::read(ca.crl_path())?;
            fsutil::write_atomic(&dir.crl(), &crl, fsutil::PUBLIC_MODE)?;
            Ok(dir)
        };
        Ok(Self {
            root: root.to_path_buf(),
            publisher: make("publisher", "publisher")?,
            consumer: make("consumer", "consumer")?,
        })
    }
}

/// A `dsnode serve` process, killed on drop.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    dir: DataDir,
}

impl NodeProcess {
    async fn start(bin: &Path, dir: &DataDir) -> Result<Self, BoxError> {
        let config = dsnode::runtime::config::Config::load(dir.root())?;
        let log = std::fs::File::create(dir.root().join("serve.log"))?;
        let child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir.root())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let node = Self {
            child,
            addr: config.listen,
            dir: DataDir::new(dir.root()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match node.connect().await {
                Ok(_) => return Ok(node),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("node did not come up: {e}").into()),
            }
        }
    }

    /// A channel to this node, as itself (its Admin API).
    async fn connect(&self) -> Result<client::PeerChannel, BoxError> {
        let material = node::load_credentials(&self.dir)?.material;
        let conn = client::connect(
            tls::client_config(&material)?,
            &self.addr.to_string(),
            ClientSettings::default(),
        )
        .await?;
        Ok(conn)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmHWM in /proc/PID/status")?;
    Ok(kb / 1024.0)
}

/// CPU seconds a process has used (user + system).
fn cpu_secs(pid: u32) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .ok_or("bad /proc/PID/stat")?;
    Ok(ticks / 100.0)
}

/// Resets a process's peak RSS (Linux: `5` to `/proc/PID/clear_refs`).
fn reset_peak_rss(pid: u32) -> Result<(), BoxError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

async fn publish(node: &NodeProcess, mib: usize) -> Result<String, BoxError> {
    let size = (mib * CHUNK) as u64;
    let header = pb::PublishHeader {
        title: format!("bench {mib} MiB"),
        description: "transfer benchmark".into(),
        media_type: "application/octet-stream".into(),
        policy_toml: POLICY.into(),
        size,
        ..Default::default()
    };
    let r = AdminClient::new(&node.connect().await?)
        .publish(header, tokio_stream::iter(0..mib).map(piece))
        .await?;
    Ok(r.dataset_id)
}

async fn grant(
    consumer: &NodeProcess,
    publisher: SocketAddr,
    ds: &str,
) -> Result<String, BoxError> {
    let ask = dsnode::peer::AccessAsk {
        dataset_id: ds.into(),
        purpose: "benchmark".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    };
    let r = AdminClient::new(&consumer.connect().await?)
        .request_access(&publisher.to_string(), ask)
        .await?;
    let env: dsnode::envelope::Envelope = r.grant.ok_or("no grant")?.into();
    Ok(dsnode::exchange::grant::Grant::decode(&env.payload)?
        .id
        .to_string())
}

/// (b): one fetch through the consumer's Admin API; MB/s, end to end.
async fn fetch(
    consumer: &NodeProcess,
    publisher: SocketAddr,
    grant: &str,
    out: &Path,
) -> Result<f64, BoxError> {
    let started = Instant::now();
    let mut events = AdminClient::new(&consumer.connect().await?)
        .fetch(
            &publisher.to_string(),
            grant,
            out,
            &dsnode::wire::admin::FetchOptions {
                force: true,
                ..Default::default()
            },
        )
        .await?;
    while let Some(e) = events.next().await? {
        if let FetchEvent::Done(d) = e {
            let secs = started.elapsed().as_secs_f64();
            return Ok(d.bytes as f64 / secs / 1e6);
        }
    }
    Err("the fetch ended without a result".into())
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

/// Starts the bare server with the node's acceptor and HTTP/2 settings.
async fn bare_server(
    space: &Space,
    pieces: Arc<Vec<Vec<u8>>>,
) -> Result<(SocketAddr, tokio_util::sync::CancellationToken), BoxError> {
    let t = TransportConfig::default();
    let material = node::load_credentials(&space.publisher)?.material;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let incoming = tokio_stream::wrappers::ReceiverStream::new(tls::accept_loop(
        listener,
        tls::ServerConfigCell::new(tls::server_config(&material)?),
        tls::AcceptLimits {
            handshake_timeout: t.handshake_timeout,
            max_handshakes: t.max_handshakes,
            max_connections: t.max_connections,
        },
        Arc::new(tls::ConnectionRegistry::default()),
        stop.clone(),
    ));
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(t.max_concurrent_streams)
        .http2_keepalive_interval(Some(t.keepalive_interval))
        .http2_keepalive_timeout(Some(t.keepalive_timeout))
        .max_frame_size(t.max_frame_size)
        .initial_stream_window_size(t.stream_window)
        .initial_connection_window_size(t.connection_window)
        .tcp_nodelay(true)
        .add_service(pb::exchange_server::ExchangeServer::new(Bare { pieces }));
    let until = stop.clone();
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        until.cancelled().await;
    }));
    Ok((addr, stop))
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

/// The disk's rate for what a fetch does to it: 2 × `mib` MiB written in
/// 1 MiB writes (output and blob store), fsynced.
fn disk_rate(dir: &Path, mib: usize) -> Result<f64, BoxError> {
    let block = piece(7);
    let started = Instant::now();
    for name in ["disk-a", "disk-b"] {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let secs = started.elapsed().as_secs_f64();
    for name in ["disk-a", "disk-b"] {
        std::fs::remove_file(dir.join(name))?;
    }
    // Per byte of content fetched (each is written twice).
    Ok((mib * CHUNK) as f64 / secs / 1e6)
}

/// Publisher and consumer processes over a fresh data space in `root`,
/// with a dataset of `mib` MiB published and a grant to fetch it.
async fn scenario(
    bin: &Path,
    root: &Path,
    mib: usize,
) -> Result<(Space, NodeProcess, NodeProcess, String), BoxError> {
    let space = Space::new(root)?;
    let publisher = NodeProcess::start(bin, &space.publisher).await?;
    let consumer = NodeProcess::start(bin, &space.consumer).await?;
    if std::env::var_os("DSNODE_BENCH_PIDS").is_some() {
        eprintln!(
            "pids: publisher {} consumer {}",
            publisher.pid(),
            consumer.pid()
        );
    }
    let ds = publish(&publisher, mib).await?;
    let g = grant(&consumer, publisher.addr, &ds).await?;
    Ok((space, publisher, consumer, g))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mib = env_usize("DSNODE_BENCH_MIB", 1024);
    let rss_mib = env_usize("DSNODE_BENCH_RSS_MIB", 4096);
    let phases = std::env::var("DSNODE_BENCH_PHASES").unwrap_or("tmpfs,disk,rss".into());
    let tmpfs = PathBuf::from(std::env::var("DSNODE_BENCH_TMPFS").unwrap_or("/dev/shm".into()));
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("dsnode"))
        .filter(|p| p.exists())
        .ok_or("no dsnode binary next to this example: run `cargo build --release` first")?;

    println!("== transfer of {mib} MiB in 1 MiB chunks, loopback, mutual TLS");
    let pieces: Arc<Vec<Vec<u8>>> = Arc::new((0..mib).map(piece).collect());
    let hashes: Vec<[u8; 32]> = pieces
        .iter()
        .map(|p| {
            let mut h = [0u8; 32];
            h.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, p).as_ref());
            h
        })
        .collect();

    // On tmpfs: the software's cost, against the bare stream before and
    // after it.
    let shm = tempfile::tempdir_in(&tmpfs)?;
    let (space, publisher, consumer, g) = scenario(&bin, shm.path(), mib).await?;
    let (bare_addr, stop_bare) = bare_server(&space, pieces.clone()).await?;
    let a1 = bare_fetch(&space, bare_addr, &hashes).await?;
    let cpu = |p: &NodeProcess| cpu_secs(p.pid());
    let (p0, c0, s0) = (cpu(&publisher)?, cpu(&consumer)?, Instant::now());
    let b_shm = fetch(&consumer, publisher.addr, &g, &space.root.join("out.bin")).await?;
    let wall = s0.elapsed().as_secs_f64();
    let (p1, c1) = (cpu(&publisher)?, cpu(&consumer)?);
    let a2 = bare_fetch(&space, bare_addr, &hashes).await?;
    stop_bare.cancel();
    drop((publisher, consumer));
    drop(pieces);
    let a = (a1 + a2) / 2.0;
    println!(
        "(a) bare tonic mTLS stream + SHA-256 per chunk:  {a:7.0} MB/s (runs: {a1:.0}, {a2:.0})"
    );
    println!(
        "(b) dsnode fetch, data dirs on tmpfs:             {b_shm:7.0} MB/s   ratio b/a {:.2}",
        b_shm / a
    );
    println!(
        "    CPU during the fetch: publisher {:.2} s, consumer {:.2} s, in {wall:.2} s",
        p1 - p0,
        c1 - c0
    );
    drop(shm);

    if !phases.contains("disk") {
        return Ok(());
    }
    // On the disk, with its fsynced write rate measured alongside.
    let disk = tempfile::tempdir()?;
    let rate = disk_rate(disk.path(), mib)?;
    let (space, publisher, consumer, g) = scenario(&bin, disk.path(), mib).await?;
    let b_disk = fetch(&consumer, publisher.addr, &g, &space.root.join("out.bin")).await?;
    println!(
        "(b) dsnode fetch, data dirs on disk:              {b_disk:7.0} MB/s   ratio b/a {:.2}",
        b_disk / a
    );
    println!(
        "    the disk, writing output + blob store (2x) fsynced: {rate:.0} MB/s of content   ratio b/disk {:.2}",
        b_disk / rate
    );
    drop((publisher, consumer, space));
    drop(disk);

    if !phases.contains("rss") {
        return Ok(());
    }
    // Peak RSS of both nodes over a large fetch (reset after publishing).
    println!("== peak RSS, {rss_mib} MiB fetch on disk");
    let disk = tempfile::tempdir()?;
    let (space, publisher, consumer, g) = scenario(&bin, disk.path(), rss_mib).await?;
    for p in [&publisher, &consumer] {
        reset_peak_rss(p.pid())?;
    }
    let b_big = fetch(&consumer, publisher.addr, &g, &space.root.join("out.bin")).await?;
    println!("fetch: {b_big:.0} MB/s");
    println!(
        "peak RSS: publisher {:.1} MiB, consumer {:.1} MiB",
        peak_rss_mib(publisher.pid())?,
        peak_rss_mib(consumer.pid())?
    );
    Ok(())
}
