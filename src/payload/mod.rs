//! The canonical codecs of the signed payloads: the exact bytes a DSSE
//! envelope ([`crate::envelope`]) signs, one codec per kind of object.
//!
//! | payload type | message | domain type | codec |
//! |---|---|---|---|
//! | `application/vnd.dsnode.manifest.v1+protobuf` | `ManifestV1` | [`Manifest`](crate::dataset::Manifest) | [`manifest`] |
//! | `application/vnd.dsnode.grant.v1+protobuf` | `GrantV1` | [`Grant`](crate::exchange::grant::Grant) | [`grant`] |
//! | `application/vnd.dsnode.receipt.v1+protobuf` | `ReceiptV1` | [`Receipt`](crate::exchange::receipt::Receipt) | [`receipt`] |
//! | `application/vnd.dsnode.key-rotation.v1+protobuf` | `KeyRotationV1` | [`KeyRotation`](crate::ledger::keys::KeyRotation) | [`key_rotation`] |
//!
//! The payloads are protobuf by design (DESIGN.md, "Signed objects"), in a
//! package of their own, `dsnode.payload.v1`
//! (`proto/dsnode/payload/v1/payload.proto`), apart from the RPC package:
//! the signed bytes change only when a payload does, never with the RPCs.
//! [`fetch_state`] keeps the header of an interrupted fetch in the same
//! way (not signed, but kept on disk in the wire message's encoding).
//! This module and [`crate::wire`] are the only users of prost; the domain
//! modules call the codecs here and see no generated type.
//!
//! Encoding is `From<&Domain> for pb::X`, decoding `TryFrom<pb::X> for
//! Domain`; both take every field apart, so a new field breaks the build
//! until it is handled here. Decoding takes untrusted bytes and refuses
//! anything that is not a valid object with an error saying what was
//! expected; it never panics. The errors are the domain's own (a manifest
//! is refused with a [`DatasetError`](crate::dataset::DatasetError), as
//! before this module existed); a [`PayloadError`] is what they wrap when
//! the bytes are not the protobuf message at all.
//!
//! Signatures cover these bytes and dataset ids are hashes of them, so
//! `tests/vectors/payload/` pins one encoding of each kind (made before
//! the messages moved to this package) and the tests below check both
//! directions against it.

pub mod fetch_state;
pub mod grant;
pub mod key_rotation;
pub mod manifest;
pub mod receipt;

use crate::codec::PayloadError;

/// Generated code for `proto/dsnode/payload/v1/payload.proto` (messages
/// only, no services).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/dsnode.payload.v1.rs"));
}

/// Decodes `bytes` as the protobuf message `M`, called `name` in errors.
fn decode_message<M: prost::Message + Default>(
    bytes: &[u8],
    name: &'static str,
) -> Result<M, PayloadError> {
    M::decode(bytes).map_err(|e| PayloadError::Protobuf {
        message: name,
        source: std::sync::Arc::new(e),
    })
}

#[cfg(test)]
mod tests {
    //! The signed bytes of each payload kind against the vectors in
    //! `tests/vectors/payload/`, encoded by the code that kept these
    //! messages in `dataspace.v1` (see the README there).

    use std::collections::BTreeSet;

    use crate::dataset::{DEFAULT_CHUNK_SIZE, DatasetId, Derivation, Manifest};
    use crate::exchange::grant::{Grant, GrantId};
    use crate::exchange::receipt::Receipt;
    use crate::identity::NodeId;
    use crate::ledger::keys::KeyRotation;
    use crate::policy::{Action, Classification, Duty, Obligation, Policy};

    const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read", "derive"]
purpose = ["route-planning", "research"]
roles = ["consumer"]
regions = ["CN-HE", "CN-BJ"]
not_after = "2027-12-31T00:00:00Z"
grant_ttl = "30d"
max_fetches = 3

[[prohibition]]
actions = ["redistribute"]

[[obligation]]
action = "delete"
after = "30d"
"#;

