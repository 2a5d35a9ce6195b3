//! Grant throughput (issue 19): `Exchange.RequestAccess` over mutual TLS
//! from many concurrent clients, each on its own connection with its own
//! certificate, against a real `dsnode serve` process; every grant
//! evaluated against the dataset's policy, signed, and durably recorded
//! (the grant and its `AccessGranted` entry committed in one ledger batch
//! and fsynced) before it is answered. The baseline, measured in the same run, is the same number
//! of bare unary calls of the same size: a tonic server in this process
//! answering `RequestAccess` with a grant captured from the node, over
//! the node's own mutual-TLS acceptor and HTTP/2 settings, to the same
//! clients. The ways take turns, run after run.
//!
//! ```text
//! cargo build --release && cargo run --release --example grant_bench
//! ```
//!
//! Prints grants/s, p50/p99 latency, the ratio to the bare calls, and the
//! publisher's CPU seconds per grant.
//!
//! # Environment
//!
//! - `DSNODE_BENCH_CLIENTS` (64): concurrent clients.
//! - `DSNODE_BENCH_SECONDS` (10): length of each timed run.
//! - `DSNODE_BENCH_RUNS` (2): runs of each way.
//! - `DSNODE_BENCH_DIR` (the current directory: the project's disk under
//!   `cargo run`): where the data space is made; its file system type is
//!   printed.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dsnode::node;
use dsnode::runtime::config::DataDir;
use dsnode::wire::admin::AdminClient;
use dsnode::wire::client::PeerChannel;
use dsnode::wire::pb;
use prost::Message;
use support::{
    BoxError, Ca, NodeProcess, cpu_secs, dsnode_binary, env_number, fs_type, load_average,
};
use tonic::{Request, Response, Status};

/// Issue 19's targets.
const TARGET_GRANTS_PER_SEC: f64 = 3_000.0;
const TARGET_RATIO: f64 = 0.5;

/// `[limits]` lifted out of the way of the benchmark.
const UNLIMITED_PEERS: &str = "[limits]\npeer_write_rate = 1000000\npeer_write_burst = 1000000\nmax_live_grants_per_peer = 100000000";

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["benchmark"]
roles = ["consumer"]
grant_ttl = "1d"
"#;

fn ask(dataset: &str) -> pb::RequestAccessRequest {
    pb::RequestAccessRequest {
        dataset_id: dataset.to_owned(),
        purpose: "benchmark".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    }
}

/// The bare server: answers every `RequestAccess` with the same grant.
struct Bare {
    answer: pb::Envelope,
}

