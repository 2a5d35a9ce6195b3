//! The `dsnode` binary on bad input: one clear sentence on stderr and exit
//! status 1, never a panic or a backtrace.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::{DataSpace, Served};

fn dsnode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(args)
        .env_remove("DSNODE_DATA_DIR")
        .output()
        .expect("run dsnode")
}

/// `dsnode ca issue` of `csr` into `out` with `roles` and `extra` flags;
/// asserts success.
fn ca_issue(ca_dir: &Path, csr: &Path, roles: &str, extra: &[&str], out: &Path) {
    let mut args = vec![
        "ca",
        "issue",
        "--ca-dir",
        p(ca_dir),
        "--csr",
        p(csr),
        "--roles",
        roles,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", p(out)]);
    let done = dsnode(&args);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Asserts a clean failure whose message contains every `needle`.
fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "missing `{needle}` in: {stderr}");
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn key_file_readable_by_others_is_refused_with_the_fix() {
    let space = DataSpace::new();
    let node = space.node("node", "publisher");
    let key = node.dir.key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    fails_with(&out, &["mode 0644", "chmod 600"]);
    let out = dsnode(&[
        "peer",
        "hello",
        "--data-dir",
        p(node.dir.root()),
        "--peer",
        "127.0.0.1:1",
    ]);
    fails_with(&out, &["mode 0644", "chmod 600"]);
    // The CA key is held to the same rule.
    let ca_key = space.dir.path().join("ca/ca.key");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&space.dir.path().join("ca")),
        "--csr",
        p(&node.dir.csr()),
        "--roles",
        "consumer",
        "--out",
        p(&space.dir.path().join("x.crt")),
    ]);
    fails_with(&out, &["mode 0640"]);
}

#[test]
fn malformed_node_toml_names_the_key_and_line() {
    let space = DataSpace::new();
    let node = space.node("node", "publisher");
    std::fs::write(
        node.dir.config(),
        "listen = \"127.0.0.1:0\"\n\n[transport]\nmax_conections = 5\n",
    )
    .expect("write");
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    fails_with(&out, &["node.toml", "line 4", "max_conections"]);

    std::fs::write(
        node.dir.config(),
        "listen = \"127.0.0.1:0\"\nparticipant = \"x\"\n",
    )
    .expect("write");
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    fails_with(&out, &["participant", "line 2"]);

    std::fs::write(node.dir.config(), "listen = \"127.0.0.1:0\"\n").expect("write");
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn operator_mistakes_get_one_clear_sentence() {
    let space = DataSpace::new();
    let ca_dir = space.dir.path().join("ca");
    let node = space.node("node", "publisher");
    let out_crt = space.dir.path().join("out.crt");

    // Unknown role.
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&ca_dir),
        "--csr",
        p(&node.dir.csr()),
        "--roles",
        "publisher,admin",
        "--out",
        p(&out_crt),
    ]);
    fails_with(
        &out,
        &["unknown role `admin`", "publisher, consumer, auditor"],
    );
    assert!(!out_crt.exists(), "nothing written on failure");

    // A CSR whose signature does not verify.
    let csr = std::fs::read_to_string(node.dir.csr()).expect("csr");
    let der = pem::parse(&csr).expect("pem");
    let mut bytes = der.contents().to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"node")
        .expect("participant in CSR");
    bytes[at] = b'm';
    let bad_csr = space.dir.path().join("bad.csr");
    std::fs::write(
        &bad_csr,
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes)),
    )
    .expect("write");
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&ca_dir),
        "--csr",
        p(&bad_csr),
        "--roles",
        "consumer",
        "--out",
        p(&out_crt),
    ]);
    fails_with(&out, &["signature does not verify"]);
    assert!(!out_crt.exists(), "nothing written on failure");

    // Missing file.
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&ca_dir),
        "--csr",
        p(&space.dir.path().join("nope.csr")),
        "--roles",
        "consumer",
        "--out",
        p(&out_crt),
    ]);
    fails_with(&out, &["nope.csr", "No such file"]);

    // A certificate from another CA: revoke refuses it, and a node refuses
    // to start with it.
    let other = space.dir.path().join("other-ca");
    assert!(
        dsnode(&["ca", "init", "--ca-dir", p(&other), "--name", "Other"])
            .status
            .success()
    );
    let foreign = space.dir.path().join("foreign.crt");
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&other),
        "--csr",
        p(&node.dir.csr()),
        "--roles",
        "consumer",
        "--out",
        p(&foreign),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dsnode(&[
        "ca",
        "revoke",
        "--ca-dir",
        p(&ca_dir),
        "--cert",
        p(&foreign),
    ]);
    fails_with(&out, &["was not issued by this CA"]);
    std::fs::copy(&foreign, node.dir.cert()).expect("install foreign cert");
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    fails_with(&out, &["node.crt", "was not issued by this CA"]);
}

