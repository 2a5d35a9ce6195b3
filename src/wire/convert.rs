//! Conversions between protobuf messages and domain types. Each one
//! destructures every field, so a field added to a message breaks the
//! build here until it is handled.

use crate::digest::Hash;
use crate::envelope::{Envelope, EnvelopeSignature};
use crate::exchange::fetch::{FetchProgress, Fetched};
use crate::exchange::grant::GrantId;
use crate::identity::{NodeId, PeerIdentity};
use crate::ledger::Query;
use crate::ledger::entry::{EntryKind, MAX_REF_LEN};
use crate::peer::{
    AccessAsk, CheckpointAnswer, CheckpointOffer, Code, ConsistencyAnswer, EntryPage, EntryQuery,
    FetchAsk, FetchHeader, FetchPart, GrantEvidence, InclusionAnswer, LatestCheckpoint, PeerError,
    ProvenEntry, ReceiptTaken, Resume,
};
use crate::service::GrantStatus;
use crate::wire::pb;
use crate::witness::protocol::Exchanged;

impl From<&PeerIdentity> for pb::Identity {
    fn from(id: &PeerIdentity) -> Self {
        Self {
            node_id: id.node_id.to_string(),
            participant: id.participant.to_string(),
            roles: id.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            region: id
                .region
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }
}

impl From<&Envelope> for pb::Envelope {
    fn from(e: &Envelope) -> Self {
        Self {
            payload_type: e.payload_type.clone(),
            payload: e.payload.clone(),
            signatures: e
                .signatures
                .iter()
                .map(|s| pb::EnvelopeSignature {
                    keyid: s.keyid.clone(),
                    sig: s.sig.clone(),
                })
                .collect(),
        }
    }
}

impl From<pb::Envelope> for Envelope {
    fn from(e: pb::Envelope) -> Self {
        let pb::Envelope {
            payload_type,
            payload,
            signatures,
        } = e;
        Self {
            payload_type,
            payload,
            signatures: signatures
                .into_iter()
                .map(|s| {
                    let pb::EnvelopeSignature { keyid, sig } = s;
                    EnvelopeSignature { keyid, sig }
                })
                .collect(),
        }
    }
}

impl From<pb::ExchangeCheckpointsRequest> for CheckpointOffer {
    fn from(r: pb::ExchangeCheckpointsRequest) -> Self {
        let pb::ExchangeCheckpointsRequest {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            seen_size,
            cosigned,
        } = r;
        Self {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            seen_size,
            cosigned,
        }
    }
}

impl From<CheckpointOffer> for pb::ExchangeCheckpointsRequest {
    fn from(o: CheckpointOffer) -> Self {
        let CheckpointOffer {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            seen_size,
            cosigned,
        } = o;
        Self {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            seen_size,
            cosigned,
        }
    }
}

impl From<pb::ExchangeCheckpointsResponse> for CheckpointAnswer {
    fn from(r: pb::ExchangeCheckpointsResponse) -> Self {
        let pb::ExchangeCheckpointsResponse {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            cosigned,
            need_proof_from,
        } = r;
        Self {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            cosigned,
            need_proof_from,
        }
    }
}

impl From<CheckpointAnswer> for pb::ExchangeCheckpointsResponse {
    fn from(a: CheckpointAnswer) -> Self {
        let CheckpointAnswer {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            cosigned,
            need_proof_from,
        } = a;
        Self {
            checkpoint,
            key_rotations,
            old_checkpoint,
            consistency_proof,
            cosigned,
            need_proof_from,
        }
    }
}

impl From<pb::ProveConsistencyResponse> for ConsistencyAnswer {
    fn from(r: pb::ProveConsistencyResponse) -> Self {
        let pb::ProveConsistencyResponse {
            old_checkpoint,
            new_checkpoint,
            proof,
        } = r;
        Self {
            old_checkpoint,
            new_checkpoint,
            proof,
        }
    }
}

// Ledger reads (the auditor's questions). The answers keep the node's
// bytes as sent, so these conversions cannot fail: the auditor verifies
// every checkpoint, entry and proof itself.

impl From<pb::GetCheckpointResponse> for LatestCheckpoint {
    fn from(r: pb::GetCheckpointResponse) -> Self {
        let pb::GetCheckpointResponse {
            checkpoint,
            vkey,
            key_rotations,
            cosigned_checkpoints,
        } = r;
        Self {
            checkpoint,
            vkey,
            key_rotations,
            cosigned_checkpoints,
        }
    }
}

impl From<EntryQuery> for pb::QueryEntriesRequest {
    /// A filter not given is sent as the wire's "any": empty or zero.
    fn from(q: EntryQuery) -> Self {
        let EntryQuery {
            filter:
                Query {
                    dataset,
                    party,
                    kind,
                    grant,
                    since_ms,
                    until_ms,
                },
            limit,
            page_token,
            tree_size,
        } = q;
        Self {
            dataset: dataset.unwrap_or_default(),
            party: party.map(|p| p.to_string()).unwrap_or_default(),
            kind: kind.map(|k| k.name()).unwrap_or_default(),
            since_ms: since_ms.unwrap_or(0),
            until_ms: until_ms.unwrap_or(0),
            limit,
            page_token,
            tree_size,
            grant: grant.unwrap_or_default(),
        }
    }
}

impl From<pb::ProvenEntry> for ProvenEntry {
    fn from(p: pb::ProvenEntry) -> Self {
        let pb::ProvenEntry {
            index,
            entry,
            inclusion_proof,
        } = p;
        Self {
            index,
            entry,
            inclusion_proof,
        }
    }
}

impl From<pb::QueryEntriesResponse> for EntryPage {
    fn from(r: pb::QueryEntriesResponse) -> Self {
        let pb::QueryEntriesResponse {
            checkpoint,
            entries,
            next_page_token,
        } = r;
        Self {
            checkpoint,
            entries: entries.into_iter().map(ProvenEntry::from).collect(),
            next_page_token,
        }
    }
}

impl From<pb::ProveInclusionResponse> for InclusionAnswer {
    fn from(r: pb::ProveInclusionResponse) -> Self {
        let pb::ProveInclusionResponse { checkpoint, entry } = r;
        Self {
            checkpoint,
            entry: entry.map(ProvenEntry::from),
        }
    }
}

impl From<pb::GetEvidenceResponse> for GrantEvidence {
    fn from(r: pb::GetEvidenceResponse) -> Self {
        let pb::GetEvidenceResponse {
            certificate_pem,
            grant,
            manifest,
            receipts,
        } = r;
        Self {
            certificate_pem,
            grant,
            manifest,
            receipts,
        }
    }
}

// Ledger reads, the answering side: this node's answers as sent.

impl From<LatestCheckpoint> for pb::GetCheckpointResponse {
    fn from(c: LatestCheckpoint) -> Self {
        let LatestCheckpoint {
            checkpoint,
            vkey,
            key_rotations,
            cosigned_checkpoints,
        } = c;
        Self {
            checkpoint,
            vkey,
            key_rotations,
            cosigned_checkpoints,
        }
    }
}

impl From<ProvenEntry> for pb::ProvenEntry {
    fn from(p: ProvenEntry) -> Self {
        let ProvenEntry {
            index,
            entry,
            inclusion_proof,
        } = p;
        Self {
            index,
            entry,
            inclusion_proof,
        }
    }
}

impl From<EntryPage> for pb::QueryEntriesResponse {
    fn from(p: EntryPage) -> Self {
        let EntryPage {
            checkpoint,
            entries,
            next_page_token,
        } = p;
        Self {
            checkpoint,
            entries: entries.into_iter().map(Into::into).collect(),
            next_page_token,
        }
    }
}

impl From<InclusionAnswer> for pb::ProveInclusionResponse {
    fn from(a: InclusionAnswer) -> Self {
        let InclusionAnswer { checkpoint, entry } = a;
        Self {
            checkpoint,
            entry: entry.map(Into::into),
        }
    }
}

impl From<ConsistencyAnswer> for pb::ProveConsistencyResponse {
    fn from(a: ConsistencyAnswer) -> Self {
        let ConsistencyAnswer {
            old_checkpoint,
            new_checkpoint,
            proof,
        } = a;
        Self {
            old_checkpoint,
            new_checkpoint,
            proof,
        }
    }
}

impl From<GrantEvidence> for pb::GetEvidenceResponse {
    fn from(e: GrantEvidence) -> Self {
        let GrantEvidence {
            certificate_pem,
            grant,
            manifest,
            receipts,
        } = e;
        Self {
            certificate_pem,
            grant,
            manifest,
            receipts,
        }
    }
}

/// A filter from a request: empty or zero means "any"; anything given
/// must parse, with an error that says what was expected.
impl TryFrom<pb::QueryEntriesRequest> for EntryQuery {
    type Error = tonic::Status;

