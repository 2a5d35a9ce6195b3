//! Access grants: what a publisher allowed, to whom, for how long. A grant
//! is a DSSE envelope of payload type `application/vnd.dsnode.grant.v1+protobuf`
//! signed by the publisher; it names the grantee by its key fingerprint
//! (node id), so it is useless to anyone else (a stolen grant is refused
//! by comparing with the TLS client certificate on every call).
//!
//! The payload is protobuf by design (DESIGN.md); its codec is
//! [`crate::payload::grant`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::codec::{Canonical, PayloadError};
use crate::dataset::DatasetId;
use crate::digest::Hash;
use crate::envelope::{Envelope, EnvelopeError, PayloadType, SignedBy, Verified};
use crate::identity::NodeId;
use crate::policy::eval::Terms;
use crate::policy::{Action, Obligation};

/// Clock skew tolerated between nodes when checking a grant's window.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

/// Why a grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// The id is not well formed.
    #[error("invalid grant id `{0}`: expected \"gr_\" followed by 26 lower-case base32 characters")]
    Id(String),
    /// The payload is not a valid grant.
    #[error("invalid grant: {0}")]
    Malformed(String),
    /// The payload is not a `GrantV1` (or, for a receipt, `ReceiptV1`)
    /// protobuf.
    #[error("invalid grant: {0}")]
    Payload(#[from] PayloadError),
    /// The envelope did not verify.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Presented by a node that is not its grantee.
    #[error("grant {grant} was issued to node {grantee}, not to {presenter}")]
    NotGrantee {
        /// The grant.
        grant: String,
        /// Its grantee.
        grantee: String,
        /// Who presented it.
        presenter: String,
    },
    /// Used before its window opens.
    #[error("grant {0} is not valid before {1}")]
    NotYetValid(String, String),
    /// Used after its window closed.
    #[error("grant {0} expired at {1}")]
    Expired(String, String),
    /// The random generator failed.
    #[error("no randomness for a grant id")]
    Random,
}

/// A grant's id: `gr_` + base32 of 128 random bits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantId(String);

impl GrantId {
    /// A new random id.
    pub fn random() -> Result<Self, GrantError> {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| GrantError::Random)?;
        Ok(Self(format!(
            "gr_{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GrantId {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, GrantError> {
        if crate::identity::is_base32_id(s, "gr_", 26) {
            Ok(Self(s.to_owned()))
        } else {
            Err(GrantError::Id(s.chars().take(80).collect()))
        }
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantId({})", self.0)
    }
}

/// An access grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its id.
    pub id: GrantId,
    /// The dataset it is for.
    pub dataset: DatasetId,
    /// SHA-256 of the dataset's signed manifest payload.
    pub manifest_sha256: Hash,
    /// Who granted (and signed).
    pub publisher: NodeId,
    /// Who may use it: the key it must present.
    pub grantee: NodeId,
    /// The purpose it is granted for.
    pub purpose: String,
    /// Actions allowed.
    pub actions: BTreeSet<Action>,
    /// Start of validity, ms since the Unix epoch.
    pub not_before_ms: i64,
    /// End of validity, ms since the Unix epoch.
    pub not_after_ms: i64,
    /// Fetches allowed, if limited.
    pub max_fetches: Option<u32>,
    /// Duties the grantee took on.
    pub obligations: Vec<Obligation>,
    /// SHA-256 of the policy's canonical form.
    pub policy_sha256: Hash,
    /// When it was issued, ms since the Unix epoch.
    pub issued_at_ms: i64,
}

fn ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A millisecond Unix time as RFC 3339 text.
pub fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::policy::rfc3339)
        .unwrap_or_else(|_| format!("{ms}ms"))
}

impl Grant {
    /// The grant a permit decision yields.
    #[allow(clippy::too_many_arguments)]
    pub fn from_terms(
        id: GrantId,
        dataset: DatasetId,
        manifest_sha256: Hash,
        publisher: NodeId,
        grantee: NodeId,
        terms: &Terms,
        policy_sha256: Hash,
        now: time::OffsetDateTime,
    ) -> Self {
        Self {
            id,
            dataset,
            manifest_sha256,
            publisher,
            grantee,
            purpose: terms.purpose.clone(),
            actions: terms.actions.clone(),
            not_before_ms: ms(terms.not_before),
            not_after_ms: ms(terms.not_after),
            max_fetches: terms.max_fetches,
            obligations: terms.obligations.clone(),
            policy_sha256,
            issued_at_ms: ms(now),
        }
    }

