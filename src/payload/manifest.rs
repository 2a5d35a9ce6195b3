//! `ManifestV1` ↔ [`Manifest`]: the payload of
//! `application/vnd.dsnode.manifest.v1+protobuf`, signed by the publisher.
//! The dataset id is the hash of these exact bytes.

use prost::Message;

use super::pb;
use crate::dataset::{DatasetError, DatasetId, Derivation, Manifest};
use crate::digest::Hash;
use crate::policy::Policy;

/// The signed payload bytes of `manifest`.
pub fn encode(manifest: &Manifest) -> Vec<u8> {
    pb::ManifestV1::from(manifest).encode_to_vec()
}

/// Decodes payload bytes into a manifest, refusing anything that is not
/// a consistent one ([`Manifest::check`]).
pub fn decode(bytes: &[u8]) -> Result<Manifest, DatasetError> {
    super::decode_message::<pb::ManifestV1>(bytes, "ManifestV1")?.try_into()
}

impl From<&Manifest> for pb::ManifestV1 {
    fn from(manifest: &Manifest) -> Self {
        let Manifest {
            title,
            description,
            media_type,
            size,
            chunk_size,
            chunk_count,
            content_sha256,
            chunk_list_sha256,
            classification,
            policy,
            derived_from,
            supersedes,
            version,
            lineage,
            created_at_ms,
            publisher,
        } = manifest;
        Self {
            title: title.clone(),
            description: description.clone(),
            media_type: media_type.clone(),
            size: *size,
            chunk_size: *chunk_size,
            chunk_count: *chunk_count,
            content_sha256: content_sha256.to_vec(),
            chunk_list_sha256: chunk_list_sha256.to_vec(),
            classification: classification.as_str().to_owned(),
            policy: policy.canonical_json(),
            derived_from: derived_from.iter().map(pb::Derivation::from).collect(),
            supersedes: supersedes
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            version: *version,
            lineage: lineage
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            created_at_ms: *created_at_ms,
            publisher: publisher.to_string(),
        }
    }
}

impl TryFrom<pb::ManifestV1> for Manifest {
    type Error = DatasetError;

    /// Every field is taken apart here, so a new proto field breaks the
    /// build until it is handled; the result is checked.
    fn try_from(message: pb::ManifestV1) -> Result<Self, DatasetError> {
        let pb::ManifestV1 {
            title,
            description,
            media_type,
            size,
            chunk_size,
            chunk_count,
            content_sha256,
            chunk_list_sha256,
            classification,
            policy,
            derived_from,
            supersedes,
            version,
            lineage,
            created_at_ms,
            publisher,
        } = message;
        let manifest = Self {
            title,
            description,
            media_type,
            size,
            chunk_size,
            chunk_count,
            content_sha256: hash32(&content_sha256, "content_sha256")?,
            chunk_list_sha256: hash32(&chunk_list_sha256, "chunk_list_sha256")?,
            classification: classification.parse()?,
            policy: Policy::from_canonical_json(&policy)?,
            derived_from: derived_from
                .into_iter()
                .map(Derivation::try_from)
                .collect::<Result<_, DatasetError>>()?,
            supersedes: optional_id(&supersedes)?,
            version,
            lineage: optional_id(&lineage)?,
            created_at_ms,
            publisher: publisher
                .parse()
                .map_err(|e| DatasetError::Manifest(format!("publisher: {e}")))?,
        };
        manifest.check()?;
        Ok(manifest)
    }
}

impl From<&Derivation> for pb::Derivation {
    fn from(derivation: &Derivation) -> Self {
        let Derivation { dataset, grant } = derivation;
        Self {
            dataset_id: dataset.to_string(),
            grant_id: grant.clone(),
        }
    }
}

impl TryFrom<pb::Derivation> for Derivation {
    type Error = DatasetError;

    fn try_from(message: pb::Derivation) -> Result<Self, DatasetError> {
        let pb::Derivation {
            dataset_id,
            grant_id,
        } = message;
        Ok(Self {
            dataset: dataset_id.parse()?,
            grant: grant_id,
        })
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, DatasetError> {
    bytes.try_into().map_err(|_| {
        DatasetError::Manifest(format!("{what} must be 32 bytes, got {}", bytes.len()))
    })
}

fn optional_id(s: &str) -> Result<Option<DatasetId>, DatasetError> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

impl crate::codec::Canonical for Manifest {
    type Error = DatasetError;

    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DatasetError> {
        decode(bytes)
    }
}
