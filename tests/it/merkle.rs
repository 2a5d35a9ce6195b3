//! The Merkle core against the public vectors (RFC 6962 proofs from
//! transparency-dev, C2SP signed note) and property tests.

use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use dsnode::digest::Hash;
use dsnode::ledger::merkle::{self, MemoryTree};
use dsnode::ledger::note::{Checkpoint, NoteSigner, NoteVerifier, SignedCheckpoint};
use proptest::prelude::*;

fn vectors(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(dir);
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("vector dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    v.as_str()
        .map(|s| BASE64.decode(s.as_bytes()).expect("base64"))
        .unwrap_or_default()
}

fn proof(v: &serde_json::Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(b64).collect())
        .unwrap_or_default()
}

#[test]
fn rfc6962_inclusion_vectors() {
    let files = vectors("rfc6962/inclusion");
    assert!(files.len() > 50, "vectors copied");
    for f in files {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("json");
        let result = merkle::verify_inclusion(
            &b64(&v["leafHash"]),
            v["leafIdx"].as_u64().expect("leafIdx"),
            v["treeSize"].as_u64().expect("treeSize"),
            &proof(&v["proof"]),
            &b64(&v["root"]),
        );
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        assert_eq!(result.is_err(), want_err, "{}: {result:?}", f.display());
    }
}

#[test]
fn rfc6962_consistency_vectors() {
    let files = vectors("rfc6962/consistency");
    assert!(files.len() > 50, "vectors copied");
    for f in files {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("json");
        let result = merkle::verify_consistency(
            v["size1"].as_u64().expect("size1"),
            v["size2"].as_u64().expect("size2"),
            &proof(&v["proof"]),
            &b64(&v["root1"]),
            &b64(&v["root2"]),
        );
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        assert_eq!(result.is_err(), want_err, "{}: {result:?}", f.display());
    }
}

#[test]
fn rfc6962_roots_vector() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/rfc6962/roots.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    let inputs: Vec<Vec<u8>> = v["leaf_inputs_hex"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|h| {
            data_encoding::HEXLOWER
                .decode(h.as_str().expect("hex").as_bytes())
                .expect("hex")
        })
        .collect();
    let leaves: Vec<Hash> = inputs.iter().map(|i| merkle::leaf_hash(i)).collect();
    for (n, want) in v["roots_hex"].as_array().expect("roots").iter().enumerate() {
        let want = data_encoding::HEXLOWER
            .decode(want.as_str().expect("hex").as_bytes())
            .expect("hex");
        assert_eq!(
            merkle::root_from_leaves(&leaves[..n]).to_vec(),
            want,
            "reference root of {n}"
        );
        let tree = MemoryTree::from_leaves(leaves[..n].iter().copied());
        assert_eq!(tree.root().to_vec(), want, "stored-tree root of {n}");
    }
}

#[test]
fn c2sp_signed_note_vector() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/signed-note");
    let note = std::fs::read(dir.join("example.note")).expect("note");
    let vkey = std::fs::read_to_string(dir.join("example.vkey")).expect("vkey");
    let verifier = NoteVerifier::from_vkey(&vkey).expect("vkey parses");
    let text = verifier.verify(&note).expect("example verifies");
    assert_eq!(text, "This is an example message.\n");
    for i in 0..note.len() {
        let mut changed = note.clone();
        changed[i] ^= 0x20;
        assert!(
            verifier.verify(&changed).is_err(),
            "byte {i} changed and still verified"
        );
    }
    // A changed name or key id in the vkey is refused.
    let bad_name = vkey.replacen("example.com/foo", "example.com/bar", 1);
    assert!(NoteVerifier::from_vkey(&bad_name).is_err());
    let bad_id = vkey.replacen("530d903a", "530d903b", 1);
    assert!(NoteVerifier::from_vkey(&bad_id).is_err());
}

#[test]
fn our_checkpoints_verify_with_our_published_vkey() {
    let signer = NoteSigner::new(
        "dsnode/test",
        ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
    )
    .expect("signer");
    let vkey = signer.verifier().vkey();
    let verifier = NoteVerifier::from_vkey(&vkey).expect("our vkey parses");
    let cp = Checkpoint {
        origin: "dsnode/test".into(),
        size: 5,
        root: [1; 32],
    };
    let signed = SignedCheckpoint::sign(cp.clone(), &signer);
    assert_eq!(
        SignedCheckpoint::verify(signed.note.as_bytes(), &verifier)
            .expect("verify")
            .checkpoint,
        cp
    );
    // A checkpoint of another origin signed by the same key is refused.
    let other = SignedCheckpoint::sign(
        Checkpoint {
            origin: "dsnode/other".into(),
            ..cp
        },
        &signer,
    );
    assert!(SignedCheckpoint::verify(other.note.as_bytes(), &verifier).is_err());
}

