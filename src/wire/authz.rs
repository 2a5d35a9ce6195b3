//! Authorization in one place: the role × RPC table, and the tower layer
//! that applies it to every request before any handler runs.
//!
//! The caller's identity comes only from its verified certificate (the
//! [`PeerConnectInfo`] request extension). A method missing from the table
//! is refused (fail closed); a test checks that every RPC of the
//! `dataspace.v1` descriptor has a row.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::identity::{NodeId, PeerIdentity, Role, RoleSet};
use crate::runtime::tls::PeerConnectInfo;

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any participant with a valid certificate.
    AnyParticipant,
    /// Callers whose certificate attests this role.
    Role(Role),
    /// Only this node itself (its own certificate: the local CLI), and only
    /// if its certificate attests the role, when one is given.
    OwnNode(Option<Role>),
}

/// The role × RPC table. Ledger reads are open to every participant here;
/// the Ledger service itself narrows non-auditors to entries that name them.
pub const RPC_ACCESS: &[(&str, Access)] = &[
    ("/dataspace.v1.Catalog/ListDatasets", Access::AnyParticipant),
    ("/dataspace.v1.Catalog/GetDataset", Access::AnyParticipant),
    (
        "/dataspace.v1.Exchange/RequestAccess",
        Access::Role(Role::Consumer),
    ),
    ("/dataspace.v1.Exchange/Fetch", Access::Role(Role::Consumer)),
    (
        "/dataspace.v1.Exchange/SubmitReceipt",
        Access::Role(Role::Consumer),
    ),
    ("/dataspace.v1.Ledger/GetCheckpoint", Access::AnyParticipant),
    ("/dataspace.v1.Ledger/QueryEntries", Access::AnyParticipant),
    ("/dataspace.v1.Ledger/GetEntries", Access::AnyParticipant),
    (
        "/dataspace.v1.Ledger/ProveInclusion",
        Access::AnyParticipant,
    ),
    (
        "/dataspace.v1.Ledger/ProveConsistency",
        Access::AnyParticipant,
    ),
    (
        "/dataspace.v1.Ledger/GetEvidence",
        Access::Role(Role::Auditor),
    ),
    ("/dataspace.v1.Peering/Hello", Access::AnyParticipant),
    (
        "/dataspace.v1.Peering/ExchangeCheckpoints",
        Access::AnyParticipant,
    ),
    (
        "/dataspace.v1.Admin/Publish",
        Access::OwnNode(Some(Role::Publisher)),
    ),
    (
        "/dataspace.v1.Admin/RevokeGrant",
        Access::OwnNode(Some(Role::Publisher)),
    ),
    (
        "/dataspace.v1.Admin/RequestAccess",
        Access::OwnNode(Some(Role::Consumer)),
    ),
    (
        "/dataspace.v1.Admin/Fetch",
        Access::OwnNode(Some(Role::Consumer)),
    ),
    ("/dataspace.v1.Admin/ListGrants", Access::OwnNode(None)),
    ("/dataspace.v1.Admin/Status", Access::OwnNode(None)),
    ("/dataspace.v1.Admin/Witness", Access::OwnNode(None)),
    (
        "/dataspace.v1.Admin/ResendReceipts",
        Access::OwnNode(Some(Role::Consumer)),
    ),
    (
        "/dataspace.v1.Admin/AuditStorage",
        Access::OwnNode(Some(Role::Publisher)),
    ),
];

/// Standard services every participant may use.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The access rule for a gRPC path, if it has one.
pub fn access_for(path: &str) -> Option<Access> {
    if OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
        return Some(Access::AnyParticipant);
    }
    RPC_ACCESS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// Why a call is refused: the sentence returned with `PermissionDenied`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No row of the table names the method.
    #[error("{method} is not a method this node serves to anyone")]
    UnknownMethod {
        /// The method (`package.Service/Method`).
        method: String,
    },
    /// The caller's certificate does not attest the role the method needs.
    #[error("{method} requires the {role} role; the certificate of {caller} attests roles {roles}")]
    LacksRole {
        /// The method.
        method: String,
        /// The role it needs.
        role: Role,
        /// The caller.
        caller: NodeId,
        /// The roles its certificate attests.
        roles: RoleSet,
    },
    /// The method is for the node's own operator, and the caller is
    /// another node.
    #[error(
        "{method} is for this node's own operator only (the node's own certificate, {own}); caller is {caller} with roles {roles}"
    )]
    NotOwnNode {
        /// The method.
        method: String,
        /// This node.
        own: NodeId,
        /// The caller.
        caller: NodeId,
        /// The roles its certificate attests.
        roles: RoleSet,
    },
    /// The connection carries no verified client certificate.
    #[error("the connection carries no verified client certificate")]
    NoCertificate,
}

