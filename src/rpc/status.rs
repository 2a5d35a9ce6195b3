//! The one place where domain errors become `tonic::Status`: bad input →
//! `InvalidArgument`, a policy refusal → `PermissionDenied` with reasons,
//! missing → `NotFound`, anything else → `Internal` with a generic message
//! and the detail in the log.

use tonic::Status;

/// An internal failure: the caller gets a generic message, the log the
/// detail, so no internal paths or states leak to peers.
pub fn internal(context: &str, err: &dyn std::error::Error) -> Status {
    tracing::error!(context, error = %err, "internal error");
    Status::internal(format!(
        "internal error while {context}; see the node's log"
    ))
}
