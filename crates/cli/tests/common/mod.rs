//! Helpers shared by the CLI tests: the Python interop peer (pymacaroons, PyJWT).

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use tessera_testserver::TestServer;

pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("TESSERA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/python"));
    assert!(p.exists(), "interop peer missing: {} (run `make venv`; make test does)", p.display());
    p
}

pub(crate) fn peer(cmd: &str, req: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/peer.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Run the npm `jose` verifier (`tests/interop/js/verify.mjs`; `make node-peers` installs it).
pub(crate) fn jose(req: Value) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/js");
    assert!(
        dir.join("node_modules/jose").exists(),
        "the jose peer is missing: run `make node-peers` (make test does)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("verify.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (make node-peers installs it)");
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A `tessera serve` process, killed when dropped.
pub(crate) type Serve = TestServer;

/// `tessera serve` on a free port with a fresh data directory: the process, its URL and the
/// first-start admin token.
pub(crate) fn serve(dir: &std::path::Path, extra: &[&str]) -> (Serve, String, String) {
    let serve = TestServer::start(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env_remove("TESSERA_MASTER_KEY")
            .stderr(Stdio::null()),
    );
    let (url, admin) = (serve.url().to_owned(), serve.admin().unwrap_or_default().to_owned());
    (serve, url, admin)
}
