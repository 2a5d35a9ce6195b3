//! Access requests, both sides.
//!
//! The publisher decides ([`Publisher::decide`]): the dataset must be
//! visible to the requester (its policy could ever grant it, or the
//! requester is this node), then the policy is evaluated against the
//! requester's certificate identity; a permit becomes a signed grant
//! (`AccessGranted`), a denial names every unmet constraint
//! (`AccessDenied`). Both are recorded before the answer.
//!
//! The consumer asks ([`request`]): the grant that comes back must be
//! signed by the key of the publisher's certificate, be for this node and
//! for the dataset asked for; it is kept and recorded (`GrantReceived`).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use super::Publisher;
use super::book::{BookError, GrantBook, Held};
use super::grant::{Grant, GrantId};
use crate::dataset::DatasetId;
use crate::dataset::catalog::Dataset;
use crate::envelope::Verified;
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::entry::{EntryDraft, EntryKind};
use crate::ledger::{Appended, LedgerError};
use crate::peer::{AccessAsk, Peer, PeerError};
use crate::policy::eval::{AccessRequest, Decision, could_ever_grant, evaluate};
use crate::policy::{Action, Purpose};

/// Why an access request failed (a denial is not a failure: see
/// [`Decided`]).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such dataset, or not one the requester may see.
    #[error("no dataset {0} visible to you")]
    NotVisible(DatasetId),
    /// The publisher granted something else than was asked for.
    #[error("the publisher granted another dataset than the one asked for")]
    OtherDataset,
    /// The grant could not be issued or kept.
    #[error("{context}: {source}")]
    Book {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: BookError,
    },
    /// The ledger failed.
    #[error("{context}: {source}")]
    Ledger {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: LedgerError,
    },
    /// Something failed inside this node.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The publisher could not be asked, or refused.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A per-peer limit refused the request.
    #[error(transparent)]
    Limited(#[from] super::limits::Limited),
}

/// A checked access request: which dataset, and what for.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The dataset.
    pub dataset: DatasetId,
    /// What is asked of it.
    pub access: AccessRequest,
}

impl TryFrom<&AccessAsk> for Ask {
    type Error = AccessError;

    fn try_from(a: &AccessAsk) -> Result<Self, AccessError> {
        let bad = |e: &dyn fmt::Display| AccessError::BadRequest(e.to_string());
        let dataset: DatasetId = a.dataset_id.parse().map_err(|e| bad(&e))?;
        let actions: BTreeSet<Action> = a
            .actions
            .iter()
            .map(|x| x.parse::<Action>().map_err(|e| bad(&e)))
            .collect::<Result<_, _>>()?;
        if actions.is_empty() {
            return Err(AccessError::BadRequest(
                "name at least one action (read, derive, redistribute, aggregate)".into(),
            ));
        }
        let purpose: Purpose = a.purpose.parse().map_err(|e| bad(&e))?;
        Ok(Self {
            dataset,
            access: AccessRequest {
                actions,
                purpose: purpose.as_str().to_owned(),
                duration: (a.duration_secs != 0).then(|| Duration::from_secs(a.duration_secs)),
            },
        })
    }
}

/// What a publisher decided.
#[derive(Debug)]
pub enum Decided {
    /// A grant, signed, stored and recorded (`AccessGranted` at `index`).
    Granted {
        /// The grant.
        grant: std::sync::Arc<Verified<Grant>>,
        /// Its ledger entry.
        index: u64,
    },
    /// Refused, with every unmet constraint (recorded as `AccessDenied`).
    Denied {
        /// The reasons, one per unmet constraint.
        reasons: Vec<String>,
    },
}

