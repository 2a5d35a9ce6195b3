//! `dataspace.v1.Catalog` and `Admin.Publish`: the edge between protobuf
//! and the dataset domain.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{NodeContext, caller};
use crate::dataset::catalog::{Dataset, PublishError, PublishRequest};
use crate::dataset::{DEFAULT_CHUNK_SIZE, DatasetId, Derivation};
use crate::exchange::access::AccessError;
use crate::policy::{Classification, Policy};
use crate::wire::pb;

/// Default and largest catalog page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn entry(d: &Dataset) -> pb::CatalogEntry {
    pb::CatalogEntry {
        dataset_id: d.id.to_string(),
        manifest: Some(d.manifest.envelope().into()),
    }
}

/// `dataspace.v1.Catalog`.
pub struct CatalogService {
    node: Arc<NodeContext>,
}

impl CatalogService {
    /// A Catalog service for `node`.
    pub fn new(node: Arc<NodeContext>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn list_datasets(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let req = request.into_inner();
        let limit = match req.limit as usize {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is above the page cap of {MAX_PAGE}"
                )));
            }
        };
        let classification: Option<Classification> = match req.classification.as_str() {
            "" => None,
            c => Some(c.parse().map_err(|e: crate::policy::PolicyError| {
                Status::invalid_argument(e.to_string())
            })?),
        };
        let after: Option<DatasetId> = match req.page_token.as_str() {
            "" => None,
            t => Some(
                t.parse()
                    .map_err(|_| Status::invalid_argument("invalid page token"))?,
            ),
        };
        if !req.publisher.is_empty() && req.publisher != self.node.identity.node_id.as_str() {
            return Ok(Response::new(pb::ListDatasetsResponse::default()));
        }
        let text = req.text.to_lowercase();
        let now = self.node.clock.now();
        let mut datasets = Vec::new();
        let mut next_page_token = String::new();
        let publisher = self.node.publisher();
        self.node.catalog.scan_after(after.as_ref(), |d| {
            let m = d.manifest.value();
            let matches = classification.is_none_or(|c| m.classification == c)
                && (text.is_empty()
                    || m.title.to_lowercase().contains(&text)
                    || m.description.to_lowercase().contains(&text));
            if !matches || !publisher.visible(&who, d, now) {
                return std::ops::ControlFlow::Continue(());
            }
            if datasets.len() == limit {
                next_page_token = datasets
                    .last()
                    .map(|e: &pb::CatalogEntry| e.dataset_id.clone())
                    .unwrap_or_default();
                return std::ops::ControlFlow::Break(());
            }
            datasets.push(entry(d));
            std::ops::ControlFlow::Continue(())
        });
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets,
            next_page_token,
        }))
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::GetDatasetResponse>, Status> {
        let who = caller(&request)?.identity.clone();
        let id: DatasetId = request
            .get_ref()
            .dataset_id
            .parse()
            .map_err(|e: crate::dataset::DatasetError| Status::invalid_argument(e.to_string()))?;
        let now = self.node.clock.now();
        // Missing and hidden look the same.
        let d = self
            .node
            .catalog
            .get(&id)
            .filter(|d| self.node.publisher().visible(&who, d, now))
            .ok_or_else(|| Status::from(AccessError::NotVisible(id.clone())))?;
        Ok(Response::new(pb::GetDatasetResponse {
            dataset: Some(entry(&d)),
        }))
    }
}

/// Turns a publish header into a domain request, checking every field.
fn publish_request(h: pb::PublishHeader) -> Result<(PublishRequest, u64), Status> {
    let pb::PublishHeader {
        title,
        description,
        media_type,
        policy_toml,
        derived_from,
        supersedes,
        chunk_size,
        size,
        source: _,
    } = h;
    let bad = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
    let policy = Policy::from_toml(&policy_toml).map_err(|e| bad(&e))?;
    let derived_from = derived_from
        .into_iter()
        .map(|d| {
            Ok(Derivation {
                dataset: d.dataset_id.parse().map_err(|e| bad(&e))?,
                grant: d.grant_id,
            })
        })
        .collect::<Result<_, Status>>()?;
    let supersedes = match supersedes.as_str() {
        "" => None,
        s => Some(s.parse().map_err(|e| bad(&e))?),
    };
    Ok((
        PublishRequest {
            title,
            description,
            media_type: if media_type.is_empty() {
                "application/octet-stream".into()
            } else {
                media_type
            },
            policy,
            derived_from,
            supersedes,
            chunk_size: if chunk_size == 0 {
                DEFAULT_CHUNK_SIZE
            } else {
                chunk_size
            },
        },
        size,
    ))
}

