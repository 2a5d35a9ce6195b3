//! `dataspace.v1.Exchange` (RequestAccess) and the Admin RPCs around
//! grants: RequestAccess (as the local node), ListGrants, RevokeGrant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{NodeContext, caller};
use crate::dataset::DatasetId;
use crate::envelope::Envelope;
use crate::exchange::book::BookError;
use crate::exchange::grant::{Grant, GrantId};
use crate::ledger::entry::{EntryDraft, EntryKind};
use crate::policy::Action;
use crate::policy::eval::{AccessRequest, Decision, could_ever_grant, evaluate};
use crate::wire::pb;
use crate::wire::status;

pub(super) fn book_status(context: &str, e: BookError) -> Status {
    match e {
        BookError::Unknown(m) => Status::not_found(format!("this node has no grant {m}")),
        BookError::Grant(e) => Status::invalid_argument(e.to_string()),
        BookError::Ledger(e) => status::ledger(context, e),
        BookError::File(e) => status::internal(context, &e),
    }
}

/// Connects to another node as this node.
pub(super) async fn connect_peer(
    node: &NodeContext,
    peer: &str,
) -> Result<crate::wire::client::PeerChannel, Status> {
    crate::wire::client::connect(
        node.client_tls.current(),
        peer,
        crate::wire::client::ClientSettings::default(),
    )
    .await
    .map_err(|e| Status::unavailable(e.to_string()))
}

/// A grant id from a request, checked at the edge.
pub(super) fn grant_id(text: &str) -> Result<GrantId, Status> {
    text.parse()
        .map_err(|e: crate::exchange::grant::GrantError| Status::invalid_argument(e.to_string()))
}

fn parse_request(
    dataset_id: &str,
    purpose: &str,
    actions: &[String],
    duration_secs: u64,
) -> Result<(DatasetId, AccessRequest), Status> {
    let bad = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
    let id: DatasetId = dataset_id.parse().map_err(|e| bad(&e))?;
    let actions: BTreeSet<Action> = actions
        .iter()
        .map(|a| a.parse::<Action>().map_err(|e| bad(&e)))
        .collect::<Result<_, _>>()?;
    if actions.is_empty() {
        return Err(Status::invalid_argument(
            "name at least one action (read, derive, redistribute, aggregate)",
        ));
    }
    let purpose_ok = !purpose.is_empty()
        && purpose.len() <= 64
        && purpose.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !purpose_ok {
        return Err(Status::invalid_argument(format!(
            "purpose `{}` must be 1 to 64 characters of a-z, 0-9, '-', '_', '.'",
            purpose.chars().take(64).collect::<String>()
        )));
    }
    Ok((
        id,
        AccessRequest {
            actions,
            purpose: purpose.to_owned(),
            duration: (duration_secs != 0).then(|| Duration::from_secs(duration_secs)),
        },
    ))
}

