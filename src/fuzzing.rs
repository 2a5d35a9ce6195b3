//! Fuzzing entry points, one per decoder of bytes from the network or the
//! disk. Each takes arbitrary bytes and must return, never panic, whatever
//! they are; where a decoder has a property beyond that (a decoded entry
//! re-encodes to the same bytes, a finished transfer is the content its
//! manifest names), the entry point asserts it. The cargo-fuzz targets in
//! `fuzz/` are one-liners into these, and `tests/fuzz_corpus.rs` replays
//! the committed corpus through them on every `cargo test`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::dataset::Manifest;
use crate::dataset::pack::PackStore;
use crate::digest::Hash;
use crate::envelope::{Envelope, Verified};
use crate::exchange::grant::Grant;
use crate::exchange::transfer::Incoming;
use crate::policy::Policy;

/// A test key's public half: real objects never verify under it, so the
/// paths up to and including signature checking are what get exercised
/// (the seeds include notes signed by it, to reach past the signature).
fn key() -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .verifying_key()
        .to_bytes()
}

/// DSSE envelope (JSON), then every verifier that takes one.
pub fn envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(env) = Envelope::from_json(text) {
        let _ = crate::dataset::verify_manifest(env.clone(), &key());
        let _ = crate::exchange::grant::verify_grant(env.clone(), &key());
        let _ = crate::exchange::receipt::verify_receipt(env, &key());
    }
}

/// A manifest payload (`ManifestV1` protobuf, [`crate::payload::manifest`]).
pub fn manifest(data: &[u8]) {
    use crate::payload::manifest::{decode, encode};
    if let Ok(m) = decode(data) {
        // Whatever decodes re-encodes and decodes to the same value.
        let again = decode(&encode(&m)).expect("a decoded manifest re-decodes");
        assert_eq!(again, m);
    }
}

/// A grant payload (`GrantV1` protobuf, [`crate::payload::grant`]).
pub fn grant(data: &[u8]) {
    let _ = crate::payload::grant::decode(data);
}

/// A receipt payload (`ReceiptV1` protobuf, [`crate::payload::receipt`]).
pub fn receipt(data: &[u8]) {
    let _ = crate::payload::receipt::decode(data);
}

/// A ledger entry (the binary format, versions 1 and 2): one encoding per
/// value, the version included.
pub fn ledger_entry(data: &[u8]) {
    if let Ok(e) = crate::ledger::entry::Entry::decode(data) {
        let bytes = e.encode().expect("a decoded entry re-encodes");
        assert_eq!(bytes, data, "an entry has one encoding");
    }
}

/// A signed note / checkpoint.
pub fn checkpoint(data: &[u8]) {
    static VERIFIER: OnceLock<crate::ledger::note::NoteVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        crate::ledger::note::NoteVerifier::new("dsnode/fuzz", &key()).expect("verifier")
    });
    let _ = crate::ledger::note::SignedCheckpoint::verify(data, verifier);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::ledger::note::Checkpoint::parse(text);
    }
}

/// A key history as a peer serves it: KeyRotated entries (each
/// `u16 length ‖ entry`), rebuilt into a history that must end at the
/// test key, then the rest of the input verified as a checkpoint under it.
pub fn key_history(data: &[u8]) {
    use crate::ledger::entry::Entry;
    use crate::ledger::keys::{KeyRotation, LogKeys};
    let mut entries = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(bytes) = tail.get(..n) else {
            break;
        };
        if let Ok(e) = Entry::decode(bytes) {
            let _ = KeyRotation::from_entry(&e);
            entries.push(e);
        }
        rest = &tail[n..];
    }
    if let Ok(keys) = LogKeys::from_rotations(&entries, &key()) {
        let _ = keys.verify_checkpoint(rest);
        for k in keys.keys() {
            let _ = keys.honours(&k.public_key, "fuzzed object", 1);
        }
    }
}

/// Inclusion and consistency proofs: `index ‖ size ‖ leaf ‖ root ‖ proof`
/// with every length taken from the input (hashes of any length).
pub fn proof(data: &[u8]) {
    let u64_at = |at: usize| {
        data.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    let (a, b) = (u64_at(0), u64_at(8));
    let rest = data.get(16..).unwrap_or_default();
    let step = usize::from(rest.first().copied().unwrap_or(32)).max(1);
    let parts: Vec<&[u8]> = rest.get(1..).unwrap_or_default().chunks(step).collect();
    let (Some(first), Some(second)) = (parts.first(), parts.get(1)) else {
        return;
    };
    let path = parts.get(2..).unwrap_or_default();
    let _ = crate::ledger::merkle::verify_inclusion(first, a, b, path, second);
    let _ = crate::ledger::merkle::verify_consistency(a, b, path, first, second);
}

/// A policy in TOML.
pub fn policy_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = Policy::from_toml(text)
    {
        let _ = p.explain();
        let _ = p.hash();
    }
}

/// A policy in ODRL JSON.
pub fn odrl_json(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::policy::odrl::import(&doc);
    }
}

/// Chunk reassembly: `data` is a sequence of pieces (`u16` length ‖
/// bytes) fed to a transfer of a fixed signed manifest. A transfer that
/// finishes must have written exactly the manifest's content.
pub fn chunks(data: &[u8]) {
    struct Fixture {
        manifest: Verified<Manifest>,
        grant: Grant,
        hashes: Vec<Hash>,
        content: Vec<u8>,
        packs: Arc<PackStore>,
        out: PathBuf,
    }
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let f = FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dsnode-fuzz-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let (manifest, grant, _, hashes) = crate::exchange::transfer::fixture(&content, 4096);
        let packs = Arc::new(PackStore::open(&dir.join("packs")).expect("packs"));
        Fixture {
            manifest,
            grant,
            hashes,
            content,
            packs,
            out: dir.join("out"),
        }
    });
    let Ok(incoming) = Incoming::start(
        &f.out.clone().into(),
        true,
        &f.manifest,
        f.hashes.clone(),
        &f.grant,
        f.packs.clone(),
        true,
    ) else {
        return;
    };
    let mut rest = data;
    let mut index = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let piece = rest.get(2..2 + len).unwrap_or(&rest[2..]);
        rest = rest.get(2 + len..).unwrap_or_default();
        if incoming.chunk(index, piece).is_err() {
            return;
        }
        index += 1;
    }
    if incoming.finish(true).is_ok() {
        let written = std::fs::read(&f.out).expect("finished output");
        assert_eq!(
            written, f.content,
            "a finished transfer is the manifest's content"
        );
    }
}
