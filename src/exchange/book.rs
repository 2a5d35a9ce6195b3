//! The grants a node issued (as publisher) and holds (as consumer), on
//! disk under `DATA_DIR/grants/{issued,held}/` as DSSE JSON envelopes, and
//! in memory; and the receipts for them: signed here as consumer
//! (`grants/received/`) or taken here as publisher (`grants/taken/`). What happened to a grant since (revocation, and later
//! fetches) is read from the ledger, the durable record.
//!
//! Issuing is all-or-nothing: an issued grant is a ledger record
//! committed in the same atomic batch as its `AccessGranted` entry (so one
//! group commit makes a whole batch of grants durable, with no file and
//! no fsync of its own). Grant files of earlier versions
//! (`grants/issued/*.json`) are still read; one without its ledger entry
//! is removed at start-up.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::grant::{Grant, GrantError, GrantId, verify_grant};
use crate::clock::Clock;
use crate::dataset::DatasetId;
use crate::dataset::catalog::{DeriveRefusal, GrantCheck};
use crate::envelope::{Envelope, Verified};
use crate::fsutil::{self, FileError};
use crate::identity::NodeId;
use crate::ledger::entry::EntryKind;
use crate::ledger::{Appended, Ledger, LedgerError, Query};
use crate::policy::Action;

/// Why a grant could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// Files could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A grant did not verify.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// No such grant.
    #[error("this node has no grant {0}")]
    Unknown(String),
}

/// A grant this node holds, with the key of the publisher that signed it.
#[derive(Debug)]
pub struct Held {
    /// The verified grant.
    pub grant: Verified<Grant>,
    /// The publisher's Ed25519 key (from its certificate at receipt).
    pub publisher_key: [u8; 32],
}

/// Name prefix of the ledger records holding issued grants.
const ISSUED: &[u8] = b"grant/issued/";

fn after_bound(after: Option<&GrantId>) -> Bound<&GrantId> {
    after.map_or(Bound::Unbounded, Bound::Excluded)
}

/// Issued and held grants.
pub struct GrantBook {
    dir: PathBuf,
    own_key: [u8; 32],
    issued: RwLock<BTreeMap<GrantId, Arc<Verified<Grant>>>>,
    held: RwLock<BTreeMap<GrantId, Arc<Held>>>,
    /// Issued grants the ledger records as revoked (read at start-up,
    /// kept current by [`GrantBook::revoke`]): checked before every chunk.
    revoked: RwLock<std::collections::HashSet<String>>,
    /// Issued grants not revoked, by grantee, by end of validity (those
    /// past it are pruned when the grantee asks again): the per-grantee
    /// cap on live grants.
    live: std::sync::Mutex<
        std::collections::HashMap<NodeId, std::collections::BTreeSet<(i64, GrantId)>>,
    >,
    ledger: Ledger,
    clock: Clock,
}

/// An issued grant's envelope (JSON), verified under the log's keys.
fn read_issued(
    json: &str,
    keys: &crate::ledger::keys::LogKeys,
) -> Result<Verified<Grant>, BookError> {
    let env = Envelope::from_json(json).map_err(GrantError::from)?;
    Ok(keys.verify_any(|k| verify_grant(env.clone(), k))?.0)
}

fn recorded(
    ledger: &Ledger,
    grant: &GrantId,
    kind: EntryKind,
) -> Result<Option<crate::ledger::entry::Entry>, LedgerError> {
    let q = Query {
        grant: Some(grant.to_string()),
        kind: Some(kind),
        ..Query::default()
    };
    ledger.find(&q, |_| true)
}

