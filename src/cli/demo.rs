//! `dsnode demo`: a whole data space on loopback, and its story.
//!
//! A data-space CA and four real nodes (each its own data dir, port,
//! certificate and ledger, all in this process, talking gRPC over mutual
//! TLS): a city transport bureau (publisher), two enterprises (consumers)
//! and a regulator (auditor). The bureau publishes generated road-sensor
//! counts under a policy; the first enterprise is granted access for route
//! planning, fetches, and signs its receipt; the second asks for marketing
//! and is refused with the policy's reasons; the bureau revokes the grant;
//! the regulator then audits both ledgers without trusting either node:
//! every checkpoint signature and inclusion proof, the receipt's
//! signature, the agreement of the two ledgers, and that the bureau's log
//! still extends the checkpoint the enterprise saw. Any failed check is
//! named and the demo fails.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::audit::{Auditor, VerifiedEntry};
use crate::envelope::Envelope;
use crate::fsutil;
use crate::identity::ca::{CaDir, CertificateAuthority, IssueRequest};
use crate::identity::cert::Host;
use crate::identity::{PeerIdentity, RoleSet};
use crate::ledger::Query;
use crate::ledger::entry::EntryKind;
use crate::node::{self, RunningNode};
use crate::peer::{AccessAsk, Code, PeerError};
use crate::runtime::config::{Config, DataDir};
use crate::wire::admin::FetchOptions;
use crate::wire::admin::{AdminClient, FetchEvent};
use crate::wire::client::PeerChannel;
use crate::wire::pb;

/// Marks a directory as made by `dsnode demo` (so it may be reused).
const MARKER: &str = ".dsnode-demo";

/// The policy the bureau publishes under.
const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read", "derive"]
purpose = ["route-planning", "research"]
roles = ["consumer"]
regions = ["CN-HE"]
grant_ttl = "7d"
max_fetches = 3

[[prohibition]]
actions = ["redistribute"]

[[obligation]]
action = "delete"
after = "30d"
"#;

/// What `dsnode demo` was asked for.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where to put the data space; `None`: a new directory under the
    /// system's temporary directory.
    pub dir: Option<PathBuf>,
    /// Size of the generated dataset, bytes.
    pub size: u64,
    /// Leave the nodes running (until Ctrl-C) and print commands to
    /// explore them.
    pub keep: bool,
    /// Show a progress bar for the fetch.
    pub progress: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up or running a step failed.
    #[error("{0}")]
    Step(String),
    /// The auditor's checks failed; each is named.
    #[error("{} verification(s) failed: {}", .0.len(), .0.join("; "))]
    Verification(Vec<String>),
}

type Result<T> = std::result::Result<T, DemoError>;

fn step_err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Step(format!("{what}: {e}"))
}

/// A failed Admin call as a step error, the failure told as tonic tells a
/// status (code and message), as the demo always has.
fn call_err(what: &str) -> impl FnOnce(PeerError) -> DemoError + '_ {
    move |e| step_err(what)(tonic::Status::from(e))
}

/// One node of the demo.
struct DemoNode {
    name: &'static str,
    participant: &'static str,
    dir: DataDir,
    running: RunningNode,
    identity: PeerIdentity,
}

impl DemoNode {
    /// A channel to `peer` as this node.
    async fn connect_to(&self, peer: SocketAddr) -> Result<PeerChannel> {
        super::connect(self.dir.root(), &peer.to_string())
            .await
            .map_err(step_err(&format!("{} connecting to {peer}", self.name)))
    }

    /// An auditor of `node`, connected as this node (as `dsnode audit`
    /// connects).
    async fn auditor_of(&self, node: &DemoNode) -> Result<Auditor> {
        let peer = node.addr();
        super::auditor(self.dir.root(), &peer.to_string())
            .await
            .map_err(step_err(&format!("{} connecting to {peer}", self.name)))
    }

