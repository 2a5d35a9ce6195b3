//! Signed, content-addressed, policy-tagged datasets.
//!
//! - [`blob`]: the [`blob::BlobStore`] trait and the local filesystem store.
//! - [`chunk`]: splitting content into hashed chunks, with bounded memory.
//! - [`pack`]: received datasets, one file per dataset, written in place.
//! - [`s3`]: chunks in an S3-compatible bucket, and `s3://` objects to
//!   publish from or receive into.
//! - [`catalog`]: the node's published datasets, on disk and in memory, and
//!   publishing itself.
//!
//! A manifest is signed as a DSSE envelope of payload type
//! `application/vnd.dsnode.manifest.v1+protobuf`; the dataset id is `ds_`
//! followed by the base32 SHA-256 of the exact signed payload bytes, so a
//! changed byte is a different dataset. The payload is protobuf by design
//! (DESIGN.md); its codec is [`crate::payload::manifest`].

pub mod blob;
pub mod catalog;
pub mod chunk;
pub mod pack;
pub mod publish;
pub mod s3;
pub mod seen;

use std::fmt;
use std::str::FromStr;

use crate::codec::{Canonical, PayloadError};
use crate::digest::Hash;
use crate::envelope::{Envelope, EnvelopeError, PayloadType, SignedBy, Verified};
use crate::identity::NodeId;
use crate::policy::{Classification, Policy, PolicyError};

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest and largest chunk sizes accepted.
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 4096..=(16 << 20);
/// Longest title, description and media type.
const MAX_TEXT: usize = 4096;
/// Most sources of a derived dataset.
pub(crate) const MAX_SOURCES: usize = 64;

