//! What a consumer has seen of each publisher's lineages, so that a
//! catalog rolled back is noticed (THREATS.md row 3): a publisher whose
//! catalog offers version 1 of a lineage as its latest, after this node
//! saw version 2 of it signed by that publisher, shows an old state (a
//! data dir restored from a backup, or a publisher hiding a correction).
//!
//! Kept per data dir in `seen-versions.json`: for each (publisher,
//! lineage), the highest version seen in a verified manifest, which
//! dataset it was and when. It is written by the node (a manifest it
//! fetched) and by `dsnode catalog` (every listing), both under one lock
//! file, and only ever raised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DatasetId, Manifest};
use crate::identity::NodeId;

/// The first line of defence against a file of another kind.
const FORMAT: &str = "dsnode seen versions 1";

/// Most lineages kept; beyond that new ones are not recorded (the check
/// covers those already kept), so a publisher listing millions of
/// datasets cannot grow the file without bound.
pub const MAX_LINEAGES: usize = 100_000;

/// The file's contents.
#[derive(Default, Serialize, Deserialize)]
struct SeenFile {
    format: String,
    lineages: Vec<Seen>,
}

/// The highest version seen of one lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The publisher's node id.
    pub publisher: String,
    /// The lineage: its first version's dataset id.
    pub lineage: String,
    /// The highest version seen.
    pub version: u64,
    /// That version's dataset id.
    pub dataset: String,
    /// When it was first seen, ms since the Unix epoch.
    pub seen_at_ms: i64,
}

/// A lineage whose catalog is behind what this node saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// What was seen before.
    pub seen: Seen,
    /// The highest version the catalog offers now and its dataset id;
    /// `None`: the catalog no longer lists the lineage at all.
    pub listed: Option<(u64, DatasetId)>,
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.seen;
        let when =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.seen_at_ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| format!("{} ms", s.seen_at_ms));
        match &self.listed {
            Some((version, id)) => write!(
                f,
                "lineage {} of publisher {}: the catalog offers version {version} ({id}) as the latest, but this node saw version {} ({}) signed by that publisher at {when}",
                s.lineage, s.publisher, s.version, s.dataset
            ),
            None => write!(
                f,
                "lineage {} of publisher {}: the catalog no longer lists it, but this node saw its version {} ({}) signed by that publisher at {when}",
                s.lineage, s.publisher, s.version, s.dataset
            ),
        }
    }
}

/// Reading or writing the record failed.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    /// The file could not be read, locked or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something else.
    #[error(
        "{path} is not a record of seen dataset versions (expected JSON with \"format\": \"{FORMAT}\"): {detail}; move it away to start a new record"
    )]
    Garbled {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The atomic write failed.
    #[error(transparent)]
    Write(#[from] crate::fsutil::FileError),
}

/// The lineage a manifest belongs to: its first version's id.
pub fn lineage_of(id: &DatasetId, manifest: &Manifest) -> DatasetId {
    manifest.lineage.clone().unwrap_or_else(|| id.clone())
}

/// The record of seen versions of one data dir.
#[derive(Clone, Debug)]
pub struct SeenVersions {
    path: PathBuf,
}

impl SeenVersions {
    /// The record kept at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> SeenError {
        SeenError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Holds the lock file beside the record while `f` runs, so the node
    /// and a `dsnode catalog` beside it do not lose each other's updates.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, SeenError>) -> Result<T, SeenError> {
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let result = f();
        let _ = lock.unlock();
        result
    }

    /// Every lineage kept, by (publisher, lineage).
    fn load(&self) -> Result<BTreeMap<(String, String), Seen>, SeenError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.io(e)),
        };
        let garbled = |detail: String| SeenError::Garbled {
            path: self.path.display().to_string(),
            detail: crate::text::shown(&detail).to_string(),
        };
        let file: SeenFile = serde_json::from_slice(&bytes).map_err(|e| garbled(e.to_string()))?;
        if file.format != FORMAT {
            return Err(garbled(format!("its format is {:?}", file.format)));
        }
        Ok(file
            .lineages
            .into_iter()
            .map(|s| ((s.publisher.clone(), s.lineage.clone()), s))
            .collect())
    }

    fn store(&self, seen: &BTreeMap<(String, String), Seen>) -> Result<(), SeenError> {
        let file = SeenFile {
            format: FORMAT.into(),
            lineages: seen.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| SeenError::Garbled {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        crate::fsutil::write_atomic(&self.path, &bytes, crate::fsutil::PUBLIC_MODE)?;
        Ok(())
    }

    /// Compares `publisher`'s catalog listing with what was seen of it.
    /// A lineage the listing offers below a version seen is a rollback;
    /// with `complete` (an unfiltered listing) so is a lineage seen that
    /// the listing lacks altogether. Nothing is recorded.
    pub fn check<'a>(
        &self,
        publisher: &NodeId,
        listed: impl IntoIterator<Item = (&'a DatasetId, &'a Manifest)>,
        complete: bool,
    ) -> Result<Vec<Rollback>, SeenError> {
        let seen = self.load()?;
        let highest = highest(listed);
        let publisher = publisher.to_string();
        let mut out = Vec::new();
        for ((p, lineage), s) in seen.range((publisher.clone(), String::new())..) {
            if *p != publisher {
                break;
            }
            match highest.get(lineage) {
                Some((version, id)) if *version < s.version => out.push(Rollback {
                    seen: s.clone(),
                    listed: Some((*version, id.clone())),
                }),
                None if complete => out.push(Rollback {
                    seen: s.clone(),
                    listed: None,
                }),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Raises the record to the highest version of each lineage in
    /// `manifests` (verified manifests of `publisher`), seen at `now_ms`.
    /// Returns how many lineages were raised or added.
    pub fn record<'a>(
        &self,
        publisher: &NodeId,
        manifests: impl IntoIterator<Item = (&'a DatasetId, &'a Manifest)>,
        now_ms: i64,
    ) -> Result<usize, SeenError> {
        let highest = highest(manifests);
        if highest.is_empty() {
            return Ok(0);
        }
        let publisher = publisher.to_string();
        self.locked(|| {
            let mut seen = self.load()?;
            let mut raised = 0;
            for (lineage, (version, id)) in highest {
                let key = (publisher.clone(), lineage.clone());
                let full = seen.len() >= MAX_LINEAGES;
                match seen.entry(key) {
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let s = e.get_mut();
                        if s.version < version {
                            s.version = version;
                            s.dataset = id.to_string();
                            s.seen_at_ms = now_ms;
                            raised += 1;
                        }
                    }
                    std::collections::btree_map::Entry::Vacant(_) if full => {}
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(Seen {
                            publisher: publisher.clone(),
                            lineage,
                            version,
                            dataset: id.to_string(),
                            seen_at_ms: now_ms,
                        });
                        raised += 1;
                    }
                }
            }
            if raised > 0 {
                self.store(&seen)?;
            }
            Ok(raised)
        })
    }
}