    /// This node's own Admin API.
    async fn admin(&self) -> Result<AdminClient> {
        let conn = self.connect_to(self.addr()).await?;
        Ok(AdminClient::new(&conn))
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }
}

/// Prints the story.
struct Story {
    out: std::io::Stdout,
    step: usize,
}

impl Story {
    fn step(&mut self, text: &str) {
        self.step += 1;
        let _ = writeln!(self.out, "\n== {}. {text}", self.step);
    }

    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "   {text}");
    }
}

/// Prepares `dir`: new or empty, or a previous demo (cleared). Never a
/// symbolic link: the CA key and node keys go in here.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(DemoError::Step(format!(
            "{} is a symbolic link; give a real directory",
            dir.display()
        )));
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(step_err(&dir.display().to_string()))?;
        if entries.next().is_some() {
            if !dir.join(MARKER).exists() {
                return Err(DemoError::Step(format!(
                    "{} is not empty and is not a previous demo; give an empty or new directory",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).map_err(step_err("clearing the previous demo"))?;
        }
    }
    fsutil::create_private_dir(dir).map_err(step_err("creating the demo directory"))?;
    std::fs::write(dir.join(MARKER), b"made by dsnode demo\n")
        .map_err(step_err("writing the demo marker"))?;
    Ok(())
}

fn free_addr() -> Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(step_err("finding a free port"))
}

