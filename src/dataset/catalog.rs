//! The datasets this node published: on disk under `DATA_DIR/datasets/`
//! (one directory per dataset: `manifest.json`, the DSSE JSON envelope,
//! and `chunks`, the chunk-hash list), indexed in memory, and publishing
//! itself.
//!
//! Publishing is all-or-nothing: the request is checked before any content
//! is read; chunks are made durable, then the dataset directory is written
//! under a temporary name and renamed, then `DatasetPublished` is appended
//! to the ledger. If the ledger append fails the directory is removed. At
//! start-up a dataset directory without its ledger entry (a crash between
//! the two) is removed, so nothing is ever served that the ledger does not
//! record as published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::chunk::Chunked;
use super::{DatasetError, DatasetId, Derivation, Manifest, chunk_list_hash, verify_manifest};
use crate::digest::Hash;
use crate::envelope::{Envelope, Verified};
use crate::fsutil::{self, FileError};
use crate::identity::NodeId;
use crate::ledger::entry::{EntryDraft, EntryKind};
use crate::ledger::keys::LogKeys;
use crate::ledger::{Appended, Ledger, LedgerError, Query};
use crate::policy::{Action, Classification, Policy};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request is invalid; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// A manifest or dataset problem.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Files could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The ledger refused the entry; nothing was published.
    #[error("the ledger did not record the publication: {0}")]
    Ledger(#[from] LedgerError),
    /// The ledger's commit failed after it may have reached the disk: the
    /// dataset is kept and settled against the ledger at the next start.
    #[error("the publication may or may not be recorded (settled at the next start): {0}")]
    Uncertain(LedgerError),
    /// The content does not match what the request announced, or the
    /// stream carrying it is malformed.
    #[error("{0}")]
    Content(String),
    /// The stream carrying the content broke off.
    #[error("the publish stream broke off: {0}")]
    Interrupted(String),
    /// Chunks could not be stored.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A published dataset.
#[derive(Debug)]
pub struct Dataset {
    /// Its id.
    pub id: DatasetId,
    /// Its verified manifest.
    pub manifest: Verified<Manifest>,
    /// Its chunk hashes, in order.
    pub chunks: Vec<Hash>,
}

/// What a publisher asks for.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Media type.
    pub media_type: String,
    /// The policy.
    pub policy: Policy,
    /// Sources, for a derived dataset.
    pub derived_from: Vec<Derivation>,
    /// The version this one replaces.
    pub supersedes: Option<DatasetId>,
    /// Chunk size.
    pub chunk_size: u32,
}

/// A publish request that passed its checks: what the manifest will say
/// beyond the request.
#[derive(Clone, Debug)]
pub struct Prepared {
    request: PublishRequest,
    classification: Classification,
    version: u64,
    lineage: Option<DatasetId>,
}

impl Prepared {
    /// The chunk size to use.
    pub fn chunk_size(&self) -> u32 {
        self.request.chunk_size
    }
}

/// The grants this node holds, as the catalog needs them to check a
/// derivation from another publisher's dataset.
pub trait GrantCheck: Send + Sync {
    /// Whether grant `grant` held by this node allows `action` on `dataset`
    /// now; `Ok` is the source's classification, from its signed manifest
    /// (a derivative inherits the strictest of its sources').
    fn allows(
        &self,
        grant: &str,
        dataset: &DatasetId,
        action: Action,
    ) -> Result<Classification, DeriveRefusal>;
}

/// Why a held grant does not allow deriving from a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DeriveRefusal {
    /// No such grant held.
    #[error("this node holds no grant `{grant}` for dataset {dataset}")]
    NoGrant {
        /// The grant named.
        grant: String,
        /// The dataset named.
        dataset: DatasetId,
    },
    /// The grant is for another dataset.
    #[error("grant {grant} is for dataset {granted}, not {dataset}")]
    OtherDataset {
        /// The grant.
        grant: String,
        /// The dataset it is for.
        granted: DatasetId,
        /// The dataset named.
        dataset: DatasetId,
    },
    /// The grant does not allow the action.
    #[error("grant {grant} does not allow `{action}`")]
    NotAllowed {
        /// The grant.
        grant: String,
        /// The action.
        action: Action,
    },
    /// The grant cannot be used (malformed id, outside its window, …).
    #[error(transparent)]
    Unusable(Box<dyn std::error::Error + Send + Sync>),
    /// The source was never fetched here, so its classification (in its
    /// signed manifest) is unknown.
    #[error(
        "dataset {0} has not been fetched here; its classification is known only from its signed manifest: fetch it first"
    )]
    NotFetched(DatasetId),
    /// The kept manifest of the source is not usable.
    #[error("{path}: {detail}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What is wrong with it.
        detail: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// No grants held.
