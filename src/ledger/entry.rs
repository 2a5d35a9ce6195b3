//! Ledger entries and their binary encoding.
//!
//! The encoding is versioned and deterministic: every value (the version
//! included) has exactly one encoding, so the leaf hash of an entry is a
//! function of its meaning. All integers are big-endian.
//!
//! ```text
//! u8   version (1 or 2; this node writes 2)
//! u64  index
//! i64  time, milliseconds since the Unix epoch (the node's clock)
//! u16  kind
//! u8   number of parties (≤ 8), then each: u8 length ‖ node id (ASCII)
//! u8   dataset id length (0 = none) ‖ bytes
//! u8   grant id length (0 = none) ‖ bytes
//! u8   object hash present (0 or 1) ‖ 32 bytes if present
//! u8   transfer present (0 or 1) ‖ u64 if present      (version 2 only)
//! u8   peer entry present (0 or 1) ‖ u64 if present    (version 2 only)
//! u16  detail length ‖ UTF-8 bytes
//! ```
//!
//! Version 2 adds the typed references ([`EntryDraft::transfer`],
//! [`EntryDraft::peer_entry`]) that link an entry to others; version 1
//! entries (written before them) have neither, still decode, and re-encode
//! to their own bytes, because the version is part of the decoded
//! [`Entry`]. The `detail` text is for people: nothing parses it.
//!
//! Decoding rejects unknown versions, trailing bytes, flags other than 0
//! and 1, empty present strings, invalid node ids and entries over
//! [`MAX_ENTRY_BYTES`].

use std::fmt;

use crate::identity::NodeId;

use crate::digest::Hash;

/// An entry encoding version. New entries are written as
/// [`EntryVersion::CURRENT`]; every version here is still read, since the
/// leaf hash of a stored entry is over the bytes it was written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryVersion {
    /// The first encoding: no typed references. Entries written before
    /// version 2 link to others only in their detail text.
    V1,
    /// Adds the typed references `transfer` and `peer_entry`.
    V2,
}

impl EntryVersion {
    /// The version this node writes.
    pub const CURRENT: EntryVersion = EntryVersion::V2;

    /// The version's byte, the first of an encoded entry.
    pub fn byte(self) -> u8 {
        match self {
            EntryVersion::V1 => 1,
            EntryVersion::V2 => 2,
        }
    }

    /// The version of a leading byte, if this node reads it.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(EntryVersion::V1),
            2 => Some(EntryVersion::V2),
            _ => None,
        }
    }

    /// Whether entries of this version carry the typed references.
    pub fn has_references(self) -> bool {
        self >= EntryVersion::V2
    }
}

impl fmt::Display for EntryVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.byte())
    }
}

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
    /// An interrupted transfer was resumed (`transfer`: which one; detail:
    /// it and the chunk resumed from); not a new fetch.
    TransferResumed,
    /// A receipt was recorded (`transfer`: the transfer it closes; on the
    /// consumer, `peer_entry`: the publisher's `ReceiptRecorded`).
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
    /// The transfer this entry is about: the index of the publisher's
    /// `TransferStarted` entry, in the publisher's ledger on both sides
    /// (the transfer's one name both parties share). Set on
    /// `TransferResumed`, on `ReceiptRecorded` (both sides) and on the
    /// consumer's `TransferCompleted`, so a receipt or a resume is matched
    /// to its transfer without reading the detail text.
    pub transfer: Option<u64>,
    /// The matching entry in the other party's ledger: the consumer's
    /// `ReceiptRecorded` names the publisher's `ReceiptRecorded` of the
    /// same receipt (the index the publisher answered with), so an auditor
    /// can pair the two ledgers' records of one event.
    pub peer_entry: Option<u64>,
    /// Short human-readable detail (denial reasons, version, …). For
    /// people: code matches entries on the typed fields above.
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
            transfer: None,
            peer_entry: None,
            detail: String::new(),
        }
    }
}

