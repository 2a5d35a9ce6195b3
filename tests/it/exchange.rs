//! Access requests between real nodes: the publisher evaluates its policy
//! against the requester's certificate, signs a grant or names every
//! reason for a denial; both ledgers record it; grants survive restarts and
//! can be revoked.

use dsnode::audit::Auditor;
use dsnode::envelope::Envelope;
use dsnode::exchange::grant::verify_grant;
use dsnode::ledger::entry::EntryKind;
use dsnode::pb;
use tonic::Code;

use crate::datasets::{POLICY, consumer_in, header, publish};
use crate::support::{self, DataSpace, NodeDir};

fn ask(dataset: &str, purpose: &str, peer: std::net::SocketAddr) -> pb::AdminRequestAccessRequest {
    pb::AdminRequestAccessRequest {
        peer: peer.to_string(),
        dataset_id: dataset.into(),
        purpose: purpose.into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    }
}

async fn kinds(
    auditor: &NodeDir,
    node: &dsnode::node::RunningNode,
    grant_or_dataset: pb::QueryEntriesRequest,
) -> Vec<EntryKind> {
    let mut a = Auditor::new(support::connect(auditor, node).await).expect("auditor");
    let (_, entries) = a
        .entries(grant_or_dataset, true)
        .await
        .expect("entries verify");
    entries.into_iter().map(|e| e.entry.draft.kind).collect()
}

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
    let conn = support::connect(&consumer, &con_node).await;
    let mut admin = pb::admin_client::AdminClient::new(conn.channel);
    let r = admin
        .request_access(ask(&ds, "route-planning", pub_node.local_addr()))
        .await
        .expect("granted")
        .into_inner();
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
    let err = admin
        .request_access(ask(&ds, "marketing", pub_node.local_addr()))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("purpose `marketing` is not in [research, route-planning]"),
        "{}",
        err.message()
    );

    // An outsider cannot even see the dataset.
    let conn = support::connect(&outsider, &out_node).await;
    let err = pb::admin_client::AdminClient::new(conn.channel)
        .request_access(ask(&ds, "research", pub_node.local_addr()))
        .await
        .expect_err("hidden");
    assert_eq!(err.code(), Code::NotFound);

    // Both ledgers tell the story.
    let grant_q = pb::QueryEntriesRequest {
        grant: g.id.to_string(),
        ..Default::default()
    };
    assert_eq!(
        kinds(&auditor, &pub_node, grant_q.clone()).await,
        vec![EntryKind::AccessGranted]
    );
    assert_eq!(
        kinds(&auditor, &con_node, grant_q).await,
        vec![EntryKind::GrantReceived]
    );
    let ds_q = pb::QueryEntriesRequest {
        dataset: ds.clone(),
        ..Default::default()
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
    let conn = support::connect(&publisher, &pub_node).await;
    let mut pub_admin = pb::admin_client::AdminClient::new(conn.channel);
    let revoked = pub_admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: g.id.to_string(),
            reason: "test".into(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(!revoked.already_revoked);
    let again = pub_admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: g.id.to_string(),
            reason: "again".into(),
        })
        .await
        .expect("revoke again")
        .into_inner();
    assert!(again.already_revoked);
    pub_node.shutdown().await.expect("stop");
    let pub_node = support::start(&publisher, |_| {}).await;
    let conn = support::connect(&publisher, &pub_node).await;
    let list = pb::admin_client::AdminClient::new(conn.channel)
        .list_grants(pb::ListGrantsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.grants.len(), 1);
    assert!(list.grants[0].issued && list.grants[0].revoked);
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
