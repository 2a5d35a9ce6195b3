//! The one place where domain errors become `tonic::Status`: bad input →
//! `InvalidArgument`, a refusal → `PermissionDenied` with the reason,
//! missing → `NotFound`, anything else → `Internal` with a generic message
//! and the detail in the log.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::ledger::LedgerError;
use crate::ledger::merkle::ProofError;
use crate::peer::{Code as PeerCode, PeerError, ShownCheckpoint};
use crate::witness::protocol::ExchangeError;

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

/// Metadata key naming the log a witness refused (a fork, or a checkpoint
/// older than one it saw).
pub const SHOWN_ORIGIN: &str = "dsnode-fork-origin";
/// Binary metadata key carrying the checkpoint of that log the witness
/// holds, so the log's node can check the claim against its store.
pub const SHOWN_NOTE: &str = "dsnode-fork-seen-bin";

/// Adds a checkpoint a witness shows with its refusal to `status`.
fn with_shown(mut status: Status, shown: Option<&ShownCheckpoint>) -> Status {
    if let Some(shown) = shown {
        if let Ok(v) = MetadataValue::try_from(shown.origin.as_str()) {
            status.metadata_mut().insert(SHOWN_ORIGIN, v);
        }
        status
            .metadata_mut()
            .insert_bin(SHOWN_NOTE, MetadataValue::from_bytes(&shown.note));
    }
    status
}

impl From<ExchangeError> for Status {
    fn from(e: ExchangeError) -> Self {
        let shown = e.shown();
        match e {
            ExchangeError::BadOffer(m) => Status::invalid_argument(m),
            ExchangeError::BadAnswer(m) => Status::data_loss(m),
            e @ (ExchangeError::Fork { .. } | ExchangeError::Stale { .. }) => {
                with_shown(Status::failed_precondition(e.to_string()), shown.as_ref())
            }
            e @ ExchangeError::NoCheckpoint => Status::unavailable(e.to_string()),
            ExchangeError::Unable(m) => Status::failed_precondition(m),
            ExchangeError::Peer(e) => e.into(),
            ExchangeError::Ledger { context, source } => ledger(context, source),
            ExchangeError::Internal { context, source } => internal(context, &*source),
        }
    }
}

impl From<PeerError> for Status {
    /// A peer's answer passed on as it was given.
    fn from(e: PeerError) -> Self {
        with_shown(Status::new(code(e.code), e.message), e.shown.as_ref())
    }
}

impl From<Status> for PeerError {
    fn from(s: Status) -> Self {
        let shown = s
            .metadata()
            .get(SHOWN_ORIGIN)
            .and_then(|o| o.to_str().ok())
            .zip(
                s.metadata()
                    .get_bin(SHOWN_NOTE)
                    .and_then(|n| n.to_bytes().ok()),
            )
            .map(|(origin, note)| ShownCheckpoint {
                origin: origin.to_owned(),
                note: note.to_vec(),
            });
        PeerError {
            code: peer_code(s.code()),
            message: s.message().to_owned(),
            shown,
        }
    }
}

/// The gRPC code of a peer failure class.
fn code(c: PeerCode) -> Code {
    match c {
        PeerCode::Cancelled => Code::Cancelled,
        PeerCode::Unknown => Code::Unknown,
        PeerCode::InvalidArgument => Code::InvalidArgument,
        PeerCode::DeadlineExceeded => Code::DeadlineExceeded,
        PeerCode::NotFound => Code::NotFound,
        PeerCode::AlreadyExists => Code::AlreadyExists,
        PeerCode::PermissionDenied => Code::PermissionDenied,
        PeerCode::ResourceExhausted => Code::ResourceExhausted,
        PeerCode::FailedPrecondition => Code::FailedPrecondition,
        PeerCode::Aborted => Code::Aborted,
        PeerCode::OutOfRange => Code::OutOfRange,
        PeerCode::Unimplemented => Code::Unimplemented,
        PeerCode::Internal => Code::Internal,
        PeerCode::Unavailable => Code::Unavailable,
        PeerCode::DataLoss => Code::DataLoss,
        PeerCode::Unauthenticated => Code::Unauthenticated,
    }
}

/// The failure class of a gRPC code (`Ok` on a failed call is `Unknown`).
fn peer_code(c: Code) -> PeerCode {
    match c {
        Code::Cancelled => PeerCode::Cancelled,
        Code::Ok | Code::Unknown => PeerCode::Unknown,
        Code::InvalidArgument => PeerCode::InvalidArgument,
        Code::DeadlineExceeded => PeerCode::DeadlineExceeded,
        Code::NotFound => PeerCode::NotFound,
        Code::AlreadyExists => PeerCode::AlreadyExists,
        Code::PermissionDenied => PeerCode::PermissionDenied,
        Code::ResourceExhausted => PeerCode::ResourceExhausted,
        Code::FailedPrecondition => PeerCode::FailedPrecondition,
        Code::Aborted => PeerCode::Aborted,
        Code::OutOfRange => PeerCode::OutOfRange,
        Code::Unimplemented => PeerCode::Unimplemented,
        Code::Internal => PeerCode::Internal,
        Code::Unavailable => PeerCode::Unavailable,
        Code::DataLoss => PeerCode::DataLoss,
        Code::Unauthenticated => PeerCode::Unauthenticated,
    }
}
