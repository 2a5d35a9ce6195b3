//! The fuzz corpus (`fuzz/corpus/TARGET/*`, seeds and whatever cargo-fuzz
//! found) replayed through the same `dsnode::fuzzing` entry points the
//! fuzz targets call: every `cargo test` (stable, no fuzzing) catches a
//! regression on any input the fuzzers ever kept, and every crash they
//! found (kept under `fuzz/regressions/TARGET/`).
//!
//! `cargo test --test it fuzz_corpus::write_seed_corpus -- --ignored`
//! writes the seeds: real objects of each kind, made at run time.

use std::path::{Path, PathBuf};

use dsnode::fuzzing;

/// A fuzzing entry point.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 11] = [
    ("envelope", fuzzing::envelope),
    ("manifest", fuzzing::manifest),
    ("grant", fuzzing::grant),
    ("receipt", fuzzing::receipt),
    ("ledger_entry", fuzzing::ledger_entry),
    ("checkpoint", fuzzing::checkpoint),
    ("proof", fuzzing::proof),
    ("policy_toml", fuzzing::policy_toml),
    ("odrl_json", fuzzing::odrl_json),
    ("chunks", fuzzing::chunks),
    ("key_history", fuzzing::key_history),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    out.sort();
    out
}

#[test]
fn corpus_replays_through_every_entry_point() {
    for (target, run) in TARGETS {
        let mut seen = 0;
        for sub in ["corpus", "regressions"] {
            for file in files(&fuzz_dir().join(sub).join(target)) {
                let data = std::fs::read(&file).expect("corpus file");
                let replay = std::panic::catch_unwind(|| run(&data));
                assert!(replay.is_ok(), "{} panics", file.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no corpus for fuzz target {target}");
    }
}

/// Writes real objects of every kind as seeds.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed");
    };
    let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    let (manifest, grant, pieces, _) = dsnode::exchange::transfer::fixture(&content, 4096);
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);

    write(
        "envelope",
        "manifest",
        manifest.envelope().to_json().as_bytes(),
    );
    write("envelope", "grant", grant.sign(&key).to_json().as_bytes());
    write("manifest", "fixture", &manifest.envelope().payload);
    write("grant", "fixture", &grant.encode());
    let receipt = dsnode::exchange::receipt::Receipt {
        grant: grant.id.clone(),
        dataset: grant.dataset.clone(),
        content_sha256: manifest.value().content_sha256,
        bytes: content.len() as u64,
        received_at_ms: 1_764_000_000_000,
        consumer_checkpoint: "dsnode/x\n1\nAAAA\n".into(),
        consumer: grant.grantee.clone(),
        transfer_index: 3,
        chunk_list_sha256: None,
        content_verified: false,
    };
    write("receipt", "fixture", &receipt.encode());
    write(
        "envelope",
        "receipt",
        receipt.sign(&key).to_json().as_bytes(),
    );

    let mut draft = grant.entry(dsnode::ledger::entry::EntryKind::ReceiptRecorded);
    draft.object_hash = Some([9; 32]);
    draft.detail = "12 bytes received; transfer entry 3".into();
    draft.transfer = Some(3);
    let mut entry = dsnode::ledger::entry::Entry::new(4, 1_764_000_000_000, draft);
    write("ledger_entry", "receipt", &entry.encode().expect("entry"));
    // As a node before typed references wrote it.
    entry.version = dsnode::ledger::entry::EntryVersion::V1;
    entry.draft.transfer = None;
    write(
        "ledger_entry",
        "receipt-v1",
        &entry.encode().expect("entry"),
    );

    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let note = std::fs::read(vectors.join("signed-note/example.note")).expect("note");
    write("checkpoint", "c2sp-example", &note);
    let signer = dsnode::ledger::note::NoteSigner::new(
        "dsnode/fuzz",
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    )
    .expect("signer");
    let cp = dsnode::ledger::note::Checkpoint {
        origin: "dsnode/fuzz".into(),
        size: 5,
        root: [1; 32],
    };
    let signed = dsnode::ledger::note::SignedCheckpoint::sign(cp, &signer);
    write("checkpoint", "own", signed.note.as_bytes());

    // A key history of two rotations ending at the fuzz key ([7; 32]),
    // then the handover checkpoint signed by both keys.
    let k = |b: u8| ed25519_dalek::SigningKey::from_bytes(&[b; 32]);
    let origin = dsnode::ledger::origin_for(&dsnode::identity::NodeId::from_public_key(
        &k(5).verifying_key().to_bytes(),
    ));
    let mut history = Vec::new();
    for (index, old, new) in [(2u64, 5u8, 6u8), (4, 6, 7)] {
        let statement = dsnode::ledger::keys::KeyRotation {
            origin: origin.clone(),
            index,
            old_key: k(old).verifying_key().to_bytes(),
            new_key: k(new).verifying_key().to_bytes(),
            participant: "fuzz".parse().expect("participant"),
        };
        let bytes = dsnode::ledger::entry::Entry::new(
            index,
            1_764_000_000_000,
            statement.entry(&k(old), &k(new)),
        )
        .encode()
        .expect("entry");
        history.extend_from_slice(&u16::try_from(bytes.len()).expect("short").to_be_bytes());
        history.extend_from_slice(&bytes);
    }
    let text = dsnode::ledger::note::Checkpoint {
        origin: origin.clone(),
        size: 5,
        root: [1; 32],
    }
    .text();
    let note = dsnode::ledger::note::NoteSigner::new(&origin, k(6))
        .expect("signer")
        .sign(&text);
    let note = dsnode::ledger::note::NoteSigner::new(&origin, k(7))
        .expect("signer")
        .cosign(&note)
        .expect("cosign");
    history.extend_from_slice(note.as_bytes());
    write("key_history", "two-rotations", &history);

    // Proofs from the RFC 6962 vectors: index ‖ size ‖ 32 ‖ leaf ‖ root ‖ path.
    let b64 = data_encoding::BASE64;
    for (i, name) in [
        "0/happy-path.json",
        "2/happy-path.json",
        "4/happy-path.json",
    ]
    .iter()
    .enumerate()
    {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(vectors.join("rfc6962/inclusion").join(name)).expect("vector"),
        )
        .expect("json");
        let bytes = |key: &str| {
            b64.decode(v[key].as_str().unwrap_or_default().as_bytes())
                .unwrap_or_default()
        };
        let mut seed = Vec::new();
        seed.extend_from_slice(&v["leafIdx"].as_u64().unwrap_or(0).to_be_bytes());
        seed.extend_from_slice(&v["treeSize"].as_u64().unwrap_or(0).to_be_bytes());
        seed.push(32);
        seed.extend_from_slice(&bytes("leafHash"));
        seed.extend_from_slice(&bytes("root"));
        for p in v["proof"].as_array().into_iter().flatten() {
            let hash = b64.decode(p.as_str().unwrap_or_default().as_bytes());
            seed.extend_from_slice(&hash.unwrap_or_default());
        }
        write("proof", &format!("inclusion-{i}"), &seed);
    }

    let policy = crate::support::flows::POLICY;
    write("policy_toml", "datasets", policy.as_bytes());
    let parsed = dsnode::policy::Policy::from_toml(policy).expect("policy");
    let odrl = dsnode::policy::odrl::export(&parsed);
    write("odrl_json", "export", odrl.to_string().as_bytes());

    let mut stream = Vec::new();
    for p in &pieces {
        stream.extend_from_slice(&(p.len() as u16).to_be_bytes());
        stream.extend_from_slice(p);
    }
    write("chunks", "whole", &stream);
}
