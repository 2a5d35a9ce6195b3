//! THREATS.md rows not covered elsewhere (the closing note of the
//! hardening issue maps every row to its test).

use crate::datasets::{POLICY, header, publish};
use crate::support::{self, DataSpace};

/// Row 3, defence: versions only go up per lineage, and the latest of
/// each lineage is what the catalog reloads at start-up. After a restart,
/// superseding an older version (rolling the lineage back) is refused as
/// before.
#[tokio::test]
async fn threat_03_a_lineage_cannot_roll_back_after_a_restart() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let node = support::start(&publisher, |_| {}).await;
    let v1 = publish(&publisher, &node, header("Lanes v1", POLICY, 1), b"1")
        .await
        .expect("v1")
        .dataset_id;
    let mut h = header("Lanes v2", POLICY, 2);
    h.supersedes = v1.clone();
    publish(&publisher, &node, h, b"22").await.expect("v2");
    node.shutdown().await.expect("stop");

    let node = support::start(&publisher, |_| {}).await;
    let mut again = header("Lanes v2 again", POLICY, 1);
    again.supersedes = v1;
    let err = publish(&publisher, &node, again, b"x")
        .await
        .expect_err("rollback after restart");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("not the latest version"),
        "{}",
        err.message()
    );
    node.shutdown().await.expect("stop");
}

/// Row 17, defence: policy size and nesting limits, checked at publish
/// (src/policy/mod.rs, `MAX_POLICY_BYTES` and the depth limit): a huge
/// policy and a deeply nested one are refused with the limit named, and
/// nothing is published.
#[tokio::test]
async fn threat_17_a_huge_or_deep_policy_is_refused_at_publish() {
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let node = support::start(&publisher, |_| {}).await;
    let huge = format!(
        "{POLICY}\n[[permission]]\nactions = [\"read\"]\npurpose = [{}]\n",
        (0..20_000)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let deep = format!(
        "classification = \"general\"\nx = {}1{}\n",
        "[".repeat(64),
        "]".repeat(64)
    );
    for (policy, why) in [(huge, "at most 65536"), (deep, "")] {
        let err = publish(&publisher, &node, header("Big", &policy, 1), b"1")
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().contains(why), "{why}: {}", err.message());
    }
    let datasets = std::fs::read_dir(publisher.dir.datasets())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(datasets, 0, "nothing published");
    node.shutdown().await.expect("stop");
}
