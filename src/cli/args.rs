//! The command line's grammar: every clap type (`Cli`, `Command`, each
//! subcommand's flags), and which commands asked for `--json`. The doc
//! comments on flags and subcommands are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runtime::config::DATA_DIR_ENV;

/// The whole command line: global flags and one subcommand.
#[derive(Parser)]
#[command(name = "dsnode", version, about = "A trusted data-space exchange node")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines on stderr look (`--log-format`).
// No doc comments on the variants: clap would print them in `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// A `dsnode` subcommand.
#[derive(Subcommand)]
pub enum Command {
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

/// Flags of `dsnode demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Where to put the data space (new, empty, or a previous demo's);
    /// default: a temporary directory, removed afterwards unless --keep.
    #[arg(long)]
    pub(super) dir: Option<PathBuf>,
    /// Size of the generated dataset in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub(super) size: u64,
    /// Leave the nodes running (until Ctrl-C) and print commands to
    /// explore them.
    #[arg(long)]
    pub(super) keep: bool,
}

/// Flags of `dsnode fetch`.
#[derive(Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    pub(super) peer: String,
    /// The grant id.
    pub(super) grant: String,
    /// Where to write the dataset: a file, or `s3://BUCKET/KEY` in the
    /// node's object store (uploaded once every chunk matched).
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// Reconnect and resume this many times if the connection breaks (a
    /// fetch that still fails resumes when run again).
    #[arg(long, default_value_t = 3)]
    pub(super) retries: u32,
    /// Parallel streams, each on its own connection, over disjoint chunk
    /// ranges (default: the node's cores, at most 4; at most 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(super) streams: Option<u32>,
    /// Also hash the whole content and check it against the manifest's
    /// SHA-256 before the output is put in place (every chunk is always
    /// checked against the signed chunk list).
    #[arg(long)]
    pub(super) verify_sha256: bool,
}

/// Flags of `dsnode request`.
#[derive(Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    pub(super) peer: String,
    /// The dataset id.
    pub(super) dataset: String,
    /// The purpose of use.
    #[arg(long)]
    pub(super) purpose: String,
    /// Actions wanted (comma-separated).
    #[arg(long, default_value = "read")]
    pub(super) actions: String,
    /// How long the grant should last (e.g. 30d); default: as long as the
    /// policy allows.
    #[arg(long = "for")]
    pub(super) duration: Option<String>,
}

/// `dsnode receipts …`.
#[derive(Subcommand)]
pub enum ReceiptsCommand {
    /// Submit again the receipts kept for a held grant that the publisher
    /// did not take (it stopped between the last chunk and the receipt).
    Resend {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
        /// The publisher, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// The grant id.
        grant: String,
    },
}

/// `dsnode grants …`.
#[derive(Subcommand)]
pub enum GrantsCommand {
    /// List grants issued and held (every page; filters narrow it).
    List(GrantsListArgs),
    /// Revoke a grant this node issued.
    Revoke {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
        /// The grant id.
        grant: String,
        /// Why (recorded in the ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Flags of `dsnode grants list`.
#[derive(Args)]
pub struct GrantsListArgs {
    /// The node to act as, and `--json`.
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// Only grants for this dataset.
    #[arg(long)]
    pub(super) dataset: Option<String>,
    /// Only grants to this node id.
    #[arg(long)]
    pub(super) grantee: Option<String>,
    /// Only grants in this state.
    #[arg(long, value_enum)]
    pub(super) state: Option<GrantStateArg>,
}

/// `--state` of `dsnode grants list`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GrantStateArg {
    /// Issued by this node, not revoked.
    Issued,
    /// Issued by this node, revoked.
    Revoked,
    /// Held by this node.
    Held,
}

/// Flags of `dsnode publish`.
#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// The file to publish, or `s3://BUCKET/KEY`: an object in the node's
    /// object store, which the node reads itself.
    pub(super) file: PathBuf,
    /// The dataset's policy (TOML, see docs/policy.md).
    #[arg(long)]
    pub(super) policy: PathBuf,
    /// Title.
    #[arg(long)]
    pub(super) title: String,
    /// Description.
    #[arg(long, default_value = "")]
    pub(super) description: String,
    /// Media type of the content.
    #[arg(long, default_value = "application/octet-stream")]
    pub(super) media_type: String,
    /// A dataset this one is derived from (repeatable).
    #[arg(long = "derived-from")]
    pub(super) derived_from: Vec<String>,
    /// The grant allowing the derivation, one per --derived-from (omit for
    /// the publisher's own datasets).
    #[arg(long = "grant")]
    pub(super) grants: Vec<String>,
    /// The dataset this version replaces.
    #[arg(long)]
    pub(super) supersedes: Option<String>,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = crate::dataset::DEFAULT_CHUNK_SIZE)]
    pub(super) chunk_size: u32,
}

