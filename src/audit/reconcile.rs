//! Auditor questions across nodes (issue 8): do two ledgers tell the same
//! story ([`reconcile`]), and who could use a dataset at a given time
//! ([`who_could`]). Everything is read through [`Auditor`], so every entry
//! is proven in a verified checkpoint before it counts.

use std::collections::BTreeMap;

use crate::audit::{AuditError, Auditor, VerifiedEntry};
use crate::digest::Hash;
use crate::exchange::grant::verify_grant;
use crate::identity::PeerIdentity;
use crate::ledger::Query;
use crate::ledger::entry::{Entry, EntryKind};
use crate::ledger::keys::LogKeys;

/// What a reconciliation found.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Grants between the two nodes that were checked.
    pub grants: usize,
    /// Receipts checked.
    pub receipts: usize,
    /// The largest checkpoint of each node the other witnessed (sizes of
    /// A's log seen by B, and of B's log seen by A; 0: none).
    pub witnessed: (u64, u64),
    /// Every discrepancy, one sentence each naming the entry.
    pub discrepancies: Vec<String>,
}

/// One node's entries about the other, by grant.
struct Side {
    name: String,
    keys: LogKeys,
    by_grant: BTreeMap<String, Vec<Entry>>,
    /// Checkpoints of the *other* node this one recorded (signed notes).
    seen_of_other: Vec<String>,
}

async fn side(
    a: &mut Auditor,
    other: &PeerIdentity,
    name: &str,
    since_ms: Option<i64>,
) -> Result<Side, AuditError> {
    let keys = a.keys().await?.clone();
    let (_, entries) = a
        .entries(
            Query {
                party: Some(other.node_id.clone()),
                since_ms,
                ..Query::default()
            },
            true,
        )
        .await?;
    let mut by_grant: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut seen_of_other = Vec::new();
    for VerifiedEntry { entry, .. } in entries {
        if entry.draft.kind == EntryKind::PeerCheckpointSeen {
            seen_of_other.push(entry.draft.detail.clone());
        }
        if let Some(g) = entry.draft.grant.clone() {
            by_grant.entry(g).or_default().push(entry);
        }
    }
    Ok(Side {
        name: format!("{name} ({})", a.node().node_id),
        keys,
        by_grant,
        seen_of_other,
    })
}

fn find(entries: &[Entry], kind: EntryKind) -> Vec<&Entry> {
    entries.iter().filter(|e| e.draft.kind == kind).collect()
}

fn hashes(entries: &[Entry], kind: EntryKind) -> Vec<(Hash, u64)> {
    entries
        .iter()
        .filter(|e| e.draft.kind == kind)
        .filter_map(|e| e.draft.object_hash.map(|h| (h, e.index)))
        .collect()
}

/// The largest checkpoint of `node`'s log that `witness` recorded, checked
/// against `node`'s own log (a consistency proof from it to the latest).
async fn witnessed_size(
    node: &mut Auditor,
    node_side: &Side,
    witness: &Side,
    out: &mut Vec<String>,
) -> Result<u64, AuditError> {
    let mut best: Option<crate::ledger::note::SignedCheckpoint> = None;
    for note in &witness.seen_of_other {
        if let Ok(cp) = node_side.keys.verify_checkpoint(note.as_bytes())
            && best
                .as_ref()
                .is_none_or(|b| cp.checkpoint.size > b.checkpoint.size)
        {
            best = Some(cp);
        }
    }
    let Some(best) = best else {
        return Ok(0);
    };
    match node.prove_consistency(best.checkpoint.size, 0).await {
        Ok((own, _, _)) if own.checkpoint.root == best.checkpoint.root => Ok(best.checkpoint.size),
        Ok(_) => {
            out.push(format!(
                "{} recorded a checkpoint of {} of size {} that {} itself does not have: its log forked",
                witness.name, node_side.name, best.checkpoint.size, node_side.name
            ));
            Ok(0)
        }
        Err(e) => {
            out.push(format!(
                "{} cannot prove its log consistent with its checkpoint of size {} that {} witnessed: {e}",
                node_side.name, best.checkpoint.size, witness.name
            ));
            Ok(0)
        }
    }
}

