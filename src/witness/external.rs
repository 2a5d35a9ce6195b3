//! External witnesses: independent services speaking C2SP `tlog-witness`
//! (`POST <url>/add-checkpoint`), configured as
//! `[witness] external = [{ url = "…", vkey = "…" }]`. After each new
//! checkpoint (at most once per `external_interval`), the node sends its
//! latest checkpoint with a consistency proof from the size the witness
//! last saw; on 409 (the witness knows another size) it resends once from
//! that size. A cosignature that verifies under the configured key is kept
//! with the peers' (`witness/cosigned/external/`), served in
//! `GetCheckpoint`, and checked at start-up like theirs. Anything else (an
//! error status, garbage, a hang, a cosignature of another checkpoint) is
//! logged and counted, never kept, and never blocks the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use data_encoding::{BASE64, HEXLOWER};
use tokio_util::sync::CancellationToken;

use crate::digest::Hash;
use crate::ledger::Ledger;
use crate::ledger::note::SignedCheckpoint;
use crate::witness::WitnessBook;
use crate::witness::cosig;

/// The C2SP signature type of `cosignature/v1` keys.
const COSIGNATURE_V1: u8 = 0x04;
/// Largest answer read from a witness.
const MAX_ANSWER: usize = 64 << 10;
/// Most proof lines the spec allows.
const MAX_PROOF: usize = 63;

/// A witness this node submits its checkpoints to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalWitness {
    /// Its base URL (`http(s)://HOST[:PORT][/PATH]`, no trailing slash).
    pub url: String,
    /// Its key name (the vkey's name).
    pub name: String,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
}

impl ExternalWitness {
    /// A witness at `url` whose cosignatures verify under the C2SP vkey
    /// `vkey` (`<name>+<key id hex>+<base64(0x04 ‖ key)>`).
    pub fn parse(url: &str, vkey: &str) -> Result<Self, String> {
        let url = url.trim_end_matches('/');
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let Some(rest) = rest.filter(|r| !r.is_empty()) else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if url.contains(char::is_whitespace) || authority.contains('@') || rest.contains(['?', '#'])
        {
            return Err(format!(
                "`{url}` must be a plain http(s)://HOST[:PORT][/PATH] (no credentials, query or fragment)"
            ));
        }
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a vkey is NAME+KEYID+BASE64KEY".into());
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("`{name}` is not a key name"));
        }
        let key = BASE64
            .decode(key.as_bytes())
            .map_err(|e| format!("the vkey's key is not base64: {e}"))?;
        let [COSIGNATURE_V1, rest @ ..] = key.as_slice() else {
            return Err("the vkey is not a cosignature/v1 (type 0x04) key".into());
        };
        let public_key: [u8; 32] = rest
            .try_into()
            .map_err(|_| "a cosignature/v1 key is 32 bytes".to_owned())?;
        if HEXLOWER.encode(&cosig::cosignature_key_id(name, &public_key)) != id {
            return Err(format!("key id {id} is not the one of key {name}"));
        }
        Ok(Self {
            url: url.to_owned(),
            name: name.to_owned(),
            public_key,
        })
    }

    /// The name of the file its cosignature is kept in: the key name made
    /// safe, and the key id (two keys never share a file).
    pub fn file_stem(&self) -> String {
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{safe}-{}",
            HEXLOWER.encode(&cosig::cosignature_key_id(&self.name, &self.public_key))
        )
    }
}

/// A witness's answer to one submission.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// It cosigned: the cosigned note (the checkpoint and its line).
    Cosigned(String),
    /// 409: it has seen another size of this log.
    OtherSize(u64),
    /// Any other refusal: status and text.
    Refused(u16, String),
}

