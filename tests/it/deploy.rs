//! The deployment artefacts in `deploy/`. No container engine runs here,
//! so what can run does: `make-space.sh` makes a three-node data space on
//! 127.0.0.1 and the image's entrypoint serves it (one node through the
//! Kubernetes Secret copy), the nodes say hello and stop cleanly on
//! SIGTERM. What cannot run is parsed: the compose file, every Kubernetes
//! manifest, the Dockerfile and the systemd unit are held to the CLI (each
//! command they give runs through the built binary with `--help`), to the
//! ports `make-space.sh` writes into node.toml, and to each other.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

const DSNODE: &str = env!("CARGO_BIN_EXE_dsnode");

/// The three nodes `make-space.sh` makes: directory (and compose service),
/// environment prefix, participant.
const NODES: [(&str, &str, &str); 3] = [
    ("publisher", "PUBLISHER", "city-transport"),
    ("consumer", "CONSUMER", "acme-logistics"),
    ("auditor", "AUDITOR", "city-data-regulator"),
];

/// Files the node's Secret holds.
const SECRET_FILES: [&str; 5] = ["node.key", "tls.key", "node.crt", "ca.crt", "crl.pem"];

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A deploy/ script run with bash, the built binary as DSNODE_BIN, and none
/// of the caller's dsnode variables.
fn script(name: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(deploy(name))
        .env("DSNODE_BIN", DSNODE)
        .env_remove("DSNODE_DATA_DIR")
        .env_remove("DSNODE_SECRETS_DIR")
        .env_remove("DSNODE_SPACE_DIR")
        .env_remove("RUST_LOG");
    cmd
}

/// The image's entrypoint acting on `data_dir`.
fn entrypoint(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = script("docker-entrypoint.sh");
    cmd.args(args).env("DSNODE_DATA_DIR", data_dir);
    cmd
}

fn dsnode(args: &[&str]) -> Output {
    Command::new(DSNODE)
        .args(args)
        .env_remove("DSNODE_DATA_DIR")
        .output()
        .expect("run dsnode")
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then freed).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// `GET path` over plain HTTP/1.1: the status code, or `None` if nothing
/// listens.
fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// A node run by the entrypoint; killed if the test fails.
struct Node {
    name: &'static str,
    child: Child,
    log: PathBuf,
    config: dsnode::runtime::config::Config,
}

impl Node {
    fn start(name: &'static str, mut cmd: Command, data_dir: &Path, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn entrypoint");
        // The entrypoint may install node.toml first: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !data_dir.join("node.toml").exists() {
            assert!(Instant::now() < deadline, "{name}: no node.toml");
            std::thread::sleep(Duration::from_millis(20));
        }
        let config = dsnode::runtime::config::Config::load(data_dir).expect("node.toml");
        Self {
            name,
            child,
            log,
            config,
        }
    }

    fn metrics(&self) -> SocketAddr {
        self.config.metrics_listen.expect("metrics_listen")
    }

    fn log(&self) -> String {
        read(&self.log)
    }

    /// Waits for `/readyz` to answer 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(self.metrics(), "/readyz") == Some(200) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{} exited ({status}) before ready:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} did not exit after SIGTERM:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// make-space.sh on 127.0.0.1 with free ports, the three nodes served by
