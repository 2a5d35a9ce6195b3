//! The `dsnode` command: parse flags, set up logging, call the library,
//! print, and return an exit code (0 success, 1 failure, 2 usage error).
//! Every client subcommand acts as the node whose `--data-dir` it is given
//! and prints exactly one JSON object on stdout with `--json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use dsnode::identity::ca::{self, CaDir, CertificateAuthority, IssueRequest};
use dsnode::identity::cert::Host;
use dsnode::identity::{PeerIdentity, RoleSet};
use dsnode::ledger::note::SignedCheckpoint;
use dsnode::node;
use dsnode::runtime::config::{Config, DATA_DIR_ENV, DataDir};
use dsnode::runtime::tls;
use dsnode::wire::{client, pb};
use dsnode::{audit, fsutil};

#[derive(Parser)]
#[command(name = "dsnode", version, about = "A trusted data-space exchange node")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole data space on loopback (CA, a publisher, two
    /// enterprises, an auditor) through its story, and audit it.
    Demo(DemoArgs),
    /// Operate the data-space certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create a node's data dir: identity key, node.toml, CSR.
    Init(InitArgs),
    /// Rotate the node's identity key (node stopped): `key new`, have the
    /// operator issue a certificate, then `key rotate`.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run a node.
    Serve(ServeArgs),
    /// Talk to another node.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Ask the local node for its status (Admin API).
    Status(ClientArgs),
    /// Audit a node's ledger: every checkpoint and proof is verified.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Publish a file as a signed, policy-tagged dataset (on the local node).
    Publish(PublishArgs),
    /// List a node's datasets; every manifest signature is verified.
    Catalog(CatalogArgs),
    /// Check, export or import policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Ask a publisher for access to a dataset (through the local node,
    /// which keeps the grant).
    Request(RequestArgs),
    /// The grants this node issued and holds; revoke one it issued.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Receipts this node signed as a consumer.
    #[command(subcommand)]
    Receipts(ReceiptsCommand),
    /// Fetch a dataset with a held grant (through the local node, which
    /// verifies every chunk and exchanges receipts).
    Fetch(FetchArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Where to put the data space (new, empty, or a previous demo's);
    /// default: a temporary directory, removed afterwards unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the generated dataset in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    size: u64,
    /// Leave the nodes running (until Ctrl-C) and print commands to
    /// explore them.
    #[arg(long)]
    keep: bool,
}

#[derive(Args)]
struct FetchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    peer: String,
    /// The grant id.
    grant: String,
    /// Where to write the dataset.
    #[arg(long)]
    out: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Reconnect and resume this many times if the connection breaks (a
    /// fetch that still fails resumes when run again).
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

#[derive(Args)]
struct RequestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    peer: String,
    /// The dataset id.
    dataset: String,
    /// The purpose of use.
    #[arg(long)]
    purpose: String,
    /// Actions wanted (comma-separated).
    #[arg(long, default_value = "read")]
    actions: String,
    /// How long the grant should last (e.g. 30d); default: as long as the
    /// policy allows.
    #[arg(long = "for")]
    duration: Option<String>,
}

#[derive(Subcommand)]
enum ReceiptsCommand {
    /// Submit again the receipts kept for a held grant that the publisher
    /// did not take (it stopped between the last chunk and the receipt).
    Resend {
        #[command(flatten)]
        client: ClientArgs,
        /// The publisher, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// The grant id.
        grant: String,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// List grants issued and held.
    List(ClientArgs),
    /// Revoke a grant this node issued.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The grant id.
        grant: String,
        /// Why (recorded in the ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The file to publish.
    file: PathBuf,
    /// The dataset's policy (TOML, see docs/policy.md).
    #[arg(long)]
    policy: PathBuf,
    /// Title.
    #[arg(long)]
    title: String,
    /// Description.
    #[arg(long, default_value = "")]
    description: String,
    /// Media type of the content.
    #[arg(long, default_value = "application/octet-stream")]
    media_type: String,
    /// A dataset this one is derived from (repeatable).
    #[arg(long = "derived-from")]
    derived_from: Vec<String>,
    /// The grant allowing the derivation, one per --derived-from (omit for
    /// the publisher's own datasets).
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// The dataset this version replaces.
    #[arg(long)]
    supersedes: Option<String>,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = dsnode::dataset::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
}

#[derive(Args)]
struct CatalogArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    peer: String,
    /// Only datasets whose title or description contains this.
    #[arg(long)]
    text: Option<String>,
    /// Only datasets of this classification.
    #[arg(long)]
    classification: Option<String>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy (TOML, or ODRL JSON if the file ends in .json)
    /// and explain it in plain words.
    Check {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Write a TOML policy as ODRL JSON-LD.
    Export {
        /// The TOML policy.
        file: PathBuf,
        /// Where to write the ODRL document.
        #[arg(long)]
        odrl: PathBuf,
    },
    /// Read an ODRL JSON-LD policy (the supported subset) as TOML.
    Import {
        /// The ODRL document.
        #[arg(long)]
        odrl: PathBuf,
        /// Where to write the TOML (default: print it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// The peer's latest checkpoint, signature verified.
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
        /// The audited node, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
    /// Entries matching filters, each proven against one checkpoint.
    Entries {
        #[command(flatten)]
        client: ClientArgs,
        /// The audited node, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// Only entries naming this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Only entries naming this node id.
        #[arg(long)]
        party: Option<String>,
        /// Only entries of this kind (e.g. NodeStarted, AccessGranted).
        #[arg(long)]
        kind: Option<String>,
        /// Only entries naming this grant.
        #[arg(long)]
        grant: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Entries per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only the first page.
        #[arg(long)]
        first_page: bool,
    },
    /// An inclusion proof (--index) or a consistency proof (--consistency).
    Prove {
        #[command(flatten)]
        client: ClientArgs,
        /// The audited node, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// Prove that entry N is in the log.
        #[arg(
            long,
            conflicts_with = "consistency",
            required_unless_present = "consistency"
        )]
        index: Option<u64>,
        /// The checkpoint size to prove against (default: latest).
        #[arg(long)]
        size: Option<u64>,
        /// Prove that the log of OLD entries is a prefix of the log of NEW.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        consistency: Option<Vec<u64>>,
    },
    /// Verify a stopped node's ledger on disk: recompute the tree, check
    /// every stored hash and every checkpoint signature.
    Verify {
        /// The node's data directory.
        #[arg(long, env = DATA_DIR_ENV)]
        data_dir: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Do two nodes' ledgers tell the same story? For every grant between
    /// them: the grant and every receipt recorded on both sides with the
    /// same hashes, and every entry under a checkpoint the other side
    /// witnessed. Prints each discrepancy; exits 1 if there is any.
    Reconcile {
        #[command(flatten)]
        client: ClientArgs,
        /// The two nodes, HOST:PORT (give --peer twice).
        #[arg(long = "peer", num_args = 1, required = true)]
        peers: Vec<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Write one self-contained evidence file for a grant: manifest, grant
    /// and receipts, both ledgers' entries about it with proofs, cosigned
    /// checkpoints and certificates (docs/evidence.md).
    Bundle {
        #[command(flatten)]
        client: ClientArgs,
        /// The publisher and the consumer, HOST:PORT (give --peer twice).
        #[arg(long = "peer", num_args = 1, required = true)]
        peers: Vec<String>,
        /// The grant id.
        #[arg(long)]
        grant: String,
        /// Where to write the bundle (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an evidence bundle offline with only the CA certificate, and
    /// print an account of the exchange.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// The data space's CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The grants of a dataset in force at a time, each proven in the
    /// publisher's log.
    WhoCould {
        #[command(flatten)]
        client: ClientArgs,
        /// The publisher, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// The dataset id.
        #[arg(long)]
        dataset: String,
        /// The time (RFC 3339).
        #[arg(long)]
        at: String,
    },
    /// Forks this node found in peers' logs (witness/forks/): each piece
    /// of evidence (two signed checkpoints no consistency proof joins) is
    /// verified again and listed. Exits 1 if there is any.
    Forks {
        /// The node's data directory.
        #[arg(long, env = DATA_DIR_ENV)]
        data_dir: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Args)]
struct JsonFlag {
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make the next key (node.next.key, mode 0600) and its CSR
    /// (node.next.csr, same participant and hosts as node.crt).
    New {
        /// The node's data directory.
        #[arg(long, env = DATA_DIR_ENV)]
        data_dir: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Switch to the next key: record the rotation in the ledger (signed
    /// by both keys), install the key and its certificate. The node must
    /// be stopped.
    Rotate {
        /// The node's data directory.
        #[arg(long, env = DATA_DIR_ENV)]
        data_dir: PathBuf,
        /// The certificate the operator issued for node.next.csr.
        #[arg(long)]
        cert: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: ca.key (0600), ca.crt, and an empty signed crl.pem.
    Init {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The CA's name (certificate common name).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Sign a node certificate from a CSR.
    Issue {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's CSR (node.csr).
        #[arg(long)]
        csr: PathBuf,
        /// Roles to attest: publisher, consumer, auditor (comma-separated).
        #[arg(long)]
        roles: String,
        /// Region to attest, e.g. CN-HE.
        #[arg(long)]
        region: Option<String>,
        /// Participant to attest (default: the CSR's common name).
        #[arg(long)]
        participant: Option<String>,
        /// Extra host name or IP the certificate is valid for (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write the certificate (e.g. DATA_DIR/node.crt).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke a node certificate: writes a new crl.pem.
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate to revoke.
        #[arg(long)]
        cert: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Re-sign the current CRL with a fresh validity window.
    Crl {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Validity of the new CRL in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Args)]
struct InitArgs {
    /// The node's data directory (created).
    #[arg(long, env = DATA_DIR_ENV)]
    data_dir: PathBuf,
    /// The participant (organisation) id, e.g. city-transport.
    #[arg(long)]
    participant: String,
    /// The data-space CA certificate (copied into the data dir).
    #[arg(long)]
    ca_cert: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Host name or IP peers use to reach this node (repeatable; default
    /// from --listen).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Plain-HTTP address for /metrics, /healthz and /readyz
    /// (unauthenticated: keep it on loopback or a private network).
    #[arg(long, default_value = "127.0.0.1:9464", conflicts_with = "no_metrics")]
    metrics_listen: SocketAddr,
    /// No metrics listener.
    #[arg(long)]
    no_metrics: bool,
    #[command(flatten)]
    out: JsonFlag,
}

#[derive(Args)]
struct ServeArgs {
    /// The node's data directory.
    #[arg(long, env = DATA_DIR_ENV)]
    data_dir: PathBuf,
    /// Check node.toml and the credentials, then exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// The data directory of the node to act as.
    #[arg(long, env = DATA_DIR_ENV)]
    data_dir: PathBuf,
    #[command(flatten)]
    out: JsonFlag,
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Introduce this node to a peer; prints both identities.
    Hello {
        #[command(flatten)]
        client: ClientArgs,
        /// The peer's address, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
    /// Exchange checkpoints with a peer now (through the local node):
    /// each verifies and cosigns the other's log; a fork is reported.
    Witness {
        #[command(flatten)]
        client: ClientArgs,
        /// The peer's address, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
}

/// What a command prints: a sentence or table for people, an object for
/// scripts.
struct Output {
    text: String,
    json: Value,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let serving = matches!(cli.command, Command::Serve(_));
    // The demo narrates; its nodes' expected refusals need not be logged.
    let quiet = matches!(cli.command, Command::Demo(_));
    init_tracing(
        cli.log_format,
        match (serving, quiet) {
            (true, _) => "info",
            (_, true) => "error",
            _ => "warn",
        },
    );
    let json = wants_json(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(Some(out)) => {
            if json {
                println!("{}", out.json);
            } else {
                println!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ReportedFailure(out)) = e.downcast_ref::<ReportedFailure>() {
                if json {
                    println!("{}", out.json);
                } else {
                    println!("{}", out.text);
                }
            } else {
                eprintln!("error: {}", error_sentence(&e));
            }
            ExitCode::FAILURE
        }
    }
}

/// A command that ran and found problems: its report is printed as usual
/// and the exit status is 1.
struct ReportedFailure(Output);

impl std::fmt::Debug for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl std::fmt::Display for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl std::error::Error for ReportedFailure {}

/// The error and those of its causes that its message does not already
/// state (most of our errors name their cause in their own message).
fn error_sentence(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}

fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn wants_json(command: &Command) -> bool {
    match command {
        Command::Ca(
            CaCommand::Init { out, .. }
            | CaCommand::Revoke { out, .. }
            | CaCommand::Crl { out, .. },
        ) => out.json,
        Command::Ca(CaCommand::Issue { json, .. }) => json.json,
        Command::Init(a) => a.out.json,
        Command::Key(KeyCommand::New { out, .. } | KeyCommand::Rotate { out, .. }) => out.json,
        Command::Serve(_) | Command::Demo(_) => false,
        Command::Peer(PeerCommand::Hello { client, .. } | PeerCommand::Witness { client, .. })
        | Command::Status(client)
        | Command::Audit(
            AuditCommand::Checkpoint { client, .. }
            | AuditCommand::Entries { client, .. }
            | AuditCommand::Reconcile { client, .. }
            | AuditCommand::Bundle { client, .. }
            | AuditCommand::WhoCould { client, .. }
            | AuditCommand::Prove { client, .. },
        ) => client.out.json,
        Command::Audit(
            AuditCommand::Verify { out, .. }
            | AuditCommand::Forks { out, .. }
            | AuditCommand::VerifyBundle { out, .. },
        ) => out.json,
        Command::Publish(a) => a.client.out.json,
        Command::Catalog(a) => a.client.out.json,
        Command::Policy(PolicyCommand::Check { out, .. }) => out.json,
        Command::Policy(_) => false,
        Command::Request(a) => a.client.out.json,
        Command::Fetch(a) => a.client.out.json,
        Command::Receipts(ReceiptsCommand::Resend { client, .. }) => client.out.json,
        Command::Grants(GrantsCommand::List(c) | GrantsCommand::Revoke { client: c, .. }) => {
            c.out.json
        }
    }
}

async fn run(command: Command) -> Result<Option<Output>> {
    match command {
        Command::Ca(c) => ca_command(c).map(Some),
        Command::Init(a) => init(a).map(Some),
        Command::Key(c) => key_command(c).await.map(Some),
        Command::Serve(a) => serve(a).await,
        Command::Demo(a) => demo(a).await,
        Command::Peer(PeerCommand::Hello { client, peer }) => hello(client, &peer).await.map(Some),
        Command::Peer(PeerCommand::Witness { client, peer }) => {
            witness(client, &peer).await.map(Some)
        }
        Command::Status(a) => status(a).await.map(Some),
        Command::Audit(c) => audit(c).await.map(Some),
        Command::Publish(a) => publish(a).await.map(Some),
        Command::Catalog(a) => catalog(a).await.map(Some),
        Command::Policy(c) => policy(c).map(Some),
        Command::Request(a) => request(a).await.map(Some),
        Command::Grants(c) => grants(c).await.map(Some),
        Command::Receipts(ReceiptsCommand::Resend {
            client,
            peer,
            grant,
        }) => resend_receipts(client, &peer, &grant).await.map(Some),
        Command::Fetch(a) => fetch(a).await.map(Some),
    }
}

fn identity_json(id: &PeerIdentity) -> Value {
    json!({
        "node_id": id.node_id.to_string(),
        "participant": id.participant.to_string(),
        "roles": id.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "region": id.region.as_ref().map(ToString::to_string),
    })
}

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

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

fn ca_command(command: CaCommand) -> Result<Output> {
    match command {
        CaCommand::Init { ca_dir, name, .. } => {
            CertificateAuthority::init(&ca_dir, &name)?;
            Ok(Output {
                text: format!(
                    "created CA `{name}` in {0}: ca.key (mode 0600), ca.crt, crl.pem\n\
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

fn parse_hosts(hosts: &[String]) -> Result<Vec<Host>> {
    Ok(hosts.iter().map(|h| h.parse()).collect::<Result<_, _>>()?)
}

fn init(a: InitArgs) -> Result<Output> {
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
             created {}: node.key (mode 0600), node.toml, node.csr, node.vkey, ca.crt\n\
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

async fn key_command(c: KeyCommand) -> Result<Output> {
    match c {
        KeyCommand::New { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let made = dsnode::node::rotation::prepare(&dir)?;
            Ok(Output {
                text: format!(
                    "next key: node {} in {} (mode 0600)\n\
                     next: the operator signs {} (`dsnode ca issue --csr {} --roles … --out NEW.crt`),\n\
                     then, with the node stopped: `dsnode key rotate --data-dir {} --cert NEW.crt`",
                    made.node_id,
                    dir.next_key().display(),
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
            let done = dsnode::node::rotation::finish(&dir, &pem).await?;
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

async fn serve(a: ServeArgs) -> Result<Option<Output>> {
    let config = Config::load(&a.data_dir)?;
    if a.check_config {
        let creds = node::load_credentials(&config.data_dir)?;
        println!(
            "{}: configuration and credentials are valid; node {}",
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

/// Connects to `addr` as the node of `data_dir`.
async fn connect(data_dir: &Path, addr: &str) -> Result<client::PeerChannel> {
    let creds = node::load_credentials(&DataDir::new(data_dir))?;
    let config = tls::client_config(&creds.material)?;
    Ok(client::connect(config, addr, client::ClientSettings::default()).await?)
}

/// A failed call, with the deepest cause (e.g. the TLS alert) spelled out.
fn call_error(addr: &str, status: &tonic::Status) -> anyhow::Error {
    let cause = client::deepest_cause(status);
    if status.message() == "transport error" {
        anyhow::anyhow!(
            "{addr} closed the connection ({cause}); if this persists, it refused this node's \
             certificate (revoked, expired or issued by another CA) and its log says which"
        )
    } else if cause == status.message() {
        anyhow::anyhow!("{addr} answered {:?}: {}", status.code(), status.message())
    } else {
        anyhow::anyhow!("call to {addr} failed: {} ({cause})", status.message())
    }
}

async fn hello(a: ClientArgs, peer: &str) -> Result<Output> {
    let conn = connect(&a.data_dir, peer).await?;
    let mut rpc = pb::peering_client::PeeringClient::new(conn.channel);
    let reply = rpc
        .hello(pb::HelloRequest {
            software_version: dsnode::wire::server::SOFTWARE_VERSION.to_owned(),
        })
        .await
        .map_err(|s| call_error(peer, &s))?
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

/// The local node's address, from its node.toml.
fn own_address(data_dir: &Path) -> Result<String> {
    let config = Config::load(data_dir)?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr.to_string())
}

async fn witness(a: ClientArgs, peer: &str) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    let conn = connect(&a.data_dir, &addr).await?;
    let r = pb::admin_client::AdminClient::new(conn.channel)
        .witness(pb::AdminWitnessRequest { peer: peer.into() })
        .await
        .map_err(|e| call_error(peer, &e))?
        .into_inner();
    Ok(Output {
        text: format!(
            "witnessed {peer} (node {}): its log at size {}{} (signature and consistency verified), cosigned\n  {}",
            r.peer_node_id,
            r.peer_size,
            if r.peer_grew { ", new" } else { ", unchanged" },
            if r.cosigned_by_peer {
                "it cosigned this node's checkpoint (kept in witness/cosigned/)"
            } else {
                "it did not cosign this node's checkpoint"
            }
        ),
        json: json!({"peer": peer, "peer_node_id": r.peer_node_id, "peer_size": r.peer_size, "peer_grew": r.peer_grew, "cosigned_by_peer": r.cosigned_by_peer}),
    })
}

async fn resend_receipts(a: ClientArgs, peer: &str, grant: &str) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    let conn = connect(&a.data_dir, &addr).await?;
    let r = pb::admin_client::AdminClient::new(conn.channel)
        .resend_receipts(pb::AdminResendReceiptsRequest {
            peer: peer.into(),
            grant_id: grant.into(),
        })
        .await
        .map_err(|e| call_error(peer, &e))?
        .into_inner();
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

async fn status(a: ClientArgs) -> Result<Output> {
    let addr = own_address(&a.data_dir)?;
    let conn = connect(&a.data_dir, &addr).await?;
    let mut rpc = pb::admin_client::AdminClient::new(conn.channel);
    let s = rpc
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| call_error(&addr, &e))?
        .into_inner();
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

use dsnode::exchange::grant::time_text;

fn parse_time(flag: &str, value: Option<&str>) -> Result<i64> {
    let Some(v) = value else { return Ok(0) };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--{flag} `{v}` is not an RFC 3339 time such as 2026-11-26T08:00:00Z")
        })?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?)
}

fn checkpoint_json(cp: &SignedCheckpoint) -> Value {
    json!({
        "origin": cp.checkpoint.origin,
        "size": cp.checkpoint.size,
        "root": data_encoding::BASE64.encode(&cp.checkpoint.root),
        "note": cp.note,
    })
}

fn entry_json(v: &audit::VerifiedEntry) -> Value {
    let e = &v.entry;
    json!({
        "index": e.index,
        "time": time_text(e.time_ms),
        "time_ms": e.time_ms,
        "kind": e.draft.kind.name(),
        "parties": e.draft.parties.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "dataset": e.draft.dataset,
        "grant": e.draft.grant,
        "object_hash": e.draft.object_hash.map(|h| data_encoding::HEXLOWER.encode(&h)),
        "detail": e.draft.detail,
        "leaf_hash": data_encoding::HEXLOWER.encode(&v.leaf_hash),
    })
}

fn entry_text(v: &audit::VerifiedEntry) -> String {
    let e = &v.entry;
    let mut line = format!(
        "#{:<6} {}  {:<18}",
        e.index,
        time_text(e.time_ms),
        e.draft.kind.name()
    );
    let parties: Vec<String> = e.draft.parties.iter().map(ToString::to_string).collect();
    if !parties.is_empty() {
        line.push_str(&format!(" parties={}", parties.join(",")));
    }
    if let Some(d) = &e.draft.dataset {
        line.push_str(&format!(" dataset={d}"));
    }
    if let Some(g) = &e.draft.grant {
        line.push_str(&format!(" grant={g}"));
    }
    if !e.draft.detail.is_empty() {
        // Escaped: a detail may hold newlines (a witnessed checkpoint)
        // and must never move a terminal's cursor.
        line.push_str(&format!(" \"{}\"", e.draft.detail.escape_debug()));
    }
    line
}

async fn auditor(client: &ClientArgs, peer: &str) -> Result<audit::Auditor> {
    let conn = connect(&client.data_dir, peer).await?;
    Ok(audit::Auditor::new(conn)?)
}

async fn two_auditors(
    client: &ClientArgs,
    peers: &[String],
) -> Result<(audit::Auditor, audit::Auditor)> {
    let [a, b] = peers else {
        bail!("give exactly two nodes: --peer A --peer B");
    };
    Ok((auditor(client, a).await?, auditor(client, b).await?))
}

async fn audit(command: AuditCommand) -> Result<Output> {
    match command {
        AuditCommand::Reconcile {
            client,
            peers,
            since,
        } => {
            let (mut a, mut b) = two_auditors(&client, &peers).await?;
            let since = since
                .as_deref()
                .map(|t| parse_time("since", Some(t)))
                .transpose()?;
            let r = dsnode::audit::reconcile::reconcile(&mut a, &mut b, since).await?;
            let mut text = format!(
                "reconciled A = {} (node {}) and B = {} (node {}): {} grants, {} receipts; B witnessed A up to size {}, A witnessed B up to size {}\n",
                peers[0],
                a.node().node_id,
                peers[1],
                b.node().node_id,
                r.grants,
                r.receipts,
                r.witnessed.0,
                r.witnessed.1
            );
            for d in &r.discrepancies {
                text.push_str(&format!("DISCREPANCY: {d}\n"));
            }
            if r.discrepancies.is_empty() {
                text.push_str("no discrepancies: both ledgers tell the same story\n");
            }
            let output = Output {
                text: text.trim_end().to_owned(),
                json: json!({"grants": r.grants, "receipts": r.receipts, "witnessed": [r.witnessed.0, r.witnessed.1], "discrepancies": r.discrepancies}),
            };
            if r.discrepancies.is_empty() {
                Ok(output)
            } else {
                Err(ReportedFailure(output).into())
            }
        }
        AuditCommand::Bundle {
            client,
            peers,
            grant,
            out,
        } => {
            let (mut a, mut b) = two_auditors(&client, &peers).await?;
            let bundle = dsnode::audit::evidence::build(&mut a, &mut b, &grant).await?;
            let bytes = bundle.to_bytes();
            fsutil::create_new_atomic(&out, &bytes, fsutil::PUBLIC_MODE)?;
            Ok(Output {
                text: format!(
                    "evidence bundle for grant {grant} written to {} ({} bytes): {} publisher and {} consumer entries with proofs, {} receipts\ncheck it anywhere with: dsnode audit verify-bundle {} --ca CA.pem",
                    out.display(),
                    bytes.len(),
                    bundle.publisher.entries.len(),
                    bundle.consumer.entries.len(),
                    bundle.receipts.len(),
                    out.display()
                ),
                json: json!({"grant": grant, "out": out, "bytes": bytes.len()}),
            })
        }
        AuditCommand::VerifyBundle { file, ca, .. } => {
            let bytes = fsutil::read(&file)?;
            let ca_pem = fsutil::read(&ca)?;
            let account = dsnode::audit::evidence::verify(&bytes, &ca_pem)
                .with_context(|| format!("{} does NOT verify", file.display()))?;
            Ok(Output {
                json: json!({"file": file, "verified": true, "account": account}),
                text: account,
            })
        }
        AuditCommand::WhoCould {
            client,
            peer,
            dataset,
            at,
        } => {
            let at_ms = parse_time("at", Some(&at))?;
            let mut p = auditor(&client, &peer).await?;
            let found = dsnode::audit::reconcile::who_could(&mut p, &dataset, at_ms).await?;
            let mut text = format!(
                "grants of {dataset} in force at {} on {peer} (node {}): {}\n",
                time_text(at_ms),
                p.node().node_id,
                found.len()
            );
            let mut rows = Vec::new();
            for f in &found {
                let g = &f.grant;
                text.push_str(&format!(
                    "{}  to {}  purpose {}  {} .. {}\n  AccessGranted entry {} proven in checkpoint {} ({} hashes, signature verified)\n",
                    g.id, g.grantee, g.purpose, time_text(g.not_before_ms), time_text(g.not_after_ms), f.entry_index, f.checkpoint_size, f.proof_len
                ));
                rows.push(json!({"grant": g.id.to_string(), "grantee": g.grantee.to_string(), "purpose": g.purpose, "not_before_ms": g.not_before_ms, "not_after_ms": g.not_after_ms, "entry": f.entry_index, "checkpoint": f.checkpoint_size}));
            }
            Ok(Output {
                text: text.trim_end().to_owned(),
                json: json!({"dataset": dataset, "at_ms": at_ms, "grants": rows}),
            })
        }
        AuditCommand::Checkpoint { client, peer } => {
            let mut a = auditor(&client, &peer).await?;
            let cp = a.checkpoint().await?;
            Ok(Output {
                text: format!(
                    "checkpoint of {} (node {}): verified\n  size {}\n  root {}\n  vkey {}\n\n{}",
                    peer,
                    a.node().node_id,
                    cp.checkpoint.size,
                    data_encoding::BASE64.encode(&cp.checkpoint.root),
                    a.vkey(),
                    cp.note.trim_end()
                ),
                json: json!({"peer": peer, "node_id": a.node().node_id.to_string(), "verified": true, "vkey": a.vkey(), "checkpoint": checkpoint_json(&cp)}),
            })
        }
        AuditCommand::Entries {
            client,
            peer,
            dataset,
            party,
            kind,
            grant,
            since,
            until,
            limit,
            first_page,
        } => {
            let req = dsnode::wire::pb::QueryEntriesRequest {
                dataset: dataset.unwrap_or_default(),
                party: party.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                since_ms: parse_time("since", since.as_deref())?,
                until_ms: parse_time("until", until.as_deref())?,
                limit,
                page_token: Vec::new(),
                tree_size: 0,
                grant: grant.unwrap_or_default(),
            };
            let mut a = auditor(&client, &peer).await?;
            let (cp, entries) = a.entries(req, !first_page).await?;
            let mut text = format!(
                "{} entries of {} (node {}), each verified against checkpoint {} (signature verified)",
                entries.len(),
                peer,
                a.node().node_id,
                cp.checkpoint.size
            );
            for e in &entries {
                text.push('\n');
                text.push_str(&entry_text(e));
            }
            Ok(Output {
                text,
                json: json!({"peer": peer, "verified": true, "checkpoint": checkpoint_json(&cp), "entries": entries.iter().map(entry_json).collect::<Vec<_>>()}),
            })
        }
        AuditCommand::Prove {
            client,
            peer,
            index,
            size,
            consistency,
        } => {
            let mut a = auditor(&client, &peer).await?;
            if let Some(sizes) = consistency {
                let [old, new] = sizes[..] else {
                    bail!("--consistency takes two sizes: OLD NEW");
                };
                let (old_cp, new_cp, len) = a.prove_consistency(old, new).await?;
                return Ok(Output {
                    text: format!(
                        "consistency {} → {}: verified ({len} hashes); both checkpoints' signatures verified",
                        old_cp.checkpoint.size, new_cp.checkpoint.size
                    ),
                    json: json!({"peer": peer, "verified": true, "old": checkpoint_json(&old_cp), "new": checkpoint_json(&new_cp), "proof_hashes": len}),
                });
            }
            let Some(index) = index else {
                bail!("give --index N or --consistency OLD NEW");
            };
            let (cp, entry, len) = a.prove_inclusion(index, size.unwrap_or(0)).await?;
            Ok(Output {
                text: format!(
                    "entry {index} is in checkpoint {} of {}: verified ({len} hashes; checkpoint signature verified)\n{}",
                    cp.checkpoint.size,
                    peer,
                    entry_text(&entry)
                ),
                json: json!({"peer": peer, "verified": true, "checkpoint": checkpoint_json(&cp), "entry": entry_json(&entry), "proof_hashes": len}),
            })
        }
        AuditCommand::Forks { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let found = dsnode::witness::WitnessBook::forks(&dir.witness())?;
            let mut text = String::new();
            let mut rows = Vec::new();
            for (path, read) in &found {
                let checked = read
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|e| e.verify().map(|pair| (e, pair)));
                match checked {
                    Ok((e, (a, b))) => {
                        text.push_str(&format!(
                            "FORK in log {} (node {}): {}, found {}\n  seen:        size {} root {}\n  conflicting: size {} root {}\n  both signatures verified; evidence {}\n",
                            e.origin,
                            e.node_id,
                            e.kind,
                            time_text(e.detected_at_ms),
                            a.checkpoint.size,
                            data_encoding::BASE64.encode(&a.checkpoint.root),
                            b.checkpoint.size,
                            data_encoding::BASE64.encode(&b.checkpoint.root),
                            path.display()
                        ));
                        rows.push(json!({"origin": e.origin, "node_id": e.node_id, "kind": e.kind, "detected_at_ms": e.detected_at_ms, "seen": e.seen, "conflicting": e.conflicting, "verified": true, "path": path}));
                    }
                    Err(why) => {
                        text.push_str(&format!("{}: NOT valid evidence: {why}\n", path.display()));
                        rows.push(json!({"path": path, "verified": false, "error": why}));
                    }
                }
            }
            if found.is_empty() {
                text.push_str("no forks found\n");
            }
            let output = Output {
                text: text.trim_end().to_owned(),
                json: json!({"forks": rows}),
            };
            if found.is_empty() {
                Ok(output)
            } else {
                Err(ReportedFailure(output).into())
            }
        }
        AuditCommand::Verify { data_dir, .. } => {
            let dir = DataDir::new(&data_dir);
            let cert = dsnode::identity::cert::cert_der_from_pem(&fsutil::read(&dir.cert())?)?;
            let node = PeerIdentity::from_der(&cert)?;
            let (report, keys) = dsnode::ledger::verify_dir(&dir.ledger(), &node.public_key)
                .with_context(|| format!("the ledger of node {} does NOT verify", node.node_id))?;
            let history = if keys.keys().len() > 1 {
                format!("\n{keys}")
            } else {
                String::new()
            };
            Ok(Output {
                text: format!(
                    "ledger of node {} verified: {} entries, {} checkpoints (every signature checked), root {}{history}",
                    node.node_id,
                    report.size,
                    report.checkpoints,
                    data_encoding::BASE64.encode(&report.root)
                ),
                json: json!({"node_id": node.node_id.to_string(), "verified": true, "size": report.size, "checkpoints": report.checkpoints, "root": data_encoding::BASE64.encode(&report.root)}),
            })
        }
    }
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

async fn publish(a: PublishArgs) -> Result<Output> {
    use tokio::io::AsyncReadExt;
    let policy_toml = fsutil::read_to_string(&a.policy)?;
    // Checked here for a quick answer; the node checks again.
    dsnode::policy::Policy::from_toml(&policy_toml)
        .with_context(|| format!("{} is not a valid policy", a.policy.display()))?;
    if a.grants.len() > a.derived_from.len() {
        bail!("more --grant than --derived-from");
    }
    let mut file = tokio::fs::File::open(&a.file)
        .await
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let size = file.metadata().await?.len();
    let header = pb::PublishHeader {
        title: a.title.clone(),
        description: a.description.clone(),
        media_type: a.media_type.clone(),
        policy_toml,
        derived_from: a
            .derived_from
            .iter()
            .enumerate()
            .map(|(i, d)| pb::Derivation {
                dataset_id: d.clone(),
                grant_id: a.grants.get(i).cloned().unwrap_or_default(),
            })
            .collect(),
        supersedes: a.supersedes.clone().unwrap_or_default(),
        chunk_size: a.chunk_size,
        size,
    };
    let addr = own_address(&a.client.data_dir)?;
    let conn = connect(&a.client.data_dir, &addr).await?;
    let bar = if a.client.out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        let first = pb::PublishRequest {
            part: Some(pb::publish_request::Part::Header(header)),
        };
        if tx.send(first).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            reader_bar.inc(n as u64);
            let piece = pb::PublishRequest {
                part: Some(pb::publish_request::Part::Data(buf[..n].to_vec())),
            };
            if tx.send(piece).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut rpc =
        pb::admin_client::AdminClient::new(conn.channel).max_decoding_message_size(16 << 20);
    let result = rpc
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    bar.finish_and_clear();
    reader
        .await?
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = result.map_err(|s| call_error(&addr, &s))?.into_inner();
    Ok(Output {
        text: format!(
            "published {} ({}, {})\n  dataset id {}\n  ledger entry {} (DatasetPublished)",
            a.file.display(),
            a.title,
            size_text(size),
            r.dataset_id,
            r.ledger_index
        ),
        json: json!({"dataset_id": r.dataset_id, "ledger_index": r.ledger_index, "size": size, "title": a.title}),
    })
}

async fn catalog(a: CatalogArgs) -> Result<Output> {
    let conn = connect(&a.client.data_dir, &a.peer).await?;
    let publisher = conn.server.clone();
    // Manifests published before a key rotation are signed by a key the
    // publisher's history retired.
    let keys = dsnode::wire::client::peer_keys(&conn)
        .await
        .map_err(|s| call_error(&a.peer, &s))?;
    let mut rpc = pb::catalog_client::CatalogClient::new(conn.channel);
    let mut rows = Vec::new();
    let mut token = String::new();
    loop {
        let page = rpc
            .list_datasets(pb::ListDatasetsRequest {
                text: a.text.clone().unwrap_or_default(),
                classification: a.classification.clone().unwrap_or_default(),
                publisher: String::new(),
                limit: 1000,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| call_error(&a.peer, &s))?
            .into_inner();
        for e in page.datasets {
            let envelope: dsnode::envelope::Envelope = e
                .manifest
                .ok_or_else(|| {
                    anyhow::anyhow!("{} listed {} without its manifest", a.peer, e.dataset_id)
                })?
                .into();
            let ((id, manifest), _) = keys
                .verify_any(|k| dsnode::dataset::verify_manifest(envelope.clone(), k))
                .with_context(|| {
                    format!("manifest of {} from {} is NOT valid", e.dataset_id, a.peer)
                })?;
            if id.as_str() != e.dataset_id {
                bail!(
                    "{} listed {} but its manifest is dataset {id}",
                    a.peer,
                    e.dataset_id
                );
            }
            rows.push((id, manifest));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        // Tokens are dataset ids in increasing order; anything else is a
        // node leading the client in circles.
        if page.next_page_token <= token || rows.len() > 1_000_000 {
            bail!("{} paginates its catalog incorrectly; stopping", a.peer);
        }
        token = page.next_page_token;
    }
    let mut text = format!(
        "{} dataset(s) of {} (publisher {}, participant {}); every manifest signature verified\n",
        rows.len(),
        a.peer,
        publisher.node_id,
        publisher.participant
    );
    text.push_str(&format!(
        "{:<55}  {:>3}  {:<10}  {:>10}  {:<28}  {}",
        "DATASET", "VER", "CLASS", "SIZE", "MAY BE GRANTED", "TITLE"
    ));
    let mut json_rows = Vec::new();
    for (id, v) in &rows {
        let m = v.value();
        let grantable: Vec<String> = m
            .policy
            .grantable_actions()
            .iter()
            .map(|a| a.to_string())
            .collect();
        // Titles are the publisher's text: no control or direction
        // characters may fake table rows.
        let title: String = m
            .title
            .chars()
            .map(|c| {
                if c.is_control()
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c)
                {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        text.push_str(&format!(
            "\n{:<55}  {:>3}  {:<10}  {:>10}  {:<28}  {}",
            id.as_str(),
            m.version,
            m.classification.as_str(),
            size_text(m.size),
            grantable.join(","),
            title
        ));
        json_rows.push(json!({
            "dataset_id": id.to_string(),
            "title": m.title,
            "description": m.description,
            "media_type": m.media_type,
            "size": m.size,
            "version": m.version,
            "classification": m.classification.as_str(),
            "publisher": m.publisher.to_string(),
            "content_sha256": data_encoding::HEXLOWER.encode(&m.content_sha256),
            "grantable_actions": grantable,
            "policy": serde_json::from_slice::<Value>(&m.policy.canonical_json()).unwrap_or(Value::Null),
            // The DSSE JSON envelope, for third-party DSSE verifiers.
            "envelope": serde_json::from_str::<Value>(&v.envelope().to_json()).unwrap_or(Value::Null),
        }));
    }
    Ok(Output {
        text,
        json: json!({"peer": a.peer, "publisher": identity_json(&publisher), "verified": true, "datasets": json_rows}),
    })
}

fn load_policy(path: &Path) -> Result<dsnode::policy::Policy> {
    let text = fsutil::read_to_string(path)?;
    let policy = if path.extension().is_some_and(|e| e == "json") {
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        dsnode::policy::odrl::import(&doc)
    } else {
        dsnode::policy::Policy::from_toml(&text)
    };
    policy.with_context(|| format!("{} is not a valid policy", path.display()))
}

fn policy(command: PolicyCommand) -> Result<Output> {
    match command {
        PolicyCommand::Check { file, .. } => {
            let p = load_policy(&file)?;
            let hash = data_encoding::HEXLOWER.encode(&p.hash());
            Ok(Output {
                text: format!(
                    "{}: valid policy (hash {hash})\n{}",
                    file.display(),
                    p.explain()
                ),
                json: json!({"file": file, "valid": true, "hash": hash, "explanation": p.explain(),
                    "policy": serde_json::from_slice::<Value>(&p.canonical_json()).unwrap_or(Value::Null)}),
            })
        }
        PolicyCommand::Export { file, odrl } => {
            let p = load_policy(&file)?;
            let doc = dsnode::policy::odrl::export(&p);
            let text = serde_json::to_string_pretty(&doc)?;
            fsutil::write_atomic(&odrl, format!("{text}\n").as_bytes(), fsutil::PUBLIC_MODE)?;
            Ok(Output {
                text: format!("wrote {} (ODRL JSON-LD)", odrl.display()),
                json: json!({"odrl": odrl}),
            })
        }
        PolicyCommand::Import { odrl, out } => {
            let text = fsutil::read_to_string(&odrl)?;
            let doc: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", odrl.display()))?;
            let p = dsnode::policy::odrl::import(&doc).with_context(|| {
                format!("{} is not a policy dsnode can enforce", odrl.display())
            })?;
            let toml = p.to_toml();
            match out {
                Some(path) => {
                    fsutil::write_atomic(&path, toml.as_bytes(), fsutil::PUBLIC_MODE)?;
                    Ok(Output {
                        text: format!("wrote {}", path.display()),
                        json: json!({"policy": path}),
                    })
                }
                None => Ok(Output {
                    text: toml.trim_end().to_owned(),
                    json: json!({"toml": toml}),
                }),
            }
        }
    }
}

fn grant_json(g: &dsnode::exchange::grant::Grant) -> Value {
    json!({
        "grant_id": g.id.to_string(),
        "dataset_id": g.dataset.to_string(),
        "publisher": g.publisher.to_string(),
        "grantee": g.grantee.to_string(),
        "purpose": g.purpose,
        "actions": g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "not_before": time_text(g.not_before_ms),
        "not_after": time_text(g.not_after_ms),
        "max_fetches": g.max_fetches,
        "obligations": g.obligations.iter().map(|o| json!({"action": o.action.as_str(), "after_secs": o.after_secs})).collect::<Vec<_>>(),
    })
}

/// Decodes a grant envelope the local node returned (its own store: the
/// node verified it against the publisher's certificate).
fn local_grant(env: Option<pb::Envelope>) -> Result<dsnode::exchange::grant::Grant> {
    let env: dsnode::envelope::Envelope = env
        .ok_or_else(|| anyhow::anyhow!("the node returned no grant"))?
        .into();
    Ok(dsnode::exchange::grant::Grant::decode(&env.payload)?)
}

async fn request(a: RequestArgs) -> Result<Output> {
    let duration_secs = match a.duration.as_deref() {
        None => 0,
        Some(d) => humantime::parse_duration(d)
            .with_context(|| format!("--for `{d}` is not a duration such as 30d or 12h"))?
            .as_secs(),
    };
    let addr = own_address(&a.client.data_dir)?;
    let conn = connect(&a.client.data_dir, &addr).await?;
    let r = pb::admin_client::AdminClient::new(conn.channel)
        .request_access(pb::AdminRequestAccessRequest {
            peer: a.peer.clone(),
            dataset_id: a.dataset.clone(),
            purpose: a.purpose.clone(),
            actions: a
                .actions
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            duration_secs,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => anyhow::anyhow!("{} refused: {}", a.peer, s.message()),
            _ => call_error(&addr, &s),
        })?
        .into_inner();
    let g = local_grant(r.grant)?;
    let actions: Vec<&str> = g.actions.iter().map(|x| x.as_str()).collect();
    Ok(Output {
        text: format!(
            "granted {}\n  dataset   {}\n  purpose   {}\n  actions   {}\n  valid     {} to {}\n  fetches   {}\n  recorded as entry {} (GrantReceived) in this node's ledger",
            g.id,
            g.dataset,
            g.purpose,
            actions.join(","),
            time_text(g.not_before_ms),
            time_text(g.not_after_ms),
            g.max_fetches.map_or("unlimited".into(), |n| n.to_string()),
            r.ledger_index
        ),
        json: json!({"grant": grant_json(&g), "ledger_index": r.ledger_index}),
    })
}

async fn grants(command: GrantsCommand) -> Result<Output> {
    match command {
        GrantsCommand::List(c) => {
            let addr = own_address(&c.data_dir)?;
            let conn = connect(&c.data_dir, &addr).await?;
            let r = pb::admin_client::AdminClient::new(conn.channel)
                .list_grants(pb::ListGrantsRequest {})
                .await
                .map_err(|s| call_error(&addr, &s))?
                .into_inner();
            let mut text = format!("{} grant(s)", r.grants.len());
            let mut rows = Vec::new();
            for s in r.grants {
                let g = local_grant(s.grant)?;
                let state = match (s.issued, s.revoked) {
                    (true, true) => "issued, REVOKED",
                    (true, false) => "issued",
                    (false, _) => "held",
                };
                text.push_str(&format!(
                    "\n{}  {:<15}  {}  to {}  purpose {}  until {}",
                    g.id,
                    state,
                    g.dataset,
                    g.grantee,
                    g.purpose,
                    time_text(g.not_after_ms)
                ));
                let mut j = grant_json(&g);
                j["issued"] = json!(s.issued);
                j["revoked"] = json!(s.revoked);
                rows.push(j);
            }
            Ok(Output {
                text,
                json: json!({"grants": rows}),
            })
        }
        GrantsCommand::Revoke {
            client,
            grant,
            reason,
        } => {
            let addr = own_address(&client.data_dir)?;
            let conn = connect(&client.data_dir, &addr).await?;
            let r = pb::admin_client::AdminClient::new(conn.channel)
                .revoke_grant(pb::RevokeGrantRequest {
                    grant_id: grant.clone(),
                    reason,
                })
                .await
                .map_err(|s| call_error(&addr, &s))?
                .into_inner();
            Ok(Output {
                text: if r.already_revoked {
                    format!("{grant} was already revoked")
                } else {
                    format!(
                        "revoked {grant} (GrantRevoked, ledger entry {})",
                        r.ledger_index
                    )
                },
                json: json!({"grant_id": grant, "already_revoked": r.already_revoked, "ledger_index": r.ledger_index}),
            })
        }
    }
}

async fn demo(a: DemoArgs) -> Result<Option<Output>> {
    use std::io::IsTerminal;
    if a.size == 0 {
        anyhow::bail!("--size must be at least 1 byte");
    }
    dsnode::cli::demo::run(dsnode::cli::demo::DemoOptions {
        dir: a.dir,
        size: a.size,
        keep: a.keep,
        progress: std::io::stderr().is_terminal(),
    })
    .await?;
    Ok(None)
}

async fn fetch(a: FetchArgs) -> Result<Output> {
    // The node writes the file: give it a path that does not depend on
    // its working directory.
    let out = std::path::absolute(&a.out)
        .with_context(|| format!("cannot resolve {}", a.out.display()))?;
    let addr = own_address(&a.client.data_dir)?;
    let conn = connect(&a.client.data_dir, &addr).await?;
    let bar = if a.client.out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_message(format!("fetching with grant {} from {}", a.grant, a.peer));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let failed = |s: tonic::Status| match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::DataLoss
        | tonic::Code::FailedPrecondition
        | tonic::Code::NotFound
        | tonic::Code::InvalidArgument => anyhow::anyhow!("fetch failed: {}", s.message()),
        _ => call_error(&addr, &s),
    };
    let started = std::time::Instant::now();
    let mut events = pb::admin_client::AdminClient::new(conn.channel)
        .fetch(pb::AdminFetchRequest {
            peer: a.peer.clone(),
            grant_id: a.grant.clone(),
            out: out.display().to_string(),
            force: a.force,
            retries: a.retries,
        })
        .await
        .map_err(failed)?
        .into_inner();
    let mut sized = false;
    let done = loop {
        let event = match events.message().await {
            Ok(Some(e)) => e.event,
            Ok(None) => {
                bar.finish_and_clear();
                anyhow::bail!("the node ended the fetch without a result; see its log");
            }
            Err(s) => {
                bar.finish_and_clear();
                return Err(failed(s));
            }
        };
        match event {
            Some(pb::admin_fetch_event::Event::Progress(p)) => {
                if !sized && p.total_bytes > 0 {
                    sized = true;
                    bar.set_length(p.total_bytes);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    if p.resumed_chunks > 0 {
                        bar.println(format!(
                            "resuming: {} of {} chunks were already verified",
                            p.resumed_chunks, p.total_chunks
                        ));
                    }
                    bar.set_position(p.bytes);
                    bar.reset_eta();
                }
                bar.set_position(p.bytes);
            }
            Some(pb::admin_fetch_event::Event::Done(d)) => break d,
            None => {}
        }
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    let resumed = if done.resumed_chunks > 0 || done.reconnects > 0 {
        format!(
            "\n  resumed: {} chunk(s) kept from an interrupted attempt, {} reconnect(s)",
            done.resumed_chunks, done.reconnects
        )
    } else {
        String::new()
    };
    Ok(Output {
        text: format!(
            "fetched {} ({}) to {} in {:.1}s ({:.0} MB/s)\n  content sha256 {} (matches the manifest)\n  receipt recorded: entry {} here, entry {} at the publisher{resumed}",
            done.dataset_id,
            size_text(done.bytes),
            out.display(),
            secs,
            done.bytes as f64 / secs / 1e6,
            data_encoding::HEXLOWER.encode(&done.content_sha256),
            done.ledger_index,
            done.publisher_ledger_index
        ),
        json: json!({"dataset_id": done.dataset_id, "bytes": done.bytes, "out": out, "content_sha256": data_encoding::HEXLOWER.encode(&done.content_sha256), "ledger_index": done.ledger_index, "publisher_ledger_index": done.publisher_ledger_index, "resumed_chunks": done.resumed_chunks, "reconnects": done.reconnects}),
    })
}
