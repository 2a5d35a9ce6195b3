//! A log's signing keys over time (the key history, THREATS.md row 16).
//!
//! A log keeps one origin for life: `dsnode/<node id of the key that
//! started it>`. When its node rotates to a new key, it appends a
//! `KeyRotated` entry at index `r` whose detail is a [`KeyRotation`]
//! statement, a DSSE envelope signed by the retired key *and* the new one,
//! and signs the checkpoint of size `r + 1` with both keys. From then on:
//!
//! - the retired key's signature is honoured on checkpoints of size at most
//!   `r + 1` only, and on objects (manifests, grants) the log recorded
//!   before index `r`; anything newer it signs is refused, so a stolen
//!   retired key cannot speak for the log;
//! - the new key signs checkpoints of size `r + 1` and up.
//!
//! A client rebuilds the history from the `KeyRotated` entries (the node
//! serves them beside its checkpoint): each must be signed by the key it
//! retires, which must be the key the previous rotation introduced, and the
//! chain must end at the key of the node's TLS certificate.

use std::fmt;

use crate::codec::{Canonical, PayloadError};
use crate::envelope::{Envelope, PayloadType};
use crate::identity::{NodeId, ParticipantId, PeerIdentity};

use super::entry::{Entry, EntryDraft, EntryKind};
use super::note::{self, Checkpoint, NoteError, NoteVerifier, SignedCheckpoint};

/// Most rotations one log may record (each costs a verification when a
/// client rebuilds the history).
pub const MAX_ROTATIONS: usize = 64;

/// Why a key history or a signature under it was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A rotation statement or entry is not what the chain needs.
    #[error("key rotation at entry {index}: {detail}")]
    Rotation {
        /// The KeyRotated entry's index.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// The history does not end at the key the caller knows as current.
    #[error("the log's key history ends at key {history} but the node's key is {current}{hint}")]
    NotCurrent {
        /// Node id of the history's last key.
        history: NodeId,
        /// Node id of the key the caller holds (or was shown by TLS).
        current: NodeId,
        /// Why, when known (a retired key).
        hint: String,
    },
    /// A signature by a key the log retired, on something newer than the
    /// retirement.
    #[error("{what} is signed by key {key}, which this log retired at entry {retired_at}: {why}")]
    Retired {
        /// What was signed.
        what: String,
        /// The retired key's node id.
        key: NodeId,
        /// Index of the KeyRotated entry that retired it.
        retired_at: u64,
        /// What the retired key may still vouch for.
        why: String,
    },
    /// No key of the history signed it.
    #[error("{0} is not signed by any key of the log")]
    Unknown(String),
    /// The checkpoint itself is malformed or its signature does not check.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A log's key handing over to a new one; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    /// The log's origin.
    pub origin: String,
    /// Index of the KeyRotated entry holding the statement.
    pub index: u64,
    /// The key retired.
    pub old_key: [u8; 32],
    /// The key taking over.
    pub new_key: [u8; 32],
    /// The participant the CA certifies both keys for.
    pub participant: ParticipantId,
}

impl KeyRotation {
    /// The signed payload bytes ([`crate::payload::key_rotation`]).
    fn encode(&self) -> Vec<u8> {
        Canonical::encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        <Self as Canonical>::decode(bytes)
    }

    /// The statement as a DSSE envelope signed by both keys; `old` and
    /// `new` must be the statement's keys.
    pub fn sign(
        &self,
        old: &ed25519_dalek::SigningKey,
        new: &ed25519_dalek::SigningKey,
    ) -> Envelope {
        let mut env = Envelope::sign(
            PayloadType::KeyRotation,
            self.encode(),
            old,
            NodeId::from_public_key(&self.old_key).as_str(),
        );
        env.cosign(new, NodeId::from_public_key(&self.new_key).as_str());
        env
    }

