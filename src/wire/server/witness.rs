//! `Peering.ExchangeCheckpoints`, both sides (see [`crate::witness`]).

use tonic::Status;
use tonic::metadata::MetadataValue;

use super::NodeContext;
use super::exchange::connect_peer;
use crate::digest::Hash;
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::entry::{EntryDraft, EntryKind, MAX_DETAIL_BYTES};
use crate::ledger::keys::{LogKeys, decode_rotations};
use crate::ledger::merkle;
use crate::ledger::note::SignedCheckpoint;
use crate::wire::client::PeerChannel;
use crate::wire::pb;
use crate::witness::{Observed, WitnessError, cosig};

/// Metadata key naming the log a witness found forked.
pub const FORK_ORIGIN: &str = "dsnode-fork-origin";
/// Binary metadata key carrying the checkpoint of that log the witness saw.
pub const FORK_SEEN: &str = "dsnode-fork-seen-bin";

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

fn keys_of(rotations: &[Vec<u8>], node: &PeerIdentity, whose: &str) -> Result<LogKeys, Status> {
    decode_rotations(rotations)
        .and_then(|entries| LogKeys::of_node(&entries, node))
        .map_err(|e| Status::invalid_argument(format!("{whose} key history does NOT verify: {e}")))
}

fn hashes(proof: &[Vec<u8>]) -> Result<Vec<Hash>, Status> {
    proof
        .iter()
        .map(|h| merkle::hash_from_slice(h))
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(format!("consistency proof: {e}")))
}

/// One side's log as sent in an exchange (either direction).
struct Sent<'a> {
    rotations: &'a [Vec<u8>],
    checkpoint: &'a [u8],
    old_checkpoint: &'a [u8],
    proof: &'a [Vec<u8>],
}

type Checked = (
    LogKeys,
    SignedCheckpoint,
    Option<SignedCheckpoint>,
    Vec<Hash>,
);

impl Sent<'_> {
    /// Checks it against the sender's certificate key: the key history,
    /// the checkpoint and the old one (`whose` names the sender in errors,
    /// `bad` is the status a failure gets).
    fn verify(
        self,
        node: &PeerIdentity,
        whose: &str,
        bad: fn(String) -> Status,
    ) -> Result<Checked, Status> {
        let keys = keys_of(self.rotations, node, whose)?;
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
        Ok((keys, new, old, proof))
    }
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

/// Compares a peer's verified checkpoint with what this node saw of its
/// log; records a newly seen one (`PeerCheckpointSeen`) and a fork
/// (`ForkDetected`, metrics, error log).
async fn witness(
    node: &NodeContext,
    peer: &PeerIdentity,
    keys: &LogKeys,
    new: &SignedCheckpoint,
    old: Option<&SignedCheckpoint>,
    proof: &[Hash],
) -> Result<Observed, Status> {
    match node.witness.observe(keys, new, old, proof) {
        Ok(Observed::Grew) => {
            let mut seen = EntryDraft::new(EntryKind::PeerCheckpointSeen);
            seen.parties = vec![peer.node_id.clone()];
            let note = log_lines_only(&new.note, keys.origin());
            seen.object_hash = Some(crate::digest::sha256(note.as_bytes()));
            seen.detail = note;
            node.ledger
                .append(seen)
                .await
                .map_err(|e| crate::wire::status::ledger("recording the peer's checkpoint", e))?;
            Ok(Observed::Grew)
        }
        Ok(other) => Ok(other),
        Err(WitnessError::Fork(evidence)) => {
            node.metrics.fork_detected();
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
            draft.object_hash = Some(crate::digest::sha256(conflicting.as_bytes()));
            let detail = format!("{}\n{seen}\n{conflicting}", evidence.kind);
            draft.detail = if detail.len() <= MAX_DETAIL_BYTES {
                detail
            } else {
                format!("{} (notes in witness/forks/)", evidence.kind)
            };
            if let Err(e) = node.ledger.append(draft).await {
                tracing::error!(error = %e, "could not record the fork in the ledger");
            }
            Err(fork_status(
                &evidence,
                "both signed checkpoints kept as evidence",
            ))
        }
        Err(WitnessError::Forked(evidence)) => Err(fork_status(
            &evidence,
            "it forked before (evidence kept); never cosigned again",
        )),
        Err(WitnessError::Inconsistent(m)) => Err(Status::invalid_argument(m)),
        Err(e) => Err(crate::wire::status::internal("witnessing a checkpoint", &e)),
    }
}

