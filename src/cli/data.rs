//! The commands about datasets and access to them: `publish`, `catalog`,
//! `policy …`, `request`, `grants …`, `fetch`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::args::{
    CatalogArgs, FetchArgs, GrantStateArg, GrantsCommand, PolicyCommand, PublishArgs, RequestArgs,
};
use super::output::{Output, identity_json};
use super::{call_error, connect, own_address};
use crate::exchange::grant::time_text;
use crate::fsutil;
use crate::peer::{AccessAsk, Code, PeerError};
use crate::wire::admin::{AdminClient, FetchEvent, FetchOptions};
use crate::wire::pb;

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub(super) async fn publish(a: PublishArgs) -> Result<Output> {
    use tokio::io::AsyncReadExt;
    let policy_toml = fsutil::read_to_string(&a.policy)?;
    // Checked here for a quick answer; the node checks again.
    crate::policy::Policy::from_toml(&policy_toml)
        .with_context(|| format!("{} is not a valid policy", a.policy.display()))?;
    if a.grants.len() > a.derived_from.len() {
        bail!("more --grant than --derived-from");
    }
    // An object in the node's object store is read by the node itself.
    let source = a.file.to_string_lossy().into_owned();
    let object = crate::dataset::s3::ObjectUrl::is_url(&source);
    if object {
        crate::dataset::s3::ObjectUrl::parse(&source)?;
    }
    let mut file = if object {
        None
    } else {
        Some(
            tokio::fs::File::open(&a.file)
                .await
                .with_context(|| format!("cannot read {}", a.file.display()))?,
        )
    };
    let size = match &file {
        Some(f) => f.metadata().await?.len(),
        None => 0,
    };
    let header = pb::PublishHeader {
        title: a.title.clone(),
        description: a.description.clone(),
        media_type: a.media_type.clone(),
        policy_toml,
        derived_from: a
            .derived_from
            .iter()
            .enumerate()
            .map(|(i, d)| pb::Derivation {
                dataset_id: d.clone(),
                grant_id: a.grants.get(i).cloned().unwrap_or_default(),
            })
            .collect(),
        supersedes: a.supersedes.clone().unwrap_or_default(),
        chunk_size: a.chunk_size,
        size,
        source: if object { source } else { String::new() },
    };
    let addr = own_address(&a.client.data_dir)?;
    let conn = connect(&a.client.data_dir, &addr).await?;
    let bar = if a.client.out.json || object {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        let Some(file) = file.as_mut() else {
            return Ok(());
        };
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            reader_bar.inc(n as u64);
            if tx.send(buf[..n].to_vec()).await.is_err() {
                return Ok(());
            }
        }
    });
    let result = AdminClient::new(&conn)
        .publish(header, tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    bar.finish_and_clear();
    reader
        .await?
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = result.map_err(|e| match e.code {
        Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::InvalidArgument
        | Code::Unavailable
            if object =>
        {
            anyhow::anyhow!("publish failed: {}", e.message)
        }
        _ => call_error(&addr, &e),
    })?;
    let size = r.size.max(size);
    Ok(Output {
        text: format!(
            "published {} ({}, {})\n  dataset id {}\n  ledger entry {} (DatasetPublished)",
            a.file.display(),
            a.title,
            size_text(size),
            r.dataset_id,
            r.ledger_index
        ),
        json: json!({"dataset_id": r.dataset_id, "ledger_index": r.ledger_index, "size": size, "title": a.title}),
    })
}

