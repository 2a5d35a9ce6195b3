//! Reconciliation, evidence bundles and the point-in-time question
//! (issue 8), over real nodes.

use dsnode::audit::Auditor;
use dsnode::audit::evidence::{self, Bundle, BundleError};
use dsnode::identity::ca::CertificateAuthority;
use dsnode::node::RunningNode;

use crate::support::flows::{POLICY, Transfer, grant_and_fetch, published};
use crate::support::{self, DataSpace, NodeDir, TwoNodes};

struct Exchange {
    space: DataSpace,
    publisher: NodeDir,
    consumer: NodeDir,
    auditor: NodeDir,
    pub_node: RunningNode,
    con_node: RunningNode,
    dataset: String,
    grants: Vec<String>,
}

/// A publisher, a consumer and an auditor; one dataset fetched under
/// `grants` separate grants (each fetch ends with a checkpoint exchange).
async fn exchange(grants: usize) -> Exchange {
    let TwoNodes {
        space,
        publisher,
        consumer,
        publisher_node: pub_node,
        consumer_node: con_node,
    } = support::two_nodes().await;
    let auditor = space.node("regulator", "auditor");
    let content = b"stop,passengers\n1,12\n2,40\n".to_vec();
    let dataset = published(&publisher, &pub_node, "Bus stops", POLICY, &content).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ids = Vec::new();
    for i in 0..grants {
        let out = dir.path().join(format!("out{i}.csv"));
        let Transfer { grant, .. } =
            grant_and_fetch(&consumer, &con_node, &dataset, pub_node.local_addr(), &out)
                .await
                .expect("fetch");
        ids.push(grant);
    }
    Exchange {
        space,
        publisher,
        consumer,
        auditor,
        pub_node,
        con_node,
        dataset,
        grants: ids,
    }
}

/// The auditor's view of each side of an [`Exchange`].
struct Auditors {
    /// Of the publisher's node.
    publisher: Auditor,
    /// Of the consumer's node.
    consumer: Auditor,
}

async fn auditors(x: &Exchange) -> Auditors {
    Auditors {
        publisher: Auditor::new(Box::new(support::connect(&x.auditor, &x.pub_node).await)),
        consumer: Auditor::new(Box::new(support::connect(&x.auditor, &x.con_node).await)),
    }
}

fn ca_pem(x: &Exchange) -> Vec<u8> {
    x.space.ca.ca().cert_pem().as_bytes().to_vec()
}

