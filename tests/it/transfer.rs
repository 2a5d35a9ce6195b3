//! Transfers over time and broken connections: grant windows checked
//! against an injected clock, and fetches cut mid-stream (by a TCP relay
//! that drops the connection) resuming from the first missing chunk,
//! within one call and across a restart, without counting a new fetch;
//! a derivative of a fetched dataset inherits its classification.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dsnode::audit::Auditor;
use dsnode::clock::Clock;
use dsnode::ledger::Query;
use dsnode::ledger::entry::{Entry, EntryKind};
use dsnode::node::RunningNode;
use dsnode::peer::Code as PeerCode;
use dsnode::wire::admin::FetchOptions;
use dsnode::wire::pb;
use time::OffsetDateTime;
use tonic::Code;

use crate::support::flows::{
    self, FetchRun, POLICY, Transfer, admin, fetch_to, fetch_with, grant_and_fetch, granted,
    header, kinds, publish, published,
};
use crate::support::{self, CutProxy, DataSpace, NodeDir, TwoNodes, consumer_in};

/// The entries naming `grant` on `node`, verified by an auditor.
async fn entries(auditor: &NodeDir, node: &RunningNode, grant: &str) -> Vec<Entry> {
    let mut a = Auditor::new(Box::new(support::connect(auditor, node).await));
    let q = Query {
        grant: Some(grant.into()),
        ..Query::default()
    };
    let (_, found) = a.entries(q, true).await.expect("entries verify");
    found.into_iter().map(|e| e.entry).collect()
}

fn by_grant(grant: &str) -> Query {
    Query {
        grant: Some(grant.into()),
        ..Query::default()
    }
}

/// Content in `chunk_size` pieces under a policy that allows one fetch.
async fn publish_once_fetchable(
    publisher: &NodeDir,
    node: &RunningNode,
    content: &[u8],
    chunk_size: u32,
) -> String {
    let policy = POLICY.replace("max_fetches = 3", "max_fetches = 1");
    let mut h = header("Bus positions", &policy, content.len() as u64);
    h.chunk_size = chunk_size;
    publish(publisher, node, h, content)
        .await
        .expect("publish")
        .dataset_id
}

#[tokio::test]
async fn grant_windows_are_checked_against_the_publishers_clock() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let auditor = space.node("regulator", "auditor");
    // The publisher's clock runs `shift` seconds off the system's.
    let shift = Arc::new(AtomicI64::new(0));
    let s = shift.clone();
    let pub_node = support::start_with(&publisher, move |c| {
        c.clock = Clock::from_fn(move || {
            OffsetDateTime::now_utc() + time::Duration::seconds(s.load(Ordering::SeqCst))
        });
    })
    .await;
    let con_node = support::start(&consumer, |_| {}).await;
    let content = b"stop,arrivals\n1,20\n2,35\n".repeat(100);
    let ds = published(&publisher, &pub_node, "Arrivals", POLICY, &content).await;
    // The policy's grant_ttl is 30 days.
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("arrivals.csv");
    let addr = pub_node.local_addr();

    shift.store(31 * 86_400, Ordering::SeqCst);
    let err = fetch_to(&consumer, &con_node, addr, &grant, &out, false)
        .await
        .expect_err("expired");
    assert_eq!(err.code, PeerCode::PermissionDenied, "{}", err.message);
    assert!(err.message.contains("expired"), "{}", err.message);

    shift.store(-3_600, Ordering::SeqCst);
    let err = fetch_to(&consumer, &con_node, addr, &grant, &out, false)
        .await
        .expect_err("not yet valid");
    assert_eq!(err.code, PeerCode::PermissionDenied, "{}", err.message);
    assert!(err.message.contains("not valid before"), "{}", err.message);
    assert!(!out.exists(), "nothing written for a refused fetch");

    // Within the window the same grant works.
    shift.store(0, Ordering::SeqCst);
    fetch_to(&consumer, &con_node, addr, &grant, &out, false)
        .await
        .expect("fetch in the window");
    assert_eq!(std::fs::read(&out).expect("out"), content);

    // Both refusals are in the publisher's ledger, with their reasons.
    let trail = entries(&auditor, &pub_node, &grant).await;
    let denials: Vec<&str> = trail
        .iter()
        .filter(|e| e.draft.kind == EntryKind::AccessDenied)
        .map(|e| e.draft.detail.as_str())
        .collect();
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(denials[0].contains("expired") && denials[1].contains("not valid before"));
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

