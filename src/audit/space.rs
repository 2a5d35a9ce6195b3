//! One node of the data space at a glance (the auditor console's first
//! page): its latest checkpoint, verified; each witness's cosignature on
//! it, verified under the witness's key and proven consistent with the log
//! now; and the forks its ledger records. [`crate::audit::reconcile`]
//! says whether two nodes tell the same story.

use crate::audit::{AuditError, Auditor, VerifiedEntry};
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::Query;
use crate::ledger::entry::EntryKind;
use crate::ledger::note::SignedCheckpoint;
use crate::witness::cosig;

/// A witness's cosignature on the node's log, as checked here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witnessed {
    /// The witness (from its cosignature's key name).
    pub witness: NodeId,
    /// The size of the checkpoint it cosigned.
    pub size: u64,
    /// When it cosigned (POSIX seconds), once verified.
    pub timestamp: Option<u64>,
    /// `Ok`: its signature verifies under the witness's key and the log
    /// now provably extends the checkpoint it cosigned; `Err`: why not.
    pub verified: Result<(), String>,
}

/// One node as its auditor sees it.
#[derive(Clone, Debug)]
pub struct NodeSurvey {
    /// Its latest checkpoint, verified.
    pub checkpoint: SignedCheckpoint,
    /// Its verifier key.
    pub vkey: String,
    /// The time of its last entry, proven in that checkpoint.
    pub latest_time_ms: Option<i64>,
    /// How many times its key was rotated (each rotation proven).
    pub rotations: usize,
    /// The witnesses' latest cosignatures.
    pub witnesses: Vec<Witnessed>,
    /// The `ForkDetected` entries of its ledger: logs of other nodes it
    /// caught signing two histories.
    pub forks: Vec<VerifiedEntry>,
}

/// The witness names on a cosigned note (`— dsnode-witness/<id> …`).
fn witness_names(note: &[u8]) -> Vec<NodeId> {
    let Ok(text) = std::str::from_utf8(note) else {
        return Vec::new();
    };
    let prefix = cosig::witness_name(&NodeId::from_public_key(&[0; 32]));
    let prefix = prefix.split('/').next().unwrap_or_default();
    text.rsplit_once("\n\n")
        .map(|(_, sigs)| sigs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|name| name.strip_prefix(prefix)?.strip_prefix('/'))
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// Surveys the node `a` audits; `known` are the other nodes whose keys
/// can check a witness's cosignature.
pub async fn survey(a: &mut Auditor, known: &[PeerIdentity]) -> Result<NodeSurvey, AuditError> {
    let answer = a.checkpoint_answer().await?;
    let checkpoint = a.checkpoint().await?;
    let size = checkpoint.checkpoint.size;
    let latest_time_ms = if size == 0 {
        None
    } else {
        Some(a.prove_inclusion(size - 1, size).await?.1.entry.time_ms)
    };
    let keys = a.keys().await?.clone();
    let mut witnesses = Vec::new();
    for note in &answer.cosigned_checkpoints {
        // The log's own signature first: a note that is not this log's
        // checkpoint says nothing about it.
        let cp = match keys.verify_checkpoint(note) {
            Ok(cp) => cp,
            Err(e) => {
                for witness in witness_names(note) {
                    witnesses.push(Witnessed {
                        witness,
                        size: 0,
                        timestamp: None,
                        verified: Err(format!("the cosigned checkpoint is not this log's: {e}")),
                    });
                }
                continue;
            }
        };
        for witness in witness_names(note) {
            let n = cp.checkpoint.size;
            let verified = match known.iter().find(|k| k.node_id == witness) {
                None => {
                    Err("the witness is not among the audited nodes: its key is unknown".into())
                }
                Some(k) => match cosig::verify(note, &k.public_key) {
                    Err(e) => Err(format!("cosignature NOT verified: {e}")),
                    Ok(c) => Ok(c.timestamp),
                },
            };
            let verified = match verified {
                Ok(t) if n > size => Err(format!(
                    "cosigned size {n} is beyond the log's checkpoint {size} (t={t})"
                )),
                Ok(t) => match consistent(a, &cp, &checkpoint).await {
                    Ok(()) => Ok(t),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            witnesses.push(Witnessed {
                witness,
                size: n,
                timestamp: verified.as_ref().ok().copied(),
                verified: verified.map(|_| ()),
            });
        }
    }
    let (_, forks) = a
        .entries(
            Query {
                kind: Some(EntryKind::ForkDetected),
                ..Query::default()
            },
            true,
        )
        .await?;
    Ok(NodeSurvey {
        vkey: a.vkey(),
        checkpoint,
        latest_time_ms,
        rotations: keys.keys().len().saturating_sub(1),
        witnesses,
        forks,
    })
}

/// Whether the log's checkpoint `now` provably extends the cosigned
/// checkpoint `cp`: the same tree at the same size, or a consistency proof
/// from it to exactly `now`.
async fn consistent(
    a: &mut Auditor,
    cp: &SignedCheckpoint,
    now: &SignedCheckpoint,
) -> Result<(), String> {
    let (old, size) = (cp.checkpoint.size, now.checkpoint.size);
    let fork = || {
        format!("the log's checkpoint of size {old} is not the one the witness cosigned: a fork")
    };
    if old == size {
        return if cp.checkpoint.root == now.checkpoint.root {
            Ok(())
        } else {
            Err(fork())
        };
    }
    match a.prove_consistency(old, size).await {
        Ok((o, n, _))
            if o.checkpoint.root == cp.checkpoint.root && n.checkpoint == now.checkpoint =>
        {
            Ok(())
        }
        Ok(_) => Err(fork()),
        Err(e) => Err(format!("consistency {old} → {size}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_names_are_read_from_signature_lines_only() {
        let w = NodeId::from_public_key(&[5; 32]);
        let note = format!(
            "dsnode/x\n3\nAAAA\n\n\u{2014} dsnode/x abcd\n\u{2014} {} efgh\n\u{2014} other/thing ijkl\n",
            cosig::witness_name(&w)
        );
        assert_eq!(witness_names(note.as_bytes()), vec![w.clone()]);
        assert!(witness_names(b"no signatures").is_empty());
        assert!(witness_names(&[0xff, 0xfe]).is_empty());
        let body_only = format!("dsnode/x\n\u{2014} {} efgh\n", cosig::witness_name(&w));
        assert!(witness_names(body_only.as_bytes()).is_empty());
    }
}