/// the image's entrypoint (the auditor from a Secret-like directory into an
/// empty data dir, as on Kubernetes), `/readyz` 200, hellos across them,
/// the image's health check, then SIGTERM and exit status 0.
#[test]
fn make_space_and_entrypoint_serve_three_nodes_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = dir.path().join("space");
    let ports = free_ports(2 * NODES.len());
    let make = || {
        let mut cmd = script("make-space.sh");
        cmd.env("DSNODE_SPACE_DIR", &space)
            .env("DSNODE_LISTEN_HOST", "127.0.0.1");
        for (i, (_, var, _)) in NODES.iter().enumerate() {
            cmd.env(format!("{var}_HOST"), "127.0.0.1")
                .env(format!("{var}_PORT"), ports[2 * i].to_string())
                .env(format!("{var}_METRICS_PORT"), ports[2 * i + 1].to_string());
        }
        cmd.output().expect("run make-space.sh")
    };
    let out = make();
    succeeded(&out, "make-space.sh");
    for (i, (name, _, participant)) in NODES.iter().enumerate() {
        let node_dir = space.join(name);
        let config = dsnode::runtime::config::Config::load(&node_dir).expect("node.toml");
        assert_eq!(
            config.listen,
            SocketAddr::from(([127, 0, 0, 1], ports[2 * i]))
        );
        assert_eq!(
            config.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1])))
        );
        let out = dsnode(&["serve", "--data-dir", p(&node_dir), "--check-config"]);
        succeeded(&out, "check-config");
        assert!(
            text(&out.stdout).contains(&format!("participant {participant}")),
            "{}",
            text(&out.stdout)
        );
    }
    // Idempotent: a second run keeps everything.
    let key_before = std::fs::read(space.join("publisher/node.key")).expect("key");
    let crt_before = std::fs::read(space.join("consumer/node.crt")).expect("crt");
    let again = make();
    succeeded(&again, "make-space.sh again");
    assert!(
        text(&again.stdout).contains("already made"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        std::fs::read(space.join("publisher/node.key")).expect("key"),
        key_before
    );
    assert_eq!(
        std::fs::read(space.join("consumer/node.crt")).expect("crt"),
        crt_before
    );

    // The auditor as on Kubernetes: its Secret (and the ConfigMap's
    // node.toml) mounted read-only, group-readable; an empty volume.
    let secrets = dir.path().join("auditor-secret");
    std::fs::create_dir(&secrets).expect("mkdir");
    for f in SECRET_FILES.iter().chain(&["node.toml"]) {
        std::fs::copy(space.join("auditor").join(f), secrets.join(f)).expect("copy");
        std::fs::set_permissions(secrets.join(f), std::fs::Permissions::from_mode(0o440))
            .expect("chmod");
    }
    let auditor_data = dir.path().join("auditor-volume");

    // What is missing is named, before and instead of any start.
    let out = entrypoint(&auditor_data, &[]).output().expect("entrypoint");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    std::fs::create_dir(&auditor_data).expect("mkdir");
    let out = entrypoint(&auditor_data, &["serve"])
        .output()
        .expect("entrypoint");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for f in [
        "node.toml",
        "node.key",
        "tls.key",
        "node.crt",
        "ca.crt",
        "crl.pem",
    ] {
        assert!(err.contains(f), "missing {f} not named: {err}");
    }
    // A Secret still holding the placeholders of deploy/k8s/secrets.yaml.
    let placeholder = dir.path().join("placeholder-secret");
    std::fs::create_dir(&placeholder).expect("mkdir");
    for f in SECRET_FILES {
        std::fs::write(placeholder.join(f), "REPLACE_ME").expect("write");
    }
    let out = entrypoint(&auditor_data, &[])
        .env("DSNODE_SECRETS_DIR", &placeholder)
        .output()
        .expect("entrypoint");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not PEM") && err.contains("placeholder"),
        "{err}"
    );
    assert!(!auditor_data.join("node.key").exists());

    let mut nodes = Vec::new();
    for (name, _, _) in NODES {
        let (data_dir, secrets_dir) = if name == "auditor" {
            (auditor_data.clone(), Some(&secrets))
        } else {
            (space.join(name), None)
        };
        let mut cmd = entrypoint(&data_dir, &["serve", "--log-format", "json"]);
        if let Some(s) = secrets_dir {
            cmd.env("DSNODE_SECRETS_DIR", s);
        }
        let log = dir.path().join(format!("{name}.log"));
        nodes.push((Node::start(name, cmd, &data_dir, log), data_dir));
    }
    for (node, _) in &mut nodes {
        node.wait_ready();
    }

    // The entrypoint exec'd dsnode: the process signals reach is the node.
    let exe = std::fs::canonicalize(DSNODE).expect("exe");
    for (node, _) in &nodes {
        let running =
            std::fs::read_link(format!("/proc/{}/exe", node.child.id())).expect("proc exe");
        assert_eq!(
            running, exe,
            "{} is not exec'd by the entrypoint",
            node.name
        );
        assert_eq!(http_get(node.metrics(), "/healthz"), Some(200));
        assert_eq!(http_get(node.metrics(), "/metrics"), Some(200));
        // JSON log lines, the option passed through by the entrypoint.
        let log = node.log();
        let serving = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["fields"]["message"] == "serving");
        assert!(serving, "{}: no JSON `serving` line:\n{log}", node.name);
    }
    // The Secret copy: the key readable by its owner only, the rest as given.
    let auditor = &nodes[2].1;
    let log = nodes[2].0.log();
    assert!(log.contains("credentials installed"), "{log}");
    let mode = |f: &str| {
        std::fs::metadata(auditor.join(f))
            .expect("installed file")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("node.key"), 0o600);
    assert_eq!(mode("tls.key"), 0o600);
    for f in ["node.crt", "ca.crt", "crl.pem", "node.toml"] {
        assert_eq!(mode(f), 0o644, "{f}");
        assert_eq!(
            std::fs::read(auditor.join(f)).expect("installed"),
            std::fs::read(secrets.join(f)).expect("secret"),
            "{f}"
        );
    }

    let addr = |i: usize| nodes[i].0.config.listen.to_string();
    // consumer → publisher, with the plain CLI.
    let out = dsnode(&[
        "peer",
        "hello",
        "--data-dir",
        p(&nodes[1].1),
        "--peer",
        &addr(0),
        "--json",
    ]);
    succeeded(&out, "hello consumer → publisher");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server"]["participant"], "city-transport");
    assert_eq!(v["server"]["region"], "CN-HE");
    assert_eq!(v["caller"]["participant"], "acme-logistics");
    assert_eq!(v["caller"]["roles"], serde_json::json!(["consumer"]));
    // auditor (the Secret-installed credentials) → publisher, through the
    // entrypoint passing a client subcommand on with DSNODE_DATA_DIR.
    let out = entrypoint(auditor, &["peer", "hello", "--peer", &addr(0), "--json"])
        .output()
        .expect("entrypoint hello");
    succeeded(&out, "hello auditor → publisher");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["caller"]["participant"], "city-data-regulator");
    assert_eq!(v["caller"]["roles"], serde_json::json!(["auditor"]));
    // consumer → auditor: the auditor serves with its installed key.
    let out = dsnode(&[
        "peer",
        "hello",
        "--data-dir",
        p(&nodes[1].1),
        "--peer",
        &addr(2),
        "--json",
    ]);
    succeeded(&out, "hello consumer → auditor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server"]["participant"], "city-data-regulator");
    // The local Admin API, through the entrypoint.
    let out = entrypoint(&nodes[0].1, &["status", "--json"])
        .output()
        .expect("entrypoint status");
    succeeded(&out, "status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["node"]["participant"], "city-transport");
    // The image's HEALTHCHECK.
    let out = entrypoint(&nodes[0].1, &["healthcheck"])
        .output()
        .expect("healthcheck");
    succeeded(&out, "healthcheck");

    // SIGTERM: drain and exit 0, well within systemd's and Kubernetes'
    // 30 s (drain_deadline is 20 s; nothing is in flight here).
    for (node, _) in &mut nodes {
        let status = node.terminate(Duration::from_secs(25));
        assert_eq!(status.code(), Some(0), "{}:\n{}", node.name, node.log());
        assert_eq!(http_get(node.metrics(), "/healthz"), None);
    }
    let out = entrypoint(&nodes[0].1, &["healthcheck"])
        .output()
        .expect("healthcheck");
    assert!(
        !out.status.success(),
        "healthcheck passes on a stopped node"
    );
}

