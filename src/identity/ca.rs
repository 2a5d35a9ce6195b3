//! The data-space certificate authority, run by the platform operator.
//!
//! A CA directory holds `ca.key` (ECDSA P-256, PKCS#8, mode 0600), `ca.crt`
//! (self-signed) and `crl.pem` (the current signed revocation list; the
//! operator copies it to every node's data dir). The CA signs node
//! certificates from CSRs and attests participant, roles and region in them
//! (see [`super::cert`]), after checking that the CSR's Ed25519 signing key
//! signed its TLS key. Certificates, CSRs and CRLs are built with rcgen
//! and read back with x509-parser; there is no hand-written DER here. CA
//! certificate, node certificates and CRLs are all ECDSA P-256 with
//! SHA-256; a CA directory made by an earlier build (an Ed25519 `ca.key`)
//! is refused with what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::cert::{self, CertError, Host, KeyKind, PeerIdentity};
use super::key::KeyError;
use super::{NodeKey, P256Key, ParticipantId, Region, RoleSet};
use crate::fsutil::{self, FileError};

/// Names of the files in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA certificate file.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The current CRL file.
pub const CRL_FILE: &str = "crl.pem";

/// How long a CRL is valid by default; nodes refuse an expired CRL, so the
/// operator re-signs it (`dsnode ca crl`) before then.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default validity of a node certificate.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of the CA certificate.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start being valid a little in the past to absorb clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The CA key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate or CSR could not be made or read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The CSR is unreadable, badly signed or asks for something unsupported.
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    /// A certificate was not issued by this CA.
    #[error("{0} was not issued by this CA (its signature does not verify with {CA_CERT_FILE})")]
    NotOurs(String),
    /// The CRL is unreadable or not signed by this CA.
    #[error("{path}: {detail}")]
    Crl {
        /// The CRL file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The CA directory was made by an earlier build (an Ed25519 CA).
    #[error(
        "{0} is an Ed25519 CA key made by an earlier dsnode; TLS now needs an ECDSA P-256 CA (gRPC's C core and browsers refuse Ed25519): make a new CA with `dsnode ca init`, give its ca.crt to every node, and re-issue every node certificate with `dsnode ca issue`"
    )]
    Ed25519Ca(String),
    /// The CA directory already holds a CA.
    #[error("{0} already holds a CA key; refusing to overwrite it")]
    Exists(String),
    /// A request to issue is invalid.
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused to build the object.
    #[error("could not build the {what}: {source}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

fn build_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Build { what, source }
}

/// What the operator decides when signing a node certificate.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// Roles to attest; at least one.
    pub roles: RoleSet,
    /// Region to attest, if any.
    pub region: Option<Region>,
    /// Participant to attest; `None` takes the CSR's common name.
    pub participant: Option<ParticipantId>,
    /// Extra host names beyond those the CSR names.
    pub extra_hosts: Vec<Host>,
    /// Start of validity; `None` means now minus a small backdate.
    pub not_before: Option<OffsetDateTime>,
    /// End of validity; `None` means `not_before` plus [`DEFAULT_CERT_VALIDITY`].
    pub not_after: Option<OffsetDateTime>,
}

impl IssueRequest {
    /// A request for these roles with every other field at its default.
    pub fn new(roles: RoleSet) -> Self {
        Self {
            roles,
            region: None,
            participant: None,
            extra_hosts: Vec::new(),
            not_before: None,
            not_after: None,
        }
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug)]
pub struct Issued {
    /// PEM text.
    pub pem: String,
    /// What the certificate attests.
    pub identity: PeerIdentity,
}

/// One revoked certificate in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number, big-endian.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub at: OffsetDateTime,
}

/// The parsed contents of a CRL that this CA signed.
#[derive(Clone, Debug, Default)]
pub struct RevocationList {
    /// The CRL number; each new CRL increments it.
    pub number: u64,
    /// Revoked certificates.
    pub revoked: Vec<Revoked>,
    /// When the CRL expires (`nextUpdate`), if it says.
    pub next_update: Option<OffsetDateTime>,
}

/// The data-space CA: its key and certificate.
pub struct CertificateAuthority {
    key: P256Key,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// Makes a new CA named `name` in memory.
    pub fn generate(name: &str) -> Result<Self, CaError> {
        let key = P256Key::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dsnode data space");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .self_signed(&key.rcgen_key_pair()?)
            .map_err(build_err("CA certificate"))?;
        Ok(Self {
            key,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        })
    }

