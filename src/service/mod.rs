//! The node's use cases behind one type: what every service knows of the
//! node serving it (identity, clock, ledger, blob store, catalog, grant
//! book, witness book) and the operations the wire layer and the node's
//! start-up call on it.

pub mod ledger;

use std::sync::Arc;
use std::time::Instant;

use crate::dataset::publish::Publishing;
use crate::envelope::Envelope;
use crate::exchange::Publisher;
use crate::exchange::access::{self, AccessError, Ask};
use crate::exchange::book::{BookError, Held};
use crate::exchange::fetch::{self, Consumer, FetchError, FetchOrder, Fetched, Progress, Resent};
use crate::exchange::grant::GrantId;
use crate::identity::PeerIdentity;
use crate::peer::{AccessAsk, CheckpointAnswer, CheckpointOffer, Dialer, Peer};
use crate::runtime::tls::ConnectionRegistry;
use crate::witness::protocol::{ExchangeError, Exchanged, Witnessing};

/// What [`NodeContext::audit_storage`] found.
#[derive(Debug, Default)]
pub struct StorageAudit {
    /// Where the chunks are.
    pub store: String,
    /// Datasets checked.
    pub datasets: u64,
    /// Distinct chunks read.
    pub chunks: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// The chunks that failed, by dataset and index.
    pub damaged: Vec<DamagedChunk>,
}

/// A chunk a dataset needs that the store does not give back intact.
#[derive(Debug)]
pub struct DamagedChunk {
    /// The dataset.
    pub dataset: String,
    /// The chunk's index in it.
    pub index: u64,
    /// The hash its signed chunk list gives it.
    pub hash: crate::digest::Hash,
    /// `missing`, `corrupt`, or `unreadable: …`.
    pub problem: String,
}

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
    /// Transfers other streams may join.
    pub sessions: crate::exchange::serve::Sessions,
    /// Received datasets, one pack file each.
    pub packs: Arc<crate::dataset::pack::PackStore>,
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
    /// The node's object store (`[storage] kind = "s3"`), for `s3://`
    /// objects to publish from or fetch into; `None` on local storage.
    pub buckets: Option<Arc<crate::dataset::s3::Buckets>>,
    /// The datasets this node published.
    pub catalog: Arc<crate::dataset::catalog::Catalog>,
    /// One publication at a time: chunks a failed publication created are
    /// then its own to remove, and version checks cannot race.
    pub publishing: tokio::sync::Mutex<()>,
    /// Grants issued and held.
    pub grants: Arc<crate::exchange::book::GrantBook>,
    /// Connects to other nodes as this node.
    pub dialer: Arc<dyn Dialer>,
    /// Peers' checkpoints seen, cosignatures received, fork evidence.
    pub witness: Arc<crate::witness::WitnessBook>,
    /// This node's certificate (PEM), for evidence bundles.
    pub certificate_pem: Vec<u8>,
    /// What one peer may cost this node (`[limits]`).
    pub limits: crate::exchange::limits::PeerLimits,
    /// The highest version seen of each publisher's lineages.
    pub seen: crate::dataset::seen::SeenVersions,
}

impl NodeContext {
    /// Reads every chunk of every published dataset back from the chunk
    /// store and checks it against its hash (a few reads at once); names
    /// each chunk that is missing, damaged or unreadable.
    pub async fn audit_storage(&self) -> StorageAudit {
        use crate::dataset::blob::BlobError;
        let datasets = self.catalog.list();
        // Each distinct chunk is read once, wherever datasets share it.
        let mut uses: std::collections::BTreeMap<crate::digest::Hash, Vec<(String, u64)>> =
            std::collections::BTreeMap::new();
        for d in &datasets {
            for (i, h) in d.chunks.iter().enumerate() {
                uses.entry(*h)
                    .or_default()
                    .push((d.id.to_string(), i as u64));
            }
        }
        let parallel = self.blobs.parallel_requests().clamp(1, 8);
        let hashes: Vec<crate::digest::Hash> = uses.keys().copied().collect();
        let mut reads = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut audit = StorageAudit {
            store: self.blobs.describe(),
            datasets: datasets.len() as u64,
            chunks: hashes.len() as u64,
            ..StorageAudit::default()
        };
        loop {
            while next < hashes.len() && reads.len() < parallel {
                let blobs = self.blobs.clone();
                let h = hashes[next];
                reads.spawn_blocking(move || (h, blobs.get(&h)));
                next += 1;
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((hash, read)) = done else { continue };
            let problem = match read {
                Ok(Some(bytes)) => {
                    audit.bytes += bytes.len() as u64;
                    continue;
                }
                Ok(None) => "missing".to_owned(),
                Err(BlobError::Corrupt(_)) => "corrupt".to_owned(),
                Err(e) => format!("unreadable: {e}"),
            };
            for (dataset, index) in uses.get(&hash).into_iter().flatten() {
                audit.damaged.push(DamagedChunk {
                    dataset: dataset.clone(),
                    index: *index,
                    hash,
                    problem: problem.clone(),
                });
            }
        }
        audit
            .damaged
            .sort_by(|a, b| (&a.dataset, a.index).cmp(&(&b.dataset, b.index)));
        for d in &audit.damaged {
            tracing::error!(dataset = %d.dataset, chunk = d.index, problem = %d.problem, "damaged chunk in the chunk store");
        }
        audit
    }

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

impl NodeContext {
    /// What the publisher's side of the exchange needs of this node.
    pub fn publisher(&self) -> Publisher<'_> {
        Publisher {
            identity: &self.identity,
            clock: &self.clock,
            ledger: &self.ledger,
            grants: &self.grants,
            catalog: &self.catalog,
            blobs: &self.blobs,
            key: &self.signing_key,
            metrics: &self.metrics,
            opening: &self.opening,
            sessions: &self.sessions,
            limits: &self.limits,
        }
    }

    /// What publishing needs of this node.
    pub fn publishing(&self) -> Publishing<'_> {
        Publishing {
            catalog: &self.catalog,
            blobs: &self.blobs,
            grants: self.grants.as_ref(),
            ledger: &self.ledger,
            key: &self.signing_key,
            one_at_a_time: &self.publishing,
        }
    }

