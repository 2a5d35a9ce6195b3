//! Publishing over the Admin API and discovering over the Catalog, between
//! real nodes over mTLS.

use dsnode::dataset::{DatasetId, verify_manifest};
use dsnode::envelope::Envelope;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::node::RunningNode;
use dsnode::peer::Code as PeerCode;
use dsnode::wire::pb;
use tonic::Code;

use crate::support::flows::{POLICY, header, publish};
use crate::support::{self, DataSpace, NodeDir, consumer_in};

async fn list(
    as_node: &NodeDir,
    node: &RunningNode,
) -> Vec<(DatasetId, dsnode::dataset::Manifest)> {
    let conn = support::connect(as_node, node).await;
    let key = conn.server.public_key;
    let page = pb::catalog_client::CatalogClient::new(conn.channel)
        .list_datasets(pb::ListDatasetsRequest::default())
        .await
        .expect("list")
        .into_inner();
    page.datasets
        .into_iter()
        .map(|e| {
            let env: Envelope = e.manifest.expect("manifest").into();
            let (id, m) =
                verify_manifest(env, &key).expect("manifest verifies with the publisher's key");
            assert_eq!(id.as_str(), e.dataset_id);
            (id, m.value().clone())
        })
        .collect()
}

#[tokio::test]
async fn published_dataset_is_listed_to_those_the_policy_could_grant() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let elsewhere = consumer_in(&space, "far-away", "CN-SH");
    let auditor = space.node("regulator", "auditor");
    let node = support::start(&publisher, |_| {}).await;

    let content: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let r = publish(
        &publisher,
        &node,
        header("Road sensors", POLICY, content.len() as u64),
        &content,
    )
    .await
    .expect("publish");
    let id: DatasetId = r.dataset_id.parse().expect("id");

    // The consumer sees it, verified against the publisher's certificate.
    let seen = list(&consumer, &node).await;
    assert_eq!(seen.len(), 1);
    let (seen_id, m) = &seen[0];
    assert_eq!(*seen_id, id);
    assert_eq!(m.size, content.len() as u64);
    assert_eq!(m.chunk_count, 3, "1 MiB chunks");
    assert_eq!(m.publisher, publisher.identity.node_id);
    let digest = ring::digest::digest(&ring::digest::SHA256, &content);
    assert_eq!(m.content_sha256.as_slice(), digest.as_ref());

    // Nodes the policy excludes do not see it, listed or by id.
    for excluded in [&elsewhere, &auditor] {
        assert!(list(excluded, &node).await.is_empty());
        let conn = support::connect(excluded, &node).await;
        let err = pb::catalog_client::CatalogClient::new(conn.channel)
            .get_dataset(pb::GetDatasetRequest {
                dataset_id: id.to_string(),
            })
            .await
            .expect_err("hidden");
        assert_eq!(err.code(), Code::NotFound);
    }

    // The publication is in the ledger, naming the manifest's hash.
    let mut a = dsnode::audit::Auditor::new(Box::new(support::connect(&auditor, &node).await));
    let (_, entries) = a
        .entries(
            Query {
                dataset: Some(id.to_string()),
                ..Query::default()
            },
            true,
        )
        .await
        .expect("ledger");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.draft.kind, EntryKind::DatasetPublished);

    // A restart reloads the catalog, and removes chunks no dataset
    // references (as a crash mid-publication would leave).
    node.shutdown().await.expect("stop");
    let orphan = publisher.dir.blobs().join("sha256/ff/ff00");
    std::fs::create_dir_all(orphan.parent().expect("dir")).expect("mkdir");
    std::fs::write(&orphan, b"left by a crash").expect("orphan");
    let node = support::start(&publisher, |_| {}).await;
    assert_eq!(list(&consumer, &node).await.len(), 1);
    assert!(!orphan.exists(), "orphan chunk collected at start-up");
    node.shutdown().await.expect("stop");
}