/// The refusal a forked log's node gets: the reason, the log's origin and
/// the checkpoint of it this witness saw first (so that node can check the
/// claim against its own store: [`own_fork`]).
fn fork_status(evidence: &crate::witness::ForkEvidence, what: &str) -> Status {
    let mut status = Status::failed_precondition(format!(
        "fork in log {} ({}): {what}; not cosigning",
        evidence.origin, evidence.kind
    ));
    if let Ok(v) = MetadataValue::try_from(evidence.origin.as_str()) {
        status.metadata_mut().insert(FORK_ORIGIN, v);
    }
    status.metadata_mut().insert_bin(
        FORK_SEEN,
        tonic::metadata::MetadataValue::from_bytes(evidence.seen.as_bytes()),
    );
    status
}

/// The refusal of a checkpoint older than one seen of the same log: the
/// caller is shown the larger one ([`own_fork`] checks it against its own
/// store; a stale message from an honest node passes that check).
fn stale_status(keys: &LogKeys, sent: &SignedCheckpoint, seen: &SignedCheckpoint) -> Status {
    let mut status = Status::failed_precondition(format!(
        "your checkpoint of size {} is older than the checkpoint of size {} this node saw of log {}; not cosigning",
        sent.checkpoint.size,
        seen.checkpoint.size,
        keys.origin()
    ));
    if let Ok(v) = MetadataValue::try_from(keys.origin()) {
        status.metadata_mut().insert(FORK_ORIGIN, v);
    }
    status.metadata_mut().insert_bin(
        FORK_SEEN,
        tonic::metadata::MetadataValue::from_bytes(seen.note.as_bytes()),
    );
    status
}

/// This node's latest checkpoint and key history, proven from `seen_size`.
fn own_side(node: &NodeContext, seen_size: u64) -> Result<pb::ExchangeCheckpointsResponse, Status> {
    let latest = node
        .ledger
        .latest()
        .ok_or_else(|| Status::unavailable("this node's ledger has no checkpoint yet"))?;
    let size = latest.checkpoint.size;
    let mut out = pb::ExchangeCheckpointsResponse {
        checkpoint: latest.note.clone().into_bytes(),
        key_rotations: node
            .ledger
            .rotation_entries()
            .map_err(|e| crate::wire::status::ledger("reading the key history", e))?,
        ..Default::default()
    };
    if seen_size > 0
        && seen_size < size
        && let Some(old) = node
            .ledger
            .checkpoint_at(seen_size)
            .map_err(|e| crate::wire::status::ledger("reading a checkpoint", e))?
    {
        out.old_checkpoint = old.note.into_bytes();
        out.consistency_proof = node
            .ledger
            .prove_consistency(seen_size, size)
            .map_err(|e| crate::wire::status::ledger("proving consistency", e))?
            .iter()
            .map(|h| h.to_vec())
            .collect();
    }
    Ok(out)
}

/// Keeps a peer's cosignature of this node's checkpoint, after checking
/// both this log's signature and the peer's cosignature.
fn keep_cosigned(
    node: &NodeContext,
    peer: &PeerIdentity,
    cosigned: &[u8],
) -> Result<SignedCheckpoint, Status> {
    let cp = node
        .ledger
        .keys()
        .verify_checkpoint(cosigned)
        .map_err(|e| {
            Status::invalid_argument(format!("the cosigned checkpoint is not this node's: {e}"))
        })?;
    cosig::verify(cosigned, &peer.public_key)
        .map_err(|e| Status::invalid_argument(format!("the cosignature does not verify: {e}")))?;
    // Only a checkpoint this store holds (not one a retired key could
    // sign): kept cosignatures are checked against the store at start-up.
    let held = node
        .ledger
        .checkpoint_at(cp.checkpoint.size)
        .map_err(|e| crate::wire::status::ledger("reading a checkpoint", e))?;
    if held.is_none_or(|h| h.checkpoint.root != cp.checkpoint.root) {
        return Err(Status::invalid_argument(format!(
            "the cosigned checkpoint of size {} is not one this node signed",
            cp.checkpoint.size
        )));
    }
    node.witness
        .keep_cosigned(&peer.node_id, &cp)
        .map_err(|e| crate::wire::status::internal("keeping a cosignature", &e))?;
    Ok(cp)
}

fn cosign(node: &NodeContext, cp: &SignedCheckpoint) -> Result<Vec<u8>, Status> {
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let line = cosig::cosign(cp.note.as_bytes(), &node.signing_key, now)
        .map_err(|e| crate::wire::status::internal("cosigning", &e))?;
    Ok(format!("{}{line}", cp.note).into_bytes())
}

