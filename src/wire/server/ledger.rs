//! `dataspace.v1.Ledger`: checkpoints, entries with inclusion proofs, and
//! consistency proofs. Auditors read everything; any other participant only
//! entries that name it as a party.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{NodeContext, caller};
use crate::digest::Hash;
use crate::identity::{NodeId, PeerIdentity, Role};
use crate::ledger::entry::{Entry, EntryKind, MAX_REF_LEN};
use crate::ledger::merkle;
use crate::ledger::note::SignedCheckpoint;
use crate::ledger::{Ledger, MAX_PAGE, Query};
use crate::wire::pb;
use crate::wire::status;

/// Default page size of `QueryEntries`.
const DEFAULT_PAGE: usize = 100;

/// `dataspace.v1.Ledger`.
pub struct LedgerService {
    node: Arc<NodeContext>,
}

impl LedgerService {
    /// A Ledger service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }

    fn ledger(&self) -> &Ledger {
        &self.node.ledger
    }

    fn latest(&self) -> Result<Arc<SignedCheckpoint>, Status> {
        self.ledger()
            .latest()
            .ok_or_else(|| Status::unavailable("the ledger has no checkpoint yet"))
    }

    /// The signed checkpoint of `size` (0 = latest).
    fn checkpoint(&self, size: u64) -> Result<SignedCheckpoint, Status> {
        let latest = self.latest()?;
        if size == 0 || size == latest.checkpoint.size {
            return Ok(latest.as_ref().clone());
        }
        if size > latest.checkpoint.size {
            return Err(Status::invalid_argument(format!(
                "tree size {size} is beyond the latest checkpoint ({})",
                latest.checkpoint.size
            )));
        }
        self.ledger()
            .checkpoint_at(size)
            .map_err(|e| status::ledger("reading a checkpoint", e))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "this node signed no checkpoint of size {size}; proofs are given only against signed checkpoints (latest: {})",
                    latest.checkpoint.size
                ))
            })
    }

    fn proven(&self, index: u64, bytes: Vec<u8>, size: u64) -> Result<pb::ProvenEntry, Status> {
        let proof = self
            .ledger()
            .prove_inclusion(index, size)
            .map_err(|e| status::ledger("proving inclusion", e))?;
        Ok(pb::ProvenEntry {
            index,
            entry: bytes,
            inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
        })
    }
}

fn is_auditor(id: &PeerIdentity) -> bool {
    id.has_role(Role::Auditor)
}

/// Whether `caller` may see the entry `bytes`.
fn may_see(caller: &PeerIdentity, bytes: &[u8]) -> Result<bool, Status> {
    if is_auditor(caller) {
        return Ok(true);
    }
    let entry =
        Entry::decode(bytes).map_err(|e| status::internal("decoding a stored entry", &e))?;
    Ok(entry.names(&caller.node_id))
}

fn limit(requested: u32, default: usize) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Ok(0) => Ok(default),
        Ok(n) if n <= MAX_PAGE => Ok(n),
        _ => Err(Status::invalid_argument(format!(
            "limit {requested} is above the page cap of {MAX_PAGE}"
        ))),
    }
}

