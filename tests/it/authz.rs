//! The role × RPC table (THREATS.md row 18): every role against every RPC,
//! over real mutual TLS. The expected table is written out here, separately
//! from the node's own table, so a change to either breaks this test.

use http::uri::PathAndQuery;
use tonic::Code;

use crate::support::{self, DataSpace, NodeDir};

/// Who may call what, as DESIGN.md states it.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Anyone,
    Consumer,
    Auditor,
    OwnNode,
    /// The node itself, and only if it holds the consumer role.
    OwnNodeConsumer,
}

const TABLE: &[(&str, Expect)] = &[
    ("/dataspace.v1.Catalog/ListDatasets", Expect::Anyone),
    ("/dataspace.v1.Catalog/GetDataset", Expect::Anyone),
    ("/dataspace.v1.Exchange/RequestAccess", Expect::Consumer),
    ("/dataspace.v1.Exchange/Fetch", Expect::Consumer),
    ("/dataspace.v1.Exchange/SubmitReceipt", Expect::Consumer),
    ("/dataspace.v1.Ledger/GetCheckpoint", Expect::Anyone),
    ("/dataspace.v1.Ledger/QueryEntries", Expect::Anyone),
    ("/dataspace.v1.Ledger/GetEntries", Expect::Anyone),
    ("/dataspace.v1.Ledger/ProveInclusion", Expect::Anyone),
    ("/dataspace.v1.Ledger/ProveConsistency", Expect::Anyone),
    ("/dataspace.v1.Ledger/GetEvidence", Expect::Auditor),
    ("/dataspace.v1.Peering/Hello", Expect::Anyone),
    ("/dataspace.v1.Peering/ExchangeCheckpoints", Expect::Anyone),
    ("/dataspace.v1.Admin/Publish", Expect::OwnNode),
    ("/dataspace.v1.Admin/RevokeGrant", Expect::OwnNode),
    ("/dataspace.v1.Admin/RequestAccess", Expect::OwnNodeConsumer),
    ("/dataspace.v1.Admin/Fetch", Expect::OwnNodeConsumer),
    ("/dataspace.v1.Admin/ListGrants", Expect::OwnNode),
    ("/dataspace.v1.Admin/Status", Expect::OwnNode),
    ("/dataspace.v1.Admin/Witness", Expect::OwnNode),
    (
        "/dataspace.v1.Admin/ResendReceipts",
        Expect::OwnNodeConsumer,
    ),
    ("/dataspace.v1.Admin/AuditStorage", Expect::OwnNode),
    ("/grpc.health.v1.Health/Check", Expect::Anyone),
];

/// How a call was answered.
struct Answer {
    /// The status code (OK counts as allowed).
    code: Code,
    /// The status message (empty for OK).
    message: String,
}

/// Calls `path` with an empty message and returns the status code and
/// message (OK counts as allowed).
async fn call(channel: tonic::transport::Channel, path: &'static str) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .unary(
            tonic::Request::new(()),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
    {
        Ok(_) => Answer {
            code: Code::Ok,
            message: String::new(),
        },
        Err(status) => Answer {
            code: status.code(),
            message: status.message().to_owned(),
        },
    }
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let space = DataSpace::new();
    // The server is a publisher; its own certificate is the "operator".
    let server = space.node("server", "publisher");
    let publisher = space.node("other-publisher", "publisher");
    let consumer = space.node("consumer", "consumer");
    let auditor = space.node("auditor", "auditor");
    let node = support::start(&server, |_| {}).await;

    let callers: [(&str, &NodeDir); 4] = [
        ("own node", &server),
        ("publisher", &publisher),
        ("consumer", &consumer),
        ("auditor", &auditor),
    ];
    for (who, dir) in callers {
        let conn = support::connect(dir, &node).await;
        for (path, expect) in TABLE {
            let allowed = match expect {
                Expect::Anyone => true,
                Expect::Consumer => who == "consumer",
                Expect::Auditor => who == "auditor",
                Expect::OwnNode => who == "own node",
                // The server here is a publisher only.
                Expect::OwnNodeConsumer => false,
            };
            let Answer { code, message } = call(conn.channel.clone(), path).await;
            if allowed {
                assert_ne!(
                    code,
                    Code::PermissionDenied,
                    "{who} must be allowed {path}: {message}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{who} must be refused {path}");
                let names_what_is_missing = match expect {
                    Expect::Consumer => message.contains("requires the consumer role"),
                    Expect::Auditor => message.contains("requires the auditor role"),
                    Expect::OwnNode => message.contains("own operator only"),
                    Expect::OwnNodeConsumer => {
                        message.contains("own operator only")
                            || message.contains("requires the consumer role")
                    }
                    Expect::Anyone => false,
                };
                assert!(names_what_is_missing, "{who} on {path}: {message}");
            }
        }
    }
    node.shutdown().await.expect("shutdown");
}

/// Admin.Publish needs the publisher role even from the node itself: a
/// consumer-only node cannot publish through its own Admin API.
#[tokio::test]
async fn own_node_without_publisher_role_cannot_publish() {
    let space = DataSpace::new();
    let consumer = space.node("consumer", "consumer");
    let node = support::start(&consumer, |_| {}).await;
    let conn = support::connect(&consumer, &node).await;
    let Answer { code, message } = call(conn.channel.clone(), "/dataspace.v1.Admin/Publish").await;
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("requires the publisher role"), "{message}");
    let Answer { code, .. } = call(conn.channel, "/dataspace.v1.Admin/Status").await;
    assert_eq!(code, Code::Ok, "own node may read its status");
    node.shutdown().await.expect("shutdown");
}

/// An empty checkpoint exchange (no checkpoint) is bad input, named.
#[tokio::test]
async fn an_empty_checkpoint_exchange_is_refused_as_bad_input() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let consumer = space.node("consumer", "consumer");
    let node = support::start(&server, |_| {}).await;
    let conn = support::connect(&consumer, &node).await;
    let Answer { code, message } =
        call(conn.channel, "/dataspace.v1.Peering/ExchangeCheckpoints").await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        message.contains("your checkpoint does NOT verify"),
        "{message}"
    );
    node.shutdown().await.expect("shutdown");
}