impl Publisher<'_> {
    /// Whether `who` may see `dataset` (in the catalog, and to ask for it):
    /// this node sees everything; others what the policy could ever grant
    /// them.
    pub fn visible(&self, who: &PeerIdentity, dataset: &Dataset, now: OffsetDateTime) -> bool {
        who.node_id == self.identity.node_id
            || could_ever_grant(&dataset.manifest.value().policy, who, now)
    }

    /// Decides an access request from `who` (its certificate identity).
    pub async fn decide(&self, who: &PeerIdentity, ask: Ask) -> Result<Decided, AccessError> {
        let Ask {
            dataset: id,
            access,
        } = ask;
        let now = self.clock.now();
        let dataset = self
            .catalog
            .get(&id)
            .filter(|d| self.visible(who, d, now))
            .ok_or_else(|| AccessError::NotVisible(id.clone()))?;
        let policy = &dataset.manifest.value().policy;
        match evaluate(policy, &access, who, now) {
            Decision::Permit(terms) => {
                let grant = Grant::from_terms(
                    GrantId::random().map_err(|e| AccessError::Internal {
                        context: "making a grant id",
                        source: Box::new(e),
                    })?,
                    id,
                    dataset.manifest.envelope().payload_hash(),
                    self.identity.node_id.clone(),
                    who.node_id.clone(),
                    &terms,
                    policy.hash(),
                    now,
                );
                let cap = self.limits.config().max_live_grants_per_peer;
                let now_ms =
                    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
                if let Err(live) = self.grants.reserve_live(&grant, cap, now_ms) {
                    self.metrics.peer_limited("live_grants");
                    return Err(super::limits::Limited {
                        limit: "live_grants",
                        message: format!(
                            "{} already holds {live} live grants from this publisher, its limit ([limits] max_live_grants_per_peer); use them, or wait until one expires or is revoked",
                            who.node_id
                        ),
                        retry_after: None,
                    }
                    .into());
                }
                let unissued = grant.clone();
                let (grant, appended) = match issue(self.grants, self.key, grant).await {
                    Ok(issued) => issued,
                    Err(e) => {
                        self.grants.release_live(&unissued);
                        return Err(e);
                    }
                };
                self.metrics.granted();
                tracing::info!(grant = %grant.value().id, to = %who.node_id, index = appended.index, "access granted");
                Ok(Decided::Granted {
                    grant,
                    index: appended.index,
                })
            }
            Decision::Deny(reasons) => {
                let sentence = reasons.join("; ");
                let mut draft = EntryDraft::new(EntryKind::AccessDenied);
                draft.parties = vec![self.identity.node_id.clone(), who.node_id.clone()];
                draft.dataset = Some(id.to_string());
                draft.detail = format!(
                    "purpose {}: {}",
                    crate::text::shown(&access.purpose),
                    crate::text::shown_at_most(&sentence, 2000)
                );
                self.record_denial(who, &id, &access, &sentence, draft)
                    .await?;
                self.metrics.denied();
                tracing::info!(dataset = %id, to = %who.node_id, reasons = %sentence, "access denied");
                Ok(Decided::Denied { reasons })
            }
        }
    }
}

impl Publisher<'_> {
    /// Records a refusal, unless an identical one from the same peer is
    /// in its window ([`super::limits::PeerLimits::denial`]): then it is
    /// only counted, and recorded with the other repeats when the window
    /// ends.
    async fn record_denial(
        &self,
        who: &PeerIdentity,
        dataset: &DatasetId,
        access: &AccessRequest,
        sentence: &str,
        draft: EntryDraft,
    ) -> Result<(), AccessError> {
        let actions: Vec<&str> = access.actions.iter().map(|a| a.as_str()).collect();
        let key = super::limits::denial_key(&[
            who.node_id.as_str(),
            dataset.as_str(),
            &access.purpose,
            &actions.join(","),
            sentence,
        ]);
        let failed = |source| AccessError::Ledger {
            context: "recording a denial",
            source,
        };
        let (record, closed) = self.limits.denial(
            &who.node_id,
            key,
            &draft,
            std::time::Instant::now(),
            self.clock.now(),
        );
        if let Some(repeats) = closed
            && let Err(e) = self.ledger.append(repeats).await
        {
            // The new window's first refusal is not recorded either: the
            // next identical one starts the window again.
            self.limits.denial_failed(&key);
            return Err(failed(e));
        }
        match record {
            super::limits::DenialRecord::Counted => {
                self.metrics.denial_coalesced();
                Ok(())
            }
            super::limits::DenialRecord::Limited(l) => {
                self.metrics.peer_limited(l.limit);
                Err(l.into())
            }
            super::limits::DenialRecord::Now => match self.ledger.append(draft).await {
                Ok(a) => {
                    self.limits.denial_recorded(&key, a.index);
                    Ok(())
                }
                Err(e) => {
                    self.limits.denial_failed(&key);
                    Err(failed(e))
                }
            },
        }
    }
}

