//! The commands about one node: `init`, `key new` / `key rotate`,
//! `serve` (and the signals that stop it), `status`, `peer hello`,
//! `peer witness`, `receipts resend`.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::args::{ClientArgs, InitArgs, KeyCommand, ServeArgs};
use super::output::{Output, identity_json};
use super::{call_error, connect, own_address, parse_hosts};
use crate::fsutil;
use crate::node;
use crate::runtime::config::{Config, DataDir};
use crate::wire::admin::AdminClient;
use crate::wire::pb;

fn pb_identity_json(id: &pb::Identity) -> Value {
    json!({
        "node_id": id.node_id,
        "participant": id.participant,
        "roles": id.roles,
        "region": (!id.region.is_empty()).then_some(&id.region),
    })
}

fn pb_identity_text(id: &pb::Identity) -> String {
    format!(
        "{} (participant {}, roles {}, region {})",
        id.node_id,
        id.participant,
        if id.roles.is_empty() {
            "(none)".to_owned()
        } else {
            id.roles.join(",")
        },
        if id.region.is_empty() {
            "none"
        } else {
            &id.region
        }
    )
}

pub(super) fn init(a: InitArgs) -> Result<Output> {
    let participant = a.participant.parse()?;
    let ca_pem = fsutil::read(&a.ca_cert)?;
    let hosts = if a.hosts.is_empty() {
        node::default_hosts(a.listen)
    } else {
        parse_hosts(&a.hosts)?
    };
    let dir = DataDir::new(&a.data_dir);
    let metrics = (!a.no_metrics).then_some(a.metrics_listen);
    let made = node::init_data_dir(&dir, &participant, &ca_pem, (a.listen, metrics), hosts)?;
    let hosts: Vec<String> = made.hosts.iter().map(ToString::to_string).collect();
    Ok(Output {
        text: format!(
            "node id {}\n\
             ledger vkey {}\n\
             created {}: node.key (Ed25519 signing key) and tls.key (ECDSA P-256 TLS key), both mode 0600, node.toml, node.csr, node.vkey, ca.crt\n\
             next: the operator signs {} (`dsnode ca issue --csr {} --roles … --out {}`)\n\
             and copies the CA's crl.pem to {}",
            made.node_id,
            made.vkey,
            a.data_dir.display(),
            made.csr_path.display(),
            made.csr_path.display(),
            dir.cert().display(),
            dir.crl().display(),
        ),
        json: json!({
            "node_id": made.node_id.to_string(),
            "vkey": made.vkey,
            "data_dir": a.data_dir,
            "csr": made.csr_path,
            "hosts": hosts,
            "listen": a.listen.to_string(),
        }),
    })
}

pub(super) async fn key_command(c: KeyCommand) -> Result<Output> {
    match c {
        KeyCommand::New { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let made = crate::node::rotation::prepare(&dir)?;
            Ok(Output {
                text: format!(
                    "next keys: node {} in {} and a new TLS key in {} (mode 0600)\n\
                     next: the operator signs {} (`dsnode ca issue --csr {} --roles … --out NEW.crt`),\n\
                     then, with the node stopped: `dsnode key rotate --data-dir {} --cert NEW.crt`",
                    made.node_id,
                    dir.next_key().display(),
                    dir.next_tls_key().display(),
                    made.csr_path.display(),
                    made.csr_path.display(),
                    data_dir.display(),
                ),
                json: json!({"next_node_id": made.node_id.to_string(), "csr": made.csr_path}),
            })
        }
        KeyCommand::Rotate { data_dir, cert, .. } => {
            let dir = DataDir::new(&data_dir);
            let pem = fsutil::read(&cert)?;
            let done = crate::node::rotation::finish(&dir, &pem).await?;
            let recorded = match done.index {
                Some(i) => format!("ledger entry {i} (KeyRotated, signed by both keys)"),
                None => "already in the ledger (an interrupted rotation was completed)".into(),
            };
            let revoke = match &done.retired_cert {
                Some(p) => format!(
                    "\nrevoke the old certificate: `dsnode ca revoke --ca-dir … --cert {}` and distribute the new crl.pem",
                    p.display()
                ),
                None => String::new(),
            };
            Ok(Output {
                text: format!(
                    "key rotated: node {} -> {}\n  {recorded}\n  ledger vkey {}{revoke}",
                    done.old.as_ref().map_or("?".into(), ToString::to_string),
                    done.new,
                    done.vkey,
                ),
                json: json!({
                    "old_node_id": done.old.map(|n| n.to_string()),
                    "node_id": done.new.to_string(),
                    "ledger_index": done.index,
                    "vkey": done.vkey,
                    "retired_cert": done.retired_cert,
                }),
            })
        }
    }
}

