//! The revocation stream across a cluster: two `tessera serve` nodes on one PostgreSQL (a
//! throwaway server this test starts); a revocation made on one node reaches a stream client of
//! the other within a second, and a client that reconnects to the other node with
//! `Last-Event-ID` misses nothing made while it was away.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_testpg::PgServer;
use tessera_testserver::TestServer;

const MASTER: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

/// A `tessera serve` node and its data directory (removed after the process is gone).
struct Node {
    server: TestServer,
    _dir: tempfile::TempDir,
}

fn start(database: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0", "--database", database])
            .arg("--data-dir")
            .arg(dir.path())
            .env("TESSERA_MASTER_KEY", MASTER)
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    Node { server, _dir: dir }
}

fn call(method: &str, url: &str, bearer: &str, body: Value) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let auth = format!("Bearer {bearer}");
    let mut res = match method {
        "GET" => agent.get(url).header("Authorization", &auth).call(),
        _ => agent
            .post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string()),
    }
    .unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
}

/// A minimal SSE client on a raw socket (HTTP/1.1, chunked): enough to read events as they come.
struct Sse {
    reader: BufReader<TcpStream>,
    pending: String,
}

impl Sse {
    fn open(node: &Node, last_event_id: Option<u64>) -> Sse {
        let mut s = TcpStream::connect(node.server.addr()).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        write!(
            s,
            "GET /v1/revocations/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            node.server.addr()
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Sse { reader, pending: String::new() }
    }

    /// The next revocation event's data, read until `deadline`; `None` if none came by then.
    fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            while let Some(i) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..i + 2).collect();
                if block.contains("event: revocation") {
                    let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                    return Some(serde_json::from_str(data).unwrap());
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.reader.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            // One chunk: its size line, its bytes, its CRLF.
            let mut size = String::new();
            if self.reader.read_line(&mut size).is_err() {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            assert!(n > 0, "the stream ended");
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            self.pending.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    }
}

#[test]
fn a_revocation_on_one_node_reaches_a_stream_client_of_another() {
    let pg = PgServer::start();
    let db = pg.create_database();
    let a = start(&db);
    let b = start(&db);
    let admin = a.server.admin().or(b.server.admin()).unwrap().to_owned();
    let mut on_b = Sse::open(&b, None);
    let mut last_seq = 0;
    let revoke_on_a = || {
        let (status, minted) =
            call("POST", &format!("{}/v1/tokens", a.server.url()), &admin, json!({"subject": "alice"}));
        assert_eq!(status, 201, "{minted}");
        let tid = minted["tid"].as_str().unwrap().to_owned();
        let (status, _) =
            call("POST", &format!("{}/v1/tokens/{tid}/revoke", a.server.url()), &admin, json!({}));
        assert_eq!(status, 200);
        tid
    };
    for _ in 0..3 {
        let tid = revoke_on_a();
        // Acknowledged on A; B's client has it within a second (a deadline, not a measurement).
        let ev = on_b.next(Instant::now() + Duration::from_secs(1)).expect("not on B's stream within 1 s");
        assert_eq!(ev["id"], tid.as_str());
        assert_eq!(ev["kind"], "token");
        last_seq = ev["seq"].as_u64().unwrap();
    }
    // The client goes away; two revocations happen on A; it comes back to B with its last id.
    drop(on_b);
    let missed = [revoke_on_a(), revoke_on_a()];
    let mut back = Sse::open(&b, Some(last_seq));
    for tid in &missed {
        let ev = back.next(Instant::now() + Duration::from_secs(5)).expect("missed a revocation");
        assert_eq!(ev["id"], tid.as_str());
    }
    // And nothing twice: the next event is the next revocation.
    let next = revoke_on_a();
    let ev = back.next(Instant::now() + Duration::from_secs(1)).expect("not on B's stream within 1 s");
    assert_eq!(ev["id"], next.as_str());
    // The feed says the same.
    let (_, feed) =
        call("GET", &format!("{}/v1/revocations?after={last_seq}", b.server.url()), &admin, json!({}));
    let ids: Vec<&str> =
        feed["revocations"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [missed[0].as_str(), missed[1].as_str(), next.as_str()]);
}
