//! Rotating a node's keys (THREATS.md row 16), on a stopped node. Both keys
//! change together: the Ed25519 signing key (what the ledger's key history
//! is about) and the ECDSA P-256 TLS key, under one CSR and one new
//! certificate.
//!
//! 1. [`prepare`] (`dsnode key new`): a new signing key in `node.next.key`
//!    and a new TLS key in `tls.next.key` (both mode 0600), and a CSR for
//!    them in `node.next.csr`, for the same participant and hosts as the
//!    current certificate.
//! 2. The operator issues a certificate for that CSR (`dsnode ca issue`),
//!    as for any node.
//! 3. [`finish`] (`dsnode key rotate --cert NEW.crt`): checks the
//!    certificate (issued by the data space's CA, for the new TLS key and
//!    binding the new signing key, to the same participant), appends the
//!    `KeyRotated` entry signed by both signing keys to the ledger (see
//!    [`crate::ledger::keys`]), then installs the new keys and certificate.
//!    The old certificate is kept in `retired/` for the operator to revoke;
//!    the old private keys are gone.
//!
//! A crash between the ledger entry and the installation leaves the old
//! key in `node.key`, which the ledger now refuses; running [`finish`]
//! again completes the installation (`tls.key` is installed before
//! `node.key`, so a re-run finds the new TLS key in one place or the other).

use std::path::PathBuf;

use crate::fsutil;
use crate::identity::{NodeId, NodeKey, P256Key, ParticipantId, ca, cert};
use crate::ledger::{Ledger, LedgerError, LedgerOptions, keys::KeyError};
use crate::node::NodeError;
use crate::runtime::config::DataDir;

/// A prepared rotation.
#[derive(Debug)]
pub struct Prepared {
    /// The new key's node id.
    pub node_id: NodeId,
    /// Its CSR, for the operator.
    pub csr_path: PathBuf,
}

/// A finished rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The retired key's node id (`None`: an interrupted run had installed
    /// the new certificate already).
    pub old: Option<NodeId>,
    /// The new key's node id.
    pub new: NodeId,
    /// The KeyRotated entry's index (`None`: the ledger had it already,
    /// from an interrupted run; only the files were installed now).
    pub index: Option<u64>,
    /// The old certificate, to revoke.
    pub retired_cert: Option<PathBuf>,
    /// The verifier key of the node's checkpoints from now on.
    pub vkey: String,
}

fn refuse(msg: String) -> NodeError {
    NodeError::Credentials(msg)
}

/// Makes the next keys and their CSR; see the module docs. Refuses when a
/// next key exists already (finish or remove that rotation first).
pub fn prepare(dir: &DataDir) -> Result<Prepared, NodeError> {
    for next in [dir.next_key(), dir.next_tls_key()] {
        if next.exists() {
            return Err(refuse(format!(
                "{} exists: a rotation is already prepared (finish it with `dsnode key rotate`, or remove node.next.key and tls.next.key to start over)",
                next.display()
            )));
        }
    }
    let current = fsutil::read(&dir.cert())?;
    let der = cert::cert_der_from_pem(&current)?;
    let identity = crate::identity::PeerIdentity::from_der(&der)?;
    let hosts = cert::hosts_of(&der)?;
    let key = NodeKey::generate();
    let tls_key = P256Key::generate()?;
    let csr = cert::make_csr(&key, &tls_key, &identity.participant, &hosts)?;
    tls_key.save_new(&dir.next_tls_key())?;
    key.save_new(&dir.next_key())?;
    fsutil::write_atomic(&dir.next_csr(), csr.as_bytes(), fsutil::PUBLIC_MODE)?;
    Ok(Prepared {
        node_id: key.node_id(),
        csr_path: dir.next_csr(),
    })
}