/// Makes and starts one node: identity, certificate from the CA, CRL.
async fn make_node(
    root: &Path,
    ca: &CaDir,
    (name, participant, roles, region): (&'static str, &'static str, &str, Option<&str>),
) -> Result<DemoNode> {
    let dir = DataDir::new(root.join(name));
    node::init_data_dir(
        &dir,
        &participant.parse().map_err(step_err("participant"))?,
        ca.ca().cert_pem().as_bytes(),
        (free_addr()?, Some(free_addr()?)),
        vec![Host::Ip([127, 0, 0, 1].into())],
    )
    .map_err(step_err(&format!("creating {name}")))?;
    let csr = std::fs::read_to_string(dir.csr()).map_err(step_err("reading the CSR"))?;
    let mut req = IssueRequest::new(RoleSet::parse_list(roles).map_err(step_err("roles"))?);
    req.region = region
        .map(str::parse)
        .transpose()
        .map_err(step_err("region"))?;
    let issued = ca
        .ca()
        .issue(&csr, &req)
        .map_err(step_err(&format!("certifying {name}")))?;
    fsutil::write_atomic(&dir.cert(), issued.pem.as_bytes(), fsutil::PUBLIC_MODE)
        .map_err(step_err("writing the certificate"))?;
    copy_crl(ca, &dir)?;
    // A port found free may be taken by something else before the node
    // binds it (the machine is busy): then the node gets new ones.
    let mut tries = 0;
    let running = loop {
        let config = Config::load(dir.root()).map_err(step_err("node.toml"))?;
        match node::start(config).await {
            Err(node::NodeError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 5 =>
            {
                tries += 1;
                let toml = Config::initial_toml(free_addr()?, Some(free_addr()?));
                fsutil::write_atomic(&dir.config(), toml.as_bytes(), fsutil::PUBLIC_MODE)
                    .map_err(step_err("rewriting node.toml"))?;
            }
            started => break started.map_err(step_err(&format!("starting {name}")))?,
        }
    };
    Ok(DemoNode {
        name,
        participant,
        dir,
        running,
        identity: issued.identity,
    })
}

fn copy_crl(ca: &CaDir, dir: &DataDir) -> Result<()> {
    let crl = std::fs::read(ca.crl_path()).map_err(step_err("reading the CRL"))?;
    fsutil::write_atomic(&dir.crl(), &crl, fsutil::PUBLIC_MODE).map_err(step_err("copying the CRL"))
}

/// Hourly road-sensor counts, about `size` bytes (whole lines).
fn road_sensor_counts(size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(64));
    out.extend_from_slice(b"hour,sensor,vehicles\n");
    let mut i: u64 = 0;
    while (out.len() as u64) < size {
        let (day, hour, sensor) = (i / (24 * 200), (i / 200) % 24, i % 200);
        let vehicles = (hour * 37 + sensor * 11 + day * 5) % 900;
        let line = format!(
            "2026-{:02}-{:02}T{hour:02}:00Z,RS-{sensor:03},{vehicles}\n",
            1 + (day / 28) % 12,
            1 + day % 28
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out
}

fn hex(h: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(h)
}

fn short(h: &[u8]) -> String {
    hex(h).chars().take(16).collect()
}

/// Runs the demo; `Ok` only if every verification passed.
pub async fn run(options: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let root = match &options.dir {
        Some(d) => {
            let root = std::path::absolute(d).map_err(step_err("the demo directory"))?;
            prepare_dir(&root)?;
            root
        }
        None => {
            // A fresh, unpredictable name, created here (mode 0700): no
            // one else can have prepared it.
            let root = std::env::temp_dir().join(format!(
                "dsnode-demo-{:016x}",
                rand_core::RngCore::next_u64(&mut rand_core::OsRng)
            ));
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&root)
                .map_err(step_err("creating the demo directory"))?;
            std::fs::write(root.join(MARKER), b"made by dsnode demo\n")
                .map_err(step_err("writing the demo marker"))?;
            root
        }
    };
    let mut story = Story {
        out: std::io::stdout(),
        step: 0,
    };
    let _ = writeln!(
        story.out,
        "dsnode demo: a trusted data space on this machine, in {}",
        root.display()
    );

    story.step("The platform operator creates the data space's certificate authority");
    let ca_dir = root.join("ca");
    CertificateAuthority::init(&ca_dir, "Demo City Data Space CA").map_err(step_err("the CA"))?;
    let ca = CaDir::open(&ca_dir).map_err(step_err("the CA"))?;
    story.say(&format!("CA key and certificate in {}", ca_dir.display()));

    story
        .step("Four participants create node identities; the operator certifies them; nodes start");
    let transport = make_node(
        &root,
        &ca,
        ("transport", "city-transport", "publisher", Some("CN-HE")),
    )
    .await?;
    let acme = make_node(
        &root,
        &ca,
        ("acme", "acme-logistics", "consumer", Some("CN-HE")),
    )
    .await?;
    let beacon = make_node(
        &root,
        &ca,
        ("beacon", "beacon-adtech", "consumer", Some("CN-HE")),
    )
    .await?;
    let regulator = make_node(
        &root,
        &ca,
        ("regulator", "city-data-regulator", "auditor", None),
    )
    .await?;
    for (n, what) in [
        (&transport, "government data publisher"),
        (&acme, "enterprise"),
        (&beacon, "enterprise"),
        (&regulator, "auditor"),
    ] {
        let roles = n.identity.roles.to_string();
        story.say(&format!(
            "{:<10} {:<20} {what:<26} {roles} on {} (metrics {})",
            n.name,
            n.participant,
            n.addr(),
            n.running
                .metrics_addr()
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        ));
    }

    let result = story_and_audit(
        &mut story,
        &options,
        &root,
        [&transport, &acme, &beacon, &regulator],
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => {
            let _ = writeln!(story.out, "\nAll verifications passed ({secs:.1}s).");
        }
        Err(e) => {
            let _ = writeln!(story.out, "\nDEMO FAILED: {e}");
        }
    }
    if options.keep && result.is_ok() {
        print_explore(&mut story, &root, [&transport, &acme, &beacon, &regulator]);
        let _ = tokio::signal::ctrl_c().await;
    }
    for n in [transport, acme, beacon, regulator] {
        let name = n.name;
        if let Err(e) = n.running.shutdown().await {
            tracing::warn!(node = name, error = %e, "demo node did not stop cleanly");
        }
    }
    if options.dir.is_none() && !options.keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn print_explore(story: &mut Story, root: &Path, nodes: [&DemoNode; 4]) {
    let [transport, acme, _, regulator] = nodes;
    let d = |n: &DemoNode| n.dir.root().display().to_string();
    let peers: Vec<String> = nodes
        .iter()
        .map(|n| format!("--peer {}", n.addr()))
        .collect();
    let serve = format!(
        "dsnode audit serve --data-dir {} {}",
        d(regulator),
        peers.join(" ")
    );
    let _ = writeln!(
        story.out,
        "\nThe nodes keep running until Ctrl-C. Explore them from another terminal:\n\
         \n  dsnode status  --data-dir {acme}\
         \n  dsnode catalog --data-dir {acme} --peer {t}\
         \n  dsnode grants list --data-dir {tdir}\
         \n  dsnode audit checkpoint --data-dir {reg} --peer {t}\
         \n  dsnode audit entries --data-dir {reg} --peer {a}\
         \n  dsnode audit verify --data-dir {tdir}   (after Ctrl-C: the ledger on disk)\
         \n  curl -s http://{m}/metrics\
         \n\nThe regulator's web console (then open http://{console}/ in a browser):\
         \n\n  {serve}\
         \n\nEverything is in {root}.",
        acme = d(acme),
        tdir = d(transport),
        reg = d(regulator),
        t = transport.addr(),
        a = acme.addr(),
        m = transport
            .running
            .metrics_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        console = crate::console::DEFAULT_LISTEN,
        serve = serve,
        root = root.display(),
    );
}

async fn story_and_audit(
    story: &mut Story,
    options: &DemoOptions,
    root: &Path,
    [transport, acme, beacon, regulator]: [&DemoNode; 4],
) -> Result<()> {
    // 3. Publish.
    story.step("The transport bureau publishes hourly road-sensor counts under a policy");
    let content = road_sensor_counts(options.size);
    let content_sha256 = crate::digest::sha256(&content);
    let policy = crate::policy::Policy::from_toml(POLICY).map_err(step_err("the demo policy"))?;
    for line in policy.explain().lines() {
        story.say(&format!("policy: {line}"));
    }
    let header = pb::PublishHeader {
        title: "Hourly road-sensor counts".into(),
        description: "Ring-road sensors, vehicles per hour (generated)".into(),
        media_type: "text/csv".into(),
        policy_toml: POLICY.into(),
        size: content.len() as u64,
        ..Default::default()
    };
    let pieces: Vec<Vec<u8>> = content.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let published = transport
        .admin()
        .await?
        .publish(header, tokio_stream::iter(pieces))
        .await
        .map_err(call_err("publishing"))?;
    let dataset = published.dataset_id.clone();
    story.say(&format!(
        "published {dataset}: {} bytes, content sha256 {}…, signed manifest, ledger entry {}",
        content.len(),
        short(&content_sha256),
        published.ledger_index
    ));

    // 4. Grant.
    story.step("acme-logistics asks for access for route planning: granted");
    let bureau = transport.addr().to_string();
    let ask = |purpose: &str| AccessAsk {
        dataset_id: dataset.clone(),
        purpose: purpose.into(),
        actions: vec!["read".into()],
        duration_secs: 0,
    };
    let answer = acme
        .admin()
        .await?
        .request_access(&bureau, ask("route-planning"))
        .await
        .map_err(call_err("acme's request"))?;
    let grant_env: Envelope = answer
        .grant
        .ok_or_else(|| DemoError::Step("no grant in the answer".into()))?
        .into();
    let grant = crate::exchange::grant::verify_grant(grant_env, &transport.identity.public_key)
        .map_err(step_err("the grant"))?;
    let g = grant.value().clone();
    story.say(&format!(
        "grant {} signed by the bureau: purpose {}, actions read, until {}, at most {} fetches",
        g.id,
        g.purpose,
        crate::exchange::grant::time_text(g.not_after_ms),
        g.max_fetches
            .map_or_else(|| "unlimited".to_owned(), |m| m.to_string())
    ));

    // 5. Fetch.
    story.step("acme fetches it: every chunk verified, written, receipts signed and exchanged");
    let out = root.join("acme-road-sensor-counts.csv");
    let mut events = acme
        .admin()
        .await?
        .fetch(
            &bureau,
            &g.id.to_string(),
            &out,
            &FetchOptions {
                force: true,
                retries: 3,
                ..FetchOptions::default()
            },
        )
        .await
        .map_err(call_err("acme's fetch"))?;
    let bar = if options.progress {
        indicatif::ProgressBar::new(content.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "   {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let fetched = loop {
        match events.next().await.map_err(call_err("acme's fetch"))? {
            Some(FetchEvent::Progress(p)) => bar.set_position(p.bytes),
            Some(FetchEvent::Done(d)) => break d,
            None => return Err(DemoError::Step("the fetch ended without a result".into())),
        }
    };
    bar.finish_and_clear();
    let written = std::fs::read(&out).map_err(step_err("reading the fetched file"))?;
    let same = crate::digest::sha256(&written) == content_sha256;
    story.say(&format!(
        "{} bytes to {}; sha256 {}… {}",
        fetched.bytes,
        out.display(),
        short(&fetched.content_sha256),
        if same {
            "(identical to what was published)"
        } else {
            "(DIFFERS)"
        }
    ));
    story.say(&format!(
        "receipt signed by acme: ReceiptRecorded at entry {} in acme's ledger, entry {} in the bureau's",
        fetched.ledger_index, fetched.publisher_ledger_index
    ));

    // 6. Denial.
    story.step(
        "beacon-adtech asks for the same data for marketing: refused, with the policy's reasons",
    );
    match beacon
        .admin()
        .await?
        .request_access(&bureau, ask("marketing"))
        .await
    {
        Ok(_) => {
            return Err(DemoError::Verification(vec![
                "beacon was granted access for marketing".into(),
            ]));
        }
        Err(e) if e.code == Code::PermissionDenied => {
            story.say(&format!("refused: {}", e.message));
        }
        Err(e) => {
            return Err(DemoError::Step(format!("beacon's request: {}", e.message)));
        }
    }

    // 7. Revoke.
    story.step("The bureau revokes acme's grant");
    let revoked = transport
        .admin()
        .await?
        .revoke_grant(&g.id.to_string(), "route-planning pilot ended")
        .await
        .map_err(call_err("revoking"))?;
    story.say(&format!(
        "GrantRevoked at entry {} of the bureau's ledger",
        revoked.ledger_index
    ));
    match acme
        .admin()
        .await?
        .fetch(
            &bureau,
            &g.id.to_string(),
            &root.join("after-revocation.csv"),
            &FetchOptions {
                force: true,
                ..FetchOptions::default()
            },
        )
        .await
    {
        Ok(mut again) => match again.next().await {
            Err(e) if e.code == Code::PermissionDenied => {
                story.say(&format!("acme fetching again is refused: {}", e.message));
            }
            _ => {
                return Err(DemoError::Verification(vec![
                    "a revoked grant was still served".into(),
                ]));
            }
        },
        Err(e) if e.code == Code::PermissionDenied => {
            story.say(&format!("acme fetching again is refused: {}", e.message));
        }
        Err(e) => {
            return Err(DemoError::Step(format!(
                "acme's second fetch: {}",
                e.message
            )));
        }
    }

    // 8. Audit.
    story.step("The regulator audits both ledgers, trusting neither node");
    let (checks, report) = audit([transport, acme, regulator], &g, same).await?;
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| w.clone())
        .collect();
    for (what, ok) in &checks {
        story.say(&format!("[{}] {what}", if *ok { "ok" } else { "FAILED" }));
    }
    let _ = write!(story.out, "{report}");
    if !failed.is_empty() {
        return Err(DemoError::Verification(failed));
    }

    // 9. Witnessing, reconciliation and an evidence bundle.
    story.step(
        "acme and the bureau witness each other's logs; the regulator reconciles them and hands over one evidence file",
    );
    let witnessed = acme
        .admin()
        .await?
        .witness(&bureau)
        .await
        .map_err(call_err("exchanging checkpoints"))?;
    story.say(&format!(
        "acme verified the bureau's log at size {} (consistent with what it saw before) and cosigned it; the bureau cosigned acme's",
        witnessed.peer_size
    ));
    let mut on_bureau = regulator.auditor_of(transport).await?;
    let mut on_acme = regulator.auditor_of(acme).await?;
    let r = crate::audit::reconcile::reconcile(&mut on_bureau, &mut on_acme, None)
        .await
        .map_err(step_err("reconciling"))?;
    for d in &r.discrepancies {
        story.say(&format!("DISCREPANCY: {d}"));
    }
    let mut checks = vec![(
        format!(
            "reconciliation: {} grant(s) and {} receipt(s) recorded alike on both sides, every entry under a checkpoint the other side witnessed (bureau seen up to {}, acme up to {})",
            r.grants, r.receipts, r.witnessed.0, r.witnessed.1
        ),
        r.discrepancies.is_empty() && r.grants == 1 && r.receipts == 1,
    )];
    let bundle = crate::audit::evidence::build(&mut on_bureau, &mut on_acme, &g.id.to_string())
        .await
        .map_err(step_err("building the evidence bundle"))?;
    let file = root.join(format!("evidence-{}.json", g.id));
    let bytes = bundle.to_bytes();
    fsutil::write_atomic(&file, &bytes, fsutil::PUBLIC_MODE)
        .map_err(step_err("writing the evidence bundle"))?;
    let ca_pem =
        std::fs::read(root.join("ca").join("ca.crt")).map_err(step_err("the CA certificate"))?;
    let verified = crate::audit::evidence::verify(&bytes, &ca_pem);
    story.say(&format!(
        "wrote {} ({} bytes); checked offline with only ca.crt (`dsnode audit verify-bundle {} --ca {}`):",
        file.display(),
        bytes.len(),
        file.display(),
        root.join("ca").join("ca.crt").display()
    ));
    match &verified {
        Ok(account) => {
            for line in account.lines() {
                story.say(&format!("  {line}"));
            }
        }
        Err(e) => story.say(&format!("  {e}")),
    }
    checks.push((
        "the evidence bundle verifies offline against the CA certificate alone".into(),
        verified.is_ok(),
    ));
    let mut tampered = bytes;
    if let Some(i) = tampered.iter().position(|b| *b == b'=') {
        tampered[i] = b'A';
    }
    checks.push((
        "the same bundle with one byte changed does not".into(),
        crate::audit::evidence::verify(&tampered, &ca_pem).is_err(),
    ));
    for (what, ok) in &checks {
        story.say(&format!("[{}] {what}", if *ok { "ok" } else { "FAILED" }));
    }
    let failed: Vec<String> = checks
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| w)
        .collect();
    if !failed.is_empty() {
        return Err(DemoError::Verification(failed));
    }
    Ok(())
}

/// A ledger's entries for the grant, every one proven against the node's
/// signed checkpoint.
async fn entries_of(
    regulator: &DemoNode,
    node: &DemoNode,
    grant: &str,
) -> Result<(
    crate::ledger::note::SignedCheckpoint,
    Vec<VerifiedEntry>,
    Auditor,
)> {
    let mut auditor = regulator.auditor_of(node).await?;
    let q = Query {
        grant: Some(grant.into()),
        ..Query::default()
    };
    let (cp, entries) = auditor
        .entries(q, true)
        .await
        .map_err(step_err(&format!("{}'s ledger did not verify", node.name)))?;
    Ok((cp, entries, auditor))
}

fn kinds(entries: &[VerifiedEntry]) -> Vec<EntryKind> {
    entries.iter().map(|e| e.entry.draft.kind).collect()
}

fn find(entries: &[VerifiedEntry], kind: EntryKind) -> Option<&VerifiedEntry> {
    entries.iter().find(|e| e.entry.draft.kind == kind)
}

/// The regulator's checks (each named, passed or not) and the provenance
/// report.
async fn audit(
    [transport, acme, regulator]: [&DemoNode; 3],
    g: &crate::exchange::grant::Grant,
    content_matches: bool,
) -> Result<(Vec<(String, bool)>, String)> {
    let grant = g.id.to_string();
    let (pub_cp, pub_entries, mut pub_auditor) = entries_of(regulator, transport, &grant).await?;
    let (con_cp, con_entries, _) = entries_of(regulator, acme, &grant).await?;
    let mut checks = vec![
        (
            format!(
                "the bureau's checkpoint (size {}) is signed by the key in its certificate; its {} entries for the grant are proven included",
                pub_cp.checkpoint.size,
                pub_entries.len()
            ),
            true,
        ),
        (
            format!(
                "acme's checkpoint (size {}) is signed by the key in its certificate; its {} entries for the grant are proven included",
                con_cp.checkpoint.size,
                con_entries.len()
            ),
            true,
        ),
    ];
    let want_pub = [
        EntryKind::AccessGranted,
        EntryKind::TransferStarted,
        EntryKind::ReceiptRecorded,
        EntryKind::GrantRevoked,
    ];
    let want_con = [
        EntryKind::GrantReceived,
        EntryKind::TransferCompleted,
        EntryKind::ReceiptRecorded,
        EntryKind::PeerCheckpointSeen,
    ];
    checks.push((
        format!("the bureau's story in order: {want_pub:?}"),
        kinds(&pub_entries).starts_with(&want_pub),
    ));
    checks.push((
        format!("acme's story in order: {want_con:?}"),
        kinds(&con_entries) == want_con,
    ));
    let both_name = |e: &VerifiedEntry| {
        e.entry.draft.parties.contains(&transport.identity.node_id)
            && e.entry.draft.parties.contains(&acme.identity.node_id)
            && e.entry.draft.dataset.as_deref() == Some(g.dataset.to_string().as_str())
    };
    checks.push((
        "every entry on both sides names both parties, the dataset and the grant".into(),
        pub_entries.iter().chain(&con_entries).all(both_name),
    ));
    let granted = find(&pub_entries, EntryKind::AccessGranted);
    let received = find(&con_entries, EntryKind::GrantReceived);
    checks.push((
        "both ledgers hold the hash of the same signed grant".into(),
        granted.and_then(|e| e.entry.draft.object_hash).is_some()
            && granted.and_then(|e| e.entry.draft.object_hash)
                == received.and_then(|e| e.entry.draft.object_hash),
    ));
    let pub_receipt = find(&pub_entries, EntryKind::ReceiptRecorded);
    let con_receipt = find(&con_entries, EntryKind::ReceiptRecorded);
    let receipt_hash = con_receipt.and_then(|e| e.entry.draft.object_hash);
    checks.push((
        "both ledgers hold the hash of the same receipt, and acme's entry names the bureau's"
            .into(),
        receipt_hash.is_some()
            && receipt_hash == pub_receipt.and_then(|e| e.entry.draft.object_hash)
            && con_receipt.and_then(|e| e.entry.draft.peer_entry)
                == pub_receipt.map(|e| e.entry.index),
    ));

    // The receipt acme kept, as acme would hand it to an auditor.
    let transfer = find(&pub_entries, EntryKind::TransferStarted).map(|e| e.entry.index);
    let receipt_path = crate::exchange::book::receipt_path(
        &acme.dir.grants(),
        &g.id,
        transfer.unwrap_or_default(),
    );
    let receipt = std::fs::read_to_string(&receipt_path)
        .ok()
        .and_then(|t| Envelope::from_json(&t).ok());
    // Both receipt entries, and acme's TransferCompleted, name that
    // transfer entry in their typed `transfer` field.
    let names_transfer = [
        pub_receipt,
        con_receipt,
        find(&con_entries, EntryKind::TransferCompleted),
    ]
    .iter()
    .all(|e| e.and_then(|e| e.entry.draft.transfer) == transfer);
    let verified = receipt.clone().and_then(|env| {
        crate::exchange::receipt::verify_receipt(env, &acme.identity.public_key).ok()
    });
    checks.push((
        "the receipt is signed by acme's key, is the one both ledgers name, and closes the bureau's transfer entry".into(),
        verified.as_ref().is_some_and(|r| {
            Some(r.envelope().payload_hash()) == receipt_hash
                && Some(r.value().transfer_index) == transfer
                && r.value().grant == g.id
        }) && names_transfer,
    ));
    checks.push((
        "the content acme received has the published content hash".into(),
        content_matches,
    ));

    // The bureau's checkpoint acme saw must be a prefix of the bureau's log
    // now: no fork, nothing rewritten since.
    let seen = find(&con_entries, EntryKind::PeerCheckpointSeen);
    let verifier = crate::ledger::note::NoteVerifier::new(
        &crate::ledger::origin_for(&transport.identity.node_id),
        &transport.identity.public_key,
    )
    .map_err(step_err("the bureau's vkey"))?;
    let witnessed = seen.and_then(|e| {
        crate::ledger::note::SignedCheckpoint::verify(e.entry.draft.detail.as_bytes(), &verifier)
            .ok()
    });
    let consistent = match &witnessed {
        Some(w) => match pub_auditor.prove_consistency(w.checkpoint.size, 0).await {
            Ok((old, _, _)) => old.checkpoint.root == w.checkpoint.root,
            Err(_) => false,
        },
        None => false,
    };
    checks.push((
        format!(
            "the bureau's checkpoint acme recorded (size {}) is signed by the bureau and its log now provably extends it",
            witnessed.as_ref().map_or(0, |w| w.checkpoint.size)
        ),
        consistent,
    ));

    // The provenance report.
    use std::fmt::Write as _;
    let mut report = String::new();
    let _ = writeln!(report, "\n   Provenance of {}:", g.dataset);
    let pub_idx =
        |k| find(&pub_entries, k).map_or_else(|| "-".into(), |e| format!("#{}", e.entry.index));
    let con_idx =
        |k| find(&con_entries, k).map_or_else(|| "-".into(), |e| format!("#{}", e.entry.index));
    let rows = [
        (
            "granted to acme (route-planning)",
            pub_idx(EntryKind::AccessGranted),
            con_idx(EntryKind::GrantReceived),
        ),
        (
            "transfer started / completed",
            pub_idx(EntryKind::TransferStarted),
            con_idx(EntryKind::TransferCompleted),
        ),
        (
            "receipt recorded",
            pub_idx(EntryKind::ReceiptRecorded),
            con_idx(EntryKind::ReceiptRecorded),
        ),
        (
            "bureau checkpoint witnessed",
            "-".into(),
            con_idx(EntryKind::PeerCheckpointSeen),
        ),
        (
            "grant revoked",
            pub_idx(EntryKind::GrantRevoked),
            "-".into(),
        ),
    ];
    let _ = writeln!(
        report,
        "   {:<36} {:>8} {:>8}",
        "event (ledger entry)", "bureau", "acme"
    );
    for (what, p, c) in rows {
        let _ = writeln!(report, "   {what:<36} {p:>8} {c:>8}");
    }
    let _ = writeln!(
        report,
        "   grant {}  receipt {}…  content {}…",
        g.id,
        receipt_hash.map_or_else(|| "-".into(), |h| short(&h)),
        verified
            .as_ref()
            .map_or_else(|| "-".into(), |r| short(&r.value().content_sha256)),
    );
    Ok((checks, report))
}
