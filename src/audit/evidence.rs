//! Evidence bundles (issue 8): one file that proves an exchange, checkable
//! offline with only the data space's CA certificate.
//!
//! Format `dsnode-evidence-bundle` version 2 (docs/evidence.md): canonical
//! JSON (exactly what [`Bundle::to_bytes`] writes; any other byte sequence
//! is refused), holding the manifest, grant and receipt DSSE envelopes (the
//! receipts as either node keeps them: see [`build`]) and,
//! for each side of the exchange (publisher, consumer), its certificate,
//! its log's key history, a checkpoint of its log cosigned by the other
//! side, and every ledger entry naming the grant with its inclusion proof
//! under that checkpoint.
//!
//! [`verify`] checks all of it: the certificates were issued by the CA;
//! each checkpoint is signed by its node's key (history) and cosigned by
//! the other node; each entry is in its checkpoint; the envelopes are
//! signed by the right node and name each other (grant → manifest hash,
//! receipt → grant, dataset and content hash); and both ledgers recorded
//! the grant and every receipt with the objects' hashes. Certificate
//! expiry and revocation are not checked: a bundle is evidence of the past.

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, Auditor, VerifiedEntry};
use crate::dataset::Manifest;
use crate::digest::Hash;
use crate::envelope::{Envelope, Verified};
use crate::exchange::grant::{Grant, time_text, verify_grant};
use crate::exchange::receipt::{Receipt, verify_receipt};
use crate::identity::{PeerIdentity, ca};
use crate::ledger::Query;
use crate::ledger::entry::{Entry, EntryKind};
use crate::ledger::keys::LogKeys;
use crate::ledger::merkle;
use crate::ledger::note::SignedCheckpoint;
use crate::peer::{EntryQuery, GrantEvidence};
use crate::witness::cosig;

/// The bundle's format name.
pub const FORMAT: &str = "dsnode-evidence-bundle";
/// The only version written and read.
pub const VERSION: u32 = 2;
/// The first version, still read: the same bundle without `tlog_proofs`.
pub const VERSION_1: u32 = 1;
/// The C2SP `tlog-proof` header line.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// Largest bundle read.
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;

/// An evidence bundle; see the module docs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The grant the bundle is about.
    pub grant_id: String,
    /// The manifest the grant names (DSSE JSON).
    pub manifest: String,
    /// The grant (DSSE JSON).
    pub grant: String,
    /// The consumer's receipts for it (DSSE JSON), in transfer order.
    pub receipts: Vec<String>,
    /// The publisher's side.
    pub publisher: Side,
    /// The consumer's side.
    pub consumer: Side,
}

/// One node's side of the exchange.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Side {
    /// Its certificate, base64 DER.
    pub certificate: String,
    /// Its log's KeyRotated entries, each proven in `checkpoint`.
    pub key_rotations: Vec<ProvenEntry>,
    /// A checkpoint of its log (signed note) cosigned by the other side.
    pub checkpoint: String,
    /// Every entry of its log naming the grant, proven in `checkpoint`.
    pub entries: Vec<ProvenEntry>,
    /// The same proofs as C2SP `tlog-proof`s, one per entry in order
    /// (the index, the audit path and `checkpoint`), for verifiers that
    /// know only that spec. Version 2; absent in version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlog_proofs: Vec<String>,
}

/// An entry's inclusion proof as a C2SP `tlog-proof`: the header, the
/// index, the audit path (innermost first, base64), a blank line, then
/// the checkpoint note as it is (with its cosignatures).
pub fn tlog_proof(index: u64, proof: &[String], checkpoint: &str) -> String {
    let mut out = format!("{TLOG_PROOF_HEADER}\nindex {index}\n");
    for h in proof {
        out.push_str(h);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(checkpoint);
    out
}

/// An entry and its inclusion proof.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProvenEntry {
    /// Its index.
    pub index: u64,
    /// Its canonical bytes, base64.
    pub entry: String,
    /// Its RFC 6962 audit path, base64 hashes.
    pub proof: Vec<String>,
}

/// Why a bundle does not verify (or could not be made).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes are not a bundle.
    #[error("not a dsnode evidence bundle: {0}")]
    Format(String),
    /// Part of it does not verify.
    #[error("NOT verified: {0}")]
    Invalid(String),
    /// Making one failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

