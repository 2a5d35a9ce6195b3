//! Access requests between real nodes: the publisher evaluates its policy
//! against the requester's certificate, signs a grant or names every
//! reason for a denial; both ledgers record it; grants survive restarts and
//! can be revoked.

use dsnode::audit::Auditor;
use dsnode::envelope::Envelope;
use dsnode::exchange::grant::verify_grant;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::peer::Code as PeerCode;
use dsnode::wire::pb;
use tonic::Code;

use crate::support::flows::{
    self, POLICY, Transfer, admin, ask, fetch_to, grant_and_fetch, granted, header, kinds, publish,
    published,
};
use crate::support::{self, DataSpace, TwoNodes, consumer_in};

#[tokio::test]
async fn grant_and_denial_are_decided_by_certificate_and_recorded_on_both_sides() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let outsider = consumer_in(&space, "far-away", "CN-SH");
    let auditor = space.node("regulator", "auditor");
    let pub_node = support::start(&publisher, |_| {}).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let out_node = support::start(&outsider, |_| {}).await;
    let published = publish(
        &publisher,
        &pub_node,
        header("Road sensors", POLICY, 3),
        b"a,b",
    )
    .await
    .expect("publish");
    let ds = published.dataset_id.clone();

    // Granted: asked through the consumer's own Admin API.
    let con_admin = admin(&consumer, &con_node).await;
    let peer = pub_node.local_addr().to_string();
    let r = con_admin
        .request_access(&peer, ask(&ds, "route-planning"))
        .await
        .expect("granted");
    let env: Envelope = r.grant.expect("grant").into();
    let grant = verify_grant(env, &publisher.identity.public_key).expect("signed by the publisher");
    let g = grant.value();
    assert_eq!(
        g.grantee, consumer.identity.node_id,
        "bound to the consumer's key"
    );
    assert_eq!(g.dataset.to_string(), ds);
    assert_eq!(g.max_fetches, Some(3));
    assert!(
        g.not_after_ms - g.not_before_ms <= 30 * 86_400_000,
        "grant_ttl"
    );

    // Denied, with every reason named: wrong purpose.
    let err = con_admin
        .request_access(&peer, ask(&ds, "marketing"))
        .await
        .expect_err("denied");
    assert_eq!(err.code, PeerCode::PermissionDenied);
    assert!(
        err.message
            .contains("purpose `marketing` is not in [research, route-planning]"),
        "{}",
        err.message
    );

    // An outsider cannot even see the dataset.
    let err = admin(&outsider, &out_node)
        .await
        .request_access(&peer, ask(&ds, "research"))
        .await
        .expect_err("hidden");
    assert_eq!(err.code, PeerCode::NotFound);

    // Both ledgers tell the story.
    let grant_q = Query {
        grant: Some(g.id.to_string()),
        ..Query::default()
    };
    assert_eq!(
        kinds(&auditor, &pub_node, grant_q.clone()).await,
        vec![EntryKind::AccessGranted]
    );
    assert_eq!(
        kinds(&auditor, &con_node, grant_q).await,
        vec![EntryKind::GrantReceived]
    );
    let ds_q = Query {
        dataset: Some(ds.clone()),
        ..Query::default()
    };
    assert_eq!(
        kinds(&auditor, &pub_node, ds_q).await,
        vec![
            EntryKind::DatasetPublished,
            EntryKind::AccessGranted,
            EntryKind::AccessDenied
        ]
    );

    // Revocation is recorded once; the grant survives a restart.
    let pub_admin = admin(&publisher, &pub_node).await;
    let revoked = pub_admin
        .revoke_grant(&g.id.to_string(), "test")
        .await
        .expect("revoke");
    assert!(!revoked.already_revoked);
    let again = pub_admin
        .revoke_grant(&g.id.to_string(), "again")
        .await
        .expect("revoke again");
    assert!(again.already_revoked);
    pub_node.shutdown().await.expect("stop");
    let pub_node = support::start(&publisher, |_| {}).await;
    let grants = admin(&publisher, &pub_node)
        .await
        .list_grants()
        .await
        .expect("list");
    assert_eq!(grants.len(), 1);
    assert!(grants[0].issued && grants[0].revoked);
    for n in [pub_node, con_node, out_node] {
        n.shutdown().await.expect("stop");
    }
}

