//! THREATS.md row 16: key compromise and rotation.

use dsnode::audit::Auditor;
use dsnode::identity::RoleSet;
use dsnode::identity::ca::IssueRequest;
use dsnode::ledger::Query;
use dsnode::ledger::entry::EntryKind;
use dsnode::ledger::note::{Checkpoint, NoteSigner};
use dsnode::wire::pb;

use crate::support::flows::{
    POLICY, fetch_to, grant_and_fetch, granted, header, publish, published,
};
use crate::support::{self, NodeDir, TwoNodes};

/// Row 16, defence: the key history in the ledger (src/ledger/keys.rs).
/// A publisher rotates to a key the CA certified for the same participant;
/// the `KeyRotated` entry is signed by both keys and the handover
/// checkpoint by both. Then: a manifest and a grant signed before the
/// rotation still verify (against the history) and are served; new
/// objects are signed by the new key; an auditor verifies the whole log
/// across the rotation; and the retired key is refused: the node will not
/// start with it (a restored old key file), a checkpoint it signs for the
/// log's current size is refused, naming the rotation.
#[tokio::test]
async fn threat_16_a_rotated_key_keeps_old_signatures_and_refuses_new_ones() {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content = b"stop,passengers\n1,12\n2,40\n".to_vec();
    let before = published(
        &publisher,
        &pub_node,
        "Before the rotation",
        POLICY,
        &content,
    )
    .await;
    let old_grant = granted(&consumer, &con_node, &before, pub_node.local_addr()).await;
    let size_before = {
        let mut a = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
        a.checkpoint().await.expect("checkpoint").checkpoint.size
    };
    pub_node.shutdown().await.expect("stop");

    // A copy of the old key, as a thief (or a stale backup) would have it.
    let old_key_pem = std::fs::read(publisher.dir.key()).expect("old key");
    let old_tls_key_pem = std::fs::read(publisher.dir.tls_key()).expect("old tls key");
    let old_cert_pem = std::fs::read(publisher.dir.cert()).expect("old cert");

    // Rotate: next key and CSR, the operator issues, the node switches.
    let prepared = dsnode::node::rotation::prepare(&publisher.dir).expect("prepare");
    let csr = std::fs::read_to_string(publisher.dir.next_csr()).expect("csr");
    let issued = space
        .ca
        .ca()
        .issue(
            &csr,
            &IssueRequest::new(RoleSet::parse_list("publisher").expect("roles")),
        )
        .expect("issue");
    assert_eq!(issued.identity.participant, publisher.identity.participant);
    let rotated = dsnode::node::rotation::finish(&publisher.dir, issued.pem.as_bytes())
        .await
        .expect("rotate");
    assert_eq!(rotated.new, prepared.node_id);
    assert_eq!(rotated.old.as_ref(), Some(&publisher.identity.node_id));
    let rotation_index = rotated.index.expect("recorded now");
    assert_eq!(rotation_index, size_before);
    assert_eq!(
        std::fs::read(rotated.retired_cert.as_ref().expect("kept")).expect("retired cert"),
        old_cert_pem
    );
    assert!(!publisher.dir.next_key().exists());

    // The retired key cannot run the node, even with its own certificate
    // (a whole old backup restored): the ledger refuses it, by name.
    let new_key_pem = std::fs::read(publisher.dir.key()).expect("new key");
    let new_tls_key_pem = std::fs::read(publisher.dir.tls_key()).expect("new tls key");
    assert_ne!(new_tls_key_pem, old_tls_key_pem, "the TLS key rotated too");
    std::fs::write(publisher.dir.key(), &old_key_pem).expect("restore old key");
    std::fs::write(publisher.dir.tls_key(), &old_tls_key_pem).expect("restore old tls key");
    std::fs::write(publisher.dir.cert(), &old_cert_pem).expect("restore old cert");
    let mut config = dsnode::runtime::config::Config::new(
        publisher.dir.root(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.transport.drain_deadline = std::time::Duration::from_secs(1);
    let err = dsnode::node::start(config)
        .await
        .err()
        .expect("the retired key is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("retired at entry {rotation_index}")),
        "{msg}"
    );
    let next = NodeDir {
        dir: publisher.dir.clone(),
        identity: issued.identity.clone(),
    };
    // Back to the current key; the operator revokes the old certificate.
    std::fs::write(publisher.dir.cert(), issued.pem.as_bytes()).expect("cert");
    std::fs::write(publisher.dir.key(), &new_key_pem).expect("key");
    std::fs::write(publisher.dir.tls_key(), &new_tls_key_pem).expect("tls key");
    space
        .ca
        .revoke(&old_cert_pem, "old node.crt")
        .expect("revoke");
    for n in [&publisher, &consumer, &auditor] {
        space.publish_crl(&n.dir);
    }

    let pub_node = support::start(&next, |_| {}).await;
    let out_dir = tempfile::tempdir().expect("tempdir");

    // The grant and the manifest signed by the old key (both recorded
    // before the rotation) are honoured: the consumer verifies the
    // manifest against the publisher's key history.
    let old_out = out_dir.path().join("before.csv");
    fetch_to(
        &consumer,
        &con_node,
        pub_node.local_addr(),
        &old_grant,
        &old_out,
        false,
    )
    .await
    .expect("old grant and manifest honoured");
    assert_eq!(std::fs::read(&old_out).expect("out"), content);

    // The catalog lists it, the signature checked against the history.
    let conn = support::connect(&consumer, &pub_node).await;
    let keys = dsnode::peer::log_keys(&conn).await.expect("history");
    assert_eq!(keys.keys().len(), 2);
    let listed = pb::catalog_client::CatalogClient::new(conn.channel)
        .list_datasets(pb::ListDatasetsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let env: dsnode::envelope::Envelope = listed.datasets[0].manifest.clone().expect("m").into();
    let (_, signer) = keys
        .verify_any(|k| dsnode::dataset::verify_manifest(env.clone(), k))
        .expect("old manifest verifies under the history");
    assert_eq!(signer.retired_at, Some(rotation_index));

    // New objects are signed by the new key.
    let after = publish(
        &next,
        &pub_node,
        header("After the rotation", POLICY, content.len() as u64),
        &content,
    )
    .await
    .expect("publish with the new key")
    .dataset_id;
    let new_out = out_dir.path().join("after.csv");
    grant_and_fetch(
        &consumer,
        &con_node,
        &after,
        pub_node.local_addr(),
        &new_out,
    )
    .await
    .expect("new grant");

    // An auditor verifies the log across the rotation: the history (the
    // rotation proven in the log), every entry, and the old checkpoint
    // (old key) consistent with the latest (new key).
    let mut a = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let (latest, entries) = a.entries(Query::default(), true).await.expect("entries");
    let rotation = &entries[rotation_index as usize].entry;
    assert_eq!(rotation.draft.kind, EntryKind::KeyRotated);
    assert_eq!(
        rotation.draft.parties,
        [publisher.identity.node_id.clone(), rotated.new.clone()]
    );
    let (old_cp, _, _) = a
        .prove_consistency(size_before, 0)
        .await
        .expect("old checkpoint (old key) is a prefix of the latest (new key)");
    assert_eq!(old_cp.checkpoint.size, size_before);
    let keys = a.keys().await.expect("keys");
    assert_eq!(keys.current().node_id, rotated.new);

    // A checkpoint the stolen retired key signs for the current size is
    // refused, naming the rotation.
    let stolen = out_dir.path().join("stolen.key");
    std::fs::write(&stolen, &old_key_pem).expect("stolen key");
    std::fs::set_permissions(&stolen, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("mode");
    let thief = dsnode::identity::NodeKey::load(&stolen).expect("old key");
    let forged = NoteSigner::new(keys.origin(), thief.signing_key().clone())
        .expect("signer")
        .sign(
            &Checkpoint {
                origin: keys.origin().to_owned(),
                size: latest.checkpoint.size,
                root: [0; 32],
            }
            .text(),
        );
    let err = keys
        .verify_checkpoint(forged.as_bytes())
        .expect_err("retired key");
    assert!(
        err.to_string()
            .contains(&format!("retired at entry {rotation_index}")),
        "{err}"
    );
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}
