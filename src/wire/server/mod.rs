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
