//! Conversions between protobuf messages and domain types. Each one
//! destructures every field, so a field added to a message breaks the
//! build here until it is handled.

use crate::envelope::{Envelope, EnvelopeSignature};
use crate::identity::PeerIdentity;
use crate::peer::{CheckpointAnswer, CheckpointOffer, ConsistencyAnswer};
use crate::wire::pb;

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
        // The new checkpoint is not needed: the caller holds it already.
        let pb::ProveConsistencyResponse {
            old_checkpoint,
            new_checkpoint: _,
            proof,
        } = r;
        Self {
            old_checkpoint,
            proof,
        }
    }
}