/// Flags of `dsnode catalog`.
#[derive(Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// The publisher, HOST:PORT.
    #[arg(long)]
    pub(super) peer: String,
    /// Only datasets whose title or description contains this.
    #[arg(long)]
    pub(super) text: Option<String>,
    /// Only datasets of this classification.
    #[arg(long)]
    pub(super) classification: Option<String>,
}

/// `dsnode policy …`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy (TOML, or ODRL JSON if the file ends in .json)
    /// and explain it in plain words.
    Check {
        /// The policy file.
        file: PathBuf,
        /// `--json`.
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

/// `dsnode audit …`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// The auditor's web console: pages of the data space, ledgers,
    /// provenance, grants and bundle checks, each verified as `audit …`
    /// verifies, served to a browser (read-only; loopback unless TLS and a
    /// token are given). Runs until Ctrl-C.
    Serve(ConsoleArgs),
    /// Read back every chunk of every dataset the local node published
    /// from its chunk store (disk or bucket) and check it against its
    /// hash; names each missing or damaged chunk (exit 1 if any).
    Storage {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The peer's latest checkpoint, signature verified.
    Checkpoint {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
        /// The audited node, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
    /// Entries matching filters, each proven against one checkpoint.
    Entries {
        /// The node to act as, and `--json`.
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
        /// The node to act as, and `--json`.
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
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Do two nodes' ledgers tell the same story? For every grant between
    /// them: the grant and every receipt recorded on both sides with the
    /// same hashes, and every entry under a checkpoint the other side
    /// witnessed. Prints each discrepancy; exits 1 if there is any.
    Reconcile {
        /// The node to act as, and `--json`.
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
        /// The node to act as, and `--json`.
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
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The grants of a dataset in force at a time, each proven in the
    /// publisher's log.
    WhoCould {
        /// The node to act as, and `--json`.
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
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// `--json`.
#[derive(Args)]
pub struct JsonFlag {
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

/// `dsnode key …`.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make the next key (node.next.key, mode 0600) and its CSR
    /// (node.next.csr, same participant and hosts as node.crt).
    New {
        /// The node's data directory.
        #[arg(long, env = DATA_DIR_ENV)]
        data_dir: PathBuf,
        /// `--json`.
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
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// `dsnode ca …`.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a CA: ca.key (0600), ca.crt, and an empty signed crl.pem.
    Init {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The CA's name (certificate common name).
        #[arg(long)]
        name: String,
        /// `--json`.
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
        /// `--json`.
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
        /// `--json`.
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
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Flags of `dsnode init`.
#[derive(Args)]
pub struct InitArgs {
    /// The node's data directory (created).
    #[arg(long, env = DATA_DIR_ENV)]
    pub(super) data_dir: PathBuf,
    /// The participant (organisation) id, e.g. city-transport.
    #[arg(long)]
    pub(super) participant: String,
    /// The data-space CA certificate (copied into the data dir).
    #[arg(long)]
    pub(super) ca_cert: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub(super) listen: SocketAddr,
    /// Host name or IP peers use to reach this node (repeatable; default
    /// from --listen).
    #[arg(long = "host")]
    pub(super) hosts: Vec<String>,
    /// Plain-HTTP address for /metrics, /healthz and /readyz
    /// (unauthenticated: keep it on loopback or a private network).
    #[arg(long, default_value = "127.0.0.1:9464", conflicts_with = "no_metrics")]
    pub(super) metrics_listen: SocketAddr,
    /// No metrics listener.
    #[arg(long)]
    pub(super) no_metrics: bool,
    #[command(flatten)]
    pub(super) out: JsonFlag,
}

/// Flags of `dsnode serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The node's data directory.
    #[arg(long, env = DATA_DIR_ENV)]
    pub(super) data_dir: PathBuf,
    /// Check node.toml and the credentials, then exit.
    #[arg(long)]
    pub(super) check_config: bool,
}

/// The flags of every command that acts as a node: its data dir and `--json`.
#[derive(Args)]
pub struct ClientArgs {
    /// The data directory of the node to act as.
    #[arg(long, env = DATA_DIR_ENV)]
    pub(super) data_dir: PathBuf,
    #[command(flatten)]
    pub(super) out: JsonFlag,
}

/// Flags of `dsnode audit serve`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// The auditor's data directory: the node the console acts as.
    #[arg(long, env = DATA_DIR_ENV)]
    pub(super) data_dir: PathBuf,
    /// A node to audit, HOST:PORT (repeatable).
    #[arg(long = "peer", required = true)]
    pub(super) peers: Vec<String>,
    /// Where to listen. Anything but loopback needs --tls-cert, --tls-key
    /// and an access token.
    #[arg(long, default_value = crate::console::DEFAULT_LISTEN)]
    pub(super) listen: std::net::SocketAddr,
    /// The pages' language, zh or en (default: the browser's
    /// Accept-Language).
    #[arg(long, value_parser = ["zh", "en"])]
    pub(super) lang: Option<String>,
    /// TLS certificate chain (PEM): a P-256 certificate for the name the
    /// browser uses.
    #[arg(long)]
    pub(super) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub(super) tls_key: Option<PathBuf>,
    /// A file (mode 0600) holding the access token; off loopback without
    /// it, one is made up and printed.
    #[arg(long)]
    pub(super) token_file: Option<PathBuf>,
}

/// `dsnode peer …`.
#[derive(Subcommand)]
pub enum PeerCommand {
    /// Introduce this node to a peer; prints both identities.
    Hello {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
        /// The peer's address, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
    /// Exchange checkpoints with a peer now (through the local node):
    /// each verifies and cosigns the other's log; a fork is reported.
    Witness {
        /// The node to act as, and `--json`.
        #[command(flatten)]
        client: ClientArgs,
        /// The peer's address, HOST:PORT.
        #[arg(long)]
        peer: String,
    },
}

/// Whether the command was asked to print JSON (`--json`) instead of text.
pub fn wants_json(command: &Command) -> bool {
    match command {
        Command::Ca(
            CaCommand::Init { out, .. }
            | CaCommand::Revoke { out, .. }
            | CaCommand::Crl { out, .. },
        ) => out.json,
        Command::Ca(CaCommand::Issue { json, .. }) => json.json,
        Command::Init(a) => a.out.json,
        Command::Key(KeyCommand::New { out, .. } | KeyCommand::Rotate { out, .. }) => out.json,
        Command::Serve(_) | Command::Demo(_) | Command::Audit(AuditCommand::Serve(_)) => false,
        Command::Peer(PeerCommand::Hello { client, .. } | PeerCommand::Witness { client, .. })
        | Command::Status(client)
        | Command::Audit(
            AuditCommand::Checkpoint { client, .. }
            | AuditCommand::Storage { client }
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
        Command::Grants(
            GrantsCommand::List(GrantsListArgs { client: c, .. })
            | GrantsCommand::Revoke { client: c, .. },
        ) => c.out.json,
    }
}