    fn try_from(r: pb::QueryEntriesRequest) -> Result<Self, tonic::Status> {
        let bad = |e: &dyn std::fmt::Display| tonic::Status::invalid_argument(e.to_string());
        let pb::QueryEntriesRequest {
            dataset,
            party,
            kind,
            since_ms,
            until_ms,
            limit,
            page_token,
            tree_size,
            grant,
        } = r;
        let dataset = match dataset.as_str() {
            "" => None,
            d if d.len() <= MAX_REF_LEN && d.bytes().all(|b| b.is_ascii_graphic()) => Some(dataset),
            _ => {
                return Err(tonic::Status::invalid_argument(format!(
                    "dataset filter must be 1 to {MAX_REF_LEN} printable ASCII characters"
                )));
            }
        };
        let party = match party.as_str() {
            "" => None,
            p => Some(p.parse::<NodeId>().map_err(|e| bad(&e))?),
        };
        let kind = match kind.as_str() {
            "" => None,
            k => Some(EntryKind::parse(k).map_err(|e| bad(&e))?),
        };
        let grant = match grant.as_str() {
            "" => None,
            g => Some(g.parse::<GrantId>().map_err(|e| bad(&e))?.to_string()),
        };
        let bound = |t: i64| (t != 0).then_some(t);
        Ok(Self {
            filter: Query {
                dataset,
                party,
                kind,
                grant,
                since_ms: bound(since_ms),
                until_ms: bound(until_ms),
            },
            limit,
            page_token,
            tree_size,
        })
    }
}

impl From<AccessAsk> for pb::RequestAccessRequest {
    fn from(a: AccessAsk) -> Self {
        let AccessAsk {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        } = a;
        Self {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        }
    }
}

impl From<pb::RequestAccessRequest> for AccessAsk {
    fn from(r: pb::RequestAccessRequest) -> Self {
        let pb::RequestAccessRequest {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        } = r;
        Self {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        }
    }
}

impl From<FetchAsk> for pb::FetchRequest {
    fn from(f: FetchAsk) -> Self {
        let FetchAsk {
            grant_id,
            resume,
            to_chunk,
        } = f;
        Self {
            grant_id,
            resume: resume.map(|r| {
                let Resume {
                    transfer_index,
                    from_chunk,
                    join,
                } = r;
                pb::FetchResume {
                    transfer_index,
                    from_chunk,
                    join,
                }
            }),
            to_chunk: to_chunk.unwrap_or(0),
        }
    }
}

impl From<pb::FetchRequest> for FetchAsk {
    fn from(f: pb::FetchRequest) -> Self {
        let pb::FetchRequest {
            grant_id,
            resume,
            to_chunk,
        } = f;
        Self {
            grant_id,
            resume: resume.map(|r| {
                let pb::FetchResume {
                    transfer_index,
                    from_chunk,
                    join,
                } = r;
                Resume {
                    transfer_index,
                    from_chunk,
                    join,
                }
            }),
            to_chunk: (to_chunk != 0).then_some(to_chunk),
        }
    }
}

impl From<FetchHeader> for pb::FetchHeader {
    fn from(h: FetchHeader) -> Self {
        let FetchHeader {
            manifest,
            chunk_hashes,
            transfer_index,
            first_chunk,
            end_chunk,
        } = h;
        Self {
            manifest: manifest.as_ref().map(Into::into),
            chunk_hashes,
            transfer_index,
            first_chunk,
            end_chunk,
        }
    }
}

impl From<pb::FetchHeader> for FetchHeader {
    fn from(h: pb::FetchHeader) -> Self {
        let pb::FetchHeader {
            manifest,
            chunk_hashes,
            transfer_index,
            first_chunk,
            end_chunk,
        } = h;
        Self {
            manifest: manifest.map(Into::into),
            chunk_hashes,
            transfer_index,
            first_chunk,
            end_chunk,
        }
    }
}

impl From<FetchPart> for pb::FetchResponse {
    fn from(p: FetchPart) -> Self {
        Self {
            part: Some(match p {
                FetchPart::Header(h) => pb::fetch_response::Part::Header(h.into()),
                FetchPart::Chunk(c) => pb::fetch_response::Part::Chunk(c),
            }),
        }
    }
}

impl TryFrom<pb::FetchResponse> for FetchPart {
    type Error = PeerError;