#[tonic::async_trait]
impl pb::exchange_server::Exchange for Bare {
    async fn request_access(
        &self,
        _: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::RequestAccessResponse>, Status> {
        Ok(Response::new(pb::RequestAccessResponse {
            grant: Some(self.answer.clone()),
        }))
    }
}

/// One connection per client, each with its own certificate.
async fn connect_all(clients: &[DataDir], addr: SocketAddr) -> Result<Vec<PeerChannel>, BoxError> {
    let mut channels = Vec::with_capacity(clients.len());
    for dir in clients {
        channels.push(support::connect(dir, addr).await?);
    }
    Ok(channels)
}

/// What one timed run measured.
struct Run {
    calls_per_sec: f64,
    p50: Duration,
    p99: Duration,
    calls: usize,
}

/// Every client calls `RequestAccess` back to back for `seconds`; each
/// answer must carry a grant.
async fn timed(channels: &[PeerChannel], dataset: &str, seconds: u64) -> Result<Run, BoxError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in channels {
        let mut client = pb::exchange_client::ExchangeClient::new(c.channel.clone());
        let request = ask(dataset);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let answer = client.request_access(request.clone()).await?.into_inner();
                latencies.push(t.elapsed());
                if answer.grant.is_none() {
                    return Err::<_, BoxError>("an answer without a grant".into());
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = all.len();
    Ok(Run {
        calls_per_sec: calls as f64 / elapsed,
        p50: support::percentile(&mut all, 0.5),
        p99: support::percentile(&mut all, 0.99),
        calls,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let clients = env_number("DSNODE_BENCH_CLIENTS", 64)?;
    let seconds = env_number("DSNODE_BENCH_SECONDS", 10)? as u64;
    let runs = env_number("DSNODE_BENCH_RUNS", 2)?;
    let bin = dsnode_binary()?;
    let base = std::env::var_os("DSNODE_BENCH_DIR")
        .map_or_else(std::env::current_dir, |d| Ok(d.into()))?;
    let root = tempfile::tempdir_in(&base)?;
    println!(
        "grant throughput: {clients} clients, {seconds} s runs, data space on {} ({}), load {}",
        base.display(),
        fs_type(&base),
        load_average()
    );

    let ca = Ca::new(root.path())?;
    // Throughput, not the per-peer limits (issue 20), is measured here:
    // each client asks far past `peer_write_rate` and holds far more
    // grants than `max_live_grants_per_peer`.
    let publisher_dir = ca.node("publisher", "publisher", UNLIMITED_PEERS)?;
    let consumers: Vec<DataDir> = (0..clients)
        .map(|i| ca.node(&format!("consumer-{i:03}"), "consumer", ""))
        .collect::<Result<_, _>>()?;
    let publisher = NodeProcess::start(&bin, &publisher_dir).await?;
    let header = pb::PublishHeader {
        title: "grant benchmark".into(),
        description: "a small dataset to be granted".into(),
        media_type: "application/octet-stream".into(),
        policy_toml: POLICY.into(),
        size: 1024,
        ..Default::default()
    };
    let dataset = AdminClient::new(&publisher.connect().await?)
        .publish(header, tokio_stream::iter([vec![7u8; 1024]]))
        .await?
        .dataset_id;

    let to_node = connect_all(&consumers, publisher.addr).await?;
    // A grant, checked against the publisher's key: what the bare
    // server answers with.
    let first = pb::exchange_client::ExchangeClient::new(to_node[0].channel.clone())
        .request_access(ask(&dataset))
        .await?
        .into_inner()
        .grant
        .ok_or("no grant")?;
    let publisher_key = node::load_credentials(&publisher_dir)?
        .key
        .signing_key()
        .verifying_key()
        .to_bytes();
    dsnode::exchange::grant::verify_grant(first.clone().into(), &publisher_key)?;
    let size = pb::RequestAccessResponse {
        grant: Some(first.clone()),
    }
    .encoded_len();
    println!("answer size: {size} bytes (a signed grant)");
    let (bare_addr, stop) = support::bare_exchange(&publisher_dir, Bare { answer: first }).await?;
    let to_bare = connect_all(&consumers, bare_addr).await?;

    // One short uncounted round of each way.
    timed(&to_bare, &dataset, 1).await?;
    timed(&to_node, &dataset, 1).await?;
    let (mut bare, mut node_runs) = (Vec::new(), Vec::new());
    let mut cpu_per_grant = Vec::new();
    for run in 1..=runs {
        let b = timed(&to_bare, &dataset, seconds).await?;
        println!(
            "run {run} bare unary calls:      {:>7.0} calls/s   p50 {:>6.2} ms  p99 {:>6.2} ms",
            b.calls_per_sec,
            ms(b.p50),
            ms(b.p99)
        );
        bare.push(b.calls_per_sec);
        let cpu = cpu_secs(publisher.pid())?;
        let g = timed(&to_node, &dataset, seconds).await?;
        let cpu = cpu_secs(publisher.pid())? - cpu;
        println!(
            "run {run} RequestAccess grants:  {:>7.0} grants/s  p50 {:>6.2} ms  p99 {:>6.2} ms   (publisher CPU {:.0} µs/grant)",
            g.calls_per_sec,
            ms(g.p50),
            ms(g.p99),
            cpu / g.calls as f64 * 1e6
        );
        cpu_per_grant.push(cpu / g.calls as f64);
        node_runs.push(g.calls_per_sec);
    }
    stop.cancel();
    let (g, b) = (mean(&node_runs), mean(&bare));
    let ratio = g / b;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "\ngrants/s {g:.0} (target {TARGET_GRANTS_PER_SEC:.0}: {}); bare calls/s {b:.0}; ratio {ratio:.2} (target {TARGET_RATIO}: {})",
        verdict(g >= TARGET_GRANTS_PER_SEC),
        verdict(ratio >= TARGET_RATIO)
    );
    println!(
        "publisher CPU per grant: {:.0} µs",
        mean(&cpu_per_grant) * 1e6
    );
    // What a restart costs with every grant issued so far (only the live
    // ones are counted at start-up; each is verified when first used).
    drop((to_node, to_bare));
    let issued = AdminClient::new(&publisher.connect().await?)
        .list_grants()
        .await?
        .len();
    // After a crash the ledger re-verifies what it appended since its
    // verified mark: here every entry of the runs.
    drop(publisher);
    let t = Instant::now();
    let publisher = NodeProcess::start(&bin, &publisher_dir).await?;
    println!(
        "publisher start-up with {issued} issued grants, after a kill -9: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    publisher.stop()?;
    let t = Instant::now();
    let publisher = NodeProcess::start(&bin, &publisher_dir).await?;
    println!(
        "publisher start-up with {issued} issued grants, after a clean stop: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    drop(publisher);
    Ok(())
}
