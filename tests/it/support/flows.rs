//! The flows the tests share, through nodes' own Admin APIs: publishing
//! under the test policy, asking for access, fetching (with or without its
//! progress), and what they leave behind (the kept receipt, the entries
//! the ledgers recorded).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dsnode::audit::Auditor;
use dsnode::exchange::fetch::{FetchProgress, Fetched};
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::node::RunningNode;
use dsnode::peer::{AccessAsk, PeerError};
use dsnode::wire::admin::{AdminClient, FetchEvent, FetchOptions};
use dsnode::wire::client::PeerChannel;
use dsnode::wire::pb;

use super::NodeDir;

/// The test policy: consumers in CN-HE or CN-BJ may read and derive for
/// route planning or research, three fetches per grant.
pub(crate) const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read", "derive"]
purpose = ["route-planning", "research"]
roles = ["consumer"]
regions = ["CN-HE", "CN-BJ"]
grant_ttl = "30d"
max_fetches = 3

[[prohibition]]
actions = ["redistribute"]
"#;

/// A header for `title` under `policy`.
pub(crate) fn header(title: &str, policy: &str, size: u64) -> pb::PublishHeader {
    pb::PublishHeader {
        title: title.into(),
        description: "test data".into(),
        media_type: "text/csv".into(),
        policy_toml: policy.into(),
        size,
        ..Default::default()
    }
}

/// The Admin API of `node`, connected as `as_node` (its own certificate,
/// for the call to be admitted).
pub(crate) async fn admin(as_node: &NodeDir, node: &RunningNode) -> AdminClient {
    AdminClient::new(&super::connect(as_node, node).await)
}

/// Publishes `content` through the node's own Admin API.
pub(crate) async fn publish(
    publisher: &NodeDir,
    node: &RunningNode,
    header: pb::PublishHeader,
    content: &[u8],
) -> Result<pb::PublishResponse, PeerError> {
    let conn = super::connect(publisher, node).await;
    publish_via(&conn, header, content).await
}

/// Publishes `content` through an Admin connection (a node's own, e.g. to
/// a `dsnode serve` process), in pieces of 100 kB.
pub(crate) async fn publish_via(
    conn: &PeerChannel,
    header: pb::PublishHeader,
    content: &[u8],
) -> Result<pb::PublishResponse, PeerError> {
    let pieces: Vec<Vec<u8>> = content.chunks(100_000).map(<[u8]>::to_vec).collect();
    AdminClient::new(conn)
        .publish(header, tokio_stream::iter(pieces))
        .await
}

/// Publishes `content` titled `title` under `policy` (default chunk
/// size), which must succeed: its dataset id.
pub(crate) async fn published(
    publisher: &NodeDir,
    node: &RunningNode,
    title: &str,
    policy: &str,
    content: &[u8],
) -> String {
    publish(
        publisher,
        node,
        header(title, policy, content.len() as u64),
        content,
    )
    .await
    .expect("publish")
    .dataset_id
}

/// An access request for reading `dataset` for `purpose`, as long as the
/// policy allows.
pub(crate) fn ask(dataset: &str, purpose: &str) -> AccessAsk {
    AccessAsk {
        dataset_id: dataset.into(),
        purpose: purpose.into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    }
}

/// `consumer` asks the publisher at `publisher_addr`, through its own
/// node, to read `ds` for research, and must be granted: the grant id.
pub(crate) async fn granted(
    consumer: &NodeDir,
    con_node: &RunningNode,
    ds: &str,
    publisher_addr: SocketAddr,
) -> String {
    let r = admin(consumer, con_node)
        .await
        .request_access(&publisher_addr.to_string(), ask(ds, "research"))
        .await
        .expect("granted");
    let env: dsnode::envelope::Envelope = r.grant.expect("grant").into();
    dsnode::exchange::grant::Grant::decode(&env.payload)
        .expect("grant")
        .id
        .to_string()
}

