//! Node certificates and certificate signing requests.
//!
//! A node certificate is an ordinary X.509 end-entity certificate over the
//! node's **ECDSA P-256 TLS key** (`tls.key`), signed by the P-256
//! data-space CA: the key and signature every TLS stack accepts. What the
//! CA attests about the node travels as subject-alternative-name URIs, one
//! attribute each (the way SPIFFE and service meshes carry workload
//! identity):
//!
//! - `urn:dsnode:participant:<id>` exactly once,
//! - `urn:dsnode:ed25519:<key>` exactly once: the node's **Ed25519 signing
//!   key** (`node.key`), 32 raw bytes in unpadded base64url (RFC 4648 §5,
//!   43 characters). The node id is its fingerprint, and the node's
//!   manifests, grants, receipts and checkpoints verify with it; a
//!   certificate without it, or with a value that is not a valid Ed25519
//!   public key, is refused,
//! - `urn:dsnode:role:<role>` once per role,
//! - `urn:dsnode:region:<code>` at most once.
//!
//! **Proof of possession.** A CSR ([`make_csr`]) is signed by the TLS key
//! (the usual PKCS#10 proof) and carries two URIs: `urn:dsnode:ed25519:<key>`
//! and `urn:dsnode:ed25519-pop:<sig>`, an Ed25519 signature (base64url,
//! 64 bytes) by that key over [`binding_message`]: the DSSE
//! pre-authentication encoding of payload type [`BINDING_PAYLOAD_TYPE`] and
//! the TLS key's SubjectPublicKeyInfo (DER). The CA verifies both before it
//! issues ([`csr_binding`]), so nobody can bind another node's signing key
//! to their TLS key, or their signing key to another's TLS key. The proof
//! stays in the CSR; the certificate carries only the key.
//!
//! DNS and IP SANs name the host the node listens on, so clients verify the
//! server's address like any TLS client. Unknown `urn:dsnode:` attributes
//! make the certificate unusable (fail closed): a node never half-understands
//! what the CA attested.

use std::net::IpAddr;
use std::str::FromStr;

use data_encoding::BASE64URL_NOPAD;
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdError, NodeId, NodeKey, P256Key, ParticipantId, Region, Role, RoleSet};

const URN_PARTICIPANT: &str = "urn:dsnode:participant:";
const URN_ED25519: &str = "urn:dsnode:ed25519:";
const URN_ED25519_POP: &str = "urn:dsnode:ed25519-pop:";
const URN_ROLE: &str = "urn:dsnode:role:";
const URN_REGION: &str = "urn:dsnode:region:";
const URN_PREFIX: &str = "urn:dsnode:";
/// OID of Ed25519 public keys (RFC 8410): the key of certificates made
/// by earlier builds.
const OID_ED25519: &str = "1.3.101.112";
/// OID of elliptic-curve public keys, `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// OID of the P-256 curve, `prime256v1` / `secp256r1` (RFC 5480).
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Payload type of the proof of possession a CSR carries: the node's
/// Ed25519 key signs [`binding_message`] of its TLS key.
pub const BINDING_PAYLOAD_TYPE: &str = "application/vnd.dsnode.tls-key-binding.v1+der";

/// What the Ed25519 key signs to bind the TLS key whose
/// SubjectPublicKeyInfo (DER) is `tls_spki`: DSSE's PAE of
/// [`BINDING_PAYLOAD_TYPE`] and those bytes (domain-separated from every
/// other signature the key makes).
pub fn binding_message(tls_spki: &[u8]) -> Vec<u8> {
    crate::envelope::pae(BINDING_PAYLOAD_TYPE, tls_spki)
}