/// The `add-checkpoint` request body (C2SP tlog-witness).
pub fn request_body(note: &str, old: u64, proof: &[Hash]) -> String {
    let mut body = format!("old {old}\n");
    for h in proof {
        body.push_str(&BASE64.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Reads a witness's answer: for 200, the cosignature line for `w` over
/// `note`, verified; for 409, the size it names.
pub fn read_answer(w: &ExternalWitness, note: &str, status: u16, body: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(body);
    match status {
        200 => {
            // Every line under its name: a witness may sign with several
            // key types; the one of the configured key must verify.
            let prefix = format!("\u{2014} {} ", w.name);
            let mut why = "no cosignature line for its key".to_owned();
            for line in text.lines().filter(|l| l.starts_with(&prefix)) {
                let cosigned = format!("{note}{line}\n");
                match cosig::verify_named(cosigned.as_bytes(), &w.name, &w.public_key) {
                    Ok(_) => return Answer::Cosigned(cosigned),
                    Err(e) => why = format!("its cosignature does NOT verify: {e}"),
                }
            }
            Answer::Refused(200, why)
        }
        409 => match text.trim().parse::<u64>() {
            Ok(size) => Answer::OtherSize(size),
            Err(_) => Answer::Refused(409, "409 without a size".into()),
        },
        other => Answer::Refused(other, text.chars().take(200).collect()),
    }
}

async fn post(
    client: &reqwest::Client,
    w: &ExternalWitness,
    body: String,
) -> Result<(u16, Vec<u8>), String> {
    let mut r = client
        .post(format!("{}/add-checkpoint", w.url))
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer over {MAX_ANSWER} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((status, out))
}

/// Submits `cp` to `w`, from the size it last saw (`known`), once more
/// from the size a 409 names. Returns the outcome's metric label.
async fn submit(
    client: &reqwest::Client,
    ledger: &Ledger,
    book: &WitnessBook,
    w: &ExternalWitness,
    cp: &SignedCheckpoint,
    known: &mut u64,
) -> &'static str {
    let size = cp.checkpoint.size;
    let mut old = (*known).min(size);
    let mut resent = false;
    for _ in 0..2 {
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            match ledger.prove_consistency(old, size) {
                Ok(p) if p.len() <= MAX_PROOF => p,
                Ok(p) => {
                    tracing::warn!(witness = %w.name, hashes = p.len(), "a consistency proof longer than tlog-witness allows");
                    return "failed";
                }
                Err(e) => {
                    tracing::warn!(witness = %w.name, error = %e, "no consistency proof for the witness");
                    return "failed";
                }
            }
        };
        let sent = post(client, w, request_body(&cp.note, old, &proof)).await;
        let (status, body) = match sent {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(witness = %w.name, url = %w.url, error = %e, "external witness unreachable");
                return "failed";
            }
        };
        match read_answer(w, &cp.note, status, &body) {
            Answer::Cosigned(note) => {
                return match book.keep_cosigned_external(&w.file_stem(), size, &note) {
                    Ok(()) => {
                        *known = size;
                        tracing::info!(witness = %w.name, size, resent, "external witness cosigned");
                        if resent {
                            "cosigned_after_409"
                        } else {
                            "cosigned"
                        }
                    }
                    Err(e) => {
                        tracing::warn!(witness = %w.name, error = %e, "could not keep a cosignature");
                        "failed"
                    }
                };
            }
            Answer::OtherSize(theirs) if theirs > size => {
                tracing::error!(witness = %w.name, theirs, size, "the witness has cosigned this log at a size beyond its tree: the store lost acknowledged entries, or the log forked");
                return "conflict";
            }
            Answer::OtherSize(theirs) if theirs != old => {
                tracing::info!(witness = %w.name, theirs, "the witness knows another size; resending from it");
                resent = true;
                old = theirs;
            }
            Answer::OtherSize(theirs) => {
                tracing::warn!(witness = %w.name, theirs, "the witness answered 409 naming the size it was sent: a protocol error");
                return "refused";
            }
            Answer::Refused(status, why) => {
                tracing::warn!(witness = %w.name, status, why = %why, "external witness refused the checkpoint");
                return "refused";
            }
        }
    }
    "refused"
}

