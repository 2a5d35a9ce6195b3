//! `dataspace.v1.Exchange`: RequestAccess, Fetch, SubmitReceipt (the
//! publisher's side; the use cases are [`crate::exchange::access`] and
//! [`crate::exchange::serve`]).

use std::sync::Arc;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{NodeContext, admit_write, caller};
use crate::exchange::access::{Ask, Decided};
use crate::peer::AccessAsk;
use crate::wire::pb;

/// `dataspace.v1.Exchange`.
pub struct ExchangeService {
    node: Arc<NodeContext>,
}

impl ExchangeService {
    /// An Exchange service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::exchange_server::Exchange for ExchangeService {
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::FetchResponse>>, Status> {
        let who = caller(&request)?.identity.as_ref().clone();
        admit_write(&self.node, &who)?;
        let parts = self
            .node
            .publisher()
            .serve(&who, request.into_inner().into())
            .await?;
        let stream = ReceiverStream::new(parts)
            .map(|part| part.map(pb::FetchResponse::from).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_receipt(
        &self,
        request: Request<pb::SubmitReceiptRequest>,
    ) -> Result<Response<pb::SubmitReceiptResponse>, Status> {
        let who = caller(&request)?.identity.as_ref().clone();
        admit_write(&self.node, &who)?;
        let pb::SubmitReceiptRequest { receipt } = request.into_inner();
        let receipt = receipt.ok_or_else(|| Status::invalid_argument("no receipt"))?;
        let taken = self
            .node
            .publisher()
            .take_receipt(&who, receipt.into())
            .await?;
        Ok(Response::new(taken.into()))
    }

    async fn request_access(
        &self,
        request: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::RequestAccessResponse>, Status> {
        // Who is asking comes from the certificate, never from the request.
        let who = caller(&request)?.identity.clone();
        admit_write(&self.node, &who)?;
        let ask = Ask::try_from(&AccessAsk::from(request.into_inner()))?;
        match self.node.publisher().decide(&who, ask).await? {
            Decided::Granted { grant, .. } => Ok(Response::new(pb::RequestAccessResponse {
                grant: Some(grant.envelope().into()),
            })),
            Decided::Denied { reasons } => Err(Status::permission_denied(format!(
                "access denied: {}",
                reasons.join("; ")
            ))),
        }
    }
}