    /// The KeyRotated entry holding this statement signed by both keys.
    pub fn entry(
        &self,
        old: &ed25519_dalek::SigningKey,
        new: &ed25519_dalek::SigningKey,
    ) -> EntryDraft {
        let mut draft = EntryDraft::new(EntryKind::KeyRotated);
        draft.parties = vec![
            NodeId::from_public_key(&self.old_key),
            NodeId::from_public_key(&self.new_key),
        ];
        draft.object_hash = Some(crate::digest::sha256(&self.new_key));
        draft.detail = self.sign(old, new).to_json();
        draft
    }

    /// Reads and verifies the statement in a KeyRotated entry: signed by
    /// both keys it names, naming the entry's own index.
    pub fn from_entry(entry: &Entry) -> Result<Self, KeyError> {
        let bad = |detail: String| KeyError::Rotation {
            index: entry.index,
            detail,
        };
        if entry.draft.kind != EntryKind::KeyRotated {
            return Err(bad(format!("a {} entry, not KeyRotated", entry.draft.kind)));
        }
        let env = Envelope::from_json(&entry.draft.detail).map_err(|e| bad(e.to_string()))?;
        let unverified = KeyRotation::decode(&env.payload)
            .map_err(|e| bad(format!("the statement does not decode: {e}")))?;
        let by_old = env
            .clone()
            .verify(
                PayloadType::KeyRotation,
                &unverified.old_key,
                KeyRotation::decode,
            )
            .map_err(|e| bad(format!("not signed by the retired key: {e}")))?;
        env.verify(PayloadType::KeyRotation, &unverified.new_key, |_| {
            Ok::<_, String>(())
        })
        .map_err(|e| bad(format!("not signed by the new key: {e}")))?;
        let statement = by_old.value().clone();
        // Every byte of the entry is accounted for: the envelope in its
        // canonical form, key ids naming the two keys, the object hash the
        // new key's.
        let ids = [
            NodeId::from_public_key(&statement.old_key).to_string(),
            NodeId::from_public_key(&statement.new_key).to_string(),
        ];
        let env_again = Envelope::from_json(&entry.draft.detail).map_err(|e| bad(e.to_string()))?;
        if env_again.to_json() != entry.draft.detail
            || env_again.signatures.len() != 2
            || env_again.signatures[0].keyid != ids[0]
            || env_again.signatures[1].keyid != ids[1]
        {
            return Err(bad(
                "the statement is not the canonical envelope signed by the two keys, in order"
                    .into(),
            ));
        }
        if entry.draft.object_hash != Some(crate::digest::sha256(&statement.new_key))
            || entry.draft.dataset.is_some()
            || entry.draft.grant.is_some()
        {
            return Err(bad(
                "the entry's object hash is not the new key's hash".into()
            ));
        }
        if entry.draft.transfer.is_some() || entry.draft.peer_entry.is_some() {
            return Err(bad(
                "a KeyRotated entry names no transfer or peer entry".into()
            ));
        }
        if statement.index != entry.index {
            return Err(bad(format!(
                "the statement names entry {}",
                statement.index
            )));
        }
        let parties = [
            NodeId::from_public_key(&statement.old_key),
            NodeId::from_public_key(&statement.new_key),
        ];
        if entry.draft.parties != parties {
            return Err(bad(
                "the entry's parties are not the two keys' node ids".into()
            ));
        }
        if statement.old_key == statement.new_key {
            return Err(bad("the new key is the retired key".into()));
        }
        Ok(statement)
    }
}

/// Decodes KeyRotated entries as a node serves them (canonical bytes).
pub fn decode_rotations(raw: &[Vec<u8>]) -> Result<Vec<Entry>, KeyError> {
    raw.iter()
        .map(|bytes| {
            Entry::decode(bytes).map_err(|e| KeyError::Rotation {
                index: 0,
                detail: format!("not a ledger entry: {e}"),
            })
        })
        .collect()
}