#[test]
fn expired_or_revoked_own_certificate_stops_the_node_at_start() {
    let space = DataSpace::new();
    let stale = space.node_with("stale", crate::support::expired("consumer"));
    let out = dsnode(&["serve", "--data-dir", p(stale.dir.root()), "--check-config"]);
    fails_with(&out, &["node.crt expired at"]);

    let node = space.node("node", "consumer");
    space.revoke(&node);
    space.publish_crl(&node.dir);
    let out = dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    fails_with(&out, &["is revoked"]);
}

#[test]
fn init_and_issue_print_one_json_object() {
    let space = DataSpace::new();
    let dir = space.dir.path().join("n1");
    let ca_crt = space.dir.path().join("ca/ca.crt");
    let out = dsnode(&[
        "init",
        "--data-dir",
        p(&dir),
        "--participant",
        "acme",
        "--ca-cert",
        p(&ca_crt),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let node_id = v["node_id"].as_str().expect("node_id");
    assert!(node_id.starts_with("dsn1"));
    let mode = std::fs::metadata(dir.join("node.key"))
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&space.dir.path().join("ca")),
        "--csr",
        p(&dir.join("node.csr")),
        "--roles",
        "consumer,auditor",
        "--region",
        "CN-HE",
        "--out",
        p(&dir.join("node.crt")),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["identity"]["node_id"], node_id);
    assert_eq!(
        v["identity"]["roles"],
        serde_json::json!(["consumer", "auditor"])
    );

    // A second init of the same dir is refused and keeps the key.
    let out = dsnode(&[
        "init",
        "--data-dir",
        p(&dir),
        "--participant",
        "acme",
        "--ca-cert",
        p(&ca_crt),
    ]);
    fails_with(&out, &["already holds a node key"]);
}