/// `dataspace.v1.Exchange`: RequestAccess, Fetch, SubmitReceipt.
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
        let stream = super::transfer::serve(self.node.clone(), who, request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_receipt(
        &self,
        request: Request<pb::SubmitReceiptRequest>,
    ) -> Result<Response<pb::SubmitReceiptResponse>, Status> {
        let who = caller(&request)?.identity.as_ref().clone();
        super::transfer::submit_receipt(&self.node, &who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn request_access(
        &self,
        request: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::RequestAccessResponse>, Status> {
        // Who is asking comes from the certificate, never from the request.
        let who = caller(&request)?.identity.clone();
        let r = request.into_inner();
        let (id, access) = parse_request(&r.dataset_id, &r.purpose, &r.actions, r.duration_secs)?;
        let node = &self.node;
        let now = node.clock.now();
        let dataset = node
            .catalog
            .get(&id)
            .filter(|d| {
                could_ever_grant(&d.manifest.value().policy, &who, now)
                    || who.node_id == node.identity.node_id
            })
            .ok_or_else(|| Status::not_found(format!("no dataset {id} visible to you")))?;
        let policy = &dataset.manifest.value().policy;
        match evaluate(policy, &access, &who, now) {
            Decision::Permit(terms) => {
                let grant = Grant::from_terms(
                    GrantId::random().map_err(|e| status::internal("making a grant id", &e))?,
                    id,
                    dataset.manifest.envelope().payload_hash(),
                    node.identity.node_id.clone(),
                    who.node_id.clone(),
                    &terms,
                    policy.hash(),
                    now,
                );
                // In a task of its own: a caller that goes away cannot cut
                // issuing between the grant file and its ledger entry.
                let book = node.grants.clone();
                let key = node.signing_key.clone();
                let (grant, appended) = tokio::spawn(async move { book.issue(grant, &key).await })
                    .await
                    .map_err(|e| status::internal("issuing a grant", &e))?
                    .map_err(|e| book_status("issuing a grant", e))?;
                node.metrics.granted();
                tracing::info!(grant = %grant.value().id, to = %who.node_id, index = appended.index, "access granted");
                Ok(Response::new(pb::RequestAccessResponse {
                    grant: Some(grant.envelope().into()),
                }))
            }
            Decision::Deny(reasons) => {
                let sentence = reasons.join("; ");
                let mut draft = EntryDraft::new(EntryKind::AccessDenied);
                draft.parties = vec![node.identity.node_id.clone(), who.node_id.clone()];
                draft.dataset = Some(id.to_string());
                draft.detail = format!("purpose {}: {sentence}", access.purpose)
                    .chars()
                    .take(2000)
                    .collect();
                node.ledger
                    .append(draft)
                    .await
                    .map_err(|e| status::ledger("recording a denial", e))?;
                node.metrics.denied();
                tracing::info!(dataset = %id, to = %who.node_id, reasons = %sentence, "access denied");
                Err(Status::permission_denied(format!(
                    "access denied: {sentence}"
                )))
            }
        }
    }
}

/// `Admin.RequestAccess`: this node asks a publisher, verifies the grant
/// against the publisher's certificate, keeps it and records it.
pub(super) async fn request_as_node(
    node: &NodeContext,
    r: pb::AdminRequestAccessRequest,
) -> Result<pb::AdminRequestAccessResponse, Status> {
    let (id, access) = parse_request(&r.dataset_id, &r.purpose, &r.actions, r.duration_secs)?;
    let conn = connect_peer(node, &r.peer).await?;
    let publisher_key = conn.server.public_key;
    let answer = pb::exchange_client::ExchangeClient::new(conn.channel)
        .request_access(pb::RequestAccessRequest {
            dataset_id: id.to_string(),
            purpose: access.purpose.clone(),
            actions: access
                .actions
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            duration_secs: r.duration_secs,
        })
        .await?
        .into_inner();
    let envelope: Envelope = answer
        .grant
        .ok_or_else(|| Status::internal("the publisher answered without a grant"))?
        .into();
    let (held, appended) = node
        .grants
        .hold(envelope, publisher_key, &node.identity.node_id)
        .await
        .map_err(|e| book_status("keeping a grant", e))?;
    if held.grant.value().dataset != id {
        return Err(Status::internal(
            "the publisher granted another dataset than the one asked for",
        ));
    }
    Ok(pb::AdminRequestAccessResponse {
        grant: Some(held.grant.envelope().into()),
        ledger_index: appended.index,
    })
}

/// `Admin.ListGrants`.
pub(super) fn list(node: &NodeContext) -> Result<pb::ListGrantsResponse, Status> {
    let mut grants = Vec::new();
    for g in node.grants.issued() {
        let revoked = node
            .grants
            .is_revoked(&g.value().id)
            .map_err(|e| book_status("reading grants", e))?;
        grants.push(pb::GrantStatus {
            grant: Some(g.envelope().into()),
            revoked,
            issued: true,
        });
    }
    for h in node.grants.held() {
        grants.push(pb::GrantStatus {
            grant: Some(h.grant.envelope().into()),
            revoked: false,
            issued: false,
        });
    }
    Ok(pb::ListGrantsResponse { grants })
}

/// `Admin.RevokeGrant`.
pub(super) async fn revoke(
    node: &NodeContext,
    r: pb::RevokeGrantRequest,
) -> Result<pb::RevokeGrantResponse, Status> {
    let id = grant_id(&r.grant_id)?;
    let reason = if r.reason.is_empty() {
        "revoked by the publisher".to_owned()
    } else {
        r.reason
    };
    match node
        .grants
        .revoke(&id, &reason)
        .await
        .map_err(|e| book_status("revoking", e))?
    {
        Some(a) => Ok(pb::RevokeGrantResponse {
            ledger_index: a.index,
            already_revoked: false,
        }),
        None => Ok(pb::RevokeGrantResponse {
            ledger_index: 0,
            already_revoked: true,
        }),
    }
}