/// `Admin.Publish`: the header checked at the edge, then the content
/// streamed into the publication ([`crate::dataset::publish`]).
pub(super) async fn publish(
    node: &NodeContext,
    mut stream: Streaming<pb::PublishRequest>,
) -> Result<pb::PublishResponse, Status> {
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty publish stream: expected a header"))??;
    let Some(pb::publish_request::Part::Header(header)) = first.part else {
        return Err(Status::invalid_argument(
            "a publish stream starts with its header",
        ));
    };
    let source = header.source.clone();
    let (request, announced) = publish_request(header)?;
    if !source.is_empty() {
        return publish_object(node, request, announced, &source, stream).await;
    }
    let pieces = stream.map(|msg| match msg {
        Ok(pb::PublishRequest {
            part: Some(pb::publish_request::Part::Data(bytes)),
        }) => Ok(bytes),
        Ok(_) => Err(PublishError::Content(
            "a publish stream has one header, then data".into(),
        )),
        Err(s) => Err(PublishError::Interrupted(s.message().to_owned())),
    });
    let published = node
        .publishing()
        .publish(request, announced, pieces)
        .await?;
    Ok(published_response(published))
}

fn published_response(
    (dataset, appended): (
        std::sync::Arc<crate::dataset::catalog::Dataset>,
        crate::ledger::Appended,
    ),
) -> pb::PublishResponse {
    pb::PublishResponse {
        dataset_id: dataset.id.to_string(),
        manifest: Some(dataset.manifest.envelope().into()),
        ledger_index: appended.index,
        checkpoint: appended.checkpoint.note.clone().into_bytes(),
        size: dataset.manifest.value().size,
    }
}

/// `Admin.Publish` of an object already in the node's object store: the
/// node reads it once, streamed; the caller's stream must end after the
/// header. The object's size is checked against what the read carries
/// (and against `announced`, if the caller stated one).
async fn publish_object(
    node: &NodeContext,
    request: PublishRequest,
    announced: u64,
    source: &str,
    mut stream: Streaming<pb::PublishRequest>,
) -> Result<pb::PublishResponse, Status> {
    let (_, url, bucket) = super::object_in_store(node, source, "publishing from")?;
    if stream.next().await.is_some() {
        return Err(Status::invalid_argument(
            "a publish of an object (header.source) carries no data after its header",
        ));
    }
    // Asked now for a quick answer (no such object, refused credentials);
    // the object is read once the publication has its turn (publications
    // run one at a time), in one GET.
    let reading = format!("reading {url}");
    let size = bucket
        .size(&url.key)
        .await
        .map_err(|e| crate::wire::status::object(&reading, &e))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "{reading}: bucket `{}` has no object `{}`",
                url.bucket, url.key
            ))
        })?;
    if announced != 0 && announced != size {
        return Err(Status::failed_precondition(format!(
            "{url} is {size} bytes, not the {announced} the request states"
        )));
    }
    let failed = move |e: crate::dataset::s3::ObjectError| PublishError::Store {
        context: "reading the object to publish",
        source: Box::new(crate::dataset::blob::BlobError::Object(e)),
    };
    let key = url.key.clone();
    let opened = futures_util::stream::once(async move {
        match bucket.read(&key).await {
            Ok((_, pieces)) => futures_util::future::Either::Left(pieces),
            Err(e) => futures_util::future::Either::Right(tokio_stream::once(Err(e))),
        }
    });
    let pieces = Box::pin(
        futures_util::StreamExt::flatten(opened)
            .map(move |piece| piece.map(|b| b.to_vec()).map_err(failed)),
    );
    let published = node.publishing().publish(request, size, pieces).await?;
    tracing::info!(source = %url, dataset = %published.0.id, "published an object");
    Ok(published_response(published))
}
