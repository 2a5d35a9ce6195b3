//! The command line's library half: the binary (`src/main.rs`) parses
//! [`args::Cli`], sets up logging, calls [`run`] and prints its
//! [`output::Output`]. `anyhow` is allowed here, at the binary's edge, and
//! nowhere else in the crate.
//!
//! # Layout
//!
//! - `mod.rs`: [`run`], the dispatcher, and the client plumbing every
//!   group shares (connecting as the local node, call errors, the local
//!   node's address).
//! - [`args`]: the clap types, and which commands asked for `--json`.
//! - [`output`]: what a command prints (text or JSON), failures, errors.
//! - `ca.rs`: `ca init`, `ca issue`, `ca revoke`, `ca crl`.
//! - `node.rs`: `init`, `key new`, `key rotate`, `serve`, `status`,
//!   `peer hello`, `peer witness`, `receipts resend`.
//! - `data.rs`: `publish`, `catalog`, `policy …`, `request`, `fetch`, `grants …`.
//! - `audit.rs`: `audit …`, the auditor's view of other nodes' ledgers.
//! - [`demo`]: `dsnode demo`, a whole data space on loopback and its story, audited.

pub mod args;
mod audit;
mod ca;
mod data;
pub mod demo;
mod node;
pub mod output;

use std::path::Path;

use anyhow::Result;

use crate::audit::Auditor;
use crate::identity::cert::Host;
use crate::peer::PeerError;
use crate::runtime::config::{Config, DataDir};
use crate::runtime::tls;
use crate::wire::client;

use args::{Command, DemoArgs, PeerCommand, ReceiptsCommand};
use output::Output;

/// Runs a command: its output to print, or `None` if it printed what it
/// had to say itself (`serve`, `demo`). A [`output::ReportedFailure`] error
/// carries a report to print before exiting with status 1.
pub async fn run(command: Command) -> Result<Option<Output>> {
    match command {
        Command::Ca(c) => ca::ca_command(c).map(Some),
        Command::Init(a) => node::init(a).map(Some),
        Command::Key(c) => node::key_command(c).await.map(Some),
        Command::Serve(a) => node::serve(a).await,
        Command::Demo(a) => demo(a).await,
        Command::Peer(PeerCommand::Hello { client, peer }) => {
            node::hello(client, &peer).await.map(Some)
        }
        Command::Peer(PeerCommand::Witness { client, peer }) => {
            node::witness(client, &peer).await.map(Some)
        }
        Command::Status(a) => node::status(a).await.map(Some),
        Command::Audit(args::AuditCommand::Serve(a)) => audit::serve(a).await.map(|()| None),
        Command::Audit(c) => audit::audit(c).await.map(Some),
        Command::Publish(a) => data::publish(a).await.map(Some),
        Command::Catalog(a) => data::catalog(a).await.map(Some),
        Command::Policy(c) => data::policy(c).map(Some),
        Command::Request(a) => data::request(a).await.map(Some),
        Command::Grants(c) => data::grants(c).await.map(Some),
        Command::Receipts(ReceiptsCommand::Resend {
            client,
            peer,
            grant,
        }) => node::resend_receipts(client, &peer, &grant).await.map(Some),
        Command::Fetch(a) => data::fetch(a).await.map(Some),
    }
}

/// `--host` values.
fn parse_hosts(hosts: &[String]) -> Result<Vec<Host>> {
    Ok(hosts.iter().map(|h| h.parse()).collect::<Result<_, _>>()?)
}

/// Connects to `addr` as the node of `data_dir`.
async fn connect(data_dir: &Path, addr: &str) -> Result<client::PeerChannel> {
    let creds = crate::node::load_credentials(&DataDir::new(data_dir))?;
    let config = tls::client_config(&creds.material)?;
    Ok(client::connect(config, addr, client::ClientSettings::default()).await?)
}

/// An auditor of the node at `addr`, connected as the node of `data_dir`:
/// how `audit …` commands and the demo's regulator reach the nodes they
/// audit.
async fn auditor(data_dir: &Path, addr: &str) -> Result<Auditor> {
    Ok(Auditor::new(Box::new(connect(data_dir, addr).await?)))
}

/// A failed call to the node at `addr`, with the deepest cause (e.g. the
/// TLS alert) spelled out.
fn call_error(addr: &str, e: &PeerError) -> anyhow::Error {
    // A call that broke off carries its cause; for an answer the status
    // itself, as tonic prints it, stands in (as it did when this took the
    // status).
    let cause = e
        .cause
        .clone()
        .unwrap_or_else(|| tonic::Status::from(e.clone()).to_string());
    if e.message == "transport error" {
        anyhow::anyhow!(
            "{addr} closed the connection ({cause}); if this persists, it refused this node's \
             certificate (revoked, expired or issued by another CA) and its log says which"
        )
    } else if cause == e.message {
        anyhow::anyhow!("{addr} answered {:?}: {}", e.code, e.message)
    } else {
        anyhow::anyhow!("call to {addr} failed: {} ({cause})", e.message)
    }
}

/// The local node's address, from its node.toml.
fn own_address(data_dir: &Path) -> Result<String> {
    let config = Config::load(data_dir)?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr.to_string())
}

/// `dsnode demo`: checks the flags, then runs [`demo::run`].
async fn demo(a: DemoArgs) -> Result<Option<Output>> {
    use std::io::IsTerminal;
    if a.size == 0 {
        anyhow::bail!("--size must be at least 1 byte");
    }
    demo::run(demo::DemoOptions {
        dir: a.dir,
        size: a.size,
        keep: a.keep,
        progress: std::io::stderr().is_terminal(),
    })
    .await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `call_error` said when it took the call's `tonic::Status`
    /// (before calls returned `PeerError`).
    fn as_it_was(addr: &str, status: &tonic::Status) -> String {
        let cause = client::deepest_cause(status);
        if status.message() == "transport error" {
            format!(
                "{addr} closed the connection ({cause}); if this persists, it refused this node's \
                 certificate (revoked, expired or issued by another CA) and its log says which"
            )
        } else if cause == status.message() {
            format!("{addr} answered {:?}: {}", status.code(), status.message())
        } else {
            format!("call to {addr} failed: {} ({cause})", status.message())
        }
    }

    /// An error named `what` caused by `cause`.
    #[derive(Debug, thiserror::Error)]
    #[error("{what}")]
    struct Layer {
        what: &'static str,
        #[source]
        cause: std::io::Error,
    }

    /// The same sentence for every kind of failure, now that it is read
    /// from a `PeerError`: an answer, a call broken off by the transport
    /// (the cause from deep in the chain), a local failure whose message
    /// is its cause.
    #[test]
    fn call_errors_read_as_they_did_when_they_took_a_status() {
        let addr = "127.0.0.1:7000";
        let broken = |what| {
            tonic::Status::from_error(Box::new(Layer {
                what,
                cause: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe"),
            }))
        };
        for status in [
            tonic::Status::not_found("this node has no grant gr_x"),
            tonic::Status::permission_denied(""),
            broken("transport error"),
            broken("the connection went away"),
            tonic::Status::from_error(Box::new(std::io::Error::other("h2 said no"))),
        ] {
            let before = as_it_was(addr, &status);
            let now = call_error(addr, &PeerError::from(status)).to_string();
            assert_eq!(now, before);
        }
        let transport = call_error(addr, &PeerError::from(broken("transport error"))).to_string();
        assert!(transport.contains("(broken pipe)"), "{transport}");
    }
}