/// Why a certificate or CSR could not be made or understood.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Not DER or PEM of the expected kind.
    #[error("not a {expected}: {detail}")]
    Malformed {
        /// What was expected ("PEM certificate", "certificate signing request", …).
        expected: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The certificate's (TLS) key is not ECDSA P-256.
    #[error(
        "certificate key is not ECDSA P-256 ({0}); dsnode TLS keys are P-256 (a certificate over the Ed25519 key was made by an earlier dsnode: re-issue with `dsnode ca issue` from a CSR of this build)"
    )]
    NotP256(String),
    /// The bound Ed25519 signing key, or its proof of possession, is
    /// missing, repeated or malformed.
    #[error("Ed25519 signing key binding (`urn:dsnode:ed25519:` SAN URI): {0}")]
    Binding(String),
    /// An attribute is missing, repeated or unknown.
    #[error("certificate attribute problem: {0}")]
    Attribute(String),
    /// An attribute's value is invalid.
    #[error("certificate attribute: {0}")]
    Id(#[from] IdError),
    /// A host name for the certificate is not a DNS name or IP address.
    #[error("invalid host `{0}`: expected a DNS name (letters, digits, '-', '.') or an IP address")]
    Host(String),
    /// rcgen refused to build the object.
    #[error("could not build the {what}: {source}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The key could not be used.
    #[error(transparent)]
    Key(#[from] super::key::KeyError),
}

/// A host name a node certificate is valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl FromStr for Host {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self, CertError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(Host::Dns(s.to_ascii_lowercase()))
        } else {
            Err(CertError::Host(s.to_owned()))
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Dns(d) => f.write_str(d),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Host {
    pub(crate) fn to_san(&self) -> Result<rcgen::SanType, CertError> {
        Ok(match self {
            Host::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            Host::Dns(d) => rcgen::SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| CertError::Host(d.clone()))?,
            ),
        })
    }
}