pub struct NoGrants;

impl GrantCheck for NoGrants {
    fn allows(
        &self,
        grant: &str,
        dataset: &DatasetId,
        _action: Action,
    ) -> Result<Classification, DeriveRefusal> {
        Err(DeriveRefusal::NoGrant {
            grant: grant.to_owned(),
            dataset: dataset.clone(),
        })
    }
}

/// The node's published datasets.
pub struct Catalog {
    dir: PathBuf,
    publisher: NodeId,
    key: [u8; 32],
    datasets: RwLock<BTreeMap<DatasetId, Arc<Dataset>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Catalog {
    /// Loads the catalog in `dir`, verifying every manifest with the
    /// node's key (or, for manifests published before a key rotation, the
    /// key then in force) and its chunk list with the manifest; removes
    /// datasets the ledger does not record as published. Returns warnings for what
    /// was skipped.
    pub fn open(
        dir: &Path,
        publisher_key: [u8; 32],
        ledger: &Ledger,
    ) -> Result<(Self, Vec<String>), PublishError> {
        fsutil::create_private_dir(dir)?;
        let catalog = Self {
            dir: dir.to_path_buf(),
            publisher: NodeId::from_public_key(&publisher_key),
            key: publisher_key,
            datasets: RwLock::new(BTreeMap::new()),
        };
        let mut warnings = Vec::new();
        let size = ledger.latest().map_or(0, |c| c.checkpoint.size);
        let keys = ledger.keys();
        let entries = std::fs::read_dir(dir).map_err(|e| FileError::new("read", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| FileError::new("read", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            match catalog.load_one(&name, &path, &keys) {
                Ok(dataset) => {
                    let q = Query {
                        dataset: Some(dataset.id.to_string()),
                        kind: Some(EntryKind::DatasetPublished),
                        ..Query::default()
                    };
                    let recorded = if size > 0 {
                        ledger
                            .query(&q, None, 1, size)?
                            .entries
                            .first()
                            .map(|e| e.0)
                    } else {
                        None
                    };
                    let Some(published_at) = recorded else {
                        warnings.push(format!(
                            "{name}: no DatasetPublished entry in the ledger (publication interrupted); removed"
                        ));
                        let _ = std::fs::remove_dir_all(&path);
                        continue;
                    };
                    // A manifest signed by a key this node has since retired
                    // stands only if the log recorded it before the
                    // retirement (a stolen old key cannot add datasets).
                    let signer = dataset.manifest.signer();
                    match keys.honours(signer, &format!("manifest {}", dataset.id), published_at) {
                        Ok(()) => {
                            catalog
                                .write()
                                .insert(dataset.id.clone(), Arc::new(dataset));
                        }
                        Err(e) => warnings.push(format!("{name}: not served: {e}")),
                    }
                }
                Err(e) => warnings.push(format!("{name}: skipped: {e}")),
            }
        }
        Ok((catalog, warnings))
    }

    fn load_one(&self, name: &str, path: &Path, keys: &LogKeys) -> Result<Dataset, PublishError> {
        let id: DatasetId = name.parse()?;
        let json = fsutil::read_to_string(&path.join("manifest.json"))?;
        let envelope = Envelope::from_json(&json).map_err(DatasetError::from)?;
        let ((actual, manifest), _) = keys.verify_any(|k| verify_manifest(envelope.clone(), k))?;
        if actual != id {
            return Err(PublishError::Content(format!(
                "its manifest is dataset {actual}"
            )));
        }
        let raw = fsutil::read(&path.join("chunks"))?;
        let chunks = decode_chunk_list(&raw).ok_or_else(|| {
            PublishError::Content("the chunk list is not a list of hashes".into())
        })?;
        let m = manifest.value();
        if chunks.len() as u64 != m.chunk_count || chunk_list_hash(&chunks) != m.chunk_list_sha256 {
            return Err(PublishError::Content(
                "the chunk list does not match the manifest".into(),
            ));
        }
        Ok(Dataset {
            id,
            manifest,
            chunks,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<DatasetId, Arc<Dataset>>> {
        self.datasets.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<DatasetId, Arc<Dataset>>> {
        self.datasets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every chunk the published datasets reference: what the blob store
    /// must keep. (Anything else storing blobs must add its references to
    /// the start-up collection in `node.rs`.)
    pub fn referenced_chunks(&self) -> std::collections::HashSet<Hash> {
        self.read()
            .values()
            .flat_map(|d| d.chunks.iter().copied())
            .collect()
    }

    /// Every chunk named by a chunk list on disk (`datasets/*/chunks`):
    /// the published datasets', and those of a publication whose ledger
    /// outcome is not known yet (settled at the next start), which a
    /// running node must not remove either.
    pub fn chunks_on_disk(&self) -> std::collections::HashSet<Hash> {
        let mut all = self.referenced_chunks();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return all;
        };
        for entry in entries.flatten() {
            if let Some(chunks) = std::fs::read(entry.path().join("chunks"))
                .ok()
                .and_then(|raw| decode_chunk_list(&raw))
            {
                all.extend(chunks);
            }
        }
        all
    }

    /// A dataset by id.
    pub fn get(&self, id: &DatasetId) -> Option<Arc<Dataset>> {
        self.read().get(id).cloned()
    }

    /// Every dataset, in id order.
    pub fn list(&self) -> Vec<Arc<Dataset>> {
        self.read().values().cloned().collect()
    }

    /// Datasets in id order from just after `after` (from the first
    /// without), each given to `f` until it breaks: one page of a listing
    /// costs what it reads, not the catalog's size.
    pub fn scan_after(
        &self,
        after: Option<&DatasetId>,
        mut f: impl FnMut(&Arc<Dataset>) -> std::ops::ControlFlow<()>,
    ) {
        use std::ops::Bound;
        let datasets = self.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        for d in datasets.range((from, Bound::Unbounded)).map(|(_, d)| d) {
            if f(d).is_break() {
                break;
            }
        }
    }

    /// Checks a request before any content is read: the policy is already
    /// valid (typed); sources must exist and allow derivation; a
    /// superseded dataset must be this node's latest of its lineage.
    pub fn prepare(
        &self,
        request: PublishRequest,
        grants: &dyn GrantCheck,
    ) -> Result<Prepared, PublishError> {
        if !super::CHUNK_SIZE_RANGE.contains(&request.chunk_size) {
            return Err(PublishError::Invalid(format!(
                "chunk size {} is outside {}..={}",
                request.chunk_size,
                super::CHUNK_SIZE_RANGE.start(),
                super::CHUNK_SIZE_RANGE.end()
            )));
        }
        if request.title.trim().is_empty() {
            return Err(PublishError::Invalid("a dataset needs a title".into()));
        }
        for (what, text) in [
            ("title", &request.title),
            ("description", &request.description),
            ("media type", &request.media_type),
        ] {
            super::check_text(what, text)?;
        }
        if request.derived_from.len() > super::MAX_SOURCES {
            return Err(PublishError::Invalid(format!(
                "more than {} sources",
                super::MAX_SOURCES
            )));
        }
        let mut classification = request.policy.classification;
        for source in &request.derived_from {
            match self.get(&source.dataset) {
                // Deriving from one's own dataset needs no grant.
                Some(own) => {
                    classification = classification.max(own.manifest.value().classification)
                }
                None => {
                    let theirs = grants
                        .allows(&source.grant, &source.dataset, Action::Derive)
                        .map_err(|why| {
                            PublishError::Invalid(format!(
                                "cannot derive from {}: {why}",
                                source.dataset
                            ))
                        })?;
                    classification = classification.max(theirs);
                }
            }
        }
        if classification > request.policy.classification {
            return Err(PublishError::Invalid(format!(
                "a derivative inherits the strictest classification of its sources (`{classification}`); its policy says `{}`: raise the policy's classification",
                request.policy.classification
            )));
        }
        let (version, lineage) = match &request.supersedes {
            None => (1, None),
            Some(prev_id) => {
                let prev = self.get(prev_id).ok_or_else(|| {
                    PublishError::Invalid(format!(
                        "cannot supersede {prev_id}: this node did not publish it"
                    ))
                })?;
                let prev_m = prev.manifest.value();
                let lineage = prev_m.lineage.clone().unwrap_or_else(|| prev_id.clone());
                let newer = self.read().values().any(|d| {
                    let m = d.manifest.value();
                    m.version > prev_m.version && (m.lineage.as_ref() == Some(&lineage))
                });
                if newer {
                    return Err(PublishError::Invalid(format!(
                        "{prev_id} is not the latest version of its lineage; supersede the latest"
                    )));
                }
                (prev_m.version + 1, Some(lineage))
            }
        };
        Ok(Prepared {
            request,
            classification,
            version,
            lineage,
        })
    }

    /// Signs and stores the manifest for `content` and records
    /// `DatasetPublished`. All or nothing.
    pub async fn finish(
        &self,
        prepared: Prepared,
        content: Chunked,
        key: &ed25519_dalek::SigningKey,
        ledger: &Ledger,
    ) -> Result<(Arc<Dataset>, Appended), PublishError> {
        let r = prepared.request;
        let manifest = Manifest {
            title: r.title,
            description: r.description,
            media_type: r.media_type,
            size: content.size,
            chunk_size: r.chunk_size,
            chunk_count: content.chunks.len() as u64,
            content_sha256: content.content_sha256,
            chunk_list_sha256: chunk_list_hash(&content.chunks),
            classification: prepared.classification,
            policy: r.policy,
            derived_from: r.derived_from,
            supersedes: r.supersedes,
            version: prepared.version,
            lineage: prepared.lineage,
            created_at_ms: now_ms(),
            publisher: self.publisher.clone(),
        };
        manifest.check()?;
        let envelope = manifest.sign(key);
        let (id, verified) = verify_manifest(envelope, &self.key)?;
        let object_hash = verified.envelope().payload_hash();

        let tmp = self.dir.join(format!(".tmp-{id}"));
        let final_dir = self.dir.join(id.as_str());
        if final_dir.exists() {
            return Err(PublishError::Invalid(format!(
                "dataset {id} is already published"
            )));
        }
        let write = || -> Result<(), FileError> {
            fsutil::create_private_dir(&tmp)?;
            fsutil::write_atomic(
                &tmp.join("manifest.json"),
                verified.envelope().to_json().as_bytes(),
                fsutil::PUBLIC_MODE,
            )?;
            fsutil::write_atomic(
                &tmp.join("chunks"),
                &content.chunks.concat(),
                fsutil::PUBLIC_MODE,
            )?;
            std::fs::rename(&tmp, &final_dir).map_err(|e| FileError::new("rename", &tmp, e))?;
            fsutil::sync_dir(&self.dir).map_err(|e| FileError::new("fsync", &self.dir, e))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
        let mut draft = EntryDraft::new(EntryKind::DatasetPublished);
        draft.parties = vec![self.publisher.clone()];
        draft.dataset = Some(id.to_string());
        draft.object_hash = Some(object_hash);
        let m = verified.value();
        draft.detail = format!("v{} {}", m.version, m.title)
            .chars()
            .take(200)
            .collect();
        let appended = match ledger.append(draft).await {
            Ok(a) => a,
            Err(e @ LedgerError::CommitFailed(_)) => return Err(PublishError::Uncertain(e)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&final_dir);
                return Err(e.into());
            }
        };
        let dataset = Arc::new(Dataset {
            id: id.clone(),
            manifest: verified,
            chunks: content.chunks,
        });
        self.write().insert(id, dataset.clone());
        Ok((dataset, appended))
    }
}

fn decode_chunk_list(raw: &[u8]) -> Option<Vec<Hash>> {
    if !raw.len().is_multiple_of(32) {
        return None;
    }
    Some(
        raw.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}
