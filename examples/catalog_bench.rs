//! A catalog of many datasets (issue 19): a real `dsnode serve` publishes
//! `DSNODE_BENCH_DATASETS` (100,000) small datasets through its Admin API,
//! then a consumer lists the catalog over mutual TLS: `Catalog.ListDatasets`
//! pages of 100, the first page and pages from random positions (p50,
//! p99), and the whole walk. The baseline, in the same run, is the same
//! page size at a catalog of `DSNODE_BENCH_SMALL` (1,000): a page should
//! cost what it returns, not the catalog's size. The node's start-up with
//! that many datasets (every manifest verified) is timed too.
//!
//! The data dir is on tmpfs (`/dev/shm`, or `DSNODE_BENCH_TMPFS`): each
//! publication fsyncs, and on this machine's disk 100,000 of them would
//! take most of an hour.
//!
//! ```text
//! cargo build --release && cargo run --release --example catalog_bench
//! ```

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dsnode::runtime::config::DataDir;
use dsnode::wire::admin::AdminClient;
use dsnode::wire::client::PeerChannel;
use dsnode::wire::pb;
use support::{BoxError, Ca, NodeProcess, dsnode_binary, env_number, load_average, percentile};

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["benchmark"]
roles = ["consumer"]
"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Publishes datasets `from..to` (8 callers at once; the node takes them
/// one at a time).
async fn publish(node: &NodeProcess, from: usize, to: usize) -> Result<(), BoxError> {
    let admin = AdminClient::new(&node.connect().await?);
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..8 {
        let admin = admin.clone();
        tasks.spawn(async move {
            for i in (from + part..to).step_by(8) {
                let header = pb::PublishHeader {
                    title: format!("dataset {i:06}"),
                    description: "catalog benchmark".into(),
                    media_type: "text/plain".into(),
                    policy_toml: POLICY.into(),
                    size: 8,
                    ..Default::default()
                };
                admin
                    .publish(header, tokio_stream::iter([format!("{i:08}").into_bytes()]))
                    .await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// One page of 100 from just after `token`; its entries' ids.
async fn page(channel: &PeerChannel, token: &str) -> Result<Vec<String>, BoxError> {
    let answer = pb::catalog_client::CatalogClient::new(channel.channel.clone())
        .list_datasets(pb::ListDatasetsRequest {
            limit: 100,
            page_token: token.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(answer.datasets.into_iter().map(|d| d.dataset_id).collect())
}

/// Walks the whole catalog; its ids in order, and how long it took.
async fn walk(channel: &PeerChannel) -> Result<(Vec<String>, Duration), BoxError> {
    let started = Instant::now();
    let mut ids: Vec<String> = Vec::new();
    loop {
        let token = ids.last().cloned().unwrap_or_default();
        let got = page(channel, &token).await?;
        if got.is_empty() {
            return Ok((ids, started.elapsed()));
        }
        ids.extend(got);
    }
}

/// p50 and p99 of 2,000 full pages from random positions in `ids` (at
/// least 101 of them).
async fn random_pages(
    channel: &PeerChannel,
    ids: &[String],
) -> Result<(Duration, Duration), BoxError> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A position with a full page after it.
        let token = &ids[(x % (ids.len() - 100) as u64) as usize];
        let t = Instant::now();
        page(channel, token).await?;
        lat.push(t.elapsed());
    }
    Ok((percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
}

/// Lists the catalog: (first page p99, random page p50 and p99, walk).
async fn measure(
    label: &str,
    consumer: &DataDir,
    node: &NodeProcess,
    want: usize,
) -> Result<Duration, BoxError> {
    let channel = support::connect(consumer, node.addr).await?;
    let mut first = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        page(&channel, "").await?;
        first.push(t.elapsed());
    }
    let (ids, took) = walk(&channel).await?;
    if ids.len() != want {
        return Err(format!("listed {} datasets, not {want}", ids.len()).into());
    }
    let (p50, p99) = random_pages(&channel, &ids).await?;
    println!(
        "{label}: first page p99 {:.2} ms; random page p50 {:.2} ms p99 {:.2} ms; whole walk {:.1}s ({} pages)",
        ms(percentile(&mut first, 0.99)),
        ms(p50),
        ms(p99),
        took.as_secs_f64(),
        want.div_ceil(100)
    );
    Ok(p99)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let big = env_number("DSNODE_BENCH_DATASETS", 100_000)?;
    let small = env_number("DSNODE_BENCH_SMALL", 1_000)?.max(101);
    let big = big.max(small);
    let base = std::env::var_os("DSNODE_BENCH_TMPFS")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let root = tempfile::tempdir_in(&base)?;
    let bin = dsnode_binary()?;
    println!(
        "catalog of {big} datasets (baseline {small}) in {}, load {}",
        base.display(),
        load_average()
    );
    let ca = Ca::new(root.path())?;
    let publisher = ca.node("publisher", "publisher", "")?;
    let consumer = ca.node("consumer", "consumer", "")?;
    let node = NodeProcess::start(&bin, &publisher).await?;

    let t = Instant::now();
    publish(&node, 0, small).await?;
    println!("published {small} in {:.1}s", t.elapsed().as_secs_f64());
    let small_p99 = measure(&format!("{small:>7} datasets"), &consumer, &node, small).await?;

    let t = Instant::now();
    publish(&node, small, big).await?;
    println!(
        "published {} more in {:.1}s",
        big - small,
        t.elapsed().as_secs_f64()
    );
    let big_p99 = measure(&format!("{big:>7} datasets"), &consumer, &node, big).await?;
    println!(
        "random page p99 at {big} / at {small}: {:.2} (a page should not cost the catalog's size)",
        big_p99.as_secs_f64() / small_p99.as_secs_f64()
    );

    drop(node);
    let t = Instant::now();
    let node = NodeProcess::start(&bin, &publisher).await?;
    println!(
        "start-up with {big} datasets (every manifest verified): {:.1}s",
        t.elapsed().as_secs_f64()
    );
    drop(node);
    Ok(())
}
