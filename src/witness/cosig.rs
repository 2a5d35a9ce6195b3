//! C2SP `tlog-cosignature` v1 (Ed25519): a witness's statement that, as of
//! a time, the checkpoint is the largest consistent tree head it has seen
//! of that log. A cosignature is a note signature line
//! `— <name> base64(key id ‖ u64 timestamp ‖ signature)` over
//! `"cosignature/v1\ntime <timestamp>\n" ‖ checkpoint body`, with key id
//! `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]`.
//!
//! A node cosigns as `dsnode-witness/<its node id>` with its identity key.
//! The messages it signs cannot be confused with its other signatures:
//! checkpoints start with the origin line `dsnode/…`, DSSE with `DSSEv1`,
//! cosignatures with `cosignature/v1`.

use data_encoding::BASE64 as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::identity::NodeId;
use crate::ledger::note::{self, NoteError};

/// Key id algorithm byte of Ed25519 cosignatures.
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The signature line prefix (an em dash and a space).
const SIG_PREFIX: &str = "\u{2014} ";

/// The name under which the node with `node` id cosigns.
pub fn witness_name(node: &NodeId) -> String {
    format!("dsnode-witness/{node}")
}

fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_COSIGNATURE_V1]);
    ctx.update(public_key);
    let d = ctx.finish();
    [d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]]
}

fn message(timestamp: u64, body: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{body}").into_bytes()
}

/// A verified cosignature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's node id.
    pub witness: NodeId,
    /// When it cosigned (POSIX seconds).
    pub timestamp: u64,
}

/// The cosignature line `key` (the node `witness`) makes for a checkpoint
/// note at `timestamp`.
pub fn cosign(note_bytes: &[u8], key: &SigningKey, timestamp: u64) -> Result<String, NoteError> {
    let body = note::unverified_text(note_bytes)?;
    let public = key.verifying_key().to_bytes();
    let name = witness_name(&NodeId::from_public_key(&public));
    let sig = key.sign(&message(timestamp, body));
    let mut blob = Vec::with_capacity(76);
    blob.extend_from_slice(&key_id(&name, &public));
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&sig.to_bytes());
    Ok(format!("{SIG_PREFIX}{name} {}\n", B64.encode(&blob)))
}

/// Finds and checks the cosignature of the witness with `public_key` on a
/// note. Other signature lines are ignored.
pub fn verify(note_bytes: &[u8], public_key: &[u8; 32]) -> Result<Cosignature, NoteError> {
    let witness = NodeId::from_public_key(public_key);
    let timestamp = verify_named(note_bytes, &witness_name(&witness), public_key)?;
    Ok(Cosignature { witness, timestamp })
}

/// The key id of a `cosignature/v1` key named `name`.
pub fn cosignature_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id(name, public_key)
}

/// Finds and checks the `cosignature/v1` line of the witness key `name`
/// with `public_key` (any witness, not only a dsnode node) on a note; its
/// timestamp (POSIX seconds). Other signature lines are ignored.
pub fn verify_named(
    note_bytes: &[u8],
    name: &str,
    public_key: &[u8; 32],
) -> Result<u64, NoteError> {
    let name = name.to_owned();
    let id = key_id(&name, public_key);
    let unverified = || NoteError::Unverified(name.clone());
    let body = note::unverified_text(note_bytes)?;
    let text = std::str::from_utf8(note_bytes).map_err(|_| unverified())?;
    let vk = VerifyingKey::from_bytes(public_key).map_err(|_| unverified())?;
    let lines = text[body.len() + 1..].lines();
    for line in lines {
        let Some((line_name, b64)) = line
            .strip_prefix(SIG_PREFIX)
            .and_then(|rest| rest.split_once(' '))
        else {
            continue;
        };
        if line_name != name {
            continue;
        }
        let Ok(blob) = B64.decode(b64.as_bytes()) else {
            continue;
        };
        if blob.len() != 4 + 8 + 64 || blob[..4] != id {
            continue;
        }
        let timestamp = u64::from_be_bytes(blob[4..12].try_into().map_err(|_| unverified())?);
        if timestamp > i64::MAX as u64 {
            return Err(NoteError::Malformed(
                "cosignature timestamp beyond 2^63 - 1".into(),
            ));
        }
        let sig = Signature::from_slice(&blob[12..]).map_err(|_| unverified())?;
        vk.verify_strict(&message(timestamp, body), &sig)
            .map_err(|_| unverified())?;
        return Ok(timestamp);
    }
    Err(unverified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::note::{Checkpoint, NoteSigner};

    #[test]
    fn a_cosignature_verifies_and_binds_the_checkpoint_and_time() {
        let log = SigningKey::from_bytes(&[1; 32]);
        let witness = SigningKey::from_bytes(&[2; 32]);
        let note = NoteSigner::new("dsnode/log", log).expect("signer").sign(
            &Checkpoint {
                origin: "dsnode/log".into(),
                size: 9,
                root: [3; 32],
            }
            .text(),
        );
        let line = cosign(note.as_bytes(), &witness, 1_764_000_000).expect("cosign");
        let cosigned = format!("{note}{line}");
        let pk = witness.verifying_key().to_bytes();
        let c = verify(cosigned.as_bytes(), &pk).expect("verifies");
        assert_eq!(c.timestamp, 1_764_000_000);
        // The log's own signature still verifies beside it.
        let v = note::NoteVerifier::new(
            "dsnode/log",
            &SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes(),
        )
        .expect("verifier");
        assert!(note::SignedCheckpoint::verify(cosigned.as_bytes(), &v).is_ok());
        // Another checkpoint, another time, another key: refused.
        let other = cosigned.replace("\n9\n", "\n10\n");
        assert!(verify(other.as_bytes(), &pk).is_err());
        let b64 = line.rsplit(' ').next().expect("b64").trim_end();
        let mut blob = B64.decode(b64.as_bytes()).expect("b64");
        blob[11] ^= 1;
        let retimed = format!(
            "{note}{SIG_PREFIX}{} {}\n",
            witness_name(&c.witness),
            B64.encode(&blob)
        );
        assert!(verify(retimed.as_bytes(), &pk).is_err());
        let stranger = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
        assert!(verify(cosigned.as_bytes(), &stranger).is_err());
        assert!(
            verify(note.as_bytes(), &pk).is_err(),
            "no cosignature at all"
        );
    }
}
