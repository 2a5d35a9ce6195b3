//! The auditor's web console (`dsnode audit serve`) against the demo's
//! data space, driven in headless Chromium: every page loads with no
//! console error, the provenance graph has the boxes and arrows the
//! ledgers prove, a hostile title renders as text, the bundle check
//! verifies a good bundle and refuses a changed one; and the console's
//! safety rules (loopback, TLS and token elsewhere, CSP, host check).
//! Screenshots go to `target/tmp/console/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::browser::Browser;

fn dsnode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dsnode"))
}

/// A demo data space left running (`demo --keep`), and what it printed.
struct Demo {
    child: Child,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    /// The `dsnode audit serve …` command it printed.
    serve: Vec<String>,
    /// The dataset it published.
    dataset: String,
}

impl Demo {
    fn start() -> Demo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("space");
        let mut child = dsnode()
            .args(["demo", "--size", "100000", "--keep", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("demo");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut seen, mut serve, mut dataset) = (String::new(), None, None);
        for line in lines.by_ref() {
            let line = line.expect("line");
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.trim().strip_prefix("Provenance of ") {
                dataset = Some(rest.trim_end_matches(':').to_owned());
            }
            if let Some(cmd) = line.trim().strip_prefix("dsnode audit serve ") {
                serve = Some(cmd.split_whitespace().map(str::to_owned).collect());
            }
            if line.starts_with("Everything is in") {
                break;
            }
        }
        assert!(seen.contains("All verifications passed"), "{seen}");
        Demo {
            child,
            dir,
            _tmp: tmp,
            serve: serve.unwrap_or_else(|| panic!("no audit serve command in:\n{seen}")),
            dataset: dataset.unwrap_or_else(|| panic!("no dataset in:\n{seen}")),
        }
    }

