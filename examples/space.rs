//! A data space of N nodes on this machine (issue 19): a CA, N nodes
//! (`dsnode serve` processes, each its own data dir and certificate,
//! roles publisher and consumer) whose witnesses form a ring (each node
//! witnesses the next), and a regulator (role auditor). Each node
//! publishes a dataset, then requests and fetches the datasets of the
//! next two nodes through its own Admin API (every chunk verified,
//! receipts exchanged, both ledgers appended); each node exchanges
//! checkpoints with the next. The regulator then audits every ledger:
//! every entry proven against a verified checkpoint, each node's
//! witnesses' cosignatures verified and its log proven consistent with
//! them, and every publisher/consumer pair reconciled (one grant and one
//! receipt, recorded alike on both sides). Last, with the nodes idle, it
//! reads each process's resident memory.
//!
//! ```text
//! bash scripts/space.sh 30
//! ```
//!
//! (that is `cargo build --release && cargo run --release --example
//! space -- 30`). Exits 1 if any check fails or an idle node's RSS is
//! above 32 MiB.
//!
//! # Environment
//!
//! - `DSNODE_SPACE_KIB` (1024): each dataset's size.
//! - `DSNODE_SPACE_IDLE_SECS` (15, at least 1): how long the nodes sit idle before
//!   their memory is read (tokio's spare blocking threads end after 10 s).
//! - `DSNODE_SPACE_DIR` (the system's temporary directory): where the
//!   data space is made.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dsnode::audit::Auditor;
use dsnode::ledger::Query;
use dsnode::runtime::config::{Config, DataDir};
use dsnode::wire::admin::{AdminClient, FetchEvent, FetchOptions};
use dsnode::wire::pb;
use support::{BoxError, Ca, NodeProcess, dsnode_binary, env_number, load_average, status_mib};
use tokio::task::JoinSet;

/// Issue 19's bound on an idle node's resident memory.
const IDLE_RSS_LIMIT_MIB: f64 = 32.0;

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["research"]
roles = ["consumer"]
max_fetches = 3
"#;