impl Bundle {
    /// The canonical bytes (pretty JSON, one trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a bundle, refusing anything but its canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Format(format!(
                "{} bytes; at most {MAX_BUNDLE_BYTES}",
                bytes.len()
            )));
        }
        let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::Format(format!(
                "{e} (expected the JSON object of docs/evidence.md)"
            ))
        })?;
        if bundle.format != FORMAT || !(bundle.version == VERSION || bundle.version == VERSION_1) {
            return Err(BundleError::Format(format!(
                "format `{}` version {}, expected `{FORMAT}` version {VERSION} (or {VERSION_1})",
                bundle.format, bundle.version
            )));
        }
        if bundle.to_bytes() != bytes {
            return Err(BundleError::Format(
                "not in canonical form: bytes were changed, added or removed".into(),
            ));
        }
        Ok(bundle)
    }
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

fn unb64(what: &str, text: &str) -> Result<Vec<u8>, BundleError> {
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| invalid(format!("{what} is not base64: {e}")))
}

/// A DSSE JSON envelope, which must be in its canonical form.
fn envelope(what: &str, json: &str) -> Result<Envelope, BundleError> {
    let env = Envelope::from_json(json).map_err(|e| invalid(format!("{what}: {e}")))?;
    if env.to_json() != json {
        return Err(invalid(format!(
            "{what} is not in canonical DSSE JSON form"
        )));
    }
    Ok(env)
}

/// DSSE key ids are not signed: in a bundle each must name the signer, so
/// that no byte of the file escapes verification.
fn check_keyid<T>(what: &str, v: &Verified<T>) -> Result<(), BundleError> {
    let signer = crate::identity::NodeId::from_public_key(v.signer());
    let sigs = &v.envelope().signatures;
    if sigs.len() == 1 && sigs[0].keyid == signer.as_str() {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: expected exactly one signature, with the signer's key id {signer}"
        )))
    }
}

/// Builds one side from its auditor: the checkpoint `witness` cosigned
/// that covers every entry of the grant, and those entries proven in it.
async fn side(
    node: &mut Auditor,
    evidence: GrantEvidence,
    witness: &PeerIdentity,
    grant: &str,
    role: &str,
) -> Result<(Side, GrantEvidence), BundleError> {
    let answer = node.checkpoint_answer().await?;
    let keys = node.keys().await?.clone();
    let by_grant = Query {
        grant: Some(grant.to_owned()),
        ..Query::default()
    };
    let (_, all) = node.entries(by_grant.clone(), true).await?;
    if all.is_empty() {
        return Err(invalid(format!(
            "the {role}'s ledger has no entry naming grant {grant}"
        )));
    }
    let last = all.iter().map(|e| e.entry.index).max().unwrap_or(0);
    let cosigned = answer
        .cosigned_checkpoints
        .iter()
        .filter(|note| cosig::verify(note, &witness.public_key).is_ok())
        .filter_map(|note| keys.verify_checkpoint(note).ok())
        .find(|cp| cp.checkpoint.size > last)
        .ok_or_else(|| {
            invalid(format!(
                "no checkpoint of the {role} ({}) cosigned by {} covers its entries for grant {grant} yet: have them exchange checkpoints (`dsnode peer witness`) and try again",
                node.node().node_id, witness.node_id
            ))
        })?;
    let at = EntryQuery {
        filter: by_grant,
        tree_size: cosigned.checkpoint.size,
        ..EntryQuery::default()
    };
    let (proven_cp, entries) = node.entries(at, true).await?;
    if proven_cp.checkpoint.root != cosigned.checkpoint.root || entries.len() != all.len() {
        return Err(invalid(format!(
            "the {role}'s entries for grant {grant} could not be proven in its cosigned checkpoint"
        )));
    }
    let mut rotations = Vec::new();
    for index in keys.rotation_indices() {
        let (_, v, _) = node
            .prove_inclusion(index, cosigned.checkpoint.size)
            .await?;
        rotations.push(v);
    }
    let certificate = crate::identity::cert::cert_der_from_pem(&evidence.certificate_pem)
        .map_err(|e| invalid(format!("the {role}'s certificate: {e}")))?;
    let identity = PeerIdentity::from_der(&certificate)
        .map_err(|e| invalid(format!("the {role}'s certificate: {e}")))?;
    if identity.public_key != node.node().public_key {
        return Err(invalid(format!(
            "the {role} served a certificate for another key than its TLS certificate's"
        )));
    }
    let entries: Vec<ProvenEntry> = entries.iter().map(proven).collect();
    let tlog_proofs = entries
        .iter()
        .map(|e| tlog_proof(e.index, &e.proof, &cosigned.note))
        .collect();
    Ok((
        Side {
            certificate: b64(&certificate),
            key_rotations: rotations.iter().map(proven).collect(),
            checkpoint: cosigned.note.clone(),
            entries,
            tlog_proofs,
        },
        evidence,
    ))
}

