//! The one place where domain errors become `tonic::Status`: bad input →
//! `InvalidArgument`, a refusal → `PermissionDenied` with the reason,
//! missing → `NotFound`, anything else → `Internal` with a generic message
//! and the detail in the log.

use tonic::Status;

use crate::ledger::LedgerError;
use crate::ledger::merkle::ProofError;

/// An internal failure: the caller gets a generic message, the log the
/// detail, so no internal paths or states leak to peers.
pub fn internal(context: &str, err: &dyn std::error::Error) -> Status {
    tracing::error!(context, error = %err, "internal error");
    Status::internal(format!(
        "internal error while {context}; see the node's log"
    ))
}

/// A ledger error as the caller should see it.
pub fn ledger(context: &str, err: LedgerError) -> Status {
    match err {
        LedgerError::Range(msg) => Status::invalid_argument(msg),
        LedgerError::Proof(ProofError::Range(msg)) => Status::invalid_argument(msg),
        LedgerError::Entry(e) => Status::invalid_argument(e.to_string()),
        LedgerError::Closed | LedgerError::Failed => {
            Status::unavailable(format!("{context}: {err}"))
        }
        other => internal(context, &other),
    }
}
