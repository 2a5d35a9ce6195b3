//! Issue 20 (hardening II): what one certified but hostile participant
//! sends must not reach other people raw: not the operator's log or
//! terminal (findings 1 and 7), not as a misfiled server error (finding 8).

use dsnode::wire::pb;

use crate::support::{self, DataSpace, Served};

/// A software version that, written raw, forges a log line granting
/// access and clears the operator's terminal.
const FORGED: &str =
    "1.0\n2026-12-02T00:00:00.000000Z  INFO dsnode: access granted to everyone\x1b[2J";

/// Peering.Hello from `client` to the node at `addr`, with `version`.
async fn hello(client: &support::NodeDir, addr: std::net::SocketAddr, version: String) {
    let conn = support::connect_addr(client, addr).await;
    pb::peering_client::PeeringClient::new(conn.channel)
        .hello(pb::HelloRequest {
            software_version: version,
        })
        .await
        .expect("hello");
}

fn serving(space: &DataSpace, format: &str) -> (Served, support::NodeDir) {
    let server = space.node("server", "publisher");
    std::fs::write(
        server.dir.config(),
        "listen = \"127.0.0.1:0\"\n[transport]\ndrain_deadline = \"2s\"\n",
    )
    .expect("config");
    (
        Served::start_logging(server.dir.root(), format),
        space.node("client", "consumer"),
    )
}

/// Finding 1, human log. Defence: `runtime::logging::EscapedFields`. A newline in a peer's version
/// was a forged log line, ESC sequences reached the terminal, and a 3.9 MB
/// version grew the log by 3.9 MB a call.
#[tokio::test]
async fn a_peers_text_cannot_forge_colour_or_flood_the_human_log() {
    let space = DataSpace::new();
    let (served, client) = serving(&space, "human");
    hello(&client, served.addr, FORGED.into()).await;
    let line = served.wait_for_line(|l| l.contains(" hello "));
    assert!(!line.contains('\x1b'), "{line}");
    assert!(
        line.contains("version=1.0\\n2026-12-02T00:00:00.000000Z  INFO dsnode: access granted to everyone\\u{1b}[2J"),
        "{line}"
    );

    hello(&client, served.addr, "v".repeat(3_900_000)).await;
    let line = served.wait_for_line(|l| l.contains(" hello "));
    assert!(line.len() < 1024, "{} bytes: {line}", line.len());
    assert!(line.contains("(3900000 bytes in all)"), "{line}");
    served.terminate_cleanly();
}

/// Finding 1, JSON log. Defence: `runtime::logging::CappedJson`. JSON
/// escaped the newline but wrote all 3.9 MB.
#[tokio::test]
async fn a_peers_text_is_cut_in_the_json_log() {
    let space = DataSpace::new();
    let (served, client) = serving(&space, "json");
    hello(&client, served.addr, "v".repeat(3_900_000)).await;
    let line = served.wait_for("hello");
    let version = line["fields"]["version"].as_str().expect("version");
    assert!(version.len() < 600, "{} bytes", version.len());
    assert!(version.ends_with("(3900000 bytes in all)"), "{version}");
    served.terminate_cleanly();
}

/// Finding 7. Defence: `wire::rpc_metrics::tidy_status` (every status
/// the node sends) and `text::shown_at_most` in `PeerError` (every status
/// this node is sent). A 3.9 MB `classification` came back as a 3.9 MB
/// grpc-message, past the 64 KiB header limit of common clients.
#[tokio::test]
async fn an_echoed_request_value_comes_back_cut_and_escaped() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let conn = support::connect(&client, &node).await;
    let huge = format!("\x1b[2J{}", "x".repeat(3_900_000));
    let err = pb::catalog_client::CatalogClient::new(conn.channel.clone())
        .list_datasets(pb::ListDatasetsRequest {
            classification: huge,
            ..Default::default()
        })
        .await
        .expect_err("unknown classification");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let message = err.message();
    assert!(message.len() < 1100, "{} bytes", message.len());
    assert!(!message.contains('\x1b'), "{message}");
    assert!(message.contains("\\u{1b}[2Jxxx"), "{message}");
    assert!(message.ends_with("bytes in all)"), "{message}");
    node.shutdown().await.expect("stop");
}