/// The highest version (and its id) of each lineage among `manifests`.
fn highest<'a>(
    manifests: impl IntoIterator<Item = (&'a DatasetId, &'a Manifest)>,
) -> BTreeMap<String, (u64, DatasetId)> {
    let mut out: BTreeMap<String, (u64, DatasetId)> = BTreeMap::new();
    for (id, m) in manifests {
        let entry = out
            .entry(lineage_of(id, m).to_string())
            .or_insert((m.version, id.clone()));
        if m.version > entry.0 {
            *entry = (m.version, id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: u64, lineage: Option<&DatasetId>) -> Manifest {
        let mut m = crate::dataset::tests::manifest();
        m.version = version;
        m.lineage = lineage.cloned();
        m.supersedes = lineage.cloned();
        m
    }

    fn id(n: u8) -> DatasetId {
        DatasetId::of_payload(&[n])
    }

    #[test]
    fn a_lineage_offered_below_a_version_seen_is_a_rollback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = SeenVersions::new(dir.path().join("seen-versions.json"));
        let publisher: NodeId = NodeId::from_public_key(&[1; 32]);
        let other: NodeId = NodeId::from_public_key(&[2; 32]);
        let (v1, v2, solo) = (
            manifest(1, None),
            manifest(2, Some(&id(1))),
            manifest(1, None),
        );
        let listing = [(&id(1), &v1), (&id(2), &v2), (&id(3), &solo)];
        assert_eq!(seen.record(&publisher, listing, 1_000).expect("record"), 2);
        // The same again raises nothing; a lower version lowers nothing.
        assert_eq!(seen.record(&publisher, listing, 2_000).expect("record"), 0);
        assert_eq!(
            seen.record(&publisher, [(&id(1), &v1)], 3_000)
                .expect("record"),
            0
        );
        assert!(
            seen.check(&publisher, listing, true)
                .expect("check")
                .is_empty()
        );

        // v2 gone: v1 is offered as the latest.
        let rolled = [(&id(1), &v1), (&id(3), &solo)];
        let found = seen.check(&publisher, rolled, false).expect("check");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].seen.version, 2);
        assert_eq!(found[0].listed, Some((1, id(1))));
        let text = found[0].to_string();
        assert!(
            text.contains("offers version 1") && text.contains("saw version 2"),
            "{text}"
        );
        // A lineage missing counts only in a complete listing.
        let partial = [(&id(1), &v1), (&id(2), &v2)];
        assert!(
            seen.check(&publisher, partial, false)
                .expect("check")
                .is_empty()
        );
        let found = seen.check(&publisher, partial, true).expect("check");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].listed, None);
        assert!(found[0].to_string().contains("no longer lists it"));
        // Another publisher's listing is not compared with this one's.
        assert!(seen.check(&other, rolled, true).expect("check").is_empty());
    }

    #[test]
    fn a_garbled_record_is_refused_by_name_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seen-versions.json");
        let seen = SeenVersions::new(&path);
        let publisher: NodeId = NodeId::from_public_key(&[1; 32]);
        for garbage in [
            &b"\x1b[2J not json"[..],
            br#"{"format":"other","lineages":[]}"#,
        ] {
            std::fs::write(&path, garbage).expect("write");
            let err = seen.check(&publisher, [], true).expect_err("garbage");
            let text = err.to_string();
            assert!(
                text.contains("is not a record of seen dataset versions"),
                "{text}"
            );
            assert!(!text.contains('\x1b'), "escaped: {text}");
            let v1 = manifest(1, None);
            seen.record(&publisher, [(&id(1), &v1)], 1)
                .expect_err("not overwritten");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                garbage,
                "kept as it was"
            );
        }
    }
}