    fn try_from(r: pb::FetchResponse) -> Result<Self, PeerError> {
        let pb::FetchResponse { part } = r;
        match part {
            Some(pb::fetch_response::Part::Header(h)) => Ok(Self::Header(h.into())),
            Some(pb::fetch_response::Part::Chunk(c)) => Ok(Self::Chunk(c)),
            None => Err(PeerError::new(
                Code::DataLoss,
                "a transfer message with neither a header nor a chunk",
            )),
        }
    }
}

impl From<ReceiptTaken> for pb::SubmitReceiptResponse {
    fn from(t: ReceiptTaken) -> Self {
        let ReceiptTaken {
            ledger_index,
            checkpoint,
        } = t;
        Self {
            ledger_index,
            checkpoint,
        }
    }
}

impl From<pb::SubmitReceiptResponse> for ReceiptTaken {
    fn from(r: pb::SubmitReceiptResponse) -> Self {
        let pb::SubmitReceiptResponse {
            ledger_index,
            checkpoint,
        } = r;
        Self {
            ledger_index,
            checkpoint,
        }
    }
}

// The Admin API: a fetch's progress and result, grants, witnessing.

impl From<FetchProgress> for pb::AdminFetchProgress {
    fn from(p: FetchProgress) -> Self {
        let FetchProgress {
            bytes,
            total_bytes,
            chunks,
            total_chunks,
            resumed_chunks,
        } = p;
        Self {
            bytes,
            total_bytes,
            chunks,
            total_chunks,
            resumed_chunks,
        }
    }
}

impl From<Fetched> for pb::AdminFetchResponse {
    fn from(f: Fetched) -> Self {
        let Fetched {
            dataset_id,
            bytes,
            content_sha256,
            ledger_index,
            publisher_ledger_index,
            resumed_chunks,
            reconnects,
            chunk_list_sha256,
            content_verified,
            streams,
        } = f;
        Self {
            dataset_id,
            bytes,
            content_sha256: content_sha256.to_vec(),
            ledger_index,
            publisher_ledger_index,
            resumed_chunks,
            reconnects,
            chunk_list_sha256: chunk_list_sha256.to_vec(),
            content_sha256_verified: content_verified,
            streams: u32::try_from(streams).unwrap_or(u32::MAX),
        }
    }
}

impl From<pb::AdminFetchProgress> for FetchProgress {
    fn from(p: pb::AdminFetchProgress) -> Self {
        let pb::AdminFetchProgress {
            bytes,
            total_bytes,
            chunks,
            total_chunks,
            resumed_chunks,
        } = p;
        Self {
            bytes,
            total_bytes,
            chunks,
            total_chunks,
            resumed_chunks,
        }
    }
}

impl TryFrom<pb::AdminFetchResponse> for Fetched {
    type Error = PeerError;