/// Decides whether `caller` may call `path` on the node `own`.
pub fn authorize(path: &str, caller: &PeerIdentity, own: &NodeId) -> Result<(), Refusal> {
    let method = path.trim_start_matches('/').to_owned();
    let Some(access) = access_for(path) else {
        return Err(Refusal::UnknownMethod { method });
    };
    let lacks = |role: Role| Refusal::LacksRole {
        method: method.clone(),
        role,
        caller: caller.node_id.clone(),
        roles: caller.roles.clone(),
    };
    match access {
        Access::AnyParticipant => Ok(()),
        Access::Role(role) if caller.has_role(role) => Ok(()),
        Access::Role(role) => Err(lacks(role)),
        Access::OwnNode(_) if caller.node_id != *own => Err(Refusal::NotOwnNode {
            method: method.clone(),
            own: own.clone(),
            caller: caller.node_id.clone(),
            roles: caller.roles.clone(),
        }),
        Access::OwnNode(Some(role)) if !caller.has_role(role) => Err(lacks(role)),
        Access::OwnNode(_) => Ok(()),
    }
}

/// Tower layer applying [`authorize`] to every request.
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    own: NodeId,
}

impl AuthzLayer {
    /// Authorizes calls to the node `own`.
    pub fn new(own: NodeId) -> Self {
        Self { own }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            own: self.own.clone(),
        }
    }
}

/// The service [`AuthzLayer`] makes.
#[derive(Clone, Debug)]
pub struct Authz<S> {
    inner: S,
    own: NodeId,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let info = req.extensions().get::<PeerConnectInfo>();
        // A connection a limit refused answers every call with the limit.
        if let Some(why) = info.and_then(|i| i.refused.clone()) {
            let response = tonic::Status::resource_exhausted(why.to_string()).into_http::<RB>();
            return Box::pin(async move { Ok(response) });
        }
        let decision = match info {
            Some(info) => authorize(path, &info.identity, &self.own),
            None => Err(Refusal::NoCertificate),
        };
        if let Err(reason) = decision {
            tracing::info!(path, %reason, "call refused");
            let response = tonic::Status::permission_denied(reason.to_string()).into_http::<RB>();
            return Box::pin(async move { Ok(response) });
        }
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &str, key: u8) -> PeerIdentity {
        let public_key = [key; 32];
        PeerIdentity {
            node_id: NodeId::from_public_key(&public_key),
            public_key,
            participant: "acme".parse().expect("participant"),
            roles: RoleSet::parse_list(roles).expect("roles"),
            region: None,
            serial: vec![1],
            not_after: 0,
        }
    }

    /// Every RPC the proto declares has a row, so none is open by omission.
    #[test]
    fn every_declared_rpc_has_a_row() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(crate::wire::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptor");
        let mut declared = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    declared.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert_eq!(declared.len(), RPC_ACCESS.len());
        for path in &declared {
            assert!(
                RPC_ACCESS.iter().any(|(p, _)| p == path),
                "{path} has no row"
            );
        }
    }

    #[test]
    fn refusals_name_the_missing_role() {
        let own = caller("publisher", 1);
        let auditor = caller("auditor", 2);
        let err = authorize("/dataspace.v1.Exchange/Fetch", &auditor, &own.node_id)
            .expect_err("auditor cannot fetch");
        assert!(
            err.to_string().contains("requires the consumer role"),
            "{err}"
        );
        let err = authorize("/dataspace.v1.Admin/Publish", &auditor, &own.node_id)
            .expect_err("auditor cannot publish");
        assert!(err.to_string().contains("own operator only"), "{err}");
        assert!(authorize("/dataspace.v1.Admin/Publish", &own, &own.node_id).is_ok());
        let err = authorize("/x.Y/Z", &own, &own.node_id).expect_err("unknown");
        assert!(err.to_string().contains("not a method"), "{err}");
    }
}