/// A recorded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The encoding version it was (or will be) written as: kept so that
    /// an entry decoded from an older ledger re-encodes to the bytes its
    /// leaf hash is over.
    pub version: EntryVersion,
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
    /// An entry of the current version ([`EntryVersion::CURRENT`]).
    pub fn new(index: u64, time_ms: i64, draft: EntryDraft) -> Self {
        Self {
            version: EntryVersion::CURRENT,
            index,
            time_ms,
            draft,
        }
    }

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

    /// The canonical encoding, in the entry's own version. A version 1
    /// entry cannot carry the typed references.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let d = &self.draft;
        Self::check_draft(d)?;
        let refs = self.version.has_references();
        if !refs && (d.transfer.is_some() || d.peer_entry.is_some()) {
            return Err(EntryError::Invalid(format!(
                "a version {} entry cannot carry a transfer or peer entry reference; version {} can",
                self.version,
                EntryVersion::V2
            )));
        }
        let mut out = Vec::with_capacity(128);
        out.push(self.version.byte());
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
        if refs {
            for r in [d.transfer, d.peer_entry] {
                match r {
                    Some(i) => {
                        out.push(1);
                        out.extend_from_slice(&i.to_be_bytes());
                    }
                    None => out.push(0),
                }
            }
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
        let byte = r.u8("version")?;
        let Some(version) = EntryVersion::from_byte(byte) else {
            return Err(EntryError::Malformed(format!(
                "version {byte}; this node reads versions {} and {}",
                EntryVersion::V1,
                EntryVersion::V2
            )));
        };
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
        let (transfer, peer_entry) = if version.has_references() {
            (r.reference("transfer")?, r.reference("peer entry")?)
        } else {
            (None, None)
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
            transfer,
            peer_entry,
            detail,
        };
        Self::check_draft(&draft).map_err(|e| EntryError::Malformed(e.to_string()))?;
        Ok(Self {
            version,
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

    /// An optional entry index: a presence flag (0 or 1), then a `u64`.
    fn reference(&mut self, what: &str) -> Result<Option<u64>, EntryError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(u64::from_be_bytes(self.array(what)?))),
            f => Err(EntryError::Malformed(format!(
                "{what} flag {f}; expected 0 or 1"
            ))),
        }
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
        Entry::new(
            7,
            1_790_000_000_000,
            EntryDraft {
                kind: EntryKind::AccessGranted,
                parties: vec![
                    NodeId::from_public_key(&[1; 32]),
                    NodeId::from_public_key(&[2; 32]),
                ],
                dataset: Some("ds_abc".into()),
                grant: Some("gr_123".into()),
                object_hash: Some([5; 32]),
                transfer: None,
                peer_entry: None,
                detail: "purpose route-planning".into(),
            },
        )
    }

    /// A consumer's receipt entry, with both references.
    fn linked() -> Entry {
        let mut e = sample();
        e.draft.kind = EntryKind::ReceiptRecorded;
        e.draft.transfer = Some(3);
        e.draft.peer_entry = Some(0x0102_0304_0506_0708);
        e.draft.detail = "publisher entry 72623859790382856".into();
        e
    }

    /// Where the version 2 references start in `bytes`, the encoding of `e`.
    fn references_at(e: &Entry, bytes: &[u8]) -> usize {
        let width = |r: Option<u64>| if r.is_some() { 9 } else { 1 };
        bytes.len() - 2 - e.draft.detail.len() - width(e.draft.peer_entry) - width(e.draft.transfer)
    }

    fn refused(bytes: &[u8]) -> String {
        Entry::decode(bytes).expect_err("refused").to_string()
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
        version[0] = 3;
        assert!(
            Entry::decode(&version)
                .expect_err("version")
                .to_string()
                .contains("version 3")
        );
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        assert!(Entry::decode(&vec![1u8; MAX_ENTRY_BYTES + 1]).is_err());
    }

    /// A publisher's `ReceiptRecorded` as version 1 wrote it (bytes made by
    /// the version 1 encoder before version 2 existed): stores hold such
    /// entries, and their leaf hashes are over exactly these bytes.
    const V1_RECEIPT: &str = "0100000000000000040000019ab697e8000007021e64736e316f6c677735626263797164377733696a713269706365796c70781e64736e316f776478786e613568653576376f63666c74746135746d6e33690664735f6162630667725f313233010909090909090909090909090909090909090909090909090909090909090909002331322062797465732072656365697665643b207472616e7366657220656e7472792033";

    /// [`V1_RECEIPT`] as version 2, with `transfer` 3.
    const V2_RECEIPT: &str = "0200000000000000040000019ab697e8000007021e64736e316f6c677735626263797164377733696a713269706365796c70781e64736e316f776478786e613568653576376f63666c74746135746d6e33690664735f6162630667725f31323301090909090909090909090909090909090909090909090909090909090909090901000000000000000300002331322062797465732072656365697665643b207472616e7366657220656e7472792033";

    #[test]
    fn a_version_1_entry_decodes_and_re_encodes_byte_identically() {
        let bytes = data_encoding::HEXLOWER
            .decode(V1_RECEIPT.as_bytes())
            .expect("hex");
        let e = Entry::decode(&bytes).expect("a v1 entry decodes");
        assert_eq!(e.version, EntryVersion::V1);
        assert_eq!((e.index, e.time_ms), (4, 1_764_000_000_000));
        assert_eq!(e.draft.kind, EntryKind::ReceiptRecorded);
        assert_eq!(
            e.draft.parties,
            [
                NodeId::from_public_key(&[1; 32]),
                NodeId::from_public_key(&[2; 32])
            ]
        );
        assert_eq!(e.draft.dataset.as_deref(), Some("ds_abc"));
        assert_eq!(e.draft.grant.as_deref(), Some("gr_123"));
        assert_eq!(e.draft.object_hash, Some([9; 32]));
        assert_eq!((e.draft.transfer, e.draft.peer_entry), (None, None));
        assert_eq!(e.draft.detail, "12 bytes received; transfer entry 3");
        assert_eq!(e.encode().expect("re-encode"), bytes, "one encoding");

        // The same value as version 2 is another entry, with other bytes.
        let mut v2 = e.clone();
        v2.version = EntryVersion::V2;
        let v2_bytes = v2.encode().expect("v2");
        assert_eq!(v2_bytes[0], 2);
        assert_eq!(v2_bytes.len(), bytes.len() + 2, "two absent references");
        assert_eq!(Entry::decode(&v2_bytes).expect("v2 decodes"), v2);

        // The same receipt as version 2 writes it, naming its transfer
        // (the fuzz corpus's `seed-receipt`): pinned, so the layout
        // cannot drift.
        let v2_bytes = data_encoding::HEXLOWER
            .decode(V2_RECEIPT.as_bytes())
            .expect("hex");
        let mut v2 = e.clone();
        v2.version = EntryVersion::V2;
        v2.draft.transfer = Some(3);
        assert_eq!(v2.encode().expect("v2"), v2_bytes);
        assert_eq!(Entry::decode(&v2_bytes).expect("v2 decodes"), v2);

        // A version 1 entry has no place for a reference.
        let mut bad = e;
        bad.draft.transfer = Some(3);
        let err = bad.encode().expect_err("v1 with a reference");
        assert!(
            err.to_string().contains("version 1 entry cannot carry"),
            "{err}"
        );
    }

    #[test]
    fn version_2_references_round_trip() {
        assert_eq!(
            Entry::new(0, 0, EntryDraft::new(EntryKind::NodeStarted)).version,
            EntryVersion::CURRENT
        );
        for (transfer, peer_entry) in [
            (None, None),
            (Some(3), None),
            (None, Some(0)),
            (Some(u64::MAX), Some(9)),
        ] {
            let mut e = linked();
            e.draft.transfer = transfer;
            e.draft.peer_entry = peer_entry;
            let bytes = e.encode().expect("encode");
            assert_eq!(bytes[0], 2);
            let at = references_at(&e, &bytes);
            let expect_flag = |r: Option<u64>| u8::from(r.is_some());
            assert_eq!(bytes[at], expect_flag(transfer));
            let decoded = Entry::decode(&bytes).expect("decode");
            assert_eq!(decoded, e);
            assert_eq!(decoded.encode().expect("re-encode"), bytes);
        }
        // The layout: flag ‖ u64, big-endian, transfer first.
        let e = linked();
        let bytes = e.encode().expect("encode");
        let at = references_at(&e, &bytes);
        assert_eq!(
            &bytes[at..at + 18],
            &[1, 0, 0, 0, 0, 0, 0, 0, 3, 1, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn malformed_version_2_references_are_refused() {
        let e = linked();
        let bytes = e.encode().expect("encode");
        let at = references_at(&e, &bytes);

        let mut flag = bytes.clone();
        flag[at] = 2;
        let err = refused(&flag);
        assert!(err.contains("transfer flag 2; expected 0 or 1"), "{err}");
        let mut flag = bytes.clone();
        flag[at + 9] = 2;
        let err = refused(&flag);
        assert!(err.contains("peer entry flag 2; expected 0 or 1"), "{err}");

        // A reference cut short: the flag says present, 4 of 8 bytes follow.
        let err = refused(&bytes[..at + 5]);
        assert!(err.contains("truncated: transfer needs 8 bytes"), "{err}");
        let err = refused(&bytes[..at + 9 + 3]);
        assert!(err.contains("truncated: peer entry needs 8 bytes"), "{err}");
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(refused(&trailing).contains("1 trailing bytes"));

        // Version 1 bytes read as version 2 (or the reverse) do not parse
        // as the other: the reference flags shift the detail length.
        let mut relabelled = bytes.clone();
        relabelled[0] = 1;
        assert!(Entry::decode(&relabelled).is_err());
        let mut unknown = bytes;
        unknown[0] = 0;
        assert!(refused(&unknown).contains("version 0; this node reads versions 1 and 2"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn entry() -> impl Strategy<Value = Entry> {
            let version = prop_oneof![Just(EntryVersion::V1), Just(EntryVersion::V2)];
            let id = "[!-~]{1,16}";
            (
                (version, any::<u64>(), any::<i64>(), any::<u16>()),
                proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_PARTIES),
                (proptest::option::of(id), proptest::option::of(id)),
                proptest::option::of(any::<[u8; 32]>()),
                (
                    proptest::option::of(any::<u64>()),
                    proptest::option::of(any::<u64>()),
                ),
                ".{0,40}",
            )
                .prop_map(
                    |(
                        (version, index, time_ms, kind),
                        keys,
                        (dataset, grant),
                        object_hash,
                        (transfer, peer_entry),
                        detail,
                    )| {
                        // Version 1 has no references.
                        let v2 = version.has_references();
                        Entry {
                            version,
                            index,
                            time_ms,
                            draft: EntryDraft {
                                kind: EntryKind::from_code(kind),
                                parties: keys.iter().map(NodeId::from_public_key).collect(),
                                dataset,
                                grant,
                                object_hash,
                                transfer: transfer.filter(|_| v2),
                                peer_entry: peer_entry.filter(|_| v2),
                                detail,
                            },
                        }
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Every entry encodes, decodes to itself, and its bytes are
            /// the only encoding of it.
            #[test]
            fn entries_round_trip(e in entry()) {
                let bytes = e.encode().expect("encode");
                prop_assert_eq!(bytes[0], e.version.byte());
                let decoded = Entry::decode(&bytes).expect("decode");
                prop_assert_eq!(&decoded, &e);
                prop_assert_eq!(decoded.encode().expect("re-encode"), bytes);
            }

            /// Whatever bytes decode re-encode to themselves (as the fuzz
            /// target checks), starting from real entries with one byte
            /// changed.
            #[test]
            fn a_changed_byte_decodes_to_nothing_or_itself(e in entry(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
                let mut bytes = e.encode().expect("encode");
                let at = at.index(bytes.len());
                bytes[at] = byte;
                if let Ok(d) = Entry::decode(&bytes) {
                    prop_assert_eq!(d.encode().expect("re-encode"), bytes);
                }
            }
        }
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
