//! Health and shutdown: SERVING once ready, NOT_SERVING from the start of
//! shutdown, and the drain ends within its deadline.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{self, DataSpace};

#[tokio::test]
async fn health_is_serving_then_not_serving_once_shutdown_starts() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "auditor");
    let node = support::start(&server, |t| t.drain_deadline = Duration::from_secs(1)).await;
    let conn = support::connect(&client, &node).await;
    let mut health = HealthClient::new(conn.channel);

    let check = health
        .check(HealthCheckRequest {
            service: "dataspace.v1.Peering".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(check.status, ServingStatus::Serving as i32);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let token = node.shutdown_token();
    let started = Instant::now();
    token.cancel();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a status update after shutdown starts")
        .expect("stream open")
        .expect("status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // The watch stream never ends by itself: the drain deadline (1 s) cuts it.
    node.wait().await.expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );
}

/// The listen port is released on shutdown, and an address in use is a
/// clear start-up error.
#[tokio::test]
async fn address_in_use_is_a_clear_error() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let node = support::start(&server, |_| {}).await;
    let mut config = dsnode::runtime::config::Config::new(server.dir.root(), node.local_addr());
    config.transport.drain_deadline = Duration::from_secs(1);
    let err = match dsnode::node::start(config).await {
        Ok(_) => panic!("second bind must fail"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    node.shutdown().await.expect("shutdown");
}

/// gRPC reflection lists every service, so stock clients (grpcurl) work.
#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "auditor");
    let node = support::start(&server, |_| {}).await;
    let conn = support::connect(&client, &node).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(conn.channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "unexpected reflection answer: {:?}",
            response.message_response
        );
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "dataspace.v1.Peering",
        "dataspace.v1.Catalog",
        "dataspace.v1.Exchange",
        "dataspace.v1.Ledger",
        "dataspace.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    node.shutdown().await.expect("shutdown");
}