    /// Creates a CA in `dir`: `ca.key`, `ca.crt` and an empty signed
    /// `crl.pem`. Refuses a directory that already holds a CA key.
    pub fn init(dir: &Path, name: &str) -> Result<Self, CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(CaError::Exists(dir.display().to_string()));
        }
        fsutil::create_private_dir(dir)?;
        let ca = Self::generate(name)?;
        ca.key.save_new(&key_path)?;
        fsutil::write_atomic(
            &dir.join(CA_CERT_FILE),
            ca.cert_pem.as_bytes(),
            fsutil::PUBLIC_MODE,
        )?;
        let crl = ca.sign_crl(&RevocationList::default(), DEFAULT_CRL_VALIDITY)?;
        fsutil::write_atomic(&dir.join(CRL_FILE), crl.as_bytes(), fsutil::PUBLIC_MODE)?;
        Ok(ca)
    }

    /// Loads the CA from `dir`, checking that key and certificate belong
    /// together.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        let key = P256Key::load(&key_path).map_err(|e| match e {
            KeyError::Format { .. } if NodeKey::load(&key_path).is_ok() => {
                CaError::Ed25519Ca(key_path.display().to_string())
            }
            other => other.into(),
        })?;
        let cert_path = dir.join(CA_CERT_FILE);
        let cert_pem = fsutil::read_to_string(&cert_path)?;
        let cert_der = cert::cert_der_from_pem(cert_pem.as_bytes())?.to_vec();
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| {
            CaError::Invalid(format!("{}: not a certificate: {e}", cert_path.display()))
        })?;
        if cert.public_key().raw != key.public_key_der() {
            return Err(CaError::Invalid(format!(
                "{} does not match {CA_KEY_FILE}: they belong to different CAs",
                cert_path.display()
            )));
        }
        Ok(Self {
            key,
            cert_der,
            cert_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn issuer(&self) -> Result<Issuer<'static, rcgen::KeyPair>, CaError> {
        Issuer::from_ca_cert_der(&self.cert_der.clone().into(), self.key.rcgen_key_pair()?)
            .map_err(build_err("CA issuer"))
    }

    /// Signs a node certificate for the TLS key in `csr_pem`. The CSR's
    /// signature is checked and its key must be ECDSA P-256; the Ed25519
    /// signing key it binds must have signed that TLS key (see
    /// [`super::cert`]). Only its common name (the participant, unless the
    /// request overrides it), its DNS/IP names and the bound key are taken
    /// from it: roles and region come from the operator.
    pub fn issue(&self, csr_pem: &str, req: &IssueRequest) -> Result<Issued, CaError> {
        if req.roles.is_empty() {
            return Err(CaError::Invalid(
                "no roles given: a node certificate attests at least one of publisher, consumer, auditor".into(),
            ));
        }
        let not_a_csr = || {
            CaError::Csr(
                "not a PEM certificate signing request (\"-----BEGIN CERTIFICATE REQUEST-----\")"
                    .into(),
            )
        };
        let der = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(|_| not_a_csr())?
        };
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CaError::Csr(
                "its signature does not verify (the CSR was altered or is not signed by its key)"
                    .into(),
            ),
            rcgen::Error::CouldNotParseCertificationRequest => not_a_csr(),
            other => CaError::Csr(other.to_string()),
        })?;
        // The key itself (rcgen names only the signature algorithm).
        let tls_spki = {
            use x509_parser::certification_request::X509CertificationRequest;
            let (_, parsed) = X509CertificationRequest::from_der(&der).map_err(|_| not_a_csr())?;
            let spki = &parsed.certification_request_info.subject_pki;
            let kind = KeyKind::of(spki);
            if kind != KeyKind::P256 {
                let old = if kind == KeyKind::Ed25519 {
                    " (an Ed25519 CSR made by an earlier dsnode: make a new one with this build, `dsnode init` or `dsnode key new`)"
                } else {
                    ""
                };
                return Err(CaError::Csr(format!(
                    "its key is not ECDSA P-256 ({kind}); dsnode TLS keys are P-256{old}"
                )));
            }
            spki.raw.to_vec()
        };
        let (ed25519, requested) = cert::csr_binding(&csr.params.subject_alt_names, &tls_spki)?;
        let participant = match &req.participant {
            Some(p) => p.clone(),
            None => {
                let cn = csr
                    .params
                    .distinguished_name
                    .get(&DnType::CommonName)
                    .and_then(|v| match v {
                        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
                        _ => None,
                    })
                    .ok_or_else(|| CaError::Csr("it names no participant (subject CN)".into()))?;
                cn.parse().map_err(CertError::from)?
            }
        };
        let mut sans = Vec::new();
        for san in &requested {
            match san {
                rcgen::SanType::DnsName(_) | rcgen::SanType::IpAddress(_) => sans.push(san.clone()),
                other => {
                    return Err(CaError::Csr(format!(
                        "it asks for a subject alternative name other than a DNS name or IP address ({other:?})"
                    )));
                }
            }
        }
        for host in &req.extra_hosts {
            let san = host.to_san()?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        sans.extend(cert::attribute_sans(
            &participant,
            &ed25519,
            &req.roles,
            req.region.as_ref(),
        )?);

        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, participant.as_str());
        params.subject_alt_names = sans;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = req.not_before.unwrap_or(now - BACKDATE);
        params.not_after = req
            .not_after
            .unwrap_or(params.not_before + DEFAULT_CERT_VALIDITY);
        if params.not_after <= params.not_before {
            return Err(CaError::Invalid(
                "the certificate would expire before it starts".into(),
            ));
        }
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(build_err("node certificate"))?;
        let identity = PeerIdentity::from_der(signed.der())?;
        Ok(Issued {
            pem: signed.pem(),
            identity,
        })
    }

    /// Checks that `cert_pem` was signed by this CA and returns what it
    /// attests. Validity dates are not checked here.
    pub fn check_issued(&self, cert_pem: &[u8], what: &str) -> Result<PeerIdentity, CaError> {
        verify_issued_by(&self.cert_der, cert_pem, what)
    }

    /// Signs a CRL listing `list.revoked`, valid for `validity` from now.
    pub fn sign_crl(&self, list: &RevocationList, validity: Duration) -> Result<String, CaError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + validity,
            crl_number: SerialNumber::from_slice(&list.number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: list
                .revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer()?)
            .and_then(|crl| crl.pem())
            .map_err(build_err("CRL"))
    }

    /// Reads a CRL file, checking that this CA signed it.
    pub fn read_crl(&self, path: &Path) -> Result<RevocationList, CaError> {
        read_crl(&self.cert_der, path)
    }
}