/// Every grant the ledger records as revoked.
fn revoked_grants(ledger: &Ledger) -> Result<std::collections::HashSet<String>, LedgerError> {
    let q = Query {
        kind: Some(EntryKind::GrantRevoked),
        ..Query::default()
    };
    let mut out = std::collections::HashSet::new();
    ledger.scan(&q, |e| {
        out.extend(e.draft.grant);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(out)
}

impl GrantBook {
    /// Loads the grants under `dir`, verifying each; an issued grant the
    /// ledger does not record is removed. Returns warnings for what was
    /// skipped.
    pub fn open(
        dir: &Path,
        own_key: [u8; 32],
        ledger: Ledger,
        clock: Clock,
    ) -> Result<(Self, Vec<String>), BookError> {
        let (issued_dir, held_dir) = (dir.join("issued"), dir.join("held"));
        fsutil::create_private_dir(&issued_dir)?;
        fsutil::create_private_dir(&held_dir)?;
        let book = Self {
            dir: dir.to_path_buf(),
            own_key,
            issued: RwLock::default(),
            held: RwLock::default(),
            revoked: RwLock::new(revoked_grants(&ledger)?),
            live: std::sync::Mutex::default(),
            ledger,
            clock,
        };
        let mut warnings = Vec::new();
        let keys = book.ledger.keys();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = book.ledger.records(ISSUED, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            let next = last.clone();
            for (name, value) in page {
                let label = format!("ledger record {}", String::from_utf8_lossy(&name));
                let loaded = std::str::from_utf8(&value)
                    .map_err(|_| GrantError::Malformed("not UTF-8 JSON".into()).into())
                    .and_then(|t| read_issued(t, &keys));
                book.admit(loaded, &label, &keys, None, &mut warnings)?;
            }
            after = Some(next);
        }
        for path in json_files(&issued_dir)? {
            let loaded = fsutil::read_to_string(&path)
                .map_err(BookError::from)
                .and_then(|t| read_issued(&t, &keys));
            let label = path.display().to_string();
            book.admit(loaded, &label, &keys, Some(&path), &mut warnings)?;
        }
        for path in json_files(&held_dir)? {
            match book.load_held(&path) {
                Ok(h) => {
                    book.write_held()
                        .insert(h.grant.value().id.clone(), Arc::new(h));
                }
                Err(e) => warnings.push(format!("{}: skipped: {e}", path.display())),
            }
        }
        {
            let revoked = book.revoked.read().unwrap_or_else(PoisonError::into_inner);
            let mut live = book.live.lock().unwrap_or_else(PoisonError::into_inner);
            for g in book
                .issued
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                let g = g.value();
                if !revoked.contains(g.id.as_str()) {
                    live.entry(g.grantee.clone())
                        .or_default()
                        .insert((g.not_after_ms, g.id.clone()));
                }
            }
        }
        Ok((book, warnings))
    }

    /// Counts `grant` against its grantee's live grants (it is issued and
    /// not revoked), unless the grantee already has `cap` grants valid at
    /// `now_ms`: then says how many.
    pub fn reserve_live(&self, grant: &Grant, cap: usize, now_ms: i64) -> Result<(), usize> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let held = live.entry(grant.grantee.clone()).or_default();
        // Expired grants no longer count.
        while held.first().is_some_and(|(end, _)| *end < now_ms) {
            held.pop_first();
        }
        if held.len() >= cap {
            return Err(held.len());
        }
        held.insert((grant.not_after_ms, grant.id.clone()));
        Ok(())
    }

    /// Stops counting `grant` as live (revoked, or never issued).
    pub fn release_live(&self, grant: &Grant) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = live.get_mut(&grant.grantee) {
            held.remove(&(grant.not_after_ms, grant.id.clone()));
            if held.is_empty() {
                live.remove(&grant.grantee);
            }
        }
    }

    /// Keeps an issued grant loaded from `label` if the ledger records it
    /// (an `AccessGranted` entry hashing exactly this grant) and its
    /// signing key was in force then; otherwise says why in `warnings`
    /// (and removes a grant `file` the ledger never recorded).
    fn admit(
        &self,
        loaded: Result<Verified<Grant>, BookError>,
        label: &str,
        keys: &crate::ledger::keys::LogKeys,
        file: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<(), BookError> {
        let g = match loaded {
            Ok(g) => g,
            Err(e) => {
                warnings.push(format!("{label}: skipped: {e}"));
                return Ok(());
            }
        };
        let id = g.value().id.clone();
        let Some(granted) = recorded(&self.ledger, &id, EntryKind::AccessGranted)? else {
            match file {
                Some(path) => {
                    warnings.push(format!(
                        "{label}: not recorded as granted (issuing interrupted); removed"
                    ));
                    let _ = std::fs::remove_file(path);
                }
                None => warnings.push(format!(
                    "{label}: no AccessGranted entry for it in the ledger; not honoured"
                )),
            }
            return Ok(());
        };
        // The very grant the ledger recorded (grant ids are random, not
        // hashes: a grant swapped for another under the same id is
        // refused), and signed by a key since retired only if the log
        // recorded it before the rotation.
        if granted.draft.object_hash != Some(g.envelope().payload_hash()) {
            warnings.push(format!(
                "{label}: not the grant the ledger recorded as {id} (entry {}); not honoured",
                granted.index
            ));
            return Ok(());
        }
        match keys.honours(g.signer(), &format!("grant {id}"), granted.index) {
            Ok(()) => {
                self.write_issued().insert(id, Arc::new(g));
            }
            Err(e) => warnings.push(format!("{label}: not honoured: {e}")),
        }
        Ok(())
    }

    fn load_held(&self, path: &Path) -> Result<Held, BookError> {
        let env = Envelope::from_json(&fsutil::read_to_string(path)?).map_err(GrantError::from)?;
        let key_path = path.with_extension("publisher");
        let hex = fsutil::read_to_string(&key_path)?;
        let publisher_key: [u8; 32] = data_encoding::HEXLOWER
            .decode(hex.trim().as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                GrantError::Malformed(format!("{} is not a hex Ed25519 key", key_path.display()))
            })?;
        Ok(Held {
            grant: verify_grant(env, &publisher_key)?,
            publisher_key,
        })
    }

    fn write_issued(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<GrantId, Arc<Verified<Grant>>>> {
        self.issued.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_held(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<GrantId, Arc<Held>>> {
        self.held.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, kind: &str, id: &GrantId) -> PathBuf {
        self.dir.join(kind).join(format!("{id}.json"))
    }

    /// Signs, stores and records a grant this node issues.
    pub async fn issue(
        &self,
        grant: Grant,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(Arc<Verified<Grant>>, Appended), BookError> {
        if key.verifying_key().to_bytes() != self.own_key {
            return Err(
                GrantError::Malformed("issued with a key that is not this node's".into()).into(),
            );
        }
        // What a grantee's decoding will check (an action, a non-empty
        // window, well-formed ids), checked before anything is signed.
        Grant::decode(&grant.encode())?;
        let verified = Verified::sign_here(grant, key).ok_or_else(|| {
            GrantError::Malformed("a grant naming another publisher than this node".into())
        })?;
        let g = verified.value();
        let mut draft = g.entry(EntryKind::AccessGranted);
        draft.object_hash = Some(verified.envelope().payload_hash());
        let actions: Vec<&str> = g.actions.iter().map(|a| a.as_str()).collect();
        draft.detail = format!(
            "purpose {}; actions {}",
            crate::text::shown(&g.purpose),
            actions.join(",")
        );
        let mut name = ISSUED.to_vec();
        name.extend_from_slice(g.id.to_string().as_bytes());
        let appended = self
            .ledger
            .append_with_record(draft, name, verified.envelope().to_json().into_bytes())
            .await?;
        let verified = Arc::new(verified);
        self.write_issued()
            .insert(verified.value().id.clone(), verified.clone());
        Ok((verified, appended))
    }

    /// Records a grant this node received, after checking it is for this
    /// node and signed by the publisher whose certificate was verified.
    pub async fn hold(
        &self,
        envelope: Envelope,
        publisher_key: [u8; 32],
        own_node: &NodeId,
    ) -> Result<(Arc<Held>, Appended), BookError> {
        let grant = verify_grant(envelope, &publisher_key)?;
        if grant.value().grantee != *own_node {
            return Err(GrantError::Malformed(format!(
                "the grant is for node {}, not this node",
                grant.value().grantee
            ))
            .into());
        }
        let id = grant.value().id.clone();
        let path = self.path("held", &id);
        fsutil::write_atomic(
            &path.with_extension("publisher"),
            data_encoding::HEXLOWER.encode(&publisher_key).as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        fsutil::write_atomic(
            &path,
            grant.envelope().to_json().as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        let g = grant.value();
        let mut draft = g.entry(EntryKind::GrantReceived);
        draft.object_hash = Some(grant.envelope().payload_hash());
        // The publisher's text: escaped and cut like any outside text.
        draft.detail = format!("purpose {}", crate::text::shown(&g.purpose));
        let appended = self.ledger.append(draft).await?;
        let held = Arc::new(Held {
            grant,
            publisher_key,
        });
        self.write_held().insert(id, held.clone());
        Ok((held, appended))
    }

    /// Revokes an issued grant: records `GrantRevoked`. Returns `None` if
    /// it was revoked before.
    pub async fn revoke(&self, id: &GrantId, reason: &str) -> Result<Option<Appended>, BookError> {
        let grant = self
            .issued_grant(id)
            .ok_or_else(|| BookError::Unknown(id.to_string()))?;
        // Marked first, so serving stops at once (and a second revocation
        // racing this one records nothing); unmarked if the append fails.
        if !self.write_revoked().insert(id.to_string()) {
            return Ok(None);
        }
        let g = grant.value();
        let mut draft = g.entry(EntryKind::GrantRevoked);
        draft.detail = reason.chars().take(500).collect();
        match self.ledger.append(draft).await {
            Ok(a) => {
                self.release_live(g);
                Ok(Some(a))
            }
            Err(e) => {
                self.write_revoked().remove(&id.to_string());
                Err(e.into())
            }
        }
    }

    fn write_revoked(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashSet<String>> {
        self.revoked.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the grant is revoked.
    pub fn is_revoked(&self, id: &GrantId) -> Result<bool, BookError> {
        Ok(self
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id.as_str()))
    }

    /// Grants this node issued.
    pub fn issued(&self) -> Vec<Arc<Verified<Grant>>> {
        self.issued
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Visits the grants this node issued with ids after `after`, in id
    /// order, until `visit` breaks.
    pub fn scan_issued(
        &self,
        after: Option<&GrantId>,
        mut visit: impl FnMut(&Arc<Verified<Grant>>) -> ControlFlow<()>,
    ) {
        let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
        for g in issued.range((after_bound(after), Bound::Unbounded)) {
            if visit(g.1).is_break() {
                return;
            }
        }
    }

    /// Visits the grants this node holds with ids after `after`, in id
    /// order, until `visit` breaks.
    pub fn scan_held(
        &self,
        after: Option<&GrantId>,
        mut visit: impl FnMut(&Arc<Held>) -> ControlFlow<()>,
    ) {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        for h in held.range((after_bound(after), Bound::Unbounded)) {
            if visit(h.1).is_break() {
                return;
            }
        }
    }

    /// A grant this node issued.
    pub fn issued_grant(&self, id: &GrantId) -> Option<Arc<Verified<Grant>>> {
        self.issued
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Grants this node holds.
    pub fn held(&self) -> Vec<Arc<Held>> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Completes a fetch: remembers the dataset's signed manifest (a
    /// derivative's classification is checked against it) and its chunks
    /// (so the blob store keeps them: they can be re-exported or derived
    /// from), then forgets the interrupted-fetch state.
    pub fn complete_fetch(
        &self,
        id: &GrantId,
        dataset: &DatasetId,
        manifest: &Envelope,
        chunks: &[crate::digest::Hash],
    ) -> Result<(), BookError> {
        let dir = self.dir.join("received");
        fsutil::create_private_dir(&dir)?;
        fsutil::write_atomic(
            &dir.join(format!("{dataset}.manifest.json")),
            manifest.to_json().as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        write_chunks(&dir.join(format!("{dataset}.chunks")), chunks)?;
        self.end_fetch(id)
    }

    /// Keeps the receipt this node signed for transfer `transfer` of
    /// grant `id` (shown to auditors).
    pub fn keep_receipt(
        &self,
        id: &GrantId,
        transfer: u64,
        receipt: &Envelope,
    ) -> Result<(), BookError> {
        let dir = self.dir.join("received");
        fsutil::create_private_dir(&dir)?;
        fsutil::write_atomic(
            &receipt_path(&self.dir, id, transfer),
            receipt.to_json().as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        Ok(())
    }

    /// Keeps the receipt the consumer signed for transfer `transfer` of
    /// grant `id`, which this node issued and recorded the receipt of
    /// (shown to auditors).
    pub fn keep_taken_receipt(
        &self,
        id: &GrantId,
        transfer: u64,
        receipt: &Envelope,
    ) -> Result<(), BookError> {
        fsutil::create_private_dir(&self.dir.join(TAKEN))?;
        fsutil::write_atomic(
            &taken_receipt_path(&self.dir, id, transfer),
            receipt.to_json().as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        Ok(())
    }

    /// The verified manifest of a dataset this node received under `held`.
    fn received_manifest(
        &self,
        held: &Held,
    ) -> Result<crate::envelope::Verified<crate::dataset::Manifest>, DeriveRefusal> {
        let g = held.grant.value();
        let path = self
            .dir
            .join("received")
            .join(format!("{}.manifest.json", g.dataset));
        let text = fsutil::read_to_string(&path)
            .map_err(|_| DeriveRefusal::NotFetched(g.dataset.clone()))?;
        let bad = |detail: Box<dyn std::error::Error + Send + Sync>| DeriveRefusal::Manifest {
            path: path.display().to_string(),
            detail,
        };
        let env = Envelope::from_json(&text).map_err(|e| bad(Box::new(e)))?;
        if env.payload_hash() != g.manifest_sha256 {
            return Err(bad(format!("not the manifest grant {} names", g.id).into()));
        }
        crate::dataset::verify_manifest(env, &held.publisher_key)
            .map(|(_, m)| m)
            .map_err(|e| bad(Box::new(e)))
    }

    /// Every chunk of every dataset this node received, and of every
    /// interrupted fetch it can still resume.
    pub fn received_chunks(&self) -> std::collections::HashSet<crate::digest::Hash> {
        let mut out = std::collections::HashSet::new();
        for sub in ["received", "fetching"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "chunks")
                    && let Ok(raw) = std::fs::read(e.path())
                {
                    out.extend(
                        raw.chunks_exact(32)
                            .filter_map(|c| <[u8; 32]>::try_from(c).ok()),
                    );
                }
            }
        }
        out
    }

    /// `grants/fetching/GRANT.header` and `GRANT.chunks`.
    fn fetching_paths(&self, id: &GrantId) -> [PathBuf; 2] {
        let dir = self.dir.join("fetching");
        [
            dir.join(format!("{id}.header")),
            dir.join(format!("{id}.chunks")),
        ]
    }

    /// Remembers the publisher's header of a fetch that has started (as
    /// received, opaque here) and its chunk list, so an interrupted fetch
    /// can be resumed, and its chunks are kept, even across restarts.
    pub fn begin_fetch(
        &self,
        id: &GrantId,
        header: &[u8],
        chunks: &[crate::digest::Hash],
    ) -> Result<(), BookError> {
        fsutil::create_private_dir(&self.dir.join("fetching"))?;
        let [header_path, chunks_path] = self.fetching_paths(id);
        write_chunks(&chunks_path, chunks)?;
        fsutil::write_atomic(&header_path, header, fsutil::PUBLIC_MODE)?;
        Ok(())
    }

    /// The saved header of an interrupted fetch of grant `id`, if any (the
    /// caller verifies it again before use).
    pub fn interrupted_fetch(&self, id: &GrantId) -> Result<Option<Vec<u8>>, BookError> {
        let [header_path, _] = self.fetching_paths(id);
        if !header_path.exists() {
            return Ok(None);
        }
        Ok(Some(fsutil::read(&header_path)?))
    }

    /// Forgets an interrupted fetch.
    pub fn end_fetch(&self, id: &GrantId) -> Result<(), BookError> {
        for path in self.fetching_paths(id) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FileError::new("remove", &path, e).into()),
            }
        }
        Ok(())
    }

    /// A held grant.
    pub fn held_grant(&self, id: &GrantId) -> Option<Arc<Held>> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Derivations from another publisher's dataset need a held grant that
/// allows `derive`, is for that dataset, and is in its window now.
impl GrantCheck for GrantBook {
    fn allows(
        &self,
        grant: &str,
        dataset: &DatasetId,
        action: Action,
    ) -> Result<crate::policy::Classification, DeriveRefusal> {
        let id: GrantId = grant
            .parse()
            .map_err(|e: GrantError| DeriveRefusal::Unusable(Box::new(e)))?;
        let held = self.held_grant(&id).ok_or_else(|| DeriveRefusal::NoGrant {
            grant: grant.to_owned(),
            dataset: dataset.clone(),
        })?;
        let g = held.grant.value();
        if g.dataset != *dataset {
            return Err(DeriveRefusal::OtherDataset {
                grant: id.to_string(),
                granted: g.dataset.clone(),
                dataset: dataset.clone(),
            });
        }
        if !g.actions.contains(&action) {
            return Err(DeriveRefusal::NotAllowed {
                grant: id.to_string(),
                action,
            });
        }
        g.check_use(&g.grantee, self.clock.now_ms())
            .map_err(|e| DeriveRefusal::Unusable(Box::new(e)))?;
        Ok(self.received_manifest(&held)?.value().classification)
    }
}

/// The signed objects a node holds about one grant (for evidence
/// bundles; unverified here, the bundle's reader verifies them).
#[derive(Debug, Default)]
pub struct GrantObjects {
    /// The grant, issued or held here.
    pub grant: Option<Envelope>,
    /// The manifest received under it (consumer side).
    pub manifest: Option<Envelope>,
    /// The receipts this node signed for it, by transfer entry (consumer
    /// side).
    pub receipts: Vec<(u64, Envelope)>,
    /// The receipts consumers signed for it that this node took and
    /// recorded, by transfer entry (publisher side).
    pub taken: Vec<(u64, Envelope)>,
}

impl GrantBook {
    /// What this node holds about grant `id`.
    pub fn objects(&self, id: &GrantId) -> Result<GrantObjects, BookError> {
        let mut out = GrantObjects::default();
        if let Some(g) = self.issued_grant(id) {
            out.grant = Some(g.envelope().clone());
        } else if let Some(h) = self.held_grant(id) {
            out.grant = Some(h.grant.envelope().clone());
            let dataset = &h.grant.value().dataset;
            let path = self
                .dir
                .join("received")
                .join(format!("{dataset}.manifest.json"));
            if let Ok(text) = fsutil::read_to_string(&path) {
                out.manifest = Some(Envelope::from_json(&text).map_err(GrantError::from)?);
            }
        }
        out.receipts = receipts_in(&self.dir.join("received"), id)?;
        out.taken = receipts_in(&self.dir.join(TAKEN), id)?;
        Ok(out)
    }
}

/// The receipts for grant `id` kept in `dir` (`GRANT.TRANSFER.receipt.json`),
/// by transfer entry; none if `dir` does not exist.
fn receipts_in(dir: &Path, id: &GrantId) -> Result<Vec<(u64, Envelope)>, BookError> {
    let mut out = Vec::new();
    let prefix = format!("{id}.");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(transfer) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".receipt.json"))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let text = fsutil::read_to_string(&entry.path())?;
            out.push((
                transfer,
                Envelope::from_json(&text).map_err(GrantError::from)?,
            ));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// The directory under the grants dir where a publisher keeps the
/// receipts it took.
const TAKEN: &str = "taken";

/// Where a publisher whose grants dir is `grants` keeps the receipt a
/// consumer signed for transfer `transfer` of grant `id`:
/// `grants/taken/GRANT.TRANSFER.receipt.json`.
pub fn taken_receipt_path(grants: &Path, id: &GrantId, transfer: u64) -> PathBuf {
    grants
        .join(TAKEN)
        .join(format!("{id}.{transfer}.receipt.json"))
}

/// Where a node whose grants dir is `grants` keeps the receipt it signed
/// for transfer `transfer` of grant `id`:
/// `grants/received/GRANT.TRANSFER.receipt.json`.
pub fn receipt_path(grants: &Path, id: &GrantId, transfer: u64) -> PathBuf {
    grants
        .join("received")
        .join(format!("{id}.{transfer}.receipt.json"))
}

/// A chunk list as stored: the 32-byte hashes, concatenated.
fn write_chunks(path: &Path, chunks: &[crate::digest::Hash]) -> Result<(), FileError> {
    fsutil::write_atomic(path, &chunks.concat(), fsutil::PUBLIC_MODE)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FileError::new("read", dir, e))?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::DatasetId;
    use crate::testing::TestNode;

    use ed25519_dalek::SigningKey;
    use std::collections::BTreeSet;

    /// A grant book over its own ledger, in a temporary dir.
    struct Node {
        dir: tempfile::TempDir,
        key: SigningKey,
        ledger: Ledger,
    }

    impl Node {
        fn new(seed: u8) -> Self {
            let TestNode {
                dir, key, ledger, ..
            } = TestNode::new(seed, "city-transport", "publisher");
            Self { dir, key, ledger }
        }

        fn public(&self) -> [u8; 32] {
            self.key.verifying_key().to_bytes()
        }

        fn node_id(&self) -> NodeId {
            NodeId::from_public_key(&self.public())
        }

        fn book(&self) -> (GrantBook, Vec<String>) {
            GrantBook::open(
                &self.dir.path().join("grants"),
                self.public(),
                self.ledger.clone(),
                Clock::default(),
            )
            .expect("book")
        }

        fn grant_to(&self, grantee: &NodeId) -> Grant {
            Grant {
                id: GrantId::random().expect("id"),
                dataset: DatasetId::of_payload(b"manifest"),
                manifest_sha256: [1; 32],
                publisher: self.node_id(),
                grantee: grantee.clone(),
                purpose: "research".into(),
                actions: BTreeSet::from([Action::Read]),
                not_before_ms: 0,
                not_after_ms: i64::MAX / 2,
                max_fetches: Some(1),
                obligations: Vec::new(),
                policy_sha256: [2; 32],
                issued_at_ms: 0,
            }
        }
    }

    #[tokio::test]
    async fn issued_grants_are_recorded_revoked_once_and_reloaded() {
        let (publisher, consumer) = (Node::new(1), Node::new(2));
        let (book, warnings) = publisher.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (grant, appended) = book
            .issue(publisher.grant_to(&consumer.node_id()), &publisher.key)
            .await
            .expect("issued");
        let id = grant.value().id.clone();
        assert_eq!(book.issued_grant(&id).expect("kept").value(), grant.value());
        assert!(!book.is_revoked(&id).expect("revoked?"));
        let revoked = book.revoke(&id, "test").await.expect("revoke");
        assert!(revoked.is_some_and(|r| r.index > appended.index));
        // A second revocation records nothing.
        assert!(book.revoke(&id, "again").await.expect("again").is_none());
        assert!(book.is_revoked(&id).expect("revoked?"));
        // Reopened: the grant and its revocation come back from the ledger.
        drop(book);
        let (book, warnings) = publisher.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(book.issued_grant(&id).is_some());
        assert!(book.is_revoked(&id).expect("revoked?"));
        // An unknown grant cannot be revoked.
        let other = GrantId::random().expect("id");
        assert!(matches!(
            book.revoke(&other, "x").await,
            Err(BookError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn an_issued_grant_the_ledger_never_recorded_is_dropped_at_open() {
        let publisher = Node::new(1);
        let (book, _) = publisher.book();
        let g = publisher.grant_to(&NodeId::from_public_key(&[9; 32]));
        let id = g.id.clone();
        // A grant file written without its AccessGranted entry (issuing
        // cut between the two).
        let path = publisher
            .dir
            .path()
            .join("grants/issued")
            .join(format!("{id}.json"));
        fsutil::write_atomic(&path, g.sign(&publisher.key).to_json().as_bytes(), 0o644)
            .expect("write");
        drop(book);
        let (book, warnings) = publisher.book();
        assert!(book.issued_grant(&id).is_none());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("not recorded as granted")),
            "{warnings:?}"
        );
        assert!(!path.exists(), "removed");
    }

    #[tokio::test]
    async fn a_held_grant_must_be_for_this_node_and_signed_by_its_publisher() {
        let (publisher, consumer, mallory) = (Node::new(1), Node::new(2), Node::new(3));
        let (book, _) = consumer.book();
        let env = publisher.grant_to(&consumer.node_id()).sign(&publisher.key);
        // Presented as if another node had signed it.
        let err = book
            .hold(env.clone(), mallory.public(), &consumer.node_id())
            .await
            .expect_err("wrong signer");
        assert!(matches!(err, BookError::Grant(_)), "{err}");
        // For another node.
        let err = book
            .hold(env.clone(), publisher.public(), &mallory.node_id())
            .await
            .expect_err("not ours");
        assert!(err.to_string().contains("not this node"), "{err}");
        assert!(book.held().is_empty());
        let (held, _) = book
            .hold(env, publisher.public(), &consumer.node_id())
            .await
            .expect("held");
        let id = held.grant.value().id.clone();
        drop(book);
        let (book, warnings) = consumer.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            book.held_grant(&id).expect("reloaded").publisher_key,
            publisher.public()
        );
    }
}