/// `dsnode serve` end to end: JSON logs, SIGHUP reloads the CRL (the file
/// poll is set to an hour, so only the signal can have done it), and
/// SIGTERM drains and exits 0.
#[test]
fn serve_reloads_crl_on_sighup_and_exits_cleanly_on_sigterm() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    std::fs::write(
        server.dir.config(),
        "listen = \"127.0.0.1:0\"\n[transport]\ncrl_reload_interval = \"1h\"\ndrain_deadline = \"2s\"\n",
    )
    .expect("config");
    let mut served = Served::start_serving(server.dir.root());
    let addr = served.addr.to_string();

    let hello = |expect_ok: bool| {
        let out = dsnode(&[
            "peer",
            "hello",
            "--data-dir",
            p(client.dir.root()),
            "--peer",
            &addr,
            "--json",
        ]);
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = hello(true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server"]["node_id"], server.identity.node_id.to_string());
    assert_eq!(v["caller"]["node_id"], client.identity.node_id.to_string());

    space.revoke(&client);
    space.publish_crl(&server.dir);
    served.signal("HUP");
    let reloaded = served.wait_for("CRL reloaded");
    assert_eq!(reloaded["fields"]["revoked"], 1);
    let refused = hello(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CertificateRevoked"), "{stderr}");

    served.signal("TERM");
    served.wait_for("shutting down: NOT_SERVING, draining");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn policy_commands_check_explain_and_round_trip_through_odrl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, crate::support::flows::POLICY).expect("write");
    let out = dsnode(&["policy", "check", p(&policy)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid policy") && text.contains("prohibited, always: redistribute"),
        "{text}"
    );

    let odrl = dir.path().join("p.json");
    assert!(
        dsnode(&["policy", "export", p(&policy), "--odrl", p(&odrl)])
            .status
            .success()
    );
    let back = dir.path().join("back.toml");
    let out = dsnode(&["policy", "import", "--odrl", p(&odrl), "--out", p(&back)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = dsnode::policy::Policy::from_toml(crate::support::flows::POLICY).expect("a");
    let b = dsnode::policy::Policy::from_toml(&std::fs::read_to_string(&back).expect("read"))
        .expect("b");
    assert_eq!(a, b, "export then import is the same policy");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\nindustry = \"x\"\n",
    )
    .expect("write");
    fails_with(
        &dsnode(&["policy", "check", p(&bad)]),
        &["industry", "line 4"],
    );
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&odrl).expect("read")).expect("json");
    doc["permission"][0]["constraint"][0]["leftOperand"] = serde_json::json!("industry");
    std::fs::write(&odrl, doc.to_string()).expect("write");
    fails_with(
        &dsnode(&["policy", "import", "--odrl", p(&odrl)]),
        &["`industry`"],
    );
}

#[test]
fn publishing_a_file_that_cannot_be_read_is_one_sentence() {
    let space = DataSpace::new();
    let node = space.node("node", "publisher");
    let policy = space.dir.path().join("p.toml");
    std::fs::write(&policy, crate::support::flows::POLICY).expect("write");
    let missing = space.dir.path().join("missing.csv");
    let out = dsnode(&[
        "publish",
        "--data-dir",
        p(node.dir.root()),
        p(&missing),
        "--policy",
        p(&policy),
        "--title",
        "x",
    ]);
    fails_with(&out, &["cannot read", "missing.csv"]);
}

/// `dsnode key new` then `dsnode key rotate` from the command line, with
/// the operator's `dsnode ca issue` between: a certificate for another
/// participant or another key is refused with the reason, and the
/// rotation is recorded once (a second `key rotate` has nothing to do).
#[test]
fn key_new_and_rotate_from_the_command_line() {
    let space = DataSpace::new();
    let node = space.node("city-transport", "publisher");
    let other = space.node("city-water", "publisher");
    let dir = node.dir.root();
    let ca_dir = space.dir.path().join("ca");

    // A ledger to rotate: start and stop the node once.
    Served::start_serving(dir).terminate_cleanly();

    let out = dsnode(&["key", "new", "--data-dir", p(dir), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let next_id = v["next_node_id"].as_str().expect("next id").to_owned();
    fails_with(
        &dsnode(&["key", "new", "--data-dir", p(dir)]),
        &["a rotation is already prepared"],
    );

    // Another node's certificate: not for the prepared key.
    fails_with(
        &dsnode(&[
            "key",
            "rotate",
            "--data-dir",
            p(dir),
            "--cert",
            p(&other.dir.cert()),
        ]),
        &["not for the prepared key"],
    );
    // The prepared key certified for another participant.
    let wrong = space.dir.path().join("wrong.crt");
    ca_issue(
        &ca_dir,
        &dir.join("node.next.csr"),
        "publisher",
        &["--participant", "city-water"],
        &wrong,
    );
    fails_with(
        &dsnode(&["key", "rotate", "--data-dir", p(dir), "--cert", p(&wrong)]),
        &["a key rotation keeps the participant"],
    );

    let new_crt = space.dir.path().join("new.crt");
    ca_issue(
        &ca_dir,
        &dir.join("node.next.csr"),
        "publisher",
        &[],
        &new_crt,
    );
    let out = dsnode(&[
        "key",
        "rotate",
        "--data-dir",
        p(dir),
        "--cert",
        p(&new_crt),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["node_id"], next_id);
    assert_eq!(v["old_node_id"], node.identity.node_id.to_string());
    assert!(v["ledger_index"].as_u64().is_some(), "{v}");
    assert!(
        std::fs::read_to_string(dir.join("node.vkey"))
            .expect("vkey")
            .starts_with(&format!("dsnode/{}+", node.identity.node_id)),
        "the log keeps its origin"
    );
    // Nothing left to rotate to.
    fails_with(
        &dsnode(&["key", "rotate", "--data-dir", p(dir), "--cert", p(&new_crt)]),
        &["no prepared key", "dsnode key new"],
    );

    // The node starts with the new key and `audit verify` shows the history.
    Served::start_serving(dir).terminate_cleanly();
    let out = dsnode(&["audit", "verify", "--data-dir", p(dir)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("key {next_id} (since entry")),
        "{text}"
    );
    assert!(text.contains("retired at entry"), "{text}");
}

/// SIGTERM the moment a node says "serving" (as a service manager may
/// send it) drains and exits 0: the signal handlers are in place before
/// the node starts, so the signal's default action never kills it. (The
/// window was small: a loaded CI machine hit it once, this machine not in
/// ten rounds.)
#[test]
fn sigterm_right_after_serving_drains_and_exits_zero() {
    let space = DataSpace::new();
    let node = space.node("city-transport", "publisher");
    for _ in 0..10 {
        Served::start_serving(node.dir.root()).terminate_cleanly();
    }
}

/// `peer witness` and `receipts resend` call this node's own Admin API
/// (which then calls the peer): a failed call names this node's address,
/// as `status`, `request` and `fetch` do, not the peer's. (The peer is
/// named where the node's answer names it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_the_own_node_name_its_address_when_they_fail() {
    let space = DataSpace::new();
    let consumer = crate::support::consumer_in(&space, "acme", "CN-HE");
    let node = crate::support::start(&consumer, |_| {}).await;
    let own = node.local_addr().to_string();
    // What `dsnode` reads to find the node it acts as.
    std::fs::write(consumer.dir.config(), format!("listen = \"{own}\"\n")).expect("config");
    let peer = "127.0.0.1:9";
    let grant = dsnode::exchange::grant::GrantId::random()
        .expect("id")
        .to_string();
    let data_dir = consumer.dir.root().to_owned();
    let runs = tokio::task::spawn_blocking(move || {
        [
            dsnode(&[
                "peer",
                "witness",
                "--data-dir",
                p(&data_dir),
                "--peer",
                peer,
            ]),
            dsnode(&[
                "receipts",
                "resend",
                "--data-dir",
                p(&data_dir),
                "--peer",
                peer,
                &grant,
            ]),
        ]
    })
    .await
    .expect("join");
    for out in &runs {
        fails_with(out, &[&format!("error: call to {own} failed: ")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains(&format!("call to {peer} failed")),
            "{stderr}"
        );
    }
    // The node's answer to the witness call names the peer it could not
    // reach.
    let stderr = String::from_utf8_lossy(&runs[0].stderr);
    assert!(stderr.contains(peer), "{stderr}");
    node.shutdown().await.expect("stop");
}

/// `openssl`, if it is on this machine: its output, or `None` with the
/// reason printed (the test is then skipped).
fn openssl(args: &[&str]) -> Option<Output> {
    match Command::new("openssl").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            println!("skipped: `openssl` cannot be run here ({e})");
            None
        }
    }
}

/// The certificates and keys are what every TLS stack reads: OpenSSL
/// sees an `id-ecPublicKey` (P-256) node certificate signed with
/// ECDSA-SHA256, the bound Ed25519 key as a SAN URI, a CA and CRL of
/// the same kind, and reads the TLS key (PKCS#8).
#[test]
fn openssl_reads_a_p256_node_certificate_that_binds_the_ed25519_key() {
    let space = DataSpace::new();
    let node = space.node("acme", "consumer");
    let Some(out) = openssl(&["x509", "-in", p(&node.dir.cert()), "-noout", "-text"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Public Key Algorithm: id-ecPublicKey",
        "NIST CURVE: P-256",
        "Signature Algorithm: ecdsa-with-SHA256",
        "URI:urn:dsnode:participant:acme",
        "URI:urn:dsnode:ed25519:",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    let ca = space.dir.path().join("ca/ca.crt");
    let ca_text = openssl(&["x509", "-in", p(&ca), "-noout", "-text"]).expect("openssl");
    assert!(String::from_utf8_lossy(&ca_text.stdout).contains("id-ecPublicKey"));
    let crl = openssl(&["crl", "-in", p(&node.dir.crl()), "-noout", "-text"]).expect("openssl");
    assert!(String::from_utf8_lossy(&crl.stdout).contains("ecdsa-with-SHA256"));
    let verify = openssl(&["verify", "-CAfile", p(&ca), p(&node.dir.cert())]).expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let out =
        openssl(&["pkey", "-in", p(&node.dir.tls_key()), "-noout", "-text"]).expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NIST CURVE: P-256"));
}

/// A data dir or CA made by an earlier build (Ed25519 certificates, no
/// `tls.key`) is refused at start with what to re-issue.
#[test]
fn a_data_dir_of_an_earlier_build_is_refused_with_what_to_reissue() {
    let space = DataSpace::new();
    let node = space.node("acme", "consumer");
    let check = || dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);

    // No tls.key.
    let tls_key = std::fs::read(node.dir.tls_key()).expect("tls key");
    std::fs::remove_file(node.dir.tls_key()).expect("rm");
    fails_with(
        &check(),
        &["tls.key is missing", "earlier dsnode", "`dsnode ca issue`"],
    );
    std::fs::write(node.dir.tls_key(), &tls_key).expect("restore");
    std::fs::set_permissions(node.dir.tls_key(), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");

    // An Ed25519 node certificate (this data space's CA, the node's own
    // Ed25519 key as the certificate key, no binding), as earlier builds
    // issued them.
    let good_cert = std::fs::read(node.dir.cert()).expect("cert");
    let ca_dir = space.dir.path().join("ca");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca key"))
            .expect("ca key");
    let ca_cert = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca cert");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).expect("issuer");
    let node_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(node.dir.key()).expect("node key"))
            .expect("ed25519 node key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "urn:dsnode:participant:acme".try_into().expect("uri"),
    ));
    let old = params.signed_by(&node_key, &issuer).expect("old cert");
    std::fs::write(node.dir.cert(), old.pem()).expect("write");
    fails_with(
        &check(),
        &[
            "not ECDSA P-256",
            "Ed25519",
            "re-issue with `dsnode ca issue`",
        ],
    );
    std::fs::write(node.dir.cert(), &good_cert).expect("restore");

    // An Ed25519 CA certificate.
    let ed_ca = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let old_ca = params.self_signed(&ed_ca).expect("old ca");
    std::fs::write(node.dir.ca_cert(), old_ca.pem()).expect("write");
    fails_with(
        &check(),
        &[
            "Ed25519 CA certificate made by an earlier dsnode",
            "`dsnode ca issue`",
        ],
    );
    std::fs::write(node.dir.ca_cert(), ca_cert).expect("restore");
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `dsnode ca issue` from an Ed25519 CA dir.
    std::fs::remove_file(ca_dir.join("ca.key")).expect("rm");
    dsnode::identity::NodeKey::generate()
        .save_new(&ca_dir.join("ca.key"))
        .expect("ed25519 ca key");
    let out = dsnode(&[
        "ca",
        "issue",
        "--ca-dir",
        p(&ca_dir),
        "--csr",
        p(&node.dir.csr()),
        "--roles",
        "consumer",
        "--out",
        p(&space.dir.path().join("x.crt")),
    ]);
    fails_with(&out, &["earlier dsnode", "`dsnode ca init`"]);
}

/// `node.crt` must certify `tls.key` and bind `node.key`: another node's
/// key in either place is refused at start, naming the files.
#[test]
fn keys_that_do_not_match_the_certificate_are_named() {
    let space = DataSpace::new();
    let node = space.node("acme", "consumer");
    let other = space.node("other", "consumer");
    let check = || dsnode(&["serve", "--data-dir", p(node.dir.root()), "--check-config"]);
    for (file, needles) in [
        (
            node.dir.tls_key(),
            ["certifies another TLS key than", "tls.key"],
        ),
        (
            node.dir.key(),
            ["binds the signing key of node", "node.key"],
        ),
    ] {
        let own = std::fs::read(&file).expect("own key");
        let name = file.file_name().expect("name").to_owned();
        std::fs::write(
            &file,
            std::fs::read(other.dir.root().join(&name)).expect("other key"),
        )
        .expect("swap");
        fails_with(&check(), &needles);
        std::fs::write(&file, own).expect("restore");
    }
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