/// Checks that `cert_pem` is signed by the CA certificate `ca_der` and
/// returns what it attests. Validity dates are not checked.
pub fn verify_issued_by(
    ca_der: &[u8],
    cert_pem: &[u8],
    what: &str,
) -> Result<PeerIdentity, CaError> {
    verify_der_issued_by(ca_der, &cert::cert_der_from_pem(cert_pem)?, what)
}

/// Like [`verify_issued_by`] for a DER certificate, which must be exactly
/// one certificate (no bytes after it).
pub fn verify_der_issued_by(
    ca_der: &[u8],
    cert_der: &[u8],
    what: &str,
) -> Result<PeerIdentity, CaError> {
    let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|e| CertError::Malformed {
        expected: "X.509 certificate",
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CertError::Malformed {
            expected: "exactly one DER certificate",
            detail: format!("{what} has {} bytes after the certificate", rest.len()),
        }
        .into());
    }
    if !signed_algorithm_repeated(cert_der, cert.tbs_certificate.as_ref()) {
        return Err(CertError::Malformed {
            expected: "X.509 certificate",
            detail: format!(
                "{what}'s signature algorithm is not byte for byte the one its signed part names (RFC 5280, 4.1.1.2)"
            ),
        }
        .into());
    }
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| CertError::Malformed {
        expected: "X.509 CA certificate",
        detail: e.to_string(),
    })?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| CaError::NotOurs(what.to_owned()))?;
    Ok(PeerIdentity::from_cert(&cert)?)
}