/// `consumer`'s node fetches with `grant` from the publisher at
/// `publisher_addr` into `out`, without retries.
pub(crate) async fn fetch_to(
    consumer: &NodeDir,
    con_node: &RunningNode,
    publisher_addr: SocketAddr,
    grant: &str,
    out: &Path,
    force: bool,
) -> Result<Fetched, PeerError> {
    fetch_with(consumer, con_node, publisher_addr, grant, out, force, 0)
        .await
        .map(|run| run.done)
}

/// A completed fetch and the progress it reported on the way.
#[derive(Debug)]
pub(crate) struct FetchRun {
    /// Its result.
    pub(crate) done: Fetched,
    /// Every progress event, in order.
    pub(crate) progress: Vec<FetchProgress>,
}

/// As [`fetch_to`] from `peer` (a publisher, or a relay to one) with
/// `retries` reconnects, keeping the progress events.
pub(crate) async fn fetch_with(
    consumer: &NodeDir,
    con_node: &RunningNode,
    peer: SocketAddr,
    grant: &str,
    out: &Path,
    force: bool,
    retries: u32,
) -> Result<FetchRun, PeerError> {
    let options = FetchOptions {
        force,
        retries,
        ..FetchOptions::default()
    };
    fetch_as(consumer, con_node, peer, grant, out, &options).await
}

/// As [`fetch_with`], as `options` say.
pub(crate) async fn fetch_as(
    consumer: &NodeDir,
    con_node: &RunningNode,
    peer: SocketAddr,
    grant: &str,
    out: &Path,
    options: &FetchOptions,
) -> Result<FetchRun, PeerError> {
    let mut events = admin(consumer, con_node)
        .await
        .fetch(&peer.to_string(), grant, out, options)
        .await?;
    let mut progress = Vec::new();
    while let Some(event) = events.next().await? {
        match event {
            FetchEvent::Progress(p) => progress.push(p),
            FetchEvent::Done(done) => return Ok(FetchRun { done, progress }),
        }
    }
    Err(PeerError::new(
        dsnode::peer::Code::Internal,
        "the fetch ended without a result",
    ))
}

/// A grant asked for and the fetch made with it.
#[derive(Debug)]
pub(crate) struct Transfer {
    /// The grant id.
    pub(crate) grant: String,
    /// The fetch's result.
    pub(crate) fetched: Fetched,
}

/// `consumer` is granted `ds` by the publisher at `publisher_addr` (as in
/// [`granted`]) and fetches it into `out` (as in [`fetch_to`]).
pub(crate) async fn grant_and_fetch(
    consumer: &NodeDir,
    con_node: &RunningNode,
    ds: &str,
    publisher_addr: SocketAddr,
    out: &Path,
) -> Result<Transfer, PeerError> {
    let grant = granted(consumer, con_node, ds, publisher_addr).await;
    let fetched = fetch_to(consumer, con_node, publisher_addr, &grant, out, false).await?;
    Ok(Transfer { grant, fetched })
}

/// The kinds of the entries of `node`'s ledger that `grant_or_dataset`
/// selects, every one verified by `auditor`.
pub(crate) async fn kinds(
    auditor: &NodeDir,
    node: &RunningNode,
    grant_or_dataset: Query,
) -> Vec<EntryKind> {
    let mut a = Auditor::new(Box::new(super::connect(auditor, node).await));
    let (_, entries) = a
        .entries(grant_or_dataset, true)
        .await
        .expect("entries verify");
    entries.into_iter().map(|e| e.entry.draft.kind).collect()
}

/// The one receipt `consumer` kept for `grant` (`GRANT.TRANSFER.receipt.json`).
pub(crate) fn receipt_file(consumer: &NodeDir, grant: &str) -> PathBuf {
    let dir = consumer.dir.grants().join("received");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .expect("received dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{grant}.")) && n.ends_with(".receipt.json"))
        .collect();
    assert_eq!(found.len(), 1, "receipts kept: {found:?}");
    found.pop().expect("one").into()
}