/// One key of a log's history.
#[derive(Clone, Debug)]
pub struct LogKey {
    /// The raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its node id.
    pub node_id: NodeId,
    /// The KeyRotated entry that introduced it (`None`: it started the log).
    pub introduced_at: Option<u64>,
    /// The KeyRotated entry that retired it (`None`: the current key).
    pub retired_at: Option<u64>,
    verifier: NoteVerifier,
}

impl LogKey {
    /// Whether it may sign the checkpoint of `size`: from the size after
    /// its introduction up to the size before its retirement entry. The
    /// handover checkpoint (`r + 1`) carries both keys' signatures, but
    /// only the new key's counts: a stolen retired key cannot sign any
    /// checkpoint that includes its own retirement.
    fn signs_size(&self, size: u64) -> bool {
        self.introduced_at.is_none_or(|r| size > r) && self.retired_at.is_none_or(|r| size <= r)
    }
}

/// A log's origin and its keys, oldest first; see the module docs.
#[derive(Clone, Debug)]
pub struct LogKeys {
    origin: String,
    keys: Vec<LogKey>,
    /// The participant each rotation (by entry index) names.
    participants: Vec<(u64, ParticipantId)>,
}

impl LogKeys {
    /// The history of a log started by `genesis` with no rotation yet.
    pub fn new(genesis: &[u8; 32]) -> Result<Self, KeyError> {
        let node_id = NodeId::from_public_key(genesis);
        let origin = super::origin_for(&node_id);
        Ok(Self {
            keys: vec![LogKey {
                public_key: *genesis,
                node_id,
                introduced_at: None,
                retired_at: None,
                verifier: NoteVerifier::new(&origin, genesis)?,
            }],
            origin,
            participants: Vec::new(),
        })
    }

    /// Rebuilds a history from a log's KeyRotated entries (index order)
    /// and checks that it ends at `current`: the key the node holds, or
    /// the key a client saw in the node's TLS certificate.
    pub fn from_rotations(rotations: &[Entry], current: &[u8; 32]) -> Result<Self, KeyError> {
        if rotations.len() > MAX_ROTATIONS {
            return Err(KeyError::Rotation {
                index: rotations[MAX_ROTATIONS].index,
                detail: format!("more than {MAX_ROTATIONS} rotations"),
            });
        }
        let genesis = match rotations.first() {
            Some(first) => KeyRotation::from_entry(first)?.old_key,
            None => *current,
        };
        let mut keys = Self::new(&genesis)?;
        for entry in rotations {
            keys.push(entry)?;
        }
        let last = keys.current();
        if last.public_key != *current {
            let retired = keys.find(current).and_then(|k| k.retired_at);
            return Err(KeyError::NotCurrent {
                history: last.node_id.clone(),
                current: NodeId::from_public_key(current),
                hint: retired
                    .map(|r| format!(" (a key this log retired at entry {r})"))
                    .unwrap_or_default(),
            });
        }
        Ok(keys)
    }

    /// The history of `node`'s log: a chain ending at the key of its
    /// certificate, every rotation made for its participant.
    pub fn of_node(rotations: &[Entry], node: &PeerIdentity) -> Result<Self, KeyError> {
        let keys = Self::from_rotations(rotations, &node.public_key)?;
        keys.check_participant(&node.participant)?;
        Ok(keys)
    }

