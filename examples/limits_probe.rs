//! Issue 20's probes, re-run against a release `dsnode serve` with its
//! default limits: what one certified consumer can cost a publisher.
//!
//! ```text
//! cargo build --release && cargo run --release --example limits_probe
//! ```
//!
//! 1. Ledger growth: one consumer with no grant sends refused access
//!    requests as fast as it can from 8 connections, first all identical,
//!    then each with another purpose. Prints requests answered, refused by
//!    the rate limit, and ledger entries and bytes added a second.
//! 2. Connections: the same consumer opens 1,100 connections, each making
//!    a call; then another participant and the publisher's own operator
//!    make one.
//! 3. Memory: the consumer asks for 600 concurrent fetch streams of a
//!    32 MiB dataset and reads none of them; the publisher's RSS before,
//!    at its peak, and after the streams end.
//!
//! 4. A full disk (run as root: it mounts a 24 MiB tmpfs for a second
//!    publisher's data dir): a grant asked for on the full disk, then the
//!    time from freeing space to the next grant issued, with no restart.
//!    Also a test: `tests/it/faults.rs`
//!    (`disk_full_refuses_cleanly_keeps_reads_and_recovers_by_itself`).
//!
//! # Environment
//!
//! - `DSNODE_PROBE_SECONDS` (10): length of each ledger-growth run.

mod support;

use std::time::{Duration, Instant};

use dsnode::audit::Auditor;
use dsnode::runtime::config::DataDir;
use dsnode::wire::admin::AdminClient;
use dsnode::wire::client::PeerChannel;
use dsnode::wire::pb;
use support::{BoxError, Ca, NodeProcess, connect, dsnode_binary, env_number, status_mib};

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["research"]
roles = ["consumer"]
grant_ttl = "1d"
"#;

/// Entries in the publisher's ledger (its latest checkpoint's size).
async fn ledger_size(publisher: &NodeProcess) -> Result<u64, BoxError> {
    let mut a = Auditor::new(Box::new(publisher.connect().await?));
    Ok(a.checkpoint().await?.checkpoint.size)
}

/// Bytes under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Refused access requests from 8 connections for `seconds`: (answered
/// with the policy's reasons, refused by `peer_write_rate`, refused by
/// `peer_denial_rate`).
async fn refused_requests(
    conns: &[PeerChannel],
    dataset: &str,
    seconds: u64,
    distinct: bool,
) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (t, conn) in conns.iter().enumerate() {
        let client = pb::exchange_client::ExchangeClient::new(conn.channel.clone());
        let dataset = dataset.to_owned();
        tasks.spawn(async move {
            let (mut answered, mut writes, mut denials) = (0u64, 0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let purpose = if distinct {
                    format!("marketing-{t}-{i}")
                } else {
                    "marketing".to_owned()
                };
                let r = client
                    .clone()
                    .request_access(pb::RequestAccessRequest {
                        dataset_id: dataset.clone(),
                        purpose,
                        actions: vec!["read".into()],
                        duration_secs: 0,
                    })
                    .await;
                match r {
                    Err(s) if s.code() == tonic::Code::PermissionDenied => answered += 1,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        if s.message().contains("peer_denial_rate") {
                            denials += 1;
                        } else {
                            writes += 1;
                        }
                    }
                    other => panic!("unexpected answer: {other:?}"),
                }
            }
            (answered, writes, denials)
        });
    }
    let mut sum = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, w, d) = r.expect("join");
        sum = (sum.0 + a, sum.1 + w, sum.2 + d);
    }
    sum
}

async fn hello(conn: &PeerChannel) -> Result<(), tonic::Status> {
    pb::peering_client::PeeringClient::new(conn.channel.clone())
        .hello(pb::HelloRequest::default())
        .await
        .map(|_| ())
}