    /// Starts the console as the demo printed it, plus `extra` flags; its
    /// URL once it listens.
    fn console(&self, extra: &[&str]) -> (Console, String) {
        let log = self.dir.join(format!("console-{}.log", extra.len()));
        let mut child = Console(
            dsnode()
                .args(["audit", "serve"])
                .args(&self.serve)
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("audit serve"),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        if line.is_empty() {
            let _ = child.0.wait();
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the console did not start: {err}");
        }
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http"))
            .unwrap_or_else(|| panic!("no URL in {line}"))
            .to_owned();
        (child, url)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A running `dsnode audit serve`, stopped when dropped (also when a
/// test fails).
struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str, host: &str) -> (u16, String, Vec<u8>) {
    crate::support::raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

/// A file only its owner may read, as keys and tokens must be.
fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console")
}

fn node_id_of(dir: &Path) -> String {
    let out = dsnode()
        .args(["status", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["node_id"]
        .as_str()
        .or_else(|| v["node"]["node_id"].as_str())
        .unwrap_or_else(|| panic!("no node id in {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_demo_space_verified_in_a_real_browser() {
    let demo = Demo::start();
    // A new version of the demo's dataset, titled as an attack.
    let xss = "<script>alert(1)</script>";
    let file = demo.dir.join("v2.csv");
    std::fs::write(&file, b"hour,sensor,count\n0,a,1\n").expect("v2");
    let policy = demo.dir.join("v2-policy.toml");
    std::fs::write(
        &policy,
        "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\npurpose = [\"research\"]\n",
    )
    .expect("policy");
    let published = dsnode()
        .args(["publish", "--json", "--data-dir"])
        .arg(demo.dir.join("transport"))
        .arg(&file)
        .arg("--policy")
        .arg(&policy)
        .args(["--title", xss, "--supersedes", &demo.dataset])
        .output()
        .expect("publish");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let v2: serde_json::Value = serde_json::from_slice(&published.stdout).expect("json");
    let v2 = v2["dataset_id"].as_str().expect("dataset id").to_owned();

    let (console, url) = demo.console(&["--listen", "127.0.0.1:0", "--lang", "en"]);
    let base = url.trim_end_matches('/').to_owned();
    let addr = base.trim_start_matches("http://").to_owned();
    let transport = node_id_of(&demo.dir.join("transport"));
    let shots = screenshots();
    let browser = Browser::start(false).await;

    // The data space.
    let errors = browser.visit(&format!("{base}/")).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert_eq!(browser.text("h1").await, "Data space");
    let rows = browser.attrs("#nodes tr.node-row", "data-node").await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.starts_with("dsn1")), "{rows:?}");
    let failures = browser.attrs("#nodes [data-verified=false]", "class").await;
    assert!(
        failures.is_empty(),
        "something on the space page failed: {failures:?}"
    );
    let witnessed = browser.text("#nodes").await;
    assert!(witnessed.contains("cosignature, consistent"), "{witnessed}");
    let pairs = browser.text("#pairs").await;
    assert!(
        pairs.contains("both ledgers tell the same story"),
        "{pairs}"
    );
    // The hostile title is text in the datasets table, not a script.
    let titles = browser.text("#datasets").await;
    assert!(titles.contains(xss), "{titles}");
    assert_eq!(browser.eval("return document.scripts.length").await, 0);
    browser.screenshot(&shots.join("space.png")).await;

    // The dataset's provenance: boxes and arrows read from the DOM.
    let errors = browser
        .visit(&format!("{base}/dataset/{}", demo.dataset))
        .await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let failures = browser.attrs("main [data-verified=false]", "class").await;
    assert!(
        failures.is_empty(),
        "the manifest and every ledger verify: {failures:?}"
    );
    assert!(
        browser.text("h1").await.contains("road-sensor"),
        "v1's title from its manifest"
    );
    let boxes = browser.attrs("svg#provenance g.node", "data-id").await;
    let kinds = |prefix: &str| boxes.iter().filter(|b| b.starts_with(prefix)).count();
    assert_eq!(kinds("dataset:"), 2, "v1 and v2: {boxes:?}");
    assert_eq!(kinds("grant:"), 1, "{boxes:?}");
    assert!(kinds("transfer:") >= 1, "{boxes:?}");
    assert!(kinds("receipt:") >= 1, "{boxes:?}");
    assert_eq!(kinds("revoked:"), 1, "{boxes:?}");
    assert!(kinds("denied:") >= 1, "beacon was refused: {boxes:?}");
    let edges: Vec<(String, String)> = {
        let rel = browser
            .attrs("svg#provenance g.edge", "data-relation")
            .await;
        let st = browser
            .attrs("svg#provenance g.edge", "data-standing")
            .await;
        rel.into_iter().zip(st).collect()
    };
    for relation in [
        "version", "granted", "transfer", "receipt", "revoked", "denied",
    ] {
        assert!(
            edges.iter().any(|(r, s)| r == relation && s == "proven"),
            "no proven {relation} edge in {edges:?}"
        );
    }
    assert!(
        edges.iter().all(|(_, s)| s == "proven"),
        "every edge of the demo is proven on both ledgers: {edges:?}"
    );
    let grant = boxes
        .iter()
        .find_map(|b| b.strip_prefix("grant:"))
        .expect("grant")
        .to_owned();
    browser.screenshot(&shots.join("provenance.png")).await;

    // The new version's page: its title is the h1's text, escaped.
    let errors = browser.visit(&format!("{base}/dataset/{v2}")).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert!(browser.text("h1").await.contains(xss));
    assert_eq!(browser.eval("return document.scripts.length").await, 0);
    assert!(browser.client.get_alert_text().await.is_err(), "no alert");
    browser.screenshot(&shots.join("xss-title.png")).await;

    // The publisher's ledger, filtered, and a page at a time.
    let errors = browser
        .visit(&format!("{base}/ledger/{transport}?kind=AccessGranted"))
        .await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let kinds = browser.attrs("tr.entry", "data-kind").await;
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| k == "AccessGranted"),
        "{kinds:?}"
    );
    let errors = browser
        .visit(&format!("{base}/ledger/{transport}?limit=3"))
        .await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let first: Vec<u64> = browser
        .attrs("tr.entry", "data-index")
        .await
        .iter()
        .map(|i| i.parse().expect("index"))
        .collect();
    assert_eq!(first.len(), 3, "{first:?}");
    browser.screenshot(&shots.join("ledger.png")).await;
    browser
        .client
        .find(fantoccini::Locator::Css("#next-page"))
        .await
        .expect("a next page")
        .click()
        .await
        .expect("click");
    browser.wait_for_url("after=").await;
    let second: Vec<u64> = browser
        .attrs("tr.entry", "data-index")
        .await
        .iter()
        .map(|i| i.parse().expect("index"))
        .collect();
    assert!(
        !second.is_empty() && second[0] > first[2],
        "page 2 {second:?} follows page 1 {first:?}"
    );
    assert!(browser.console_errors().await.is_empty());

    // The grant: terms verified, timeline on both ledgers, receipts.
    let errors = browser.visit(&format!("{base}/grant/{grant}")).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert_eq!(
        browser
            .attrs("#terms-verdict [data-verified]", "data-verified")
            .await,
        ["true"]
    );
    assert_eq!(browser.text("#purpose").await, "route-planning");
    let ledgers: std::collections::BTreeSet<String> = {
        let mut s = std::collections::BTreeSet::new();
        for e in browser
            .client
            .find_all(fantoccini::Locator::Css(
                "table.entries tr.entry td:first-child",
            ))
            .await
            .expect("rows")
        {
            s.insert(e.text().await.expect("text"));
        }
        s
    };
    assert!(
        ledgers.contains("city-transport") && ledgers.contains("acme-logistics"),
        "both ledgers in the timeline: {ledgers:?}"
    );
    assert!(
        browser
            .text("#receipts")
            .await
            .contains("signed by the consumer's key")
    );
    let href = browser.attrs("a#bundle", "href").await;
    assert_eq!(href.len(), 1, "a download button");
    browser.screenshot(&shots.join("grant.png")).await;
    // What the button downloads verifies offline with the CLI.
    let (status, head, bundle) = get(&addr, &format!("/grant/{grant}/bundle"), "127.0.0.1");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment"),
        "{head}"
    );
    let downloaded = demo.dir.join("downloaded-bundle.json");
    std::fs::write(&downloaded, &bundle).expect("bundle");
    let checked = dsnode()
        .args(["audit", "verify-bundle"])
        .arg(&downloaded)
        .arg("--ca")
        .arg(demo.dir.join("ca").join("ca.crt"))
        .output()
        .expect("verify-bundle");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // Who could use the dataset: at the grant's issue time, acme.
    let at = browser.text("table.entries tr.entry td:nth-child(3)").await;
    let errors = browser
        .visit(&format!(
            "{base}/who-could?dataset={}&at={at}",
            demo.dataset
        ))
        .await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let in_force = browser.text("#in-force").await;
    assert!(in_force.contains(&grant), "{in_force}");
    browser.screenshot(&shots.join("who-could.png")).await;

    // Verify a bundle: the demo's good one, then one with a byte changed.
    let evidence = std::fs::read_dir(&demo.dir)
        .expect("demo dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("evidence-") && n.ends_with(".json"))
        })
        .expect("the demo's evidence bundle");
    let ca = demo.dir.join("ca").join("ca.crt");
    let upload = |bundle: PathBuf| {
        let browser = &browser;
        let base = &base;
        let ca = ca.clone();
        async move {
            let errors = browser.visit(&format!("{base}/verify")).await;
            assert!(errors.is_empty(), "console errors: {errors:?}");
            let find = |css: &'static str| browser.client.find(fantoccini::Locator::Css(css));
            find("#bundle-file")
                .await
                .expect("bundle input")
                .send_keys(&bundle.display().to_string())
                .await
                .expect("choose bundle");
            find("#ca-file")
                .await
                .expect("ca input")
                .send_keys(&ca.display().to_string())
                .await
                .expect("choose ca");
            find("#verify-button")
                .await
                .expect("button")
                .click()
                .await
                .expect("submit");
            browser
                .client
                .wait()
                .for_element(fantoccini::Locator::Css("#verdict"))
                .await
                .expect("a verdict");
            let verdict = browser.attrs("#verdict", "data-verified").await;
            let text = browser.text("#verdict").await;
            assert!(browser.console_errors().await.is_empty());
            (verdict, text)
        }
    };
    let (verdict, text) = upload(evidence.clone()).await;
    assert_eq!(verdict, ["true"], "{text}");
    assert!(text.contains("VERIFIED"), "{text}");
    browser.screenshot(&shots.join("verify-good.png")).await;
    let mut changed = std::fs::read(&evidence).expect("bundle");
    // One digit of an entry's index changed: its inclusion proof must
    // now fail.
    let text_of = String::from_utf8(changed.clone()).expect("utf-8");
    let at = text_of.find("\"index\": ").expect("an entry index");
    let digit = changed[at..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| p + at)
        .expect("a digit");
    changed[digit] = if changed[digit] == b'9' {
        b'8'
    } else {
        changed[digit] + 1
    };
    let tampered = demo.dir.join("changed-bundle.json");
    std::fs::write(&tampered, &changed).expect("write");
    let (verdict, text) = upload(tampered).await;
    assert_eq!(verdict, ["false"], "{text}");
    browser.screenshot(&shots.join("verify-changed.png")).await;

    // Chinese: chosen once, kept by cookie.
    let errors = browser.visit(&format!("{base}/?lang=zh")).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert_eq!(browser.text("h1").await, "数据空间");
    assert_eq!(
        browser.eval("return document.documentElement.lang").await,
        "zh-CN"
    );
    browser.screenshot(&shots.join("space-zh.png")).await;
    browser
        .visit(&format!("{base}/dataset/{}", demo.dataset))
        .await;
    assert!(browser.text("h1").await.starts_with("溯源"));
    browser.screenshot(&shots.join("provenance-zh.png")).await;
    browser.close().await;

    // Every answer carries the policy; a rebound host name is refused;
    // an upload over the cap is refused; bad ids are refused.
    let (status, head, _) = get(&addr, "/", "127.0.0.1");
    assert_eq!(status, 200);
    let csp: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("content-security-policy: "))
        .collect();
    assert_eq!(csp, [dsnode::console::CONTENT_SECURITY_POLICY], "{head}");
    // A request's own choice of language overrides the console's --lang.
    let (_, _, page) = crate::support::raw_http(
        &addr,
        "GET /?lang=zh HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert!(String::from_utf8_lossy(&page).contains("<h1>数据空间</h1>"));
    let (status, _, _) = get(&addr, "/", "evil.example");
    assert_eq!(status, 421, "a DNS-rebound name is refused");
    let (status, _, _) = get(&addr, "/dataset/..%2F..%2Fetc", "127.0.0.1");
    assert_eq!(status, 400);
    // An upload over the cap is refused from its length, unread.
    let (status, _, body) = crate::support::raw_http(
        &addr,
        &format!(
            "POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            dsnode::console::MAX_UPLOAD + 1
        ),
        b"",
    );
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    drop(console);
    println!("screenshots in {}", shots.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_console_needs_tls_and_a_token() {
    let demo = Demo::start();
    // No TLS: refused before it listens.
    let out = dsnode()
        .args(["audit", "serve"])
        .args(&demo.serve)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--tls-cert"),
        "{err}"
    );

    // An Ed25519 key, which browsers refuse: refused with the reason.
    let tmp = tempfile::tempdir().expect("tempdir");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let ed_cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .self_signed(&ed)
        .expect("cert");
    std::fs::write(tmp.path().join("ed.crt"), ed_cert.pem()).expect("write");
    write_secret(&tmp.path().join("ed.key"), &ed.serialize_pem());
    let out = dsnode()
        .args(["audit", "serve"])
        .args(&demo.serve)
        .args(["--listen", "0.0.0.0:0", "--tls-cert"])
        .arg(tmp.path().join("ed.crt"))
        .arg("--tls-key")
        .arg(tmp.path().join("ed.key"))
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Ed25519") && err.contains("P-256"), "{err}");

    // A token others may read, or one that is not plain characters: refused.
    let loose = tmp.path().join("loose-token");
    std::fs::write(&loose, "a-long-enough-console-token-0123\n").expect("write");
    let weird = tmp.path().join("weird-token");
    write_secret(&weird, "a-long-enough;token=x; Path=/evil\n");
    for (file, says) in [
        (&loose, "readable by group or others"),
        (&weird, "at least 16 characters of"),
    ] {
        let out = dsnode()
            .args(["audit", "serve"])
            .args(&demo.serve)
            .arg("--token-file")
            .arg(file)
            .output()
            .expect("serve");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }

    // A P-256 certificate and a token: serves, over TLS only, to the token.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (crt, keyf, tokf) = (
        tmp.path().join("console.crt"),
        tmp.path().join("console.key"),
        tmp.path().join("token"),
    );
    std::fs::write(&crt, cert.pem()).expect("write");
    write_secret(&keyf, &key.serialize_pem());
    let token = "a-long-enough-console-token-0123";
    write_secret(&tokf, &format!("{token}\n"));
    // Plus a node that is not there: the page says so and shows the rest.
    let (console, url) = demo.console(&[
        "--peer",
        "127.0.0.1:9",
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        crt.to_str().expect("path"),
        "--tls-key",
        keyf.to_str().expect("path"),
        "--token-file",
        tokf.to_str().expect("path"),
    ]);
    assert!(
        url.starts_with("https://localhost:") && url.ends_with(&format!("?token={token}")),
        "{url}"
    );
    let origin = url.split("/?").next().expect("origin").to_owned();
    // curl checks the chain and the name against the certificate.
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&crt)
            .args(extra)
            .arg(format!("{origin}/"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401", "no token");
    assert_eq!(
        curl(&["-H", "Authorization: Bearer wrong-token-wrong-token"]),
        "401"
    );
    assert_eq!(
        curl(&["-H", &format!("Authorization: Bearer {token}")]),
        "200"
    );
    // Without --lang, the browser's Accept-Language chooses.
    let zh = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&crt)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Accept-Language: zh-CN,zh;q=0.9,en;q=0.8"])
        .arg(format!("{origin}/"))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&zh.stdout).contains("<h1>数据空间</h1>"));
    // Plain HTTP on the TLS port gets nothing.
    let port = origin.rsplit(':').next().expect("port");
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Chromium completes the handshake with the P-256 certificate, and
    // the token URL turns into a cookie (out of the address bar).
    let browser = Browser::start(true).await;
    browser
        .client
        .goto(&format!("{origin}/"))
        .await
        .expect("goto");
    assert!(browser.text("main").await.contains("access token"));
    let _ = browser.console_errors().await; // the 401 itself is logged
    let errors = browser.visit(&url).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert_eq!(browser.text("h1").await, "Data space");
    assert_eq!(
        browser.attrs("#nodes tr.node-row", "data-node").await.len(),
        5
    );
    let nodes = browser.text("#nodes").await;
    assert!(
        nodes.contains("127.0.0.1:9") && nodes.contains("NOT verified"),
        "{nodes}"
    );
    let verified = browser
        .attrs("#nodes td.checkpoint [data-verified=true]", "class")
        .await;
    assert_eq!(verified.len(), 4, "the four demo nodes still verify");
    assert!(browser.text("#pairs").await.contains("not reconciled"));
    let here = browser.client.current_url().await.expect("url");
    assert!(!here.as_str().contains("token"), "{here}");
    browser
        .screenshot(&screenshots().join("tls-space.png"))
        .await;
    browser.close().await;
    drop(console);
}
