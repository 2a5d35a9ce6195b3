//! The checkpoint exchange, both halves (see the module docs of
//! [`crate::witness`]): [`Witnessing::answer`] is the side that is
//! called, [`Witnessing::exchange`] the side that calls, over any
//! [`Peer`].
//!
//! Each half checks the other's log the same way (`Witnessing::witness`):
//! the key history must end at the key of the other's certificate, the
//! checkpoint and the old one must verify under it, and the proof must join
//! the old checkpoint (or the largest one seen) to the new one. A newly
//! seen checkpoint is recorded (`PeerCheckpointSeen`), a fork is kept as
//! evidence (`ForkDetected`) and never cosigned.

use ed25519_dalek::SigningKey;

use super::{ForkEvidence, Observed, WitnessBook, WitnessError, cosig};
use crate::digest::{Hash, sha256};
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::entry::{EntryDraft, EntryKind, MAX_DETAIL_BYTES};
use crate::ledger::keys::{LogKeys, decode_rotations};
use crate::ledger::note::SignedCheckpoint;
use crate::ledger::{Ledger, LedgerError, merkle};
use crate::peer::{CheckpointAnswer, CheckpointOffer, Peer, PeerError, ShownCheckpoint, log_keys};

/// What one exchange did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchanged {
    /// The peer's node id.
    pub peer: NodeId,
    /// The peer's checkpoint size now witnessed.
    pub peer_size: u64,
    /// Whether it was larger than any seen before (recorded).
    pub peer_grew: bool,
    /// Whether the peer cosigned this node's checkpoint.
    pub cosigned_by_peer: bool,
}

/// Why an exchange failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The caller sent something that does not verify (its fault).
    #[error("{0}")]
    BadOffer(String),
    /// The peer answered with something that does not verify.
    #[error("{0}")]
    BadAnswer(String),
    /// The log forked: both signed checkpoints are kept as evidence
    /// (`first`: found just now, not known before), nothing is cosigned.
    #[error("fork in log {} ({}): {what}; not cosigning", .evidence.origin, .evidence.kind)]
    Fork {
        /// The evidence.
        evidence: Box<ForkEvidence>,
        /// Whether this exchange found it (a new fork).
        first: bool,
        /// What was done about it.
        what: &'static str,
    },
    /// The caller's checkpoint is older than one this node saw of its log:
    /// not cosigned, and the larger one shown.
    #[error(
        "your checkpoint of size {sent} is older than the checkpoint of size {} this node saw of log {}; not cosigning",
        .seen.checkpoint.size, .seen.checkpoint.origin
    )]
    Stale {
        /// The size of the checkpoint sent.
        sent: u64,
        /// The larger checkpoint seen.
        seen: Box<SignedCheckpoint>,
    },
    /// This node's ledger has no checkpoint yet.
    #[error("this node's ledger has no checkpoint yet")]
    NoCheckpoint,
    /// The peer wants a proof this node cannot give.
    #[error("{0}")]
    Unable(String),
    /// The call to the peer failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The ledger failed.
    #[error("{context}: {source}")]
    Ledger {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: LedgerError,
    },
    /// The witness book or the signer failed.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ExchangeError {
    fn ledger(context: &'static str) -> impl FnOnce(LedgerError) -> Self {
        move |source| Self::Ledger { context, source }
    }

    fn internal<E: std::error::Error + Send + Sync + 'static>(
        context: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |e| Self::Internal {
            context,
            source: Box::new(e),
        }
    }

    /// Whether the other side's checkpoint was refused (a fork, a stale or
    /// inconsistent checkpoint), as counted in the witness metrics.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Fork { .. } | Self::Stale { .. } | Self::BadOffer(_)
        )
    }

    /// The checkpoint of the refused log this node holds, to show its node
    /// (so it can check the claim against its own store).
    pub fn shown(&self) -> Option<ShownCheckpoint> {
        match self {
            Self::Fork { evidence, .. } => Some(ShownCheckpoint {
                origin: evidence.origin.clone(),
                note: evidence.seen.clone().into_bytes(),
            }),
            Self::Stale { seen, .. } => Some(ShownCheckpoint {
                origin: seen.checkpoint.origin.clone(),
                note: seen.note.clone().into_bytes(),
            }),
            _ => None,
        }
    }
}