/// The server side: witness the caller's checkpoint, cosign it, keep the
/// caller's cosignature of ours, answer with ours.
pub(super) async fn serve(
    node: &NodeContext,
    caller: &PeerIdentity,
    req: pb::ExchangeCheckpointsRequest,
) -> Result<pb::ExchangeCheckpointsResponse, Status> {
    let (keys, new, old, proof) = Sent {
        rotations: &req.key_rotations,
        checkpoint: &req.checkpoint,
        old_checkpoint: &req.old_checkpoint,
        proof: &req.consistency_proof,
    }
    .verify(caller, "your", Status::invalid_argument)?;
    let observed = witness(node, caller, &keys, &new, old.as_ref(), &proof).await;
    if observed.is_err() {
        node.metrics.witnessed("refused");
    }
    let observed = observed?;
    if !req.cosigned.is_empty() {
        keep_cosigned(node, caller, &req.cosigned)?;
    }
    let mut out = own_side(node, req.seen_size)?;
    match observed {
        Observed::NeedProofFrom(size) => out.need_proof_from = size,
        Observed::Stale(seen) => {
            node.metrics.witnessed("refused");
            return Err(stale_status(&keys, &new, &seen));
        }
        Observed::Grew | Observed::Same => {
            out.cosigned = cosign(node, &new)?;
            node.metrics.witnessed("cosigned");
        }
    }
    Ok(out)
}

/// Exchanges checkpoints with the node at `peer` (see the module docs of
/// [`crate::witness`]).
pub async fn exchange_with(node: &NodeContext, peer: &str) -> Result<Exchanged, Status> {
    let conn = connect_peer(node, peer).await?;
    exchange_over(node, &conn).await
}

/// Exchanges checkpoints over an open connection.
pub async fn exchange_over(node: &NodeContext, conn: &PeerChannel) -> Result<Exchanged, Status> {
    let result = exchange_inner(node, conn).await;
    node.metrics
        .witnessed(if result.is_ok() { "cosigned" } else { "failed" });
    result
}

async fn exchange_inner(node: &NodeContext, conn: &PeerChannel) -> Result<Exchanged, Status> {
    let server = &conn.server;
    let _one_at_a_time = node.witness.exchange_slot(&server.node_id).await;
    let their_keys = crate::wire::client::peer_keys(conn).await?;
    let mut client = pb::peering_client::PeeringClient::new(conn.channel.clone());
    let mut from = node.witness.cosigned_size(&server.node_id);
    let seen_size = node
        .witness
        .seen(&their_keys)
        .map_err(|e| crate::wire::status::internal("reading witnessed checkpoints", &e))?
        .map_or(0, |s| s.checkpoint.size);
    let mut answer = None;
    for _ in 0..2 {
        let req = request(node, from, seen_size, Vec::new())?;
        let r = client.exchange_checkpoints(req).await?.into_inner();
        if r.need_proof_from != 0 && r.need_proof_from != from {
            from = r.need_proof_from;
            continue;
        }
        answer = Some(r);
        break;
    }
    let r = answer.ok_or_else(|| Status::data_loss("the peer asked twice for another proof"))?;
    if r.need_proof_from != 0 {
        return Err(Status::failed_precondition(format!(
            "{} wants a consistency proof from size {} of this log, which this node cannot give",
            server.node_id, r.need_proof_from
        )));
    }
    let (keys, theirs, old, proof) = Sent {
        rotations: &r.key_rotations,
        checkpoint: &r.checkpoint,
        old_checkpoint: &r.old_checkpoint,
        proof: &r.consistency_proof,
    }
    .verify(server, "the peer's", Status::data_loss)?;
    let mut observed = witness(node, server, &keys, &theirs, old.as_ref(), &proof).await?;
    if let Observed::NeedProofFrom(size) = observed {
        // The peer witnessed this node meanwhile, so this node now holds a
        // newer checkpoint of it than the one its answer was proven from:
        // ask for a proof from that one.
        let (old, proof) = proof_from(conn, &keys, size, theirs.checkpoint.size).await?;
        observed = witness(node, server, &keys, &theirs, Some(&old), &proof).await?;
        if let Observed::NeedProofFrom(size) = observed {
            return Err(Status::data_loss(format!(
                "the peer did not prove its log consistent with its checkpoint of size {size} this node saw"
            )));
        }
    }
    if let Observed::Stale(_) = observed {
        // Its answer is older than what it showed this node meanwhile:
        // nothing new to witness or cosign.
        if !r.cosigned.is_empty() {
            keep_cosigned(node, server, &r.cosigned)?;
        }
        return Ok(Exchanged {
            peer: server.node_id.clone(),
            peer_size: theirs.checkpoint.size,
            peer_grew: false,
            cosigned_by_peer: !r.cosigned.is_empty(),
        });
    }
    // Hand the peer this node's cosignature of the checkpoint just
    // verified, with the checkpoint of this log it just cosigned (nothing
    // new for it to record).
    let cosigned = cosign(node, &theirs)?;
    let cosigned_by_peer = !r.cosigned.is_empty();
    let req = if cosigned_by_peer {
        let mine = keep_cosigned(node, server, &r.cosigned)?;
        pb::ExchangeCheckpointsRequest {
            checkpoint: log_lines_only(&mine.note, &mine.checkpoint.origin).into_bytes(),
            key_rotations: node
                .ledger
                .rotation_entries()
                .map_err(|e| crate::wire::status::ledger("reading the key history", e))?,
            seen_size: theirs.checkpoint.size,
            cosigned,
            ..Default::default()
        }
    } else {
        request(node, from, theirs.checkpoint.size, cosigned)?
    };
    // Best effort: if the peer saw a newer checkpoint of this log
    // meanwhile (it is witnessing this node too), it refuses this one as
    // stale, and the next exchange delivers the cosignature.
    if let Err(e) = client.exchange_checkpoints(req).await {
        tracing::debug!(peer = %server.node_id, error = %e.message(), "cosignature not delivered");
    }
    Ok(Exchanged {
        peer: server.node_id.clone(),
        peer_size: theirs.checkpoint.size,
        peer_grew: matches!(observed, Observed::Grew),
        cosigned_by_peer,
    })
}