/// Whether the certificate's `signatureAlgorithm`, which the signature
/// does not cover, is byte for byte the `signature` field of its signed
/// `tbsCertificate` (RFC 5280, 4.1.1.2: "MUST contain the same algorithm
/// identifier"). x509-parser (through asn1-rs 0.7) accepts an algorithm
/// identifier whose OID carries another tag, so without this a byte of a
/// CA-verified certificate could change unnoticed (an evidence bundle
/// promises that no byte can).
fn signed_algorithm_repeated(cert_der: &[u8], tbs: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, Class, FromDer as _};
    /// The first DER element of `bytes` (whole, with its header), the
    /// element itself, and what follows it.
    fn element(bytes: &[u8]) -> Option<(&[u8], Any<'_>, &[u8])> {
        let (rest, any) = Any::from_der(bytes).ok()?;
        Some((&bytes[..bytes.len() - rest.len()], any, rest))
    }
    let outer = element(cert_der).map(|(_, any, _)| any.data);
    let Some(after_tbs) = outer.and_then(|body| body.strip_prefix(tbs)) else {
        return false;
    };
    let Some((outer_algorithm, _, _)) = element(after_tbs) else {
        return false;
    };
    // tbsCertificate: [0] version (optional), serialNumber, signature, …
    let Some((_, tbs, _)) = element(tbs) else {
        return false;
    };
    let Some((_, first, mut rest)) = element(tbs.data) else {
        return false;
    };
    if first.class() == Class::ContextSpecific && first.tag().0 == 0 {
        match element(rest) {
            Some((_, _serial, after)) => rest = after,
            None => return false,
        }
    }
    element(rest).is_some_and(|(signed_algorithm, _, _)| signed_algorithm == outer_algorithm)
}

/// Reads a CRL file and checks that the CA certificate `ca_der` signed it.
/// Expiry is not checked here (the TLS layer enforces it).
pub fn read_crl(ca_der: &[u8], path: &Path) -> Result<RevocationList, CaError> {
    parse_crl(ca_der, &fsutil::read(path)?, path)
}

/// Parses a PEM CRL read from `path` and checks that the CA certificate
/// `ca_der` signed it.
pub fn parse_crl(ca_der: &[u8], pem: &[u8], path: &Path) -> Result<RevocationList, CaError> {
    let crl_err = |detail: String| CaError::Crl {
        path: path.display().to_string(),
        detail,
    };
    let der = crl_der_from_pem(pem).map_err(|e| crl_err(e.to_string()))?;
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| crl_err(format!("not a certificate revocation list: {e}")))?;
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| crl_err(format!("CA certificate unreadable: {e}")))?;
    crl.verify_signature(ca.public_key())
        .map_err(|_| crl_err("not signed by this data space's CA".into()))?;
    let number = crl
        .crl_number()
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: r.raw_serial().to_vec(),
            at: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
        .collect();
    let next_update = crl
        .next_update()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.timestamp()).ok());
    Ok(RevocationList {
        number,
        revoked,
        next_update,
    })
}

/// Decodes a PEM CRL ("-----BEGIN X509 CRL-----").
pub fn crl_der_from_pem(
    pem: &[u8],
) -> Result<rustls_pki_types::CertificateRevocationListDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem).map_err(|e| {
        CertError::Malformed {
            expected: "PEM certificate revocation list (\"-----BEGIN X509 CRL-----\")",
            detail: e.to_string(),
        }
    })
}

/// A CA directory on disk: the CA plus its current CRL.
pub struct CaDir {
    dir: PathBuf,
    ca: CertificateAuthority,
}