/// One side's log as received, verified against the sender's certificate
/// key: its key history, the checkpoint, the old one and the proof.
struct Checked {
    keys: LogKeys,
    new: SignedCheckpoint,
    old: Option<SignedCheckpoint>,
    proof: Vec<Hash>,
}

/// The received parts of one side's log (either direction).
struct Sent<'a> {
    rotations: &'a [Vec<u8>],
    checkpoint: &'a [u8],
    old_checkpoint: &'a [u8],
    proof: &'a [Vec<u8>],
}

impl Sent<'_> {
    /// Checks it against the sender's certificate key (`whose` names the
    /// sender in errors, `bad` is the error a failed signature gets).
    fn verify(
        self,
        node: &PeerIdentity,
        whose: &str,
        bad: fn(String) -> ExchangeError,
    ) -> Result<Checked, ExchangeError> {
        let keys = decode_rotations(self.rotations)
            .and_then(|entries| LogKeys::of_node(&entries, node))
            .map_err(|e| {
                ExchangeError::BadOffer(format!("{whose} key history does NOT verify: {e}"))
            })?;
        let new = keys
            .verify_checkpoint(self.checkpoint)
            .map_err(|e| bad(format!("{whose} checkpoint does NOT verify: {e}")))?;
        let old = if self.old_checkpoint.is_empty() {
            None
        } else {
            Some(
                keys.verify_checkpoint(self.old_checkpoint)
                    .map_err(|e| bad(format!("{whose} old checkpoint does NOT verify: {e}")))?,
            )
        };
        let proof = hashes(self.proof)?;
        Ok(Checked {
            keys,
            new,
            old,
            proof,
        })
    }
}

impl<'a> From<&'a CheckpointOffer> for Sent<'a> {
    fn from(o: &'a CheckpointOffer) -> Self {
        Sent {
            rotations: &o.key_rotations,
            checkpoint: &o.checkpoint,
            old_checkpoint: &o.old_checkpoint,
            proof: &o.consistency_proof,
        }
    }
}

impl<'a> From<&'a CheckpointAnswer> for Sent<'a> {
    fn from(a: &'a CheckpointAnswer) -> Self {
        Sent {
            rotations: &a.key_rotations,
            checkpoint: &a.checkpoint,
            old_checkpoint: &a.old_checkpoint,
            proof: &a.consistency_proof,
        }
    }
}

fn hashes(proof: &[Vec<u8>]) -> Result<Vec<Hash>, ExchangeError> {
    proof
        .iter()
        .map(|h| merkle::hash_from_slice(h))
        .collect::<Result<_, _>>()
        .map_err(|e| ExchangeError::BadOffer(format!("consistency proof: {e}")))
}

/// The note with only the log's own signature lines (what the ledger keeps
/// of a peer's checkpoint; cosignatures of others are not ours to record).
fn log_lines_only(note: &str, origin: &str) -> String {
    let prefix = format!("\u{2014} {origin} ");
    let Some(split) = note.rfind("\n\n") else {
        return note.to_owned();
    };
    let mut out = note[..split + 2].to_owned();
    for line in note[split + 2..].lines().filter(|l| l.starts_with(&prefix)) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What a node needs to witness and be witnessed: its ledger, its witness
/// book and its signing key.
pub struct Witnessing<'a> {
    /// This node's ledger (its own log; peers' checkpoints are recorded in it).
    pub ledger: &'a Ledger,
    /// Peers' checkpoints seen, cosignatures received, fork evidence.
    pub book: &'a WitnessBook,
    /// This node's signing key, for cosignatures.
    pub key: &'a SigningKey,
}

