//! Ledger entries and their binary encoding.
//!
//! The encoding is versioned and deterministic: every value has exactly one
//! encoding, so the leaf hash of an entry is a function of its meaning.
//! All integers are big-endian.
//!
//! ```text
//! u8   version (= 1)
//! u64  index
//! i64  time, milliseconds since the Unix epoch (the node's clock)
//! u16  kind
//! u8   number of parties (≤ 8), then each: u8 length ‖ node id (ASCII)
//! u8   dataset id length (0 = none) ‖ bytes
//! u8   grant id length (0 = none) ‖ bytes
//! u8   object hash present (0 or 1) ‖ 32 bytes if present
//! u16  detail length ‖ UTF-8 bytes
//! ```
//!
//! Decoding rejects unknown versions, trailing bytes, flags other than 0
//! and 1, empty present strings, invalid node ids and entries over
//! [`MAX_ENTRY_BYTES`].

use std::fmt;

use crate::identity::NodeId;

use crate::digest::Hash;

/// The only encoding version this node writes and reads.
pub const ENTRY_VERSION: u8 = 1;
/// Cap on an encoded entry.
pub const MAX_ENTRY_BYTES: usize = 4096;
/// Most parties one entry names.
pub const MAX_PARTIES: usize = 8;
/// Longest dataset or grant id.
pub const MAX_REF_LEN: usize = 128;
/// Longest detail text.
pub const MAX_DETAIL_BYTES: usize = 2048;

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// The node started (detail: software version).
    NodeStarted,
    /// The node published a dataset.
    DatasetPublished,
    /// The node (as publisher) granted access.
    AccessGranted,
    /// The node (as publisher) denied access (detail: the reasons).
    AccessDenied,
    /// A transfer started.
    TransferStarted,
    /// A transfer completed.
    TransferCompleted,
    /// An interrupted transfer was resumed (detail: which transfer, from
    /// which chunk); not a new fetch.
    TransferResumed,
    /// A receipt was recorded.
    ReceiptRecorded,
    /// A grant was revoked.
    GrantRevoked,
    /// A peer's checkpoint was seen and verified.
    PeerCheckpointSeen,
    /// The node (as consumer) received a grant.
    GrantReceived,
    /// The node's key was rotated.
    KeyRotated,
    /// A peer's log forked (detail: both signed checkpoints).
    ForkDetected,
    /// A kind this software does not know (written by a newer node); kept
    /// so that older auditors can still verify newer logs.
    Unknown(u16),
}

impl EntryKind {
    /// Every known kind.
    pub const KNOWN: [EntryKind; 13] = [
        EntryKind::NodeStarted,
        EntryKind::DatasetPublished,
        EntryKind::AccessGranted,
        EntryKind::AccessDenied,
        EntryKind::TransferStarted,
        EntryKind::TransferCompleted,
        EntryKind::ReceiptRecorded,
        EntryKind::GrantRevoked,
        EntryKind::PeerCheckpointSeen,
        EntryKind::GrantReceived,
        EntryKind::KeyRotated,
        EntryKind::TransferResumed,
        EntryKind::ForkDetected,
    ];

    /// The kind's wire code.
    pub fn code(self) -> u16 {
        match self {
            EntryKind::NodeStarted => 1,
            EntryKind::DatasetPublished => 2,
            EntryKind::AccessGranted => 3,
            EntryKind::AccessDenied => 4,
            EntryKind::TransferStarted => 5,
            EntryKind::TransferCompleted => 6,
            EntryKind::ReceiptRecorded => 7,
            EntryKind::GrantRevoked => 8,
            EntryKind::PeerCheckpointSeen => 9,
            EntryKind::GrantReceived => 10,
            EntryKind::KeyRotated => 11,
            EntryKind::TransferResumed => 12,
            EntryKind::ForkDetected => 13,
            EntryKind::Unknown(c) => c,
        }
    }