pub(super) async fn catalog(a: CatalogArgs) -> Result<Output> {
    let conn = connect(&a.client.data_dir, &a.peer).await?;
    let publisher = conn.server.clone();
    // Manifests published before a key rotation are signed by a key the
    // publisher's history retired.
    let keys = crate::peer::log_keys(&conn)
        .await
        .map_err(|e| call_error(&a.peer, &e))?;
    let query = crate::peer::CatalogQuery {
        text: a.text.clone().unwrap_or_default(),
        classification: a.classification.clone().unwrap_or_default(),
        page_token: String::new(),
    };
    let filtered = !query.text.is_empty() || !query.classification.is_empty();
    let rows = crate::dataset::read_catalog(&conn, &keys, query)
        .await
        .map_err(|e| call_error(&a.peer, &e))?;
    check_rollback(&a, &conn, &keys, &rows, filtered).await?;
    let mut text = format!(
        "{} dataset(s) of {} (publisher {}, participant {}); every manifest signature verified\n",
        rows.len(),
        a.peer,
        publisher.node_id,
        publisher.participant
    );
    text.push_str(&format!(
        "{:<55}  {:>3}  {:<10}  {:>10}  {:<28}  {}",
        "DATASET", "VER", "CLASS", "SIZE", "MAY BE GRANTED", "TITLE"
    ));
    let mut json_rows = Vec::new();
    for (id, v) in &rows {
        let m = v.value();
        let grantable: Vec<String> = m
            .policy
            .grantable_actions()
            .iter()
            .map(|a| a.to_string())
            .collect();
        // Titles are the publisher's text: no control or direction
        // characters may fake table rows.
        let title: String = m
            .title
            .chars()
            .map(|c| {
                if c.is_control()
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c)
                {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        text.push_str(&format!(
            "\n{:<55}  {:>3}  {:<10}  {:>10}  {:<28}  {}",
            id.as_str(),
            m.version,
            m.classification.as_str(),
            size_text(m.size),
            grantable.join(","),
            title
        ));
        json_rows.push(json!({
            "dataset_id": id.to_string(),
            "title": m.title,
            "description": m.description,
            "media_type": m.media_type,
            "size": m.size,
            "version": m.version,
            "classification": m.classification.as_str(),
            "publisher": m.publisher.to_string(),
            "content_sha256": data_encoding::HEXLOWER.encode(&m.content_sha256),
            "grantable_actions": grantable,
            "policy": serde_json::from_slice::<Value>(&m.policy.canonical_json()).unwrap_or(Value::Null),
            // The DSSE JSON envelope, for third-party DSSE verifiers.
            "envelope": serde_json::from_str::<Value>(&v.envelope().to_json()).unwrap_or(Value::Null),
        }));
    }
    Ok(Output {
        text,
        json: json!({"peer": a.peer, "publisher": identity_json(&publisher), "verified": true, "datasets": json_rows}),
    })
}

/// A verified catalog row.
type CatalogRow = (
    crate::dataset::DatasetId,
    crate::envelope::Verified<crate::dataset::Manifest>,
);

/// Compares a verified listing with the highest version of each lineage
/// this data dir has seen of the publisher (THREATS.md row 3), then
/// records the listing's. A lineage offered below a version seen fails
/// the command, naming both. A filtered listing may leave out a newer
/// version legitimately (its title changed): the whole catalog is read
/// before calling it a rollback.
async fn check_rollback(
    a: &CatalogArgs,
    conn: &crate::wire::client::PeerChannel,
    keys: &crate::ledger::keys::LogKeys,
    rows: &[CatalogRow],
    filtered: bool,
) -> Result<()> {
    let seen = crate::dataset::seen::SeenVersions::new(
        crate::runtime::config::DataDir::new(&a.client.data_dir).seen_versions(),
    );
    let publisher = &conn.server.node_id;
    let mut rollbacks = seen.check(publisher, listed(rows), !filtered)?;
    if !rollbacks.is_empty() && filtered {
        let all = crate::dataset::read_catalog(conn, keys, Default::default())
            .await
            .map_err(|e| call_error(&a.peer, &e))?;
        rollbacks = seen.check(publisher, listed(&all), true)?;
    }
    if !rollbacks.is_empty() {
        let mut text = format!(
            "ROLLBACK: the catalog of {} (publisher {}) is behind what this node saw it sign:",
            a.peer, publisher
        );
        for r in &rollbacks {
            text.push_str(&format!("\n  {r}"));
        }
        text.push_str(&format!(
            "\nIts data dir was restored from an older state, or it hides newer versions: do not rely on this listing, and report it to the platform operator. (What was seen is kept in {}.)",
            seen.path().display()
        ));
        anyhow::bail!(text);
    }
    seen.record(
        publisher,
        listed(rows),
        crate::clock::Clock::system().now_ms(),
    )?;
    Ok(())
}

/// The manifests of catalog rows, by dataset id.
fn listed(
    rows: &[CatalogRow],
) -> impl Iterator<Item = (&crate::dataset::DatasetId, &crate::dataset::Manifest)> {
    rows.iter().map(|(id, m)| (id, m.value()))
}

fn load_policy(path: &Path) -> Result<crate::policy::Policy> {
    let text = fsutil::read_to_string(path)?;
    let policy = if path.extension().is_some_and(|e| e == "json") {
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        crate::policy::odrl::import(&doc)
    } else {
        crate::policy::Policy::from_toml(&text)
    };
    policy.with_context(|| format!("{} is not a valid policy", path.display()))
}

pub(super) fn policy(command: PolicyCommand) -> Result<Output> {
    match command {
        PolicyCommand::Check { file, .. } => {
            let p = load_policy(&file)?;
            let hash = data_encoding::HEXLOWER.encode(&p.hash());
            Ok(Output {
                text: format!(
                    "{}: valid policy (hash {hash})\n{}",
                    file.display(),
                    p.explain()
                ),
                json: json!({"file": file, "valid": true, "hash": hash, "explanation": p.explain(),
                    "policy": serde_json::from_slice::<Value>(&p.canonical_json()).unwrap_or(Value::Null)}),
            })
        }
        PolicyCommand::Export { file, odrl } => {
            let p = load_policy(&file)?;
            let doc = crate::policy::odrl::export(&p);
            let text = serde_json::to_string_pretty(&doc)?;
            fsutil::write_atomic(&odrl, format!("{text}\n").as_bytes(), fsutil::PUBLIC_MODE)?;
            Ok(Output {
                text: format!("wrote {} (ODRL JSON-LD)", odrl.display()),
                json: json!({"odrl": odrl}),
            })
        }
        PolicyCommand::Import { odrl, out } => {
            let text = fsutil::read_to_string(&odrl)?;
            let doc: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", odrl.display()))?;
            let p = crate::policy::odrl::import(&doc).with_context(|| {
                format!("{} is not a policy dsnode can enforce", odrl.display())
            })?;
            let toml = p.to_toml();
            match out {
                Some(path) => {
                    fsutil::write_atomic(&path, toml.as_bytes(), fsutil::PUBLIC_MODE)?;
                    Ok(Output {
                        text: format!("wrote {}", path.display()),
                        json: json!({"policy": path}),
                    })
                }
                None => Ok(Output {
                    text: toml.trim_end().to_owned(),
                    json: json!({"toml": toml}),
                }),
            }
        }
    }
}

fn grant_json(g: &crate::exchange::grant::Grant) -> Value {
    json!({
        "grant_id": g.id.to_string(),
        "dataset_id": g.dataset.to_string(),
        "publisher": g.publisher.to_string(),
        "grantee": g.grantee.to_string(),
        "purpose": g.purpose,
        "actions": g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "not_before": time_text(g.not_before_ms),
        "not_after": time_text(g.not_after_ms),
        "max_fetches": g.max_fetches,
        "obligations": g.obligations.iter().map(|o| json!({"action": o.action.as_str(), "after_secs": o.after_secs})).collect::<Vec<_>>(),
    })
}

/// Decodes a grant envelope the local node returned (its own store: the
/// node verified it against the publisher's certificate).
fn local_grant(env: &crate::envelope::Envelope) -> Result<crate::exchange::grant::Grant> {
    Ok(crate::exchange::grant::Grant::decode(&env.payload)?)
}

pub(super) async fn request(a: RequestArgs) -> Result<Output> {
    let duration_secs = match a.duration.as_deref() {
        None => 0,
        Some(d) => humantime::parse_duration(d)
            .with_context(|| format!("--for `{d}` is not a duration such as 30d or 12h"))?
            .as_secs(),
    };
    let addr = own_address(&a.client.data_dir)?;
    let ask = AccessAsk {
        dataset_id: a.dataset.clone(),
        purpose: a.purpose.clone(),
        actions: a
            .actions
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        duration_secs,
    };
    let r = AdminClient::new(&connect(&a.client.data_dir, &addr).await?)
        .request_access(&a.peer, ask)
        .await
        .map_err(|e| match e.code {
            Code::PermissionDenied => anyhow::anyhow!("{} refused: {}", a.peer, e.message),
            _ => call_error(&addr, &e),
        })?;
    let env: crate::envelope::Envelope = r
        .grant
        .ok_or_else(|| anyhow::anyhow!("the node returned no grant"))?
        .into();
    let g = local_grant(&env)?;
    let actions: Vec<&str> = g.actions.iter().map(|x| x.as_str()).collect();
    Ok(Output {
        text: format!(
            "granted {}\n  dataset   {}\n  purpose   {}\n  actions   {}\n  valid     {} to {}\n  fetches   {}\n  recorded as entry {} (GrantReceived) in this node's ledger",
            g.id,
            g.dataset,
            g.purpose,
            actions.join(","),
            time_text(g.not_before_ms),
            time_text(g.not_after_ms),
            g.max_fetches.map_or("unlimited".into(), |n| n.to_string()),
            r.ledger_index
        ),
        json: json!({"grant": grant_json(&g), "ledger_index": r.ledger_index}),
    })
}

pub(super) async fn grants(command: GrantsCommand) -> Result<Output> {
    match command {
        GrantsCommand::List(a) => {
            let c = a.client;
            let addr = own_address(&c.data_dir)?;
            let request = pb::ListGrantsRequest {
                dataset_id: a.dataset.unwrap_or_default(),
                grantee: a.grantee.unwrap_or_default(),
                state: match a.state {
                    None => pb::GrantState::Unspecified,
                    Some(GrantStateArg::Issued) => pb::GrantState::Issued,
                    Some(GrantStateArg::Revoked) => pb::GrantState::Revoked,
                    Some(GrantStateArg::Held) => pb::GrantState::Held,
                } as i32,
                ..Default::default()
            };
            let grants = AdminClient::new(&connect(&c.data_dir, &addr).await?)
                .list_grants_matching(request)
                .await
                .map_err(|e| call_error(&addr, &e))?;
            let mut text = format!("{} grant(s)", grants.len());
            let mut rows = Vec::new();
            for s in grants {
                let g = local_grant(&s.grant)?;
                let state = match (s.issued, s.revoked) {
                    (true, true) => "issued, REVOKED",
                    (true, false) => "issued",
                    (false, _) => "held",
                };
                text.push_str(&format!(
                    "\n{}  {:<15}  {}  to {}  purpose {}  until {}",
                    g.id,
                    state,
                    g.dataset,
                    g.grantee,
                    g.purpose,
                    time_text(g.not_after_ms)
                ));
                let mut j = grant_json(&g);
                j["issued"] = json!(s.issued);
                j["revoked"] = json!(s.revoked);
                rows.push(j);
            }
            Ok(Output {
                text,
                json: json!({"grants": rows}),
            })
        }
        GrantsCommand::Revoke {
            client,
            grant,
            reason,
        } => {
            let addr = own_address(&client.data_dir)?;
            let r = AdminClient::new(&connect(&client.data_dir, &addr).await?)
                .revoke_grant(&grant, &reason)
                .await
                .map_err(|e| call_error(&addr, &e))?;
            Ok(Output {
                text: if r.already_revoked {
                    format!("{grant} was already revoked")
                } else {
                    format!(
                        "revoked {grant} (GrantRevoked, ledger entry {})",
                        r.ledger_index
                    )
                },
                json: json!({"grant_id": grant, "already_revoked": r.already_revoked, "ledger_index": r.ledger_index}),
            })
        }
    }
}

pub(super) async fn fetch(a: FetchArgs) -> Result<Output> {
    // The node writes the file: give it a path that does not depend on
    // its working directory (an s3:// object is the node's to resolve).
    let out = if crate::dataset::s3::ObjectUrl::is_url(&a.out.to_string_lossy()) {
        a.out.clone()
    } else {
        std::path::absolute(&a.out)
            .with_context(|| format!("cannot resolve {}", a.out.display()))?
    };
    let addr = own_address(&a.client.data_dir)?;
    let conn = connect(&a.client.data_dir, &addr).await?;
    let bar = if a.client.out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_message(format!("fetching with grant {} from {}", a.grant, a.peer));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let failed = |e: PeerError| match e.code {
        Code::PermissionDenied
        | Code::DataLoss
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::InvalidArgument => anyhow::anyhow!("fetch failed: {}", e.message),
        _ => call_error(&addr, &e),
    };
    let started = std::time::Instant::now();
    let mut events = AdminClient::new(&conn)
        .fetch(
            &a.peer,
            &a.grant,
            &out,
            &FetchOptions {
                force: a.force,
                retries: a.retries,
                streams: a.streams.unwrap_or(0),
                verify_sha256: a.verify_sha256,
            },
        )
        .await
        .map_err(failed)?;
    let mut sized = false;
    let done = loop {
        let event = match events.next().await {
            Ok(Some(e)) => e,
            Ok(None) => {
                bar.finish_and_clear();
                anyhow::bail!("the node ended the fetch without a result; see its log");
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(failed(e));
            }
        };
        match event {
            FetchEvent::Progress(p) => {
                if !sized && p.total_bytes > 0 {
                    sized = true;
                    bar.set_length(p.total_bytes);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    if p.resumed_chunks > 0 {
                        bar.println(format!(
                            "resuming: {} of {} chunks were already verified",
                            p.resumed_chunks, p.total_chunks
                        ));
                    }
                    bar.set_position(p.bytes);
                    bar.reset_eta();
                }
                bar.set_position(p.bytes);
            }
            FetchEvent::Done(d) => break d,
        }
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    let resumed = if done.resumed_chunks > 0 || done.reconnects > 0 {
        format!(
            "\n  resumed: {} chunk(s) kept from an interrupted attempt, {} reconnect(s)",
            done.resumed_chunks, done.reconnects
        )
    } else {
        String::new()
    };
    Ok(Output {
        text: format!(
            "fetched {} ({}) to {} in {:.1}s ({:.0} MB/s, {} stream(s))\n  every chunk matches the signed chunk list {}\n  content sha256 {} ({})\n  receipt recorded: entry {} here, entry {} at the publisher{resumed}",
            done.dataset_id,
            size_text(done.bytes),
            out.display(),
            secs,
            done.bytes as f64 / secs / 1e6,
            done.streams,
            data_encoding::HEXLOWER.encode(&done.chunk_list_sha256),
            data_encoding::HEXLOWER.encode(&done.content_sha256),
            if done.content_verified {
                "verified over the whole content"
            } else {
                "as the manifest states; check it with --verify-sha256 or sha256sum"
            },
            done.ledger_index,
            done.publisher_ledger_index
        ),
        json: json!({"dataset_id": done.dataset_id, "bytes": done.bytes, "out": out, "chunk_list_sha256": data_encoding::HEXLOWER.encode(&done.chunk_list_sha256), "content_sha256": data_encoding::HEXLOWER.encode(&done.content_sha256), "content_sha256_verified": done.content_verified, "streams": done.streams, "ledger_index": done.ledger_index, "publisher_ledger_index": done.publisher_ledger_index, "resumed_chunks": done.resumed_chunks, "reconnects": done.reconnects}),
    })
}