/// The peer's checkpoint of size `old` and a consistency proof from it to
/// `new`, from its Ledger service, verified.
async fn proof_from(
    conn: &PeerChannel,
    keys: &LogKeys,
    old: u64,
    new: u64,
) -> Result<(SignedCheckpoint, Vec<Hash>), Status> {
    let r = pb::ledger_client::LedgerClient::new(conn.channel.clone())
        .prove_consistency(pb::ProveConsistencyRequest {
            old_size: old,
            new_size: new,
        })
        .await?
        .into_inner();
    let old_cp = keys.verify_checkpoint(&r.old_checkpoint).map_err(|e| {
        Status::data_loss(format!("the peer's old checkpoint does NOT verify: {e}"))
    })?;
    if old_cp.checkpoint.size != old {
        return Err(Status::data_loss(format!(
            "asked the peer for its checkpoint of size {old}, got size {}",
            old_cp.checkpoint.size
        )));
    }
    Ok((old_cp, hashes(&r.proof)?))
}

/// This node's side of a request: its latest checkpoint, proven from
/// `from` (the size the peer last cosigned; 0: none).
fn request(
    node: &NodeContext,
    from: u64,
    seen_size: u64,
    cosigned: Vec<u8>,
) -> Result<pb::ExchangeCheckpointsRequest, Status> {
    let own = own_side(node, from)?;
    Ok(pb::ExchangeCheckpointsRequest {
        checkpoint: own.checkpoint,
        key_rotations: own.key_rotations,
        old_checkpoint: own.old_checkpoint,
        consistency_proof: own.consistency_proof,
        seen_size,
        cosigned,
    })
}

/// Whether a refused exchange proves that this node's own store lost
/// what it signed: the witness's checkpoint of this log verifies under
/// this log's keys and the store contradicts it (it is larger than the
/// store, or the store has another root at its size). A bare claim is not
/// believed. Returns what the store lost.
pub fn own_fork(node: &NodeContext, status: &Status) -> Option<String> {
    let origin = status.metadata().get(FORK_ORIGIN)?.to_str().ok()?;
    let keys = node.ledger.keys();
    if origin != keys.origin() {
        return None;
    }
    let note = status.metadata().get_bin(FORK_SEEN)?.to_bytes().ok()?;
    let seen = keys.verify_checkpoint(&note).ok()?;
    let (size, root) = (seen.checkpoint.size, seen.checkpoint.root);
    let ours = node.ledger.latest().map_or(0, |c| c.checkpoint.size);
    if size > ours {
        return Some(format!(
            "the witness holds this node's signed checkpoint of size {size}, but its store ends at {ours}"
        ));
    }
    match node.ledger.checkpoint_at(size) {
        Ok(Some(cp)) if cp.checkpoint.root == root => None,
        _ => Some(format!(
            "the witness holds this node's signed checkpoint of size {size} with a root this store does not have"
        )),
    }
}