/// A HelloRequest whose field 1 has the wrong wire type (a varint where a
/// string belongs).
#[derive(Clone, PartialEq, prost::Message)]
struct WrongHello {
    #[prost(uint64, tag = "1")]
    version: u64,
}

/// Finding 8: an undecodable request body is the caller's mistake,
/// answered INVALID_ARGUMENT (tonic's default is INTERNAL, which the node
/// counted as its own error). Defence: `wire::rpc_metrics::tidy_status`.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_not_a_server_error() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let conn = support::connect(&client, &node).await;
    let mut grpc = tonic::client::Grpc::new(conn.channel.clone());
    grpc.ready().await.expect("ready");
    let err = grpc
        .unary(
            tonic::Request::new(WrongHello { version: 7 }),
            http::uri::PathAndQuery::from_static("/dataspace.v1.Peering/Hello"),
            tonic_prost::ProstCodec::<WrongHello, pb::HelloResponse>::default(),
        )
        .await
        .expect_err("undecodable");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .starts_with("the request is not a valid protobuf message of this RPC's request type"),
        "{}",
        err.message()
    );
    // The node still answers well-formed calls on the same connection.
    pb::peering_client::PeeringClient::new(conn.channel)
        .hello(pb::HelloRequest::default())
        .await
        .expect("hello after");
    node.shutdown().await.expect("stop");
}

/// Asserts `err` is RESOURCE_EXHAUSTED and its message says each of
/// `parts` (the limit's name, its value).
fn refused_naming(err: &tonic::Status, parts: &[&str]) {
    assert_eq!(
        err.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        err.message()
    );
    for part in parts {
        assert!(
            err.message().contains(part),
            "no `{part}` in: {}",
            err.message()
        );
    }
}

/// Peering.Hello on `conn`: the code the node answered, and its message.
async fn hello_on(conn: &dsnode::wire::client::PeerChannel) -> Result<(), tonic::Status> {
    pb::peering_client::PeeringClient::new(conn.channel.clone())
        .hello(pb::HelloRequest::default())
        .await
        .map(|_| ())
}

/// Finding 2. Defence: `[transport] max_connections_per_peer` in the
/// accept loop (`runtime::tls`), the own certificate outside
/// `max_connections`, and refused connections answering
/// `ResourceExhausted` naming the limit. One certificate with 1,100 open
/// connections left another participant no slot and made the operator's
/// own `dsnode status` fail with "the peer refused this node's
/// certificate".
#[tokio::test]
async fn one_certificate_cannot_take_every_connection_slot() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let node = support::start_with(&server, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.transport.max_connections_per_peer = 3;
        c.transport.max_connections = 7;
    })
    .await;
    let addr = node.local_addr();
    let hog = space.node("hog", "consumer");
    let mut held = Vec::new();
    for _ in 0..3 {
        let conn = support::connect_addr(&hog, addr).await;
        hello_on(&conn).await.expect("within the per-peer limit");
        held.push(conn);
    }
    // The fourth connection of the same certificate is refused, naming
    // the limit, on every call.
    let extra = support::connect_addr(&hog, addr).await;
    let err = hello_on(&extra).await.expect_err("over the per-peer limit");
    refused_naming(
        &err,
        &["already has 3 connections open", "max_connections_per_peer"],
    );
    drop(extra);

    // Another participant still gets in.
    let other = space.node("other", "consumer");
    let conn = support::connect_addr(&other, addr).await;
    hello_on(&conn)
        .await
        .expect("another participant gets a slot");
    held.push(conn);

    // Fill the node: 7 slots, 4 taken; a third participant takes 3.
    let third = space.node("third", "consumer");
    for _ in 0..3 {
        let conn = support::connect_addr(&third, addr).await;
        hello_on(&conn).await.expect("within both limits");
        held.push(conn);
    }
    // Full: a newcomer is told so, naming the limit ...
    let late = space.node("late", "consumer");
    let err = hello_on(&support::connect_addr(&late, addr).await)
        .await
        .expect_err("no slot left");
    refused_naming(&err, &["all its 7 connection slots in use"]);
    // ... and the node's own certificate (its operator's CLI) gets in.
    let own = support::connect_addr(&server, addr).await;
    dsnode::wire::admin::AdminClient::new(&own)
        .status()
        .await
        .expect("the operator's status call gets a slot");

    let metrics = node.metrics_addr().expect("metrics listener");
    let text = support::http(metrics, "GET", "/metrics").await.body;
    for line in [
        "dsnode_connections_refused_total{limit=\"per_peer\"} 1",
        "dsnode_connections_refused_total{limit=\"global\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    drop(held);
    node.shutdown().await.expect("stop");
}