#[tokio::test]
async fn a_cut_connection_is_resumed_from_the_first_missing_chunk() {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let ds = publish_once_fetchable(&publisher, &pub_node, &content, 64 << 10).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;

    // The first connection through the relay is cut after ~1 MB.
    let proxy = CutProxy::start(pub_node.local_addr(), 1_000_000, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("positions.bin");
    let FetchRun { done, progress } =
        fetch_with(&consumer, &con_node, proxy.addr, &grant, &out, false, 3)
            .await
            .expect("the fetch survives the cut");
    assert_eq!(proxy.cuts_made(), 1);
    assert_eq!(done.reconnects, 1);
    assert_eq!(std::fs::read(&out).expect("out"), content);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        1,
        "no partial file left"
    );
    let last = progress.last().expect("progress reported");
    assert_eq!((last.bytes, last.total_bytes), (3_000_000, 3_000_000));

    // One fetch counted (the grant allows one), one resume from a chunk
    // past the start, one receipt.
    let trail = entries(&auditor, &pub_node, &grant).await;
    let kinds_seen: Vec<EntryKind> = trail.iter().map(|e| e.draft.kind).collect();
    assert_eq!(
        kinds_seen,
        vec![
            EntryKind::AccessGranted,
            EntryKind::TransferStarted,
            EntryKind::TransferResumed,
            EntryKind::ReceiptRecorded
        ]
    );
    let started = trail[1].index;
    let resumed = &trail[2].draft.detail;
    let from: u64 = resumed
        .strip_prefix(&format!("transfer entry {started} from chunk "))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("resume detail: {resumed}"));
    assert!(from > 0 && from < 46, "resumed from chunk {from} of 46");
    // The resume and the receipt name the transfer in their typed field.
    assert_eq!(trail[2].draft.transfer, Some(started));
    assert_eq!(trail[3].draft.transfer, Some(started));
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Parallel streams over real mutual-TLS connections, several of them cut
/// mid-way: each range resumes from its first missing chunk, the grant is
/// used once, and the output is the consumer's own copy, written once.
#[tokio::test]
async fn parallel_streams_resume_each_range_after_cuts_and_write_once() {
    use std::os::unix::fs::MetadataExt;
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let ds = publish_once_fetchable(&publisher, &pub_node, &content, 64 << 10).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;

    // The first three connections through the relay are cut after
    // 400 kB each: the opener's and two streams'.
    let proxy = CutProxy::start(pub_node.local_addr(), 400_000, 3).await;
    let dir = tempfile::tempdir_in(consumer.dir.root()).expect("tempdir");
    let out = dir.path().join("positions.bin");
    let options = FetchOptions {
        retries: 5,
        streams: 4,
        verify_sha256: true,
        ..FetchOptions::default()
    };
    let FetchRun { done, .. } =
        flows::fetch_as(&consumer, &con_node, proxy.addr, &grant, &out, &options)
            .await
            .expect("the fetch survives the cuts");
    assert!(done.reconnects >= 1, "{done:?}");
    assert_eq!(std::fs::read(&out).expect("out"), content);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        1,
        "no partial file left"
    );
    let trail = kinds(&auditor, &pub_node, by_grant(&grant)).await;
    let count = |k| trail.iter().filter(|e| **e == k).count();
    assert_eq!(count(EntryKind::TransferStarted), 1, "{trail:?}");
    assert_eq!(
        count(EntryKind::TransferResumed),
        done.reconnects as usize,
        "{trail:?}"
    );
    assert_eq!(count(EntryKind::ReceiptRecorded), 1, "{trail:?}");
    assert_eq!(trail.len(), 3 + done.reconnects as usize, "{trail:?}");
    // The output and the node's copy are one file.
    let output = std::fs::metadata(&out).expect("output");
    let pack = std::fs::read_dir(consumer.dir.packs())
        .expect("packs")
        .flatten()
        .find(|e| e.path().is_file())
        .expect("the received dataset's pack");
    assert_eq!(output.ino(), pack.metadata().expect("pack").ino());
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

