//! `dsnode audit …`: a node's ledger seen by an auditor (checkpoint,
//! entries, proofs, reconciliation, evidence bundles, who-could), and the
//! offline checks of a stopped node's ledger and of the forks it found.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::args::{AuditCommand, ClientArgs};
use super::auditor;
use super::output::{Output, ReportedFailure};
use crate::audit::{self, AuditError};
use crate::exchange::grant::time_text;
use crate::fsutil;
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::Query;
use crate::ledger::entry::EntryKind;
use crate::ledger::note::SignedCheckpoint;
use crate::peer::EntryQuery;
use crate::runtime::config::DataDir;

fn parse_time(flag: &str, value: Option<&str>) -> Result<i64> {
    let Some(v) = value else { return Ok(0) };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--{flag} `{v}` is not an RFC 3339 time such as 2026-11-26T08:00:00Z")
        })?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?)
}

fn checkpoint_json(cp: &SignedCheckpoint) -> Value {
    json!({
        "origin": cp.checkpoint.origin,
        "size": cp.checkpoint.size,
        "root": data_encoding::BASE64.encode(&cp.checkpoint.root),
        "note": cp.note,
    })
}

fn entry_json(v: &audit::VerifiedEntry) -> Value {
    let e = &v.entry;
    let mut out = json!({
        "index": e.index,
        "time": time_text(e.time_ms),
        "time_ms": e.time_ms,
        "kind": e.draft.kind.name(),
        "parties": e.draft.parties.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "dataset": e.draft.dataset,
        "grant": e.draft.grant,
        "object_hash": e.draft.object_hash.map(|h| data_encoding::HEXLOWER.encode(&h)),
        "detail": e.draft.detail,
        "leaf_hash": data_encoding::HEXLOWER.encode(&v.leaf_hash),
    });
    // The typed references only where the entry has them (version 2
    // entries that link to others), so older output keeps its shape.
    for (key, value) in [
        ("transfer", e.draft.transfer),
        ("peer_entry", e.draft.peer_entry),
    ] {
        if let (Some(value), Some(fields)) = (value, out.as_object_mut()) {
            fields.insert(key.into(), value.into());
        }
    }
    out
}

fn entry_text(v: &audit::VerifiedEntry) -> String {
    let e = &v.entry;
    let mut line = format!(
        "#{:<6} {}  {:<18}",
        e.index,
        time_text(e.time_ms),
        e.draft.kind.name()
    );
    let parties: Vec<String> = e.draft.parties.iter().map(ToString::to_string).collect();
    if !parties.is_empty() {
        line.push_str(&format!(" parties={}", parties.join(",")));
    }
    if let Some(d) = &e.draft.dataset {
        line.push_str(&format!(" dataset={d}"));
    }
    if let Some(g) = &e.draft.grant {
        line.push_str(&format!(" grant={g}"));
    }
    if !e.draft.detail.is_empty() {
        // Escaped: a detail may hold newlines (a witnessed checkpoint)
        // and must never move a terminal's cursor.
        line.push_str(&format!(" \"{}\"", e.draft.detail.escape_debug()));
    }
    line
}

/// The filter of `audit entries` (an empty value: any). A party or kind
/// that does not parse is refused as the auditor refuses a bad filter.
fn filter(
    dataset: Option<String>,
    party: Option<String>,
    kind: Option<String>,
    grant: Option<String>,
    (since_ms, until_ms): (i64, i64),
) -> Result<Query, AuditError> {
    let bad = |e: String| AuditError::Mismatch(format!("bad filter: {e}"));
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    Ok(Query {
        dataset: given(dataset),
        party: given(party)
            .map(|p| p.parse::<NodeId>())
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        kind: given(kind)
            .map(|k| EntryKind::parse(&k))
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        grant: given(grant),
        since_ms: (since_ms != 0).then_some(since_ms),
        until_ms: (until_ms != 0).then_some(until_ms),
    })
}

async fn two_auditors(
    client: &ClientArgs,
    peers: &[String],
) -> Result<(audit::Auditor, audit::Auditor)> {
    let [a, b] = peers else {
        bail!("give exactly two nodes: --peer A --peer B");
    };
    Ok((
        auditor(&client.data_dir, a).await?,
        auditor(&client.data_dir, b).await?,
    ))
}

