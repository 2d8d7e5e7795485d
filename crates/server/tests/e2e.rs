//! End to end against the real binary on 127.0.0.1 (port 0): mint, attenuate offline with the
//! core library, verify, revoke, stop with SIGTERM, restart, and see the revocation survive.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod binary;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_core::Token;
use tessera_testserver::TestServer;

fn start(data: &Path) -> TestServer {
    start_with(data, &[])
}

fn start_with(data: &Path, extra: &[&str]) -> TestServer {
    TestServer::start(binary::command(data, extra).stderr(Stdio::inherit()))
}

/// One HTTP/1.1 request; returns (status, JSON body).
fn http(addr: &str, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let payload = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

#[test]
fn mint_attenuate_verify_revoke_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data);
    let admin = server.admin().expect("first start shows the admin token").to_owned();
    let (status, health) = http(server.addr(), "GET", "/health", None, None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let (status, minted) = http(
        server.addr(),
        "POST",
        "/v1/tokens",
        Some(&admin),
        Some(json!({"subject": "alice", "operations": ["read", "write"], "resources": ["issues/*"]})),
    );
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let tid = minted["tid"].as_str().unwrap().to_owned();

    // Alice narrows her token offline: read-only, one issue.
    let narrow = Token::decode(token)
        .unwrap()
        .attenuate("allow read")
        .unwrap()
        .attenuate("resource issues/42")
        .unwrap();
    let verify = |op: &str, res: &str| {
        http(
            server.addr(),
            "POST",
            "/v1/verify",
            None,
            Some(json!({"token": narrow.encode(), "context": {"operation": op, "resource": res}})),
        )
    };
    let (status, body) = verify("read", "issues/42");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subject"], "alice");
    assert_eq!(verify("write", "issues/42").0, 403);
    assert_eq!(verify("read", "issues/43").0, 403);

    let (status, _) = http(server.addr(), "POST", &format!("/v1/tokens/{tid}/revoke"), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(verify("read", "issues/42").0, 401, "revoked");

    let exit = server.terminate();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");

    let mut server = start(&data);
    assert!(server.admin().is_none(), "the admin token is never shown again");
    let (status, body) = http(
        server.addr(),
        "POST",
        "/v1/verify",
        None,
        Some(json!({"token": narrow.encode(), "context": {"operation": "read", "resource": "issues/42"}})),
    );
    assert_eq!(status, 401, "the revocation survived the restart: {body}");
    let (status, list) = http(server.addr(), "GET", "/v1/tokens?subject=alice", Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(list["tokens"][0]["revoked"], true);
    server.terminate();
}

#[test]
fn wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data);
    server.terminate();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env("TESSERA_MASTER_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong master key"), "{err}");
    let bad_flag =
        Command::new(env!("CARGO_BIN_EXE_tessera-server")).args(["--default-ttl", "soon"]).output().unwrap();
    assert_eq!(bad_flag.status.code(), Some(2), "usage errors exit 2");
}

/// Security review round 3, finding 11: a body trickled byte by byte held its connection open
/// for as long as the client liked. Now the whole body has `--body-timeout` from the head: the
/// client gets a 408 (problem+json) and the connection is closed.
#[test]
fn a_trickled_body_is_cut_off_at_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &["--body-timeout", "1s"]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/verify HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        server.addr()
    );
    s.write_all(head.as_bytes()).unwrap();
    // Keep trickling, one byte every 200 ms, well past the deadline: it must not matter.
    let mut t = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            if t.write_all(b" ").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // ends when the server closes the connection
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("application/problem+json"), "{raw}");
    assert!(trickle.join().unwrap(), "the server closed the connection before the trickle ended");
}

/// Finding 11: a few thousand idle connections from one address exhausted file descriptors.
/// Connections over `--max-connections-per-address` are closed as they are accepted; a closed
/// one gives its place back, and the service keeps answering.
#[test]
fn connections_over_the_per_address_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &["--max-connections-per-address", "3", "--head-timeout", "30s"]);
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(server.addr()).unwrap()).collect();
    // The server may need a moment to accept the three before it counts them.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(server.addr()).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let read = extra.read_to_end(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the fourth connection was served: {}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = http(server.addr(), "GET", "/health", None, None);
    assert_eq!(status, 200, "{body}");
}

/// Review of finding 11: a chunked body trickled chunk by chunk got its 408, but actix went on
/// draining the rest for as long as the client kept sending, holding the connection. A body
/// nobody finished reading now closes the connection after the answer: with a cap of one
/// connection per address, a new connection is served while the client still trickles.
#[test]
fn a_trickled_chunked_body_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &["--body-timeout", "1s", "--max-connections-per-address", "1"]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/verify HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr()
    );
    s.write_all(head.as_bytes()).unwrap();
    let trickle = binary::Trickle::start(s.try_clone().unwrap());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // ends when the server closes its side
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("connection: close"), "{raw}");
    // The client is still trickling; its connection must be gone all the same.
    std::thread::sleep(Duration::from_millis(2_500));
    let (status, body) = http(server.addr(), "GET", "/health", None, None);
    trickle.stop();
    assert_eq!(status, 200, "the trickling connection still holds its place: {body}");
}