    fn try_from(r: pb::AdminFetchResponse) -> Result<Self, PeerError> {
        let pb::AdminFetchResponse {
            dataset_id,
            bytes,
            content_sha256,
            ledger_index,
            publisher_ledger_index,
            resumed_chunks,
            reconnects,
            chunk_list_sha256,
            content_sha256_verified,
            streams,
        } = r;
        let hash = |what: &str, bytes: Vec<u8>| {
            let len = bytes.len();
            Hash::try_from(bytes).map_err(|_| {
                PeerError::new(
                    Code::DataLoss,
                    format!("the node's fetch result has a {what} of {len} bytes, not 32"),
                )
            })
        };
        Ok(Self {
            dataset_id,
            bytes,
            content_sha256: hash("content hash", content_sha256)?,
            ledger_index,
            publisher_ledger_index,
            resumed_chunks,
            reconnects,
            chunk_list_sha256: hash("chunk list hash", chunk_list_sha256)?,
            content_verified: content_sha256_verified,
            streams: streams as usize,
        })
    }
}

impl TryFrom<pb::GrantStatus> for GrantStatus {
    type Error = PeerError;

    fn try_from(g: pb::GrantStatus) -> Result<Self, PeerError> {
        let pb::GrantStatus {
            grant,
            revoked,
            issued,
        } = g;
        let grant = grant
            .ok_or_else(|| PeerError::new(Code::DataLoss, "the node returned no grant"))?
            .into();
        Ok(Self {
            grant,
            revoked,
            issued,
        })
    }
}

impl TryFrom<pb::AdminWitnessResponse> for Exchanged {
    type Error = PeerError;