/// Submits each new checkpoint of `ledger` to `witnesses` until `stop`:
/// one task per witness (a slow or hanging one delays no other), each
/// at most once per `interval`, retrying with backoff (up to 5 minutes)
/// while the witness has not cosigned the latest checkpoint. Outcomes
/// are counted as `external_cosigned`, `external_cosigned_after_409`,
/// `external_refused`, `external_conflict` (the witness saw a larger
/// tree) or `external_failed`.
pub async fn run(
    ledger: Ledger,
    book: Arc<WitnessBook>,
    witnesses: Vec<ExternalWitness>,
    interval: Duration,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    stop: CancellationToken,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for external witnesses");
            return;
        }
    };
    let tasks: Vec<_> = witnesses
        .into_iter()
        .map(|w| {
            let (client, ledger, book, metrics, stop) = (
                client.clone(),
                ledger.clone(),
                book.clone(),
                metrics.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = one_witness(&client, &ledger, &book, &w, interval, &metrics) => {}
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// One witness's loop: submit the latest checkpoint when it has not
/// cosigned it, no sooner than `interval` after the last attempt, and
/// after a failure no sooner than a backoff that doubles to 5 minutes.
async fn one_witness(
    client: &reqwest::Client,
    ledger: &Ledger,
    book: &WitnessBook,
    w: &ExternalWitness,
    interval: Duration,
    metrics: &crate::runtime::metrics::Metrics,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(300);
    let mut known = book.cosigned_external_size(&w.file_stem());
    let mut checkpoints = ledger.subscribe();
    let mut backoff = interval;
    let mut last: Option<Instant> = None;
    loop {
        checkpoints.borrow_and_update();
        let behind = ledger
            .latest()
            .is_some_and(|cp| cp.checkpoint.size != known);
        if !behind {
            // Up to date: wait for a new checkpoint.
            if checkpoints.changed().await.is_err() {
                return;
            }
            continue;
        }
        if let Some(t) = last {
            tokio::time::sleep(backoff.max(interval).saturating_sub(t.elapsed())).await;
        }
        last = Some(Instant::now());
        let Some(cp) = ledger.latest() else { continue };
        let outcome = submit(client, ledger, book, w, &cp, &mut known).await;
        metrics.witnessed(match outcome {
            "cosigned" => "external_cosigned",
            "cosigned_after_409" => "external_cosigned_after_409",
            "refused" => "external_refused",
            "conflict" => "external_conflict",
            _ => "external_failed",
        });
        backoff = if outcome.starts_with("cosigned") {
            interval
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::note::{Checkpoint, NoteSigner};
    use ed25519_dalek::SigningKey;

    fn witness(seed: u8) -> (ExternalWitness, SigningKey) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let pk = key.verifying_key().to_bytes();
        let name = "witness.example/w1";
        let id = HEXLOWER.encode(&cosig::cosignature_key_id(name, &pk));
        let mut typed = vec![COSIGNATURE_V1];
        typed.extend_from_slice(&pk);
        let vkey = format!("{name}+{id}+{}", BASE64.encode(&typed));
        (
            ExternalWitness::parse("http://127.0.0.1:1/", &vkey).expect("vkey"),
            key,
        )
    }

    #[test]
    fn vkeys_are_checked() {
        let (w, _) = witness(3);
        assert_eq!(w.url, "http://127.0.0.1:1");
        for (url, vkey) in [
            ("ftp://x", "a+00000000+AA=="),
            ("http://x", "no-plus-signs"),
            ("http://x", "a+00000000+!!!"),
            ("http://x", "a+00000000+AQ=="),
        ] {
            assert!(ExternalWitness::parse(url, vkey).is_err(), "{url} {vkey}");
        }
        // A key id that does not match the key.
        let good = {
            let pk = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
            let mut typed = vec![COSIGNATURE_V1];
            typed.extend_from_slice(&pk);
            BASE64.encode(&typed)
        };
        assert!(
            ExternalWitness::parse("http://x", &format!("witness.example/w1+00000000+{good}"))
                .is_err()
        );
    }

    #[test]
    fn answers_are_read_and_only_a_good_cosignature_is_taken() {
        let (w, key) = witness(3);
        let note = NoteSigner::new("dsnode/log", SigningKey::from_bytes(&[1; 32]))
            .expect("signer")
            .sign(
                &Checkpoint {
                    origin: "dsnode/log".into(),
                    size: 9,
                    root: [3; 32],
                }
                .text(),
            );
        // What a witness with this key would answer: our own cosign,
        // renamed to its key name.
        let line = {
            let body = crate::ledger::note::unverified_text(note.as_bytes()).expect("body");
            let msg = format!("cosignature/v1\ntime 1764000000\n{body}");
            let sig = ed25519_dalek::Signer::sign(&key, msg.as_bytes());
            let mut blob = cosig::cosignature_key_id(&w.name, &w.public_key).to_vec();
            blob.extend_from_slice(&1_764_000_000u64.to_be_bytes());
            blob.extend_from_slice(&sig.to_bytes());
            format!("\u{2014} {} {}\n", w.name, BASE64.encode(&blob))
        };
        match read_answer(&w, &note, 200, line.as_bytes()) {
            Answer::Cosigned(c) => assert!(c.ends_with(&line)),
            other => panic!("{other:?}"),
        }
        // Another checkpoint's cosignature, garbage, other statuses.
        let other = note.replace("\n9\n", "\n10\n");
        assert!(matches!(
            read_answer(&w, &other, 200, line.as_bytes()),
            Answer::Refused(200, _)
        ));
        assert!(matches!(
            read_answer(&w, &note, 200, b"\xff\xfe garbage"),
            Answer::Refused(200, _)
        ));
        assert_eq!(read_answer(&w, &note, 409, b"7\n"), Answer::OtherSize(7));
        assert!(matches!(
            read_answer(&w, &note, 409, b"seven"),
            Answer::Refused(409, _)
        ));
        assert!(matches!(
            read_answer(&w, &note, 403, b"no"),
            Answer::Refused(403, _)
        ));
        assert_eq!(
            request_body("NOTE\n", 3, &[[0; 32]]),
            format!("old 3\n{}\n\nNOTE\n", BASE64.encode(&[0; 32]))
        );
    }
}