impl CaDir {
    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            ca: CertificateAuthority::load(dir)?,
        })
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Path of the current CRL.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_FILE)
    }

    /// Adds the certificate in `cert_pem` to a new CRL, written over
    /// `crl.pem`. Returns the identity revoked and the new CRL's number.
    /// Revoking a certificate twice is harmless: the CRL is re-signed.
    pub fn revoke(&self, cert_pem: &[u8], what: &str) -> Result<(PeerIdentity, u64), CaError> {
        let identity = self.ca.check_issued(cert_pem, what)?;
        let mut list = self.ca.read_crl(&self.crl_path())?;
        if !list.revoked.iter().any(|r| r.serial == identity.serial) {
            list.revoked.push(Revoked {
                serial: identity.serial.clone(),
                at: OffsetDateTime::now_utc(),
            });
        }
        list.number += 1;
        self.write_crl(&list, DEFAULT_CRL_VALIDITY)?;
        Ok((identity, list.number))
    }

    /// Re-signs the current CRL with a fresh validity window.
    pub fn refresh_crl(&self, validity: Duration) -> Result<RevocationList, CaError> {
        let mut list = self.ca.read_crl(&self.crl_path())?;
        list.number += 1;
        self.write_crl(&list, validity)?;
        Ok(list)
    }

    fn write_crl(&self, list: &RevocationList, validity: Duration) -> Result<(), CaError> {
        let pem = self.ca.sign_crl(list, validity)?;
        fsutil::write_atomic(&self.crl_path(), pem.as_bytes(), fsutil::PUBLIC_MODE)?;
        Ok(())
    }
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets;
/// randomness keeps serials unique without CA-side state).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS generator is unavailable, which
    // also makes key generation impossible; fall back to a time-based
    // value rather than panic.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero octet, so the DER length is fixed
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn csr_for(key: &NodeKey, who: &str) -> String {
        cert::make_csr(
            key,
            &P256Key::generate().expect("tls key"),
            &who.parse().expect("participant"),
            &["localhost".parse().expect("host")],
        )
        .expect("csr")
    }

    #[test]
    fn issued_certificate_attests_what_the_operator_chose() {
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let key = NodeKey::generate();
        let mut req = IssueRequest::new(RoleSet::parse_list("publisher,auditor").expect("roles"));
        req.region = Some("CN-HE".parse().expect("region"));
        let issued = ca
            .issue(&csr_for(&key, "city-transport"), &req)
            .expect("issue");
        let id = &issued.identity;
        assert_eq!(id.node_id, key.node_id());
        assert_eq!(id.participant.as_str(), "city-transport");
        assert!(id.has_role(Role::Publisher) && id.has_role(Role::Auditor));
        assert!(!id.has_role(Role::Consumer));
        assert_eq!(id.region.as_ref().map(Region::as_str), Some("CN-HE"));
        assert_eq!(
            ca.check_issued(issued.pem.as_bytes(), "cert")
                .expect("ours"),
            *id
        );
    }

    #[test]
    fn the_unsigned_signature_algorithm_must_repeat_the_signed_one() {
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let req = IssueRequest::new(RoleSet::parse_list("publisher").expect("roles"));
        let issued = ca
            .issue(&csr_for(&NodeKey::generate(), "acme"), &req)
            .expect("issue");
        let der = cert::cert_der_from_pem(issued.pem.as_bytes()).expect("der");
        let ca_der = cert::cert_der_from_pem(ca.cert_pem().as_bytes()).expect("ca der");
        assert!(verify_der_issued_by(&ca_der, &der, "acme.crt").is_ok());
        // The certificate ends: signatureAlgorithm (SEQUENCE { OID
        // 1.2.840.10045.4.3.2, ecdsa-with-SHA256 }), then the signature
        // (BIT STRING of a DER ECDSA-Sig-Value, of varying length).
        let algorithm = [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ];
        let at = der
            .windows(algorithm.len())
            .rposition(|w| w == algorithm)
            .expect("outer signature algorithm");
        assert_eq!(der[at + algorithm.len()], 0x03, "the signature follows");
        // The OID's tag changed (0x06 → 0x0a): the parser takes it, the
        // signature (over the signed part only) still verifies.
        let mut retagged = der.to_vec();
        retagged[at + 2] = 0x0a;
        let err = verify_der_issued_by(&ca_der, &retagged, "acme.crt").expect_err("retagged");
        assert!(
            err.to_string().contains(
                "acme.crt's signature algorithm is not byte for byte the one its signed part names"
            ),
            "{err}"
        );
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let pem = csr_for(&NodeKey::generate(), "acme");
        let der = rustls_pki_types::CertificateSigningRequestDer::from(
            pem::parse(&pem).expect("pem").into_contents(),
        );
        let mut bytes = der.as_ref().to_vec();
        // Flip a byte inside the subject (participant name), keeping DER valid.
        let pos = bytes
            .windows(4)
            .position(|w| w == b"acme")
            .expect("participant in CSR");
        bytes[pos] = b'b';
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
        let err = ca.issue(
            &tampered,
            &IssueRequest::new(RoleSet::parse_list("consumer").expect("r")),
        );
        let msg = err.expect_err("tampered").to_string();
        assert!(msg.contains("signature does not verify"), "{msg}");
    }

    /// A CSR for `tls` carrying these SAN URIs (no hosts).
    fn csr_with_uris(tls: &rcgen::KeyPair, uris: &[String]) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "acme");
        params.subject_alt_names = uris
            .iter()
            .map(|u| {
                rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u.as_str()).expect("ascii"))
            })
            .collect();
        params
            .serialize_request(tls)
            .and_then(|c| c.pem())
            .expect("csr")
    }

    #[test]
    fn a_csr_must_prove_possession_of_the_signing_key_it_binds() {
        use ed25519_dalek::Signer;
        let b64 = data_encoding::BASE64URL_NOPAD;
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let req = IssueRequest::new(RoleSet::parse_list("consumer").expect("r"));
        let tls = P256Key::generate().expect("tls key");
        let (victim, thief) = (NodeKey::generate(), NodeKey::generate());
        let pop = thief
            .signing_key()
            .sign(&cert::binding_message(tls.public_key_der()));
        let forged = csr_with_uris(
            &tls.rcgen_key_pair().expect("pair"),
            &[
                format!("urn:dsnode:ed25519:{}", b64.encode(&victim.public_key())),
                format!("urn:dsnode:ed25519-pop:{}", b64.encode(&pop.to_bytes())),
            ],
        );
        let msg = ca.issue(&forged, &req).expect_err("forged").to_string();
        assert!(msg.contains("proof of possession does not verify"), "{msg}");
        assert!(msg.contains(victim.node_id().as_str()), "{msg}");

        let unbound = csr_with_uris(&tls.rcgen_key_pair().expect("pair"), &[]);
        let msg = ca.issue(&unbound, &req).expect_err("unbound").to_string();
        assert!(msg.contains("binds no Ed25519 signing key"), "{msg}");

        // An Ed25519 CSR, as earlier builds made them.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let old = csr_with_uris(&ed, &[]);
        let msg = ca.issue(&old, &req).expect_err("ed25519 csr").to_string();
        assert!(
            msg.contains("not ECDSA P-256") && msg.contains("earlier dsnode"),
            "{msg}"
        );
    }

    #[test]
    fn a_ca_dir_of_an_earlier_build_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        CertificateAuthority::init(&ca_dir, "test CA").expect("init");
        let ca = CertificateAuthority::load(&ca_dir).expect("load");
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).expect("ca cert");
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1",
            "id-ecPublicKey"
        );
        std::fs::remove_file(ca_dir.join(CA_KEY_FILE)).expect("rm");
        NodeKey::generate()
            .save_new(&ca_dir.join(CA_KEY_FILE))
            .expect("an Ed25519 ca.key");
        let msg = CertificateAuthority::load(&ca_dir)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            msg.contains("Ed25519 CA key made by an earlier dsnode")
                && msg.contains("dsnode ca init")
                && msg.contains("dsnode ca issue"),
            "{msg}"
        );
    }

    #[test]
    fn certificate_of_another_ca_is_not_ours() {
        let ours = CertificateAuthority::generate("ours").expect("ca");
        let theirs = CertificateAuthority::generate("theirs").expect("ca");
        let issued = theirs
            .issue(
                &csr_for(&NodeKey::generate(), "acme"),
                &IssueRequest::new(RoleSet::parse_list("consumer").expect("r")),
            )
            .expect("issue");
        let err = ours
            .check_issued(issued.pem.as_bytes(), "acme.crt")
            .expect_err("foreign");
        assert!(err.to_string().contains("was not issued by this CA"));
    }

    #[test]
    fn revocation_adds_to_a_new_signed_crl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        CertificateAuthority::init(&ca_dir, "test CA").expect("init");
        assert!(CertificateAuthority::init(&ca_dir, "again").is_err());
        let ca = CaDir::open(&ca_dir).expect("open");
        let empty = ca.ca().read_crl(&ca.crl_path()).expect("crl");
        assert!(empty.revoked.is_empty());
        let issued = ca
            .ca()
            .issue(
                &csr_for(&NodeKey::generate(), "acme"),
                &IssueRequest::new(RoleSet::parse_list("consumer").expect("r")),
            )
            .expect("issue");
        let (who, number) = ca
            .revoke(issued.pem.as_bytes(), "acme.crt")
            .expect("revoke");
        assert_eq!(who.node_id, issued.identity.node_id);
        let list = ca.ca().read_crl(&ca.crl_path()).expect("crl");
        assert_eq!(list.number, number);
        assert_eq!(list.revoked.len(), 1);
        assert_eq!(list.revoked[0].serial, issued.identity.serial);
    }
}