#[tokio::test]
async fn requests_are_checked_at_the_edge() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let pub_node = support::start(&publisher, |_| {}).await;
    let conn = support::connect(&consumer, &pub_node).await;
    let mut exchange = pb::exchange_client::ExchangeClient::new(conn.channel);
    let base = pb::RequestAccessRequest {
        dataset_id: dsnode::dataset::DatasetId::of_payload(b"x").to_string(),
        purpose: "research".into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    };
    for (req, code) in [
        (
            pb::RequestAccessRequest {
                dataset_id: "../etc".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RequestAccessRequest {
                actions: vec!["sell".into()],
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RequestAccessRequest {
                purpose: "Bad Purpose".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (base.clone(), Code::NotFound),
    ] {
        let err = exchange.request_access(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "{}", err.message());
    }
    pub_node.shutdown().await.expect("stop");
}

/// The happy path end to end: request, fetch (every chunk verified),
/// receipts on both sides, and the ledgers tell the story in order.
#[tokio::test]
async fn fetch_verifies_writes_and_both_ledgers_record_the_receipt() {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content: Vec<u8> = (0..3_300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let ds = published(&publisher, &pub_node, "Road sensors", POLICY, &content).await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("sensors.csv");
    let Transfer { grant, fetched: r } =
        grant_and_fetch(&consumer, &con_node, &ds, pub_node.local_addr(), &out)
            .await
            .expect("fetch");
    assert_eq!(std::fs::read(&out).expect("output"), content);
    assert_eq!(r.bytes, content.len() as u64);
    assert_eq!(
        std::fs::read_dir(out_dir.path()).expect("ls").count(),
        1,
        "no partial file left"
    );

    // An existing output is not replaced without force; nothing written.
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect_err("exists");
    assert_eq!(err.code, PeerCode::FailedPrecondition);
    assert!(err.message.contains("--force"), "{}", err.message);

    let q = Query {
        grant: Some(grant.clone()),
        ..Query::default()
    };
    assert_eq!(
        kinds(&auditor, &pub_node, q.clone()).await,
        vec![
            EntryKind::AccessGranted,
            EntryKind::TransferStarted,
            EntryKind::ReceiptRecorded
        ]
    );
    assert_eq!(
        kinds(&auditor, &con_node, q.clone()).await,
        vec![
            EntryKind::GrantReceived,
            EntryKind::TransferCompleted,
            EntryKind::ReceiptRecorded,
            EntryKind::PeerCheckpointSeen
        ]
    );

    // The consumer's ledger holds the publisher's checkpoint that covers
    // the receipt; the publisher's log is provably an extension of it, and
    // the receipt the consumer kept is the one both ledgers name.
    let mut on_consumer = Auditor::new(Box::new(support::connect(&auditor, &con_node).await));
    let (_, entries) = on_consumer.entries(q, true).await.expect("entries");
    let receipt_hash = entries[2].entry.draft.object_hash.expect("receipt hash");
    let note = &entries[3].entry.draft.detail;
    let mut on_publisher = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let vkey = dsnode::ledger::note::NoteVerifier::new(
        &dsnode::ledger::origin_for(&publisher.identity.node_id),
        &publisher.identity.public_key,
    )
    .expect("verifier");
    let witnessed = dsnode::ledger::note::SignedCheckpoint::verify(note.as_bytes(), &vkey)
        .expect("the witnessed checkpoint is the publisher's");
    let (old, _, _) = on_publisher
        .prove_consistency(witnessed.checkpoint.size, 0)
        .await
        .expect("the publisher's log extends what the consumer saw");
    assert_eq!(old.checkpoint.root, witnessed.checkpoint.root);

    // The entries of one transfer are linked by typed fields: every one
    // names the publisher's TransferStarted, and the consumer's receipt
    // entry names the publisher's. The detail texts are as before.
    let by_grant = Query {
        grant: Some(grant.clone()),
        ..Query::default()
    };
    let (_, on_pub) = on_publisher.entries(by_grant, true).await.expect("entries");
    let (started, pub_receipt) = (&on_pub[1].entry, &on_pub[2].entry);
    let (completed, con_receipt) = (&entries[1].entry, &entries[2].entry);
    let t = Some(started.index);
    assert_eq!(
        (started.draft.transfer, pub_receipt.draft.transfer),
        (None, t)
    );
    assert_eq!(completed.draft.transfer, t);
    assert_eq!(
        (con_receipt.draft.transfer, con_receipt.draft.peer_entry),
        (t, Some(pub_receipt.index))
    );
    assert_eq!(
        con_receipt.draft.detail,
        format!("publisher entry {}", pub_receipt.index)
    );
    assert_eq!(
        pub_receipt.draft.detail,
        format!(
            "{} bytes received; transfer entry {}",
            content.len(),
            started.index
        )
    );
    let kept = std::fs::read_to_string(
        consumer
            .dir
            .grants()
            .join("received")
            .join(flows::receipt_file(&consumer, &grant)),
    )
    .expect("kept receipt");
    let kept = Envelope::from_json(&kept).expect("envelope");
    assert_eq!(kept.payload_hash(), receipt_hash);
    dsnode::exchange::receipt::verify_receipt(kept, &consumer.identity.public_key)
        .expect("signed by the consumer");

    // The received content is kept as the consumer's pack (the output is
    // the same file, written once), across a restart (its start-up
    // collection removes only packs of fetches no longer in progress).
    con_node.shutdown().await.expect("stop");
    let con_node = support::start(&consumer, |_| {}).await;
    let packs: Vec<_> = std::fs::read_dir(consumer.dir.packs())
        .expect("ls")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.path())
        .collect();
    assert_eq!(packs.len(), 1, "one received dataset");
    assert_eq!(std::fs::read(&packs[0]).expect("pack"), content);
    {
        use std::os::unix::fs::MetadataExt;
        let (pack, output) = (
            std::fs::metadata(&packs[0]).expect("pack"),
            std::fs::metadata(&out).expect("output"),
        );
        assert_eq!(pack.ino(), output.ino(), "the output is the pack");
    }
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Defences: a stolen grant, a revoked grant, a used-up grant and a
/// tampered chunk are all refused; nothing is written to the output.
#[tokio::test]
async fn stolen_revoked_used_up_and_tampered_fetches_are_refused() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let thief = consumer_in(&space, "mallory", "CN-HE");
    let pub_node = support::start(&publisher, |_| {}).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let one_fetch = POLICY.replace("max_fetches = 3", "max_fetches = 1");
    let content = vec![42u8; 2_100_000];
    let ds = published(&publisher, &pub_node, "One fetch", &one_fetch, &content).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    let out_dir = tempfile::tempdir().expect("tempdir");

    // Stolen: the thief presents the consumer's grant id over its own mTLS.
    let conn = support::connect(&thief, &pub_node).await;
    let err = pb::exchange_client::ExchangeClient::new(conn.channel)
        .fetch(pb::FetchRequest {
            grant_id: grant.clone(),
            resume: None,
            ..Default::default()
        })
        .await
        .expect_err("stolen grant");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not to"), "{}", err.message());

    // Tampered: a byte flipped in a chunk on the publisher's disk.
    let blobs = publisher.dir.blobs().join("sha256");
    let dir = std::fs::read_dir(&blobs)
        .expect("ls")
        .flatten()
        .next()
        .expect("fan-out")
        .path();
    let chunk = std::fs::read_dir(&dir)
        .expect("ls")
        .flatten()
        .next()
        .expect("chunk")
        .path();
    let original = std::fs::read(&chunk).expect("read");
    let mut flipped = original.clone();
    flipped[7] ^= 1;
    std::fs::write(&chunk, &flipped).expect("tamper");
    let out = out_dir.path().join("tampered.bin");
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect_err("tampered");
    assert_eq!(err.code, PeerCode::DataLoss, "{}", err.message);
    assert!(err.message.contains("chunk"), "{}", err.message);
    assert!(!out.exists(), "nothing written");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).expect("ls").count(),
        0,
        "no partial file"
    );
    std::fs::write(&chunk, &original).expect("restore");

    // Once the publisher's disk is repaired, the same fetch resumes after
    // the chunks that verified: the interrupted transfer was the one fetch.
    let resumed = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect("resumed after the repair");
    assert!(resumed.resumed_chunks > 0, "{resumed:?}");
    assert_eq!(std::fs::read(&out).expect("out").len(), content.len());

    // Used up: a new fetch is refused.
    let out = out_dir.path().join("again.bin");
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &grant,
        &out,
        false,
    )
    .await
    .expect_err("used up");
    assert_eq!(err.code, PeerCode::PermissionDenied);
    assert!(err.message.contains("all used"), "{}", err.message);

    // Revoked: a fresh grant, revoked before use.
    let second = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;
    admin(&publisher, &pub_node)
        .await
        .revoke_grant(&second, "test")
        .await
        .expect("revoke");
    let err = fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &second,
        &out,
        false,
    )
    .await
    .expect_err("revoked");
    assert_eq!(err.code, PeerCode::PermissionDenied);
    assert!(err.message.contains("revoked"), "{}", err.message);
    assert!(!out.exists());
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Defence: revocation is checked between chunks (THREATS.md row 6): a
/// grant revoked mid-transfer stops the stream before it completes.
#[tokio::test]
async fn revocation_mid_transfer_stops_the_stream() {
    use tokio_stream::StreamExt;
    let TwoNodes {
        space: _space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let content = vec![7u8; 40 << 20];
    let ds = published(&publisher, &pub_node, "Big", POLICY, &content).await;
    let grant = granted(&consumer, &con_node, &ds, pub_node.local_addr()).await;

    // Read the stream slowly as the grantee, revoke after the first chunk.
    let conn = support::connect(&consumer, &pub_node).await;
    let mut stream = pb::exchange_client::ExchangeClient::new(conn.channel)
        .max_decoding_message_size(32 << 20)
        .fetch(pb::FetchRequest {
            grant_id: grant.clone(),
            resume: None,
            ..Default::default()
        })
        .await
        .expect("fetch opens")
        .into_inner();
    let _header = stream.next().await.expect("header").expect("ok");
    let _first = stream.next().await.expect("chunk 0").expect("ok");
    admin(&publisher, &pub_node)
        .await
        .revoke_grant(&grant, "mid-transfer")
        .await
        .expect("revoke");
    let mut chunks = 1;
    let mut ended_with = None;
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(_) => chunks += 1,
            Err(s) => {
                ended_with = Some(s);
                break;
            }
        }
    }
    let status = ended_with.expect("the stream ends with an error");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(status.message().contains("revoked"), "{}", status.message());
    assert!(chunks < 40, "stopped after {chunks} of 40 chunks");
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// A grant and its fetch count survive a publisher restart; two consumers
/// fetch at the same time.
#[tokio::test]
async fn grants_survive_restart_and_consumers_fetch_concurrently() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let a = consumer_in(&space, "acme", "CN-HE");
    let b = consumer_in(&space, "beta", "CN-BJ");
    let pub_node = support::start(&publisher, |_| {}).await;
    let a_node = support::start(&a, |_| {}).await;
    let b_node = support::start(&b, |_| {}).await;
    let content: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
    let ds = published(&publisher, &pub_node, "Shared", POLICY, &content).await;
    let ga = granted(&a, &a_node, &ds, pub_node.local_addr()).await;
    let gb = granted(&b, &b_node, &ds, pub_node.local_addr()).await;

    pub_node.shutdown().await.expect("stop");
    let pub_node = support::start(&publisher, |_| {}).await;

    let out = tempfile::tempdir().expect("tempdir");
    let (pa, pb_path) = (out.path().join("a"), out.path().join("b"));
    let (ra, rb) = tokio::join!(
        fetch_to(&a, &a_node, pub_node.local_addr(), &ga, &pa, false),
        fetch_to(&b, &b_node, pub_node.local_addr(), &gb, &pb_path, false),
    );
    ra.expect("a fetched after the restart");
    rb.expect("b fetched concurrently");
    assert_eq!(std::fs::read(out.path().join("a")).expect("a"), content);
    assert_eq!(std::fs::read(out.path().join("b")).expect("b"), content);
    for n in [pub_node, a_node, b_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Issue 20, finding 4: after ~15,000 grants an unpaged `ListGrants`
/// outgrew the 4 MiB message limit for good. Pages are bounded, in id
/// order, filterable, and the client follows them to the end.
#[tokio::test]
async fn grants_are_listed_a_page_at_a_time_with_filters() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let acme = consumer_in(&space, "acme", "CN-HE");
    let beta = consumer_in(&space, "beta", "CN-BJ");
    let pub_node = support::start(&publisher, |_| {}).await;
    let acme_node = support::start(&acme, |_| {}).await;
    let beta_node = support::start(&beta, |_| {}).await;
    let ds = publish(&publisher, &pub_node, header("Roads", POLICY, 3), b"a,b")
        .await
        .expect("publish")
        .dataset_id;
    let mut acme_grants = Vec::new();
    for _ in 0..7 {
        acme_grants.push(granted(&acme, &acme_node, &ds, pub_node.local_addr()).await);
    }
    for _ in 0..5 {
        granted(&beta, &beta_node, &ds, pub_node.local_addr()).await;
    }
    let pub_admin = admin(&publisher, &pub_node).await;
    for id in &acme_grants[..2] {
        pub_admin.revoke_grant(id, "test").await.expect("revoke");
    }

    // Pages of 5: 12 grants in 3 pages, each id once, in order.
    let mut ids = Vec::new();
    let mut request = pb::ListGrantsRequest {
        limit: 5,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let (page, next) = pub_admin
            .list_grants_page(request.clone())
            .await
            .expect("page");
        pages += 1;
        assert!(page.len() <= 5, "{}", page.len());
        ids.extend(page.iter().map(|s| {
            assert!(s.issued);
            s.grant.clone()
        }));
        if next.is_empty() {
            break;
        }
        request.page_token = next;
    }
    assert_eq!(ids.len(), 12);
    assert!(pages >= 3, "{pages} pages");
    let ids: Vec<String> = ids
        .into_iter()
        .map(|e| {
            verify_grant(e, &publisher.identity.public_key)
                .expect("grant")
                .value()
                .id
                .to_string()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in id order, each once");

    // Filters, followed over pages of 2.
    let count = |grantee: &str, state: pb::GrantState| {
        let request = pb::ListGrantsRequest {
            limit: 2,
            dataset_id: ds.clone(),
            grantee: grantee.into(),
            state: state as i32,
            ..Default::default()
        };
        let a = pub_admin.clone();
        async move { a.list_grants_matching(request).await.expect("list").len() }
    };
    let acme_id = acme.identity.node_id.to_string();
    let beta_id = beta.identity.node_id.to_string();
    assert_eq!(count(&beta_id, pb::GrantState::Unspecified).await, 5);
    assert_eq!(count(&acme_id, pb::GrantState::Issued).await, 5);
    assert_eq!(count(&acme_id, pb::GrantState::Revoked).await, 2);
    assert_eq!(count("", pb::GrantState::Revoked).await, 2);
    assert_eq!(count("", pb::GrantState::Held).await, 0);
    let held = admin(&acme, &acme_node)
        .await
        .list_grants_matching(pb::ListGrantsRequest {
            limit: 3,
            state: pb::GrantState::Held as i32,
            ..Default::default()
        })
        .await
        .expect("held");
    assert_eq!(held.len(), 7);
    assert!(held.iter().all(|s| !s.issued));

    // Bad requests are refused, saying what was expected.
    for (request, says) in [
        (
            pb::ListGrantsRequest {
                page_token: "elsewhere:1".into(),
                ..Default::default()
            },
            "invalid page token",
        ),
        (
            pb::ListGrantsRequest {
                limit: 1001,
                ..Default::default()
            },
            "above the page cap of 1000",
        ),
        (
            pb::ListGrantsRequest {
                state: 9,
                ..Default::default()
            },
            "unknown grant state 9",
        ),
        (
            pb::ListGrantsRequest {
                grantee: "nobody".into(),
                ..Default::default()
            },
            "grantee",
        ),
    ] {
        let err = pub_admin
            .list_grants_page(request)
            .await
            .expect_err("refused");
        assert_eq!(err.code, PeerCode::InvalidArgument, "{err:?}");
        assert!(err.message.contains(says), "{}", err.message);
    }
    for n in [pub_node, acme_node, beta_node] {
        n.shutdown().await.expect("stop");
    }
}