/// Exchange.RequestAccess from `conn`, raw: the grant, or the status.
async fn request_access(
    conn: &dsnode::wire::client::PeerChannel,
    dataset: &str,
    purpose: &str,
) -> Result<pb::RequestAccessResponse, tonic::Status> {
    pb::exchange_client::ExchangeClient::new(conn.channel.clone())
        .request_access(pb::RequestAccessRequest {
            dataset_id: dataset.into(),
            purpose: purpose.into(),
            actions: vec!["read".into()],
            duration_secs: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The AccessDenied entries of the node's ledger, as the auditor reads
/// (and verifies) them.
async fn denials(
    auditor: &support::NodeDir,
    node: &dsnode::node::RunningNode,
) -> Vec<dsnode::ledger::entry::Entry> {
    let mut a = dsnode::audit::Auditor::new(Box::new(support::connect(auditor, node).await));
    let (_, entries) = a
        .entries(
            dsnode::ledger::Query {
                kind: Some(dsnode::ledger::entry::EntryKind::AccessDenied),
                ..Default::default()
            },
            true,
        )
        .await
        .expect("entries verify");
    entries.into_iter().map(|e| e.entry).collect()
}

/// A publisher serving with a metrics listener and `limits` set, one
/// dataset published, a consumer connected to it, and an auditor.
struct LimitedPublisher {
    _space: DataSpace,
    publisher: support::NodeDir,
    auditor: support::NodeDir,
    node: dsnode::node::RunningNode,
    ds: String,
    conn: dsnode::wire::client::PeerChannel,
}

impl LimitedPublisher {
    async fn start(limits: impl FnOnce(&mut dsnode::runtime::config::LimitsConfig)) -> Self {
        use crate::support::flows::{POLICY, header, publish};
        let space = DataSpace::new();
        let publisher = space.node("city-transport", "publisher");
        let consumer = support::consumer_in(&space, "acme", "CN-HE");
        let auditor = space.node("regulator", "auditor");
        let node = support::start_with(&publisher, |c| {
            c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
            limits(&mut c.limits);
        })
        .await;
        let ds = publish(&publisher, &node, header("Roads", POLICY, 3), b"a,b")
            .await
            .expect("publish")
            .dataset_id;
        let conn = support::connect(&consumer, &node).await;
        Self {
            _space: space,
            publisher,
            auditor,
            node,
            ds,
            conn,
        }
    }
}

/// Finding 3. Defences: `[limits] peer_write_rate`/`peer_write_burst`
/// (`exchange::limits::PeerLimits::admit_write`, in the Exchange and
/// Peering handlers), `denial_window` (`PeerLimits::denial`, recorded by
/// `Publisher::record_denial` and the node's flush task), and
/// `max_live_grants_per_peer` (`GrantBook::reserve_live`). One consumer
/// without a grant wrote 2,146 AccessDenied entries a second into the
/// publisher's ledger; granted requests wrote ~760 grants a second.
#[tokio::test]
async fn one_consumer_cannot_grow_the_publishers_ledger_without_bound() {
    let limited = LimitedPublisher::start(|l| {
        l.peer_write_rate = 2;
        l.peer_write_burst = 12;
        l.denial_window = std::time::Duration::from_secs(1);
        l.max_live_grants_per_peer = 3;
    })
    .await;
    let LimitedPublisher {
        _space,
        publisher,
        auditor,
        node,
        ds,
        conn,
    } = limited;

    // 40 refused requests at once: the burst is answered with the
    // reasons, the rest refused by the rate limit, with when to retry.
    let (mut denied, mut limited) = (0, 0);
    for _ in 0..40 {
        let err = request_access(&conn, &ds, "marketing")
            .await
            .expect_err("refused");
        match err.code() {
            tonic::Code::PermissionDenied => denied += 1,
            tonic::Code::ResourceExhausted => {
                limited += 1;
                assert!(
                    err.message().contains("peer_write_rate"),
                    "{}",
                    err.message()
                );
                let wait: u64 = err
                    .metadata()
                    .get("retry-after-ms")
                    .expect("retry hint")
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("ms");
                assert!((1..=1000).contains(&wait), "{wait}");
            }
            code => panic!("{code:?}: {}", err.message()),
        }
    }
    assert!((12..=13).contains(&denied), "{denied} answered");
    assert_eq!(denied + limited, 40);
    // Identical refusals are recorded once, then their count once the
    // window ends: two entries for all of them, and they say how many.
    assert_eq!(denials(&auditor, &node).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let recorded = denials(&auditor, &node).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let repeats = &recorded[1].draft.detail;
    assert!(
        repeats.starts_with(&format!(
            "the same refusal as entry {} {} more time(s)",
            recorded[0].index,
            denied - 1
        )),
        "{repeats}"
    );

    // Live grants are capped per grantee; a revocation frees a place.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // refill
    let mut grants = Vec::new();
    for _ in 0..3 {
        let g = request_access(&conn, &ds, "research")
            .await
            .expect("granted");
        let env: dsnode::envelope::Envelope = g.grant.expect("grant").into();
        grants.push(
            dsnode::exchange::grant::Grant::decode(&env.payload)
                .expect("grant")
                .id,
        );
    }
    let err = request_access(&conn, &ds, "research")
        .await
        .expect_err("over the live-grant cap");
    refused_naming(
        &err,
        &["already holds 3 live grants", "max_live_grants_per_peer"],
    );
    crate::support::flows::admin(&publisher, &node)
        .await
        .revoke_grant(&grants[0].to_string(), "test")
        .await
        .expect("revoke");
    request_access(&conn, &ds, "research")
        .await
        .expect("a revoked grant no longer counts");

    let metrics = node.metrics_addr().expect("metrics listener");
    let text = support::http(metrics, "GET", "/metrics").await.body;
    for line in [
        format!("dsnode_peer_limited_total{{limit=\"peer_writes\"}} {limited}"),
        "dsnode_peer_limited_total{limit=\"live_grants\"} 1".to_owned(),
        format!("dsnode_access_denials_coalesced_total {}", denied - 1),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    node.shutdown().await.expect("stop");
}

/// Finding 3, refusals that are not identical: a consumer that varies its
/// purpose defeats the coalescing of identical refusals, so refusals are
/// decided and recorded at `[limits] peer_denial_rate` of their own (after
/// `peer_denial_burst`); past it the call is refused by the limit, with
/// nothing recorded. The limits probe measured 70 such entries a second
/// (~6 M a day) under `peer_write_rate` alone.
#[tokio::test]
async fn distinct_refusals_are_recorded_at_a_bounded_rate() {
    let LimitedPublisher {
        _space,
        auditor,
        node,
        ds,
        conn,
        ..
    } = LimitedPublisher::start(|l| {
        l.peer_write_rate = 1000;
        l.peer_write_burst = 1000;
        l.peer_denial_rate = 1;
        l.peer_denial_burst = 5;
    })
    .await;
    let (mut denied, mut limited) = (0, 0);
    for i in 0..30 {
        let err = request_access(&conn, &ds, &format!("marketing-{i}"))
            .await
            .expect_err("refused");
        match err.code() {
            tonic::Code::PermissionDenied => denied += 1,
            tonic::Code::ResourceExhausted => {
                limited += 1;
                refused_naming(&err, &["too many refused requests", "peer_denial_rate"]);
                assert!(err.metadata().get("retry-after-ms").is_some(), "retry hint");
            }
            code => panic!("{code:?}: {}", err.message()),
        }
    }
    assert!((5..=6).contains(&denied), "{denied} decided");
    assert_eq!(denied + limited, 30);
    // Every refusal answered is recorded, and only those.
    assert_eq!(denials(&auditor, &node).await.len(), denied);
    // Granted requests are not limited by it.
    request_access(&conn, &ds, "research")
        .await
        .expect("granted");
    let metrics = node.metrics_addr().expect("metrics listener");
    let text = support::http(metrics, "GET", "/metrics").await.body;
    let line = format!("dsnode_peer_limited_total{{limit=\"peer_denials\"}} {limited}");
    assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    node.shutdown().await.expect("stop");
}
