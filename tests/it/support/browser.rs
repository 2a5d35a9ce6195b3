//! Headless Chromium, driven through chromedriver (Debian's `chromium` and
//! `chromium-driver`), for the console's browser tests. `.ci/run`
//! installs both; a test on a machine without them installs them with
//! apt when it can (root), else fails saying how.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

fn executables() -> (PathBuf, PathBuf) {
    let found = || {
        Some((
            find(
                "DSNODE_CHROMIUM",
                &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
            )?,
            find("DSNODE_CHROMEDRIVER", &["/usr/bin/chromedriver"])?,
        ))
    };
    if let Some(f) = found() {
        return f;
    }
    // Set up once, under a lock (the tests run in parallel threads of
    // one process).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = found() {
        return f;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    assert!(
        matches!(root, Ok(true)),
        "the browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (or set DSNODE_CHROMIUM and DSNODE_CHROMEDRIVER)"
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get")
    };
    let _ = apt(&["update", "-q"]);
    let status = apt(&[
        "install",
        "-y",
        "-q",
        "chromium",
        "chromium-driver",
        "fonts-wqy-microhei",
    ]);
    assert!(
        status.success(),
        "apt-get install chromium chromium-driver failed"
    );
    found().expect("chromium and chromedriver after apt-get install")
}

/// A chromedriver process and one browser session.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// chromedriver's (non-W3C) log endpoint: the browser console's messages.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless session.
    /// `insecure`: accept any TLS certificate (for a self-signed console).
    pub(crate) async fn start(insecure: bool) -> Browser {
        let (chromium, chromedriver) = executables();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        caps.insert("acceptInsecureCerts".into(), json!(insecure));
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no chromedriver session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Goes to `url` and returns the console messages of severity SEVERE
    /// (errors: a script, a refused resource, a CSP violation) it logged.
    pub(crate) async fn visit(&self, url: &str) -> Vec<String> {
        self.client.goto(url).await.expect("goto");
        self.console_errors().await
    }

    /// The console's errors since the last call.
    pub(crate) async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["level"] == "SEVERE")
            .map(|m| m["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The text of the first element matching `css`.
    pub(crate) async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// An attribute of every element matching `css`.
    pub(crate) async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
        {
            out.push(e.attr(attr).await.expect("attr").unwrap_or_default());
        }
        out
    }

    /// Runs a script in the page and returns its value.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("execute")
    }

    /// Saves a screenshot of the whole page to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) {
        // The window as tall as the page, so the screenshot holds it all.
        let height = self
            .eval("return Math.min(4000, document.documentElement.scrollHeight)")
            .await
            .as_u64()
            .unwrap_or(1000);
        let _ = self
            .client
            .set_window_size(1440, u32::try_from(height).unwrap_or(1000) + 140)
            .await;
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
        let _ = self.client.set_window_size(1440, 1000).await;
    }

    /// Waits until the address holds `part` (a navigation finished).
    pub(crate) async fn wait_for_url(&self, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.client.current_url().await.expect("url");
            if url.as_str().contains(part) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still at {url}, waiting for {part}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session (and its browser); chromedriver ends on drop.
    pub(crate) async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// chromedriver goes with the value, also when a test fails.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
