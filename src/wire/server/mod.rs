//! The tonic services: one per `dataspace.v1` service, each converting
//! between protobuf messages and domain types and calling the node.
//!
//! Services: Peering (`Hello`, `ExchangeCheckpoints`), Admin (the node's
//! own operator), Catalog, Exchange (`RequestAccess`, `Fetch`,
//! `SubmitReceipt`), Ledger.

mod catalog;
mod exchange;
mod ledger;
mod transfer;
mod witness;

pub use catalog::CatalogService;
pub use exchange::ExchangeService;
pub use ledger::LedgerService;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::runtime::tls::PeerConnectInfo;
use crate::service::NodeContext;
use crate::wire::pb;
use crate::wire::status;

/// The software version every node reports.
pub const SOFTWARE_VERSION: &str = concat!("dsnode ", env!("CARGO_PKG_VERSION"));

/// The caller's verified identity; the authz layer has already refused
/// requests without one, so its absence here is an internal error.
fn caller<T>(req: &Request<T>) -> Result<&PeerConnectInfo, Status> {
    req.extensions()
        .get::<PeerConnectInfo>()
        .ok_or_else(|| Status::internal("no verified peer identity on this connection"))
}

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
        witness::serve(&self.node, &who, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// `dataspace.v1.Admin`.
pub struct AdminService {
    node: Arc<NodeContext>,
}

impl AdminService {
    /// An Admin service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn request_access(
        &self,
        request: Request<pb::AdminRequestAccessRequest>,
    ) -> Result<Response<pb::AdminRequestAccessResponse>, Status> {
        exchange::request_as_node(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn fetch(
        &self,
        request: Request<pb::AdminFetchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::AdminFetchEvent>>, Status> {
        let events = transfer::fetch_as_node(self.node.clone(), request.into_inner());
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_grants(
        &self,
        _request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        exchange::list(&self.node).map(Response::new)
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        exchange::revoke(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn publish(
        &self,
        request: Request<tonic::Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        // The publication runs in its own task: if the caller goes away
        // (or the connection is cut), it still reaches its all-or-nothing
        // end instead of stopping halfway.
        let node = self.node.clone();
        let stream = request.into_inner();
        tokio::spawn(async move { catalog::publish(&node, stream).await })
            .await
            .map_err(|e| status::internal("publishing", &e))?
            .map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            node: Some((&self.node.identity).into()),
            software_version: SOFTWARE_VERSION.to_owned(),
            uptime_seconds: self.node.started.elapsed().as_secs(),
            open_connections: self.node.connections.open_count() as u64,
        }))
    }

    async fn resend_receipts(
        &self,
        request: Request<pb::AdminResendReceiptsRequest>,
    ) -> Result<Response<pb::AdminResendReceiptsResponse>, Status> {
        transfer::resend_receipts(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn witness(
        &self,
        request: Request<pb::AdminWitnessRequest>,
    ) -> Result<Response<pb::AdminWitnessResponse>, Status> {
        let done = self
            .node
            .exchange_checkpoints_with(&request.get_ref().peer)
            .await?;
        Ok(Response::new(pb::AdminWitnessResponse {
            peer_node_id: done.peer.to_string(),
            peer_size: done.peer_size,
            peer_grew: done.peer_grew,
            cosigned_by_peer: done.cosigned_by_peer,
        }))
    }
}
