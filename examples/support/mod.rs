//! What the benchmark programs share: a data space made at run time (a CA
//! and nodes with real certificates), `dsnode serve` processes, loopback
//! ports, and readings of `/proc`.

#![allow(dead_code)] // each benchmark uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dsnode::fsutil;
use dsnode::identity::RoleSet;
use dsnode::identity::ca::{CaDir, CertificateAuthority, IssueRequest};
use dsnode::identity::cert::Host;
use dsnode::node;
use dsnode::runtime::config::DataDir;
use dsnode::runtime::tls;
use dsnode::wire::client::{self, ClientSettings};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A loopback port free now and never handed out before in this run: the
/// kernel may offer a port it just gave to the other node of a space,
/// which would then find its own port taken (and a client of it would
/// reach the other node).
pub(crate) fn free_port() -> Result<SocketAddr, BoxError> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().map_err(|_| "port list poisoned")?;
    for _ in 0..100 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
    Err("no fresh loopback port in 100 tries".into())
}

/// The file system type of `dir` (`df --output=fstype`), e.g. "tmpfs".
pub(crate) fn fs_type(dir: &Path) -> String {
    Command::new("df")
        .arg("--output=fstype")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().nth(1).map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The machine's 1-minute load average (/proc/loadavg), against its cores:
/// other work running during the bench makes its numbers noisy.
pub(crate) fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} on {cores} cores",
        load.split_whitespace().next().unwrap_or("?")
    )
}

/// A data-space CA under `root/ca`, issuing node certificates valid for
/// 127.0.0.1 (what curl checks too).
pub(crate) struct Ca {
    root: PathBuf,
    ca: CaDir,
}

impl Ca {
    pub(crate) fn new(root: &Path) -> Result<Self, BoxError> {
        let ca_dir = root.join("ca");
        CertificateAuthority::init(&ca_dir, "Bench CA")?;
        Ok(Self {
            root: root.to_path_buf(),
            ca: CaDir::open(&ca_dir)?,
        })
    }

    /// A node's data dir `root/name`, certified for `roles`, listening on
    /// a fresh loopback port. `extra_toml` is appended to its `node.toml`
    /// (whose last table is `[transport]`: bare keys land in it).
    pub(crate) fn node(
        &self,
        name: &str,
        roles: &str,
        extra_toml: &str,
    ) -> Result<DataDir, BoxError> {
        let dir = DataDir::new(self.root.join(name));
        node::init_data_dir(
            &dir,
            &name.parse()?,
            self.ca.ca().cert_pem().as_bytes(),
            (free_port()?, None),
            vec![Host::Ip("127.0.0.1".parse()?)],
        )?;
        let csr = std::fs::read_to_string(dir.csr())?;
        let issued = self
            .ca
            .ca()
            .issue(&csr, &IssueRequest::new(RoleSet::parse_list(roles)?))?;
        fsutil::write_atomic(&dir.cert(), issued.pem.as_bytes(), fsutil::PUBLIC_MODE)?;
        let crl = std::fs::read(self.ca.crl_path())?;
        fsutil::write_atomic(&dir.crl(), &crl, fsutil::PUBLIC_MODE)?;
        if !extra_toml.is_empty() {
            let mut toml = std::fs::read_to_string(dir.config())?;
            toml.push_str(extra_toml);
            toml.push('\n');
            std::fs::write(dir.config(), toml)?;
        }
        Ok(dir)
    }
}

/// A mutual-TLS channel to `addr` as the node of `dir`.
pub(crate) async fn connect(
    dir: &DataDir,
    addr: SocketAddr,
) -> Result<client::PeerChannel, BoxError> {
    let material = node::load_credentials(dir)?.material;
    Ok(client::connect(
        tls::client_config(&material)?,
        &addr.to_string(),
        ClientSettings::default(),
    )
    .await?)
}

/// The release `dsnode` binary next to the running example.
pub(crate) fn dsnode_binary() -> Result<PathBuf, BoxError> {
    Ok(std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("dsnode"))
        .filter(|p| p.exists())
        .ok_or("no dsnode binary next to this example: run `cargo build --release` first")?)
}

/// A `dsnode serve` process, killed on drop.
pub(crate) struct NodeProcess {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: DataDir,
}

impl NodeProcess {
    pub(crate) async fn start(bin: &Path, dir: &DataDir) -> Result<Self, BoxError> {
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
    pub(crate) async fn connect(&self) -> Result<client::PeerChannel, BoxError> {
        connect(&self.dir, self.addr).await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the node as an operator does (SIGTERM: it finishes what it
    /// was doing, closes its ledger and moves the verified mark), waiting
    /// at most 60 s.
    pub(crate) fn stop(mut self) -> Result<(), BoxError> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -TERM {}: {status}", self.pid()).into());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return Err("the node did not stop within 60 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/PID/status` in kB (`VmHWM`, `VmRSS`), in MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> Result<f64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Peak resident set size of a process, in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Result<f64, BoxError> {
    status_mib(pid, "VmHWM")
}

/// CPU seconds a process has used (user + system).
pub(crate) fn cpu_secs(pid: u32) -> Result<f64, BoxError> {
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
pub(crate) fn reset_peak_rss(pid: u32) -> Result<(), BoxError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// The `p`-quantile of `samples` (sorted here).
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// A whole number above 0 from the environment, or `default` if unset.
pub(crate) fn env_number(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => Ok(v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{name}={v:?}: expected a whole number above 0"))?),
    }
}

/// A bare `Exchange` server in this process, as the node of `dir`: the
/// node's own mutual-TLS acceptor and HTTP/2 settings, none of its
/// layers. What a benchmark's baseline calls.
pub(crate) async fn bare_exchange<S: dsnode::wire::pb::exchange_server::Exchange>(
    dir: &DataDir,
    service: S,
) -> Result<(SocketAddr, tokio_util::sync::CancellationToken), BoxError> {
    let t = dsnode::runtime::config::TransportConfig::default();
    let material = node::load_credentials(dir)?.material;
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
            max_connections_per_peer: t.max_connections_per_peer,
        },
        node::load_credentials(dir)?.identity.node_id,
        std::sync::Arc::new(tls::ConnectionRegistry::default()),
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
        .add_service(dsnode::wire::pb::exchange_server::ExchangeServer::new(
            service,
        ));
    let until = stop.clone();
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        until.cancelled().await;
    }));
    Ok((addr, stop))
}
