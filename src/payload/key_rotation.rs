//! `KeyRotationV1` ↔ [`KeyRotation`]: the payload of
//! `application/vnd.dsnode.key-rotation.v1+protobuf`, signed by the key a
//! log retires and the key taking over (`ledger/keys.rs`).

use prost::Message;

use super::{PayloadError, pb};
use crate::ledger::keys::KeyRotation;

/// The signed payload bytes of `rotation`.
pub fn encode(rotation: &KeyRotation) -> Vec<u8> {
    pb::KeyRotationV1::from(rotation).encode_to_vec()
}

/// Decodes payload bytes into a rotation statement: two 32-byte keys and
/// a participant id. Whether the chain of rotations holds is for
/// `ledger::keys` to check.
pub fn decode(bytes: &[u8]) -> Result<KeyRotation, PayloadError> {
    super::decode_message::<pb::KeyRotationV1>(bytes, "KeyRotationV1")?.try_into()
}

impl From<&KeyRotation> for pb::KeyRotationV1 {
    fn from(rotation: &KeyRotation) -> Self {
        let KeyRotation {
            origin,
            index,
            old_key,
            new_key,
            participant,
        } = rotation;
        Self {
            origin: origin.clone(),
            index: *index,
            old_key: old_key.to_vec(),
            new_key: new_key.to_vec(),
            participant: participant.to_string(),
        }
    }
}

impl TryFrom<pb::KeyRotationV1> for KeyRotation {
    type Error = PayloadError;

    /// Every field is taken apart, so a new proto field breaks the build
    /// until it is handled.
    fn try_from(message: pb::KeyRotationV1) -> Result<Self, PayloadError> {
        let pb::KeyRotationV1 {
            origin,
            index,
            old_key,
            new_key,
            participant,
        } = message;
        let key = |k: Vec<u8>, field: &'static str| {
            <[u8; 32]>::try_from(k.as_slice()).map_err(|_| PayloadError::KeyLength {
                field,
                got: k.len(),
            })
        };
        Ok(Self {
            origin,
            index,
            old_key: key(old_key, "old_key")?,
            new_key: key(new_key, "new_key")?,
            participant: participant.parse()?,
        })
    }
}

impl crate::codec::Canonical for crate::ledger::keys::KeyRotation {
    type Error = PayloadError;

    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode(bytes)
    }
}