    fn vector(name: &str) -> Vec<u8> {
        let text = match name {
            "manifest-first" => include_str!("../../tests/vectors/payload/manifest-first.hex"),
            "manifest-derived" => {
                include_str!("../../tests/vectors/payload/manifest-derived.hex")
            }
            "grant" => include_str!("../../tests/vectors/payload/grant.hex"),
            "receipt" => include_str!("../../tests/vectors/payload/receipt.hex"),
            "key-rotation" => include_str!("../../tests/vectors/payload/key-rotation.hex"),
            other => panic!("no vector {other}"),
        };
        data_encoding::HEXLOWER
            .decode(text.trim().as_bytes())
            .expect("hex vector")
    }

    fn key(b: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
    }

    fn pk(b: u8) -> [u8; 32] {
        key(b).verifying_key().to_bytes()
    }

    fn grant_id() -> GrantId {
        "gr_abcdefghijklmnopqrstuvwxyz".parse().expect("grant id")
    }

    /// A first version: every optional field empty, so the proto3
    /// defaults are left out of the bytes.
    fn manifest_first() -> Manifest {
        Manifest {
            title: "Road sensors".into(),
            description: String::new(),
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
            publisher: NodeId::from_public_key(&pk(4)),
        }
    }

    /// A later, derived version: every field set.
    fn manifest_derived() -> Manifest {
        Manifest {
            title: "Road sensors, by junction".into(),
            description: "hourly counts\nper junction".into(),
            media_type: "text/csv".into(),
            size: (3 << 20) + 5,
            chunk_size: DEFAULT_CHUNK_SIZE,
            chunk_count: 4,
            content_sha256: [3; 32],
            chunk_list_sha256: [5; 32],
            classification: Classification::Important,
            policy: Policy::from_toml(POLICY).expect("policy"),
            derived_from: vec![
                Derivation {
                    dataset: DatasetId::of_payload(b"source-a"),
                    grant: grant_id().to_string(),
                },
                Derivation {
                    dataset: DatasetId::of_payload(b"source-b"),
                    grant: String::new(),
                },
            ],
            supersedes: Some(DatasetId::of_payload(b"version-1")),
            version: 2,
            lineage: Some(DatasetId::of_payload(b"version-1")),
            created_at_ms: 1_790_000_123_456,
            publisher: NodeId::from_public_key(&pk(4)),
        }
    }

    fn grant() -> Grant {
        Grant {
            id: grant_id(),
            dataset: DatasetId::of_payload(b"manifest"),
            manifest_sha256: [1; 32],
            publisher: NodeId::from_public_key(&pk(4)),
            grantee: NodeId::from_public_key(&pk(9)),
            purpose: "research".into(),
            actions: BTreeSet::from([Action::Read, Action::Derive]),
            not_before_ms: 1_000_000,
            not_after_ms: 2_000_000,
            max_fetches: Some(3),
            obligations: vec![
                Obligation {
                    action: Duty::Delete,
                    after_secs: Some(86400),
                },
                Obligation {
                    action: Duty::Attribute,
                    after_secs: None,
                },
            ],
            policy_sha256: [2; 32],
            issued_at_ms: 999_000,
        }
    }

    fn receipt() -> Receipt {
        Receipt {
            grant: grant_id(),
            dataset: DatasetId::of_payload(b"manifest"),
            content_sha256: [5; 32],
            bytes: 12_345,
            received_at_ms: 1_764_000_000_000,
            consumer_checkpoint: "dsnode/x\n1\nAAAA\n".into(),
            consumer: NodeId::from_public_key(&pk(9)),
            transfer_index: 3,
            chunk_list_sha256: None,
            content_verified: false,
        }
    }

    fn key_rotation() -> KeyRotation {
        KeyRotation {
            origin: format!("dsnode/{}", NodeId::from_public_key(&pk(1))),
            index: 5,
            old_key: pk(1),
            new_key: pk(2),
            participant: "city-transport".parse().expect("participant"),
        }
    }

    #[test]
    fn manifests_encode_to_the_pinned_bytes_and_back() {
        for (name, m) in [
            ("manifest-first", manifest_first()),
            ("manifest-derived", manifest_derived()),
        ] {
            let want = vector(name);
            assert_eq!(super::manifest::encode(&m), want, "{name}");
            assert_eq!(m.encode(), want, "{name}");
            assert_eq!(super::manifest::decode(&want).expect(name), m);
            // The signed envelope carries exactly these bytes.
            assert_eq!(m.sign(&key(4)).payload, want, "{name}");
        }
    }