fn proven(v: &VerifiedEntry) -> ProvenEntry {
    ProvenEntry {
        index: v.entry.index,
        entry: v.entry.encode().map(|b| b64(&b)).unwrap_or_default(),
        proof: v.inclusion_proof.iter().map(|h| b64(h)).collect(),
    }
}

/// Collects a bundle for `grant` from auditors of its publisher and its
/// consumer (either order); the receipts are those either node serves,
/// each once, in transfer order.
pub async fn build(a: &mut Auditor, b: &mut Auditor, grant: &str) -> Result<Bundle, BundleError> {
    let ev_a = a.evidence(grant).await?;
    let env = envelope("the grant", &ev_a.grant)?;
    let g = Grant::decode(&env.payload).map_err(|e| invalid(format!("the grant: {e}")))?;
    let a_is_publisher = a
        .keys()
        .await?
        .keys()
        .iter()
        .any(|k| k.node_id == g.publisher);
    let ev_b = b.evidence(grant).await?;
    let ((publisher, pub_ev), (consumer, con_ev)) = if a_is_publisher {
        ((a, ev_a), (b, ev_b))
    } else {
        ((b, ev_b), (a, ev_a))
    };
    let (pub_identity, con_identity) = (publisher.node().clone(), consumer.node().clone());
    let (pub_side, pub_ev) = side(publisher, pub_ev, &con_identity, grant, "publisher").await?;
    let (con_side, con_ev) = side(consumer, con_ev, &pub_identity, grant, "consumer").await?;
    let receipts = merged_receipts(&con_ev.receipts, &pub_ev.receipts);
    if pub_ev.manifest.is_empty() || receipts.is_empty() {
        return Err(invalid(format!(
            "grant {grant}: the publisher holds no manifest or neither node a receipt (nothing was transferred yet)"
        )));
    }
    Ok(Bundle {
        format: FORMAT.into(),
        version: VERSION,
        grant_id: grant.to_owned(),
        manifest: pub_ev.manifest,
        grant: pub_ev.grant,
        receipts,
        publisher: pub_side,
        consumer: con_side,
    })
}

/// The receipts a bundle holds: those the consumer keeps (it signed them)
/// and those the publisher keeps (it took and recorded them), each once
/// (by payload hash), in transfer order. One that does not parse is kept
/// as it came, last: [`verify`] says what is wrong with it.
fn merged_receipts(consumer: &[String], publisher: &[String]) -> Vec<String> {
    let mut out: Vec<(u64, Option<Hash>, &String)> = Vec::new();
    for json in consumer.iter().chain(publisher) {
        let parsed = Envelope::from_json(json).ok().map(|env| {
            let transfer = Receipt::decode(&env.payload).map_or(u64::MAX, |r| r.transfer_index);
            (transfer, env.payload_hash())
        });
        let (transfer, hash) = match parsed {
            Some((t, h)) => (t, Some(h)),
            None => (u64::MAX, None),
        };
        let seen = out
            .iter()
            .any(|(_, h, j)| *j == json || (hash.is_some() && *h == hash));
        if !seen {
            out.push((transfer, hash, json));
        }
    }
    // Stable: equal transfers keep the consumer's order first.
    out.sort_by_key(|(t, _, _)| *t);
    out.into_iter().map(|(_, _, j)| j.clone()).collect()
}

/// A side, verified.
struct CheckedSide {
    identity: PeerIdentity,
    keys: LogKeys,
    checkpoint: SignedCheckpoint,
    cosigned_at: u64,
    entries: Vec<Entry>,
}

