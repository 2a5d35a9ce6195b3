//! `dataspace.v1.Admin`: the node's own operator (the authz layer admits
//! only this node's certificate).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{NodeContext, SOFTWARE_VERSION, catalog, grant_id, object_in_store};
use crate::exchange::fetch::{FetchOrder, MAX_STREAMS, Progress, default_streams};
use crate::exchange::transfer::{ObjectOutput, Output};
use crate::service::{GrantCursor, GrantFilter, GrantState};
use crate::wire::{pb, status};

/// Grants in a `ListGrants` page unless the caller asks for fewer.
const GRANTS_PAGE: usize = 500;
/// Grants in a `ListGrants` page at most (about 600 bytes each).
const MAX_GRANTS_PAGE: usize = 1000;

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
        let pb::AdminRequestAccessRequest {
            peer,
            dataset_id,
            purpose,
            actions,
            duration_secs,
        } = request.into_inner();
        let ask = crate::peer::AccessAsk {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        };
        let (held, ledger_index) = self.node.request_access_as_node(&peer, &ask).await?;
        Ok(Response::new(pb::AdminRequestAccessResponse {
            grant: Some(held.grant.envelope().into()),
            ledger_index,
        }))
    }

    /// Runs the fetch in its own task and streams its progress, then its
    /// result. If the caller goes away the fetch stops; what it verified
    /// is kept for a resume.
    async fn fetch(
        &self,
        request: Request<pb::AdminFetchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::AdminFetchEvent>>, Status> {
        let pb::AdminFetchRequest {
            peer,
            grant_id: grant,
            out,
            force,
            retries,
            streams,
            verify_sha256,
        } = request.into_inner();
        if streams > MAX_STREAMS {
            return Err(Status::invalid_argument(format!(
                "streams: at most {MAX_STREAMS}, not {streams}"
            )));
        }
        let out = if crate::dataset::s3::ObjectUrl::is_url(&out) {
            let (buckets, url, bucket) = object_in_store(&self.node, &out, "fetching into")?;
            if buckets.owns(&url) {
                return Err(Status::invalid_argument(format!(
                    "{url} is among the node's own chunk objects, which it may remove: put the output elsewhere"
                )));
            }
            Output::Object(ObjectOutput { bucket, url })
        } else {
            Output::File(out.into())
        };
        let order = FetchOrder {
            grant: grant_id(&grant)?,
            peer,
            out,
            force,
            retries,
            streams: if streams == 0 {
                default_streams()
            } else {
                streams as usize
            },
            verify_sha256,
        };
        let (tx, rx) = mpsc::channel(8);
        let (progress_tx, mut progress_rx) = mpsc::channel(8);
        let node = self.node.clone();
        tokio::spawn(async move {
            let progress = Arc::new(Progress::new(progress_tx));
            let fetching = node.fetch_as_node(order, progress);
            tokio::pin!(fetching);
            // Progress is passed on until the fetch ends; the caller going
            // away closes the progress channel, which stops the fetch.
            let mut gone = false;
            let result = loop {
                tokio::select! {
                    result = &mut fetching => break result,
                    Some(p) = progress_rx.recv() => {
                        let event = pb::AdminFetchEvent {
                            event: Some(pb::admin_fetch_event::Event::Progress(p.into())),
                        };
                        let _ = tx.try_send(Ok(event));
                    }
                    () = tx.closed(), if !gone => {
                        gone = true;
                        progress_rx.close();
                    }
                }
            };
            let event = result
                .map(|done| pb::AdminFetchEvent {
                    event: Some(pb::admin_fetch_event::Event::Done(done.into())),
                })
                .map_err(Status::from);
            let _ = tx.send(event).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.limit as usize {
            0 => GRANTS_PAGE,
            n if n <= MAX_GRANTS_PAGE => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is above the page cap of {MAX_GRANTS_PAGE}"
                )));
            }
        };
        let from: GrantCursor = req.page_token.parse().map_err(Status::invalid_argument)?;
        let filter = GrantFilter {
            dataset: match req.dataset_id.as_str() {
                "" => None,
                d => Some(d.parse().map_err(|e: crate::dataset::DatasetError| {
                    Status::invalid_argument(e.to_string())
                })?),
            },
            grantee: match req.grantee.as_str() {
                "" => None,
                n => Some(n.parse().map_err(|e: crate::identity::IdError| {
                    Status::invalid_argument(format!("grantee: {e}"))
                })?),
            },
            state: match pb::GrantState::try_from(req.state) {
                Ok(pb::GrantState::Unspecified) => None,
                Ok(pb::GrantState::Issued) => Some(GrantState::Issued),
                Ok(pb::GrantState::Revoked) => Some(GrantState::Revoked),
                Ok(pb::GrantState::Held) => Some(GrantState::Held),
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown grant state {}: expected 0 (any), 1 (issued), 2 (revoked) or 3 (held)",
                        req.state
                    )));
                }
            },
        };
        // A page reads and verifies up to GRANT_SCAN grants not yet in
        // memory: off the async workers.
        let node = self.node.clone();
        let (grants, next) =
            tokio::task::spawn_blocking(move || node.grants_page(&filter, &from, limit))
                .await
                .map_err(|e| status::internal("reading grants", &e))?
                .map_err(|e| status::book("reading grants", e))?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants
                .into_iter()
                .map(|g| pb::GrantStatus {
                    grant: Some((&g.grant).into()),
                    revoked: g.revoked,
                    issued: g.issued,
                })
                .collect(),
            next_page_token: next.map(|c| c.token()).unwrap_or_default(),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let pb::RevokeGrantRequest {
            grant_id: id,
            reason,
        } = request.into_inner();
        let revoked = self
            .node
            .revoke(&grant_id(&id)?, &reason)
            .await
            .map_err(|e| status::book("revoking", e))?;
        Ok(Response::new(pb::RevokeGrantResponse {
            ledger_index: revoked.unwrap_or(0),
            already_revoked: revoked.is_none(),
        }))
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
        let pb::AdminResendReceiptsRequest { peer, grant_id: id } = request.into_inner();
        let (kept, resent) = self.node.resend_receipts(&grant_id(&id)?, &peer).await?;
        Ok(Response::new(pb::AdminResendReceiptsResponse {
            kept,
            resent: resent
                .into_iter()
                .map(|r| pb::ResentReceipt {
                    transfer_index: r.transfer_index,
                    ledger_index: r.ledger_index,
                    publisher_ledger_index: r.publisher_ledger_index,
                })
                .collect(),
        }))
    }

    async fn audit_storage(
        &self,
        _request: Request<pb::AuditStorageRequest>,
    ) -> Result<Response<pb::AuditStorageResponse>, Status> {
        let audit = self.node.audit_storage().await;
        Ok(Response::new(pb::AuditStorageResponse {
            store: audit.store,
            datasets: audit.datasets,
            chunks: audit.chunks,
            bytes: audit.bytes,
            damaged: audit
                .damaged
                .into_iter()
                .map(|d| pb::DamagedChunk {
                    dataset_id: d.dataset,
                    chunk_index: d.index,
                    chunk_sha256: data_encoding::HEXLOWER.encode(&d.hash),
                    problem: d.problem,
                })
                .collect(),
        }))
    }

    async fn witness(
        &self,
        request: Request<pb::AdminWitnessRequest>,
    ) -> Result<Response<pb::AdminWitnessResponse>, Status> {
        let pb::AdminWitnessRequest { peer } = request.into_inner();
        let done = self.node.exchange_checkpoints_with(&peer).await?;
        Ok(Response::new(pb::AdminWitnessResponse {
            peer_node_id: done.peer.to_string(),
            peer_size: done.peer_size,
            peer_grew: done.peer_grew,
            cosigned_by_peer: done.cosigned_by_peer,
        }))
    }
}
