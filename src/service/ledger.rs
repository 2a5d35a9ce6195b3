//! The Ledger service's answers: checkpoints, entries with inclusion
//! proofs, consistency proofs and a grant's evidence. Auditors read
//! everything; any other participant only entries that name it as a party,
//! and "no such entry" and "not yours to see" get one answer, so a
//! non-auditor learns nothing about entries that do not name it.

use std::sync::Arc;

use super::NodeContext;
use crate::digest::Hash;
use crate::exchange::grant::{Grant, GrantId};
use crate::identity::{PeerIdentity, Role};
use crate::ledger::entry::Entry;
use crate::ledger::note::SignedCheckpoint;
use crate::ledger::{LedgerError, MAX_PAGE, merkle};
use crate::peer::{
    ConsistencyAnswer, EntryPage, EntryQuery, GrantEvidence, InclusionAnswer, LatestCheckpoint,
    ProvenEntry,
};

/// Default page size of a query.
const DEFAULT_PAGE: usize = 100;

/// Why a ledger read was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing (visible to the caller) matches.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not ask this.
    #[error("{0}")]
    Refused(String),
    /// The ledger has no checkpoint yet.
    #[error("the ledger has no checkpoint yet")]
    NoCheckpoint,
    /// The ledger failed.
    #[error("{context}: {source}")]
    Ledger {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: LedgerError,
    },
    /// Something else on this node failed.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn ledger(context: &'static str) -> impl FnOnce(LedgerError) -> ReadError {
    move |source| ReadError::Ledger { context, source }
}

fn internal<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> ReadError {
    move |e| ReadError::Internal {
        context,
        source: Box::new(e),
    }
}

/// Which entry an inclusion proof is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// By index.
    Index(u64),
    /// By leaf hash.
    Leaf(Hash),
}

fn is_auditor(id: &PeerIdentity) -> bool {
    id.has_role(Role::Auditor)
}

/// Whether `caller` may see the entry `bytes`.
fn may_see(caller: &PeerIdentity, bytes: &[u8]) -> Result<bool, ReadError> {
    if is_auditor(caller) {
        return Ok(true);
    }
    let entry = Entry::decode(bytes).map_err(internal("decoding a stored entry"))?;
    Ok(entry.names(&caller.node_id))
}

/// A page size asked for, within the cap (0: `default`).
fn limit(requested: u32, default: usize) -> Result<usize, ReadError> {
    match usize::try_from(requested) {
        Ok(0) => Ok(default),
        Ok(n) if n <= MAX_PAGE => Ok(n),
        _ => Err(ReadError::BadRequest(format!(
            "limit {requested} is above the page cap of {MAX_PAGE}"
        ))),
    }
}

impl NodeContext {
    fn latest(&self) -> Result<Arc<SignedCheckpoint>, ReadError> {
        self.ledger.latest().ok_or(ReadError::NoCheckpoint)
    }

    /// The signed checkpoint of `size` (0 = latest).
    fn checkpoint(&self, size: u64) -> Result<SignedCheckpoint, ReadError> {
        let latest = self.latest()?;
        if size == 0 || size == latest.checkpoint.size {
            return Ok(latest.as_ref().clone());
        }
        if size > latest.checkpoint.size {
            return Err(ReadError::BadRequest(format!(
                "tree size {size} is beyond the latest checkpoint ({})",
                latest.checkpoint.size
            )));
        }
        self.ledger
            .checkpoint_at(size)
            .map_err(ledger("reading a checkpoint"))?
            .ok_or_else(|| {
                ReadError::NotFound(format!(
                    "this node signed no checkpoint of size {size}; proofs are given only against signed checkpoints (latest: {})",
                    latest.checkpoint.size
                ))
            })
    }

    fn proven(&self, index: u64, entry: Vec<u8>, size: u64) -> Result<ProvenEntry, ReadError> {
        let proof = self
            .ledger
            .prove_inclusion(index, size)
            .map_err(ledger("proving inclusion"))?;
        Ok(ProvenEntry {
            index,
            entry,
            inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
        })
    }

    /// The latest checkpoint, the key history and the cosignatures this
    /// node's witnesses gave it.
    pub fn latest_checkpoint(&self) -> Result<LatestCheckpoint, ReadError> {
        let latest = self.latest()?;
        Ok(LatestCheckpoint {
            checkpoint: latest.note.clone().into_bytes(),
            vkey: self.ledger.verifier().vkey(),
            key_rotations: self
                .ledger
                .rotation_entries()
                .map_err(ledger("reading the key history"))?,
            cosigned_checkpoints: self
                .witness
                .cosigned()
                .map_err(internal("reading cosignatures"))?
                .into_iter()
                .map(|(_, note)| note)
                .chain(
                    self.witness
                        .cosigned_external()
                        .map_err(internal("reading cosignatures"))?
                        .into_iter()
                        .map(|(_, note)| note),
                )
                .collect(),
        })
    }

