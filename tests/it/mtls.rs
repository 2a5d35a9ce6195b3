//! Who gets in: two nodes see each other's true identity; everyone else is
//! refused at the TLS layer.

use std::time::{Duration, Instant};

use dsnode::peer::Code as PeerCode;
use dsnode::wire::pb;
use tokio_stream::StreamExt;

use crate::support::{self, DataSpace};

#[tokio::test]
async fn two_nodes_hello_and_each_sees_the_others_true_identity() {
    let space = DataSpace::new();
    let mut req = dsnode::identity::ca::IssueRequest::new(
        dsnode::identity::RoleSet::parse_list("publisher").expect("roles"),
    );
    req.region = Some("CN-HE".parse().expect("region"));
    let a = space.node_with("city-transport", req);
    let b = space.node("acme-logistics", "consumer");
    let node_a = support::start(&a, |_| {}).await;
    let node_b = support::start(&b, |_| {}).await;

    for (me, server, server_dir) in [(&b, &node_a, &a), (&a, &node_b, &b)] {
        let conn = support::connect(me, server).await;
        assert_eq!(
            conn.server, server_dir.identity,
            "verified server certificate"
        );
        let reply = pb::peering_client::PeeringClient::new(conn.channel)
            .hello(pb::HelloRequest {
                software_version: "test".into(),
            })
            .await
            .expect("hello")
            .into_inner();
        let seen_server = reply.server.expect("server identity");
        let seen_caller = reply.caller.expect("caller identity");
        assert_eq!(seen_server, pb::Identity::from(&server_dir.identity));
        assert_eq!(seen_caller, pb::Identity::from(&me.identity));
    }
    assert_eq!(
        node_a.identity().region.as_ref().map(|r| r.as_str()),
        Some("CN-HE")
    );
    assert_eq!(
        pb::Identity::from(&b.identity).roles,
        vec!["consumer".to_owned()]
    );
    node_a.shutdown().await.expect("shutdown a");
    node_b.shutdown().await.expect("shutdown b");
}

/// Defence: client certificates are required (THREATS.md row 8). A valid
/// client on the same path is the positive control.
#[tokio::test]
async fn client_without_certificate_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let addr = node.local_addr();
    let ca = server.dir.ca_cert();
    let tls13 = [&rustls::version::TLS13];

    let good = support::client_config_with(&tls13, &ca, Some(&client));
    let anonymous = support::client_config_with(&tls13, &ca, None);
    let (good, anonymous) = tokio::task::spawn_blocking(move || {
        (
            support::raw_tls_attempt(good, addr),
            support::raw_tls_attempt(anonymous, addr),
        )
    })
    .await
    .expect("join");
    assert_eq!(good, Ok(()), "a certified client is served");
    let err = anonymous.expect_err("no certificate must be refused");
    assert!(err.contains("CertificateRequired"), "{err}");
    node.shutdown().await.expect("shutdown");
}

/// Defence: only the data space's CA is trusted (row 8).
#[tokio::test]
async fn certificate_of_another_ca_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let other_ca =
        dsnode::identity::ca::CertificateAuthority::generate("Rogue CA").expect("other ca");
    let rogue = space.node_issued_by(
        "rogue",
        dsnode::identity::ca::IssueRequest::new(
            dsnode::identity::RoleSet::parse_list("auditor").expect("roles"),
        ),
        &other_ca,
    );
    let node = support::start(&server, |_| {}).await;
    let addr = node.local_addr();
    let config = support::client_config_with(
        &[&rustls::version::TLS13],
        &server.dir.ca_cert(),
        Some(&rogue),
    );
    let result = tokio::task::spawn_blocking(move || support::raw_tls_attempt(config, addr))
        .await
        .expect("join");
    let err = result.expect_err("foreign CA must be refused");
    assert!(err.contains("alert"), "{err}");
    node.shutdown().await.expect("shutdown");
}