/// Why a dataset or manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The id is not well formed.
    #[error(
        "invalid dataset id `{0}`: expected \"ds_\" followed by 52 lower-case base32 characters"
    )]
    Id(String),
    /// A manifest field is invalid.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The payload is not a `ManifestV1` protobuf.
    #[error("invalid manifest: {0}")]
    Payload(#[from] PayloadError),
    /// The envelope did not verify.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The embedded policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A dataset's content address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetId(String);

impl DatasetId {
    /// The id of a manifest with these exact signed payload bytes.
    pub fn of_payload(payload: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, payload);
        Self(format!(
            "ds_{}",
            data_encoding::BASE32_NOPAD
                .encode(d.as_ref())
                .to_ascii_lowercase()
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatasetId {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, DatasetError> {
        if crate::identity::is_base32_id(s, "ds_", 52) {
            Ok(Self(s.to_owned()))
        } else {
            Err(DatasetError::Id(s.chars().take(80).collect()))
        }
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatasetId({})", self.0)
    }
}

/// A source of a derived dataset and the grant that allowed the derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    /// The source dataset.
    pub dataset: DatasetId,
    /// The grant id (empty when the source is this publisher's own).
    pub grant: String,
}

/// A dataset manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Human title.
    pub title: String,
    /// Human description.
    pub description: String,
    /// Media type of the content.
    pub media_type: String,
    /// Content length, bytes.
    pub size: u64,
    /// Chunk length (the last may be shorter).
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunk_count: u64,
    /// SHA-256 of the whole content.
    pub content_sha256: Hash,
    /// SHA-256 of the concatenated chunk hashes.
    pub chunk_list_sha256: Hash,
    /// Classification (the policy's, or stricter for derivatives).
    pub classification: Classification,
    /// The policy.
    pub policy: Policy,
    /// Sources, for a derived dataset.
    pub derived_from: Vec<Derivation>,
    /// The version this one replaces.
    pub supersedes: Option<DatasetId>,
    /// 1 for a first version, previous + 1 after.
    pub version: u64,
    /// The first version of this lineage, for later versions.
    pub lineage: Option<DatasetId>,
    /// When it was published, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Who published it.
    pub publisher: NodeId,
}

pub(crate) fn check_text(what: &str, s: &str) -> Result<(), DatasetError> {
    if s.len() > MAX_TEXT {
        return Err(DatasetError::Manifest(format!(
            "{what} is longer than {MAX_TEXT} bytes"
        )));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(DatasetError::Manifest(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

impl Manifest {
    /// Checks the manifest's internal consistency.
    pub fn check(&self) -> Result<(), DatasetError> {
        check_text("title", &self.title)?;
        check_text("description", &self.description)?;
        check_text("media type", &self.media_type)?;
        if self.title.trim().is_empty() {
            return Err(DatasetError::Manifest("the title is empty".into()));
        }
        if !CHUNK_SIZE_RANGE.contains(&self.chunk_size) {
            return Err(DatasetError::Manifest(format!(
                "chunk size {} is outside {}..={}",
                self.chunk_size,
                CHUNK_SIZE_RANGE.start(),
                CHUNK_SIZE_RANGE.end()
            )));
        }
        if self.chunk_count != self.size.div_ceil(u64::from(self.chunk_size)) {
            return Err(DatasetError::Manifest(format!(
                "{} chunks of {} bytes cannot hold {} bytes",
                self.chunk_count, self.chunk_size, self.size
            )));
        }
        if self.classification < self.policy.classification {
            return Err(DatasetError::Manifest(
                "the manifest's classification is weaker than its policy's".into(),
            ));
        }
        if self.derived_from.len() > MAX_SOURCES {
            return Err(DatasetError::Manifest(format!(
                "more than {MAX_SOURCES} sources"
            )));
        }
        match (&self.supersedes, &self.lineage, self.version) {
            (None, None, 1) => Ok(()),
            (Some(_), Some(_), v) if v >= 2 => Ok(()),
            _ => Err(DatasetError::Manifest(
                "version, supersedes and lineage disagree (a first version is 1 with neither; a later one names both)".into(),
            )),
        }
    }

    /// The signed payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        Canonical::encode(self)
    }

    /// Decodes a verified payload into a checked manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, DatasetError> {
        <Self as Canonical>::decode(bytes)
    }

    /// Signs the manifest with the publisher's key.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Envelope {
        Envelope::sign(
            PayloadType::Manifest,
            self.encode(),
            key,
            self.publisher.as_str(),
        )
    }
}

/// Verifies a manifest envelope against the publisher's key (from its
/// certificate) and returns the dataset id with the verified manifest.
/// The manifest must name that same publisher.
pub fn verify_manifest(
    envelope: Envelope,
    publisher_key: &[u8; 32],
) -> Result<(DatasetId, Verified<Manifest>), DatasetError> {
    let id = DatasetId::of_payload(&envelope.payload);
    Ok((id, envelope.verify_signed(publisher_key)?))
}

/// Most datasets [`read_catalog`] collects from one node.
pub const MAX_CATALOG_DATASETS: usize = 1_000_000;

/// A node's whole catalog matching `query` (its page token is ignored),
/// every manifest verified under the node's key history `keys` (old
/// manifests are signed by keys it has since retired) and required to be
/// the dataset the node lists it as. A node that lies, or paginates in
/// circles, gets `DataLoss`.
pub async fn read_catalog(
    peer: &dyn crate::peer::Peer,
    keys: &crate::ledger::keys::LogKeys,
    mut query: crate::peer::CatalogQuery,
) -> Result<Vec<(DatasetId, Verified<Manifest>)>, crate::peer::PeerError> {
    use crate::peer::{Code, PeerError};
    let bad = |m: String| PeerError::new(Code::DataLoss, m);
    query.page_token.clear();
    let mut rows = Vec::new();
    loop {
        let page = peer.catalog_page(query.clone()).await?;
        for (listed, envelope) in page.datasets {
            let ((id, manifest), _) = keys
                .verify_any(|k| verify_manifest(envelope.clone(), k))
                .map_err(|e| bad(format!("the manifest of {listed} is NOT valid: {e}")))?;
            if id.as_str() != listed {
                return Err(bad(format!(
                    "the catalog lists {listed} but its manifest is dataset {id}"
                )));
            }
            rows.push((id, manifest));
        }
        if page.next_page_token.is_empty() {
            return Ok(rows);
        }
        // Tokens are dataset ids in increasing order; anything else is a
        // node leading the client in circles.
        if page.next_page_token <= query.page_token || rows.len() > MAX_CATALOG_DATASETS {
            return Err(bad("the node paginates its catalog incorrectly".into()));
        }
        query.page_token = page.next_page_token;
    }
}

impl SignedBy for Manifest {
    const TYPE: PayloadType = PayloadType::Manifest;
    const NOUN: &'static str = "manifest";
    const SIGNER_ROLE: &'static str = "publisher";
    fn signer(&self) -> &NodeId {
        &self.publisher
    }

    fn wrong_signer(message: String) -> DatasetError {
        DatasetError::Manifest(message)
    }
}

/// SHA-256 of the concatenated chunk hashes.
pub fn chunk_list_hash(chunks: &[Hash]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in chunks {
        ctx.update(c);
    }
    let mut h = [0u8; 32];
    h.copy_from_slice(ctx.finish().as_ref());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid first version (for other modules' tests too).
    pub(super) fn manifest() -> Manifest {
        Manifest {
            title: "Road sensors".into(),
            description: "hourly counts".into(),
            media_type: "text/csv".into(),
            size: 3 << 20,
            chunk_size: DEFAULT_CHUNK_SIZE,
            chunk_count: 3,
            content_sha256: [1; 32],
            chunk_list_sha256: [2; 32],
            classification: Classification::General,
            policy: Policy {
                classification: Classification::General,
                permissions: vec![],
                prohibitions: vec![],
                obligations: vec![],
            },
            derived_from: vec![],
            supersedes: None,
            version: 1,
            lineage: None,
            created_at_ms: 1_790_000_000_000,
            publisher: NodeId::from_public_key(&[4; 32]),
        }
    }

    #[test]
    fn manifest_round_trips_and_any_changed_byte_is_another_dataset() {
        let m = manifest();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).expect("decode"), m);
        let id = DatasetId::of_payload(&bytes);
        assert_eq!(id.as_str().parse::<DatasetId>().expect("parse"), id);
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert_ne!(DatasetId::of_payload(&changed), id, "byte {i}");
        }
    }

    #[test]
    fn manifest_is_verified_before_it_is_used() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let m = Manifest {
            publisher: NodeId::from_public_key(&key.verifying_key().to_bytes()),
            ..manifest()
        };
        let env = m.sign(&key);
        let pk = key.verifying_key().to_bytes();
        let (id, v) = verify_manifest(env.clone(), &pk).expect("verifies");
        assert_eq!(id, DatasetId::of_payload(&env.payload));
        assert_eq!(v.value(), &m);
        // Signed by someone else than the publisher it names.
        let other = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let forged = m.sign(&other);
        assert!(verify_manifest(forged, &other.verifying_key().to_bytes()).is_err());
        // A grant envelope presented as a manifest.
        let grant = Envelope::sign(PayloadType::Grant, m.encode(), &key, "x");
        assert!(verify_manifest(grant, &pk).is_err());
    }

    #[test]
    fn bad_ids_and_inconsistent_manifests_are_refused() {
        for bad in ["", "ds_", "ds_UPPER", "../etc/passwd", "ds_aaaa"] {
            assert!(bad.parse::<DatasetId>().is_err(), "{bad}");
        }
        let mut m = manifest();
        m.chunk_count = 2;
        assert!(Manifest::decode(&m.encode()).is_err(), "chunk count");
        let mut m = manifest();
        m.version = 2;
        assert!(
            Manifest::decode(&m.encode()).is_err(),
            "version without supersedes"
        );
        assert!(Manifest::decode(b"garbage").is_err());
    }
}
