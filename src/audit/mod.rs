//! The auditor's side of the Ledger service: every checkpoint signature,
//! inclusion proof and consistency proof a node serves is verified here,
//! against the key in the node's verified TLS certificate (and the log's
//! key history, which must end at that key, each rotation proven to be in
//! the log), before anything is shown. Nothing the node says is taken on
//! trust.

pub mod evidence;
pub mod reconcile;

use tonic::transport::Channel;

use crate::identity::PeerIdentity;
use crate::ledger::Query;
use crate::ledger::entry::{Entry, EntryError};
use crate::ledger::keys::{KeyError, LogKeys};
use crate::ledger::merkle::{self, ProofError};
use crate::ledger::note::{NoteError, SignedCheckpoint};
use crate::wire::client::PeerChannel;
use crate::wire::pb;
use crate::wire::pb::ledger_client::LedgerClient;

/// Why an audit step failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The node refused or failed the call.
    #[error("the node answered {code:?}: {message}")]
    Rpc {
        /// gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// A checkpoint's signature or format is bad.
    #[error("checkpoint NOT verified: {0}")]
    Checkpoint(#[from] NoteError),
    /// The log's key history, or a signature under it, is bad.
    #[error("NOT verified: {0}")]
    Keys(#[from] KeyError),
    /// An entry's bytes are not a valid entry.
    #[error("entry {index} NOT verified: {source}")]
    Entry {
        /// The entry's claimed index.
        index: u64,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// A proof does not verify.
    #[error("{what} NOT verified: {source}")]
    Proof {
        /// Which proof.
        what: String,
        /// Why.
        #[source]
        source: ProofError,
    },
    /// The node's answer contradicts itself or the request.
    #[error("NOT verified: {0}")]
    Mismatch(String),
}

impl From<tonic::Status> for AuditError {
    fn from(s: tonic::Status) -> Self {
        Self::Rpc {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// Most entries one `entries` call collects.
pub const MAX_AUDIT_ENTRIES: usize = 1_000_000;

/// The request's filters as a ledger query, to re-check every entry the
/// node returns with the same matching rules the node uses.
fn filter_of(req: &pb::QueryEntriesRequest) -> Result<Query, AuditError> {
    let bad = |e: String| AuditError::Mismatch(format!("bad filter: {e}"));
    let party = match req.party.as_str() {
        "" => None,
        p => Some(
            p.parse()
                .map_err(|e: crate::identity::IdError| bad(e.to_string()))?,
        ),
    };
    let kind = match req.kind.as_str() {
        "" => None,
        k => Some(crate::ledger::entry::EntryKind::parse(k).map_err(|e| bad(e.to_string()))?),
    };
    Ok(Query {
        dataset: (!req.dataset.is_empty()).then(|| req.dataset.clone()),
        party,
        kind,
        grant: (!req.grant.is_empty()).then(|| req.grant.clone()),
        since_ms: (req.since_ms != 0).then_some(req.since_ms),
        until_ms: (req.until_ms != 0).then_some(req.until_ms),
    })
}

/// An entry and the proof that it is in a verified checkpoint.
#[derive(Clone, Debug)]
pub struct VerifiedEntry {
    /// The decoded entry (its index is the proven index).
    pub entry: Entry,
    /// Its leaf hash.
    pub leaf_hash: crate::digest::Hash,
    /// Its audit path in the checkpoint it was proven under.
    pub inclusion_proof: Vec<crate::digest::Hash>,
}

/// An auditor connected to one node.
pub struct Auditor {
    client: LedgerClient<Channel>,
    /// The log's key history, loaded (and its rotations proven) on first
    /// use.
    keys: Option<LogKeys>,
    node: PeerIdentity,
}

impl Auditor {
    /// An auditor of the node at the other end of `conn`; its checkpoints
    /// must be signed by the key its certificate carries, or (older ones)
    /// by a key the log's history hands over to it.
    pub fn new(conn: PeerChannel) -> Result<Self, AuditError> {
        Ok(Self {
            client: LedgerClient::new(conn.channel),
            keys: None,
            node: conn.server,
        })
    }

    /// The audited node's identity (from its verified certificate).
    pub fn node(&self) -> &PeerIdentity {
        &self.node
    }

    /// The verifier key of the node's checkpoints: the log's origin and
    /// the key its certificate carries.
    pub fn vkey(&self) -> String {
        match &self.keys {
            Some(keys) => keys.verifier().vkey(),
            None => LogKeys::new(&self.node.public_key)
                .map(|k| k.verifier().vkey())
                .unwrap_or_default(),
        }
    }

    /// The log's key history (loaded and checked on first use).
    pub async fn keys(&mut self) -> Result<&LogKeys, AuditError> {
        if self.keys.is_none() {
            let r = self
                .client
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner();
            self.load_keys(&r).await?;
        }
        self.keys
            .as_ref()
            .ok_or_else(|| AuditError::Mismatch("no key history".into()))
    }

    /// Rebuilds the key history from a checkpoint answer: it must end at
    /// the certificate's key, and every KeyRotated entry it was built from
    /// must be proven in the log.
    async fn load_keys(&mut self, r: &pb::GetCheckpointResponse) -> Result<(), AuditError> {
        let rotations = r
            .key_rotations
            .iter()
            .map(|bytes| {
                Entry::decode(bytes).map_err(|source| AuditError::Entry { index: 0, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = LogKeys::of_node(&rotations, &self.node)?;
        if r.vkey != keys.verifier().vkey() {
            return Err(AuditError::Mismatch(format!(
                "the node publishes vkey {} but its certificate and key history imply {}",
                r.vkey,
                keys.verifier().vkey()
            )));
        }
        let cp = keys.verify_checkpoint(&r.checkpoint)?;
        for rotation in rotations {
            let index = rotation.index;
            let answer = self.inclusion(index, cp.checkpoint.size).await?;
            let proven_cp = keys.verify_checkpoint(&answer.checkpoint)?;
            let (_, proven, _) =
                self.check_inclusion(proven_cp, answer, index, cp.checkpoint.size)?;
            if proven.entry != rotation {
                return Err(AuditError::Mismatch(format!(
                    "the key rotation shown as entry {index} is not the log's entry {index}"
                )));
            }
        }
        self.keys = Some(keys);
        Ok(())
    }

    async fn checkpoint_of(&mut self, note: &[u8]) -> Result<SignedCheckpoint, AuditError> {
        Ok(self.keys().await?.verify_checkpoint(note)?)
    }

    /// The node's checkpoint answer as served (its key history and the
    /// cosigned checkpoints it keeps), after checking the history.
    pub async fn checkpoint_answer(&mut self) -> Result<pb::GetCheckpointResponse, AuditError> {
        let r = self
            .client
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await?
            .into_inner();
        if self.keys.is_none() {
            self.load_keys(&r).await?;
        }
        Ok(r)
    }

    /// The signed objects the node holds about a grant, and its
    /// certificate (unverified: see [`crate::audit::evidence`]).
    pub async fn evidence(&mut self, grant: &str) -> Result<pb::GetEvidenceResponse, AuditError> {
        Ok(self
            .client
            .get_evidence(pb::GetEvidenceRequest {
                grant_id: grant.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// The latest checkpoint, verified; the node's published vkey must be
    /// the one its certificate (and key history) implies.
    pub async fn checkpoint(&mut self) -> Result<SignedCheckpoint, AuditError> {
        let r = self.checkpoint_answer().await?;
        let keys = self.keys().await?;
        if r.vkey != keys.verifier().vkey() {
            return Err(AuditError::Mismatch(format!(
                "the node publishes vkey {} but its certificate implies {}",
                r.vkey,
                keys.verifier().vkey()
            )));
        }
        Ok(keys.verify_checkpoint(&r.checkpoint)?)
    }

    fn verify_entry(
        &self,
        cp: &SignedCheckpoint,
        proven: pb::ProvenEntry,
    ) -> Result<VerifiedEntry, AuditError> {
        let index = proven.index;
        let entry =
            Entry::decode(&proven.entry).map_err(|source| AuditError::Entry { index, source })?;
        if entry.index != index {
            return Err(AuditError::Mismatch(format!(
                "entry served as {index} says it is entry {}",
                entry.index
            )));
        }
        let leaf_hash = merkle::leaf_hash(&proven.entry);
        merkle::verify_inclusion(
            &leaf_hash,
            index,
            cp.checkpoint.size,
            &proven.inclusion_proof,
            &cp.checkpoint.root,
        )
        .map_err(|source| AuditError::Proof {
            what: format!(
                "inclusion of entry {index} in checkpoint {}",
                cp.checkpoint.size
            ),
            source,
        })?;
        let inclusion_proof = proven
            .inclusion_proof
            .iter()
            .map(|h| merkle::hash_from_slice(h))
            .collect::<Result<_, _>>()
            .map_err(|source| AuditError::Proof {
                what: format!("inclusion of entry {index}"),
                source,
            })?;
        Ok(VerifiedEntry {
            entry,
            leaf_hash,
            inclusion_proof,
        })
    }

    /// Entries matching `req`, every one proven against one verified
    /// checkpoint and checked against the filters (a node cannot slip in
    /// entries that do not match). With `all_pages`, follows page tokens to
    /// the end, requiring every page to move forward, up to
    /// [`MAX_AUDIT_ENTRIES`].
    pub async fn entries(
        &mut self,
        mut req: pb::QueryEntriesRequest,
        all_pages: bool,
    ) -> Result<(SignedCheckpoint, Vec<VerifiedEntry>), AuditError> {
        let filter = filter_of(&req)?;
        let time_ordered = filter.grant.is_none()
            && filter.dataset.is_none()
            && filter.party.is_none()
            && filter.kind.is_none()
            && (req.since_ms != 0 || req.until_ms != 0);
        let mut out: Vec<VerifiedEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pinned: Option<SignedCheckpoint> = None;
        let mut last_index: Option<u64> = None;
        loop {
            let r = self.client.query_entries(req.clone()).await?.into_inner();
            let cp = self.checkpoint_of(&r.checkpoint).await?;
            if let Some(p) = &pinned
                && p.checkpoint != cp.checkpoint
            {
                return Err(AuditError::Mismatch(
                    "a later page was proven against another checkpoint".into(),
                ));
            }
            for proven in r.entries {
                let v = self.verify_entry(&cp, proven)?;
                let index = v.entry.index;
                if !filter.matches(&v.entry) {
                    return Err(AuditError::Mismatch(format!(
                        "the node returned entry {index}, which does not match the query"
                    )));
                }
                if !seen.insert(index) || (!time_ordered && last_index.is_some_and(|l| index <= l))
                {
                    return Err(AuditError::Mismatch(format!(
                        "the node returned entry {index} twice or out of order"
                    )));
                }
                last_index = Some(index);
                out.push(v);
                if out.len() > MAX_AUDIT_ENTRIES {
                    return Err(AuditError::Mismatch(format!(
                        "more than {MAX_AUDIT_ENTRIES} entries; narrow the query"
                    )));
                }
            }
            req.tree_size = cp.checkpoint.size;
            pinned = Some(cp);
            if !all_pages || r.next_page_token.is_empty() {
                break;
            }
            if r.next_page_token == req.page_token {
                return Err(AuditError::Mismatch(
                    "the node's page token does not move forward".into(),
                ));
            }
            req.page_token = r.next_page_token;
        }
        let cp = match pinned {
            Some(cp) => cp,
            None => self.checkpoint().await?,
        };
        Ok((cp, out))
    }

    /// Entry `index`, proven against the checkpoint of `size` (0 = latest).
    pub async fn prove_inclusion(
        &mut self,
        index: u64,
        size: u64,
    ) -> Result<(SignedCheckpoint, VerifiedEntry, usize), AuditError> {
        let r = self.inclusion(index, size).await?;
        let cp = self.checkpoint_of(&r.checkpoint).await?;
        self.check_inclusion(cp, r, index, size)
    }

    async fn inclusion(
        &mut self,
        index: u64,
        size: u64,
    ) -> Result<pb::ProveInclusionResponse, AuditError> {
        Ok(self
            .client
            .prove_inclusion(pb::ProveInclusionRequest {
                target: Some(pb::prove_inclusion_request::Target::Index(index)),
                tree_size: size,
            })
            .await?
            .into_inner())
    }

    /// Checks an inclusion answer whose checkpoint `cp` is verified.
    fn check_inclusion(
        &self,
        cp: SignedCheckpoint,
        r: pb::ProveInclusionResponse,
        index: u64,
        size: u64,
    ) -> Result<(SignedCheckpoint, VerifiedEntry, usize), AuditError> {
        if size != 0 && cp.checkpoint.size != size {
            return Err(AuditError::Mismatch(format!(
                "asked for a proof in tree {size}, got checkpoint {}",
                cp.checkpoint.size
            )));
        }
        let proven = r
            .entry
            .ok_or_else(|| AuditError::Mismatch("no entry in the answer".into()))?;
        if proven.index != index {
            return Err(AuditError::Mismatch(format!(
                "asked for entry {index}, got {}",
                proven.index
            )));
        }
        let len = proven.inclusion_proof.len();
        let v = self.verify_entry(&cp, proven)?;
        Ok((cp, v, len))
    }

    /// Proves that the checkpoint of `old` is a prefix of that of `new`
    /// (0 = latest).
    pub async fn prove_consistency(
        &mut self,
        old: u64,
        new: u64,
    ) -> Result<(SignedCheckpoint, SignedCheckpoint, usize), AuditError> {
        let r = self
            .client
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: old,
                new_size: new,
            })
            .await?
            .into_inner();
        let old_cp = self.checkpoint_of(&r.old_checkpoint).await?;
        let new_cp = self.checkpoint_of(&r.new_checkpoint).await?;
        if old_cp.checkpoint.size != old || (new != 0 && new_cp.checkpoint.size != new) {
            return Err(AuditError::Mismatch(format!(
                "asked for {old} → {new}, got checkpoints {} → {}",
                old_cp.checkpoint.size, new_cp.checkpoint.size
            )));
        }
        merkle::verify_consistency(
            old_cp.checkpoint.size,
            new_cp.checkpoint.size,
            &r.proof,
            &old_cp.checkpoint.root,
            &new_cp.checkpoint.root,
        )
        .map_err(|source| AuditError::Proof {
            what: format!(
                "consistency {} → {}",
                old_cp.checkpoint.size, new_cp.checkpoint.size
            ),
            source,
        })?;
        Ok((old_cp, new_cp, r.proof.len()))
    }
}