/// `dsnode audit serve`: the web console, until Ctrl-C.
pub(super) async fn serve(a: super::args::ConsoleArgs) -> Result<()> {
    let options = crate::console::Options {
        data_dir: a.data_dir,
        peers: a.peers,
        listen: a.listen,
        lang: a
            .lang
            .as_deref()
            .and_then(crate::console::lang::Lang::parse),
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        token_file: a.token_file,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let peers = options.peers.len();
    crate::console::serve(options, stop, |started| {
        // The line tests and scripts wait for; flushed at once.
        println!(
            "auditor console for {peers} node(s) at {} (Ctrl-C to stop)",
            started.url
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })
    .await?;
    Ok(())
}

pub(super) async fn audit(command: AuditCommand) -> Result<Output> {
    match command {
        AuditCommand::Serve(_) => bail!("`audit serve` runs on its own"),
        AuditCommand::Reconcile {
            client,
            peers,
            since,
        } => {
            let (mut a, mut b) = two_auditors(&client, &peers).await?;
            let since = since
                .as_deref()
                .map(|t| parse_time("since", Some(t)))
                .transpose()?;
            let r = crate::audit::reconcile::reconcile(&mut a, &mut b, since).await?;
            let mut text = format!(
                "reconciled A = {} (node {}) and B = {} (node {}): {} grants, {} receipts; B witnessed A up to size {}, A witnessed B up to size {}\n",
                peers[0],
                a.node().node_id,
                peers[1],
                b.node().node_id,
                r.grants,
                r.receipts,
                r.witnessed.0,
                r.witnessed.1
            );
            for d in &r.discrepancies {
                text.push_str(&format!("DISCREPANCY: {d}\n"));
            }
            if r.discrepancies.is_empty() {
                text.push_str("no discrepancies: both ledgers tell the same story\n");
            }
            let output = Output {
                text: text.trim_end().to_owned(),
                json: json!({"grants": r.grants, "receipts": r.receipts, "witnessed": [r.witnessed.0, r.witnessed.1], "discrepancies": r.discrepancies}),
            };
            if r.discrepancies.is_empty() {
                Ok(output)
            } else {
                Err(ReportedFailure(output).into())
            }
        }
        AuditCommand::Bundle {
            client,
            peers,
            grant,
            out,
        } => {
            let (mut a, mut b) = two_auditors(&client, &peers).await?;
            let bundle = crate::audit::evidence::build(&mut a, &mut b, &grant).await?;
            let bytes = bundle.to_bytes();
            fsutil::create_new_atomic(&out, &bytes, fsutil::PUBLIC_MODE)?;
            Ok(Output {
                text: format!(
                    "evidence bundle for grant {grant} written to {} ({} bytes): {} publisher and {} consumer entries with proofs, {} receipts\ncheck it anywhere with: dsnode audit verify-bundle {} --ca CA.pem",
                    out.display(),
                    bytes.len(),
                    bundle.publisher.entries.len(),
                    bundle.consumer.entries.len(),
                    bundle.receipts.len(),
                    out.display()
                ),
                json: json!({"grant": grant, "out": out, "bytes": bytes.len()}),
            })
        }
        AuditCommand::VerifyBundle { file, ca, .. } => {
            let bytes = fsutil::read(&file)?;
            let ca_pem = fsutil::read(&ca)?;
            let account = crate::audit::evidence::verify(&bytes, &ca_pem)
                .with_context(|| format!("{} does NOT verify", file.display()))?;
            Ok(Output {
                json: json!({"file": file, "verified": true, "account": account}),
                text: account,
            })
        }
        AuditCommand::WhoCould {
            client,
            peer,
            dataset,
            at,
        } => {
            let at_ms = parse_time("at", Some(&at))?;
            let mut p = auditor(&client.data_dir, &peer).await?;
            let found = crate::audit::reconcile::who_could(&mut p, &dataset, at_ms).await?;
            let mut text = format!(
                "grants of {dataset} in force at {} on {peer} (node {}): {}\n",
                time_text(at_ms),
                p.node().node_id,
                found.len()
            );
            let mut rows = Vec::new();
            for f in &found {
                let g = &f.grant;
                text.push_str(&format!(
                    "{}  to {}  purpose {}  {} .. {}\n  AccessGranted entry {} proven in checkpoint {} ({} hashes, signature verified)\n",
                    g.id, g.grantee, g.purpose, time_text(g.not_before_ms), time_text(g.not_after_ms), f.entry_index, f.checkpoint_size, f.proof_len
                ));
                rows.push(json!({"grant": g.id.to_string(), "grantee": g.grantee.to_string(), "purpose": g.purpose, "not_before_ms": g.not_before_ms, "not_after_ms": g.not_after_ms, "entry": f.entry_index, "checkpoint": f.checkpoint_size}));
            }
            Ok(Output {
                text: text.trim_end().to_owned(),
                json: json!({"dataset": dataset, "at_ms": at_ms, "grants": rows}),
            })
        }
        AuditCommand::Storage { client } => {
            let addr = super::own_address(&client.data_dir)?;
            let conn = super::connect(&client.data_dir, &addr).await?;
            let r = crate::wire::admin::AdminClient::new(&conn)
                .audit_storage()
                .await
                .map_err(|e| super::call_error(&addr, &e))?;
            let mut text = format!(
                "chunk store {}: {} dataset(s), {} chunk(s), {} bytes read back and checked",
                r.store, r.datasets, r.chunks, r.bytes
            );
            for d in &r.damaged {
                text.push_str(&format!(
                    "\n  DAMAGED dataset {} chunk {} (sha256 {}): {}",
                    d.dataset_id, d.chunk_index, d.chunk_sha256, d.problem
                ));
            }
            let damaged: Vec<_> = r
                .damaged
                .iter()
                .map(|d| json!({"dataset_id": d.dataset_id, "chunk_index": d.chunk_index, "chunk_sha256": d.chunk_sha256, "problem": d.problem}))
                .collect();
            let json = json!({"store": r.store, "datasets": r.datasets, "chunks": r.chunks, "bytes": r.bytes, "damaged": damaged});
            if !r.damaged.is_empty() {
                return Err(ReportedFailure(Output {
                    text: format!(
                        "{text}\n{} damaged chunk(s): fetches of those datasets fail until the chunks are restored (from a backup; or delete the damaged objects and publish the same content again: the same bytes make the same chunks)",
                        r.damaged.len()
                    ),
                    json,
                })
                .into());
            }
            Ok(Output {
                text: format!("{text}\n  every chunk matches its hash"),
                json,
            })
        }
        AuditCommand::Checkpoint { client, peer } => {
            let mut a = auditor(&client.data_dir, &peer).await?;
            let cp = a.checkpoint().await?;
            Ok(Output {
                text: format!(
                    "checkpoint of {} (node {}): verified\n  size {}\n  root {}\n  vkey {}\n\n{}",
                    peer,
                    a.node().node_id,
                    cp.checkpoint.size,
                    data_encoding::BASE64.encode(&cp.checkpoint.root),
                    a.vkey(),
                    cp.note.trim_end()
                ),
                json: json!({"peer": peer, "node_id": a.node().node_id.to_string(), "verified": true, "vkey": a.vkey(), "checkpoint": checkpoint_json(&cp)}),
            })
        }
        AuditCommand::Entries {
            client,
            peer,
            dataset,
            party,
            kind,
            grant,
            since,
            until,
            limit,
            first_page,
        } => {
            let times = (
                parse_time("since", since.as_deref())?,
                parse_time("until", until.as_deref())?,
            );
            let mut a = auditor(&client.data_dir, &peer).await?;
            let query = EntryQuery {
                filter: filter(dataset, party, kind, grant, times)?,
                limit,
                ..EntryQuery::default()
            };
            let (cp, entries) = a.entries(query, !first_page).await?;
            let mut text = format!(
                "{} entries of {} (node {}), each verified against checkpoint {} (signature verified)",
                entries.len(),
                peer,
                a.node().node_id,
                cp.checkpoint.size
            );
            for e in &entries {
                text.push('\n');
                text.push_str(&entry_text(e));
            }
            Ok(Output {
                text,
                json: json!({"peer": peer, "verified": true, "checkpoint": checkpoint_json(&cp), "entries": entries.iter().map(entry_json).collect::<Vec<_>>()}),
            })
        }
        AuditCommand::Prove {
            client,
            peer,
            index,
            size,
            consistency,
        } => {
            let mut a = auditor(&client.data_dir, &peer).await?;
            if let Some(sizes) = consistency {
                let [old, new] = sizes[..] else {
                    bail!("--consistency takes two sizes: OLD NEW");
                };
                let (old_cp, new_cp, len) = a.prove_consistency(old, new).await?;
                return Ok(Output {
                    text: format!(
                        "consistency {} → {}: verified ({len} hashes); both checkpoints' signatures verified",
                        old_cp.checkpoint.size, new_cp.checkpoint.size
                    ),
                    json: json!({"peer": peer, "verified": true, "old": checkpoint_json(&old_cp), "new": checkpoint_json(&new_cp), "proof_hashes": len}),
                });
            }
            let Some(index) = index else {
                bail!("give --index N or --consistency OLD NEW");
            };
            let (cp, entry, len) = a.prove_inclusion(index, size.unwrap_or(0)).await?;
            Ok(Output {
                text: format!(
                    "entry {index} is in checkpoint {} of {}: verified ({len} hashes; checkpoint signature verified)\n{}",
                    cp.checkpoint.size,
                    peer,
                    entry_text(&entry)
                ),
                json: json!({"peer": peer, "verified": true, "checkpoint": checkpoint_json(&cp), "entry": entry_json(&entry), "proof_hashes": len}),
            })
        }
        AuditCommand::Forks { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let found = crate::witness::WitnessBook::forks(&dir.witness())?;
            let mut text = String::new();
            let mut rows = Vec::new();
            for (path, read) in &found {
                let checked = read
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|e| e.verify().map(|pair| (e, pair)));
                match checked {
                    Ok((e, (a, b))) => {
                        text.push_str(&format!(
                            "FORK in log {} (node {}): {}, found {}\n  seen:        size {} root {}\n  conflicting: size {} root {}\n  both signatures verified; evidence {}\n",
                            e.origin,
                            e.node_id,
                            e.kind,
                            time_text(e.detected_at_ms),
                            a.checkpoint.size,
                            data_encoding::BASE64.encode(&a.checkpoint.root),
                            b.checkpoint.size,
                            data_encoding::BASE64.encode(&b.checkpoint.root),
                            path.display()
                        ));
                        rows.push(json!({"origin": e.origin, "node_id": e.node_id, "kind": e.kind, "detected_at_ms": e.detected_at_ms, "seen": e.seen, "conflicting": e.conflicting, "verified": true, "path": path}));
                    }
                    Err(why) => {
                        text.push_str(&format!("{}: NOT valid evidence: {why}\n", path.display()));
                        rows.push(
                            json!({"path": path, "verified": false, "error": why.to_string()}),
                        );
                    }
                }
            }
            if found.is_empty() {
                text.push_str("no forks found\n");
            }
            let output = Output {
                text: text.trim_end().to_owned(),
                json: json!({"forks": rows}),
            };
            if found.is_empty() {
                Ok(output)
            } else {
                Err(ReportedFailure(output).into())
            }
        }
        AuditCommand::Verify { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let cert = crate::identity::cert::cert_der_from_pem(&fsutil::read(&dir.cert())?)?;
            let node = PeerIdentity::from_der(&cert)?;
            let (report, keys) = match crate::ledger::verify_dir(&dir.ledger(), &node.public_key) {
                Ok(verified) => verified,
                // Not a verdict on the ledger: its node is running.
                Err(crate::ledger::LedgerError::Store(
                    crate::ledger::store::StoreError::Locked { .. },
                )) => anyhow::bail!(
                    "cannot verify the ledger of node {} here: the node is running and holds its store ({}); stop it first, or check the running node from outside with `dsnode audit checkpoint` and `dsnode audit prove` (its own scrub re-verifies the whole ledger in the background)",
                    node.node_id,
                    dir.ledger().display()
                ),
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "the ledger of node {} does NOT verify",
                        node.node_id
                    )));
                }
            };
            let history = if keys.keys().len() > 1 {
                format!("\n{keys}")
            } else {
                String::new()
            };
            Ok(Output {
                text: format!(
                    "ledger of node {} verified: {} entries, {} checkpoints (every signature checked), root {}{history}",
                    node.node_id,
                    report.size,
                    report.checkpoints,
                    data_encoding::BASE64.encode(&report.root)
                ),
                json: json!({"node_id": node.node_id.to_string(), "verified": true, "size": report.size, "checkpoints": report.checkpoints, "root": data_encoding::BASE64.encode(&report.root)}),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::{Entry, EntryDraft};

    fn verified(draft: EntryDraft) -> audit::VerifiedEntry {
        audit::VerifiedEntry {
            entry: Entry::new(5, 1_764_000_000_000, draft),
            leaf_hash: [0; 32],
            inclusion_proof: Vec::new(),
        }
    }

    #[test]
    fn entry_json_has_the_typed_references_only_when_set() {
        let plain = entry_json(&verified(EntryDraft::new(EntryKind::TransferStarted)));
        let fields = plain.as_object().expect("object");
        assert!(!fields.contains_key("transfer") && !fields.contains_key("peer_entry"));
        assert_eq!(plain["index"], 5);

        let mut draft = EntryDraft::new(EntryKind::ReceiptRecorded);
        draft.transfer = Some(3);
        draft.peer_entry = Some(4);
        draft.detail = "publisher entry 4".into();
        let linked = entry_json(&verified(draft));
        assert_eq!(
            (&linked["transfer"], &linked["peer_entry"]),
            (&json!(3), &json!(4))
        );
        assert_eq!(linked["detail"], "publisher entry 4");

        let mut draft = EntryDraft::new(EntryKind::TransferResumed);
        draft.transfer = Some(3);
        let resumed = entry_json(&verified(draft));
        assert_eq!(resumed["transfer"], 3);
        assert!(
            !resumed
                .as_object()
                .expect("object")
                .contains_key("peer_entry")
        );
    }
}
