//! Keeps docs/wire.md true: every worked example in it is recomputed here
//! with the library from fixed inputs (no randomness, no clock), and each
//! must appear in the document verbatim. A change to an encoding fails
//! this test until the document is updated.

use dsnode::dataset::{DatasetId, Manifest, chunk_list_hash};
use dsnode::digest::sha256;
use dsnode::envelope::{Envelope, PayloadType, pae};
use dsnode::exchange::grant::GrantId;
use dsnode::identity::NodeId;
use dsnode::ledger::entry::{Entry, EntryDraft, EntryKind};
use dsnode::ledger::merkle::leaf_hash;
use dsnode::ledger::note::{Checkpoint, NoteSigner, NoteVerifier, SignedCheckpoint};
use dsnode::ledger::origin_for;
use dsnode::policy::{Classification, Policy};
use dsnode::witness::cosig;
use ed25519_dalek::SigningKey;

const HEX: data_encoding::Encoding = data_encoding::HEXLOWER;

/// The example policy of docs/wire.md (TOML as a publisher writes it).
const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["derive", "read"]
purpose = ["research"]
regions = ["CN-HE"]
max_fetches = 3

[[obligation]]
action = "delete"
after = "30d"
"#;

/// Every worked example of docs/wire.md, by name, as it must appear there.
fn examples() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();

    // Node id of the key with secret seed 32 × 0x01.
    let key = SigningKey::from_bytes(&[1; 32]);
    let public = key.verifying_key().to_bytes();
    let node = NodeId::from_public_key(&public);
    assert_eq!(node.as_str().len(), 30);
    assert_eq!(node.as_str().parse::<NodeId>().expect("node id"), node);
    out.push(("public key", HEX.encode(&public)));
    out.push(("sha256(public key)", HEX.encode(&sha256(&public))));
    out.push(("node id", node.to_string()));

    // Grant id of the 16 bytes 0x00..0x0f (real ones are random).
    let bytes: Vec<u8> = (0u8..16).collect();
    let grant = format!(
        "gr_{}",
        data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase()
    );
    assert_eq!(grant.parse::<GrantId>().expect("grant id").as_str(), grant);
    out.push(("grant id", grant));

    // The policy's canonical form and hash.
    let policy = Policy::from_toml(POLICY).expect("policy");
    let canonical = String::from_utf8(policy.canonical_json()).expect("utf-8");
    assert_eq!(policy.hash(), sha256(canonical.as_bytes()));
    out.push(("policy canonical json", canonical));
    out.push(("policy sha256", HEX.encode(&policy.hash())));

    // Chunk list hash of one chunk, "hello".
    let chunk = sha256(b"hello");
    let chunks = chunk_list_hash(&[chunk]);
    assert_eq!(chunks, sha256(&chunk));
    out.push(("chunk list sha256", HEX.encode(&chunks)));

    // A manifest, its payload, dataset id, PAE and signed envelope.
    let manifest = Manifest {
        title: "Road sensors".into(),
        description: String::new(),
        media_type: "text/csv".into(),
        size: 5,
        chunk_size: 4096,
        chunk_count: 1,
        content_sha256: chunk,
        chunk_list_sha256: chunks,
        classification: Classification::General,
        policy,
        derived_from: vec![],
        supersedes: None,
        version: 1,
        lineage: None,
        created_at_ms: 1_790_000_000_000,
        publisher: node.clone(),
    };
    let payload = manifest.encode();
    let dataset = DatasetId::of_payload(&payload);
    assert_eq!(
        dataset.as_str(),
        format!(
            "ds_{}",
            data_encoding::BASE32_NOPAD
                .encode(&sha256(&payload))
                .to_ascii_lowercase()
        )
    );
    out.push(("manifest payload", HEX.encode(&payload)));
    out.push(("manifest payload sha256", HEX.encode(&sha256(&payload))));
    out.push(("dataset id", dataset.to_string()));
    let header = format!(
        "DSSEv1 {} {} {} ",
        PayloadType::Manifest.as_str().len(),
        PayloadType::Manifest.as_str(),
        payload.len()
    );
    let mut want = header.clone().into_bytes();
    want.extend_from_slice(&payload);
    assert_eq!(pae(PayloadType::Manifest.as_str(), &payload), want);
    out.push(("pae header", header));
    let envelope = manifest.sign(&key);
    assert_eq!(envelope.payload_hash(), sha256(&payload));
    let json = envelope.to_json();
    assert_eq!(Envelope::from_json(&json).expect("json"), envelope);
    dsnode::dataset::verify_manifest(envelope.clone(), &public).expect("verifies");
    out.push(("manifest envelope json", json));

    // The DatasetPublished entry of that manifest, as the log's entry 0.
    let mut draft = EntryDraft::new(EntryKind::DatasetPublished);
    draft.parties = vec![node.clone()];
    draft.dataset = Some(dataset.to_string());
    draft.object_hash = Some(envelope.payload_hash());
    draft.detail = "v1 Road sensors".into();
    let entry = Entry::new(0, 1_790_000_000_000, draft);
    let encoded = entry.encode().expect("entry");
    assert_eq!(Entry::decode(&encoded).expect("decodes"), entry);
    let leaf = leaf_hash(&encoded);
    let mut prefixed = vec![0x00];
    prefixed.extend_from_slice(&encoded);
    assert_eq!(leaf, sha256(&prefixed));
    out.push(("entry", HEX.encode(&encoded)));
    out.push(("leaf hash", HEX.encode(&leaf)));

    // The checkpoint of that one-entry log, its vkey and a cosignature.
    let origin = origin_for(&node);
    let signer = NoteSigner::new(&origin, key).expect("signer");
    let vkey = signer.verifier().vkey();
    let key_id = {
        let mut m = origin.clone().into_bytes();
        m.extend_from_slice(&[0x0a, 0x01]);
        m.extend_from_slice(&public);
        HEX.encode(&sha256(&m)[..4])
    };
    assert!(vkey.starts_with(&format!("{origin}+{key_id}+")), "{vkey}");
    out.push(("note key id", key_id));
    out.push(("vkey", vkey.clone()));
    let checkpoint = SignedCheckpoint::sign(
        Checkpoint {
            origin,
            size: 1,
            root: leaf,
        },
        &signer,
    );
    let verifier = NoteVerifier::from_vkey(&vkey).expect("vkey");
    SignedCheckpoint::verify(checkpoint.note.as_bytes(), &verifier).expect("verifies");
    out.push(("checkpoint", checkpoint.note.clone()));
    let witness = SigningKey::from_bytes(&[2; 32]);
    let witness_public = witness.verifying_key().to_bytes();
    let witness_node = NodeId::from_public_key(&witness_public);
    let line = cosig::cosign(checkpoint.note.as_bytes(), &witness, 1_790_000_060).expect("cosign");
    let cosigned = format!("{}{line}", checkpoint.note);
    let c = cosig::verify(cosigned.as_bytes(), &witness_public).expect("cosignature");
    assert_eq!(
        (c.witness.clone(), c.timestamp),
        (witness_node.clone(), 1_790_000_060)
    );
    let blob = data_encoding::BASE64
        .decode(line.trim_end().rsplit(' ').next().expect("blob").as_bytes())
        .expect("base64");
    assert_eq!(blob.len(), 4 + 8 + 64);
    assert_eq!(blob[4..12], 1_790_000_060u64.to_be_bytes());
    out.push(("cosignature timestamp bytes", HEX.encode(&blob[4..12])));
    let cosig_key_id = {
        let mut m = cosig::witness_name(&witness_node).into_bytes();
        m.extend_from_slice(&[0x0a, 0x04]);
        m.extend_from_slice(&witness_public);
        HEX.encode(&sha256(&m)[..4])
    };
    out.push(("witness node id", witness_node.to_string()));
    assert_eq!(HEX.encode(&blob[..4]), cosig_key_id);
    out.push(("cosignature key id", cosig_key_id));
    out.push(("cosigned checkpoint", cosigned));
    out
}

#[test]
fn every_worked_example_in_wire_md_is_what_the_code_computes() {
    let examples = examples();
    for (name, value) in &examples {
        eprintln!("== {name}\n{value}");
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/wire.md");
    let doc = std::fs::read_to_string(path).expect("docs/wire.md");
    let missing: Vec<&str> = examples
        .iter()
        .filter(|(_, value)| !doc.contains(value.as_str()))
        .map(|(name, _)| *name)
        .collect();
    assert!(
        missing.is_empty(),
        "docs/wire.md does not show these examples as the code computes them: {missing:?}"
    );
}