/// Asserts the built binary accepts `args` as a command line: `dsnode
/// ARGS --help` succeeds, so the subcommand exists and every option before
/// `--help` parses.
fn assert_cli_accepts(args: &[String], context: &str) {
    assert!(!args.is_empty(), "{context}: no command");
    let out = Command::new(DSNODE)
        .args(args)
        .arg("--help")
        .env_remove("DSNODE_DATA_DIR")
        .output()
        .expect("run dsnode");
    succeeded(&out, &format!("{context}: dsnode {}", args.join(" ")));
    assert!(text(&out.stdout).contains("Usage: dsnode"), "{context}");
}

/// Resolves YAML merge keys (`<<: *anchor`), as compose does.
fn merged(y: &Yaml) -> Yaml {
    match y {
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(base) = h.get(&Yaml::String("<<".into())) {
                let bases = match base {
                    Yaml::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for b in bases {
                    if let Yaml::Hash(bh) = merged(&b) {
                        for (k, v) in bh {
                            out.insert(k, v);
                        }
                    }
                }
            }
            for (k, v) in h {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn strings(y: &Yaml, context: &str) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().map(|s| scalar(s, context)).collect(),
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => panic!("{context}: not a list of strings: {other:?}"),
    }
}

/// A scalar as text (compose and Kubernetes take numbers as strings too).
fn scalar(y: &Yaml, context: &str) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{context}: not a scalar: {other:?}"),
    }
}

