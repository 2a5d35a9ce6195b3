//! `dataspace.v1.Peering`: Hello, and the called side of the checkpoint
//! exchange ([`crate::witness::protocol`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{NodeContext, SOFTWARE_VERSION, admit_write, caller};
use crate::wire::pb;

/// `dataspace.v1.Peering`.
pub struct PeeringService {
    node: Arc<NodeContext>,
}

impl PeeringService {
    /// A Peering service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::peering_server::Peering for PeeringService {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let info = caller(&request)?;
        tracing::info!(
            caller = %info.identity,
            // Escaped and cut by the log's formatter (runtime::logging).
            version = %request.get_ref().software_version,
            "hello"
        );
        Ok(Response::new(pb::HelloResponse {
            server: Some((&self.node.identity).into()),
            caller: Some(info.identity.as_ref().into()),
            software_version: SOFTWARE_VERSION.to_owned(),
        }))
    }

    async fn exchange_checkpoints(
        &self,
        request: Request<pb::ExchangeCheckpointsRequest>,
    ) -> Result<Response<pb::ExchangeCheckpointsResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        admit_write(&self.node, &who)?;
        let answer = self
            .node
            .answer_checkpoints(&who, &request.into_inner().into())
            .await?;
        Ok(Response::new(answer.into()))
    }
}
