//! The node's use cases behind one type: what every service knows of the
//! node serving it (identity, clock, ledger, blob store, catalog, grant
//! book, witness book) and the operations the wire layer and the node's
//! start-up call on it.

use std::sync::Arc;
use std::time::Instant;

use crate::identity::PeerIdentity;
use crate::peer::{CheckpointAnswer, CheckpointOffer, Dialer, Peer};
use crate::runtime::tls::ConnectionRegistry;
use crate::witness::protocol::{ExchangeError, Exchanged, Witnessing};

/// What every service knows of the node serving it.
pub struct NodeContext {
    /// This node's identity, from its own certificate.
    pub identity: PeerIdentity,
    /// The clock policy and grant windows are checked against.
    pub clock: crate::clock::Clock,
    /// The node's metrics.
    pub metrics: Arc<crate::runtime::metrics::Metrics>,
    /// One transfer opened at a time (its count checked and recorded).
    pub opening: tokio::sync::Mutex<()>,
    /// Grants this node is fetching now (one fetch per grant at a time).
    pub fetching: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When the node started serving.
    pub started: Instant,
    /// Open connections.
    pub connections: Arc<ConnectionRegistry>,
    /// The node's ledger.
    pub ledger: crate::ledger::Ledger,
    /// The node's identity key, for signing manifests and grants.
    pub signing_key: ed25519_dalek::SigningKey,
    /// Where dataset chunks are stored.
    pub blobs: Arc<dyn crate::dataset::blob::BlobStore>,
    /// The datasets this node published.
    pub catalog: Arc<crate::dataset::catalog::Catalog>,
    /// One publication at a time: chunks a failed publication created are
    /// then its own to remove, and version checks cannot race.
    pub publishing: tokio::sync::Mutex<()>,
    /// Grants issued and held.
    pub grants: Arc<crate::exchange::book::GrantBook>,
    /// TLS for calls this node makes to other nodes.
    pub client_tls: crate::runtime::tls::ClientConfigCell,
    /// Connects to other nodes as this node.
    pub dialer: Arc<dyn Dialer>,
    /// Peers' checkpoints seen, cosignatures received, fork evidence.
    pub witness: Arc<crate::witness::WitnessBook>,
    /// This node's certificate (PEM), for evidence bundles.
    pub certificate_pem: Vec<u8>,
}

impl NodeContext {
    /// What the witness protocol needs of this node.
    fn witnessing(&self) -> Witnessing<'_> {
        Witnessing {
            ledger: &self.ledger,
            book: &self.witness,
            key: &self.signing_key,
        }
    }

    /// Counts a fork an exchange found.
    fn count_fork<T>(&self, result: &Result<T, ExchangeError>) {
        if let Err(ExchangeError::Fork { first: true, .. }) = result {
            self.metrics.fork_detected();
        }
    }

    /// `Peering.ExchangeCheckpoints`: witnesses the caller's checkpoint
    /// and answers with this node's (see [`Witnessing::answer`]).
    pub async fn answer_checkpoints(
        &self,
        caller: &PeerIdentity,
        offer: &CheckpointOffer,
    ) -> Result<CheckpointAnswer, ExchangeError> {
        let result = self.witnessing().answer(caller, offer).await;
        self.count_fork(&result);
        match &result {
            Ok(a) if !a.cosigned.is_empty() => self.metrics.witnessed("cosigned"),
            Err(e) if e.is_refusal() => self.metrics.witnessed("refused"),
            _ => {}
        }
        result
    }

    /// Exchanges checkpoints with the node at `addr` (see
    /// [`Witnessing::exchange`]).
    pub async fn exchange_checkpoints_with(&self, addr: &str) -> Result<Exchanged, ExchangeError> {
        let peer = self.dialer.dial(addr).await?;
        self.exchange_checkpoints_over(peer.as_ref()).await
    }

    /// Exchanges checkpoints over an open connection.
    pub async fn exchange_checkpoints_over(
        &self,
        peer: &dyn Peer,
    ) -> Result<Exchanged, ExchangeError> {
        let result = self.witnessing().exchange(peer).await;
        self.count_fork(&result);
        self.metrics
            .witnessed(if result.is_ok() { "cosigned" } else { "failed" });
        result
    }
}