impl Witnessing<'_> {
    /// Compares a peer's verified checkpoint with what this node saw of its
    /// log; records a newly seen one (`PeerCheckpointSeen`) and a fork
    /// (`ForkDetected`, an error log).
    async fn witness(
        &self,
        peer: &PeerIdentity,
        keys: &LogKeys,
        new: &SignedCheckpoint,
        old: Option<&SignedCheckpoint>,
        proof: &[Hash],
    ) -> Result<Observed, ExchangeError> {
        match self.book.observe(keys, new, old, proof) {
            Ok(Observed::Grew) => {
                let mut seen = EntryDraft::new(EntryKind::PeerCheckpointSeen);
                seen.parties = vec![peer.node_id.clone()];
                let note = log_lines_only(&new.note, keys.origin());
                seen.object_hash = Some(sha256(note.as_bytes()));
                seen.detail = note;
                self.ledger
                    .append(seen)
                    .await
                    .map_err(ExchangeError::ledger("recording the peer's checkpoint"))?;
                Ok(Observed::Grew)
            }
            Ok(other) => Ok(other),
            Err(WitnessError::Fork(evidence)) => {
                tracing::error!(
                    log = %evidence.origin,
                    peer = %peer.node_id,
                    kind = %evidence.kind,
                    "FORK: two signed checkpoints of one log that no consistency proof joins; evidence kept, not cosigning"
                );
                let mut draft = EntryDraft::new(EntryKind::ForkDetected);
                draft.parties = vec![peer.node_id.clone()];
                let seen = log_lines_only(&evidence.seen, &evidence.origin);
                let conflicting = log_lines_only(&evidence.conflicting, &evidence.origin);
                draft.object_hash = Some(sha256(conflicting.as_bytes()));
                let detail = format!("{}\n{seen}\n{conflicting}", evidence.kind);
                draft.detail = if detail.len() <= MAX_DETAIL_BYTES {
                    detail
                } else {
                    format!("{} (notes in witness/forks/)", evidence.kind)
                };
                if let Err(e) = self.ledger.append(draft).await {
                    tracing::error!(error = %e, "could not record the fork in the ledger");
                }
                Err(ExchangeError::Fork {
                    evidence,
                    first: true,
                    what: "both signed checkpoints kept as evidence",
                })
            }
            Err(WitnessError::Forked(evidence)) => Err(ExchangeError::Fork {
                evidence,
                first: false,
                what: "it forked before (evidence kept); never cosigned again",
            }),
            Err(WitnessError::Inconsistent(m)) => Err(ExchangeError::BadOffer(m)),
            Err(e) => Err(ExchangeError::internal("witnessing a checkpoint")(e)),
        }
    }

    /// This node's latest checkpoint and key history, proven from
    /// `seen_size` (0: no proof).
    fn own_side(&self, seen_size: u64) -> Result<CheckpointAnswer, ExchangeError> {
        let latest = self.ledger.latest().ok_or(ExchangeError::NoCheckpoint)?;
        let size = latest.checkpoint.size;
        let mut out = CheckpointAnswer {
            checkpoint: latest.note.clone().into_bytes(),
            key_rotations: self
                .ledger
                .rotation_entries()
                .map_err(ExchangeError::ledger("reading the key history"))?,
            ..Default::default()
        };
        if seen_size > 0
            && seen_size < size
            && let Some(old) = self
                .ledger
                .checkpoint_at(seen_size)
                .map_err(ExchangeError::ledger("reading a checkpoint"))?
        {
            out.old_checkpoint = old.note.into_bytes();
            out.consistency_proof = self
                .ledger
                .prove_consistency(seen_size, size)
                .map_err(ExchangeError::ledger("proving consistency"))?
                .iter()
                .map(|h| h.to_vec())
                .collect();
        }
        Ok(out)
    }

    /// This node's side of a request: its latest checkpoint, proven from
    /// `from` (the size the peer last cosigned; 0: none).
    fn offer(
        &self,
        from: u64,
        seen_size: u64,
        cosigned: Vec<u8>,
    ) -> Result<CheckpointOffer, ExchangeError> {
        let own = self.own_side(from)?;
        Ok(CheckpointOffer {
            checkpoint: own.checkpoint,
            key_rotations: own.key_rotations,
            old_checkpoint: own.old_checkpoint,
            consistency_proof: own.consistency_proof,
            seen_size,
            cosigned,
        })
    }

    /// Keeps a peer's cosignature of this node's checkpoint, after checking
    /// both this log's signature and the peer's cosignature.
    fn keep_cosigned(
        &self,
        peer: &PeerIdentity,
        cosigned: &[u8],
    ) -> Result<SignedCheckpoint, ExchangeError> {
        let cp = self
            .ledger
            .keys()
            .verify_checkpoint(cosigned)
            .map_err(|e| {
                ExchangeError::BadOffer(format!("the cosigned checkpoint is not this node's: {e}"))
            })?;
        cosig::verify(cosigned, &peer.public_key).map_err(|e| {
            ExchangeError::BadOffer(format!("the cosignature does not verify: {e}"))
        })?;
        // Only a checkpoint this store holds (not one a retired key could
        // sign): kept cosignatures are checked against the store at start-up.
        let held = self
            .ledger
            .checkpoint_at(cp.checkpoint.size)
            .map_err(ExchangeError::ledger("reading a checkpoint"))?;
        if held.is_none_or(|h| h.checkpoint.root != cp.checkpoint.root) {
            return Err(ExchangeError::BadOffer(format!(
                "the cosigned checkpoint of size {} is not one this node signed",
                cp.checkpoint.size
            )));
        }
        self.book
            .keep_cosigned(&peer.node_id, &cp)
            .map_err(ExchangeError::internal("keeping a cosignature"))?;
        Ok(cp)
    }

    /// `cp` with this node's cosignature line added.
    fn cosign(&self, cp: &SignedCheckpoint) -> Result<Vec<u8>, ExchangeError> {
        let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let line = cosig::cosign(cp.note.as_bytes(), self.key, now)
            .map_err(ExchangeError::internal("cosigning"))?;
        Ok(format!("{}{line}", cp.note).into_bytes())
    }

    /// The called side: witness the caller's checkpoint, cosign it, keep
    /// the caller's cosignature of ours, answer with ours.
    pub async fn answer(
        &self,
        caller: &PeerIdentity,
        offer: &CheckpointOffer,
    ) -> Result<CheckpointAnswer, ExchangeError> {
        let c = Sent::from(offer).verify(caller, "your", ExchangeError::BadOffer)?;
        let observed = self
            .witness(caller, &c.keys, &c.new, c.old.as_ref(), &c.proof)
            .await?;
        if !offer.cosigned.is_empty() {
            self.keep_cosigned(caller, &offer.cosigned)?;
        }
        let mut out = self.own_side(offer.seen_size)?;
        match observed {
            Observed::NeedProofFrom(size) => out.need_proof_from = size,
            Observed::Stale(seen) => {
                return Err(ExchangeError::Stale {
                    sent: c.new.checkpoint.size,
                    seen,
                });
            }
            Observed::Grew | Observed::Same => out.cosigned = self.cosign(&c.new)?,
        }
        Ok(out)
    }

    /// The calling side: offer this node's checkpoint to `peer`, witness
    /// the one it answers with, and hand it this node's cosignature.
    pub async fn exchange(&self, peer: &dyn Peer) -> Result<Exchanged, ExchangeError> {
        let server = peer.identity();
        let _one_at_a_time = self.book.exchange_slot(&server.node_id).await;
        let their_keys = log_keys(peer).await?;
        let mut from = self.book.cosigned_size(&server.node_id);
        let seen_size = self
            .book
            .seen(&their_keys)
            .map_err(ExchangeError::internal("reading witnessed checkpoints"))?
            .map_or(0, |s| s.checkpoint.size);
        let mut answer = None;
        for _ in 0..2 {
            let r = peer
                .exchange_checkpoints(self.offer(from, seen_size, Vec::new())?)
                .await?;
            if r.need_proof_from != 0 && r.need_proof_from != from {
                from = r.need_proof_from;
                continue;
            }
            answer = Some(r);
            break;
        }
        let r = answer.ok_or_else(|| {
            ExchangeError::BadAnswer("the peer asked twice for another proof".into())
        })?;
        if r.need_proof_from != 0 {
            return Err(ExchangeError::Unable(format!(
                "{} wants a consistency proof from size {} of this log, which this node cannot give",
                server.node_id, r.need_proof_from
            )));
        }
        let c = Sent::from(&r).verify(server, "the peer's", ExchangeError::BadAnswer)?;
        let (keys, theirs) = (&c.keys, &c.new);
        let mut observed = self
            .witness(server, keys, theirs, c.old.as_ref(), &c.proof)
            .await?;
        if let Observed::NeedProofFrom(size) = observed {
            // The peer witnessed this node meanwhile, so this node now holds a
            // newer checkpoint of it than the one its answer was proven from:
            // ask for a proof from that one.
            let (old, proof) = proof_from(peer, keys, size, theirs.checkpoint.size).await?;
            observed = self
                .witness(server, keys, theirs, Some(&old), &proof)
                .await?;
            if let Observed::NeedProofFrom(size) = observed {
                return Err(ExchangeError::BadAnswer(format!(
                    "the peer did not prove its log consistent with its checkpoint of size {size} this node saw"
                )));
            }
        }
        let cosigned_by_peer = !r.cosigned.is_empty();
        if let Observed::Stale(_) = observed {
            // Its answer is older than what it showed this node meanwhile:
            // nothing new to witness or cosign.
            if cosigned_by_peer {
                self.keep_cosigned(server, &r.cosigned)?;
            }
            return Ok(Exchanged {
                peer: server.node_id.clone(),
                peer_size: theirs.checkpoint.size,
                peer_grew: false,
                cosigned_by_peer,
            });
        }
        // Hand the peer this node's cosignature of the checkpoint just
        // verified, with the checkpoint of this log it just cosigned (nothing
        // new for it to record).
        let cosigned = self.cosign(theirs)?;
        let offer = if cosigned_by_peer {
            let mine = self.keep_cosigned(server, &r.cosigned)?;
            CheckpointOffer {
                checkpoint: log_lines_only(&mine.note, &mine.checkpoint.origin).into_bytes(),
                key_rotations: self
                    .ledger
                    .rotation_entries()
                    .map_err(ExchangeError::ledger("reading the key history"))?,
                seen_size: theirs.checkpoint.size,
                cosigned,
                ..Default::default()
            }
        } else {
            self.offer(from, theirs.checkpoint.size, cosigned)?
        };
        // Best effort: if the peer saw a newer checkpoint of this log
        // meanwhile (it is witnessing this node too), it refuses this one as
        // stale, and the next exchange delivers the cosignature.
        if let Err(e) = peer.exchange_checkpoints(offer).await {
            tracing::debug!(peer = %server.node_id, error = %e.message, "cosignature not delivered");
        }
        Ok(Exchanged {
            peer: server.node_id.clone(),
            peer_size: theirs.checkpoint.size,
            peer_grew: matches!(observed, Observed::Grew),
            cosigned_by_peer,
        })
    }
}