/// The DNS and IP names a certificate (DER) is valid for.
pub fn hosts_of(der: &[u8]) -> Result<Vec<Host>, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Malformed {
        expected: "DER X.509 certificate",
        detail: e.to_string(),
    })?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Attribute(format!("unreadable subject alternative names: {e}")))?;
    let mut hosts = Vec::new();
    for name in sans
        .map(|s| s.value.general_names.as_slice())
        .unwrap_or(&[])
    {
        match name {
            GeneralName::DNSName(d) => hosts.push(d.parse()?),
            GeneralName::IPAddress(ip) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                    hosts.push(Host::Ip(IpAddr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                    hosts.push(Host::Ip(IpAddr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(hosts)
}

/// Makes a PEM certificate signing request for the TLS key `tls`, binding
/// the signing key `key` (with its proof of possession, see the module
/// docs), naming `participant` (subject common name) and the `hosts` the
/// node will listen on. The CA decides roles and region; a CSR cannot ask
/// for them.
pub fn make_csr(
    key: &NodeKey,
    tls: &P256Key,
    participant: &ParticipantId,
    hosts: &[Host],
) -> Result<String, CertError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, participant.as_str());
    params.subject_alt_names = hosts.iter().map(Host::to_san).collect::<Result<_, _>>()?;
    let pop = key
        .signing_key()
        .sign(&binding_message(tls.public_key_der()));
    params
        .subject_alt_names
        .push(uri_san(ed25519_uri(&key.public_key()))?);
    params.subject_alt_names.push(uri_san(format!(
        "{URN_ED25519_POP}{}",
        BASE64URL_NOPAD.encode(&pop.to_bytes())
    ))?);
    let kp = tls.rcgen_key_pair()?;
    let build = |source| CertError::Build {
        what: "certificate signing request",
        source,
    };
    params
        .serialize_request(&kp)
        .and_then(|csr| csr.pem())
        .map_err(build)
}

fn ed25519_uri(key: &[u8; 32]) -> String {
    format!("{URN_ED25519}{}", BASE64URL_NOPAD.encode(key))
}

fn uri_san(uri: String) -> Result<rcgen::SanType, CertError> {
    rcgen::string::Ia5String::try_from(uri.as_str())
        .map(rcgen::SanType::URI)
        .map_err(|_| CertError::Attribute(format!("`{uri}` is not ASCII")))
}

/// The Ed25519 public key in the value of a `urn:dsnode:ed25519:` URI.
fn decode_ed25519(value: &str) -> Result<[u8; 32], CertError> {
    let malformed = || {
        CertError::Binding(format!(
            "`{URN_ED25519}{value}` is not an Ed25519 public key (expected 32 bytes in unpadded base64url)"
        ))
    };
    let bytes: [u8; 32] = BASE64URL_NOPAD
        .decode(value.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    match VerifyingKey::from_bytes(&bytes) {
        Ok(k) if !k.is_weak() => Ok(bytes),
        _ => Err(malformed()),
    }
}

/// Checks the binding a CSR carries (see the module docs) for the TLS key
/// whose SubjectPublicKeyInfo (DER) is `tls_spki`: returns the bound
/// Ed25519 key, once its proof of possession verifies, and the CSR's other
/// subject alternative names.
pub fn csr_binding(
    sans: &[rcgen::SanType],
    tls_spki: &[u8],
) -> Result<([u8; 32], Vec<rcgen::SanType>), CertError> {
    let (mut key, mut pop, mut rest) = (None, None, Vec::new());
    for san in sans {
        let rcgen::SanType::URI(uri) = san else {
            rest.push(san.clone());
            continue;
        };
        if let Some(k) = uri.as_str().strip_prefix(URN_ED25519) {
            if key.replace(decode_ed25519(k)?).is_some() {
                return Err(CertError::Binding("the CSR names more than one".into()));
            }
        } else if let Some(p) = uri.as_str().strip_prefix(URN_ED25519_POP) {
            let sig: [u8; 64] = BASE64URL_NOPAD
                .decode(p.as_bytes())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    CertError::Binding(format!(
                        "the proof of possession `{URN_ED25519_POP}{p}` is not a signature (expected 64 bytes in unpadded base64url)"
                    ))
                })?;
            if pop.replace(Signature::from_bytes(&sig)).is_some() {
                return Err(CertError::Binding(
                    "the CSR carries more than one proof of possession".into(),
                ));
            }
        } else {
            rest.push(san.clone());
        }
    }
    let key = key.ok_or_else(|| {
        CertError::Binding(
            "the CSR binds no Ed25519 signing key (a CSR made by an earlier dsnode: make one with this build)"
                .into(),
        )
    })?;
    let pop = pop.ok_or_else(|| {
        CertError::Binding(format!(
            "the CSR carries no proof of possession (`{URN_ED25519_POP}…` SAN URI)"
        ))
    })?;
    let verifying = VerifyingKey::from_bytes(&key)
        .map_err(|_| CertError::Binding("not an Ed25519 public key".into()))?;
    verifying
        .verify_strict(&binding_message(tls_spki), &pop)
        .map_err(|_| {
            CertError::Binding(format!(
                "the proof of possession does not verify: node {} did not sign this CSR's TLS key",
                NodeId::from_public_key(&key)
            ))
        })?;
    Ok((key, rest))
}

/// The SAN URIs that carry what the CA attests, and the bound Ed25519 key.
pub(crate) fn attribute_sans(
    participant: &ParticipantId,
    ed25519: &[u8; 32],
    roles: &RoleSet,
    region: Option<&Region>,
) -> Result<Vec<rcgen::SanType>, CertError> {
    let mut uris = vec![
        format!("{URN_PARTICIPANT}{participant}"),
        ed25519_uri(ed25519),
    ];
    uris.extend(roles.iter().map(|r| format!("{URN_ROLE}{r}")));
    uris.extend(region.map(|r| format!("{URN_REGION}{r}")));
    uris.into_iter().map(uri_san).collect()
}

/// The TLS key of a certificate (DER): its SubjectPublicKeyInfo (DER).
pub fn tls_public_key_of(der: &[u8]) -> Result<Vec<u8>, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Malformed {
        expected: "DER X.509 certificate",
        detail: e.to_string(),
    })?;
    Ok(cert.public_key().raw.to_vec())
}