pub(super) async fn serve(a: ServeArgs) -> Result<Option<Output>> {
    let config = Config::load(&a.data_dir)?;
    if a.check_config {
        let creds = node::load_credentials(&config.data_dir)?;
        node::check_crl_not_older(&config.data_dir, creds.crl_number)?;
        let storage = node::check_storage(&config).await?;
        println!(
            "{}: configuration and credentials are valid; node {}; {storage}",
            config.data_dir.config().display(),
            creds.identity
        );
        return Ok(None);
    }
    // Listen for SIGTERM/SIGINT before starting: a signal that arrives as
    // soon as the node says "serving" must drain it, not kill it.
    let signals = Signals::listen();
    let running = node::start(config).await?;
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signals.wait().await;
        stop.cancel();
    });
    running.wait().await?;
    Ok(None)
}

/// SIGTERM and SIGINT, registered when made.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(mut self) {
        let term = async {
            match self.term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let int = async {
            match self.int.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = term => {}
            () = int => {}
        }
    }
}

pub(super) async fn hello(a: ClientArgs, peer: &str) -> Result<Output> {
    let conn = connect(&a.data_dir, peer).await?;
    let mut rpc = pb::peering_client::PeeringClient::new(conn.channel);
    let reply = rpc
        .hello(pb::HelloRequest {
            software_version: crate::wire::server::SOFTWARE_VERSION.to_owned(),
        })
        .await
        .map_err(|s| call_error(peer, &s.into()))?
        .into_inner();
    let (Some(server), Some(caller)) = (reply.server, reply.caller) else {
        bail!("{peer} answered Hello without the server's or the caller's identity");
    };
    if server.node_id != conn.server.node_id.as_str() {
        bail!(
            "{peer} claims to be node {} but its verified certificate is node {}",
            server.node_id,
            conn.server.node_id
        );
    }
    Ok(Output {
        text: format!(
            "peer {peer}\n  server: {}\n  server certificate verified: {}\n  you, as the server saw you: {}\n  server software: {}",
            pb_identity_text(&server),
            conn.server,
            pb_identity_text(&caller),
            reply.software_version
        ),
        json: json!({
            "peer": peer,
            "server": pb_identity_json(&server),
            "server_certificate": identity_json(&conn.server),
            "caller": pb_identity_json(&caller),
            "software_version": reply.software_version,
        }),
    })
}

pub(super) async fn witness(a: ClientArgs, peer: &str) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    // The call goes to this node (which calls the peer): a failure names
    // this node's address, and the peer's when the node's answer does.
    let r = AdminClient::new(&connect(&a.data_dir, &addr).await?)
        .witness(peer)
        .await
        .map_err(|e| call_error(&addr, &e))?;
    Ok(Output {
        text: format!(
            "witnessed {peer} (node {}): its log at size {}{} (signature and consistency verified), cosigned\n  {}",
            r.peer,
            r.peer_size,
            if r.peer_grew { ", new" } else { ", unchanged" },
            if r.cosigned_by_peer {
                "it cosigned this node's checkpoint (kept in witness/cosigned/)"
            } else {
                "it did not cosign this node's checkpoint"
            }
        ),
        json: json!({"peer": peer, "peer_node_id": r.peer.to_string(), "peer_size": r.peer_size, "peer_grew": r.peer_grew, "cosigned_by_peer": r.cosigned_by_peer}),
    })
}

pub(super) async fn resend_receipts(a: ClientArgs, peer: &str, grant: &str) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    // As for `witness`: the call goes to this node.
    let r = AdminClient::new(&connect(&a.data_dir, &addr).await?)
        .resend_receipts(peer, grant)
        .await
        .map_err(|e| call_error(&addr, &e))?;
    let mut text = format!(
        "grant {grant}: {} receipt(s) kept, {} submitted now",
        r.kept,
        r.resent.len()
    );
    for x in &r.resent {
        text.push_str(&format!(
            "\n  transfer entry {}: recorded at entry {} here and {} at the publisher",
            x.transfer_index, x.ledger_index, x.publisher_ledger_index
        ));
    }
    if r.resent.is_empty() {
        text.push_str(" (the publisher had them all)");
    }
    Ok(Output {
        text,
        json: json!({"grant": grant, "kept": r.kept, "resent": r.resent.iter().map(|x| json!({"transfer_index": x.transfer_index, "ledger_index": x.ledger_index, "publisher_ledger_index": x.publisher_ledger_index})).collect::<Vec<_>>()}),
    })
}

pub(super) async fn status(a: ClientArgs) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    let s = AdminClient::new(&connect(&a.data_dir, &addr).await?)
        .status()
        .await
        .map_err(|e| call_error(&addr, &e))?;
    let node = s.node.unwrap_or_default();
    Ok(Output {
        text: format!(
            "node {}\n  software {}\n  uptime {}s\n  open connections {}",
            pb_identity_text(&node),
            s.software_version,
            s.uptime_seconds,
            s.open_connections
        ),
        json: json!({
            "node": pb_identity_json(&node),
            "software_version": s.software_version,
            "uptime_seconds": s.uptime_seconds,
            "open_connections": s.open_connections,
        }),
    })
}