    /// The signed payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        Canonical::encode(self)
    }

    /// Decodes a verified payload: at least one action, a non-empty
    /// window, every id and hash well formed.
    pub fn decode(bytes: &[u8]) -> Result<Self, GrantError> {
        <Self as Canonical>::decode(bytes)
    }

    /// A ledger entry of `kind` about this grant: both parties, the
    /// dataset and the grant id filled in.
    pub fn entry(&self, kind: crate::ledger::entry::EntryKind) -> crate::ledger::entry::EntryDraft {
        let mut draft = crate::ledger::entry::EntryDraft::new(kind);
        draft.parties = vec![self.publisher.clone(), self.grantee.clone()];
        draft.dataset = Some(self.dataset.to_string());
        draft.grant = Some(self.id.to_string());
        draft
    }

    /// Signs the grant with the publisher's key.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Envelope {
        Envelope::sign(
            PayloadType::Grant,
            self.encode(),
            key,
            self.publisher.as_str(),
        )
    }

    /// Checks that `presenter` may use the grant at `now_ms` (window with
    /// [`MAX_SKEW`] of tolerance, grantee's key). Revocation and the fetch
    /// count are the publisher's state, checked where it is kept.
    pub fn check_use(&self, presenter: &NodeId, now_ms: i64) -> Result<(), GrantError> {
        if *presenter != self.grantee {
            return Err(GrantError::NotGrantee {
                grant: self.id.to_string(),
                grantee: self.grantee.to_string(),
                presenter: presenter.to_string(),
            });
        }
        let skew = MAX_SKEW.as_millis() as i64;
        if now_ms + skew < self.not_before_ms {
            return Err(GrantError::NotYetValid(
                self.id.to_string(),
                time_text(self.not_before_ms),
            ));
        }
        if now_ms - skew >= self.not_after_ms {
            return Err(GrantError::Expired(
                self.id.to_string(),
                time_text(self.not_after_ms),
            ));
        }
        Ok(())
    }
}

/// Verifies a grant envelope against the publisher's key (from its
/// certificate); the grant must name that publisher.
pub fn verify_grant(
    envelope: Envelope,
    publisher_key: &[u8; 32],
) -> Result<Verified<Grant>, GrantError> {
    envelope.verify_signed(publisher_key)
}

impl SignedBy for Grant {
    const TYPE: PayloadType = PayloadType::Grant;
    const NOUN: &'static str = "grant";
    const SIGNER_ROLE: &'static str = "publisher";
    fn signer(&self) -> &NodeId {
        &self.publisher
    }

    fn wrong_signer(message: String) -> GrantError {
        GrantError::Malformed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Duty;

    fn key(b: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
    }

    fn grant(publisher: &ed25519_dalek::SigningKey) -> Grant {
        Grant {
            id: GrantId::random().expect("id"),
            dataset: DatasetId::of_payload(b"manifest"),
            manifest_sha256: [1; 32],
            publisher: NodeId::from_public_key(&publisher.verifying_key().to_bytes()),
            grantee: NodeId::from_public_key(&[9; 32]),
            purpose: "research".into(),
            actions: BTreeSet::from([Action::Read]),
            not_before_ms: 1_000_000,
            not_after_ms: 2_000_000,
            max_fetches: Some(3),
            obligations: vec![Obligation {
                action: Duty::Delete,
                after_secs: Some(86400),
            }],
            policy_sha256: [2; 32],
            issued_at_ms: 1_000_000,
        }
    }

    #[test]
    fn grant_round_trips_and_is_bound_to_its_publisher_and_type() {
        let k = key(1);
        let g = grant(&k);
        let pk = k.verifying_key().to_bytes();
        let v = verify_grant(g.sign(&k), &pk).expect("verifies");
        assert_eq!(v.value(), &g);
        assert_eq!(v.value().id.as_str().parse::<GrantId>().expect("id"), g.id);
        // Signed by another publisher than the one it names.
        let other = key(2);
        assert!(verify_grant(g.sign(&other), &other.verifying_key().to_bytes()).is_err());
        // A manifest envelope is not a grant.
        let as_manifest = Envelope::sign(PayloadType::Manifest, g.encode(), &k, "x");
        assert!(matches!(
            verify_grant(as_manifest, &pk),
            Err(GrantError::Envelope(EnvelopeError::WrongType { .. }))
        ));
    }

    /// Issuing signs without verifying: what it makes is exactly what a
    /// verification of the signed envelope gives, and a grant naming
    /// another publisher is not signed.
    #[test]
    fn a_grant_signed_here_verifies_and_names_its_signer() {
        let k = key(1);
        let g = grant(&k);
        let here = crate::envelope::Verified::sign_here(g.clone(), &k).expect("own grant");
        let checked = verify_grant(g.sign(&k), &k.verifying_key().to_bytes()).expect("verifies");
        assert_eq!(here, checked);
        assert!(crate::envelope::Verified::sign_here(g, &key(2)).is_none());
    }

    #[test]
    fn only_the_grantee_within_the_window_may_use_it() {
        let g = grant(&key(1));
        let grantee = NodeId::from_public_key(&[9; 32]);
        assert!(g.check_use(&grantee, 1_500_000).is_ok());
        let thief = NodeId::from_public_key(&[8; 32]);
        assert!(matches!(
            g.check_use(&thief, 1_500_000),
            Err(GrantError::NotGrantee { .. })
        ));
        let skew = MAX_SKEW.as_millis() as i64;
        assert!(
            g.check_use(&grantee, 1_000_000 - skew + 1).is_ok(),
            "skew tolerated"
        );
        assert!(matches!(
            g.check_use(&grantee, 1_000_000 - skew - 1),
            Err(GrantError::NotYetValid(..))
        ));
        assert!(matches!(
            g.check_use(&grantee, 2_000_000 + skew),
            Err(GrantError::Expired(..))
        ));
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "gr_",
            "gr_UPPERCASEUPPERCASEUPPERCAS",
            "../x",
            "gr_aaaa",
        ] {
            assert!(bad.parse::<GrantId>().is_err(), "{bad}");
        }
    }
}