fn check_side(
    role: &str,
    side: &Side,
    ca_der: &[u8],
    (grant, version): (&str, u32),
) -> Result<CheckedSide, BundleError> {
    let der = unb64(&format!("the {role}'s certificate"), &side.certificate)?;
    let identity = ca::verify_der_issued_by(ca_der, &der, &format!("the {role}'s certificate"))
        .map_err(|e| invalid(format!("{e}")))?;
    let rotations = side
        .key_rotations
        .iter()
        .map(|p| decode_proven(role, "key rotation", p))
        .collect::<Result<Vec<_>, _>>()?;
    let rotation_entries: Vec<Entry> = rotations.iter().map(|(e, _, _)| e.clone()).collect();
    let keys = LogKeys::of_node(&rotation_entries, &identity)
        .map_err(|e| invalid(format!("the {role}'s key history: {e}")))?;
    let checkpoint = keys
        .verify_checkpoint(side.checkpoint.as_bytes())
        .map_err(|e| invalid(format!("the {role}'s checkpoint: {e}")))?;
    // Every signature line accounted for: this log's key(s), and one more
    // (the other side's cosignature, checked by the caller).
    let lines = signature_lines(&side.checkpoint);
    if lines != keys.signature_count(side.checkpoint.as_bytes()) + 1 {
        return Err(invalid(format!(
            "the {role}'s checkpoint carries {lines} signature lines; expected its log's and one cosignature"
        )));
    }
    for (entry, bytes, proof) in &rotations {
        prove(role, entry.index, bytes, proof, &checkpoint)?;
    }
    let mut entries = Vec::new();
    let mut last = None;
    for p in &side.entries {
        let (entry, bytes, proof) = decode_proven(role, "entry", p)?;
        if last.is_some_and(|l| p.index <= l) {
            return Err(invalid(format!(
                "entry {} of the {role} is out of order",
                p.index
            )));
        }
        last = Some(p.index);
        if entry.draft.grant.as_deref() != Some(grant) {
            return Err(invalid(format!(
                "entry {} of the {role} is not about grant {grant}",
                p.index
            )));
        }
        prove(role, p.index, &bytes, &proof, &checkpoint)?;
        entries.push(entry);
    }
    // Version 2 carries each entry's proof again as a C2SP tlog-proof: it
    // must be exactly the proof checked below, so that a verifier that
    // reads only those is shown nothing else.
    let expected: Vec<String> = if version == VERSION_1 {
        Vec::new()
    } else {
        side.entries
            .iter()
            .map(|e| tlog_proof(e.index, &e.proof, &side.checkpoint))
            .collect()
    };
    if side.tlog_proofs != expected {
        return Err(invalid(format!(
            "the {role}'s tlog-proofs are not its entries' proofs in its checkpoint (version {version} bundles carry {})",
            if version == VERSION_1 {
                "none"
            } else {
                "one per entry"
            }
        )));
    }
    Ok(CheckedSide {
        identity,
        keys,
        checkpoint,
        cosigned_at: 0,
        entries,
    })
}