    /// Entries from `start` (at most `limit`) that `who` may see, proven
    /// against the latest checkpoint (returned first).
    pub fn entries_from(
        &self,
        who: &PeerIdentity,
        start: u64,
        limit_asked: u32,
    ) -> Result<(Vec<u8>, Vec<ProvenEntry>), ReadError> {
        let checkpoint = self.latest()?;
        let size = checkpoint.checkpoint.size;
        let rows = self
            .ledger
            .entries(start, limit(limit_asked, MAX_PAGE)?)
            .map_err(ledger("reading entries"))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, bytes) in rows {
            if index < size && may_see(who, &bytes)? {
                entries.push(self.proven(index, bytes, size)?);
            }
        }
        Ok((checkpoint.note.clone().into_bytes(), entries))
    }

    /// Entries matching a query, proven against the checkpoint it names. A
    /// non-auditor's query is narrowed to entries naming it.
    pub fn query_entries(
        &self,
        who: &PeerIdentity,
        mut query: EntryQuery,
    ) -> Result<EntryPage, ReadError> {
        if !is_auditor(who) {
            match &query.filter.party {
                Some(p) if *p != who.node_id => {
                    return Err(ReadError::Refused(format!(
                        "only auditors may query entries of other parties; {} may query entries naming itself",
                        who.node_id
                    )));
                }
                _ => query.filter.party = Some(who.node_id.clone()),
            }
        }
        let checkpoint = self.checkpoint(query.tree_size)?;
        let size = checkpoint.checkpoint.size;
        let token = (!query.page_token.is_empty()).then_some(query.page_token.as_slice());
        let page = self
            .ledger
            .query(
                &query.filter,
                token,
                limit(query.limit, DEFAULT_PAGE)?,
                size,
            )
            .map_err(ledger("querying entries"))?;
        let entries = page
            .entries
            .into_iter()
            .map(|(index, bytes)| self.proven(index, bytes, size))
            .collect::<Result<_, _>>()?;
        Ok(EntryPage {
            checkpoint: checkpoint.note.into_bytes(),
            entries,
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    /// One entry `who` may see, with its inclusion proof against the
    /// checkpoint of `size` (0: latest).
    pub fn prove_inclusion(
        &self,
        who: &PeerIdentity,
        target: Target,
        size: u64,
    ) -> Result<InclusionAnswer, ReadError> {
        let checkpoint = self.checkpoint(size)?;
        let size = checkpoint.checkpoint.size;
        let unseen = || ReadError::NotFound("no entry visible to you matches".into());
        let (index, wanted_leaf) = match target {
            Target::Index(i) => (i, None),
            Target::Leaf(leaf) => {
                let index = self
                    .ledger
                    .leaf_index(&leaf)
                    .map_err(ledger("looking up a leaf"))?
                    .ok_or_else(unseen)?;
                (index, Some(leaf))
            }
        };
        if index >= size {
            return Err(unseen());
        }
        let bytes = self
            .ledger
            .entry(index)
            .map_err(ledger("reading an entry"))?
            .ok_or_else(unseen)?;
        if wanted_leaf.is_some_and(|leaf| merkle::leaf_hash(&bytes) != leaf) {
            return Err(unseen());
        }
        if !may_see(who, &bytes)? {
            return Err(unseen());
        }
        Ok(InclusionAnswer {
            entry: Some(self.proven(index, bytes, size)?),
            checkpoint: checkpoint.note.into_bytes(),
        })
    }

    /// The checkpoints of `old` and `new` (0: latest) and a consistency
    /// proof between them.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<ConsistencyAnswer, ReadError> {
        let new = self.checkpoint(new)?;
        if old == 0 || old > new.checkpoint.size {
            return Err(ReadError::BadRequest(format!(
                "old size must be between 1 and the new size {}; got {old}",
                new.checkpoint.size
            )));
        }
        let old = self.checkpoint(old)?;
        let proof = self
            .ledger
            .prove_consistency(old.checkpoint.size, new.checkpoint.size)
            .map_err(ledger("proving consistency"))?;
        Ok(ConsistencyAnswer {
            old_checkpoint: old.note.into_bytes(),
            new_checkpoint: new.note.into_bytes(),
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        })
    }

    /// What this node keeps of a grant, for an auditor's evidence bundle:
    /// its certificate, the grant, the manifest, the receipts (signed here
    /// as consumer, or taken here as publisher), in transfer order.
    pub fn evidence(&self, id: &GrantId) -> Result<GrantEvidence, ReadError> {
        let objects = self
            .grants
            .objects(id)
            .map_err(internal("reading the grant's objects"))?;
        let Some(grant) = objects.grant else {
            return Err(ReadError::NotFound(format!(
                "this node neither issued nor holds grant {id}"
            )));
        };
        // The publisher's manifest is its catalog's.
        let manifest = match objects.manifest {
            Some(m) => m.to_json(),
            None => Grant::decode(&grant.payload)
                .ok()
                .and_then(|g| self.catalog.get(&g.dataset))
                .map(|d| d.manifest.envelope().to_json())
                .unwrap_or_default(),
        };
        // One node is one side of a grant; should it be both, a receipt
        // is listed once.
        let mut receipts = objects.receipts;
        for (t, r) in objects.taken {
            if !receipts
                .iter()
                .any(|(_, kept)| kept.payload_hash() == r.payload_hash())
            {
                receipts.push((t, r));
            }
        }
        receipts.sort_by_key(|(t, _)| *t);
        Ok(GrantEvidence {
            certificate_pem: self.certificate_pem.clone(),
            grant: grant.to_json(),
            manifest,
            receipts: receipts.iter().map(|(_, r)| r.to_json()).collect(),
        })
    }
}
