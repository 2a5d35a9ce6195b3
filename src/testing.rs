//! Fixtures shared by unit tests: a node's signing key, the identity its
//! certificate would carry, and its ledger, in a temporary dir.

use ed25519_dalek::SigningKey;

use crate::identity::{NodeId, PeerIdentity, RoleSet};
use crate::ledger::{Ledger, LedgerOptions};

/// One node's key, identity and ledger (`dir/ledger`).
pub(crate) struct TestNode {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: SigningKey,
    pub(crate) id: PeerIdentity,
    pub(crate) ledger: Ledger,
}

impl TestNode {
    /// A node with the key of `seed`.
    pub(crate) fn new(seed: u8, participant: &str, roles: &str) -> Self {
        Self::with_key(SigningKey::from_bytes(&[seed; 32]), participant, roles)
    }

    /// A node with `key` (a second node with the same key signs the same
    /// log: a fork, or a store restored elsewhere).
    pub(crate) fn with_key(key: SigningKey, participant: &str, roles: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, _) = Ledger::open(
            &dir.path().join("ledger"),
            key.clone(),
            LedgerOptions::default(),
        )
        .expect("ledger");
        let id = identity(&key, participant, roles);
        Self {
            dir,
            key,
            id,
            ledger,
        }
    }
}

/// The identity a certificate for `key` would carry.
pub(crate) fn identity(key: &SigningKey, participant: &str, roles: &str) -> PeerIdentity {
    let public_key = key.verifying_key().to_bytes();
    PeerIdentity {
        node_id: NodeId::from_public_key(&public_key),
        public_key,
        participant: participant.parse().expect("participant"),
        roles: RoleSet::parse_list(roles).expect("roles"),
        region: None,
        serial: vec![1],
        not_after: 0,
    }
}
