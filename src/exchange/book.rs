//! The grants a node issued (as publisher) and holds (as consumer), on
//! disk under `DATA_DIR/grants/{issued,held}/` as DSSE JSON envelopes, and
//! in memory; and the receipts for them: signed here as consumer
//! (`grants/received/`) or taken here as publisher (`grants/taken/`). What happened to a grant since (revocation, and later
//! fetches) is read from the ledger, the durable record.
//!
//! Issuing is all-or-nothing: an issued grant is a ledger record
//! committed in the same atomic batch as its `AccessGranted` entry (so one
//! group commit makes a whole batch of grants durable, with no file and
//! no fsync of its own), with a second record filing it under its end of
//! validity. Grant files of earlier versions (`grants/issued/*.json`) are
//! still read; one without its ledger entry is removed at start-up.
//!
//! Issued grants are not loaded at start-up: a node that has issued
//! millions over the years would verify them all before serving. One is
//! read from its record, verified and checked against its entry when it
//! is first looked up, then kept in a bounded cache. What start-up reads
//! is the revocations and the grants still valid (their end-of-validity
//! records), which the per-grantee cap on live grants counts. Held grants
//! likewise: each file under `held/` is read and verified when its grant
//! is first used.

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
/// Name prefix of the records filing issued grants by end of validity:
/// `grant/live/` ‖ `not_after_ms` (8 bytes, order-preserving) ‖ id, the
/// grantee's node id as value.
const LIVE: &[u8] = b"grant/live/";
/// The record saying every issued grant has its [`LIVE`] record: a store
/// written before they existed gets them once, at open.
const LIVE_INDEXED: &[u8] = b"grant/live-indexed";
/// How many verified issued grants are kept in memory.
const CACHED: usize = 65_536;

fn issued_name(id: &GrantId) -> Vec<u8> {
    [ISSUED, id.as_str().as_bytes()].concat()
}

/// `ms` as 8 bytes whose byte order is numeric order.
fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn live_name(g: &Grant) -> Vec<u8> {
    [LIVE, &time_key(g.not_after_ms), g.id.as_str().as_bytes()].concat()
}

/// A [`LIVE`] record's grant: (end of validity, id, grantee).
fn live_record(name: &[u8], value: &[u8]) -> Option<(i64, GrantId, NodeId)> {
    let rest = name.strip_prefix(LIVE)?;
    let (time, id) = rest.split_first_chunk::<8>()?;
    let not_after = (u64::from_be_bytes(*time) ^ (1 << 63)) as i64;
    let id = std::str::from_utf8(id).ok()?.parse().ok()?;
    let grantee = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some((not_after, id, grantee))
}

fn after_bound(after: Option<&GrantId>) -> Bound<&GrantId> {
    after.map_or(Bound::Unbounded, Bound::Excluded)
}

/// Verified grants by id, at most `cap`: the first kept is the first
/// forgotten.
struct Cache<V> {
    grants: std::collections::HashMap<GrantId, Arc<V>>,
    order: std::collections::VecDeque<GrantId>,
    cap: usize,
}

impl<V> Cache<V> {
    fn new(cap: usize) -> Self {
        Self {
            grants: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            cap,
        }
    }

    fn get(&self, id: &GrantId) -> Option<Arc<V>> {
        self.grants.get(id).cloned()
    }

    fn insert(&mut self, id: &GrantId, g: &Arc<V>) {
        if self.grants.insert(id.clone(), g.clone()).is_some() {
            return;
        }
        self.order.push_back(id.clone());
        if self.order.len() > self.cap
            && let Some(oldest) = self.order.pop_front()
        {
            self.grants.remove(&oldest);
        }
    }
}