/// The peer's checkpoint of size `old` and a consistency proof from it to
/// `new`, from its Ledger service, verified.
async fn proof_from(
    peer: &dyn Peer,
    keys: &LogKeys,
    old: u64,
    new: u64,
) -> Result<(SignedCheckpoint, Vec<Hash>), ExchangeError> {
    let r = peer.prove_consistency(old, new).await?;
    let old_cp = keys.verify_checkpoint(&r.old_checkpoint).map_err(|e| {
        ExchangeError::BadAnswer(format!("the peer's old checkpoint does NOT verify: {e}"))
    })?;
    if old_cp.checkpoint.size != old {
        return Err(ExchangeError::BadAnswer(format!(
            "asked the peer for its checkpoint of size {old}, got size {}",
            old_cp.checkpoint.size
        )));
    }
    Ok((old_cp, hashes(&r.proof)?))
}

/// Whether a refused exchange proves that this node's own store lost what
/// it signed: the witness's checkpoint of this log verifies under this
/// log's keys and the store contradicts it (it is larger than the store,
/// or the store has another root at its size). A bare claim is not
/// believed. Returns what the store lost.
pub fn own_fork(ledger: &Ledger, refusal: &PeerError) -> Option<String> {
    let shown = refusal.shown.as_ref()?;
    let keys = ledger.keys();
    if shown.origin != keys.origin() {
        return None;
    }
    let seen = keys.verify_checkpoint(&shown.note).ok()?;
    let (size, root) = (seen.checkpoint.size, seen.checkpoint.root);
    let ours = ledger.latest().map_or(0, |c| c.checkpoint.size);
    if size > ours {
        return Some(format!(
            "the witness holds this node's signed checkpoint of size {size}, but its store ends at {ours}"
        ));
    }
    match ledger.checkpoint_at(size) {
        Ok(Some(cp)) if cp.checkpoint.root == root => None,
        _ => Some(format!(
            "the witness holds this node's signed checkpoint of size {size} with a root this store does not have"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::testing::TestNode;

    use crate::ledger::entry::Entry;
    use crate::peer::{
        AccessAsk, Code, ConsistencyAnswer, EntryPage, EntryQuery, FetchAsk, FetchStream,
        GrantEvidence, InclusionAnswer, LatestCheckpoint, PeerFuture, ReceiptTaken, unanswered,
    };

    /// One node's witnessing state, in a temporary dir.
    struct Side {
        _dir: tempfile::TempDir,
        ledger: Ledger,
        book: WitnessBook,
        key: SigningKey,
        id: PeerIdentity,
    }

    impl Side {
        fn new(seed: u8, name: &str) -> Self {
            Self::with_key(SigningKey::from_bytes(&[seed; 32]), name)
        }

        fn with_key(key: SigningKey, name: &str) -> Self {
            let TestNode {
                dir,
                key,
                id,
                ledger,
            } = TestNode::with_key(key, name, "publisher");
            let book = WitnessBook::open(&dir.path().join("witness")).expect("book");
            Self {
                _dir: dir,
                ledger,
                book,
                key,
                id,
            }
        }

        fn witnessing(&self) -> Witnessing<'_> {
            Witnessing {
                ledger: &self.ledger,
                book: &self.book,
                key: &self.key,
            }
        }

        async fn grow(&self, n: usize) {
            for _ in 0..n {
                let mut d = EntryDraft::new(EntryKind::DatasetPublished);
                d.detail = "test".into();
                self.ledger.append(d).await.expect("append");
            }
        }

        fn size(&self) -> u64 {
            self.ledger.latest().map_or(0, |c| c.checkpoint.size)
        }

        fn kinds(&self) -> Vec<EntryKind> {
            self.ledger
                .entries(0, 1000)
                .expect("entries")
                .iter()
                .map(|(_, raw)| Entry::decode(raw).expect("entry").draft.kind)
                .collect()
        }
    }

    /// `callee` answering `caller` in memory: what a connection between
    /// the two would carry, without one.
    struct InMemory<'a> {
        callee: &'a Side,
        caller: PeerIdentity,
        /// Answers signed by another key than the callee's certificate's.
        forge: Option<&'a Side>,
    }

    impl InMemory<'_> {
        fn refusal(e: &ExchangeError) -> PeerError {
            PeerError {
                code: Code::FailedPrecondition,
                message: e.to_string(),
                shown: e.shown(),
                cause: None,
            }
        }
    }

    impl Peer for InMemory<'_> {
        fn identity(&self) -> &PeerIdentity {
            &self.callee.id
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
            Box::pin(async move { Ok(self.callee.ledger.rotation_entries().expect("rotations")) })
        }

        fn exchange_checkpoints(&self, offer: CheckpointOffer) -> PeerFuture<'_, CheckpointAnswer> {
            Box::pin(async move {
                let answering = self.forge.unwrap_or(self.callee);
                answering
                    .witnessing()
                    .answer(&self.caller, &offer)
                    .await
                    .map_err(|e| Self::refusal(&e))
            })
        }

        fn prove_consistency(&self, old: u64, new: u64) -> PeerFuture<'_, ConsistencyAnswer> {
            Box::pin(async move {
                let l = &self.callee.ledger;
                let note = |size| {
                    l.checkpoint_at(size)
                        .expect("checkpoint")
                        .expect("held")
                        .note
                        .into_bytes()
                };
                Ok(ConsistencyAnswer {
                    old_checkpoint: note(old),
                    new_checkpoint: note(new),
                    proof: l
                        .prove_consistency(old, new)
                        .expect("proof")
                        .iter()
                        .map(|h| h.to_vec())
                        .collect(),
                })
            })
        }

        // The auditor's reads: not part of the witness protocol.

        fn checkpoint(&self) -> PeerFuture<'_, LatestCheckpoint> {
            unanswered("a ledger read")
        }

        fn query_entries(&self, _: EntryQuery) -> PeerFuture<'_, EntryPage> {
            unanswered("a ledger read")
        }

        fn prove_inclusion(&self, _: u64, _: u64) -> PeerFuture<'_, InclusionAnswer> {
            unanswered("a ledger read")
        }

        fn evidence<'a>(&'a self, _: &'a str) -> PeerFuture<'a, GrantEvidence> {
            unanswered("a ledger read")
        }
    }

    fn call<'a>(from: &Side, to: &'a Side) -> InMemory<'a> {
        InMemory {
            callee: to,
            caller: from.id.clone(),
            forge: None,
        }
    }

    #[tokio::test]
    async fn two_nodes_witness_and_cosign_each_other_as_their_logs_grow() {
        let (a, b) = (Side::new(1, "alpha"), Side::new(2, "beta"));
        a.grow(2).await;
        b.grow(3).await;
        let done = a
            .witnessing()
            .exchange(&call(&a, &b))
            .await
            .expect("exchange");
        assert_eq!(done.peer, b.id.node_id);
        // B recorded A's checkpoint before answering with its own.
        assert_eq!(done.peer_size, 4);
        assert!(done.peer_grew && done.cosigned_by_peer, "{done:?}");
        // Each recorded the other's checkpoint and holds its cosignature.
        assert!(a.kinds().contains(&EntryKind::PeerCheckpointSeen));
        assert!(b.kinds().contains(&EntryKind::PeerCheckpointSeen));
        assert!(a.book.cosigned_size(&b.id.node_id) > 0);
        assert_eq!(b.book.cosigned_size(&a.id.node_id), 4);

        // B grows; the next exchange proves B's log consistent with the
        // checkpoint A saw, and A's with the one B cosigned.
        b.grow(5).await;
        a.grow(1).await;
        let again = a.witnessing().exchange(&call(&a, &b)).await.expect("again");
        assert!(again.peer_grew);
        assert!(again.peer_size > 4);
        // Two nodes that witness each other grow by one record each per
        // exchange (each sees the other's record of it): bounded.
        let (size_a, size_b) = (a.size(), b.size());
        a.witnessing().exchange(&call(&a, &b)).await.expect("third");
        assert_eq!((a.size(), b.size()), (size_a + 1, size_b + 1));
    }

    #[tokio::test]
    async fn a_forked_log_is_refused_with_evidence_and_never_cosigned_again() {
        let (a, b) = (Side::new(1, "alpha"), Side::new(2, "beta"));
        a.grow(1).await;
        b.grow(3).await;
        a.witnessing().exchange(&call(&a, &b)).await.expect("first");
        // The same key now signs another log of the same size.
        let rewritten = Side::with_key(b.key.clone(), "beta");
        rewritten.grow(2).await;
        let mut d = EntryDraft::new(EntryKind::DatasetPublished);
        d.detail = "rewritten".into();
        rewritten.ledger.append(d).await.expect("append");
        let before = a.book.cosigned_size(&b.id.node_id);
        let err = a
            .witnessing()
            .exchange(&call(&a, &rewritten))
            .await
            .expect_err("a fork");
        assert!(
            matches!(&err, ExchangeError::Fork { first: true, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("same size, different roots"),
            "{err}"
        );
        assert!(a.kinds().contains(&EntryKind::ForkDetected));
        assert_eq!(
            WitnessBook::forks(&a._dir.path().join("witness"))
                .expect("forks")
                .len(),
            1
        );
        // Known now: refused again without new evidence.
        let again = a
            .witnessing()
            .exchange(&call(&a, &rewritten))
            .await
            .expect_err("still forked");
        assert!(
            matches!(again, ExchangeError::Fork { first: false, .. }),
            "{again}"
        );
        assert_eq!(a.book.cosigned_size(&b.id.node_id), before);
    }

    #[tokio::test]
    async fn an_answer_signed_by_another_key_is_refused_and_nothing_recorded() {
        let (a, b, mallory) = (
            Side::new(1, "alpha"),
            Side::new(2, "beta"),
            Side::new(3, "beta"),
        );
        a.grow(1).await;
        b.grow(1).await;
        mallory.grow(4).await;
        let forged = InMemory {
            callee: &b,
            caller: a.id.clone(),
            forge: Some(&mallory),
        };
        let size = a.size();
        let err = a
            .witnessing()
            .exchange(&forged)
            .await
            .expect_err("forged answer");
        assert!(matches!(err, ExchangeError::BadAnswer(_)), "{err}");
        assert!(err.to_string().contains("does NOT verify"), "{err}");
        assert_eq!(a.size(), size, "nothing recorded");
        assert_eq!(a.book.cosigned_size(&b.id.node_id), 0);
    }

    #[tokio::test]
    async fn a_node_believes_a_witness_only_with_a_checkpoint_its_store_contradicts() {
        let (a, b) = (Side::new(1, "alpha"), Side::new(2, "beta"));
        a.grow(3).await;
        let held = a.ledger.latest().expect("checkpoint").note.clone();
        let shown = |origin: &str, note: &str| PeerError {
            code: Code::FailedPrecondition,
            message: "refused".into(),
            shown: Some(ShownCheckpoint {
                origin: origin.into(),
                note: note.as_bytes().to_vec(),
            }),
            cause: None,
        };
        let origin = a.ledger.keys().origin().to_owned();
        // Its own checkpoint, held by its store: no loss.
        assert_eq!(own_fork(&a.ledger, &shown(&origin, &held)), None);
        // A bare claim, another log's checkpoint, or garbage: not believed.
        assert_eq!(own_fork(&a.ledger, &PeerError::unreachable("x")), None);
        b.grow(5).await;
        let other = b.ledger.latest().expect("checkpoint").note.clone();
        assert_eq!(own_fork(&a.ledger, &shown(&origin, &other)), None);
        assert_eq!(own_fork(&a.ledger, &shown(&origin, "garbage")), None);
        // A larger checkpoint this log signed than its store holds: lost.
        let restored = Side::with_key(a.key.clone(), "alpha");
        restored.grow(1).await;
        let lost = own_fork(&restored.ledger, &shown(&origin, &held)).expect("lost");
        assert!(lost.contains("store ends at 1"), "{lost}");
    }
}
