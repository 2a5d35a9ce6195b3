//! `dataspace.v1.Ledger`: checkpoints, entries with inclusion proofs,
//! consistency proofs and a grant's evidence (the answers and who may see
//! what: [`crate::service::ledger`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{NodeContext, caller, grant_id};
use crate::ledger::merkle;
use crate::peer::EntryQuery;
use crate::service::ledger::Target;
use crate::wire::pb;

/// `dataspace.v1.Ledger`.
pub struct LedgerService {
    node: Arc<NodeContext>,
}

impl LedgerService {
    /// A Ledger service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let id = grant_id(&request.get_ref().grant_id)?;
        Ok(Response::new(self.node.evidence(&id)?.into()))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        Ok(Response::new(self.node.latest_checkpoint()?.into()))
    }

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let pb::GetEntriesRequest { start, limit } = request.into_inner();
        let (checkpoint, entries) = self.node.entries_from(&who, start, limit)?;
        Ok(Response::new(pb::GetEntriesResponse {
            checkpoint,
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    async fn query_entries(
        &self,
        request: Request<pb::QueryEntriesRequest>,
    ) -> Result<Response<pb::QueryEntriesResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let query = EntryQuery::try_from(request.into_inner())?;
        Ok(Response::new(self.node.query_entries(&who, query)?.into()))
    }

    async fn prove_inclusion(
        &self,
        request: Request<pb::ProveInclusionRequest>,
    ) -> Result<Response<pb::ProveInclusionResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let pb::ProveInclusionRequest { target, tree_size } = request.into_inner();
        let target = match target {
            Some(pb::prove_inclusion_request::Target::Index(i)) => Target::Index(i),
            Some(pb::prove_inclusion_request::Target::LeafHash(h)) => Target::Leaf(
                merkle::hash_from_slice(&h)
                    .map_err(|e| Status::invalid_argument(format!("leaf_hash: {e}")))?,
            ),
            None => {
                return Err(Status::invalid_argument(
                    "give the entry's index or its leaf hash",
                ));
            }
        };
        let answer = self.node.prove_inclusion(&who, target, tree_size)?;
        Ok(Response::new(answer.into()))
    }

    async fn prove_consistency(
        &self,
        request: Request<pb::ProveConsistencyRequest>,
    ) -> Result<Response<pb::ProveConsistencyResponse>, Status> {
        let pb::ProveConsistencyRequest { old_size, new_size } = request.into_inner();
        let answer = self.node.prove_consistency(old_size, new_size)?;
        Ok(Response::new(answer.into()))
    }
}
