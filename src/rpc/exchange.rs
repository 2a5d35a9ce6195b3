//! `dataspace.v1.Exchange` (RequestAccess) and the Admin RPCs around
//! grants: RequestAccess (as the local node), ListGrants, RevokeGrant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::{NodeContext, caller, status};
use crate::dataset::DatasetId;
use crate::envelope::Envelope;
use crate::exchange::book::BookError;
use crate::exchange::grant::{Grant, GrantId};
use crate::ledger::entry::{EntryDraft, EntryKind};
use crate::pb;
use crate::policy::Action;
use crate::policy::eval::{AccessRequest, Decision, could_ever_grant, evaluate};

fn book_status(context: &str, e: BookError) -> Status {
    match e {
        BookError::Unknown(m) => Status::not_found(format!("this node has no grant {m}")),
        BookError::Grant(e) => Status::invalid_argument(e.to_string()),
        BookError::Ledger(e) => status::ledger(context, e),
        BookError::File(e) => status::internal(context, &e),
    }
}

/// Connects to another node as this node.
async fn connect_peer(
    node: &NodeContext,
    peer: &str,
) -> Result<crate::client::PeerChannel, Status> {
    crate::client::connect(
        node.client_tls.clone(),
        peer,
        crate::client::ClientSettings::default(),
    )
    .await
    .map_err(|e| Status::unavailable(e.to_string()))
}