    /// The kind of a wire code.
    pub fn from_code(code: u16) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(EntryKind::Unknown(code))
    }

    /// The kind's name, as the CLI and gRPC filters spell it.
    pub fn name(self) -> String {
        match self {
            EntryKind::Unknown(c) => format!("Unknown({c})"),
            known => format!("{known:?}"),
        }
    }

    /// Parses a known kind's name (case-insensitive).
    pub fn parse(name: &str) -> Result<Self, EntryError> {
        Self::KNOWN
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<String> = Self::KNOWN.iter().map(|k| k.name()).collect();
                EntryError::Invalid(format!(
                    "unknown entry kind `{name}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Why an entry could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    /// The bytes are not an entry.
    #[error("malformed ledger entry: {0}")]
    Malformed(String),
    /// A field is out of its limits.
    #[error("invalid ledger entry: {0}")]
    Invalid(String),
}

/// What a caller asks the ledger to record; the ledger assigns the index
/// and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDraft {
    /// What happened.
    pub kind: EntryKind,
    /// The nodes concerned (e.g. publisher and consumer).
    pub parties: Vec<NodeId>,
    /// The dataset concerned.
    pub dataset: Option<String>,
    /// The grant concerned.
    pub grant: Option<String>,
    /// SHA-256 of the signed object (manifest, grant, receipt, checkpoint).
    pub object_hash: Option<Hash>,
    /// Short human-readable detail (denial reasons, version, …).
    pub detail: String,
}

impl EntryDraft {
    /// A draft of `kind` with no other fields.
    pub fn new(kind: EntryKind) -> Self {
        Self {
            kind,
            parties: Vec::new(),
            dataset: None,
            grant: None,
            object_hash: None,
            detail: String::new(),
        }
    }
}

/// A recorded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log (0-based).
    pub index: u64,
    /// Milliseconds since the Unix epoch, by the recording node's clock.
    /// The log is ordered by index, never by time.
    pub time_ms: i64,
    /// What was recorded.
    pub draft: EntryDraft,
}