    #[test]
    fn grants_encode_to_the_pinned_bytes_and_back() {
        let (g, want) = (grant(), vector("grant"));
        assert_eq!(super::grant::encode(&g), want);
        assert_eq!(g.encode(), want);
        assert_eq!(g.sign(&key(4)).payload, want);
        assert_eq!(super::grant::decode(&want).expect("grant"), g);
    }

    #[test]
    fn receipts_encode_to_the_pinned_bytes_and_back() {
        let (r, want) = (receipt(), vector("receipt"));
        assert_eq!(super::receipt::encode(&r), want);
        assert_eq!(r.encode(), want);
        assert_eq!(r.sign(&key(9)).payload, want);
        assert_eq!(super::receipt::decode(&want).expect("receipt"), r);
    }

    /// The pinned receipt above is the form without the chunk-list
    /// identity (consumers before it, still taken); the new fields round
    /// trip, and a chunk-list hash of the wrong length is refused.
    #[test]
    fn receipts_carry_the_chunk_list_identity() {
        let r = Receipt {
            chunk_list_sha256: Some([6; 32]),
            content_verified: true,
            ..receipt()
        };
        let bytes = super::receipt::encode(&r);
        assert_ne!(bytes, vector("receipt"));
        assert_eq!(super::receipt::decode(&bytes).expect("receipt"), r);
        let mut short = super::pb::ReceiptV1::from(&r);
        short.chunk_list_sha256.pop();
        let text = super::receipt::decode(&prost::Message::encode_to_vec(&short))
            .expect_err("short")
            .to_string();
        assert!(
            text.contains("chunk_list_sha256 must be 32 bytes"),
            "{text}"
        );
    }

    #[test]
    fn key_rotations_encode_to_the_pinned_bytes_and_back() {
        let (k, want) = (key_rotation(), vector("key-rotation"));
        assert_eq!(super::key_rotation::encode(&k), want);
        assert_eq!(k.sign(&key(1), &key(2)).payload, want);
        assert_eq!(super::key_rotation::decode(&want).expect("rotation"), k);
    }

    #[test]
    fn garbage_is_refused_saying_what_was_expected() {
        // A length-delimited field (title, grant id, …) running past the end.
        let garbage = [0x0a, 0xff, 0x01];
        let refusals = [
            (
                super::manifest::decode(&garbage)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "invalid manifest: not a ManifestV1 protobuf: ",
            ),
            (
                super::grant::decode(&garbage)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "invalid grant: not a GrantV1 protobuf: ",
            ),
            (
                super::receipt::decode(&garbage)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "invalid grant: not a ReceiptV1 protobuf: ",
            ),
        ];
        for (refused, want) in refusals {
            let text = refused.expect_err(want);
            assert!(text.starts_with(want), "{text}");
        }
        let rotation = super::key_rotation::decode(&garbage).expect_err("rotation");
        assert!(
            rotation
                .to_string()
                .starts_with("not a KeyRotationV1 protobuf: "),
            "{rotation}"
        );
        // The prost error stays reachable as the source.
        assert!(std::error::Error::source(&rotation).is_some());

        // Well-formed protobuf, wrong content: the field is named.
        let mut message = super::pb::KeyRotationV1::from(&key_rotation());
        message.new_key.truncate(31);
        let short = prost::Message::encode_to_vec(&message);
        assert_eq!(
            super::key_rotation::decode(&short)
                .expect_err("short key")
                .to_string(),
            "new_key is 31 bytes, expected 32"
        );
        let mut message = super::pb::GrantV1::from(&grant());
        message.policy_sha256.clear();
        let bytes = prost::Message::encode_to_vec(&message);
        assert_eq!(
            super::grant::decode(&bytes)
                .expect_err("empty hash")
                .to_string(),
            "invalid grant: policy_sha256 must be 32 bytes"
        );
    }
}