/// A grant id from a request, checked at the edge.
fn grant_id(text: &str) -> Result<GrantId, Status> {
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
        let stream = fetch(self.node.clone(), who, request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_receipt(
        &self,
        request: Request<pb::SubmitReceiptRequest>,
    ) -> Result<Response<pb::SubmitReceiptResponse>, Status> {
        let who = caller(&request)?.identity.as_ref().clone();
        submit_receipt(&self.node, &who, request.into_inner())
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
        let now = OffsetDateTime::now_utc();
        let node = &self.node;
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
                let (grant, appended) = node
                    .grants
                    .issue(grant, &node.signing_key)
                    .await
                    .map_err(|e| book_status("issuing a grant", e))?;
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

/// Records a refused fetch (stolen, expired, revoked, used up) and returns
/// the status to answer with.
async fn refuse_fetch(
    node: &NodeContext,
    who: &crate::identity::PeerIdentity,
    grant: &Grant,
    why: String,
) -> Status {
    let mut draft = EntryDraft::new(EntryKind::AccessDenied);
    draft.parties = vec![node.identity.node_id.clone(), who.node_id.clone()];
    draft.dataset = Some(grant.dataset.to_string());
    draft.grant = Some(grant.id.to_string());
    draft.detail = format!("fetch refused: {why}").chars().take(2000).collect();
    if let Err(e) = node.ledger.append(draft).await {
        return status::ledger("recording a refused fetch", e);
    }
    tracing::info!(grant = %grant.id, by = %who.node_id, reason = %why, "fetch refused");
    Status::permission_denied(why)
}

/// Counts the ledger entries of `kind` naming `grant`, up to `cap`.
fn count_entries(
    node: &NodeContext,
    grant: &GrantId,
    kind: EntryKind,
    cap: usize,
) -> Result<usize, Status> {
    let size = node.ledger.latest().map_or(0, |c| c.checkpoint.size);
    let q = crate::ledger::Query {
        grant: Some(grant.to_string()),
        kind: Some(kind),
        ..Default::default()
    };
    let page = node
        .ledger
        .query(&q, None, cap.clamp(1, crate::ledger::MAX_PAGE), size)
        .map_err(|e| status::ledger("counting fetches", e))?;
    Ok(page.entries.len())
}

/// `Exchange.Fetch`: serves a dataset to the grantee of a valid,
/// unrevoked grant under its fetch count. The fetch is counted (a durable
/// `TransferStarted` entry) before any data flows; revocation is checked
/// again before every chunk.
pub(super) async fn fetch(
    node: Arc<NodeContext>,
    who: crate::identity::PeerIdentity,
    r: pb::FetchRequest,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<pb::FetchResponse, Status>>, Status> {
    let id = grant_id(&r.grant_id)?;
    let grant = node
        .grants
        .issued_grant(&id)
        .ok_or_else(|| Status::not_found(format!("no grant {id} issued by this node")))?;
    let g = grant.value().clone();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    if let Err(e) = g.check_use(&who.node_id, now_ms) {
        return Err(refuse_fetch(&node, &who, &g, e.to_string()).await);
    }
    if node
        .grants
        .is_revoked(&id)
        .map_err(|e| book_status("checking revocation", e))?
    {
        return Err(refuse_fetch(&node, &who, &g, format!("grant {id} is revoked")).await);
    }
    if let Some(max) = g.max_fetches {
        let used = count_entries(&node, &id, EntryKind::TransferStarted, max as usize + 1)?;
        if used >= max as usize {
            return Err(refuse_fetch(
                &node,
                &who,
                &g,
                format!("grant {id} allowed {max} fetch(es), all used"),
            )
            .await);
        }
    }
    let dataset = node.catalog.get(&g.dataset).ok_or_else(|| {
        Status::not_found(format!("dataset {} is no longer published here", g.dataset))
    })?;
    let started = g.entry(EntryKind::TransferStarted);
    let transfer = node
        .ledger
        .append(started)
        .await
        .map_err(|e| status::ledger("counting the fetch", e))?;

    // Two messages in flight at most: HTTP/2 flow control does the rest,
    // so a slow reader costs the server two chunks of memory.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let header = pb::FetchResponse {
        part: Some(pb::fetch_response::Part::Header(pb::FetchHeader {
            manifest: Some(dataset.manifest.envelope().into()),
            chunk_hashes: dataset.chunks.iter().map(|h| h.to_vec()).collect(),
            transfer_index: transfer.index,
        })),
    };
    tokio::spawn(async move {
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        for (index, hash) in dataset.chunks.iter().enumerate() {
            match node.grants.is_revoked(&id) {
                Ok(false) => {}
                Ok(true) => {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "grant {id} was revoked during the transfer"
                        ))))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(book_status("checking revocation", e))).await;
                    return;
                }
            }
            let blobs = node.blobs.clone();
            let h = *hash;
            let Ok(Ok(Some(chunk))) = tokio::task::spawn_blocking(move || blobs.get(&h)).await
            else {
                tracing::error!(dataset = %dataset.id, chunk = index, "chunk missing or corrupt on this node's disk");
                let _ = tx
                    .send(Err(Status::data_loss(format!(
                        "chunk {index} of dataset {} is missing or corrupt on the publisher's disk",
                        dataset.id
                    ))))
                    .await;
                return;
            };
            let msg = pb::FetchResponse {
                part: Some(pb::fetch_response::Part::Chunk(chunk)),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `Exchange.SubmitReceipt`: verifies the consumer's receipt against its
/// certificate and records it.
pub(super) async fn submit_receipt(
    node: &NodeContext,
    who: &crate::identity::PeerIdentity,
    r: pb::SubmitReceiptRequest,
) -> Result<pb::SubmitReceiptResponse, Status> {
    let env: Envelope = r
        .receipt
        .ok_or_else(|| Status::invalid_argument("no receipt"))?
        .into();
    let receipt = crate::exchange::receipt::verify_receipt(env, &who.public_key)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let rc = receipt.value();
    let grant = node
        .grants
        .issued_grant(&rc.grant)
        .ok_or_else(|| Status::not_found(format!("no grant {} issued by this node", rc.grant)))?;
    let g = grant.value();
    if g.grantee != who.node_id || g.dataset != rc.dataset {
        return Err(Status::invalid_argument(
            "the receipt does not match its grant",
        ));
    }
    let dataset = node
        .catalog
        .get(&g.dataset)
        .ok_or_else(|| Status::not_found("the dataset is no longer published here"))?;
    if dataset.manifest.value().content_sha256 != rc.content_sha256 {
        return Err(Status::invalid_argument(
            "the receipt's content hash is not the dataset's",
        ));
    }
    let mut draft = g.entry(EntryKind::ReceiptRecorded);
    draft.object_hash = Some(receipt.envelope().payload_hash());
    draft.detail = format!(
        "{} bytes received; transfer entry {}",
        rc.bytes, rc.transfer_index
    );
    let appended = node
        .ledger
        .append(draft)
        .await
        .map_err(|e| status::ledger("recording a receipt", e))?;
    Ok(pb::SubmitReceiptResponse {
        ledger_index: appended.index,
        checkpoint: appended.checkpoint.note.clone().into_bytes(),
    })
}

/// `Admin.Fetch`: the local node fetches with a held grant, verifies every
/// chunk, writes the output, then signs and submits a receipt.
pub(super) async fn fetch_as_node(
    node: &NodeContext,
    r: pb::AdminFetchRequest,
) -> Result<pb::AdminFetchResponse, Status> {
    use crate::exchange::transfer::{Incoming, TransferError};
    use tokio_stream::StreamExt;
    let id = grant_id(&r.grant_id)?;
    let held = node
        .grants
        .held_grant(&id)
        .ok_or_else(|| Status::not_found(format!("this node holds no grant {id}")))?;
    let g = held.grant.value().clone();
    let transfer_err = |e: TransferError| match e {
        TransferError::Output(m) => Status::failed_precondition(m),
        TransferError::File(e) => status::internal("writing the output", &e),
        TransferError::Blob(e) => status::internal("storing chunks", &e),
        other => Status::data_loss(other.to_string()),
    };
    crate::exchange::transfer::check_output(std::path::Path::new(&r.out), r.force)
        .map_err(transfer_err)?;
    let conn = connect_peer(node, &r.peer).await?;
    if conn.server.public_key != held.publisher_key {
        return Err(Status::failed_precondition(format!(
            "{} is node {}, not the publisher {} that issued grant {id}",
            r.peer, conn.server.node_id, g.publisher
        )));
    }
    let mut exchange = pb::exchange_client::ExchangeClient::new(conn.channel.clone())
        .max_decoding_message_size(
            crate::dataset::CHUNK_SIZE_RANGE.end().to_owned() as usize + (64 << 10),
        );
    let mut stream = exchange
        .fetch(pb::FetchRequest {
            grant_id: id.to_string(),
        })
        .await?
        .into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::data_loss("the publisher sent nothing"))??;
    let Some(pb::fetch_response::Part::Header(header)) = first.part else {
        return Err(Status::data_loss(
            "the publisher's stream does not start with its header",
        ));
    };
    let env: Envelope = header
        .manifest
        .ok_or_else(|| Status::data_loss("no manifest in the header"))?
        .into();
    let (dataset_id, manifest) = crate::dataset::verify_manifest(env, &held.publisher_key)
        .map_err(|e| Status::data_loss(format!("manifest NOT valid: {e}")))?;
    if dataset_id != g.dataset {
        return Err(Status::data_loss(
            "the publisher sent another dataset than the grant names",
        ));
    }
    let chunks = header
        .chunk_hashes
        .iter()
        .map(|h| crate::ledger::merkle::hash_from_slice(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::data_loss(format!("chunk list: {e}")))?;
    let mut incoming = Incoming::start(
        std::path::Path::new(&r.out),
        r.force,
        &manifest,
        chunks,
        &g,
        node.blobs.clone(),
    )
    .map_err(transfer_err)?;
    while let Some(msg) = stream.next().await {
        match msg?.part {
            Some(pb::fetch_response::Part::Chunk(bytes)) => {
                incoming.chunk(&bytes).map_err(transfer_err)?
            }
            _ => return Err(Status::data_loss("a second header in the stream")),
        }
    }
    let received = incoming.finish().map_err(transfer_err)?;
    node.grants
        .record_received(&g.dataset, &received.chunks)
        .map_err(|e| book_status("recording the received chunks", e))?;

    // Both sides record what was received.
    let mut completed = g.entry(EntryKind::TransferCompleted);
    completed.object_hash = Some(received.content_sha256);
    completed.detail = format!("{} bytes", received.bytes);
    node.ledger
        .append(completed)
        .await
        .map_err(|e| status::ledger("recording the transfer", e))?;
    let receipt = crate::exchange::receipt::Receipt {
        grant: id.clone(),
        dataset: g.dataset.clone(),
        content_sha256: received.content_sha256,
        bytes: received.bytes,
        received_at_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        consumer_checkpoint: node
            .ledger
            .latest()
            .map(|c| c.note.clone())
            .unwrap_or_default(),
        consumer: node.identity.node_id.clone(),
        transfer_index: header.transfer_index,
    };
    let envelope = receipt.sign(&node.signing_key);
    let answer = exchange
        .submit_receipt(pb::SubmitReceiptRequest {
            receipt: Some((&envelope).into()),
        })
        .await?
        .into_inner();
    let mut recorded = g.entry(EntryKind::ReceiptRecorded);
    recorded.object_hash = Some(envelope.payload_hash());
    recorded.detail = format!("publisher entry {}", answer.ledger_index);
    let own = node
        .ledger
        .append(recorded)
        .await
        .map_err(|e| status::ledger("recording the receipt", e))?;
    Ok(pb::AdminFetchResponse {
        dataset_id: g.dataset.to_string(),
        bytes: received.bytes,
        content_sha256: received.content_sha256.to_vec(),
        ledger_index: own.index,
        publisher_ledger_index: answer.ledger_index,
    })
}