/// Each node's dataset: pseudo-random bytes, different per node.
fn content(node: usize, kib: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ (node as u32).wrapping_mul(0x85eb_ca6b) | 1;
    (0..kib * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The next nodes of `i` in the ring whose datasets it fetches.
fn sources(i: usize, n: usize) -> Vec<usize> {
    [1, 2]
        .into_iter()
        .map(|k| (i + k) % n)
        .filter(|&j| j != i)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Publishes node `i`'s dataset; its id.
async fn publish(node: &NodeProcess, i: usize, kib: usize) -> Result<String, BoxError> {
    let data = content(i, kib);
    let header = pb::PublishHeader {
        title: format!("dataset of org-{i:03}"),
        description: "space run".into(),
        media_type: "application/octet-stream".into(),
        policy_toml: POLICY.into(),
        size: data.len() as u64,
        ..Default::default()
    };
    let pieces: Vec<Vec<u8>> = data.chunks(256 << 10).map(<[u8]>::to_vec).collect();
    Ok(AdminClient::new(&node.connect().await?)
        .publish(header, tokio_stream::iter(pieces))
        .await?
        .dataset_id)
}

/// Node `i` requests and fetches the dataset of each of its sources, and
/// checks what it received; then exchanges checkpoints with the next node.
async fn exchange(
    node: &NodeProcess,
    i: usize,
    n: usize,
    peers: &[(std::net::SocketAddr, String)],
    kib: usize,
    out: PathBuf,
) -> Result<(), BoxError> {
    let admin = AdminClient::new(&node.connect().await?);
    for j in sources(i, n) {
        let (addr, dataset) = &peers[j];
        let answer = admin
            .request_access(
                &addr.to_string(),
                dsnode::peer::AccessAsk {
                    dataset_id: dataset.clone(),
                    purpose: "research".into(),
                    actions: vec!["read".into()],
                    duration_secs: 0,
                },
            )
            .await
            .map_err(|e| format!("org-{i:03} asking org-{j:03}: {e}"))?;
        let envelope: dsnode::envelope::Envelope = answer.grant.ok_or("no grant")?.into();
        let grant = dsnode::exchange::grant::Grant::decode(&envelope.payload)?;
        let file = out.join(format!("org-{i:03}-from-{j:03}.bin"));
        let mut events = admin
            .fetch(
                &addr.to_string(),
                &grant.id.to_string(),
                &file,
                &FetchOptions {
                    force: true,
                    retries: 3,
                    ..FetchOptions::default()
                },
            )
            .await?;
        loop {
            match events.next().await? {
                Some(FetchEvent::Progress(_)) => {}
                Some(FetchEvent::Done(_)) => break,
                None => return Err(format!("org-{i:03}: the fetch ended without a result").into()),
            }
        }
        if std::fs::read(&file)? != content(j, kib) {
            return Err(
                format!("org-{i:03} received other bytes than org-{j:03} published").into(),
            );
        }
    }
    admin
        .witness(&peers[(i + 1) % n].0.to_string())
        .await
        .map_err(|e| format!("org-{i:03} exchanging checkpoints: {e}"))?;
    Ok(())
}

/// The regulator's audit; returns the failures found (empty: passed).
async fn audit(
    regulator: &DataDir,
    nodes: &[NodeProcess],
) -> Result<(Vec<String>, usize), BoxError> {
    let n = nodes.len();
    let mut auditors = Vec::with_capacity(n);
    for node in nodes {
        auditors.push(Auditor::new(Box::new(
            support::connect(regulator, node.addr).await?,
        )));
    }
    let known: Vec<_> = auditors.iter().map(|a| a.node().clone()).collect();
    let mut failures = Vec::new();
    let mut entries = 0;
    for (i, a) in auditors.iter_mut().enumerate() {
        match a.entries(Query::default(), true).await {
            Ok((_, all)) => entries += all.len(),
            Err(e) => failures.push(format!("org-{i:03}'s entries: {e}")),
        }
        match dsnode::audit::space::survey(a, &known).await {
            Ok(s) => {
                let verified = s.witnesses.iter().filter(|w| w.verified.is_ok()).count();
                if verified == 0 || !s.forks.is_empty() {
                    failures.push(format!(
                        "org-{i:03}: {verified} verified witness cosignature(s), {} fork(s)",
                        s.forks.len()
                    ));
                }
            }
            Err(e) => failures.push(format!("org-{i:03}'s survey: {e}")),
        }
    }
    for c in 0..n {
        for p in sources(c, n) {
            // Two auditors of the pair, borrowed apart.
            let (lo, hi) = (c.min(p), c.max(p));
            let (left, right) = auditors.split_at_mut(hi);
            let (on_lo, on_hi) = (&mut left[lo], &mut right[0]);
            let (on_p, on_c) = if p == lo {
                (on_lo, on_hi)
            } else {
                (on_hi, on_lo)
            };
            match dsnode::audit::reconcile::reconcile(on_p, on_c, None).await {
                Ok(r) if r.discrepancies.is_empty() && r.grants >= 1 && r.receipts >= 1 => {}
                Ok(r) => failures.push(format!(
                    "org-{p:03}/org-{c:03}: {} grant(s), {} receipt(s), {:?}",
                    r.grants, r.receipts, r.discrepancies
                )),
                Err(e) => failures.push(format!("org-{p:03}/org-{c:03}: {e}")),
            }
        }
    }
    Ok((failures, entries))
}

/// Proportional set size (`Pss` of /proc/PID/smaps_rollup), in MiB: what
/// a process costs when the binary's pages are shared.
fn pss_mib(pid: u32) -> Result<f64, BoxError> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kb: f64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no Pss in smaps_rollup")?;
    Ok(kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("{a:?}: expected a node count"))?,
        None => 30,
    };
    if n < 2 {
        return Err("a space needs at least 2 nodes".into());
    }
    let kib = env_number("DSNODE_SPACE_KIB", 1024)?.max(1);
    let idle = env_number("DSNODE_SPACE_IDLE_SECS", 15)? as u64;
    let bin = dsnode_binary()?;
    let base = std::env::var_os("DSNODE_SPACE_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::tempdir_in(&base)?;
    println!(
        "a data space of {n} nodes ({kib} KiB datasets) in {}, load {}",
        root.path().display(),
        load_average()
    );
    let started = Instant::now();

    let ca = Ca::new(root.path())?;
    let regulator = ca.node("regulator", "auditor", "")?;
    let dirs: Vec<DataDir> = (0..n)
        .map(|i| ca.node(&format!("org-{i:03}"), "publisher,consumer", ""))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<_> = dirs
        .iter()
        .map(|d| Config::load(d.root()).map(|c| c.listen))
        .collect::<Result<_, _>>()?;
    // The witness ring: each node witnesses, and is witnessed by, the next.
    for (i, d) in dirs.iter().enumerate() {
        let mut toml = std::fs::read_to_string(d.config())?;
        toml.push_str(&format!(
            "\n[witness]\npeers = [\"{}\"]\ninterval = \"60s\"\n",
            addrs[(i + 1) % n]
        ));
        std::fs::write(d.config(), toml)?;
    }
    let made = started.elapsed();

    let mut starting = JoinSet::new();
    for (i, d) in dirs.iter().enumerate() {
        let (bin, d) = (bin.clone(), d.clone());
        starting.spawn(async move { (i, NodeProcess::start(&bin, &d).await) });
    }
    let mut slots: Vec<Option<NodeProcess>> = (0..n).map(|_| None).collect();
    while let Some(r) = starting.join_next().await {
        let (i, node) = r?;
        slots[i] = Some(node.map_err(|e| format!("org-{i:03}: {e}"))?);
    }
    let nodes: Vec<NodeProcess> = slots.into_iter().flatten().collect();
    let up = started.elapsed();

    let mut publishing = JoinSet::new();
    let nodes = std::sync::Arc::new(nodes);
    for i in 0..n {
        let nodes = nodes.clone();
        publishing.spawn(async move { (i, publish(&nodes[i], i, kib).await) });
    }
    let mut datasets = vec![String::new(); n];
    while let Some(r) = publishing.join_next().await {
        let (i, id) = r?;
        datasets[i] = id.map_err(|e| format!("org-{i:03} publishing: {e}"))?;
    }
    let published = started.elapsed();

    let peers: std::sync::Arc<Vec<_>> = std::sync::Arc::new(
        nodes
            .iter()
            .map(|p| p.addr)
            .zip(datasets.iter().cloned())
            .collect(),
    );
    let mut exchanging = JoinSet::new();
    for i in 0..n {
        let (nodes, peers) = (nodes.clone(), peers.clone());
        let out = root.path().join("received");
        std::fs::create_dir_all(&out)?;
        exchanging.spawn(async move { exchange(&nodes[i], i, n, &peers, kib, out).await });
    }
    while let Some(r) = exchanging.join_next().await {
        r??;
    }
    let exchanged = started.elapsed();

    let (failures, entries) = audit(&regulator, &nodes).await?;
    let audited = started.elapsed();
    println!(
        "made {:.1}s, all serving {:.1}s, published {:.1}s, {} fetches {:.1}s, audited {:.1}s (total)",
        made.as_secs_f64(),
        up.as_secs_f64(),
        published.as_secs_f64(),
        n * sources(0, n).len(),
        exchanged.as_secs_f64(),
        audited.as_secs_f64()
    );
    println!(
        "audit: {entries} entries proven in {n} ledgers, {n} witness rings checked, {} pairs reconciled: {}",
        n * sources(0, n).len(),
        if failures.is_empty() {
            "PASSED".to_owned()
        } else {
            format!("FAILED\n  {}", failures.join("\n  "))
        }
    );

    tokio::time::sleep(Duration::from_secs(idle)).await;
    let mut rss = Vec::with_capacity(n);
    let mut pss = 0.0;
    for p in nodes.iter() {
        rss.push(status_mib(p.pid(), "VmRSS")?);
        pss += pss_mib(p.pid())?;
    }
    let max = rss.iter().copied().fold(0.0, f64::max);
    let mean = rss.iter().sum::<f64>() / n as f64;
    println!(
        "idle RSS after {idle}s: mean {mean:.1} MiB, max {max:.1} MiB (limit {IDLE_RSS_LIMIT_MIB:.0} MiB: {}); all {n} nodes' PSS {pss:.0} MiB ({:.1} MiB per node with the binary's pages shared)",
        if max <= IDLE_RSS_LIMIT_MIB {
            "met"
        } else {
            "NOT met"
        },
        pss / n as f64
    );
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    if !failures.is_empty() || max > IDLE_RSS_LIMIT_MIB {
        std::process::exit(1);
    }
    Ok(())
}