/// Defence: certificate validity is enforced (row 7).
#[tokio::test]
async fn expired_certificate_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let stale = space.node_with("stale", support::expired("consumer"));
    let node = support::start(&server, |_| {}).await;
    let addr = node.local_addr();
    let config = support::client_config_with(
        &[&rustls::version::TLS13],
        &server.dir.ca_cert(),
        Some(&stale),
    );
    let result = tokio::task::spawn_blocking(move || support::raw_tls_attempt(config, addr))
        .await
        .expect("join");
    let err = result.expect_err("expired certificate must be refused");
    assert!(
        err.contains("CertificateExpired") || err.contains("alert"),
        "{err}"
    );
    node.shutdown().await.expect("shutdown");
}

/// Defence: TLS 1.3 only (row 8).
#[tokio::test]
async fn tls12_only_client_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let addr = node.local_addr();
    let config = support::client_config_with(
        &[&rustls::version::TLS12],
        &server.dir.ca_cert(),
        Some(&client),
    );
    let result = tokio::task::spawn_blocking(move || support::raw_tls_attempt(config, addr))
        .await
        .expect("join");
    let err = result.expect_err("TLS 1.2 must be refused");
    assert!(
        err.contains("ProtocolVersion") || err.contains("alert"),
        "{err}"
    );
    node.shutdown().await.expect("shutdown");
}

/// Defence: no h2c; the listener speaks only TLS (row 8).
#[tokio::test]
async fn plaintext_http2_is_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let node = support::start(&server, |_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.local_addr()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let result = pb::peering_client::PeeringClient::new(channel)
        .hello(pb::HelloRequest::default())
        .await;
    let status = result.expect_err("plaintext must be refused");
    assert_ne!(status.code(), tonic::Code::Ok);
    node.shutdown().await.expect("shutdown");
}

/// Defence: the CRL is enforced at the handshake (row 7).
#[tokio::test]
async fn revoked_certificate_is_refused_at_handshake() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    // Keep the client's own CRL (it does not list itself) so that only
    // the server's check is exercised.
    space.revoke(&client);
    space.publish_crl(&server.dir);
    let node = support::start(&server, |_| {}).await;
    let addr = node.local_addr();
    let config = support::client_config_with(
        &[&rustls::version::TLS13],
        &server.dir.ca_cert(),
        Some(&client),
    );
    let result = tokio::task::spawn_blocking(move || support::raw_tls_attempt(config, addr))
        .await
        .expect("join");
    let err = result.expect_err("revoked certificate must be refused");
    assert!(err.contains("CertificateRevoked"), "{err}");
    node.shutdown().await.expect("shutdown");
}