/// Reconciles the ledgers of `a` and `b` over the grants between them
/// (entries at or after `since_ms`): for every grant, the publisher's
/// `AccessGranted` and the consumer's `GrantReceived` exist and name the
/// same dataset and grant hash; every receipt either side recorded is
/// recorded by both with the same hash (and where the consumer's entry
/// names the publisher's entry and transfer, it names the ones recording
/// that receipt); the consumer completed no more transfers than the
/// publisher started; and every entry is under a checkpoint the other side
/// witnessed.
pub async fn reconcile(
    a: &mut Auditor,
    b: &mut Auditor,
    since_ms: Option<i64>,
) -> Result<Reconciled, AuditError> {
    let (a_node, b_node) = (a.node().clone(), b.node().clone());
    let sa = side(a, &b_node, "A", since_ms).await?;
    let sb = side(b, &a_node, "B", since_ms).await?;
    let mut out = Reconciled::default();
    let wa = witnessed_size(a, &sa, &sb, &mut out.discrepancies).await?;
    let wb = witnessed_size(b, &sb, &sa, &mut out.discrepancies).await?;
    out.witnessed = (wa, wb);

    let grants: std::collections::BTreeSet<&String> =
        sa.by_grant.keys().chain(sb.by_grant.keys()).collect();
    let empty = Vec::new();
    for g in grants {
        let (ea, eb) = (
            sa.by_grant.get(g).unwrap_or(&empty),
            sb.by_grant.get(g).unwrap_or(&empty),
        );
        // Which side published: the one with AccessGranted (else the one
        // the other's GrantReceived does not belong to).
        let a_publishes = !find(ea, EntryKind::AccessGranted).is_empty()
            || !find(eb, EntryKind::GrantReceived).is_empty();
        let (p, pe, c, ce) = if a_publishes {
            (&sa, ea, &sb, eb)
        } else {
            (&sb, eb, &sa, ea)
        };
        out.grants += 1;
        let d = &mut out.discrepancies;
        let granted = find(pe, EntryKind::AccessGranted);
        let received = find(ce, EntryKind::GrantReceived);
        match (granted.first(), received.first()) {
            (Some(pg), Some(cr)) => {
                if pg.draft.dataset != cr.draft.dataset
                    || pg.draft.object_hash != cr.draft.object_hash
                {
                    d.push(format!(
                        "grant {g}: {} entry {} (AccessGranted) and {} entry {} (GrantReceived) name different datasets or grant hashes",
                        p.name, pg.index, c.name, cr.index
                    ));
                }
            }
            (Some(pg), None) => d.push(format!(
                "grant {g}: {} entry {} (AccessGranted) has no GrantReceived entry on {}",
                p.name, pg.index, c.name
            )),
            (None, Some(cr)) => d.push(format!(
                "grant {g}: {} entry {} (GrantReceived) has no AccessGranted entry on {}",
                c.name, cr.index, p.name
            )),
            (None, None) => {}
        }
        let (pr, cr) = (
            hashes(pe, EntryKind::ReceiptRecorded),
            hashes(ce, EntryKind::ReceiptRecorded),
        );
        for (hash, index) in &pr {
            out.receipts += 1;
            if !cr.iter().any(|(h, _)| h == hash) {
                d.push(format!(
                    "grant {g}: {} entry {index} (ReceiptRecorded) has no matching ReceiptRecorded entry on {}",
                    p.name, c.name
                ));
            }
        }
        for (hash, index) in &cr {
            if !pr.iter().any(|(h, _)| h == hash) {
                d.push(format!(
                    "grant {g}: {} entry {index} (ReceiptRecorded) has no matching ReceiptRecorded entry on {}",
                    c.name, p.name
                ));
            }
        }
        // A receipt entry of the consumer that names the publisher's entry
        // (`peer_entry`, version 2 entries) must name the one recording the
        // same receipt, and both must name the same transfer.
        let publisher_receipts = find(pe, EntryKind::ReceiptRecorded);
        for own in find(ce, EntryKind::ReceiptRecorded) {
            // A receipt the publisher did not record was reported above.
            let Some(theirs) = publisher_receipts.iter().find(|e| {
                own.draft.object_hash.is_some() && e.draft.object_hash == own.draft.object_hash
            }) else {
                continue;
            };
            if let Some(named) = own.draft.peer_entry
                && named != theirs.index
            {
                d.push(format!(
                    "grant {g}: {} entry {} (ReceiptRecorded) names {} entry {named}, but {} recorded that receipt at entry {}",
                    c.name, own.index, p.name, p.name, theirs.index
                ));
            }
            if let (Some(a), Some(b)) = (own.draft.transfer, theirs.draft.transfer)
                && a != b
            {
                d.push(format!(
                    "grant {g}: {} entry {} and {} entry {} (ReceiptRecorded) record the same receipt for different transfers ({a} and {b})",
                    c.name, own.index, p.name, theirs.index
                ));
            }
        }
        let (started, completed) = (
            find(pe, EntryKind::TransferStarted).len(),
            find(ce, EntryKind::TransferCompleted),
        );
        if completed.len() > started {
            d.push(format!(
                "grant {g}: {} completed {} transfers (entry {}) but {} started {started}",
                c.name,
                completed.len(),
                completed.last().map_or(0, |e| e.index),
                p.name
            ));
        }
        // Every entry under a checkpoint the other side witnessed.
        let (wp, wc) = if a_publishes { (wa, wb) } else { (wb, wa) };
        for (side, entries, witnessed, by) in [(p, pe, wp, c), (c, ce, wc, p)] {
            for e in entries
                .iter()
                .filter(|e| e.draft.kind != EntryKind::PeerCheckpointSeen)
            {
                if e.index >= witnessed {
                    d.push(format!(
                        "grant {g}: {} entry {} ({}) is not under a checkpoint {} witnessed (it saw size {witnessed})",
                        side.name, e.index, e.draft.kind, by.name
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The signed grant the publisher `p` recorded in its `AccessGranted`
/// entry `e` (proven by the caller): served by the node, and required to
/// be the very object the entry hashes, signed by a key of the node's
/// history that was not retired when the entry was written, with the id
/// the entry names.
pub async fn granted_terms(
    p: &mut Auditor,
    keys: &LogKeys,
    e: &Entry,
) -> Result<crate::envelope::Verified<crate::exchange::grant::Grant>, AuditError> {
    let id = e.draft.grant.clone().unwrap_or_default();
    let ev = p.evidence(&id).await?;
    let env = crate::envelope::Envelope::from_json(&ev.grant)
        .map_err(|err| AuditError::Mismatch(format!("grant {id}: {err}")))?;
    if Some(env.payload_hash()) != e.draft.object_hash {
        return Err(AuditError::Mismatch(format!(
            "grant {id} as served is not the one entry {} recorded",
            e.index
        )));
    }
    let (grant, _) = keys
        .verify_any(|k| verify_grant(env.clone(), k))
        .map_err(|err| AuditError::Mismatch(format!("grant {id}: {err}")))?;
    keys.honours(grant.signer(), &format!("grant {id}"), e.index)?;
    if grant.value().id.as_str() != id || grant.value().publisher != p.node().node_id {
        return Err(AuditError::Mismatch(format!(
            "entry {} names grant {id} of this node, but the grant served is {} of {}",
            e.index,
            grant.value().id,
            grant.value().publisher
        )));
    }
    Ok(grant)
}

/// A receipt (DSSE JSON) for `grant`, as a node served it, checked
/// against the consumer's ledger: a `ReceiptRecorded` entry there must
/// hash this very receipt, and it must be signed by a key of the
/// consumer's history not retired before that entry, for this grant.
pub fn recorded_receipt(
    text: &str,
    grant: &str,
    consumer_keys: &LogKeys,
    consumer_entries: &[VerifiedEntry],
) -> Result<crate::exchange::receipt::Receipt, AuditError> {
    let env = crate::envelope::Envelope::from_json(text)
        .map_err(|e| AuditError::Mismatch(format!("a receipt: {e}")))?;
    let hash = env.payload_hash();
    let entry = consumer_entries
        .iter()
        .find(|v| {
            v.entry.draft.kind == EntryKind::ReceiptRecorded
                && v.entry.draft.object_hash == Some(hash)
        })
        .ok_or_else(|| {
            AuditError::Mismatch(
                "a receipt the consumer's ledger does not record (no ReceiptRecorded hashes it)"
                    .into(),
            )
        })?;
    let (receipt, _) = consumer_keys
        .verify_any(|k| crate::exchange::receipt::verify_receipt(env.clone(), k))
        .map_err(|e| AuditError::Mismatch(format!("a receipt: {e}")))?;
    consumer_keys.honours(receipt.signer(), "a receipt", entry.entry.index)?;
    if receipt.value().grant.as_str() != grant {
        return Err(AuditError::Mismatch(format!(
            "a receipt recorded for grant {grant} is for grant {}",
            receipt.value().grant
        )));
    }
    Ok(receipt.value().clone())
}

/// A grant in force at the time asked about.
#[derive(Debug)]
pub struct InForce {
    /// The grant.
    pub grant: crate::exchange::grant::Grant,
    /// Its AccessGranted entry, proven in `checkpoint_size`.
    pub entry_index: u64,
    /// The checkpoint it was proven in.
    pub checkpoint_size: u64,
    /// The length of its inclusion proof.
    pub proof_len: usize,
}

/// The grants of `dataset` in force at `at_ms` on the publisher `p`:
/// recorded (`AccessGranted`) at or before then, within their validity
/// window, and not revoked (`GrantRevoked`) at or before then.
pub async fn who_could(
    p: &mut Auditor,
    dataset: &str,
    at_ms: i64,
) -> Result<Vec<InForce>, AuditError> {
    let keys = p.keys().await?.clone();
    let (cp, granted) = p
        .entries(
            Query {
                dataset: Some(dataset.to_owned()),
                kind: Some(EntryKind::AccessGranted),
                ..Query::default()
            },
            true,
        )
        .await?;
    let (_, revoked) = p
        .entries(
            Query {
                dataset: Some(dataset.to_owned()),
                kind: Some(EntryKind::GrantRevoked),
                ..Query::default()
            },
            true,
        )
        .await?;
    let mut out = Vec::new();
    for v in granted {
        let e = &v.entry;
        let Some(id) = e.draft.grant.clone() else {
            continue;
        };
        if e.time_ms > at_ms {
            continue;
        }
        if revoked
            .iter()
            .any(|r| r.entry.draft.grant.as_deref() == Some(&id) && r.entry.time_ms <= at_ms)
        {
            continue;
        }
        let grant = granted_terms(p, &keys, e).await?;
        let g = grant.value();
        if g.not_before_ms <= at_ms && at_ms < g.not_after_ms {
            out.push(InForce {
                grant: g.clone(),
                entry_index: e.index,
                checkpoint_size: cp.checkpoint.size,
                proof_len: v.inclusion_proof.len(),
            });
        }
    }
    Ok(out)
}
