//! The saved header of an interrupted fetch (`grants/fetching/GRANT.header`):
//! the publisher's `FetchHeader` as it was received, in the protobuf
//! encoding of `dataspace.v1.FetchHeader` (field numbers and types are
//! those of `proto/dataspace/v1/exchange.proto`, so a state saved by an
//! earlier build still resumes). Everything in it is verified again before
//! use.

use prost::Message;

use crate::envelope::{Envelope, EnvelopeSignature};
use crate::peer::FetchHeader;

/// `dataspace.v1.FetchHeader`.
#[derive(Clone, PartialEq, Message)]
struct SavedHeader {
    #[prost(message, optional, tag = "1")]
    manifest: Option<SavedEnvelope>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    chunk_hashes: Vec<Vec<u8>>,
    #[prost(uint64, tag = "3")]
    transfer_index: u64,
    #[prost(uint64, tag = "4")]
    first_chunk: u64,
    #[prost(uint64, tag = "5")]
    end_chunk: u64,
}

/// `dataspace.v1.Envelope`.
#[derive(Clone, PartialEq, Message)]
struct SavedEnvelope {
    #[prost(string, tag = "1")]
    payload_type: String,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    signatures: Vec<SavedSignature>,
}

/// `dataspace.v1.EnvelopeSignature`.
#[derive(Clone, PartialEq, Message)]
struct SavedSignature {
    #[prost(string, tag = "1")]
    keyid: String,
    #[prost(bytes = "vec", tag = "2")]
    sig: Vec<u8>,
}

/// The saved header is not one.
#[derive(Debug, thiserror::Error)]
#[error("not a fetch header ({0})")]
pub struct SavedHeaderError(#[source] prost::DecodeError);

/// The bytes to keep for `header`.
pub fn encode(header: &FetchHeader) -> Vec<u8> {
    let FetchHeader {
        manifest,
        chunk_hashes,
        transfer_index,
        first_chunk,
        end_chunk,
    } = header.clone();
    SavedHeader {
        manifest: manifest.map(|e| {
            let Envelope {
                payload_type,
                payload,
                signatures,
            } = e;
            SavedEnvelope {
                payload_type,
                payload,
                signatures: signatures
                    .into_iter()
                    .map(|EnvelopeSignature { keyid, sig }| SavedSignature { keyid, sig })
                    .collect(),
            }
        }),
        chunk_hashes,
        transfer_index,
        first_chunk,
        end_chunk,
    }
    .encode_to_vec()
}

/// A kept header, decoded (not verified).
pub fn decode(bytes: &[u8]) -> Result<FetchHeader, SavedHeaderError> {
    let SavedHeader {
        manifest,
        chunk_hashes,
        transfer_index,
        first_chunk,
        end_chunk,
    } = SavedHeader::decode(bytes).map_err(SavedHeaderError)?;
    Ok(FetchHeader {
        manifest: manifest.map(|e| {
            let SavedEnvelope {
                payload_type,
                payload,
                signatures,
            } = e;
            Envelope {
                payload_type,
                payload,
                signatures: signatures
                    .into_iter()
                    .map(|SavedSignature { keyid, sig }| EnvelopeSignature { keyid, sig })
                    .collect(),
            }
        }),
        chunk_hashes,
        transfer_index,
        first_chunk,
        end_chunk,
    })
}

impl crate::codec::Canonical for FetchHeader {
    type Error = SavedHeaderError;

    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, SavedHeaderError> {
        decode(bytes)
    }
}