#[tokio::test]
async fn an_interrupted_fetch_resumes_after_a_restart_without_counting_a_new_fetch() {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 241) as u8).collect();
    let ds = publish_once_fetchable(&publisher, &pub_node, &content, 64 << 10).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;

    // Without retries the cut ends the call, and says how to go on.
    let proxy = CutProxy::start(pub_node.local_addr(), 1_500_000, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("positions.bin");
    let err = fetch_with(&consumer, &con_node, proxy.addr, &grant, &out, false, 0)
        .await
        .expect_err("cut");
    assert_eq!(err.code, PeerCode::Unavailable, "{}", err.message);
    assert!(
        err.message.contains("run the same fetch again to resume"),
        "{}",
        err.message
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "neither output nor partial file"
    );

    // The consumer restarts (its start-up collection keeps the chunks of
    // the interrupted fetch); the same fetch then resumes.
    con_node.shutdown().await.expect("stop");
    let con_node = support::start(&consumer, |_| {}).await;
    let FetchRun { done, progress } = fetch_with(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
        0,
    )
    .await
    .expect("resumed");
    assert!(done.resumed_chunks > 0, "{done:?}");
    assert_eq!(done.reconnects, 0);
    assert_eq!(progress[0].resumed_chunks, done.resumed_chunks);
    assert_eq!(std::fs::read(&out).expect("out"), content);
    assert_eq!(
        kinds(&auditor, &pub_node, by_grant(&grant)).await,
        vec![
            EntryKind::AccessGranted,
            EntryKind::TransferStarted,
            EntryKind::TransferResumed,
            EntryKind::ReceiptRecorded
        ]
    );

    // The grant allowed one fetch and the resume did not count as one:
    // it was used by the resumed transfer, so a new fetch is refused.
    let again = dir.path().join("again.bin");
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &again,
        false,
    )
    .await
    .expect_err("used up");
    assert_eq!(err.code, PeerCode::PermissionDenied);
    assert!(err.message.contains("all used"), "{}", err.message);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

#[tokio::test]
async fn a_derivative_of_a_fetched_dataset_inherits_its_classification() {
    use dsnode::identity::RoleSet;
    use dsnode::identity::ca::IssueRequest;
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let mut req = IssueRequest::new(RoleSet::parse_list("consumer,publisher").expect("roles"));
    req.region = Some("CN-HE".parse().expect("region"));
    let deriver = space.node_with("acme", req);
    let pub_node = support::start(&publisher, |_| {}).await;
    let der_node = support::start(&deriver, |_| {}).await;
    let important = POLICY.replace("\"general\"", "\"important\"");
    let source = published(&publisher, &pub_node, "Bus lanes", &important, b"lane,1").await;
    let r = admin(&deriver, &der_node)
        .await
        .request_access(
            &pub_node.local_addr().to_string(),
            dsnode::peer::AccessAsk {
                dataset_id: source.clone(),
                purpose: "research".into(),
                actions: vec!["read".into(), "derive".into()],
                duration_secs: 0,
            },
        )
        .await
        .expect("granted");
    let env: dsnode::envelope::Envelope = r.grant.expect("grant").into();
    let grant = dsnode::exchange::grant::Grant::decode(&env.payload)
        .expect("grant")
        .id
        .to_string();
    let derived = |policy: &str| pb::PublishHeader {
        derived_from: vec![pb::Derivation {
            dataset_id: source.clone(),
            grant_id: grant.clone(),
        }],
        ..header("Lane usage", policy, 3)
    };

    // Its classification is known from its signed manifest, which the
    // deriving node has only once it fetched the dataset.
    let err = publish(&deriver, &der_node, derived(&important), b"xyz")
        .await
        .expect_err("not fetched");
    assert!(err.message.contains("fetch it first"), "{}", err.message);
    let dir = tempfile::tempdir().expect("tempdir");
    fetch_to(
        &deriver,
        &der_node,
        pub_node.local_addr(),
        &grant,
        &dir.path().join("lanes.csv"),
        false,
    )
    .await
    .expect("fetch");
    let err = publish(&deriver, &der_node, derived(POLICY), b"xyz")
        .await
        .expect_err("weaker than the source");
    assert!(
        err.message
            .contains("strictest classification of its sources (`important`)"),
        "{}",
        err.message
    );
    publish(&deriver, &der_node, derived(&important), b"xyz")
        .await
        .expect("derived at the source's classification");
    for n in [pub_node, der_node] {
        n.shutdown().await.expect("stop");
    }
}