/// The kind of a public key (an X.509 SubjectPublicKeyInfo), as far as
/// dsnode tells them apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256: TLS keys and the CA key.
    P256,
    /// Ed25519: the key of certificates, CSRs and CAs of earlier builds.
    Ed25519,
    /// Anything else: its algorithm OID and parameters (a curve OID).
    Other(String),
}

impl KeyKind {
    /// The kind of `spki`.
    pub fn of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Self {
        let alg = spki.algorithm.algorithm.to_id_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        match (alg.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyKind::P256,
            (OID_ED25519, _) => KeyKind::Ed25519,
            (_, curve) => KeyKind::Other(format!(
                "algorithm {alg}, parameters {}",
                curve.unwrap_or("none")
            )),
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::P256 => write!(f, "ECDSA P-256"),
            KeyKind::Ed25519 => write!(f, "Ed25519, {OID_ED25519}"),
            KeyKind::Other(what) => f.write_str(what),
        }
    }
}

/// Refuses a key that is not ECDSA P-256.
fn check_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CertError> {
    match KeyKind::of(spki) {
        KeyKind::P256 => Ok(()),
        other => Err(CertError::NotP256(other.to_string())),
    }
}

/// A participant's identity, read from a certificate that TLS (or the CA)
/// has already verified. This is what handlers see of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Fingerprint of the Ed25519 signing key the certificate binds.
    pub node_id: NodeId,
    /// Raw Ed25519 public key the certificate binds, for checking the
    /// peer's signatures (not the certificate's own, TLS, key).
    pub public_key: [u8; 32],
    /// Participant the CA issued the certificate to.
    pub participant: ParticipantId,
    /// Roles the CA attested.
    pub roles: RoleSet,
    /// Region the CA attested, if any.
    pub region: Option<Region>,
    /// Certificate serial number (big-endian bytes), to match CRL entries.
    pub serial: Vec<u8>,
    /// End of the certificate's validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. This does not verify the
    /// certificate's signature: call it only on certificates a verifier
    /// (rustls, or [`super::ca`]) has accepted.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Malformed {
            expected: "DER X.509 certificate",
            detail: e.to_string(),
        })?;
        Self::from_cert(&cert)
    }

    pub(crate) fn from_cert(cert: &X509Certificate<'_>) -> Result<Self, CertError> {
        check_p256(cert.public_key())?;
        let mut public_key = None;
        let mut participant = None;
        let mut roles = RoleSet::default();
        let mut region = None;
        let sans = cert.subject_alternative_name().map_err(|e| {
            CertError::Attribute(format!("unreadable subject alternative names: {e}"))
        })?;
        let names = sans
            .map(|s| s.value.general_names.as_slice())
            .unwrap_or(&[]);
        for name in names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            if let Some(p) = uri.strip_prefix(URN_PARTICIPANT) {
                if participant.replace(p.parse::<ParticipantId>()?).is_some() {
                    return Err(CertError::Attribute("more than one participant".into()));
                }
            } else if let Some(k) = uri.strip_prefix(URN_ED25519) {
                if public_key.replace(decode_ed25519(k)?).is_some() {
                    return Err(CertError::Binding("more than one".into()));
                }
            } else if let Some(r) = uri.strip_prefix(URN_ROLE) {
                roles.insert(r.parse()?);
            } else if let Some(r) = uri.strip_prefix(URN_REGION) {
                if region.replace(r.parse::<Region>()?).is_some() {
                    return Err(CertError::Attribute("more than one region".into()));
                }
            } else if uri.starts_with(URN_PREFIX) {
                return Err(CertError::Attribute(format!(
                    "unknown attribute `{uri}`: this node understands participant, ed25519, role and region"
                )));
            }
        }
        let participant = participant.ok_or_else(|| {
            CertError::Attribute(
                "no participant (`urn:dsnode:participant:…` SAN): not a dsnode node certificate"
                    .into(),
            )
        })?;
        let public_key = public_key.ok_or_else(|| {
            CertError::Binding(
                "missing: a dsnode node certificate binds the node's Ed25519 signing key (a certificate made by an earlier dsnode has none: re-issue with `dsnode ca issue`)"
                    .into(),
            )
        })?;
        Ok(Self {
            node_id: NodeId::from_public_key(&public_key),
            public_key,
            participant,
            roles,
            region,
            serial: cert.raw_serial().to_vec(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether the CA attested `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(role)
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (participant {}, roles {}, region {})",
            self.node_id,
            self.participant,
            self.roles,
            self.region.as_ref().map_or("none", Region::as_str)
        )
    }
}

/// Decodes the first certificate of a PEM file.
pub fn cert_der_from_pem(
    pem: &[u8],
) -> Result<rustls_pki_types::CertificateDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem).map_err(|e| CertError::Malformed {
        expected: "PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(
            "127.0.0.1".parse::<Host>().expect("ip").to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            "Node-1.example".parse::<Host>().expect("dns").to_string(),
            "node-1.example"
        );
        for bad in ["", "-a", "a..b", "a b", "a/b"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[test]
    fn csr_carries_the_tls_key_and_binds_the_signing_key() {
        let key = NodeKey::generate();
        let tls = P256Key::generate().expect("tls key");
        let participant: ParticipantId = "acme".parse().expect("participant");
        let pem = make_csr(
            &key,
            &tls,
            &participant,
            &["localhost".parse().expect("host")],
        )
        .expect("csr");
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).expect("parse csr");
        use rcgen::PublicKeyData;
        assert_eq!(
            params.public_key.subject_public_key_info(),
            tls.public_key_der()
        );
        let (bound, rest) =
            csr_binding(&params.params.subject_alt_names, tls.public_key_der()).expect("binding");
        assert_eq!(bound, key.public_key());
        assert_eq!(
            rest,
            vec![
                "localhost"
                    .parse::<Host>()
                    .expect("host")
                    .to_san()
                    .expect("san")
            ]
        );
        // The same proof for another TLS key does not verify.
        let other = P256Key::generate().expect("tls key");
        let err = csr_binding(&params.params.subject_alt_names, other.public_key_der())
            .expect_err("another TLS key");
        assert!(
            err.to_string()
                .contains("proof of possession does not verify"),
            "{err}"
        );
    }

    /// A certificate (self-signed, P-256) with these SAN URIs.
    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let tls = P256Key::generate().expect("tls key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| uri_san((*u).to_owned()).expect("uri"))
            .collect();
        params
            .self_signed(&tls.rcgen_key_pair().expect("pair"))
            .expect("cert")
            .der()
            .to_vec()
    }

    #[test]
    fn a_certificate_whose_bound_ed25519_key_is_missing_or_malformed_is_refused() {
        let key = NodeKey::generate();
        let good = ed25519_uri(&key.public_key());
        let id = PeerIdentity::from_der(&cert_with(&["urn:dsnode:participant:acme", &good]))
            .expect("bound");
        assert_eq!(id.public_key, key.public_key());
        assert_eq!(id.node_id, key.node_id());

        let missing = PeerIdentity::from_der(&cert_with(&["urn:dsnode:participant:acme"]))
            .expect_err("missing");
        let msg = missing.to_string();
        assert!(
            msg.contains("urn:dsnode:ed25519:") && msg.contains("missing"),
            "{msg}"
        );

        let short = format!("{URN_ED25519}{}", BASE64URL_NOPAD.encode(&[7u8; 31]));
        for bad in [
            short.as_str(),
            "urn:dsnode:ed25519:not*base64",
            "urn:dsnode:ed25519:",
        ] {
            let err = PeerIdentity::from_der(&cert_with(&["urn:dsnode:participant:acme", bad]))
                .expect_err(bad);
            let msg = err.to_string();
            assert!(
                msg.contains("Ed25519 signing key binding")
                    && msg.contains("is not an Ed25519 public key"),
                "{msg}"
            );
        }
        let twice =
            PeerIdentity::from_der(&cert_with(&["urn:dsnode:participant:acme", &good, &good]))
                .expect_err("twice");
        assert!(twice.to_string().contains("more than one"), "{twice}");
    }
}