/// A bundle verifies offline with the CA certificate alone and tells who,
/// what, when, which purpose and which bytes; any changed byte, a
/// truncation, another CA, a swapped proof and a receipt of another grant
/// each fail, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_verifies_offline_and_every_kind_of_tampering_fails() {
    let x = exchange(2).await;
    let Auditors {
        publisher: mut p,
        consumer: mut c,
    } = auditors(&x).await;
    // Either order of the two nodes.
    let bundle = evidence::build(&mut c, &mut p, &x.grants[0])
        .await
        .expect("bundle");
    let other = evidence::build(&mut p, &mut c, &x.grants[1])
        .await
        .expect("second bundle");
    let bytes = bundle.to_bytes();
    let ca = ca_pem(&x);
    let account = evidence::verify(&bytes, &ca).expect("verifies");
    for needle in [
        "VERIFIED offline",
        "city-transport",
        "acme",
        &x.dataset,
        "Bus stops",
        "purpose \"research\"",
        "26 bytes",
        "cosigned by the consumer",
        "cosigned by the publisher",
    ] {
        assert!(
            account.contains(needle),
            "missing `{needle}` in:\n{account}"
        );
    }

    let fails = |b: &[u8], why: &str| {
        let err = evidence::verify(b, &ca).expect_err(why);
        err.to_string()
    };
    // Truncated.
    let msg = fails(&bytes[..bytes.len() / 2], "truncated");
    assert!(msg.contains("not a dsnode evidence bundle"), "{msg}");
    // Every byte matters: change each one in turn (a stride keeps it
    // quick; the stride is odd so every part of the file is hit).
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(
            evidence::verify(&b, &ca).is_err(),
            "flipping byte {i} went unnoticed: …{}…",
            String::from_utf8_lossy(&bytes[i.saturating_sub(60)..(i + 20).min(bytes.len())])
        );
    }
    // Another CA.
    let stranger = CertificateAuthority::generate("Another CA").expect("ca");
    let err = evidence::verify(&bytes, stranger.cert_pem().as_bytes()).expect_err("other CA");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A swapped proof.
    let mut swapped: Bundle = bundle.clone();
    let e = &mut swapped.publisher.entries;
    assert!(e.len() >= 2);
    let p0 = e[0].proof.clone();
    e[0].proof = e[1].proof.clone();
    e[1].proof = p0;
    let msg = fails(&swapped.to_bytes(), "swapped proof");
    assert!(msg.contains("NOT proven"), "{msg}");
    // A receipt of another grant.
    let mut mixed = bundle.clone();
    mixed.receipts = other.receipts.clone();
    let msg = fails(&mixed.to_bytes(), "receipt of another grant");
    assert!(
        msg.contains(&format!(
            "is for grant {}, not {}",
            x.grants[1], x.grants[0]
        )),
        "{msg}"
    );
    // Additions that leave every signature intact: a stray signature line
    // on a checkpoint, a second DSSE signature, bytes after a certificate.
    let mut extra_line = bundle.clone();
    extra_line
        .consumer
        .checkpoint
        .push_str("\u{2014} someone/else AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
    let msg = fails(&extra_line.to_bytes(), "extra signature line");
    assert!(msg.contains("signature lines"), "{msg}");
    let mut extra_sig = bundle.clone();
    let mut env = dsnode::envelope::Envelope::from_json(&extra_sig.grant).expect("grant");
    let mut second = env.signatures[0].clone();
    second.sig = vec![0; 64];
    env.signatures.push(second);
    extra_sig.grant = env.to_json();
    let msg = fails(&extra_sig.to_bytes(), "second DSSE signature");
    assert!(msg.contains("exactly one signature"), "{msg}");
    let mut trailing = bundle.clone();
    let mut der = data_encoding::BASE64
        .decode(trailing.publisher.certificate.as_bytes())
        .expect("der");
    der.extend_from_slice(b"junk");
    trailing.publisher.certificate = data_encoding::BASE64.encode(&der);
    let msg = fails(&trailing.to_bytes(), "bytes after the certificate");
    assert!(msg.contains("exactly one DER certificate"), "{msg}");
    // A bundle that is not canonical (re-indented) is refused too.
    let reindented = serde_json::to_vec(&bundle).expect("json");
    assert!(matches!(
        evidence::verify(&reindented, &ca),
        Err(BundleError::Format(_))
    ));

    // The CLI writes it, and verifies it with nothing but the CA file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("evidence.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["audit", "bundle", "--data-dir"])
        .arg(x.auditor.dir.root())
        .args(["--peer", &x.pub_node.local_addr().to_string()])
        .args(["--peer", &x.con_node.local_addr().to_string()])
        .args(["--grant", &x.grants[0], "--out"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["audit", "verify-bundle"])
        .arg(&file)
        .arg("--ca")
        .arg(x.space.dir.path().join("ca/ca.crt"))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("VERIFIED offline"), "{text}");
    for n in [x.pub_node, x.con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// The publisher keeps the receipt it took: an auditor asking the
/// publisher alone gets the consumer-signed proof of delivery, and a
/// bundle is made from the publisher's copy when the consumer no longer
/// has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_keeps_the_receipt_and_serves_it_as_evidence() {
    let x = exchange(1).await;
    let Auditors {
        publisher: mut p,
        consumer: mut c,
    } = auditors(&x).await;
    let grant = &x.grants[0];
    let at_publisher = p.evidence(grant).await.expect("publisher's evidence");
    let at_consumer = c.evidence(grant).await.expect("consumer's evidence");
    assert_eq!(at_publisher.receipts.len(), 1);
    assert_eq!(at_publisher.receipts, at_consumer.receipts);
    // The consumer loses its copy: the bundle takes the publisher's.
    let received = x.consumer.dir.grants().join("received");
    for e in std::fs::read_dir(&received)
        .expect("received dir")
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(".receipt.json") {
            std::fs::remove_file(e.path()).expect("remove");
        }
    }
    let at_consumer = c.evidence(grant).await.expect("consumer's evidence");
    assert!(at_consumer.receipts.is_empty());
    let bundle = evidence::build(&mut c, &mut p, grant)
        .await
        .expect("bundle");
    assert_eq!(bundle.receipts, at_publisher.receipts);
    let account = evidence::verify(&bundle.to_bytes(), &ca_pem(&x)).expect("verifies");
    assert!(
        account.contains("receipt 1: signed by the consumer"),
        "{account}"
    );
    for n in [x.pub_node, x.con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// What a `dsnode` command printed and how it exited.
struct Ran {
    /// Its stdout.
    text: String,
    /// Its exit status.
    code: Option<i32>,
}

/// `dsnode audit reconcile` as the auditor `x.auditor`: its stdout and
/// exit status.
fn reconcile_cli(auditor: &NodeDir, a: &RunningNode, b: &RunningNode) -> Ran {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["audit", "reconcile", "--data-dir"])
        .arg(auditor.dir.root())
        .args(["--peer", &a.local_addr().to_string()])
        .args(["--peer", &b.local_addr().to_string()])
        .output()
        .expect("run");
    Ran {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        code: out.status.code(),
    }
}

/// Reconciliation passes on a clean exchange, and fails naming the entry
/// when one side's entry is gone (the consumer's ledger rewritten without
/// its ReceiptRecorded); the same from the command line, with its exit
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_passes_and_then_names_the_missing_entry() {
    let x = exchange(1).await;
    let Auditors {
        publisher: mut p,
        consumer: mut c,
    } = auditors(&x).await;
    let clean = dsnode::audit::reconcile::reconcile(&mut p, &mut c, None)
        .await
        .expect("reconcile");
    assert!(clean.discrepancies.is_empty(), "{:?}", clean.discrepancies);
    assert_eq!((clean.grants, clean.receipts), (1, 1));
    assert!(clean.witnessed.0 > 0 && clean.witnessed.1 > 0, "{clean:?}");
    let Ran { text, code } = reconcile_cli(&x.auditor, &x.pub_node, &x.con_node);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no discrepancies"), "{text}");

    // Who could read the dataset: the grant now; nobody before it existed.
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let found = dsnode::audit::reconcile::who_could(&mut p, &x.dataset, now)
        .await
        .expect("who could");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].grant.id.to_string(), x.grants[0]);
    assert_eq!(found[0].grant.grantee, x.consumer.identity.node_id);
    assert_eq!(found[0].grant.publisher, x.publisher.identity.node_id);
    let before = dsnode::audit::reconcile::who_could(&mut p, &x.dataset, now - 3_600_000)
        .await
        .expect("who could");
    assert!(before.is_empty());
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["audit", "who-could", "--data-dir"])
        .arg(x.auditor.dir.root())
        .args(["--peer", &x.pub_node.local_addr().to_string()])
        .args(["--dataset", &x.dataset, "--at", &at])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&x.grants[0]) && text.contains("proven in checkpoint"),
        "{text}"
    );

    // The consumer's ledger loses its ReceiptRecorded entry.
    let Exchange {
        consumer,
        con_node,
        pub_node,
        auditor,
        grants,
        ..
    } = x;
    con_node.shutdown().await.expect("stop");
    let size = support::tamper::ledger_size(&consumer.dir).await;
    support::tamper::rewrite_history(
        &consumer.dir,
        |e| e.draft.kind != dsnode::ledger::entry::EntryKind::ReceiptRecorded,
        size - 1,
    )
    .await;
    let con_node = support::start(&consumer, |_| {}).await;
    let mut p = Auditor::new(Box::new(support::connect(&auditor, &pub_node).await));
    let mut c = Auditor::new(Box::new(support::connect(&auditor, &con_node).await));
    let r = dsnode::audit::reconcile::reconcile(&mut p, &mut c, None)
        .await
        .expect("reconcile");
    let all = r.discrepancies.join("\n");
    let Ran { text, code } = reconcile_cli(&auditor, &pub_node, &con_node);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DISCREPANCY: grant"), "{text}");
    assert!(
        all.contains(&format!("grant {}: A (", grants[0]))
            && all.contains("(ReceiptRecorded) has no matching ReceiptRecorded entry on B"),
        "{all}"
    );
    for n in [pub_node, con_node] {
        n.shutdown().await.expect("stop");
    }
}