fn check_ref(what: &str, value: &Option<String>) -> Result<(), EntryError> {
    if let Some(v) = value
        && (v.is_empty() || v.len() > MAX_REF_LEN || !v.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(EntryError::Invalid(format!(
            "{what} must be 1 to {MAX_REF_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

impl Entry {
    /// Checks a draft against the format's limits.
    pub fn check_draft(draft: &EntryDraft) -> Result<(), EntryError> {
        if draft.parties.len() > MAX_PARTIES {
            return Err(EntryError::Invalid(format!(
                "{} parties; at most {MAX_PARTIES}",
                draft.parties.len()
            )));
        }
        check_ref("dataset id", &draft.dataset)?;
        check_ref("grant id", &draft.grant)?;
        if draft.detail.len() > MAX_DETAIL_BYTES {
            return Err(EntryError::Invalid(format!(
                "detail is {} bytes; at most {MAX_DETAIL_BYTES}",
                draft.detail.len()
            )));
        }
        Ok(())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let d = &self.draft;
        Self::check_draft(d)?;
        let mut out = Vec::with_capacity(128);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&d.kind.code().to_be_bytes());
        out.push(d.parties.len() as u8);
        for p in &d.parties {
            out.push(p.as_str().len() as u8);
            out.extend_from_slice(p.as_str().as_bytes());
        }
        for r in [&d.dataset, &d.grant] {
            let r = r.as_deref().unwrap_or("");
            out.push(r.len() as u8);
            out.extend_from_slice(r.as_bytes());
        }
        match &d.object_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(d.detail.len() as u16).to_be_bytes());
        out.extend_from_slice(d.detail.as_bytes());
        debug_assert!(out.len() <= MAX_ENTRY_BYTES);
        Ok(out)
    }

    /// Decodes an entry, refusing anything but the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::Malformed(format!(
                "{} bytes; entries are at most {MAX_ENTRY_BYTES}",
                bytes.len()
            )));
        }
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(EntryError::Malformed(format!(
                "version {version}; this node reads version {ENTRY_VERSION}"
            )));
        }
        let index = u64::from_be_bytes(r.array("index")?);
        let time_ms = i64::from_be_bytes(r.array("time")?);
        let kind = EntryKind::from_code(u16::from_be_bytes(r.array("kind")?));
        let count = usize::from(r.u8("party count")?);
        if count > MAX_PARTIES {
            return Err(EntryError::Malformed(format!(
                "{count} parties; at most {MAX_PARTIES}"
            )));
        }
        let mut parties = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u8("party length")?);
            let id = r.str(len, "party")?;
            parties.push(
                id.parse::<NodeId>()
                    .map_err(|e| EntryError::Malformed(e.to_string()))?,
            );
        }
        let mut refs = [None, None];
        for (slot, what) in refs.iter_mut().zip(["dataset id", "grant id"]) {
            let len = usize::from(r.u8(what)?);
            if len > 0 {
                *slot = Some(r.str(len, what)?.to_owned());
            }
        }
        let [dataset, grant] = refs;
        let object_hash = match r.u8("object hash flag")? {
            0 => None,
            1 => Some(r.array::<32>("object hash")?),
            f => {
                return Err(EntryError::Malformed(format!(
                    "object hash flag {f}; expected 0 or 1"
                )));
            }
        };
        let detail_len = usize::from(u16::from_be_bytes(r.array("detail length")?));
        let detail = r.str(detail_len, "detail")?.to_owned();
        if r.pos != bytes.len() {
            return Err(EntryError::Malformed(format!(
                "{} trailing bytes after the entry",
                bytes.len() - r.pos
            )));
        }
        let draft = EntryDraft {
            kind,
            parties,
            dataset,
            grant,
            object_hash,
            detail,
        };
        Self::check_draft(&draft).map_err(|e| EntryError::Malformed(e.to_string()))?;
        Ok(Self {
            index,
            time_ms,
            draft,
        })
    }

    /// Whether the entry names `node` as a party.
    pub fn names(&self, node: &NodeId) -> bool {
        self.draft.parties.contains(node)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], EntryError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(EntryError::Malformed(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.bytes.len() - self.pos
            )));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, EntryError> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], EntryError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn str(&mut self, n: usize, what: &str) -> Result<&'a str, EntryError> {
        std::str::from_utf8(self.take(n, what)?)
            .map_err(|_| EntryError::Malformed(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            index: 7,
            time_ms: 1_790_000_000_000,
            draft: EntryDraft {
                kind: EntryKind::AccessGranted,
                parties: vec![
                    NodeId::from_public_key(&[1; 32]),
                    NodeId::from_public_key(&[2; 32]),
                ],
                dataset: Some("ds_abc".into()),
                grant: Some("gr_123".into()),
                object_hash: Some([5; 32]),
                detail: "purpose route-planning".into(),
            },
        }
    }

    #[test]
    fn round_trip_and_strictness() {
        let e = sample();
        let bytes = e.encode().expect("encode");
        assert_eq!(Entry::decode(&bytes).expect("decode"), e);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(
            Entry::decode(&trailing)
                .expect_err("trailing")
                .to_string()
                .contains("trailing")
        );
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(
            Entry::decode(&version)
                .expect_err("version")
                .to_string()
                .contains("version 2")
        );
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        assert!(Entry::decode(&vec![1u8; MAX_ENTRY_BYTES + 1]).is_err());
    }

    #[test]
    fn kinds_have_stable_codes_and_names() {
        for k in EntryKind::KNOWN {
            assert_eq!(EntryKind::from_code(k.code()), k);
            assert_eq!(EntryKind::parse(&k.name()).expect("parse"), k);
        }
        assert_eq!(EntryKind::from_code(999), EntryKind::Unknown(999));
        assert!(EntryKind::parse("Bogus").is_err());
    }
}