/// Publishes `content` as the publisher of `own` (its Admin API): the
/// dataset id.
async fn publish(own: &PeerChannel, content: &[u8]) -> Result<String, BoxError> {
    let header = pb::PublishHeader {
        title: "probe".into(),
        description: "issue 20 probes".into(),
        media_type: "application/octet-stream".into(),
        policy_toml: POLICY.into(),
        size: content.len() as u64,
        ..Default::default()
    };
    let pieces: Vec<Vec<u8>> = content.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    Ok(AdminClient::new(own)
        .publish(header, tokio_stream::iter(pieces))
        .await?
        .dataset_id)
}

/// A tmpfs mounted for the probe, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` when this process may not mount one.
    fn mount(path: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).ok()?;
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success()
            .then(|| Self(path.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Probe 4: a publisher whose data dir is on a 24 MiB tmpfs; a grant
/// asked for once the disk is full, then the time from freeing space to
/// the next grant issued.
async fn disk_full(
    bin: &std::path::Path,
    ca: &Ca,
    root: &std::path::Path,
    consumer: &DataDir,
) -> Result<(), BoxError> {
    let mount = root.join("small-disk");
    let Some(_disk) = SmallDisk::mount(&mount, "24m") else {
        println!("disk full: skipped (mounting a tmpfs needs root)");
        return Ok(());
    };
    let made = ca.node("small", "publisher", "")?;
    let dir = DataDir::new(mount.join("small"));
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(made.root())
        .arg(dir.root())
        .status()?;
    if !copied.success() {
        return Err("cannot copy the data dir onto the tmpfs".into());
    }
    let publisher = NodeProcess::start(bin, &dir).await?;
    let dataset = publish(&publisher.connect().await?, b"a,b\n1\n").await?;
    let client =
        pb::exchange_client::ExchangeClient::new(connect(consumer, publisher.addr).await?.channel);
    let ask = || {
        let mut client = client.clone();
        let dataset = dataset.clone();
        async move {
            client
                .request_access(pb::RequestAccessRequest {
                    dataset_id: dataset,
                    purpose: "research".into(),
                    actions: vec!["read".into()],
                    duration_secs: 0,
                })
                .await
        }
    };
    ask().await?;
    let filler = mount.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let first = ask().await.err().ok_or("granted on a full disk")?;
    let again = ask().await.err().ok_or("granted on a full disk")?;
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let (mut refused, mut limited) = (0, 0);
    loop {
        match ask().await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                if s.message().contains("peer_write_rate") {
                    limited += 1;
                } else {
                    refused += 1;
                }
            }
            Err(s) => return Err(format!("unexpected answer: {s:?}").into()),
        }
        if freed.elapsed() > Duration::from_secs(30) {
            return Err("no grant 30 s after space was freed".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "disk full: the grant asked for on a full 24 MiB tmpfs: {:?} \"{}\"; the next: {:?} \"{}\"; space freed: granted again {:.2} s later, without a restart ({refused} more refused as full, {limited} rate-limited meanwhile)",
        first.code(),
        first.message(),
        again.code(),
        again.message(),
        freed.elapsed().as_secs_f64()
    );
    drop(publisher);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let seconds = env_number("DSNODE_PROBE_SECONDS", 10)? as u64;
    let bin = dsnode_binary()?;
    let root = tempfile::tempdir()?;
    let ca = Ca::new(root.path())?;
    let publisher_dir = ca.node("publisher", "publisher", "")?;
    let acme: DataDir = ca.node("acme", "consumer", "")?;
    let beta: DataDir = ca.node("beta", "consumer", "")?;
    let publisher = NodeProcess::start(&bin, &publisher_dir).await?;
    let own = publisher.connect().await?;
    let content: Vec<u8> = (0..32u8).flat_map(|i| vec![i; 1 << 20]).collect();
    let dataset = publish(&own, &content).await?;
    println!("dsnode limits probe: default [limits] and [transport], release build");

    // 1. Ledger growth.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(connect(&acme, publisher.addr).await?);
    }
    let ledger_dir = publisher_dir.ledger();
    for distinct in [false, true] {
        let (size0, bytes0) = (ledger_size(&publisher).await?, du(&ledger_dir));
        let started = Instant::now();
        let (answered, writes, denials) =
            refused_requests(&conns, &dataset, seconds, distinct).await;
        let took = started.elapsed().as_secs_f64();
        // Repeats of identical refusals are recorded when their window
        // ends (60 s) or at a clean stop: counted here as one more entry.
        let (size1, bytes1) = (ledger_size(&publisher).await?, du(&ledger_dir));
        println!(
            "ledger growth, {} refusals: {:.0} requests/s sent, {:.1}/s answered with reasons, {:.0}/s refused by peer_write_rate, {:.1}/s by peer_denial_rate; ledger +{} entries ({:.1}/s), +{:.2} MB",
            if distinct { "distinct" } else { "identical" },
            (answered + writes + denials) as f64 / took,
            answered as f64 / took,
            writes as f64 / took,
            denials as f64 / took,
            size1 - size0,
            (size1 - size0) as f64 / took,
            (bytes1 as f64 - bytes0 as f64) / 1e6,
        );
        // The bucket refills before the next run.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(conns);

    // 2. Connections.
    let mut held = Vec::new();
    let (mut ok, mut refused, mut failed) = (0, 0, 0);
    let mut said = String::new();
    for _ in 0..1100 {
        match connect(&acme, publisher.addr).await {
            Ok(conn) => match hello(&conn).await {
                Ok(()) => {
                    ok += 1;
                    held.push(conn);
                }
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    refused += 1;
                    said = s.message().to_owned();
                }
                Err(_) => failed += 1,
            },
            Err(_) => failed += 1,
        }
    }
    let other = hello(&connect(&beta, publisher.addr).await?).await;
    let status = AdminClient::new(&publisher.connect().await?).status().await;
    println!(
        "connections: 1,100 opened by one certificate: {ok} served, {refused} refused (\"{said}\"), {failed} failed; another participant: {}; the operator's status: {}",
        if other.is_ok() { "served" } else { "REFUSED" },
        if status.is_ok() { "served" } else { "REFUSED" },
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Memory with 600 fetch streams.
    let con = connect(&acme, publisher.addr).await?;
    let grant = pb::exchange_client::ExchangeClient::new(con.channel.clone())
        .request_access(pb::RequestAccessRequest {
            dataset_id: dataset.clone(),
            purpose: "research".into(),
            actions: vec!["read".into()],
            duration_secs: 0,
        })
        .await?
        .into_inner()
        .grant
        .ok_or("no grant")?;
    let grant_id = dsnode::exchange::grant::Grant::decode(&grant.payload)?
        .id
        .to_string();
    tokio::time::sleep(Duration::from_secs(5)).await; // the write bucket refills
    let pid = publisher.pid();
    let before = status_mib(pid, "VmRSS")?;
    let mut stream_conns = Vec::new();
    for _ in 0..10 {
        stream_conns.push(connect(&acme, publisher.addr).await?);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..600 {
        let channel = stream_conns[i % stream_conns.len()].channel.clone();
        let grant_id = grant_id.clone();
        calls.spawn(async move {
            pb::exchange_client::ExchangeClient::new(channel)
                .max_decoding_message_size(2 << 20)
                .fetch(pb::FetchRequest {
                    grant_id,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let (mut open, mut refused) = (Vec::new(), std::collections::BTreeMap::new());
    while let Some(call) = calls.join_next().await {
        match call? {
            Ok(s) => open.push(s),
            Err(s) => *refused.entry(format!("{:?}", s.code())).or_insert(0) += 1,
        }
    }
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(status_mib(pid, "VmRSS")?);
    }
    drop(open);
    drop(stream_conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_mib(pid, "VmRSS")?;
    println!(
        "memory: 600 fetch streams asked, {} served, refused {refused:?}; publisher RSS {before:.0} MiB before, {peak:.0} MiB peak, {after:.0} MiB after",
        600 - refused.values().sum::<usize>()
    );

    // 4. A full disk.
    disk_full(&bin, &ca, root.path(), &acme).await
}