    /// What the consumer's side of the exchange needs of this node.
    pub fn consumer(&self) -> Consumer<'_> {
        Consumer {
            identity: &self.identity,
            ledger: &self.ledger,
            grants: &self.grants,
            packs: &self.packs,
            key: &self.signing_key,
            fetching: &self.fetching,
            dialer: self.dialer.as_ref(),
            seen: &self.seen,
        }
    }

    /// `Admin.RequestAccess`: asks the publisher at `addr` for access as
    /// this node; keeps and records the grant it answers with.
    pub async fn request_access_as_node(
        &self,
        addr: &str,
        ask: &AccessAsk,
    ) -> Result<(Arc<Held>, u64), AccessError> {
        let ask = Ask::try_from(ask)?;
        let publisher = self.dialer.dial(addr).await?;
        access::request(
            &self.grants,
            &self.identity.node_id,
            publisher.as_ref(),
            &ask,
        )
        .await
    }

    /// `Admin.Fetch`: fetches as this node; having talked, the two nodes
    /// then witness each other's logs.
    pub async fn fetch_as_node(
        &self,
        order: FetchOrder,
        progress: Arc<Progress>,
    ) -> Result<Fetched, FetchError> {
        let peer = order.peer.clone();
        let result = fetch::fetch(self.consumer(), order, progress).await;
        if result.is_ok()
            && let Err(e) = self.exchange_checkpoints_with(&peer).await
        {
            tracing::warn!(peer, error = %e, "checkpoint exchange after the fetch failed");
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, "fetch failed");
        }
        result
    }

    /// `Admin.ResendReceipts`.
    pub async fn resend_receipts(
        &self,
        grant: &GrantId,
        addr: &str,
    ) -> Result<(u64, Vec<Resent>), FetchError> {
        fetch::resend_receipts(&self.consumer(), grant, addr).await
    }

    /// `Admin.ListGrants`: a page of the grants issued (in id order, with
    /// whether each is revoked), then of the grants held, that match
    /// `filter`. Reads at most [`GRANT_SCAN`] grants whatever the filter,
    /// so a page costs what it may return; the token is where the next
    /// page starts (`None` on the last one).
    pub fn grants_page(
        &self,
        filter: &GrantFilter,
        from: &GrantCursor,
        limit: usize,
    ) -> Result<(Vec<GrantStatus>, Option<GrantCursor>), BookError> {
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut next = None;
        // Keeps `g` if it matches; says where to stop when the page is full
        // or the scan budget spent (`resume` is the cursor after `g`).
        let mut take = |g: &crate::exchange::grant::Grant,
                        status: GrantStatus,
                        state: GrantState,
                        resume: GrantCursor,
                        next: &mut Option<GrantCursor>| {
            scanned += 1;
            if filter.matches(g, state) {
                out.push(status);
            }
            if out.len() == limit || scanned == GRANT_SCAN {
                *next = Some(resume);
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        };
        let mut failed = None;
        if let GrantCursor::Issued(after) = from {
            if filter.wants_issued() {
                let scanned = self.grants.scan_issued(after.as_ref(), |g| {
                    let revoked = match self.grants.is_revoked(&g.value().id) {
                        Ok(r) => r,
                        Err(e) => {
                            failed = Some(e);
                            return std::ops::ControlFlow::Break(());
                        }
                    };
                    let state = if revoked {
                        GrantState::Revoked
                    } else {
                        GrantState::Issued
                    };
                    let status = GrantStatus {
                        grant: g.envelope().clone(),
                        revoked,
                        issued: true,
                    };
                    let resume = GrantCursor::Issued(Some(g.value().id.clone()));
                    take(g.value(), status, state, resume, &mut next)
                });
                if let Err(e) = scanned {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if next.is_some() {
            return Ok((out, next));
        }
        let after = match from {
            GrantCursor::Issued(_) => None,
            GrantCursor::Held(after) => after.as_ref(),
        };
        if filter.wants_held() {
            self.grants.scan_held(after, |h| {
                let status = GrantStatus {
                    grant: h.grant.envelope().clone(),
                    revoked: false,
                    issued: false,
                };
                let resume = GrantCursor::Held(Some(h.grant.value().id.clone()));
                take(h.grant.value(), status, GrantState::Held, resume, &mut next)
            })?;
        }
        Ok((out, next))
    }

    /// `Admin.RevokeGrant`: records `GrantRevoked` (no reason: "revoked by
    /// the publisher"); `None` if it was revoked before.
    pub async fn revoke(&self, grant: &GrantId, reason: &str) -> Result<Option<u64>, BookError> {
        let reason = if reason.is_empty() {
            "revoked by the publisher"
        } else {
            reason
        };
        Ok(self.grants.revoke(grant, reason).await?.map(|a| a.index))
    }
}

/// Grants `Admin.ListGrants` reads at most for one page.
pub const GRANT_SCAN: usize = 10_000;

/// Where a page of `Admin.ListGrants` starts: after this issued grant (or
/// at the first), or after this held grant (or at the first held one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantCursor {
    /// In the issued grants, after this id.
    Issued(Option<GrantId>),
    /// In the held grants, after this id.
    Held(Option<GrantId>),
}

impl GrantCursor {
    /// The page token for this cursor.
    pub fn token(&self) -> String {
        match self {
            GrantCursor::Issued(None) => String::new(),
            GrantCursor::Issued(Some(id)) => format!("issued:{id}"),
            GrantCursor::Held(None) => "held:".into(),
            GrantCursor::Held(Some(id)) => format!("held:{id}"),
        }
    }
}

impl std::str::FromStr for GrantCursor {
    type Err = String;

    /// Parses a page token (empty: the first page).
    fn from_str(token: &str) -> Result<Self, String> {
        let bad =
            || "invalid page token: expected one from a previous ListGrants response".to_owned();
        let id = |text: &str| -> Result<Option<GrantId>, String> {
            match text {
                "" => Ok(None),
                t => t.parse().map(Some).map_err(|_| bad()),
            }
        };
        if token.is_empty() {
            return Ok(GrantCursor::Issued(None));
        }
        match token.split_once(':') {
            Some(("issued", rest)) if !rest.is_empty() => Ok(GrantCursor::Issued(id(rest)?)),
            Some(("held", rest)) => Ok(GrantCursor::Held(id(rest)?)),
            _ => Err(bad()),
        }
    }
}

/// What a grant is to this node, for filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    /// Issued and not revoked.
    Issued,
    /// Issued and revoked.
    Revoked,
    /// Held.
    Held,
}

/// The grants `Admin.ListGrants` shows (each `None` matches any).
#[derive(Clone, Debug, Default)]
pub struct GrantFilter {
    /// Only this dataset's grants.
    pub dataset: Option<crate::dataset::DatasetId>,
    /// Only grants to this node.
    pub grantee: Option<crate::identity::NodeId>,
    /// Only grants in this state.
    pub state: Option<GrantState>,
}

impl GrantFilter {
    fn matches(&self, g: &crate::exchange::grant::Grant, state: GrantState) -> bool {
        self.dataset.as_ref().is_none_or(|d| *d == g.dataset)
            && self.grantee.as_ref().is_none_or(|n| *n == g.grantee)
            && self.state.is_none_or(|s| s == state)
    }

    fn wants_issued(&self) -> bool {
        self.state != Some(GrantState::Held)
    }

    fn wants_held(&self) -> bool {
        matches!(self.state, None | Some(GrantState::Held))
    }
}

/// A grant as `Admin.ListGrants` shows it.
#[derive(Clone, Debug)]
pub struct GrantStatus {
    /// The signed grant.
    pub grant: Envelope,
    /// Revoked (issued grants only).
    pub revoked: bool,
    /// Issued by this node (else held).
    pub issued: bool,
}