    /// Extends the history with a KeyRotated entry: its statement must be
    /// for this log, come after the last rotation, and retire the current
    /// key for one the log never used.
    pub fn push(&mut self, entry: &Entry) -> Result<(), KeyError> {
        let statement = KeyRotation::from_entry(entry)?;
        let bad = |detail: String| KeyError::Rotation {
            index: entry.index,
            detail,
        };
        if statement.origin != self.origin {
            return Err(bad(format!(
                "the statement is for log `{}`, not `{}`",
                statement.origin, self.origin
            )));
        }
        if self.keys.len() > MAX_ROTATIONS {
            return Err(bad(format!("more than {MAX_ROTATIONS} rotations")));
        }
        let current = self.current();
        if current.introduced_at.is_some_and(|r| entry.index <= r) {
            return Err(bad("rotations are out of order".into()));
        }
        if statement.old_key != current.public_key {
            return Err(bad(format!(
                "it retires key {}, but the log's key is {}",
                NodeId::from_public_key(&statement.old_key),
                current.node_id
            )));
        }
        if self.find(&statement.new_key).is_some() {
            return Err(bad("the new key is one the log used before".into()));
        }
        let verifier = NoteVerifier::new(&self.origin, &statement.new_key)?;
        self.participants
            .push((entry.index, statement.participant.clone()));
        if let Some(last) = self.keys.last_mut() {
            last.retired_at = Some(entry.index);
        }
        self.keys.push(LogKey {
            public_key: statement.new_key,
            node_id: NodeId::from_public_key(&statement.new_key),
            introduced_at: Some(entry.index),
            retired_at: None,
            verifier,
        });
        Ok(())
    }