/// Issued and held grants.
pub struct GrantBook {
    dir: PathBuf,
    own_key: [u8; 32],
    /// Issued grants verified since start-up (at most [`CACHED`]).
    issued: RwLock<Cache<Verified<Grant>>>,
    /// Issued grants from files of earlier versions, loaded at open.
    legacy: BTreeMap<GrantId, Arc<Verified<Grant>>>,
    /// Held grants verified since start-up (at most [`CACHED`]), read
    /// from `held/` when first looked up.
    held: RwLock<Cache<Held>>,
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
        let mut book = Self {
            dir: dir.to_path_buf(),
            own_key,
            issued: RwLock::new(Cache::new(CACHED)),
            legacy: BTreeMap::new(),
            held: RwLock::new(Cache::new(CACHED)),
            revoked: RwLock::new(revoked_grants(&ledger)?),
            live: std::sync::Mutex::default(),
            ledger,
            clock,
        };
        let mut warnings = Vec::new();
        let keys = book.ledger.keys();
        for path in json_files(&issued_dir)? {
            let loaded = fsutil::read_to_string(&path)
                .map_err(BookError::from)
                .and_then(|t| read_issued(&t, &keys));
            let label = path.display().to_string();
            match book.admit(loaded, &keys, Some(&path))? {
                Ok(g) => {
                    book.legacy.insert(g.value().id.clone(), Arc::new(g));
                }
                Err(why) => warnings.push(format!("{label}: {why}")),
            }
        }
        book.count_live()?;
        Ok((book, warnings))
    }

    /// Counts the grants still valid, not revoked, by grantee (the cap on
    /// live grants): from their end-of-validity records, which a store
    /// written before they existed gets first.
    fn count_live(&self) -> Result<(), BookError> {
        if self.ledger.record(LIVE_INDEXED)?.is_none() {
            self.index_live()?;
        }
        let now = self.clock.now_ms();
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut count = |not_after: i64, id: &GrantId, grantee: &NodeId| {
            if not_after >= now && !revoked.contains(id.as_str()) {
                live.entry(grantee.clone())
                    .or_default()
                    .insert((not_after, id.clone()));
            }
        };
        for g in self.legacy.values() {
            let g = g.value();
            count(g.not_after_ms, &g.id, &g.grantee);
        }
        // Names from the first one valid now on (`after` is exclusive:
        // every name at `now` sorts after this prefix).
        let mut after = [LIVE, &time_key(now)].concat();
        loop {
            let page = self.ledger.records(LIVE, Some(&after), 1024)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.clone();
            for (name, value) in &page {
                match live_record(name, value) {
                    Some((not_after, id, grantee)) => count(not_after, &id, &grantee),
                    None => tracing::warn!(
                        record = %crate::text::shown(&String::from_utf8_lossy(name)),
                        "an end-of-validity record of an issued grant is malformed; ignored"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Files every issued grant under its end of validity, once, for a
    /// store written before those records existed. The grants are only
    /// decoded, not verified: the records only count live grants, and a
    /// grant is verified when it is used.
    fn index_live(&self) -> Result<(), BookError> {
        let mut after: Option<Vec<u8>> = None;
        let mut filed = 0usize;
        loop {
            let page = self.ledger.records(ISSUED, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let records: Vec<_> = page
                .iter()
                .filter_map(|(_, value)| {
                    let env = Envelope::from_json(std::str::from_utf8(value).ok()?).ok()?;
                    let g = Grant::decode(&env.payload).ok()?;
                    Some((live_name(&g), g.grantee.as_str().as_bytes().to_vec()))
                })
                .collect();
            filed += records.len();
            self.ledger.put_records(&records)?;
        }
        self.ledger
            .put_records(&[(LIVE_INDEXED.to_vec(), b"1".to_vec())])?;
        if filed > 0 {
            tracing::info!(
                grants = filed,
                "issued grants filed by end of validity (once, for a store of an earlier version)"
            );
        }
        Ok(())
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

    /// An issued grant if the ledger records it (an `AccessGranted` entry
    /// hashing exactly this grant) and its signing key was in force then;
    /// otherwise why not (and a grant `file` the ledger never recorded is
    /// removed).
    fn admit(
        &self,
        loaded: Result<Verified<Grant>, BookError>,
        keys: &crate::ledger::keys::LogKeys,
        file: Option<&Path>,
    ) -> Result<Result<Verified<Grant>, String>, BookError> {
        let g = match loaded {
            Ok(g) => g,
            Err(e) => return Ok(Err(format!("skipped: {e}"))),
        };
        let id = g.value().id.clone();
        let Some(granted) = recorded(&self.ledger, &id, EntryKind::AccessGranted)? else {
            return Ok(Err(match file {
                Some(path) => {
                    let _ = std::fs::remove_file(path);
                    "not recorded as granted (issuing interrupted); removed".into()
                }
                None => "no AccessGranted entry for it in the ledger; not honoured".into(),
            }));
        };
        // The very grant the ledger recorded (grant ids are random, not
        // hashes: a grant swapped for another under the same id is
        // refused), and signed by a key since retired only if the log
        // recorded it before the rotation.
        if granted.draft.object_hash != Some(g.envelope().payload_hash()) {
            return Ok(Err(format!(
                "not the grant the ledger recorded as {id} (entry {}); not honoured",
                granted.index
            )));
        }
        Ok(keys
            .honours(g.signer(), &format!("grant {id}"), granted.index)
            .map(|()| g)
            .map_err(|e| format!("not honoured: {e}")))
    }

    /// Reads, verifies and admits an issued grant's record (`value` if
    /// already read); `None` if there is none or it is not honoured (the
    /// reason is logged).
    fn load_issued(
        &self,
        id: &GrantId,
        value: Option<&[u8]>,
    ) -> Result<Option<Arc<Verified<Grant>>>, BookError> {
        let name = issued_name(id);
        let read;
        let value = match value {
            Some(v) => v,
            None => match self.ledger.record(&name)? {
                Some(v) => {
                    read = v;
                    &read
                }
                None => return Ok(None),
            },
        };
        let keys = self.ledger.keys();
        let loaded = std::str::from_utf8(value)
            .map_err(|_| GrantError::Malformed("not UTF-8 JSON".into()).into())
            .and_then(|t| read_issued(t, &keys));
        match self.admit(loaded, &keys, None)? {
            Ok(g) => Ok(Some(Arc::new(g))),
            Err(why) => {
                tracing::warn!(grant = %id, "ledger record of an issued grant: {why}");
                Ok(None)
            }
        }
    }

    /// Keeps a verified issued grant in the cache (forgetting the oldest
    /// one when it is full).
    fn cache(&self, g: &Arc<Verified<Grant>>) {
        self.issued
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&g.value().id, g);
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

    fn write_held(&self) -> std::sync::RwLockWriteGuard<'_, Cache<Held>> {
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
        let records = vec![
            (
                issued_name(&g.id),
                verified.envelope().to_json().into_bytes(),
            ),
            (live_name(g), g.grantee.as_str().as_bytes().to_vec()),
        ];
        let appended = self.ledger.append_with_records(draft, records).await?;
        let verified = Arc::new(verified);
        self.cache(&verified);
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
        self.write_held().insert(&id, &held);
        Ok((held, appended))
    }

    /// Revokes an issued grant: records `GrantRevoked`. Returns `None` if
    /// it was revoked before.
    pub async fn revoke(&self, id: &GrantId, reason: &str) -> Result<Option<Appended>, BookError> {
        let grant = self
            .issued_grant(id)?
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

    /// Visits the grants this node issued with ids after `after`, in id
    /// order, until `visit` breaks. Each is verified as it is read (or
    /// taken from the cache); one not honoured is skipped, and logged.
    pub fn scan_issued(
        &self,
        after: Option<&GrantId>,
        mut visit: impl FnMut(&Arc<Verified<Grant>>) -> ControlFlow<()>,
    ) -> Result<(), BookError> {
        const PAGE: usize = 256;
        let mut legacy = self
            .legacy
            .range((after_bound(after), Bound::Unbounded))
            .peekable();
        let mut cursor = after.map(issued_name);
        loop {
            let page = self.ledger.records(ISSUED, cursor.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            for (name, value) in page {
                let id = std::str::from_utf8(&name[ISSUED.len()..])
                    .ok()
                    .and_then(|t| t.parse::<GrantId>().ok());
                cursor = Some(name);
                let Some(id) = id else {
                    continue;
                };
                // Files of earlier versions first, in id order (a file
                // with a record's id is the record's grant: skipped).
                while let Some((lid, g)) = legacy.next_if(|(lid, _)| **lid <= id) {
                    if *lid < id && visit(g).is_break() {
                        return Ok(());
                    }
                }
                let cached = self
                    .issued
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&id);
                let g = match cached {
                    Some(g) => Some(g),
                    None => self.load_issued(&id, Some(&value))?,
                };
                if let Some(g) = g
                    && visit(&g).is_break()
                {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        for (_, g) in legacy {
            if visit(g).is_break() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Visits the grants this node holds with ids after `after`, in id
    /// order, until `visit` breaks. Each is verified as it is read (or
    /// taken from the cache); one that does not verify is skipped, and
    /// logged.
    pub fn scan_held(
        &self,
        after: Option<&GrantId>,
        mut visit: impl FnMut(&Arc<Held>) -> ControlFlow<()>,
    ) -> Result<(), BookError> {
        let mut ids: Vec<GrantId> = json_files(&self.dir.join("held"))?
            .iter()
            .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
            .filter(|id| after.is_none_or(|a| id > a))
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(h) = self.held_grant(&id)
                && visit(&h).is_break()
            {
                break;
            }
        }
        Ok(())
    }

    /// A grant this node issued (verified when first looked up, then
    /// cached); `None` if there is none, or its record is not honoured.
    pub fn issued_grant(&self, id: &GrantId) -> Result<Option<Arc<Verified<Grant>>>, BookError> {
        let cached = self
            .issued
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id);
        if let Some(g) = cached.or_else(|| self.legacy.get(id).cloned()) {
            return Ok(Some(g));
        }
        let loaded = self.load_issued(id, None)?;
        if let Some(g) = &loaded {
            self.cache(g);
        }
        Ok(loaded)
    }

    /// Grants this node holds (read and verified: for tests and tools,
    /// not for a node's every request).
    pub fn held(&self) -> Result<Vec<Arc<Held>>, BookError> {
        let mut out = Vec::new();
        self.scan_held(None, |h| {
            out.push(h.clone());
            ControlFlow::Continue(())
        })?;
        Ok(out)
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

    /// A held grant (read from `held/` and verified when first looked
    /// up, then cached); `None` if there is none, or it does not verify
    /// (logged).
    pub fn held_grant(&self, id: &GrantId) -> Option<Arc<Held>> {
        let cached = self
            .held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id);
        if cached.is_some() {
            return cached;
        }
        let path = self.path("held", id);
        if !path.exists() {
            return None;
        }
        match self.load_held(&path) {
            Ok(h) => {
                let h = Arc::new(h);
                self.write_held().insert(id, &h);
                Some(h)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "a held grant is not usable: {e}");
                None
            }
        }
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
        if let Some(g) = self.issued_grant(id)? {
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
        assert_eq!(
            book.issued_grant(&id).expect("read").expect("kept").value(),
            grant.value()
        );
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
        assert!(book.issued_grant(&id).expect("read").is_some());
        assert!(book.is_revoked(&id).expect("revoked?"));
        // An unknown grant cannot be revoked.
        let other = GrantId::random().expect("id");
        assert!(matches!(
            book.revoke(&other, "x").await,
            Err(BookError::Unknown(_))
        ));
    }

    impl GrantBook {
        /// How many issued grants are verified and in memory.
        fn cached(&self) -> usize {
            self.issued
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .grants
                .len()
        }

        /// How many live grants `grantee` is counted as holding.
        fn live_count(&self, grantee: &NodeId) -> usize {
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(grantee)
                .map_or(0, |s| s.len())
        }
    }

    #[test]
    fn the_cache_forgets_the_oldest_grant_when_full() {
        let publisher = Node::new(1);
        let grantee = NodeId::from_public_key(&[9; 32]);
        let grants: Vec<_> = (0..3)
            .map(|_| {
                let env = publisher.grant_to(&grantee).sign(&publisher.key);
                Arc::new(verify_grant(env, &publisher.public()).expect("verifies"))
            })
            .collect();
        let mut cache = Cache::new(2);
        for g in &grants[..2] {
            cache.insert(&g.value().id, g);
            cache.insert(&g.value().id, g);
        }
        assert_eq!((cache.grants.len(), cache.order.len()), (2, 2), "kept once");
        cache.insert(&grants[2].value().id, &grants[2]);
        assert_eq!(cache.grants.len(), 2);
        assert!(
            cache.get(&grants[0].value().id).is_none(),
            "the oldest forgotten"
        );
        for g in &grants[1..] {
            assert!(cache.get(&g.value().id).is_some());
        }
    }

    #[tokio::test]
    async fn start_up_reads_only_the_live_grants_and_verifies_one_when_it_is_used() {
        let (publisher, a, b) = (Node::new(1), Node::new(2), Node::new(3));
        let (book, _) = publisher.book();
        let mut ids = Vec::new();
        for grantee in [&a, &a, &a, &b] {
            let (g, _) = book
                .issue(publisher.grant_to(&grantee.node_id()), &publisher.key)
                .await
                .expect("issued");
            ids.push(g.value().id.clone());
        }
        // One of a's long expired, one revoked.
        let mut old = publisher.grant_to(&a.node_id());
        old.not_after_ms = 1_000;
        let (old, _) = book.issue(old, &publisher.key).await.expect("issued");
        book.revoke(&ids[0], "test").await.expect("revoked");
        drop(book);

        let (book, warnings) = publisher.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(book.cached(), 0, "no issued grant is read at start-up");
        assert_eq!(book.live_count(&a.node_id()), 2, "valid and not revoked");
        assert_eq!(book.live_count(&b.node_id()), 1);
        let g = book.issued_grant(&ids[1]).expect("read").expect("issued");
        assert_eq!(g.value().grantee, a.node_id());
        assert_eq!(book.cached(), 1, "verified when first used, then kept");
        assert!(book.issued_grant(&old.value().id).expect("read").is_some());
        assert!(
            book.issued_grant(&GrantId::random().expect("id"))
                .expect("read")
                .is_none()
        );
        // Listing reads them all, in id order.
        let mut listed = Vec::new();
        book.scan_issued(None, |g| {
            listed.push(g.value().id.clone());
            ControlFlow::Continue(())
        })
        .expect("scan");
        let mut all = ids.clone();
        all.push(old.value().id.clone());
        all.sort();
        assert_eq!(listed, all);
        let mut after = Vec::new();
        book.scan_issued(Some(&all[1]), |g| {
            after.push(g.value().id.clone());
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(after, all[2..]);
    }

    #[tokio::test]
    async fn a_store_from_before_the_end_of_validity_records_gets_them_once() {
        let (publisher, a) = (Node::new(1), Node::new(2));
        // Issued as earlier versions did: the grant's record only.
        let mut ids = Vec::new();
        for not_after_ms in [1_000, i64::MAX / 2, i64::MAX / 2] {
            let mut g = publisher.grant_to(&a.node_id());
            g.not_after_ms = not_after_ms;
            let env = g.sign(&publisher.key);
            let mut draft = g.entry(EntryKind::AccessGranted);
            draft.object_hash = Some(env.payload_hash());
            publisher
                .ledger
                .append_with_records(
                    draft,
                    vec![(issued_name(&g.id), env.to_json().into_bytes())],
                )
                .await
                .expect("append");
            ids.push(g.id);
        }
        assert!(
            publisher
                .ledger
                .record(LIVE_INDEXED)
                .expect("read")
                .is_none()
        );
        let (book, warnings) = publisher.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(book.live_count(&a.node_id()), 2);
        assert!(
            publisher
                .ledger
                .record(LIVE_INDEXED)
                .expect("read")
                .is_some()
        );
        let filed = publisher.ledger.records(LIVE, None, 10).expect("records");
        assert_eq!(filed.len(), 3, "every grant filed, expired ones too");
        drop(book);
        let (book, _) = publisher.book();
        assert_eq!(book.live_count(&a.node_id()), 2);
        assert_eq!(
            publisher.ledger.records(LIVE, None, 10).expect("records"),
            filed
        );
        assert!(book.issued_grant(&ids[1]).expect("read").is_some());
    }

    #[tokio::test]
    async fn grant_files_of_earlier_versions_are_listed_with_the_records_in_id_order() {
        let publisher = Node::new(1);
        let (book, _) = publisher.book();
        let grantee = NodeId::from_public_key(&[9; 32]);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (g, _) = book
                .issue(publisher.grant_to(&grantee), &publisher.key)
                .await
                .expect("issued");
            ids.push(g.value().id.clone());
        }
        // Two grants as files, with their entries (as earlier versions
        // issued them).
        for _ in 0..2 {
            let g = publisher.grant_to(&grantee);
            let env = g.sign(&publisher.key);
            let mut draft = g.entry(EntryKind::AccessGranted);
            draft.object_hash = Some(env.payload_hash());
            publisher.ledger.append(draft).await.expect("append");
            let path = publisher
                .dir
                .path()
                .join("grants/issued")
                .join(format!("{}.json", g.id));
            fsutil::write_atomic(&path, env.to_json().as_bytes(), 0o644).expect("write");
            ids.push(g.id);
        }
        drop(book);
        let (book, warnings) = publisher.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(book.live_count(&grantee), 5);
        ids.sort();
        let mut listed = Vec::new();
        book.scan_issued(None, |g| {
            listed.push(g.value().id.clone());
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(listed, ids);
        for id in &ids {
            assert!(book.issued_grant(id).expect("read").is_some(), "{id}");
        }
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
        assert!(book.issued_grant(&id).expect("read").is_none());
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
        assert!(book.held().expect("held").is_empty());
        let (held, _) = book
            .hold(env, publisher.public(), &consumer.node_id())
            .await
            .expect("held");
        let id = held.grant.value().id.clone();
        drop(book);
        let (book, warnings) = consumer.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        let cached = |book: &GrantBook| {
            book.held
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .grants
                .len()
        };
        assert_eq!(cached(&book), 0, "no held grant is read at start-up");
        assert_eq!(
            book.held_grant(&id).expect("reloaded").publisher_key,
            publisher.public()
        );
        assert_eq!(cached(&book), 1, "verified when first used, then kept");
        // A second grant held, and a third whose file was changed.
        let mut later = Vec::new();
        for _ in 0..2 {
            let env = publisher.grant_to(&consumer.node_id()).sign(&publisher.key);
            let (h, _) = book
                .hold(env, publisher.public(), &consumer.node_id())
                .await
                .expect("held");
            later.push(h.grant.value().id.clone());
        }
        let changed = consumer
            .dir
            .path()
            .join("grants/held")
            .join(format!("{}.json", later[1]));
        let json = std::fs::read_to_string(&changed).expect("read");
        let mut env = Envelope::from_json(&json).expect("envelope");
        let mut g = Grant::decode(&env.payload).expect("grant");
        g.max_fetches = Some(1000);
        env.payload = g.encode();
        std::fs::write(&changed, env.to_json()).expect("write");
        drop(book);
        let (book, warnings) = consumer.book();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(book.held_grant(&later[1]).is_none(), "does not verify");
        let mut listed: Vec<GrantId> = book
            .held()
            .expect("held")
            .iter()
            .map(|h| h.grant.value().id.clone())
            .collect();
        let mut expected = vec![id, later[0].clone()];
        expected.sort();
        assert_eq!(listed, expected, "in id order, the changed one skipped");
        listed.clear();
        book.scan_held(Some(&expected[0]), |h| {
            listed.push(h.grant.value().id.clone());
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(listed, expected[1..]);
    }
}