#[tokio::test]
async fn bad_publications_store_nothing_and_record_nothing() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = consumer_in(&space, "acme", "CN-HE");
    let node = support::start(&publisher, |_| {}).await;
    let content = b"a,b\n1,2\n".to_vec();

    let unknown_operand = POLICY.replace(
        "max_fetches = 3",
        "max_fetches = 3\nindustry = [\"logistics\"]",
    );
    let cases: Vec<(pb::PublishHeader, &str)> = vec![
        (header("x", &unknown_operand, 8), "industry"),
        (header("x", "classification = \"secret\"\n", 8), "secret"),
        (header("", POLICY, 8), "title"),
        (header("x", POLICY, 999), "announced 999 bytes"),
        (
            pb::PublishHeader {
                supersedes: "ds_not-an-id".into(),
                ..header("x", POLICY, 8)
            },
            "invalid dataset id",
        ),
        (
            pb::PublishHeader {
                derived_from: vec![pb::Derivation {
                    dataset_id: dsnode::dataset::DatasetId::of_payload(b"elsewhere").to_string(),
                    grant_id: dsnode::exchange::grant::GrantId::random()
                        .expect("id")
                        .to_string(),
                }],
                ..header("x", POLICY, 8)
            },
            "holds no grant",
        ),
    ];
    for (h, why) in cases {
        let err = publish(&publisher, &node, h, &content)
            .await
            .expect_err(why);
        assert_eq!(
            err.code,
            PeerCode::InvalidArgument,
            "{why}: {}",
            err.message
        );
        assert!(err.message.contains(why), "{why}: {}", err.message);
    }
    assert!(list(&consumer, &node).await.is_empty(), "nothing published");
    let datasets = std::fs::read_dir(publisher.dir.root().join("datasets"))
        .expect("dir")
        .count();
    assert_eq!(datasets, 0, "no dataset directory left behind");
    let chunks = std::fs::read_dir(publisher.dir.blobs().join("sha256"))
        .expect("dir")
        .count();
    assert_eq!(chunks, 0, "no chunk left behind");
    node.shutdown().await.expect("stop");
}

#[tokio::test]
async fn derivatives_inherit_classification_and_versions_only_go_up() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let node = support::start(&publisher, |_| {}).await;
    let important = POLICY.replace("\"general\"", "\"important\"");
    let source = publish(&publisher, &node, header("Source", &important, 3), b"abc")
        .await
        .expect("source");

    let derived = |policy: &str| pb::PublishHeader {
        derived_from: vec![pb::Derivation {
            dataset_id: source.dataset_id.clone(),
            grant_id: String::new(),
        }],
        ..header("Derived", policy, 3)
    };
    let err = publish(&publisher, &node, derived(POLICY), b"xyz")
        .await
        .expect_err("weaker");
    assert!(
        err.message.contains("strictest classification"),
        "{}",
        err.message
    );
    let ok = publish(&publisher, &node, derived(&important), b"xyz")
        .await
        .expect("derived");
    let env: Envelope = ok.manifest.expect("manifest").into();
    let (_, m) = verify_manifest(env, &publisher.identity.public_key).expect("verify");
    assert_eq!(
        m.value().classification,
        dsnode::policy::Classification::Important
    );
    assert_eq!(m.value().derived_from.len(), 1);

    let v2 = publish(
        &publisher,
        &node,
        pb::PublishHeader {
            supersedes: source.dataset_id.clone(),
            ..header("Source v2", &important, 4)
        },
        b"abcd",
    )
    .await
    .expect("v2");
    let env: Envelope = v2.manifest.expect("manifest").into();
    let (_, m2) = verify_manifest(env, &publisher.identity.public_key).expect("verify");
    assert_eq!(m2.value().version, 2);
    assert_eq!(
        m2.value().lineage.as_ref().map(|l| l.to_string()),
        Some(source.dataset_id.clone())
    );
    // Superseding v1 again would fork the lineage.
    let err = publish(
        &publisher,
        &node,
        pb::PublishHeader {
            supersedes: source.dataset_id.clone(),
            ..header("Fork", &important, 1)
        },
        b"f",
    )
    .await
    .expect_err("fork");
    assert!(
        err.message.contains("not the latest version"),
        "{}",
        err.message
    );
    node.shutdown().await.expect("stop");
}