/// Defence: a CRL reload cuts the open connections of the peers it revokes
/// (row 7), long before `max_connection_age` + grace would. The revoked
/// peer holds a long-lived stream (health Watch) open.
#[tokio::test]
async fn open_connection_of_revoked_peer_ends_after_crl_reload() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |t| {
        t.max_connection_age = Duration::from_secs(60);
        t.max_connection_age_grace = Duration::from_secs(10);
    })
    .await;
    let conn = support::connect(&client, &node).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(conn.channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("status");
    assert_eq!(
        first.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    space.revoke(&client);
    space.publish_crl(&server.dir);
    let reloaded = Instant::now();
    // Reload interval is 100 ms: the stream must end (error or end of
    // stream) within a few seconds, not after the 60 s connection age.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "revoked peer's connection still open after {:?}",
        reloaded.elapsed()
    );
    // And a new connection from it is refused, with the reason.
    let err = match support::try_connect(&client, &node).await {
        Ok(_) => panic!("revoked peer connected again"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("refused this node's certificate") && err.contains("CertificateRevoked"),
        "{err}"
    );
    node.shutdown().await.expect("shutdown");
}

/// Defence: `max_connection_age` + grace ends even a busy connection
/// (bounds a peer whose certificate is revoked before the CRL arrives).
#[tokio::test]
async fn connection_ends_within_max_age_plus_grace() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let age = Duration::from_secs(1);
    let grace = Duration::from_secs(1);
    let node = support::start(&server, |t| {
        t.max_connection_age = age;
        t.max_connection_age_grace = grace;
    })
    .await;
    let conn = support::connect(&client, &node).await;
    let opened = Instant::now();
    let mut health = tonic_health::pb::health_client::HealthClient::new(conn.channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let slack = Duration::from_secs(2);
    let ended = tokio::time::timeout(age + grace + slack, async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "connection outlived max_connection_age + grace"
    );
    assert!(opened.elapsed() >= age, "ended before max_connection_age");
    node.shutdown().await.expect("shutdown");
}

/// Defence: a node's outgoing connections use the CRL in force, reloaded
/// like the server's (row 7): once the operator revokes a publisher and
/// the consumer's node reloads its CRL, the consumer's node refuses to
/// talk to that publisher, though it was fine at start-up.
#[tokio::test]
async fn outgoing_calls_refuse_a_peer_revoked_after_start_up() {
    let space = DataSpace::new();
    let publisher = space.node("publisher", "publisher");
    let consumer = space.node("consumer", "consumer");
    let pub_node = support::start(&publisher, |_| {}).await;
    let con_node = support::start(&consumer, |_| {}).await;
    let admin = support::flows::admin(&consumer, &con_node).await;
    let peer = pub_node.local_addr().to_string();
    let ask = || {
        support::flows::ask(
            &dsnode::dataset::DatasetId::of_payload(b"x").to_string(),
            "research",
        )
    };
    // Before: the publisher answers (no such dataset).
    let before = admin
        .request_access(&peer, ask())
        .await
        .expect_err("no dataset");
    assert_eq!(before.code, PeerCode::NotFound, "{}", before.message);

    space.revoke(&publisher);
    space.publish_crl(&consumer.dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let err = admin
            .request_access(&peer, ask())
            .await
            .expect_err("refused");
        if err.code == PeerCode::Unavailable {
            assert!(err.message.contains("Revoked"), "{}", err.message);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still talking: {}",
            err.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Defence: CRL numbers only go up, at start as at reload (row 7): after
/// a node put a newer CRL in force, restarting it with the older one
/// (which does not list a revoked peer) is refused. The newer CRL is
/// installed right after start-up, before the node's CRL watcher first
/// runs: a change in that window is reloaded too (it was missed before).
#[tokio::test]
async fn an_older_crl_is_refused_at_start_too() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let other = space.node("other", "consumer");
    let old_crl = std::fs::read(server.dir.crl()).expect("crl #0");
    let node = support::start(&server, |_| {}).await;
    let number = || -> u64 {
        std::fs::read_to_string(server.dir.root().join("crl.number"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let first = number();
    space.revoke(&other);
    space.publish_crl(&server.dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while number() <= first {
        assert!(
            std::time::Instant::now() < deadline,
            "the new CRL not put in force"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newer = number();
    node.shutdown().await.expect("stop");

    std::fs::write(server.dir.crl(), old_crl).expect("put the old CRL back");
    let config = dsnode::runtime::config::Config::new(
        server.dir.root(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let err = match dsnode::node::start(config).await {
        Ok(_) => panic!("started with an older CRL"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("older than CRL #{newer}")), "{err}");
    // `serve --check-config` says the same (issue 20, finding 8: it passed
    // a data dir that `serve` refused), and changes nothing.
    std::fs::write(server.dir.config(), "listen = \"127.0.0.1:0\"\n").expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["serve", "--check-config", "--data-dir"])
        .arg(server.dir.root())
        .output()
        .expect("run dsnode");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config passed: {stderr}");
    assert!(
        stderr.contains(&format!("older than CRL #{newer}")),
        "{stderr}"
    );
    assert_eq!(number(), newer);
}

/// Row 7, defence: an expired CRL is refused (DESIGN.md: "expired CRL =
/// refuse"), both by the TLS verifier of a running node (a handshake after
/// the CRL in force expired fails, so revocations cannot silently lapse)
/// and at start-up; while it is expired the node reports not ready
/// (`/readyz` 503), and ready again once a fresh CRL is installed.
#[tokio::test]
async fn threat_07_an_expired_crl_is_refused_at_handshake_and_at_start() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    space
        .ca
        .refresh_crl(Duration::from_secs(2))
        .expect("short CRL");
    space.publish_crl(&server.dir);
    let node = support::start_with(&server, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let metrics = node.metrics_addr().expect("metrics listener");
    assert!(
        support::try_connect(&client, &node).await.is_ok(),
        "the CRL is still valid"
    );
    assert_eq!(
        crate::support::http(metrics, "GET", "/readyz").await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert!(
        support::try_connect(&client, &node).await.is_err(),
        "refused once the CRL expired"
    );
    assert_eq!(
        crate::support::http(metrics, "GET", "/readyz").await.status,
        503
    );
    // The operator publishes a fresh CRL: ready again, handshakes pass.
    space
        .ca
        .refresh_crl(Duration::from_secs(3600))
        .expect("fresh CRL");
    space.publish_crl(&server.dir);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        crate::support::http(metrics, "GET", "/readyz").await.status,
        200
    );
    assert!(support::try_connect(&client, &node).await.is_ok());
    node.shutdown().await.expect("stop");

    // At start-up, an expired CRL is refused outright.
    space
        .ca
        .refresh_crl(Duration::from_secs(1))
        .expect("short CRL");
    space.publish_crl(&server.dir);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let config = dsnode::runtime::config::Config::new(
        server.dir.root(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let err = dsnode::node::start(config)
        .await
        .err()
        .expect("refused at start");
    let msg = err.to_string();
    assert!(msg.contains("crl.pem") && msg.contains("expired"), "{msg}");
}

/// The point of P-256 TLS keys: a TLS stack other than rustls (OpenSSL's
/// `s_client`, standing in for gRPC's C core and browsers, which refuse
/// Ed25519 certificates) completes a mutual TLS 1.3 handshake with a node,
/// verifying its certificate against the CA, and presenting a node's
/// certificate with its `tls.key`: the node counts no failed handshake,
/// while the same client without a certificate (the control) is counted.
/// Skipped, saying why, without `openssl`.
#[tokio::test]
async fn openssl_completes_a_mutual_tls13_handshake_with_a_node() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        println!("skipped: `openssl` cannot be run here");
        return;
    }
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start_with(&server, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let metrics = node.metrics_addr().expect("metrics");
    let s_client = |with_cert: bool| {
        let addr = node.local_addr().to_string();
        let (cert, key, ca) = (
            client.dir.cert(),
            client.dir.tls_key(),
            client.dir.ca_cert(),
        );
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["s_client", "-connect", &addr, "-tls1_3", "-alpn", "h2"])
                .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
                .arg("-CAfile")
                .arg(&ca);
            if with_cert {
                cmd.arg("-cert").arg(&cert).arg("-key").arg(&key);
            }
            // The HTTP/2 preface, so that the server reads (and judges the
            // client certificate) before the client hangs up.
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run openssl");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("stdin");
                let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            child.wait_with_output().expect("openssl output")
        })
    };
    let failures = || async {
        let body = support::http(metrics, "GET", "/metrics").await.body;
        body.lines()
            .filter(|l| l.starts_with("dsnode_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };

    let out = s_client(true).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "Verify return code: 0 (ok)",
        "TLSv1.3",
        "ALPN protocol: h2",
        "Peer signature type: ECDSA",
    ] {
        assert!(
            stdout.contains(needle),
            "missing `{needle}`:\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(
        failures().await,
        0,
        "the certified OpenSSL client is accepted:\n{stderr}"
    );

    let _ = s_client(false).await.expect("join");
    assert_eq!(
        failures().await,
        1,
        "the control: no certificate is refused"
    );
    node.shutdown().await.expect("shutdown");
}

/// Row 7, defence: no TLS session resumption (`NoServerSessionStorage`,
/// no TLS 1.3 tickets, in `runtime::tls::server_config`). A resumed
/// session would skip the certificate check, and with it the CRL: a peer
/// revoked since its first connection could come back on its old session.
/// A client that asks to resume (rustls's default in-memory session
/// store) gets a full handshake every time.
#[tokio::test]
async fn threat_07_tls_sessions_are_never_resumed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let mut config = (*dsnode::runtime::tls::client_config(&support::material(&client))
        .expect("config"))
    .clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(node.local_addr())
            .await
            .expect("tcp");
        let name = rustls_pki_types::ServerName::IpAddress(node.local_addr().ip().into());
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        // Read what the server sends first (its SETTINGS, and any session
        // ticket, which TLS 1.3 sends after the handshake).
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("preface");
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await;
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        vec![Some(rustls::HandshakeKind::Full); 3],
        "every handshake is a full one, certificate check included"
    );
    node.shutdown().await.expect("stop");
}
