//! Who a node is: its Ed25519 signing key, its node id, its ECDSA P-256 TLS
//! key, the participant and roles the data-space CA attests in its
//! certificate, and the CA itself.
//!
//! - [`key`]: the node's two keys on disk (PKCS#8, mode 0600): Ed25519
//!   for signatures and the node id, P-256 for TLS (and the CA).
//! - [`cert`]: node certificates and CSRs: how attributes and the bound
//!   Ed25519 key are encoded in them and read back into a [`PeerIdentity`].
//! - [`ca`]: the operator's certificate authority (issue, revoke, CRL).

pub mod ca;
pub mod cert;
pub mod key;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ring::digest;

pub use cert::PeerIdentity;
pub use key::{NodeKey, P256Key};

/// Prefix of every node id, so a node id is recognisable in logs.
const NODE_ID_PREFIX: &str = "dsn1";
/// Length of the base32 part of a node id (130 bits of SHA-256).
const NODE_ID_HASH_CHARS: usize = 26;

/// A value that failed to parse as one of this module's narrow types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Not a node id.
    #[error("invalid node id `{0}`: expected \"dsn1\" followed by 26 lower-case base32 characters")]
    NodeId(String),
    /// Not a participant id.
    #[error(
        "invalid participant id `{0}`: expected 1 to 64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    Participant(String),
    /// Not a role name.
    #[error("unknown role `{0}`: expected one of publisher, consumer, auditor")]
    Role(String),
    /// Not a region code.
    #[error(
        "invalid region `{0}`: expected an ISO 3166 code such as \"CN\" or \"CN-HE\" (upper-case letters and digits)"
    )]
    Region(String),
}

/// Whether `s` is `prefix` followed by exactly `chars` lower-case base32
/// (RFC 4648) characters: the shape of every id this crate makes from a
/// hash or random bytes (node, dataset and grant ids).
pub(crate) fn is_base32_id(s: &str, prefix: &str, chars: usize) -> bool {
    s.len() == prefix.len() + chars
        && s.starts_with(prefix)
        && s[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// A node's name: `dsn1` + base32 (RFC 4648, lower case, no padding) of
/// SHA-256 of its raw Ed25519 public key, truncated to 26 characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// The node id of an Ed25519 public key (32 raw bytes).
    pub fn from_public_key(key: &[u8; 32]) -> Self {
        let hash = digest::digest(&digest::SHA256, key);
        let b32 = data_encoding::BASE32_NOPAD.encode(hash.as_ref());
        let tail = b32[..NODE_ID_HASH_CHARS].to_ascii_lowercase();
        Self(format!("{NODE_ID_PREFIX}{tail}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if is_base32_id(s, NODE_ID_PREFIX, NODE_ID_HASH_CHARS) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::NodeId(s.to_owned()))
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// The organisation a node belongs to, as named by the CA (for example
/// `city-transport`). Several nodes (keys) may share one participant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(String);

impl ParticipantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ParticipantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Participant(s.to_owned()))
        }
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role the CA attests in a node certificate. The platform operator is not
/// a node role: it is whoever holds the CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Publishes datasets, answers access requests, serves transfers.
    Publisher,
    /// Requests access, fetches, signs receipts.
    Consumer,
    /// Reads ledgers, proofs and checkpoints.
    Auditor,
}

impl Role {
    /// Every role, in display order.
    pub const ALL: [Role; 3] = [Role::Publisher, Role::Consumer, Role::Auditor];

    /// The role's name as written in certificates, configs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Consumer => "consumer",
            Role::Auditor => "auditor",
        }
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdError::Role(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of roles a certificate attests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(BTreeSet<Role>);

impl RoleSet {
    /// Whether the set holds `role`.
    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// Adds a role.
    pub fn insert(&mut self, role: Role) {
        self.0.insert(role);
    }

    /// Whether no role is attested.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The roles in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.iter().copied()
    }

    /// Parses a comma-separated list such as `publisher,consumer`.
    pub fn parse_list(s: &str) -> Result<Self, IdError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Role::from_str)
            .collect()
    }
}

impl FromIterator<Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// A region code attested by the CA (ISO 3166-1 alpha-2, optionally with an
/// ISO 3166-2 subdivision: `CN`, `CN-HE`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region(String);

impl Region {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Region {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (country, sub) = match s.split_once('-') {
            Some((c, sub)) => (c, Some(sub)),
            None => (s, None),
        };
        let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
        let sub_ok = sub.is_none_or(|sub| {
            (1..=3).contains(&sub.len())
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
        if country_ok && sub_ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Region(s.to_owned()))
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_and_parses_back() {
        let id = NodeId::from_public_key(&[7u8; 32]);
        assert!(id.as_str().starts_with("dsn1"));
        assert_eq!(id.as_str().len(), 30);
        assert_eq!(id.as_str().parse::<NodeId>().expect("parse"), id);
        assert_ne!(id, NodeId::from_public_key(&[8u8; 32]));
    }

    #[test]
    fn bad_ids_are_refused_with_what_was_expected() {
        for bad in [
            "",
            "dsn1",
            "dsn1AAAAAAAAAAAAAAAAAAAAAAAAAA",
            "../etc/passwd",
        ] {
            let err = bad.parse::<NodeId>().expect_err(bad);
            assert!(err.to_string().contains("expected"));
        }
        for bad in ["", "Upper", "-lead", "has space", "a/b", &"x".repeat(65)] {
            assert!(bad.parse::<ParticipantId>().is_err(), "{bad}");
        }
        assert!("city-transport".parse::<ParticipantId>().is_ok());
        for bad in ["cn", "CHN", "CN-", "CN-HEBE", "CN_HE"] {
            assert!(bad.parse::<Region>().is_err(), "{bad}");
        }
        assert!("CN-HE".parse::<Region>().is_ok());
        assert!("CN".parse::<Region>().is_ok());
    }

    #[test]
    fn role_lists_parse_and_unknown_roles_are_named() {
        let set = RoleSet::parse_list("publisher, consumer").expect("parse");
        assert!(set.contains(Role::Publisher) && set.contains(Role::Consumer));
        assert!(!set.contains(Role::Auditor));
        assert_eq!(set.to_string(), "publisher,consumer");
        let err = RoleSet::parse_list("publisher,admin").expect_err("admin");
        assert_eq!(
            err.to_string(),
            "unknown role `admin`: expected one of publisher, consumer, auditor"
        );
    }
}