/// Signs, stores and records a grant, in a task of its own: a caller that
/// goes away cannot cut issuing between the grant file and its ledger
/// entry.
async fn issue(
    book: &std::sync::Arc<GrantBook>,
    key: &ed25519_dalek::SigningKey,
    grant: Grant,
) -> Result<(std::sync::Arc<Verified<Grant>>, Appended), AccessError> {
    let (book, key) = (book.clone(), key.clone());
    tokio::spawn(async move { book.issue(grant, &key).await })
        .await
        .map_err(|e| AccessError::Internal {
            context: "issuing a grant",
            source: Box::new(e),
        })?
        .map_err(|source| AccessError::Book {
            context: "issuing a grant",
            source,
        })
}

/// Asks `publisher` for access as this node (`own`), then verifies the
/// grant against the publisher's certificate key, keeps it and records it.
/// Returns the grant held and this node's `GrantReceived` entry.
pub async fn request(
    grants: &GrantBook,
    own: &NodeId,
    publisher: &dyn Peer,
    ask: &Ask,
) -> Result<(std::sync::Arc<Held>, u64), AccessError> {
    let sent = AccessAsk {
        dataset_id: ask.dataset.to_string(),
        purpose: ask.access.purpose.clone(),
        actions: ask
            .access
            .actions
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        duration_secs: ask.access.duration.map_or(0, |d| d.as_secs()),
    };
    let envelope = publisher.request_access(sent).await?;
    let (held, appended) = grants
        .hold(envelope, publisher.identity().public_key, own)
        .await
        .map_err(|source| AccessError::Book {
            context: "keeping a grant",
            source,
        })?;
    if held.grant.value().dataset != ask.dataset {
        return Err(AccessError::OtherDataset);
    }
    Ok((held, appended.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(dataset: &str, purpose: &str, actions: &[&str]) -> AccessAsk {
        AccessAsk {
            dataset_id: dataset.into(),
            purpose: purpose.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            duration_secs: 0,
        }
    }

    #[test]
    fn requests_are_checked_before_anything_is_asked_or_decided() {
        let id = "ds_3nqjr54buyc4byi4rhxrabing4p4tuqplc4x4kgxnvems4sy27ia";
        let ok = Ask::try_from(&ask(id, "route-planning", &["read"])).expect("valid");
        assert_eq!(ok.access.purpose, "route-planning");
        assert_eq!(ok.access.duration, None);
        for (bad, why) in [
            (ask("nope", "research", &["read"]), "dataset"),
            (ask(id, "research", &[]), "at least one action"),
            (ask(id, "research", &["steal"]), "action"),
            (ask(id, "Research!", &["read"]), "must be 1 to 64"),
            (ask(id, "", &["read"]), "must be 1 to 64"),
            (ask(id, &"x".repeat(65), &["read"]), "must be 1 to 64"),
        ] {
            let err = Ask::try_from(&bad).expect_err(why);
            assert!(matches!(err, AccessError::BadRequest(_)), "{err}");
        }
        assert!("a-b_c.9".parse::<Purpose>().is_ok());
    }
}