/// A proven entry's bytes decoded: the entry (its index must be the one
/// given), its bytes, its audit path.
fn decode_proven(
    role: &str,
    what: &str,
    p: &ProvenEntry,
) -> Result<(Entry, Vec<u8>, Vec<Hash>), BundleError> {
    let bytes = unb64(&format!("{what} {} of the {role}", p.index), &p.entry)?;
    let entry = Entry::decode(&bytes)
        .map_err(|e| invalid(format!("{what} {} of the {role}: {e}", p.index)))?;
    if entry.index != p.index {
        return Err(invalid(format!(
            "{what} {} of the {role} says it is entry {}",
            p.index, entry.index
        )));
    }
    let proof = p
        .proof
        .iter()
        .map(|h| {
            let raw = unb64("a proof hash", h)?;
            merkle::hash_from_slice(&raw).map_err(|e| invalid(e.to_string()))
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    Ok((entry, bytes, proof))
}

/// Checks an entry's inclusion proof in a checkpoint.
fn prove(
    role: &str,
    index: u64,
    bytes: &[u8],
    proof: &[Hash],
    cp: &SignedCheckpoint,
) -> Result<(), BundleError> {
    let (size, root) = (cp.checkpoint.size, cp.checkpoint.root);
    merkle::verify_inclusion(&merkle::leaf_hash(bytes), index, size, proof, &root).map_err(|e| {
        invalid(format!(
            "entry {index} of the {role} is NOT proven in its checkpoint of size {size}: {e}"
        ))
    })
}

/// How many signature lines a note carries.
fn signature_lines(note: &str) -> usize {
    note.rsplit_once("\n\n")
        .map_or(0, |(_, sigs)| sigs.lines().count())
}

fn has(side: &CheckedSide, kind: EntryKind, object: &Hash) -> Option<u64> {
    side.entries
        .iter()
        .find(|e| e.draft.kind == kind && e.draft.object_hash.as_ref() == Some(object))
        .map(|e| e.index)
}

/// Verifies a bundle offline against the CA certificate (PEM) and returns
/// a human-readable account of the exchange.
pub fn verify(bytes: &[u8], ca_pem: &[u8]) -> Result<String, BundleError> {
    let bundle = Bundle::from_bytes(bytes)?;
    let ca_der = crate::identity::cert::cert_der_from_pem(ca_pem)
        .map_err(|e| BundleError::Format(format!("the CA certificate: {e}")))?;
    let grant_id = bundle.grant_id.as_str();
    let v = bundle.version;
    let mut publisher = check_side("publisher", &bundle.publisher, &ca_der, (grant_id, v))?;
    let mut consumer = check_side("consumer", &bundle.consumer, &ca_der, (grant_id, v))?;
    // Each checkpoint cosigned by the other side.
    let (pub_key, con_key) = (publisher.identity.public_key, consumer.identity.public_key);
    for (role, side, witness) in [
        ("publisher", &mut publisher, &con_key),
        ("consumer", &mut consumer, &pub_key),
    ] {
        let c = cosig::verify(side.checkpoint.note.as_bytes(), witness).map_err(|e| {
            invalid(format!(
                "the {role}'s checkpoint is not cosigned by the other side: {e}"
            ))
        })?;
        side.cosigned_at = c.timestamp;
    }

    // The signed objects, each by the right node, naming each other.
    let grant_env = envelope("the grant", &bundle.grant)?;
    let (grant, _): (Verified<Grant>, _) = publisher
        .keys
        .verify_any(|k| verify_grant(grant_env.clone(), k))
        .map_err(|e| invalid(format!("the grant is not signed by the publisher: {e}")))?;
    check_keyid("the grant", &grant)?;
    let g = grant.value();
    if g.id.as_str() != grant_id {
        return Err(invalid(format!("the grant is {}, not {grant_id}", g.id)));
    }
    if consumer.keys.keys().iter().all(|k| k.node_id != g.grantee) {
        return Err(invalid(format!(
            "the grant is for node {}, not the consumer {}",
            g.grantee, consumer.identity.node_id
        )));
    }
    let manifest_env = envelope("the manifest", &bundle.manifest)?;
    let ((dataset, manifest), _): ((_, Verified<Manifest>), _) = publisher
        .keys
        .verify_any(|k| crate::dataset::verify_manifest(manifest_env.clone(), k))
        .map_err(|e| invalid(format!("the manifest is not signed by the publisher: {e}")))?;
    if dataset != g.dataset || manifest_env.payload_hash() != g.manifest_sha256 {
        return Err(invalid(format!(
            "the manifest (dataset {dataset}) is not the one grant {grant_id} names"
        )));
    }
    check_keyid("the manifest", &manifest)?;
    let m = manifest.value();
    let mut receipts = Vec::new();
    for (i, json) in bundle.receipts.iter().enumerate() {
        let env = envelope(&format!("receipt {}", i + 1), json)?;
        let (r, _): (Verified<Receipt>, _) = consumer
            .keys
            .verify_any(|k| verify_receipt(env.clone(), k))
            .map_err(|e| {
                invalid(format!(
                    "receipt {} is not signed by the consumer: {e}",
                    i + 1
                ))
            })?;
        check_keyid(&format!("receipt {}", i + 1), &r)?;
        let rv = r.value();
        if rv.grant != g.id {
            return Err(invalid(format!(
                "receipt {} is for grant {}, not {grant_id}",
                i + 1,
                rv.grant
            )));
        }
        if rv.dataset != g.dataset
            || rv.content_sha256 != m.content_sha256
            || rv.bytes != m.size
            || rv
                .chunk_list_sha256
                .is_some_and(|h| h != m.chunk_list_sha256)
        {
            return Err(invalid(format!(
                "receipt {} does not attest the manifest's dataset, size, content hash and chunk list",
                i + 1
            )));
        }
        receipts.push((env.payload_hash(), r));
    }
    if receipts.is_empty() {
        return Err(invalid("no receipt: nothing was transferred"));
    }

    // Both ledgers recorded the grant and every receipt.
    let grant_hash = grant_env.payload_hash();
    let granted_at = has(&publisher, EntryKind::AccessGranted, &grant_hash).ok_or_else(|| {
        invalid(format!(
            "the publisher's ledger has no AccessGranted entry for grant {grant_id}"
        ))
    })?;
    // The grant's signer must have been in force when it was recorded;
    // the manifest is then the one the grant pins, whoever signed it.
    publisher
        .keys
        .honours(grant.signer(), "the grant", granted_at)
        .map_err(|e| invalid(e.to_string()))?;
    let received_at = has(&consumer, EntryKind::GrantReceived, &grant_hash).ok_or_else(|| {
        invalid(format!(
            "the consumer's ledger has no GrantReceived entry for grant {grant_id}"
        ))
    })?;
    let completed = has(&consumer, EntryKind::TransferCompleted, &m.content_sha256).ok_or_else(|| {
        invalid("the consumer's ledger has no TransferCompleted entry with the manifest's content hash")
    })?;
    let mut receipt_lines = String::new();
    for (i, (hash, r)) in receipts.iter().enumerate() {
        let at_publisher = has(&publisher, EntryKind::ReceiptRecorded, hash).ok_or_else(|| {
            invalid(format!(
                "the publisher's ledger did not record receipt {}",
                i + 1
            ))
        })?;
        let at_consumer = has(&consumer, EntryKind::ReceiptRecorded, hash).ok_or_else(|| {
            invalid(format!(
                "the consumer's ledger did not record receipt {}",
                i + 1
            ))
        })?;
        // A key retired since signs only what its log recorded before.
        consumer
            .keys
            .honours(r.signer(), &format!("receipt {}", i + 1), at_consumer)
            .map_err(|e| invalid(e.to_string()))?;
        receipt_lines.push_str(&format!(
            "  receipt {}: signed by the consumer at {} for {} bytes, content sha256 {};\n    recorded by the publisher (entry {at_publisher}) and the consumer (entry {at_consumer})\n",
            i + 1,
            time_text(r.value().received_at_ms),
            r.value().bytes,
            data_encoding::HEXLOWER.encode(&r.value().content_sha256),
        ));
    }
    let entry_time = |side: &CheckedSide, index: u64| {
        side.entries
            .iter()
            .find(|e| e.index == index)
            .map_or_else(String::new, |e| time_text(e.time_ms))
    };
    let who = |s: &CheckedSide| format!("{} (node {})", s.identity.participant, s.identity.node_id);
    let actions: Vec<&str> = g.actions.iter().map(|a| a.as_str()).collect();
    Ok(format!(
        "evidence bundle for grant {grant_id}: VERIFIED offline against the CA\n\
         publisher: {}\n\
         consumer:  {}\n\
         dataset:   \"{}\" {} ({} bytes, content sha256 {}), classification {}\n\
         grant:     purpose \"{}\", actions {}, valid {} to {}{}\n\
         \x20 granted at {} (publisher entry {granted_at}); received by the consumer (entry {received_at})\n\
         \x20 transfer completed at {} (consumer entry {completed})\n\
         {receipt_lines}\
         publisher's log: checkpoint of size {} ({} entries about the grant proven), cosigned by the consumer at {}\n\
         consumer's log:  checkpoint of size {} ({} entries about the grant proven), cosigned by the publisher at {}",
        who(&publisher),
        who(&consumer),
        m.title,
        dataset,
        m.size,
        data_encoding::HEXLOWER.encode(&m.content_sha256),
        m.classification,
        g.purpose,
        actions.join(", "),
        time_text(g.not_before_ms),
        time_text(g.not_after_ms),
        g.max_fetches
            .map(|n| format!(", at most {n} fetches"))
            .unwrap_or_default(),
        entry_time(&publisher, granted_at),
        entry_time(&consumer, completed),
        publisher.checkpoint.checkpoint.size,
        publisher.entries.len(),
        time_text(publisher.cosigned_at as i64 * 1000),
        consumer.checkpoint.checkpoint.size,
        consumer.entries.len(),
        time_text(consumer.cosigned_at as i64 * 1000),
    ))
}