    fn try_from(r: pb::AdminWitnessResponse) -> Result<Self, PeerError> {
        let pb::AdminWitnessResponse {
            peer_node_id,
            peer_size,
            peer_grew,
            cosigned_by_peer,
        } = r;
        let peer = peer_node_id.parse().map_err(|e| {
            PeerError::new(Code::DataLoss, format!("the witness result names an {e}"))
        })?;
        Ok(Self {
            peer,
            peer_size,
            peer_grew,
            cosigned_by_peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The saved header of an interrupted fetch is the protobuf encoding of
    /// `dataspace.v1.FetchHeader`, whoever writes it: a state saved by an
    /// earlier build (which saved the message itself) still resumes.
    #[test]
    fn a_saved_fetch_header_is_the_wire_message() {
        let header = FetchHeader {
            manifest: Some(Envelope {
                payload_type: "application/vnd.dsnode.manifest.v1+protobuf".into(),
                payload: vec![1, 2, 3],
                signatures: vec![EnvelopeSignature {
                    keyid: "dsn1x".into(),
                    sig: vec![9; 64],
                }],
            }),
            chunk_hashes: vec![vec![7; 32], vec![8; 32]],
            transfer_index: 12,
            first_chunk: 1,
            end_chunk: 2,
        };
        let wire = pb::FetchHeader::from(header.clone()).encode_to_vec();
        let saved = crate::payload::fetch_state::encode(&header);
        assert_eq!(saved, wire);
        let back = crate::payload::fetch_state::decode(&wire).expect("decodes");
        assert_eq!(back, header);
        let err = crate::payload::fetch_state::decode(b"\xff\xff garbage").expect_err("garbage");
        assert!(err.to_string().starts_with("not a fetch header"), "{err}");
    }
}
