//! `dsnode ca …`: the data-space certificate authority (init, issue,
//! revoke, crl).

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::args::CaCommand;
use super::output::{Output, identity_json};
use super::parse_hosts;
use crate::fsutil;
use crate::identity::RoleSet;
use crate::identity::ca::{self, CaDir, CertificateAuthority, IssueRequest};

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

pub(super) fn ca_command(command: CaCommand) -> Result<Output> {
    match command {
        CaCommand::Init { ca_dir, name, .. } => {
            CertificateAuthority::init(&ca_dir, &name)?;
            Ok(Output {
                text: format!(
                    "created CA `{name}` in {0}: ca.key (ECDSA P-256, mode 0600), ca.crt, crl.pem\n\
                     give ca.crt and crl.pem to every node; keep ca.key offline",
                    ca_dir.display()
                ),
                json: json!({"ca_dir": ca_dir, "name": name, "ca_cert": ca_dir.join(ca::CA_CERT_FILE), "crl": ca_dir.join(ca::CRL_FILE)}),
            })
        }
        CaCommand::Issue {
            ca_dir,
            csr,
            roles,
            region,
            participant,
            hosts,
            days: d,
            out,
            ..
        } => {
            let ca = CertificateAuthority::load(&ca_dir)?;
            let csr_pem = fsutil::read_to_string(&csr)?;
            let mut req = IssueRequest::new(RoleSet::parse_list(&roles)?);
            req.region = region.as_deref().map(str::parse).transpose()?;
            req.participant = participant.as_deref().map(str::parse).transpose()?;
            req.extra_hosts = parse_hosts(&hosts)?;
            let now = time::OffsetDateTime::now_utc();
            req.not_after = Some(now + days(d));
            let issued = ca
                .issue(&csr_pem, &req)
                .with_context(|| format!("cannot issue a certificate for {}", csr.display()))?;
            fsutil::write_atomic(&out, issued.pem.as_bytes(), fsutil::PUBLIC_MODE)?;
            Ok(Output {
                text: format!(
                    "issued {} for node {}\n  participant {}\n  roles       {}\n  region      {}\n  valid for   {d} days",
                    out.display(),
                    issued.identity.node_id,
                    issued.identity.participant,
                    issued.identity.roles,
                    issued
                        .identity
                        .region
                        .as_ref()
                        .map_or("none", |r| r.as_str()),
                ),
                json: json!({"cert": out, "identity": identity_json(&issued.identity), "days": d}),
            })
        }
        CaCommand::Revoke { ca_dir, cert, .. } => {
            let dir = CaDir::open(&ca_dir)?;
            let pem = fsutil::read(&cert)?;
            let (who, number) = dir.revoke(&pem, &cert.display().to_string())?;
            Ok(Output {
                text: format!(
                    "revoked node {} (participant {}); wrote CRL #{number} to {}\n\
                     copy it to every node's data dir as crl.pem (nodes reload it on change or SIGHUP)",
                    who.node_id,
                    who.participant,
                    dir.crl_path().display()
                ),
                json: json!({"revoked": identity_json(&who), "crl_number": number, "crl": dir.crl_path()}),
            })
        }
        CaCommand::Crl {
            ca_dir, days: d, ..
        } => {
            let dir = CaDir::open(&ca_dir)?;
            let list = dir.refresh_crl(days(d))?;
            Ok(Output {
                text: format!(
                    "wrote CRL #{} ({} revoked) to {}, valid for {d} days",
                    list.number,
                    list.revoked.len(),
                    dir.crl_path().display()
                ),
                json: json!({"crl_number": list.number, "revoked": list.revoked.len(), "crl": dir.crl_path(), "days": d}),
            })
        }
    }
}