/// Every entry of a bundle also carries its proof as a C2SP tlog-proof,
/// which a verifier knowing only that spec (tests/interop, on aics-tlog's
/// primitives) checks offline, cosignature included; a proof moved to
/// another index, or a changed entry, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_entry_proof_is_also_a_c2sp_tlog_proof_an_independent_verifier_checks() {
    let x = exchange(1).await;
    let Auditors {
        publisher: mut p,
        consumer: mut c,
    } = auditors(&x).await;
    let bundle = evidence::build(&mut p, &mut c, &x.grants[0])
        .await
        .expect("bundle");
    assert_eq!(bundle.version, evidence::VERSION);
    let side = &bundle.publisher;
    assert_eq!(side.tlog_proofs.len(), side.entries.len());
    let vkey = std::fs::read_to_string(x.publisher.dir.vkey()).expect("vkey");
    // The consumer cosigned the publisher's checkpoint: its key as a C2SP
    // cosignature/v1 vkey.
    let name = dsnode::witness::cosig::witness_name(&x.consumer.identity.node_id);
    let pk = x.consumer.identity.public_key;
    let mut typed = vec![0x04];
    typed.extend_from_slice(&pk);
    let witness_vkey = format!(
        "{name}+{}+{}",
        data_encoding::HEXLOWER.encode(&dsnode::witness::cosig::cosignature_key_id(&name, &pk)),
        data_encoding::BASE64.encode(&typed)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let python = crate::interop::python();
    let check = |proof: &str, entry: &str| {
        let file = dir.path().join("proof");
        std::fs::write(&file, proof).expect("write");
        let out = std::process::Command::new(&python)
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/interop/tlog_proof_check.py"),
            )
            .arg(&file)
            .arg(entry)
            .arg(vkey.trim())
            .arg(&witness_vkey)
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // A verdict, not a crash: one JSON object, nothing on stderr.
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(v["ok"].as_bool(), Some(out.status.success()), "{text}");
        (out.status.success(), text)
    };
    for (proof, entry) in side.tlog_proofs.iter().zip(&side.entries) {
        let (ok, text) = check(proof, &entry.entry);
        assert!(ok, "{text}");
        println!("tlog-proof of entry {}: {text}", entry.index);
    }
    let (proof, entry) = (&side.tlog_proofs[0], &side.entries[0]);
    let moved = proof.replacen(
        &format!("index {}\n", entry.index),
        &format!("index {}\n", entry.index + 1),
        1,
    );
    assert!(!check(&moved, &entry.entry).0, "another index fails");
    assert!(
        !check(proof, &side.entries[1].entry).0,
        "another entry fails"
    );
    // The bundle's own check refuses tlog-proofs that are not its proofs.
    let mut changed = bundle.clone();
    changed.publisher.tlog_proofs[0] = moved;
    let err = evidence::verify(&changed.to_bytes(), &ca_pem(&x)).expect_err("refused");
    assert!(err.to_string().contains("tlog-proof"), "{err}");
    // A version 1 bundle (no tlog-proofs) still verifies.
    let mut v1 = bundle.clone();
    v1.version = evidence::VERSION_1;
    v1.publisher.tlog_proofs.clear();
    v1.consumer.tlog_proofs.clear();
    evidence::verify(&v1.to_bytes(), &ca_pem(&x)).expect("version 1 verifies");
}
