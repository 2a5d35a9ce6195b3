//! Operating a node: `/metrics` scraped and parsed after real traffic,
//! `/readyz` following the node's health through a drain, and a `dsnode
//! serve` process that gets SIGTERM during a fetch finishing the transfer
//! within its drain deadline and exiting 0.

use std::collections::BTreeMap;
use std::time::Duration;

use dsnode::wire::pb;

use crate::support::flows::{
    POLICY, admin, ask, grant_and_fetch, granted, header, publish_via, published,
};
use crate::support::{self, DataSpace, HttpAnswer, Served, consumer_in, http};

/// Parses the text exposition: every line is a comment or `name{labels}
/// value`; returns series → value.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `series value`: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(
            name.starts_with("dsnode_")
                && name
                    .chars()
                    .next_back()
                    .is_some_and(|c| c == '}' || c.is_ascii_alphanumeric() || c == '_'),
            "bad series name: {line}"
        );
        series.insert(name.to_owned(), value);
    }
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    series
}

fn get(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    *series
        .get(name)
        .unwrap_or_else(|| panic!("no series {name} in {series:#?}"))
}

#[tokio::test]
async fn metrics_are_served_parsed_and_follow_the_traffic() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let pub_node = support::start_with(&publisher, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.transport.drain_deadline = Duration::from_secs(5);
    })
    .await;
    let metrics = pub_node.metrics_addr().expect("metrics listener");
    let con_node = support::start(&consumer, |_| {}).await;
    let content = vec![5u8; 300_000];
    let ds = published(&publisher, &pub_node, "Counts", POLICY, &content).await;
    let dir = tempfile::tempdir().expect("tempdir");
    grant_and_fetch(
        &consumer,
        &con_node,
        &ds,
        pub_node.local_addr(),
        &dir.path().join("out"),
    )
    .await
    .expect("fetch");
    // A denial (a purpose the policy does not allow) and a handshake
    // without a client certificate.
    admin(&consumer, &con_node)
        .await
        .request_access(&pub_node.local_addr().to_string(), ask(&ds, "marketing"))
        .await
        .expect_err("denied");
    let no_cert =
        support::client_config_with(&[&rustls::version::TLS13], &publisher.dir.ca_cert(), None);
    let addr = pub_node.local_addr();
    let refused = tokio::task::spawn_blocking(move || support::raw_tls_attempt(no_cert, addr))
        .await
        .expect("join");
    assert!(refused.is_err());

    let HttpAnswer { status, body: text } = http(metrics, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let s = parse_exposition(&text);
    let rpc = |service: &str, method: &str, code: &str| {
        get(
            &s,
            &format!(
                "dsnode_rpc_requests_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(rpc("dataspace.v1.Exchange", "RequestAccess", "Ok"), 1.0);
    assert_eq!(
        rpc("dataspace.v1.Exchange", "RequestAccess", "PermissionDenied"),
        1.0
    );
    assert_eq!(rpc("dataspace.v1.Exchange", "Fetch", "Ok"), 1.0);
    assert_eq!(rpc("dataspace.v1.Exchange", "SubmitReceipt", "Ok"), 1.0);
    assert_eq!(rpc("dataspace.v1.Admin", "Publish", "Ok"), 1.0);
    assert_eq!(
        get(&s, "dsnode_access_decisions_total{kind=\"granted\"}"),
        1.0
    );
    assert_eq!(
        get(&s, "dsnode_access_decisions_total{kind=\"denied\"}"),
        1.0
    );
    assert_eq!(get(&s, "dsnode_transfers_total{kind=\"started\"}"), 1.0);
    assert_eq!(get(&s, "dsnode_transfer_bytes_served_total"), 300_000.0);
    assert!(
        get(
            &s,
            "dsnode_tls_handshake_failures_total{reason=\"no_client_certificate\"}"
        ) >= 1.0
    );
    // NodeStarted, DatasetPublished, AccessGranted, TransferStarted,
    // ReceiptRecorded, PeerCheckpointSeen (the consumer's log, witnessed
    // after the fetch), AccessDenied.
    assert_eq!(get(&s, "dsnode_ledger_entries"), 7.0);
    assert!(get(&s, "dsnode_witness_exchanges_total{kind=\"cosigned\"}") >= 1.0);
    assert_eq!(get(&s, "dsnode_forks_detected_total"), 0.0);
    assert!(get(&s, "dsnode_ledger_append_batch_entries_count") >= 5.0);
    assert!(get(&s, "dsnode_ledger_append_batch_seconds_sum") > 0.0);

    assert_eq!(http(metrics, "GET", "/healthz").await.status, 200);
    assert_eq!(http(metrics, "GET", "/readyz").await.status, 200);
    assert_eq!(http(metrics, "GET", "/nothing").await.status, 404);
    assert_eq!(http(metrics, "POST", "/metrics").await.status, 405);

    // During a drain (a fetch stream held open) readiness is 503 at once.
    let grant2 = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let conn = support::connect(&consumer, &pub_node).await;
    let stream = pb::exchange_client::ExchangeClient::new(conn.channel)
        .fetch(pb::FetchRequest {
            grant_id: grant2,
            resume: None,
            ..Default::default()
        })
        .await
        .expect("stream open")
        .into_inner();
    pub_node.shutdown_token().cancel();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let HttpAnswer { status, body } = http(metrics, "GET", "/readyz").await;
        if status == 503 {
            assert_eq!(body, "not serving: shutting down\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// A `dsnode serve` publisher gets SIGTERM while a grantee is reading a
/// Fetch stream (slowly): it turns NOT_SERVING and stops accepting, lets
/// the running stream finish within its drain deadline, and exits 0.
#[tokio::test]
async fn sigterm_during_a_fetch_drains_the_stream_and_exits_zero() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    std::fs::write(
        publisher.dir.config(),
        "listen = \"127.0.0.1:0\"\n[transport]\ndrain_deadline = \"30s\"\n",
    )
    .expect("config");
    let mut served = Served::start_serving(publisher.dir.root());
    let addr = served.addr;

    // Publish through the process's own Admin API: 4 MiB in 64 KiB chunks.
    let own = support::connect_addr(&publisher, addr).await;
    let size = 4usize << 20;
    let mut h = header("Big", POLICY, size as u64);
    h.chunk_size = 64 << 10;
    let content: Vec<u8> = (0..4u8).flat_map(|i| vec![i; 1 << 20]).collect();
    let ds = publish_via(&own, h, &content)
        .await
        .expect("publish")
        .dataset_id;

    let con_node = support::start(&consumer, |_| {}).await;
    let grant = granted(&consumer, &con_node, &ds, addr).await;
    let conn = dsnode::wire::client::connect(
        dsnode::runtime::tls::client_config(&support::material(&consumer)).expect("config"),
        &addr.to_string(),
        dsnode::wire::client::ClientSettings::default(),
    )
    .await
    .expect("connect");
    let mut stream = pb::exchange_client::ExchangeClient::new(conn.channel)
        .fetch(pb::FetchRequest {
            grant_id: grant,
            resume: None,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let Some(pb::fetch_response::Part::Header(header)) = stream
        .message()
        .await
        .expect("header")
        .expect("header")
        .part
    else {
        panic!("no header");
    };
    let mut received = 0usize;
    let mut check = |part: Option<pb::fetch_response::Part>| {
        let Some(pb::fetch_response::Part::Chunk(c)) = part else {
            panic!("not a chunk");
        };
        let h = ring::digest::digest(&ring::digest::SHA256, &c);
        assert_eq!(h.as_ref(), header.chunk_hashes[received].as_slice());
        received += 1;
    };
    check(stream.message().await.expect("chunk").expect("chunk").part);
    served.signal("TERM");
    served.wait_for("shutting down: NOT_SERVING, draining");
    // New connections are refused while the stream drains (the accept
    // loop stops just after the log line).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while dsnode::wire::client::connect(
        dsnode::runtime::tls::client_config(&support::material(&consumer)).expect("config"),
        &addr.to_string(),
        dsnode::wire::client::ClientSettings::default(),
    )
    .await
    .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting connections while draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Some(msg) = stream.message().await.expect("the stream drains") {
        check(msg.part);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received, 64, "every chunk arrived after the signal");
    served.wait_for("stopped");
    let status = served.child.wait().expect("exit");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    con_node.shutdown().await.expect("stop");
}