    /// Checks that every rotation was made for `participant` (the one the
    /// CA certifies the current key for): a key of another participant
    /// cannot claim a log's history.
    fn check_participant(&self, participant: &ParticipantId) -> Result<(), KeyError> {
        match self.participants.iter().find(|(_, p)| p != participant) {
            Some((index, p)) => Err(KeyError::Rotation {
                index: *index,
                detail: format!(
                    "the rotation is for participant {p}, but the node's certificate is {participant}'s"
                ),
            }),
            None => Ok(()),
        }
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The key that signs new checkpoints.
    pub fn current(&self) -> &LogKey {
        // Never empty: `new` starts with the genesis key.
        &self.keys[self.keys.len() - 1]
    }

    /// The verifier for new checkpoints (current key, log origin).
    pub fn verifier(&self) -> &NoteVerifier {
        &self.current().verifier
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[LogKey] {
        &self.keys
    }

    /// The key with this public key, if the log ever used it.
    pub fn find(&self, public_key: &[u8; 32]) -> Option<&LogKey> {
        self.keys.iter().find(|k| k.public_key == *public_key)
    }

    /// Verifies an object the log's node signed with whichever of its keys
    /// signed it (`verify` is tried with the current key first, then older
    /// ones); returns the result and the key. On failure, the current
    /// key's error. Whether a retired key is still honoured for the object
    /// is [`LogKeys::honours`].
    pub fn verify_any<T, E>(
        &self,
        mut verify: impl FnMut(&[u8; 32]) -> Result<T, E>,
    ) -> Result<(T, &LogKey), E> {
        let current = self.current();
        let current_err = match verify(&current.public_key) {
            Ok(v) => return Ok((v, current)),
            Err(e) => e,
        };
        for key in self.keys.iter().rev().skip(1) {
            if let Ok(v) = verify(&key.public_key) {
                return Ok((v, key));
            }
        }
        Err(current_err)
    }

    /// The index of each KeyRotated entry, in order.
    pub fn rotation_indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().filter_map(|k| k.introduced_at)
    }

    /// Verifies a checkpoint note: signed by a key that may sign its size.
    /// A signature by a key retired before that size is refused, naming
    /// the rotation.
    pub fn verify_checkpoint(&self, note_bytes: &[u8]) -> Result<SignedCheckpoint, KeyError> {
        let size = Checkpoint::parse(note::unverified_text(note_bytes)?)?.size;
        let mut first_error = None;
        for key in self.keys.iter().filter(|k| k.signs_size(size)) {
            match SignedCheckpoint::verify(note_bytes, &key.verifier) {
                Ok(signed) => return Ok(signed),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for key in self.keys.iter().filter(|k| !k.signs_size(size)) {
            if SignedCheckpoint::verify(note_bytes, &key.verifier).is_ok() {
                let (what, why) = (
                    format!("the checkpoint of size {size}"),
                    "it may sign checkpoints up to the handover only".to_owned(),
                );
                return Err(match key.retired_at {
                    Some(retired_at) => KeyError::Retired {
                        what,
                        key: key.node_id.clone(),
                        retired_at,
                        why,
                    },
                    None => KeyError::Unknown(format!(
                        "{what} (signed by key {}, which took over later)",
                        key.node_id
                    )),
                });
            }
        }
        Err(first_error
            .map(KeyError::from)
            .unwrap_or_else(|| KeyError::Unknown(format!("the checkpoint of size {size}"))))
    }

    /// How many keys of the history have a valid signature line on the
    /// note (an evidence bundle accounts for every line).
    pub fn signature_count(&self, note_bytes: &[u8]) -> usize {
        self.keys
            .iter()
            .filter(|k| k.verifier.verify(note_bytes).is_ok())
            .count()
    }

    /// Whether the signature of `signer` on `what` is honoured, the log
    /// having recorded the object at entry `recorded_at`: the current key
    /// always; a retired key only for objects recorded before its
    /// retirement.
    pub fn honours(&self, signer: &[u8; 32], what: &str, recorded_at: u64) -> Result<(), KeyError> {
        let key = self
            .find(signer)
            .ok_or_else(|| KeyError::Unknown(what.to_owned()))?;
        match key.retired_at {
            Some(retired_at) if recorded_at >= retired_at => Err(KeyError::Retired {
                what: what.to_owned(),
                key: key.node_id.clone(),
                retired_at,
                why: format!("the log recorded it at entry {recorded_at}, after the retirement"),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for LogKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log {}", self.origin)?;
        for k in &self.keys {
            write!(f, "\n  key {}", k.node_id)?;
            match (k.introduced_at, k.retired_at) {
                (None, None) => write!(f, " (since the start)")?,
                (Some(i), None) => write!(f, " (since entry {i}, current)")?,
                (None, Some(r)) => write!(f, " (from the start, retired at entry {r})")?,
                (Some(i), Some(r)) => write!(f, " (from entry {i}, retired at entry {r})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::note::NoteSigner;

    fn key(b: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
    }

    fn pk(b: u8) -> [u8; 32] {
        key(b).verifying_key().to_bytes()
    }

    fn rotation(origin: &str, index: u64, old: u8, new: u8) -> Entry {
        let statement = KeyRotation {
            origin: origin.to_owned(),
            index,
            old_key: pk(old),
            new_key: pk(new),
            participant: "city-transport".parse().expect("participant"),
        };
        Entry::new(index, 1, statement.entry(&key(old), &key(new)))
    }

    fn origin() -> String {
        crate::ledger::origin_for(&NodeId::from_public_key(&pk(1)))
    }

    fn checkpoint(size: u64, signers: &[u8]) -> Vec<u8> {
        let text = Checkpoint {
            origin: origin(),
            size,
            root: [7; 32],
        }
        .text();
        let mut note = NoteSigner::new(&origin(), key(signers[0]))
            .expect("signer")
            .sign(&text);
        for s in &signers[1..] {
            note = NoteSigner::new(&origin(), key(*s))
                .expect("signer")
                .cosign(&note)
                .expect("cosign");
        }
        note.into_bytes()
    }

    #[test]
    fn a_history_is_a_chain_ending_at_the_current_key() {
        let rotations = [rotation(&origin(), 5, 1, 2), rotation(&origin(), 9, 2, 3)];
        let keys = LogKeys::from_rotations(&rotations, &pk(3)).expect("chain");
        assert_eq!(keys.origin(), origin());
        assert_eq!(keys.keys().len(), 3);
        assert_eq!(keys.current().public_key, pk(3));
        assert_eq!(keys.rotation_indices().collect::<Vec<_>>(), [5, 9]);

        // Held by a retired key: refused, saying so.
        let err = LogKeys::from_rotations(&rotations, &pk(2)).expect_err("retired");
        assert!(err.to_string().contains("retired at entry 9"), "{err}");
        // A gap in the chain, a rotation for another log, a replayed key.
        let gap = [rotation(&origin(), 5, 1, 2), rotation(&origin(), 9, 4, 3)];
        assert!(LogKeys::from_rotations(&gap, &pk(3)).is_err());
        let other = [rotation("dsnode/other", 5, 1, 2)];
        let mut keys = LogKeys::new(&pk(1)).expect("genesis");
        assert!(keys.push(&other[0]).is_err());
        let back = [rotation(&origin(), 5, 1, 2), rotation(&origin(), 9, 2, 1)];
        assert!(LogKeys::from_rotations(&back, &pk(1)).is_err());
    }

    #[test]
    fn a_rotation_needs_both_signatures_and_its_own_index() {
        let mut e = rotation(&origin(), 5, 1, 2);
        e.index = 6;
        assert!(KeyRotation::from_entry(&e).is_err());

        // Signed by the retired key only (a thief's "rotation").
        let statement = KeyRotation::from_entry(&rotation(&origin(), 5, 1, 2)).expect("valid");
        let mut env = Envelope::sign(PayloadType::KeyRotation, statement.encode(), &key(1), "x");
        env.cosign(&key(9), "y");
        let mut forged = rotation(&origin(), 5, 1, 2);
        forged.draft.detail = env.to_json();
        let err = KeyRotation::from_entry(&forged).expect_err("one signature");
        assert!(
            err.to_string().contains("not signed by the new key"),
            "{err}"
        );

        let mut garbage = rotation(&origin(), 5, 1, 2);
        garbage.draft.detail = "{not json".into();
        assert!(KeyRotation::from_entry(&garbage).is_err());

        // Every byte accounted for: no typed reference either.
        let mut linked = rotation(&origin(), 5, 1, 2);
        linked.draft.peer_entry = Some(4);
        let err = KeyRotation::from_entry(&linked).expect_err("a reference");
        assert!(
            err.to_string().contains("names no transfer or peer entry"),
            "{err}"
        );
    }

    #[test]
    fn checkpoints_verify_under_the_key_in_force_at_their_size() {
        let keys = LogKeys::from_rotations(&[rotation(&origin(), 5, 1, 2)], &pk(2)).expect("ok");
        // Before the rotation: the old key; the handover (size 6): both.
        assert_eq!(
            keys.verify_checkpoint(&checkpoint(5, &[1]))
                .expect("old")
                .checkpoint
                .size,
            5
        );
        assert!(keys.verify_checkpoint(&checkpoint(6, &[1, 2])).is_ok());
        // The handover needs the new key: the retired key alone cannot
        // sign the checkpoint holding its own retirement.
        assert!(keys.verify_checkpoint(&checkpoint(6, &[1])).is_err());
        assert!(keys.verify_checkpoint(&checkpoint(7, &[2])).is_ok());
        // A stolen retired key signing a newer checkpoint is refused.
        let err = keys
            .verify_checkpoint(&checkpoint(7, &[1]))
            .expect_err("retired");
        assert!(
            matches!(err, KeyError::Retired { retired_at: 5, .. }),
            "{err}"
        );
        // The new key cannot sign history from before its time.
        assert!(keys.verify_checkpoint(&checkpoint(4, &[2])).is_err());
        // A stranger's key.
        assert!(keys.verify_checkpoint(&checkpoint(7, &[3])).is_err());
    }

    #[test]
    fn retired_keys_are_honoured_only_for_what_the_log_recorded_before() {
        let keys = LogKeys::from_rotations(&[rotation(&origin(), 5, 1, 2)], &pk(2)).expect("ok");
        assert!(keys.honours(&pk(1), "manifest", 4).is_ok());
        let err = keys.honours(&pk(1), "manifest", 5).expect_err("after");
        assert!(err.to_string().contains("retired at entry 5"), "{err}");
        assert!(keys.honours(&pk(2), "manifest", 9).is_ok());
        assert!(keys.honours(&pk(3), "manifest", 1).is_err());
    }
}
