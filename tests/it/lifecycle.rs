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
    let mut config = dsnode::config::Config::new(server.dir.root(), node.local_addr());
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
