//! Helpers shared by the CLI tests: the Python interop peer (pymacaroons, PyJWT).

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

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