/// Rotates to the prepared key with its certificate `new_cert_pem`; see
/// the module docs. The node must be stopped (the ledger is opened here).
pub async fn finish(dir: &DataDir, new_cert_pem: &[u8]) -> Result<Rotated, NodeError> {
    let next = NodeKey::load(&dir.next_key())
        .map_err(|e| refuse(format!("no prepared key ({e}): run `dsnode key new` first")))?;
    let ca_der = cert::cert_der_from_pem(&fsutil::read(&dir.ca_cert())?)?;
    let new = ca::verify_issued_by(&ca_der, new_cert_pem, "the new certificate")?;
    if new.public_key != next.public_key() {
        return Err(refuse(format!(
            "the new certificate is for node {}, not for the prepared key {} ({})",
            new.node_id,
            next.node_id(),
            dir.next_key().display()
        )));
    }
    // The prepared TLS key: in tls.next.key, or already installed by an
    // interrupted run (which renames it before node.next.key).
    let next_tls_path = if dir.next_tls_key().exists() {
        dir.next_tls_key()
    } else {
        dir.tls_key()
    };
    let next_tls = P256Key::load(&next_tls_path)?;
    let new_der = cert::cert_der_from_pem(new_cert_pem)?;
    if cert::tls_public_key_of(&new_der)? != next_tls.public_key_der() {
        return Err(refuse(format!(
            "the new certificate certifies another TLS key than the prepared one ({})",
            next_tls_path.display()
        )));
    }
    let old_cert_pem = fsutil::read(&dir.cert())?;
    let old = ca::verify_issued_by(&ca_der, &old_cert_pem, "the current certificate")?;
    if old.participant != new.participant {
        return Err(refuse(format!(
            "the new certificate is for participant {}, the current one for {}: a key rotation keeps the participant",
            new.participant, old.participant
        )));
    }
    let participant: ParticipantId = new.participant.clone();
    // node.crt already the new one: an interrupted run installed it, after
    // the ledger entry (which opening the ledger with the new key checks).
    let resumed = old.public_key == next.public_key();
    let (index, vkey) = if resumed {
        (None, vkey_of(dir, &next).await?)
    } else {
        let current = NodeKey::load(&dir.key())?;
        match open_ledger(dir, &current).await? {
            Ok(ledger) => {
                let rotated = ledger.rotate(next.signing_key().clone(), participant).await;
                let vkey = ledger.verifier().vkey();
                ledger.close().await;
                (Some(rotated?.index), vkey)
            }
            // The ledger has the rotation to this very key already (an
            // interrupted run): only the files are left to install.
            Err(LedgerError::Keys(KeyError::NotCurrent { history, .. }))
                if history == next.node_id() =>
            {
                (None, vkey_of(dir, &next).await?)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let retired_cert = (!resumed).then(|| retired_path(dir, &old.node_id));
    if let Some(path) = &retired_cert {
        fsutil::create_private_dir(&dir.retired())?;
        fsutil::write_atomic(path, &old_cert_pem, fsutil::PUBLIC_MODE)?;
    }
    // vkey and certificate first, the key last: until the rename, a re-run
    // finds the prepared key and completes the installation.
    fsutil::write_atomic(
        &dir.vkey(),
        format!("{vkey}\n").as_bytes(),
        fsutil::PUBLIC_MODE,
    )?;
    fsutil::write_atomic(&dir.cert(), new_cert_pem, fsutil::PUBLIC_MODE)?;
    if next_tls_path == dir.next_tls_key() {
        std::fs::rename(&next_tls_path, dir.tls_key())
            .map_err(|e| fsutil::FileError::new("install", &dir.tls_key(), e))?;
    }
    std::fs::rename(dir.next_key(), dir.key())
        .map_err(|e| fsutil::FileError::new("install", &dir.key(), e))?;
    fsutil::sync_dir(dir.root()).map_err(|e| fsutil::FileError::new("sync", dir.root(), e))?;
    let _ = std::fs::remove_file(dir.next_csr());
    Ok(Rotated {
        old: (!resumed).then_some(old.node_id),
        new: next.node_id(),
        index,
        retired_cert,
        vkey,
    })
}

fn retired_path(dir: &DataDir, node: &NodeId) -> PathBuf {
    dir.retired().join(format!("{node}.crt"))
}

/// Opens the ledger with `key` (the inner error is the ledger's own: a
/// retired or unknown key, a damaged store); a ledger in use means the
/// node runs.
async fn open_ledger(
    dir: &DataDir,
    key: &NodeKey,
) -> Result<Result<Ledger, LedgerError>, NodeError> {
    let path = dir.ledger();
    let key = key.signing_key().clone();
    let opened =
        tokio::task::spawn_blocking(move || Ledger::open(&path, key, LedgerOptions::default()))
            .await
            .map_err(|e| refuse(format!("opening the ledger: {e}")))?;
    match opened {
        Ok((ledger, _)) => Ok(Ok(ledger)),
        Err(LedgerError::Store(crate::ledger::store::StoreError::Locked { .. })) => Err(refuse(
            "the ledger is in use: stop the node before rotating its key".into(),
        )),
        Err(e) => Ok(Err(e)),
    }
}

/// The log's verifier key once `key` is its current key (which opening
/// the ledger with it checks).
async fn vkey_of(dir: &DataDir, key: &NodeKey) -> Result<String, NodeError> {
    let ledger = open_ledger(dir, key).await??;
    let vkey = ledger.verifier().vkey();
    ledger.close().await;
    Ok(vkey)
}
