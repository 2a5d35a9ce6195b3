//! `GrantV1` ↔ [`Grant`]: the payload of
//! `application/vnd.dsnode.grant.v1+protobuf`, signed by the publisher.

use std::collections::BTreeSet;

use prost::Message;

use super::pb;
use crate::dataset::DatasetError;
use crate::digest::Hash;
use crate::exchange::grant::{Grant, GrantError};
use crate::identity::NodeId;
use crate::policy::{Action, Duty, Obligation};

/// The signed payload bytes of `grant`.
pub fn encode(grant: &Grant) -> Vec<u8> {
    pb::GrantV1::from(grant).encode_to_vec()
}

/// Decodes payload bytes into a grant: at least one action, a non-empty
/// window, every id and hash well formed.
pub fn decode(bytes: &[u8]) -> Result<Grant, GrantError> {
    super::decode_message::<pb::GrantV1>(bytes, "GrantV1")?.try_into()
}

impl From<&Grant> for pb::GrantV1 {
    fn from(grant: &Grant) -> Self {
        let Grant {
            id,
            dataset,
            manifest_sha256,
            publisher,
            grantee,
            purpose,
            actions,
            not_before_ms,
            not_after_ms,
            max_fetches,
            obligations,
            policy_sha256,
            issued_at_ms,
        } = grant;
        Self {
            grant_id: id.to_string(),
            dataset_id: dataset.to_string(),
            manifest_sha256: manifest_sha256.to_vec(),
            publisher: publisher.to_string(),
            grantee: grantee.to_string(),
            purpose: purpose.clone(),
            actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
            not_before_ms: *not_before_ms,
            not_after_ms: *not_after_ms,
            max_fetches: max_fetches.unwrap_or(0),
            obligations: obligations.iter().map(pb::GrantObligation::from).collect(),
            policy_sha256: policy_sha256.to_vec(),
            issued_at_ms: *issued_at_ms,
        }
    }
}

impl TryFrom<pb::GrantV1> for Grant {
    type Error = GrantError;

    /// Every field is taken apart, so a new proto field breaks the build
    /// until it is handled.
    fn try_from(message: pb::GrantV1) -> Result<Self, GrantError> {
        let pb::GrantV1 {
            grant_id,
            dataset_id,
            manifest_sha256,
            publisher,
            grantee,
            purpose,
            actions,
            not_before_ms,
            not_after_ms,
            max_fetches,
            obligations,
            policy_sha256,
            issued_at_ms,
        } = message;
        let node = |s: &str, what: &str| {
            s.parse::<NodeId>()
                .map_err(|e| GrantError::Malformed(format!("{what}: {e}")))
        };
        let actions = actions
            .iter()
            .map(|a| {
                a.parse::<Action>()
                    .map_err(|e| GrantError::Malformed(e.to_string()))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        if actions.is_empty() {
            return Err(GrantError::Malformed(
                "a grant allows at least one action".into(),
            ));
        }
        if not_after_ms <= not_before_ms {
            return Err(GrantError::Malformed("the grant's window is empty".into()));
        }
        let obligations = obligations
            .into_iter()
            .map(Obligation::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id: grant_id.parse()?,
            dataset: dataset_id
                .parse()
                .map_err(|e: DatasetError| GrantError::Malformed(e.to_string()))?,
            manifest_sha256: hash32(&manifest_sha256, "manifest_sha256")?,
            publisher: node(&publisher, "publisher")?,
            grantee: node(&grantee, "grantee")?,
            purpose,
            actions,
            not_before_ms,
            not_after_ms,
            max_fetches: (max_fetches != 0).then_some(max_fetches),
            obligations,
            policy_sha256: hash32(&policy_sha256, "policy_sha256")?,
            issued_at_ms,
        })
    }
}

impl From<&Obligation> for pb::GrantObligation {
    fn from(obligation: &Obligation) -> Self {
        let Obligation { action, after_secs } = obligation;
        Self {
            action: action.as_str().to_owned(),
            after_secs: after_secs.unwrap_or(0),
        }
    }
}

impl TryFrom<pb::GrantObligation> for Obligation {
    type Error = GrantError;

    fn try_from(message: pb::GrantObligation) -> Result<Self, GrantError> {
        let pb::GrantObligation { action, after_secs } = message;
        let action = match action.as_str() {
            "delete" => Duty::Delete,
            "attribute" => Duty::Attribute,
            "report" => Duty::Report,
            other => return Err(GrantError::Malformed(format!("unknown duty `{other}`"))),
        };
        Ok(Self {
            action,
            after_secs: (after_secs != 0).then_some(after_secs),
        })
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, GrantError> {
    bytes
        .try_into()
        .map_err(|_| GrantError::Malformed(format!("{what} must be 32 bytes")))
}

impl crate::codec::Canonical for crate::exchange::grant::Grant {
    type Error = crate::exchange::grant::GrantError;

    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, crate::exchange::grant::GrantError> {
        decode(bytes)
    }
}
