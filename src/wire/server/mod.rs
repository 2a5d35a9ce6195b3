//! The tonic services: one per `dataspace.v1` service, each converting
//! between protobuf messages and domain types and calling the node.
//!
//! Services: Peering (`Hello`, `ExchangeCheckpoints`), Admin (the node's
//! own operator), Catalog, Exchange (`RequestAccess`, `Fetch`,
//! `SubmitReceipt`), Ledger.

mod admin;
mod catalog;
mod exchange;
mod ledger;
mod peering;

pub use admin::AdminService;
pub use catalog::CatalogService;
pub use exchange::ExchangeService;
pub use ledger::LedgerService;
pub use peering::PeeringService;

use tonic::{Request, Status};

use crate::exchange::grant::{GrantError, GrantId};
use crate::runtime::tls::PeerConnectInfo;
use crate::service::NodeContext;

/// The software version every node reports.
pub const SOFTWARE_VERSION: &str = concat!("dsnode ", env!("CARGO_PKG_VERSION"));

/// Takes one call from `who`'s budget of calls that write to the ledger
/// (`[limits] peer_write_rate`), or refuses it `ResourceExhausted` with
/// when to retry.
fn admit_write(node: &NodeContext, who: &crate::identity::PeerIdentity) -> Result<(), Status> {
    node.limits
        .admit_write(&who.node_id, std::time::Instant::now())
        .map_err(|l| {
            node.metrics.peer_limited(l.limit);
            Status::from(l)
        })
}

/// The caller's verified identity; the authz layer has already refused
/// requests without one, so its absence here is an internal error.
fn caller<T>(req: &Request<T>) -> Result<&PeerConnectInfo, Status> {
    req.extensions()
        .get::<PeerConnectInfo>()
        .ok_or_else(|| Status::internal("no verified peer identity on this connection"))
}

/// A grant id from a request, checked at the edge.
fn grant_id(text: &str) -> Result<GrantId, Status> {
    text.parse()
        .map_err(|e: GrantError| Status::invalid_argument(e.to_string()))
}

/// The object `text` names (`s3://BUCKET/KEY`) in the node's object store
/// and a client for its bucket, for `doing` ("publishing from", "fetching
/// into"); refused, saying why, on a node without an object store.
fn object_in_store<'a>(
    node: &'a NodeContext,
    text: &str,
    doing: &str,
) -> Result<
    (
        &'a crate::dataset::s3::Buckets,
        crate::dataset::s3::ObjectUrl,
        crate::dataset::s3::Bucket,
    ),
    Status,
> {
    let url = crate::dataset::s3::ObjectUrl::parse(text)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let buckets = node.buckets.as_deref().ok_or_else(|| {
        Status::failed_precondition(format!(
            "{url}: this node has no object store; {doing} s3:// needs [storage] kind = \"s3\" in node.toml (its endpoint and credentials)"
        ))
    })?;
    let bucket = buckets
        .bucket(&url.bucket)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok((buckets, url, bucket))
}
