//! The one place where domain errors become `tonic::Status`: bad input →
//! `InvalidArgument`, a refusal → `PermissionDenied` with the reason,
//! missing → `NotFound`, anything else → `Internal` with a generic message
//! and the detail in the log.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::dataset::catalog::PublishError;
use crate::exchange::access::AccessError;
use crate::exchange::book::BookError;
use crate::exchange::fetch::FetchError;
use crate::exchange::serve::ServeError;
use crate::ledger::LedgerError;
use crate::ledger::merkle::ProofError;
use crate::peer::{Code as PeerCode, PeerError, ShownCheckpoint};
use crate::service::ledger::ReadError;
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
        LedgerError::Closed | LedgerError::Failed | LedgerError::Reopening => {
            Status::unavailable(format!("{context}: {err}"))
        }
        LedgerError::Full => Status::resource_exhausted(format!("{context}: {err}")),
        // The caller's answer says what happened; the path and errno stay
        // in the log. The batch may have reached the disk before the
        // failure: the request was not completed, whatever the store holds.
        e @ LedgerError::CommitFailed(_) if e.is_storage_full() => {
            tracing::error!(context, error = %e, "storage full");
            Status::resource_exhausted(format!(
                "{context}: this node's storage is full; the request was not completed. Retry once space is freed: the node takes it again by itself"
            ))
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
        // A status with a source was made on this side (the call broke
        // off); one the node answered has none.
        let cause = std::error::Error::source(&s).map(|_| crate::wire::client::deepest_cause(&s));
        PeerError {
            code: peer_code(s.code()),
            // A hostile node's message is shown to this node's operator:
            // never raw control characters, never megabytes.
            message: crate::text::shown_at_most(s.message(), crate::text::MESSAGE_MAX).to_string(),
            shown,
            cause,
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

/// A grant-book error, while doing `context`.
pub fn book(context: &str, e: BookError) -> Status {
    match e {
        BookError::Unknown(m) => Status::not_found(format!("this node has no grant {m}")),
        BookError::Grant(e) => Status::invalid_argument(e.to_string()),
        BookError::Ledger(e) => ledger(context, e),
        BookError::File(e) => internal(context, &e),
    }
}

impl From<AccessError> for Status {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::BadRequest(m) => Status::invalid_argument(m),
            e @ AccessError::NotVisible(_) => Status::not_found(e.to_string()),
            e @ AccessError::OtherDataset => Status::internal(e.to_string()),
            AccessError::Book { context, source } => book(context, source),
            AccessError::Ledger { context, source } => ledger(context, source),
            AccessError::Internal { context, source } => internal(context, &*source),
            AccessError::Peer(e) => e.into(),
            AccessError::Limited(l) => l.into(),
        }
    }
}

/// Metadata key: milliseconds after which a call refused by a rate limit
/// may succeed.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl From<crate::exchange::limits::Limited> for Status {
    fn from(l: crate::exchange::limits::Limited) -> Self {
        let mut status = Status::resource_exhausted(l.message);
        if let Some(wait) = l.retry_after {
            let ms = wait.as_millis().max(1).to_string();
            if let Ok(v) = MetadataValue::try_from(ms.as_str()) {
                status.metadata_mut().insert(RETRY_AFTER_MS, v);
            }
        }
        status
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::BadRequest(m) => Status::invalid_argument(m),
            ServeError::NotFound(m) => Status::not_found(m),
            ServeError::Refused(m) => Status::permission_denied(m),
            e @ ServeError::MissingChunk { .. } => Status::data_loss(e.to_string()),
            e @ ServeError::StoreUnavailable => Status::unavailable(e.to_string()),
            ServeError::Book { context, source } => book(context, source),
            ServeError::Ledger { context, source } => ledger(context, source),
            e @ ServeError::NoCheckpoint => Status::internal(e.to_string()),
            e @ ServeError::ConsumerCheckpoint(_) => Status::invalid_argument(e.to_string()),
            ServeError::Limited(l) => l.into(),
        }
    }
}

impl From<FetchError> for Status {
    /// Local failures are `FailedPrecondition` (retrying over the network
    /// cannot fix them); what the publisher sent that does not verify is
    /// `DataLoss`; the publisher's own answers pass as they were given.
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::BadRequest(m) => Status::invalid_argument(m),
            e @ FetchError::NoGrant(_) => Status::not_found(e.to_string()),
            FetchError::Precondition(m) | FetchError::Local(m) => Status::failed_precondition(m),
            FetchError::BadAnswer(m) => Status::data_loss(m),
            e @ FetchError::Idle => Status::unavailable(e.to_string()),
            e @ FetchError::CallerGone => Status::cancelled(e.to_string()),
            FetchError::Peer(e) => e.into(),
            e @ FetchError::Interrupted { .. } => Status::unavailable(e.to_string()),
            FetchError::Retried { cause, retries } => {
                let s = Status::from(*cause);
                Status::new(
                    s.code(),
                    format!("{} (after {retries} retries)", s.message()),
                )
            }
            FetchError::ReceiptNotTaken { out, cause } => {
                let s = Status::from(*cause);
                Status::new(
                    s.code(),
                    format!(
                        "the content is at {} and verified, but the publisher did not take the receipt: {}; `dsnode receipts resend` submits it again",
                        out,
                        s.message()
                    ),
                )
            }
            FetchError::Book { context, source } => book(context, source),
            FetchError::Ledger { context, source } => ledger(context, source),
            FetchError::Internal { context, source } => internal(context, &*source),
        }
    }
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid(m) | PublishError::Content(m) => Status::invalid_argument(m),
            PublishError::Dataset(e) => Status::invalid_argument(e.to_string()),
            PublishError::Ledger(e) | PublishError::Uncertain(e) => {
                ledger("recording the publication", e)
            }
            PublishError::File(e) => internal("storing the dataset", &e),
            e @ PublishError::Interrupted(_) => Status::cancelled(e.to_string()),
            PublishError::Store { context, source } => {
                match source.downcast_ref::<crate::dataset::blob::BlobError>() {
                    Some(crate::dataset::blob::BlobError::Object(e)) => object(context, e),
                    _ => internal(context, &*source),
                }
            }
        }
    }
}

/// An object-store failure, for the node's own operator (the message
/// names the bucket; peers are never shown it).
pub fn object(context: &str, e: &crate::dataset::s3::ObjectError) -> Status {
    use crate::dataset::s3::ObjectError as E;
    let message = format!("{context}: {e}");
    match e {
        E::Unreachable { .. } | E::Failed { .. } => Status::unavailable(message),
        E::Credentials { .. } => Status::permission_denied(message),
        E::NotFound { .. } => Status::not_found(message),
        E::Invalid(_) => Status::invalid_argument(message),
    }
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::BadRequest(m) => Status::invalid_argument(m),
            ReadError::NotFound(m) => Status::not_found(m),
            ReadError::Refused(m) => Status::permission_denied(m),
            e @ ReadError::NoCheckpoint => Status::unavailable(e.to_string()),
            ReadError::Ledger { context, source } => ledger(context, source),
            ReadError::Internal { context, source } => internal(context, &*source),
        }
    }
}
