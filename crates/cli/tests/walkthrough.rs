//! Runs the README's walkthrough exactly as written, so the README cannot rot.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- walkthrough:end -->").next())
        .expect("README has a walkthrough block");
    block.trim().trim_start_matches("```bash").trim_end_matches("```").to_owned()
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let script = walkthrough();
    assert!(script.contains("tessera serve"));
    let dir = tempfile::tempdir().unwrap();
    let bin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().unwrap().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("timeout")
        .args(["120", "bash", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("PORT", port.to_string())
        .env_remove("TESSERA_MASTER_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let transcript = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "walkthrough failed ({:?})\n{transcript}", out.status);

    // Step 3: the narrowed token, in plain words.
    assert!(stdout.contains("only operations: read"), "{transcript}");
    assert!(stdout.contains("only resources: issues/42"), "{transcript}");
    assert!(stdout.contains("only from client addresses in: 10.1.0.0/16"), "{transcript}");
    // Step 4: allowed, then denied (read-only), then the JSON answer.
    let verdicts: Vec<&str> = stdout.lines().filter(|l| *l == "allowed").collect();
    assert_eq!(verdicts.len(), 2, "CLI verify and jwt-check allowed: {transcript}");
    let denials: Vec<&str> = stderr.lines().filter(|l| l.starts_with("denied:")).collect();
    assert_eq!(denials.len(), 2, "{transcript}");
    assert!(denials[0].contains("allow read"), "{transcript}");
    assert!(stdout.contains("\"valid\":true"), "{transcript}");
    // Step 6: revoked, and the last verification is denied for it.
    assert!(stdout.contains("\"revoked\":true"), "{transcript}");
    assert!(denials[1].contains("revoked"), "{transcript}");
    // The admin token was never echoed into the transcript by the walkthrough itself.
    assert!(!stdout.contains("Tessera admin token"));
}

/// Issue 20: the README's dependency notes said envelopes were written without p256 and
/// ed25519-dalek and that jsonwebtoken stayed out, long after both changed. Each crate the notes
/// name is held to Cargo.lock: present where they say it is used, absent where they say it
/// stays out.
#[test]
fn readme_dependency_notes_match_the_lock_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let notes = readme.split("## Dependency notes").nth(1).expect("README has dependency notes");
    let notes = notes.split("\n## ").next().unwrap();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let locked = |name: &str| lock.lines().any(|l| l == format!("name = \"{name}\""));
    let used = [
        "actix-web",
        "ciborium",
        "crypto_secretbox",
        "hmac",
        "p256",
        "ed25519-dalek",
        "base64",
        "serde_json",
        "jsonwebtoken",
        "macaroon",
        "ring",
    ];
    let kept_out = ["serde_cbor", "rsa", "h2"];
    for name in used.iter().chain(&kept_out) {
        assert!(notes.contains(name), "the notes no longer name {name}: update this test with them");
    }
    for name in used {
        assert!(locked(name), "the notes say {name} is used, but Cargo.lock has no {name}");
    }
    for name in kept_out {
        assert!(!locked(name), "the notes say {name} stays out, but Cargo.lock has it");
    }
}