/// Builds a [`Query`] from the request's filters (checked at the edge).
fn query_from(req: &pb::QueryEntriesRequest) -> Result<Query, Status> {
    let dataset = match req.dataset.as_str() {
        "" => None,
        d if d.len() <= MAX_REF_LEN && d.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(d.to_owned())
        }
        _ => {
            return Err(Status::invalid_argument(format!(
                "dataset filter must be 1 to {MAX_REF_LEN} printable ASCII characters"
            )));
        }
    };
    let party = match req.party.as_str() {
        "" => None,
        p => Some(
            p.parse::<NodeId>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        ),
    };
    let kind = match req.kind.as_str() {
        "" => None,
        k => Some(EntryKind::parse(k).map_err(|e| Status::invalid_argument(e.to_string()))?),
    };
    let grant = match req.grant.as_str() {
        "" => None,
        g => Some(
            g.parse::<crate::exchange::grant::GrantId>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .to_string(),
        ),
    };
    let bound = |t: i64| (t != 0).then_some(t);
    Ok(Query {
        dataset,
        party,
        kind,
        grant,
        since_ms: bound(req.since_ms),
        until_ms: bound(req.until_ms),
    })
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let id = super::grant_id(&request.get_ref().grant_id)?;
        let objects = self
            .node
            .grants
            .objects(&id)
            .map_err(|e| status::internal("reading the grant's objects", &e))?;
        let Some(grant) = objects.grant else {
            return Err(Status::not_found(format!(
                "this node neither issued nor holds grant {id}"
            )));
        };
        // The publisher's manifest is its catalog's.
        let manifest = match objects.manifest {
            Some(m) => m.to_json(),
            None => crate::exchange::grant::Grant::decode(&grant.payload)
                .ok()
                .and_then(|g| self.node.catalog.get(&g.dataset))
                .map(|d| d.manifest.envelope().to_json())
                .unwrap_or_default(),
        };
        Ok(Response::new(pb::GetEvidenceResponse {
            certificate_pem: self.node.certificate_pem.clone(),
            grant: grant.to_json(),
            manifest,
            receipts: objects.receipts.iter().map(|(_, r)| r.to_json()).collect(),
        }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        let latest = self.latest()?;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: latest.note.clone().into_bytes(),
            vkey: self.ledger().verifier().vkey(),
            key_rotations: self
                .ledger()
                .rotation_entries()
                .map_err(|e| status::ledger("reading the key history", e))?,
            cosigned_checkpoints: self
                .node
                .witness
                .cosigned()
                .map_err(|e| status::internal("reading cosignatures", &e))?
                .into_iter()
                .map(|(_, note)| note)
                .collect(),
        }))
    }

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let req = request.into_inner();
        let checkpoint = self.latest()?;
        let size = checkpoint.checkpoint.size;
        let rows = self
            .ledger()
            .entries(req.start, limit(req.limit, MAX_PAGE)?)
            .map_err(|e| status::ledger("reading entries", e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, bytes) in rows {
            if index < size && may_see(&who, &bytes)? {
                entries.push(self.proven(index, bytes, size)?);
            }
        }
        Ok(Response::new(pb::GetEntriesResponse {
            checkpoint: checkpoint.note.clone().into_bytes(),
            entries,
        }))
    }

    async fn query_entries(
        &self,
        request: Request<pb::QueryEntriesRequest>,
    ) -> Result<Response<pb::QueryEntriesResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let req = request.into_inner();
        let mut query = query_from(&req)?;
        if !is_auditor(&who) {
            match &query.party {
                Some(p) if *p != who.node_id => {
                    return Err(Status::permission_denied(format!(
                        "only auditors may query entries of other parties; {} may query entries naming itself",
                        who.node_id
                    )));
                }
                _ => query.party = Some(who.node_id.clone()),
            }
        }
        let checkpoint = self.checkpoint(req.tree_size)?;
        let size = checkpoint.checkpoint.size;
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_slice());
        let page = self
            .ledger()
            .query(&query, token, limit(req.limit, DEFAULT_PAGE)?, size)
            .map_err(|e| status::ledger("querying entries", e))?;
        let entries = page
            .entries
            .into_iter()
            .map(|(index, bytes)| self.proven(index, bytes, size))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::QueryEntriesResponse {
            checkpoint: checkpoint.note.into_bytes(),
            entries,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn prove_inclusion(
        &self,
        request: Request<pb::ProveInclusionRequest>,
    ) -> Result<Response<pb::ProveInclusionResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let req = request.into_inner();
        let checkpoint = self.checkpoint(req.tree_size)?;
        let size = checkpoint.checkpoint.size;
        // One answer for "no such entry" and "not yours to see", so a
        // non-auditor learns nothing about entries that do not name it.
        let unseen = || Status::not_found("no entry visible to you matches");
        let (index, wanted_leaf) = match req.target {
            Some(pb::prove_inclusion_request::Target::Index(i)) => (i, None),
            Some(pb::prove_inclusion_request::Target::LeafHash(h)) => {
                let leaf: Hash = merkle::hash_from_slice(&h)
                    .map_err(|e| Status::invalid_argument(format!("leaf_hash: {e}")))?;
                let index = self
                    .ledger()
                    .leaf_index(&leaf)
                    .map_err(|e| status::ledger("looking up a leaf", e))?
                    .ok_or_else(unseen)?;
                (index, Some(leaf))
            }
            None => {
                return Err(Status::invalid_argument(
                    "give the entry's index or its leaf hash",
                ));
            }
        };
        if index >= size {
            return Err(unseen());
        }
        let bytes = self
            .ledger()
            .entry(index)
            .map_err(|e| status::ledger("reading an entry", e))?
            .ok_or_else(unseen)?;
        if wanted_leaf.is_some_and(|leaf| merkle::leaf_hash(&bytes) != leaf) {
            return Err(unseen());
        }
        if !may_see(&who, &bytes)? {
            return Err(unseen());
        }
        Ok(Response::new(pb::ProveInclusionResponse {
            entry: Some(self.proven(index, bytes, size)?),
            checkpoint: checkpoint.note.into_bytes(),
        }))
    }

    async fn prove_consistency(
        &self,
        request: Request<pb::ProveConsistencyRequest>,
    ) -> Result<Response<pb::ProveConsistencyResponse>, Status> {
        let req = request.into_inner();
        let new = self.checkpoint(req.new_size)?;
        if req.old_size == 0 || req.old_size > new.checkpoint.size {
            return Err(Status::invalid_argument(format!(
                "old size must be between 1 and the new size {}; got {}",
                new.checkpoint.size, req.old_size
            )));
        }
        let old = self.checkpoint(req.old_size)?;
        let proof = self
            .ledger()
            .prove_consistency(old.checkpoint.size, new.checkpoint.size)
            .map_err(|e| status::ledger("proving consistency", e))?;
        Ok(Response::new(pb::ProveConsistencyResponse {
            old_checkpoint: old.note.into_bytes(),
            new_checkpoint: new.note.into_bytes(),
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
