//! The auditor's side of the Ledger service: every checkpoint signature,
//! inclusion proof and consistency proof a node serves is verified here,
//! against the key in the node's verified TLS certificate (and the log's
//! key history, which must end at that key, each rotation proven to be in
//! the log), before anything is shown. Nothing the node says is taken on
//! trust.

pub mod evidence;
pub mod provenance;
pub mod reconcile;
pub mod space;

use crate::identity::PeerIdentity;
use crate::ledger::Query;
use crate::ledger::entry::{Entry, EntryError};
use crate::ledger::keys::{KeyError, LogKeys};
use crate::ledger::merkle::{self, ProofError};
use crate::ledger::note::{NoteError, SignedCheckpoint};
use crate::peer::{
    EntryQuery, GrantEvidence, InclusionAnswer, LatestCheckpoint, Peer, PeerError, ProvenEntry,
};

/// Why an audit step failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The node refused or failed the call.
    #[error("the node answered {:?}: {}", .0.code, .0.message)]
    Peer(#[from] PeerError),
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

/// Most entries one `entries` call collects.
pub const MAX_AUDIT_ENTRIES: usize = 1_000_000;

/// The filter as the node reads it: an empty name or a zero time means
/// "any" there, so it must here too, to re-check every entry the node
/// returns with the same matching rules the node uses.
fn as_read(filter: Query) -> Query {
    let Query {
        dataset,
        party,
        kind,
        grant,
        since_ms,
        until_ms,
    } = filter;
    Query {
        dataset: dataset.filter(|d| !d.is_empty()),
        party,
        kind,
        grant: grant.filter(|g| !g.is_empty()),
        since_ms: since_ms.filter(|&t| t != 0),
        until_ms: until_ms.filter(|&t| t != 0),
    }
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
    /// The audited node: every answer it gives is verified here.
    peer: Box<dyn Peer>,
    /// The log's key history, loaded (and its rotations proven) on first
    /// use.
    keys: Option<LogKeys>,
}

impl Auditor {
    /// An auditor of the node `peer` reaches; its checkpoints must be
    /// signed by the key its certificate carries, or (older ones) by a key
    /// the log's history hands over to it.
    pub fn new(peer: Box<dyn Peer>) -> Self {
        Self { peer, keys: None }
    }

    /// The audited node, for reads whose answers the caller verifies
    /// itself (its catalog: [`crate::dataset::read_catalog`]).
    pub fn peer(&self) -> &dyn Peer {
        self.peer.as_ref()
    }

    /// The audited node's identity (from its verified certificate).
    pub fn node(&self) -> &PeerIdentity {
        self.peer.identity()
    }

    /// The verifier key of the node's checkpoints: the log's origin and
    /// the key its certificate carries.
    pub fn vkey(&self) -> String {
        match &self.keys {
            Some(keys) => keys.verifier().vkey(),
            None => LogKeys::new(&self.node().public_key)
                .map(|k| k.verifier().vkey())
                .unwrap_or_default(),
        }
    }

    /// The log's key history (loaded and checked on first use).
    pub async fn keys(&mut self) -> Result<&LogKeys, AuditError> {
        if self.keys.is_none() {
            let r = self.peer.checkpoint().await?;
            self.load_keys(&r).await?;
        }
        self.keys
            .as_ref()
            .ok_or_else(|| AuditError::Mismatch("no key history".into()))
    }

    /// Rebuilds the key history from a checkpoint answer: it must end at
    /// the certificate's key, and every KeyRotated entry it was built from
    /// must be proven in the log.
    async fn load_keys(&mut self, r: &LatestCheckpoint) -> Result<(), AuditError> {
        let rotations = r
            .key_rotations
            .iter()
            .map(|bytes| {
                Entry::decode(bytes).map_err(|source| AuditError::Entry { index: 0, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = LogKeys::of_node(&rotations, self.node())?;
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
            let answer = self.peer.prove_inclusion(index, cp.checkpoint.size).await?;
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
    pub async fn checkpoint_answer(&mut self) -> Result<LatestCheckpoint, AuditError> {
        let r = self.peer.checkpoint().await?;
        if self.keys.is_none() {
            self.load_keys(&r).await?;
        }
        Ok(r)
    }

    /// The signed objects the node holds about a grant, and its
    /// certificate (unverified: see [`crate::audit::evidence`]).
    pub async fn evidence(&mut self, grant: &str) -> Result<GrantEvidence, AuditError> {
        Ok(self.peer.evidence(grant).await?)
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
        proven: ProvenEntry,
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

    /// Entries matching `query` (a [`Query`], or an [`EntryQuery`] to set
    /// the page size), every one proven against one verified checkpoint
    /// and checked against the filters (a node cannot slip in entries that
    /// do not match). With `all_pages`, follows page tokens to the end,
    /// requiring every page to move forward, up to [`MAX_AUDIT_ENTRIES`].
    pub async fn entries(
        &mut self,
        query: impl Into<EntryQuery>,
        all_pages: bool,
    ) -> Result<(SignedCheckpoint, Vec<VerifiedEntry>), AuditError> {
        let (cp, entries, _) = self.read_entries(query.into(), all_pages).await?;
        Ok((cp, entries))
    }

    /// One page of entries matching `query`, verified as by
    /// [`Self::entries`], and the token of the next page (empty: none).
    /// Pass the token and the checkpoint's size back for the next page.
    pub async fn entries_page(
        &mut self,
        query: EntryQuery,
    ) -> Result<(SignedCheckpoint, Vec<VerifiedEntry>, Vec<u8>), AuditError> {
        self.read_entries(query, false).await
    }

    async fn read_entries(
        &mut self,
        mut query: EntryQuery,
        all_pages: bool,
    ) -> Result<(SignedCheckpoint, Vec<VerifiedEntry>, Vec<u8>), AuditError> {
        query.filter = as_read(query.filter);
        let filter = query.filter.clone();
        let time_ordered = filter.grant.is_none()
            && filter.dataset.is_none()
            && filter.party.is_none()
            && filter.kind.is_none()
            && (filter.since_ms.is_some() || filter.until_ms.is_some());
        let mut out: Vec<VerifiedEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pinned: Option<SignedCheckpoint> = None;
        let mut last_index: Option<u64> = None;
        let next;
        loop {
            let r = self.peer.query_entries(query.clone()).await?;
            let cp = self.checkpoint_of(&r.checkpoint).await?;
            // Proofs against the tree size asked for, not one the node
            // picked.
            if query.tree_size != 0 && cp.checkpoint.size != query.tree_size {
                return Err(AuditError::Mismatch(format!(
                    "asked for entries at tree size {}, got a checkpoint of size {}",
                    query.tree_size, cp.checkpoint.size
                )));
            }
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
            query.tree_size = cp.checkpoint.size;
            pinned = Some(cp);
            if !all_pages || r.next_page_token.is_empty() {
                next = r.next_page_token;
                break;
            }
            if r.next_page_token == query.page_token {
                return Err(AuditError::Mismatch(
                    "the node's page token does not move forward".into(),
                ));
            }
            query.page_token = r.next_page_token;
        }
        let cp = match pinned {
            Some(cp) => cp,
            None => self.checkpoint().await?,
        };
        Ok((cp, out, next))
    }

    /// Entry `index`, proven against the checkpoint of `size` (0 = latest).
    pub async fn prove_inclusion(
        &mut self,
        index: u64,
        size: u64,
    ) -> Result<(SignedCheckpoint, VerifiedEntry, usize), AuditError> {
        let r = self.peer.prove_inclusion(index, size).await?;
        let cp = self.checkpoint_of(&r.checkpoint).await?;
        self.check_inclusion(cp, r, index, size)
    }

    /// Checks an inclusion answer whose checkpoint `cp` is verified.
    fn check_inclusion(
        &self,
        cp: SignedCheckpoint,
        r: InclusionAnswer,
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
        let r = self.peer.prove_consistency(old, new).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::testing::TestNode;

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::envelope::Envelope;

    use crate::ledger::Ledger;
    use crate::ledger::entry::{EntryDraft, EntryKind};
    use crate::ledger::note::NoteSigner;
    use crate::peer::{
        AccessAsk, CheckpointAnswer, CheckpointOffer, Code, ConsistencyAnswer, EntryPage, FetchAsk,
        FetchStream, PeerFuture, ReceiptTaken, unanswered,
    };

    const PARTICIPANT: &str = "city-transport";

    /// A node's ledger in a temporary dir, and the identity its current
    /// certificate carries.
    struct Node {
        _dir: tempfile::TempDir,
        ledger: Ledger,
        id: PeerIdentity,
    }

    fn identity(key: &SigningKey) -> PeerIdentity {
        crate::testing::identity(key, PARTICIPANT, "publisher")
    }

    impl Node {
        fn new(seed: u8) -> Self {
            let TestNode {
                dir, id, ledger, ..
            } = TestNode::new(seed, PARTICIPANT, "publisher");
            Self {
                _dir: dir,
                ledger,
                id,
            }
        }

        /// Appends one entry of each kind, about dataset `ds-1`, one
        /// checkpoint each.
        async fn grow(&self, kinds: &[EntryKind]) {
            for kind in kinds {
                let mut d = EntryDraft::new(*kind);
                d.dataset = Some("ds-1".into());
                d.detail = "test".into();
                self.ledger.append(d).await.expect("append");
            }
        }

        /// Hands the log over to the key of `seed`, as `dsnode key rotate`
        /// does; the node's certificate now carries that key.
        async fn rotate(&mut self, seed: u8) {
            let key = SigningKey::from_bytes(&[seed; 32]);
            self.ledger
                .rotate(key.clone(), PARTICIPANT.parse().expect("participant"))
                .await
                .expect("rotate");
            self.id = identity(&key);
        }

        fn size(&self) -> u64 {
            self.ledger.latest().map_or(0, |c| c.checkpoint.size)
        }

        /// Its signed checkpoint of `size` (0: the latest).
        fn checkpoint(&self, size: u64) -> SignedCheckpoint {
            let size = if size == 0 { self.size() } else { size };
            self.ledger
                .checkpoint_at(size)
                .expect("checkpoint")
                .expect("signed")
        }
    }

    /// How the node in memory lies to its auditor.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Lie {
        /// It does not: every answer is its ledger's.
        None,
        /// One byte of every inclusion proof is changed.
        WrongProof,
        /// Its checkpoints are signed by another key than its
        /// certificate's (same origin, same tree).
        OtherKey,
        /// Query answers include an entry the query does not match.
        Unasked,
        /// Inclusion answers carry no entry.
        NoEntry,
    }

    /// `node` answering an auditor in memory: what a connection to it
    /// would carry, without one.
    struct InMemory {
        node: Arc<Node>,
        lie: Lie,
    }

    impl InMemory {
        fn auditor(node: &Arc<Node>, lie: Lie) -> Auditor {
            Auditor::new(Box::new(Self {
                node: node.clone(),
                lie,
            }))
        }

        /// The checkpoint of `size` as this node serves it.
        fn note(&self, size: u64) -> Vec<u8> {
            let cp = self.node.checkpoint(size);
            let note = if self.lie == Lie::OtherKey {
                let forger = SigningKey::from_bytes(&[99; 32]);
                let signer = NoteSigner::new(&cp.checkpoint.origin, forger).expect("signer");
                SignedCheckpoint::sign(cp.checkpoint, &signer).note
            } else {
                cp.note
            };
            note.into_bytes()
        }

        fn proven(&self, index: u64, entry: Vec<u8>, size: u64) -> ProvenEntry {
            let mut inclusion_proof: Vec<Vec<u8>> = self
                .node
                .ledger
                .prove_inclusion(index, size)
                .expect("proof")
                .iter()
                .map(|h| h.to_vec())
                .collect();
            if self.lie == Lie::WrongProof
                && let Some(h) = inclusion_proof.first_mut()
            {
                h[0] ^= 1;
            }
            ProvenEntry {
                index,
                entry,
                inclusion_proof,
            }
        }
    }

    impl Peer for InMemory {
        fn identity(&self) -> &PeerIdentity {
            &self.node.id
        }

        fn request_access(&self, _: AccessAsk) -> PeerFuture<'_, Envelope> {
            unanswered("RequestAccess")
        }

        fn fetch(&self, _: FetchAsk) -> PeerFuture<'_, FetchStream> {
            unanswered("Fetch")
        }

        fn submit_receipt(&self, _: &Envelope) -> PeerFuture<'_, ReceiptTaken> {
            unanswered("SubmitReceipt")
        }

        fn key_rotations(&self) -> PeerFuture<'_, Vec<Vec<u8>>> {
            Box::pin(async move { Ok(self.node.ledger.rotation_entries().expect("rotations")) })
        }

        fn exchange_checkpoints(&self, _: CheckpointOffer) -> PeerFuture<'_, CheckpointAnswer> {
            Box::pin(async {
                Err(PeerError::new(
                    Code::Unimplemented,
                    "not an auditor's question",
                ))
            })
        }

        fn prove_consistency(&self, old: u64, new: u64) -> PeerFuture<'_, ConsistencyAnswer> {
            Box::pin(async move {
                let new = if new == 0 { self.node.size() } else { new };
                Ok(ConsistencyAnswer {
                    old_checkpoint: self.note(old),
                    new_checkpoint: self.note(new),
                    proof: self
                        .node
                        .ledger
                        .prove_consistency(old, new)
                        .expect("proof")
                        .iter()
                        .map(|h| h.to_vec())
                        .collect(),
                })
            })
        }

        fn checkpoint(&self) -> PeerFuture<'_, LatestCheckpoint> {
            Box::pin(async move {
                Ok(LatestCheckpoint {
                    checkpoint: self.note(0),
                    vkey: self.node.ledger.verifier().vkey(),
                    key_rotations: self.node.ledger.rotation_entries().expect("rotations"),
                    cosigned_checkpoints: Vec::new(),
                })
            })
        }

        fn query_entries(&self, query: EntryQuery) -> PeerFuture<'_, EntryPage> {
            Box::pin(async move {
                let size = match query.tree_size {
                    0 => self.node.size(),
                    size => size,
                };
                let token = (!query.page_token.is_empty()).then_some(query.page_token.as_slice());
                let limit = match query.limit {
                    0 => 100,
                    n => n as usize,
                };
                let page = self
                    .node
                    .ledger
                    .query(&query.filter, token, limit, size)
                    .expect("query");
                let mut entries: Vec<ProvenEntry> = page
                    .entries
                    .into_iter()
                    .map(|(index, bytes)| self.proven(index, bytes, size))
                    .collect();
                if self.lie == Lie::Unasked
                    && let Some((index, bytes)) = self
                        .node
                        .ledger
                        .entries(0, 1000)
                        .expect("entries")
                        .into_iter()
                        .find(|(_, b)| !query.filter.matches(&Entry::decode(b).expect("entry")))
                {
                    entries.push(self.proven(index, bytes, size));
                    entries.sort_by_key(|e| e.index);
                }
                Ok(EntryPage {
                    checkpoint: self.note(size),
                    entries,
                    next_page_token: page.next.unwrap_or_default(),
                })
            })
        }

        fn prove_inclusion(&self, index: u64, size: u64) -> PeerFuture<'_, InclusionAnswer> {
            Box::pin(async move {
                let size = if size == 0 { self.node.size() } else { size };
                let bytes = self.node.ledger.entry(index).expect("read").expect("entry");
                Ok(InclusionAnswer {
                    checkpoint: self.note(size),
                    entry: (self.lie != Lie::NoEntry).then(|| self.proven(index, bytes, size)),
                })
            })
        }

        fn evidence<'a>(&'a self, grant: &'a str) -> PeerFuture<'a, GrantEvidence> {
            Box::pin(async move {
                Err(PeerError::new(
                    Code::NotFound,
                    format!("this node neither issued nor holds grant {grant}"),
                ))
            })
        }
    }

    fn published() -> Query {
        Query {
            kind: Some(EntryKind::DatasetPublished),
            ..Query::default()
        }
    }

    #[tokio::test]
    async fn every_honest_answer_verifies_across_a_key_rotation() {
        let mut node = Node::new(1);
        node.grow(&[EntryKind::NodeStarted, EntryKind::DatasetPublished])
            .await;
        node.rotate(2).await;
        node.grow(&[EntryKind::DatasetPublished, EntryKind::AccessGranted])
            .await;
        let node = Arc::new(node);
        let mut auditor = InMemory::auditor(&node, Lie::None);

        // The key history ends at the certificate's key, its rotation
        // proven in the log.
        assert_eq!(auditor.keys().await.expect("keys").keys().len(), 2);
        let cp = auditor.checkpoint().await.expect("checkpoint");
        assert_eq!(cp.checkpoint.size, 5);
        assert_eq!(auditor.vkey(), node.ledger.verifier().vkey());

        // A page of one at a time, every entry proven and matching.
        let one = EntryQuery {
            limit: 1,
            ..published().into()
        };
        let (at, entries) = auditor.entries(one, true).await.expect("entries");
        assert_eq!(at.checkpoint.size, 5);
        let indices: Vec<u64> = entries.iter().map(|e| e.entry.index).collect();
        assert_eq!(indices, [1, 3]);

        // An entry signed under the retired key, in an older checkpoint.
        let (old, e, len) = auditor.prove_inclusion(1, 2).await.expect("inclusion");
        assert_eq!((old.checkpoint.size, e.entry.index), (2, 1));
        assert_eq!(len, e.inclusion_proof.len());
        let (old, new, _) = auditor.prove_consistency(2, 0).await.expect("consistency");
        assert_eq!((old.checkpoint.size, new.checkpoint.size), (2, 5));

        // A refusal is the node's, passed on with its code.
        let err = auditor.evidence("g-1").await.expect_err("no such grant");
        assert!(
            matches!(&err, AuditError::Peer(e) if e.code == Code::NotFound),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the node answered NotFound: this node neither issued nor holds grant g-1"
        );
    }

    #[tokio::test]
    async fn every_tampered_answer_is_refused_saying_what_does_not_verify() {
        let node = Node::new(1);
        node.grow(&[
            EntryKind::NodeStarted,
            EntryKind::DatasetPublished,
            EntryKind::AccessGranted,
        ])
        .await;
        let node = Arc::new(node);

        let err = InMemory::auditor(&node, Lie::WrongProof)
            .prove_inclusion(1, 0)
            .await
            .expect_err("a wrong inclusion proof");
        assert!(matches!(err, AuditError::Proof { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("inclusion of entry 1 in checkpoint 3 NOT verified"),
            "{err}"
        );
        let err = InMemory::auditor(&node, Lie::WrongProof)
            .entries(published(), true)
            .await
            .expect_err("a wrong inclusion proof in a page");
        assert!(matches!(err, AuditError::Proof { .. }), "{err}");

        let err = InMemory::auditor(&node, Lie::OtherKey)
            .checkpoint()
            .await
            .expect_err("a checkpoint signed by another key");
        assert!(matches!(err, AuditError::Keys(_)), "{err}");
        assert!(err.to_string().starts_with("NOT verified"), "{err}");

        let err = InMemory::auditor(&node, Lie::Unasked)
            .entries(published(), true)
            .await
            .expect_err("an entry the query does not match");
        assert_eq!(
            err.to_string(),
            "NOT verified: the node returned entry 0, which does not match the query"
        );

        let err = InMemory::auditor(&node, Lie::NoEntry)
            .prove_inclusion(1, 0)
            .await
            .expect_err("no entry");
        assert_eq!(err.to_string(), "NOT verified: no entry in the answer");
    }

    /// A publisher (seed 1) and a consumer (seed 2) that recorded one
    /// transfer of grant `gr_1` and its receipt; the consumer's receipt
    /// entry names the publisher's entry `peer_entry` and `transfer`.
    async fn exchanged(peer_entry: u64, transfer: u64) -> (Arc<Node>, Arc<Node>) {
        let (p, c) = (Node::new(1), Node::new(2));
        let parties = vec![p.id.node_id.clone(), c.id.node_id.clone()];
        let entry = |kind, hash: Option<[u8; 32]>| {
            let mut d = EntryDraft::new(kind);
            d.parties = parties.clone();
            d.dataset = Some("ds-1".into());
            d.grant = Some("gr_1".into());
            d.object_hash = hash;
            d
        };
        let (grant, receipt) = (Some([1; 32]), Some([2; 32]));
        let mut publisher = vec![
            entry(EntryKind::AccessGranted, grant),
            entry(EntryKind::TransferStarted, None),
            entry(EntryKind::ReceiptRecorded, receipt),
        ];
        publisher[2].transfer = Some(1);
        let mut consumer = vec![
            entry(EntryKind::GrantReceived, grant),
            entry(EntryKind::TransferCompleted, Some([3; 32])),
            entry(EntryKind::ReceiptRecorded, receipt),
        ];
        consumer[1].transfer = Some(1);
        consumer[2].transfer = Some(transfer);
        consumer[2].peer_entry = Some(peer_entry);
        for (node, drafts) in [(&p, publisher), (&c, consumer)] {
            for d in drafts {
                node.ledger.append(d).await.expect("append");
            }
        }
        (Arc::new(p), Arc::new(c))
    }

    /// The discrepancies of `reconcile` about receipt references.
    async fn reference_discrepancies(p: &Arc<Node>, c: &Arc<Node>) -> Vec<String> {
        let r = reconcile::reconcile(
            &mut InMemory::auditor(p, Lie::None),
            &mut InMemory::auditor(c, Lie::None),
            None,
        )
        .await
        .expect("reconcile");
        assert_eq!((r.grants, r.receipts), (1, 1));
        r.discrepancies
            .into_iter()
            .filter(|d| d.contains("names") || d.contains("different transfers"))
            .collect()
    }

    #[tokio::test]
    async fn reconcile_pairs_receipt_entries_by_their_typed_references() {
        let (p, c) = exchanged(2, 1).await;
        assert_eq!(reference_discrepancies(&p, &c).await, Vec::<String>::new());

        let (p, c) = exchanged(1, 1).await;
        let found = reference_discrepancies(&p, &c).await;
        assert_eq!(found.len(), 1, "{found:?}");
        let publisher = format!("A ({})", p.id.node_id);
        assert!(
            found[0].ends_with(&format!(
                "entry 2 (ReceiptRecorded) names {publisher} entry 1, but {publisher} recorded that receipt at entry 2"
            )),
            "{}",
            found[0]
        );

        let (p, c) = exchanged(2, 7).await;
        let found = reference_discrepancies(&p, &c).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("record the same receipt for different transfers (7 and 1)"),
            "{}",
            found[0]
        );
    }
}