fn hash_iter<'a>(y: &'a Yaml, context: &str) -> impl Iterator<Item = (String, &'a Yaml)> + use<'a> {
    let Yaml::Hash(h) = y else {
        panic!("{context}: not a mapping: {y:?}");
    };
    h.iter()
        .map(|(k, v)| (k.as_str().expect("string key").to_owned(), v))
}

fn list<'a>(y: &'a Yaml, context: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{context}: not a list: {y:?}"))
}

fn port_number(y: &Yaml, context: &str) -> u16 {
    scalar(y, context)
        .parse()
        .unwrap_or_else(|_| panic!("{context}: not a port: {y:?}"))
}

/// What the Dockerfile says.
struct Dockerfile {
    expose: BTreeSet<u16>,
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    uid: String,
    text: String,
}

fn dockerfile() -> Dockerfile {
    let raw = read(&deploy("Dockerfile"));
    // Join continuation lines.
    let text = raw.replace("\\\n", " ");
    let mut d = Dockerfile {
        expose: BTreeSet::new(),
        env: BTreeMap::new(),
        volumes: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        user: String::new(),
        uid: String::new(),
        text: raw,
    };
    let json_list = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest.trim()).unwrap_or_else(|_| panic!("not exec form: {rest}"))
    };
    let mut froms = 0;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => froms += 1,
            "EXPOSE" => d.expose.extend(
                rest.split_whitespace()
                    .map(|port| port.trim_end_matches("/tcp").parse::<u16>().expect("port")),
            ),
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("ENV key=value");
                    d.env.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            }
            "VOLUME" => d.volumes.extend(json_list(rest)),
            "ENTRYPOINT" => d.entrypoint = json_list(rest),
            "CMD" => d.cmd = json_list(rest),
            "USER" => d.user = rest.to_owned(),
            "ARG" if rest.starts_with("DSNODE_UID=") => {
                d.uid = rest["DSNODE_UID=".len()..].to_owned();
            }
            _ => {}
        }
    }
    assert!(froms >= 2, "a multi-stage build");
    d
}

/// Runs make-space.sh as compose's setup service would (its environment,
/// into a temp dir) and returns each node's node.toml as the node reads it.
fn made_by_compose_setup(
    env: &BTreeMap<String, String>,
    dir: &Path,
) -> BTreeMap<String, dsnode::runtime::config::Config> {
    let space = dir.join("space");
    let mut cmd = script("make-space.sh");
    cmd.envs(env).env("DSNODE_SPACE_DIR", &space);
    let out = cmd.output().expect("make-space.sh");
    succeeded(&out, "make-space.sh with compose's environment");
    NODES
        .iter()
        .map(|(name, _, _)| {
            let config =
                dsnode::runtime::config::Config::load(&space.join(name)).expect("node.toml");
            ((*name).to_owned(), config)
        })
        .collect()
}

