//! `dsnode demo` runs its whole story and passes its own verifications;
//! `--dir` refuses a directory that is not a previous demo; `--keep`
//! leaves the nodes serving until Ctrl-C.

use std::io::BufRead;
use std::process::{Command, Stdio};

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run dsnode demo")
}

#[test]
fn the_demo_tells_the_story_and_every_verification_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = dir.path().join("space");
    let at = at.to_str().expect("utf-8");
    for run in 0..2 {
        // The second run reuses the first one's directory.
        let out = demo(&["--size", "300000", "--dir", at]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "publishes hourly road-sensor counts",
            "granted",
            "(identical to what was published)",
            "refused: access denied: permission 1: purpose `marketing`",
            "GrantRevoked at entry",
            "acme fetching again is refused",
            "log now provably extends it",
            "Provenance of ds_",
            "the regulator reconciles them and hands over one evidence file",
            "VERIFIED offline against the CA",
            "All verifications passed",
        ] {
            assert!(
                stdout.contains(needle),
                "run {run}: missing `{needle}` in:\n{stdout}"
            );
        }
        assert_eq!(stdout.matches("[ok]").count(), 13, "{stdout}");
        assert!(!stdout.contains("FAILED"), "{stdout}");
    }
}

#[test]
fn a_directory_that_is_not_a_previous_demo_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("precious.txt"), b"keep me").expect("write");
    let out = demo(&["--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not empty and is not a previous demo"),
        "{stderr}"
    );
    assert!(dir.path().join("precious.txt").exists(), "nothing removed");
}

#[test]
fn keep_leaves_the_nodes_serving_until_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = dir.path().join("space");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["demo", "--size", "100000", "--keep", "--dir"])
        .arg(&at)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("keep running until Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("All verifications passed"), "{seen}");
    // The printed commands work against the running nodes.
    let status = Command::new(env!("CARGO_BIN_EXE_dsnode"))
        .args(["status", "--json", "--data-dir"])
        .arg(at.join("acme"))
        .output()
        .expect("status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let exit = child.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(
        at.join("acme").join("ledger").exists(),
        "--keep keeps the files"
    );
}
