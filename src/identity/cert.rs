//! Node certificates and certificate signing requests.
//!
//! A node certificate is an ordinary X.509 end-entity certificate over the
//! node's Ed25519 key. What the CA attests about the node travels as
//! subject-alternative-name URIs, one attribute each (the way SPIFFE and
//! service meshes carry workload identity):
//!
//! - `urn:dsnode:participant:<id>` exactly once,
//! - `urn:dsnode:role:<role>` once per role,
//! - `urn:dsnode:region:<code>` at most once.
//!
//! DNS and IP SANs name the host the node listens on, so clients verify the
//! server's address like any TLS client. Unknown `urn:dsnode:` attributes
//! make the certificate unusable (fail closed): a node never half-understands
//! what the CA attested.

use std::net::IpAddr;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdError, NodeId, NodeKey, ParticipantId, Region, Role, RoleSet};

const URN_PARTICIPANT: &str = "urn:dsnode:participant:";
const URN_ROLE: &str = "urn:dsnode:role:";
const URN_REGION: &str = "urn:dsnode:region:";
const URN_PREFIX: &str = "urn:dsnode:";
/// OID of Ed25519 public keys (RFC 8410).
const OID_ED25519: &str = "1.3.101.112";

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
    /// The key is not Ed25519.
    #[error("certificate key is not Ed25519 (algorithm {0}); dsnode node keys are Ed25519")]
    NotEd25519(String),
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

/// Makes a PEM certificate signing request for `key`, naming `participant`
/// (subject common name) and the `hosts` the node will listen on. The CA
/// decides roles and region; a CSR cannot ask for them.
pub fn make_csr(
    key: &NodeKey,
    participant: &ParticipantId,
    hosts: &[Host],
) -> Result<String, CertError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, participant.as_str());
    params.subject_alt_names = hosts.iter().map(Host::to_san).collect::<Result<_, _>>()?;
    let kp = key.rcgen_key_pair()?;
    let build = |source| CertError::Build {
        what: "certificate signing request",
        source,
    };
    params
        .serialize_request(&kp)
        .and_then(|csr| csr.pem())
        .map_err(build)
}

/// The SAN URIs that carry what the CA attests.
pub(crate) fn attribute_sans(
    participant: &ParticipantId,
    roles: &RoleSet,
    region: Option<&Region>,
) -> Result<Vec<rcgen::SanType>, CertError> {
    let mut uris = vec![format!("{URN_PARTICIPANT}{participant}")];
    uris.extend(roles.iter().map(|r| format!("{URN_ROLE}{r}")));
    uris.extend(region.map(|r| format!("{URN_REGION}{r}")));
    uris.into_iter()
        .map(|u| {
            rcgen::string::Ia5String::try_from(u.as_str())
                .map(rcgen::SanType::URI)
                .map_err(|_| CertError::Attribute(format!("`{u}` is not ASCII")))
        })
        .collect()
}

/// A participant's identity, read from a certificate that TLS (or the CA)
/// has already verified. This is what handlers see of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Fingerprint of the certificate's Ed25519 key.
    pub node_id: NodeId,
    /// Raw Ed25519 public key, for checking the peer's signatures.
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
        let spki = cert.public_key();
        let alg = spki.algorithm.algorithm.to_id_string();
        if alg != OID_ED25519 {
            return Err(CertError::NotEd25519(alg));
        }
        let public_key: [u8; 32] =
            spki.subject_public_key
                .data
                .as_ref()
                .try_into()
                .map_err(|_| {
                    CertError::NotEd25519("Ed25519 OID with a key that is not 32 bytes".into())
                })?;

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
            } else if let Some(r) = uri.strip_prefix(URN_ROLE) {
                roles.insert(r.parse()?);
            } else if let Some(r) = uri.strip_prefix(URN_REGION) {
                if region.replace(r.parse::<Region>()?).is_some() {
                    return Err(CertError::Attribute("more than one region".into()));
                }
            } else if uri.starts_with(URN_PREFIX) {
                return Err(CertError::Attribute(format!(
                    "unknown attribute `{uri}`: this node understands participant, role and region"
                )));
            }
        }
        let participant = participant.ok_or_else(|| {
            CertError::Attribute(
                "no participant (`urn:dsnode:participant:…` SAN): not a dsnode node certificate"
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
    fn csr_carries_the_key_and_participant() {
        let key = NodeKey::generate();
        let participant: ParticipantId = "acme".parse().expect("participant");
        let pem = make_csr(&key, &participant, &["localhost".parse().expect("host")]).expect("csr");
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).expect("parse csr");
        use rcgen::PublicKeyData;
        assert_eq!(params.public_key.der_bytes(), key.public_key());
    }
}