/// A grant is good only at the publisher that signed it: presented to
/// another publisher it is refused by the consumer's own node (the peer's
/// certificate is not the grant's signer) and by that publisher (it issued
/// no such grant); nothing is written.
#[tokio::test]
async fn a_grant_is_refused_by_any_other_publisher() {
    let space = DataSpace::new();
    let issuer = space.node("city-transport", "publisher");
    let other = space.node("city-water", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let issuer_node = support::start(&issuer, |_| {}).await;
    let other_node = support::start(&other, |_| {}).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let content = b"pipe,pressure\n1,3.2\n".to_vec();
    for (dir, node) in [(&issuer, &issuer_node), (&other, &other_node)] {
        publish(
            dir,
            node,
            header("Same bytes", POLICY, content.len() as u64),
            &content,
        )
        .await
        .expect("publish");
    }
    let ds = published(&issuer, &issuer_node, "Granted", POLICY, &content).await;
    let grant = granted(&consumer, &con_node, &ds, issuer_node.local_addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.csv");

    let err = fetch_to(
        &consumer,
        &con_node,
        other_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect_err("another publisher");
    assert_eq!(err.code, PeerCode::FailedPrecondition, "{}", err.message);
    assert!(err.message.contains("not the publisher"), "{}", err.message);

    let conn = support::connect(&consumer, &other_node).await;
    let err = pb::exchange_client::ExchangeClient::new(conn.channel)
        .fetch(pb::FetchRequest {
            grant_id: grant.clone(),
            resume: None,
            ..Default::default()
        })
        .await
        .expect_err("not issued here");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    for n in [issuer_node, other_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// A resume must name one of the grant's own transfers and a chunk within
/// the dataset, and a grant's resumes are bounded (they do not count as
/// fetches).
#[tokio::test]
async fn resume_requests_are_checked_and_bounded() {
    let TwoNodes {
        space: _space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let content = vec![7u8; 10_000];
    let ds = publish_once_fetchable(&publisher, &pub_node, &content, 4096).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let conn = support::connect(&consumer, &pub_node).await;
    let exchange = pb::exchange_client::ExchangeClient::new(conn.channel);
    let fetch = |resume: Option<pb::FetchResume>| {
        let req = pb::FetchRequest {
            grant_id: grant.clone(),
            resume,
            ..Default::default()
        };
        let mut client = exchange.clone();
        async move {
            let mut stream = client.fetch(req).await?.into_inner();
            let mut header = None;
            while let Some(msg) = stream.message().await? {
                if let Some(pb::fetch_response::Part::Header(h)) = msg.part {
                    header = Some(h);
                }
            }
            Ok::<_, tonic::Status>(header.expect("a header"))
        }
    };
    let started = fetch(None).await.expect("the one fetch");
    let t = started.transfer_index;
    for (resume, why) in [
        (
            pb::FetchResume {
                transfer_index: 0,
                from_chunk: 0,
                ..Default::default()
            },
            "is not a transfer of grant",
        ),
        (
            pb::FetchResume {
                transfer_index: t,
                from_chunk: 4,
                ..Default::default()
            },
            "the dataset has 3 chunks",
        ),
    ] {
        let err = fetch(Some(resume)).await.expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(why), "{why}: {}", err.message());
    }
    let resumed = fetch(Some(pb::FetchResume {
        transfer_index: t,
        from_chunk: 2,
        ..Default::default()
    }))
    .await
    .expect("resume");
    assert_eq!((resumed.transfer_index, resumed.first_chunk), (t, 2));
    for _ in 1..32 {
        fetch(Some(pb::FetchResume {
            transfer_index: t,
            from_chunk: 3,
            ..Default::default()
        }))
        .await
        .expect("resume within the bound");
    }
    let err = fetch(Some(pb::FetchResume {
        transfer_index: t,
        from_chunk: 3,
        ..Default::default()
    }))
    .await
    .expect_err("the 33rd resume");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("resumed 32 times"),
        "{}",
        err.message()
    );
    drop(exchange);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Parallel fetches cannot all count before any records: a one-fetch
/// grant asked for eight times at once is served once.
#[tokio::test]
async fn parallel_fetches_of_a_one_fetch_grant_are_served_once() {
    let TwoNodes {
        space: _space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let ds = publish_once_fetchable(&publisher, &pub_node, &[3u8; 10_000], 4096).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let conn = support::connect(&consumer, &pub_node).await;
    let attempts = (0..8).map(|_| {
        let mut client = pb::exchange_client::ExchangeClient::new(conn.channel.clone());
        let grant = grant.clone();
        async move {
            client
                .fetch(pb::FetchRequest {
                    grant_id: grant,
                    resume: None,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }
    });
    let results = futures_join_all(attempts).await;
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::PermissionDenied, "{}", r.message());
    }
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Runs futures concurrently on this task and collects their results.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A receipt must close one of the grant's own transfers, with the
/// dataset's hash and size; submitting the same receipt again records
/// nothing new; a transfer with a receipt cannot be resumed.
#[tokio::test]
async fn receipts_are_checked_and_recorded_once() {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let content = vec![9u8; 10_000];
    let ds = publish_once_fetchable(&publisher, &pub_node, &content, 4096).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Transfer {
        grant,
        fetched: done,
    } = grant_and_fetch(
        &consumer,
        &con_node,
        &ds,
        pub_node.local_addr(),
        &dir.path().join("out"),
    )
    .await
    .expect("fetch");
    let kept = std::fs::read_to_string(
        consumer
            .dir
            .grants()
            .join("received")
            .join(flows::receipt_file(&consumer, &grant)),
    )
    .expect("kept receipt");
    let kept = dsnode::envelope::Envelope::from_json(&kept).expect("envelope");
    let receipt =
        dsnode::exchange::receipt::verify_receipt(kept.clone(), &consumer.identity.public_key)
            .expect("receipt")
            .value()
            .clone();
    let key = dsnode::identity::NodeKey::load(&consumer.dir.key()).expect("key");
    let conn = support::connect(&consumer, &pub_node).await;
    let mut exchange = pb::exchange_client::ExchangeClient::new(conn.channel);

    let again = exchange
        .submit_receipt(pb::SubmitReceiptRequest {
            receipt: Some((&kept).into()),
        })
        .await
        .expect("the same receipt again")
        .into_inner();
    assert_eq!(again.ledger_index, done.publisher_ledger_index);

    let mut wrong_transfer = receipt.clone();
    wrong_transfer.transfer_index = 0;
    let mut wrong_size = receipt.clone();
    wrong_size.bytes += 1;
    for (bad, why) in [
        (wrong_transfer, "is not a transfer of grant"),
        (wrong_size, "chunk list hash or size"),
    ] {
        let env = bad.sign(key.signing_key());
        let err = exchange
            .submit_receipt(pb::SubmitReceiptRequest {
                receipt: Some((&env).into()),
            })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(why), "{why}: {}", err.message());
    }
    // A completed transfer is not resumed (it would be a free fetch).
    let err = exchange
        .fetch(pb::FetchRequest {
            grant_id: grant.clone(),
            resume: Some(pb::FetchResume {
                transfer_index: receipt.transfer_index,
                from_chunk: 0,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("completed");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("was completed"), "{}", err.message());
    let receipts = kinds(&space_auditor(&space), &pub_node, by_grant(&grant))
        .await
        .into_iter()
        .filter(|k| *k == EntryKind::ReceiptRecorded)
        .count();
    assert_eq!(receipts, 1);
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

fn space_auditor(space: &DataSpace) -> NodeDir {
    space.node("regulator", "auditor")
}

/// A receipt the publisher did not take (it stopped between the last
/// chunk and the receipt; here: the consumer's record of it is gone) is
/// submitted again with `Admin.ResendReceipts`: the publisher answers with
/// the entry it recorded, the consumer records it, and a second resend has
/// nothing to do.
#[tokio::test]
async fn a_receipt_the_publisher_did_not_take_is_resent() {
    let TwoNodes {
        space: _space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let ds = publish_once_fetchable(&publisher, &pub_node, b"a,b\n1,2\n", 4096).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Transfer {
        grant,
        fetched: done,
    } = grant_and_fetch(
        &consumer,
        &con_node,
        &ds,
        pub_node.local_addr(),
        &dir.path().join("out.csv"),
    )
    .await
    .expect("fetch");
    con_node.shutdown().await.expect("stop");
    let size = support::tamper::ledger_size(&consumer.dir).await;
    support::tamper::rewrite_history(
        &consumer.dir,
        |e| e.draft.kind != EntryKind::ReceiptRecorded,
        size - 1,
    )
    .await;
    let con_node = support::start(&consumer, |_| {}).await;

    let resend = || async {
        admin(&consumer, &con_node)
            .await
            .resend_receipts(&pub_node.local_addr().to_string(), &grant)
            .await
            .expect("resend")
    };
    let first = resend().await;
    assert_eq!((first.kept, first.resent.len()), (1, 1), "{first:?}");
    assert_eq!(
        first.resent[0].publisher_ledger_index, done.publisher_ledger_index,
        "the publisher answers with the entry it recorded"
    );
    let again = resend().await;
    assert_eq!((again.kept, again.resent.len()), (1, 0), "{again:?}");
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}