fn leaves(n: u64, seed: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| merkle::leaf_hash(&[seed.to_be_bytes(), i.to_be_bytes()].concat()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random larger trees: the stored-tree root equals the reference,
    /// proofs verify, and any flipped bit in a proof is rejected.
    #[test]
    fn random_trees_proofs_and_bit_flips(n in 301u64..5000, seed in any::<u64>(), pick in any::<u64>(), bit in any::<u16>()) {
        let all = leaves(n, seed);
        let tree = MemoryTree::from_leaves(all.iter().copied());
        let root = merkle::root_from_leaves(&all);
        prop_assert_eq!(tree.root(), root);
        prop_assert_eq!(merkle::root(&tree, n).expect("root"), root);

        let m = pick % n;
        let path = merkle::inclusion_proof(&tree, m, n).expect("proof");
        prop_assert!(merkle::verify_inclusion(&all[m as usize], m, n, &path, &root).is_ok());
        if !path.is_empty() {
            let mut bad = path;
            let i = usize::from(bit) % (bad.len() * 256);
            bad[i / 256][(i % 256) / 8] ^= 1 << (i % 8);
            prop_assert!(merkle::verify_inclusion(&all[m as usize], m, n, &bad, &root).is_err());
        }

        let old = 1 + pick % n;
        let old_root = merkle::root_from_leaves(&all[..old as usize]);
        let proof = merkle::consistency_proof(&tree, old, n).expect("consistency");
        prop_assert!(merkle::verify_consistency(old, n, &proof, &old_root, &root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof;
            let i = usize::from(bit) % (bad.len() * 256);
            bad[i / 256][(i % 256) / 8] ^= 1 << (i % 8);
            prop_assert!(merkle::verify_consistency(old, n, &bad, &old_root, &root).is_err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Consistency proofs between random sizes (issue 8, witnessing): the
    /// proof verifies, and every mutation of it fails: a flipped bit, a
    /// hash dropped or added, another root on either side. (The sizes are
    /// bound to the roots by the signed checkpoints, not by the proof: two
    /// size pairs can share one proof shape.)
    #[test]
    fn consistency_between_random_sizes_and_every_mutation(
        new in 1u64..700,
        old_pick in any::<u64>(),
        seed in any::<u64>(),
        bit in any::<u16>(),
    ) {
        let old = 1 + old_pick % new;
        let all = leaves(new, seed);
        let tree = MemoryTree::from_leaves(all.iter().copied());
        let new_root = merkle::root_from_leaves(&all);
        let old_root = merkle::root_from_leaves(&all[..old as usize]);
        let proof = merkle::consistency_proof(&tree, old, new).expect("proof");
        prop_assert!(merkle::verify_consistency(old, new, &proof, &old_root, &new_root).is_ok());
        if old == new {
            prop_assert!(proof.is_empty());
            prop_assert!(merkle::verify_consistency(old, new, &proof, &old_root, &[0; 32]).is_err());
            return Ok(());
        }
        let fails = |p: &[Hash], o: u64, n: u64, or: &Hash, nr: &Hash| {
            merkle::verify_consistency(o, n, p, or, nr).is_err()
        };
        let mut flipped = proof.clone();
        let i = usize::from(bit) % (flipped.len() * 256);
        flipped[i / 256][(i % 256) / 8] ^= 1 << (i % 8);
        prop_assert!(fails(&flipped, old, new, &old_root, &new_root), "flipped bit");
        prop_assert!(fails(&proof[..proof.len() - 1], old, new, &old_root, &new_root), "dropped hash");
        let mut longer = proof.clone();
        longer.push([7; 32]);
        prop_assert!(fails(&longer, old, new, &old_root, &new_root), "extra hash");
        let mut other = old_root;
        other[usize::from(bit) % 32] ^= 1;
        prop_assert!(fails(&proof, old, new, &other, &new_root), "another old root");
        let mut other = new_root;
        other[usize::from(bit) % 32] ^= 1;
        prop_assert!(fails(&proof, old, new, &old_root, &other), "another new root");
    }
}