/// The compose file, the Kubernetes manifests, the Dockerfile and the
/// systemd unit agree with the CLI, with make-space.sh and with each other.
#[test]
fn deploy_files_agree_with_the_cli_and_with_each_other() {
    let docker = dockerfile();
    let entry_text = read(&deploy("docker-entrypoint.sh"));
    let default_data_dir = entry_text
        .split("${DSNODE_DATA_DIR:-")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("the entrypoint's default DSNODE_DATA_DIR");
    assert_eq!(default_data_dir, "/data");
    let data_dir = docker
        .env
        .get("DSNODE_DATA_DIR")
        .expect("ENV DSNODE_DATA_DIR");
    assert_eq!(data_dir, default_data_dir);
    assert_eq!(docker.volumes, vec![data_dir.clone()]);
    assert!(
        entry_text.contains("GET /readyz"),
        "healthcheck uses /readyz"
    );
    assert!(entry_text.contains("exec \"$DSNODE_BIN\" serve --data-dir \"$DATA\""));

    // The image.
    assert!(docker.text.contains("cargo build --release --locked"));
    assert!(docker.text.contains("/usr/local/bin/dsnode"));
    assert_eq!(docker.entrypoint, ["docker-entrypoint.sh"]);
    for script in ["docker-entrypoint.sh", "make-space.sh"] {
        assert!(
            docker
                .text
                .contains(&format!("deploy/{script} /usr/local/bin/{script}")),
            "the image installs {script}"
        );
        assert!(
            std::fs::metadata(deploy(script))
                .expect("script")
                .permissions()
                .mode()
                & 0o111
                != 0,
            "{script} is executable"
        );
    }
    assert_cli_accepts(&docker.cmd, "Dockerfile CMD");
    assert!(
        !docker.user.is_empty()
            && !docker.user.starts_with("root")
            && !docker.user.starts_with('0'),
        "non-root USER: {}",
        docker.user
    );
    assert!(docker.text.contains("HEALTHCHECK"));

    // Compose.
    let compose_docs = YamlLoader::load_from_str(&read(&deploy("docker-compose.yml")))
        .expect("docker-compose.yml parses");
    assert_eq!(compose_docs.len(), 1);
    let compose = merged(&compose_docs[0]);
    let services: BTreeMap<String, &Yaml> = hash_iter(&compose["services"], "services").collect();
    let declared_volumes: BTreeSet<String> = hash_iter(&compose["volumes"], "volumes")
        .map(|(k, _)| k)
        .collect();
    for (name, svc) in &services {
        assert_eq!(svc["image"].as_str(), Some("dsnode:local"), "{name}");
        assert_eq!(
            svc["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name}"
        );
        let context = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(svc["build"]["context"].as_str().expect("context"));
        assert_eq!(
            std::fs::canonicalize(context).expect("context"),
            std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("root"),
            "{name}: builds from the repository root"
        );
    }

    // The one-shot setup job.
    let setup = services.get("setup").expect("a setup service");
    assert_eq!(strings(&setup["entrypoint"], "setup"), ["make-space.sh"]);
    let setup_env: BTreeMap<String, String> = hash_iter(&setup["environment"], "environment")
        .map(|(k, v)| (k, scalar(v, "environment")))
        .collect();
    let space_dir = setup_env.get("DSNODE_SPACE_DIR").expect("DSNODE_SPACE_DIR");
    let mut setup_mounts = BTreeMap::new();
    for v in list(&setup["volumes"], "setup volumes") {
        let v = scalar(v, "volume");
        let (source, target) = v.split_once(':').expect("source:target");
        assert!(declared_volumes.contains(source), "{source} not declared");
        setup_mounts.insert(target.to_owned(), source.to_owned());
    }
    assert!(setup_mounts.contains_key(&format!("{space_dir}/ca")));
    let tmp = tempfile::tempdir().expect("tempdir");
    let configs = made_by_compose_setup(&setup_env, tmp.path());

    let mut host_ports = BTreeSet::new();
    let mut all_node_ports = BTreeSet::new();
    for (name, _, _) in NODES {
        let svc = services
            .get(name)
            .unwrap_or_else(|| panic!("a {name} service"));
        let config = &configs[name];
        let metrics = config.metrics_listen.expect("metrics_listen");
        // Reachable from other containers and from the health check.
        assert!(
            config.listen.ip().is_unspecified(),
            "{name}: {}",
            config.listen
        );
        assert!(metrics.ip().is_unspecified(), "{name}: {metrics}");
        let node_ports = BTreeSet::from([config.listen.port(), metrics.port()]);
        all_node_ports.extend(node_ports.iter().copied());

        assert!(
            svc["entrypoint"].is_badvalue(),
            "{name}: the image's entrypoint"
        );
        let command = strings(&svc["command"], name);
        assert_eq!(command[0], "serve", "{name}");
        assert_cli_accepts(&command, &format!("compose {name} command"));

        let exposed: BTreeSet<u16> = list(&svc["expose"], "expose")
            .iter()
            .map(|y| port_number(y, name))
            .collect();
        assert_eq!(exposed, node_ports, "{name}: expose");
        let mut published = BTreeSet::new();
        for port in list(&svc["ports"], "ports") {
            let port = scalar(port, name);
            let (host, container) = port.rsplit_once(':').expect("host:container");
            published.insert(container.parse::<u16>().expect("container port"));
            assert!(
                host_ports.insert(host.to_owned()),
                "{name}: {host} used twice"
            );
            assert!(
                host.starts_with("127.0.0.1:"),
                "{name}: publish on loopback only"
            );
        }
        assert_eq!(published, node_ports, "{name}: ports");

        let volumes = list(&svc["volumes"], "volumes");
        assert_eq!(volumes.len(), 1, "{name}: one data volume");
        let v = scalar(&volumes[0], name);
        let (source, target) = v.split_once(':').expect("source:target");
        assert_eq!(target, data_dir, "{name}: mounted at the data dir");
        assert_eq!(
            setup_mounts.get(&format!("{space_dir}/{name}")),
            Some(&source.to_owned()),
            "{name}: the volume setup made its data dir in"
        );

        assert_eq!(
            svc["depends_on"]["setup"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        assert_eq!(
            strings(&svc["healthcheck"]["test"], name),
            ["CMD", "docker-entrypoint.sh", "healthcheck"]
        );
        assert!(svc["restart"].as_str().is_some(), "{name}: restart policy");
        let grace = svc["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period");
        assert!(
            humantime::parse_duration(grace).expect("duration") > Duration::from_secs(20),
            "{name}: stop_grace_period beyond the drain deadline"
        );
    }
    assert_eq!(all_node_ports, docker.expose, "compose ports = EXPOSE");

    // Kubernetes.
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("k8s"))
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        let parsed = YamlLoader::load_from_str(&read(f))
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        for doc in parsed {
            assert!(
                doc["kind"].as_str().is_some() && doc["apiVersion"].as_str().is_some(),
                "{}: a document without kind/apiVersion",
                f.display()
            );
            assert!(
                doc["metadata"]["namespace"].is_badvalue(),
                "{}: namespace-agnostic",
                f.display()
            );
            docs.push(doc);
        }
    }
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    let named = |kind: &str, name: &str| -> &Yaml {
        of_kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };

    let statefulsets = of_kind("StatefulSet");
    assert_eq!(statefulsets.len(), NODES.len());
    for (role, _, _) in NODES {
        let sts = named("StatefulSet", &format!("dsnode-{role}"));
        let spec = &sts["spec"];
        let pod = &spec["template"]["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(&spec["selector"]["matchLabels"], labels, "{role}");
        assert_eq!(spec["replicas"].as_i64(), Some(1), "{role}: one identity");
        assert!(
            pod["terminationGracePeriodSeconds"]
                .as_i64()
                .expect("grace")
                > 20,
            "{role}: grace beyond the drain deadline"
        );
        let pod_sc = &pod["securityContext"];
        assert_eq!(pod_sc["runAsNonRoot"].as_bool(), Some(true), "{role}");
        assert_eq!(
            pod_sc["runAsUser"].as_i64().map(|u| u.to_string()),
            Some(docker.uid.clone()),
            "{role}: the image's user"
        );
        let containers = list(&pod["containers"], "containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert!(c["command"].is_badvalue(), "{role}: the image's entrypoint");
        let args = strings(&c["args"], role);
        assert_eq!(args[0], "serve");
        assert_cli_accepts(&args, &format!("k8s {role} args"));
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{role}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{role}"
        );

        let env: BTreeMap<String, String> = list(&c["env"], "env")
            .iter()
            .map(|e| (scalar(&e["name"], "env"), scalar(&e["value"], "env")))
            .collect();
        assert_eq!(env.get("DSNODE_DATA_DIR"), Some(data_dir), "{role}");
        let secrets_dir = env.get("DSNODE_SECRETS_DIR").expect("DSNODE_SECRETS_DIR");

        let ports: BTreeMap<String, u16> = list(&c["ports"], "ports")
            .iter()
            .map(|port| {
                (
                    scalar(&port["name"], "port name"),
                    port_number(&port["containerPort"], "containerPort"),
                )
            })
            .collect();
        let port_set: BTreeSet<u16> = ports.values().copied().collect();
        assert_eq!(port_set, docker.expose, "{role}: containerPorts = EXPOSE");
        let resolve = |y: &Yaml| -> u16 {
            match y {
                Yaml::String(name) => *ports.get(name).unwrap_or_else(|| panic!("port {name}")),
                other => port_number(other, "port"),
            }
        };
        let metrics_port = configs[role].metrics_listen.expect("metrics").port();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{role} {probe}");
            assert_eq!(resolve(&get["port"]), metrics_port, "{role} {probe}");
        }
        if !c["startupProbe"].is_badvalue() {
            assert_eq!(resolve(&c["startupProbe"]["httpGet"]["port"]), metrics_port);
        }

        let claims: BTreeSet<String> = list(&spec["volumeClaimTemplates"], "claims")
            .iter()
            .map(|t| scalar(&t["metadata"]["name"], "claim"))
            .collect();
        let volumes: BTreeMap<String, &Yaml> = list(&pod["volumes"], "volumes")
            .iter()
            .map(|v| (scalar(&v["name"], "volume"), v))
            .collect();
        let mounts: BTreeMap<String, String> = list(&c["volumeMounts"], "mounts")
            .iter()
            .map(|m| {
                (
                    scalar(&m["mountPath"], "mount"),
                    scalar(&m["name"], "mount"),
                )
            })
            .collect();
        let data_volume = mounts.get(data_dir).expect("a mount at the data dir");
        assert!(claims.contains(data_volume), "{role}: /data is the PVC");
        let creds = volumes
            .get(
                mounts
                    .get(secrets_dir)
                    .expect("a mount at DSNODE_SECRETS_DIR"),
            )
            .expect("the credentials volume");
        let mut secret_names = Vec::new();
        let mut has_config = false;
        for source in list(&creds["projected"]["sources"], "sources") {
            if let Some(name) = source["secret"]["name"].as_str() {
                secret_names.push(name.to_owned());
            }
            if let Some(name) = source["configMap"]["name"].as_str() {
                let cm = named("ConfigMap", name);
                let toml = cm["data"]["node.toml"].as_str().expect("node.toml");
                let check = tmp.path().join(format!("k8s-{role}"));
                std::fs::create_dir_all(&check).expect("mkdir");
                std::fs::write(check.join("node.toml"), toml).expect("write");
                let config =
                    dsnode::runtime::config::Config::load(&check).expect("ConfigMap node.toml");
                assert_eq!(
                    config.listen, configs[role].listen,
                    "{role}: ConfigMap listen"
                );
                assert_eq!(
                    config.metrics_listen, configs[role].metrics_listen,
                    "{role}: ConfigMap metrics_listen"
                );
                has_config = true;
            }
        }
        assert!(has_config, "{role}: node.toml from the ConfigMap");
        assert_eq!(secret_names, [format!("dsnode-{role}-credentials")]);
        let secret = named("Secret", &secret_names[0]);
        let keys: BTreeSet<String> = hash_iter(&secret["data"], "data").map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            BTreeSet::from(SECRET_FILES.map(str::to_owned)),
            "{role}"
        );

        // The Service peers dial, named in the certificate by make-space.sh.
        let service_name = scalar(&spec["serviceName"], "serviceName");
        let service = named("Service", &service_name);
        assert_eq!(
            &service["spec"]["selector"], labels,
            "{role}: selects the pods"
        );
        let mut service_ports = BTreeSet::new();
        let mut names = BTreeSet::new();
        for port in list(&service["spec"]["ports"], "service ports") {
            let number = port_number(&port["port"], "port");
            assert_eq!(resolve(&port["targetPort"]), number, "{role}");
            service_ports.insert(number);
            names.insert(scalar(&port["name"], "port name"));
        }
        assert_eq!(service_ports, docker.expose, "{role}: Service ports");
        assert_eq!(names.len(), 2, "{role}: grpc and metrics named apart");
    }

    // systemd.
    let unit = read(&deploy("dsnode.service"));
    let directives: Vec<(String, String)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let values = get(key);
        assert_eq!(values.len(), 1, "one {key}= in the unit");
        values[0]
    };
    let unit_data_dir = one("Environment")
        .strip_prefix("DSNODE_DATA_DIR=")
        .expect("Environment=DSNODE_DATA_DIR=");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("ReadWritePaths", unit_data_dir),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    let user = one("User");
    assert!(!user.is_empty() && user != "root", "a dedicated user");
    assert!(one("ExecReload").contains("-HUP $MAINPID"));
    let stop: u64 = one("TimeoutStopSec").parse().expect("seconds");
    assert!(stop > 20, "TimeoutStopSec beyond the 20 s drain deadline");
    for key in ["ExecStartPre", "ExecStart"] {
        let argv: Vec<String> = one(key).split_whitespace().map(str::to_owned).collect();
        assert_eq!(argv[0], "/usr/local/bin/dsnode", "{key}");
        assert!(argv.iter().any(|a| a == "serve"), "{key} serves");
        assert_cli_accepts(&argv[1..], &format!("systemd {key}"));
    }
}
