//! A cached decision: the policy's mapping, the token read from the headers, the keyed hash, the
//! lookup (goal: at most 1 µs). The cache is filled by a real check against a tiny stand-in for
//! `/v1/verify` and the stream on loopback, so the path measured is the one requests take.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tessera_guard::{Guard, Policy, RequestView};

/// A loopback stand-in for the service: `/v1/verify` allows everything, the stream stays open.
fn stand_in() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    if line.starts_with("GET /v1/revocations/stream") {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n");
                        loop {
                            std::thread::sleep(Duration::from_secs(1));
                            if conn.write_all(b": heartbeat\n\n").is_err() {
                                return;
                            }
                        }
                    }
                    let body = r#"{"valid":true,"subject":"alice","tid":"00112233445566778899aabbccddeeff","kid":"0011223344556677","restrictions":{"not_before":null,"expires":null,"operations":["read"],"resources":["files/*"],"client_ips":null}}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    format!("http://{addr}")
}

fn cached(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let policy = Policy::from_toml("[[rule]]\nhost = \"*\"\nprefix = \"/files\"\n").unwrap();
    let guard = Guard::with_policy(stand_in(), policy).build().unwrap();
    while !guard.stream_live() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A token of typical length (a minted token with a few caveats is about 250 characters).
    let token = "A".repeat(250);
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let view =
        RequestView { method: "GET", host: "example.org", target: "/files/report.pdf", client_ip: None };
    rt.block_on(guard.check(&view, &headers)).unwrap();
    assert!(guard.cached(&view, &headers).is_some(), "the decision was not cached");
    c.bench_function("guard: cached decision (policy + token + keyed hash + lookup)", |b| {
        b.iter(|| guard.cached(std::hint::black_box(&view), std::hint::black_box(&headers)).unwrap())
    });
    let calls = guard.stats().calls;
    assert_eq!(calls, 1, "every iteration after the first was served from the cache");

    // The same with a closure for the mapping: what the policy's path reading costs.
    let closure =
        Guard::with_closure(stand_in(), |r| Some(("read".into(), r.target[1..].to_owned()))).build().unwrap();
    while !closure.stream_live() {
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(closure.check(&view, &headers)).unwrap();
    c.bench_function("guard: cached decision (closure + token + keyed hash + lookup)", |b| {
        b.iter(|| closure.cached(std::hint::black_box(&view), std::hint::black_box(&headers)).unwrap())
    });
}

criterion_group!(benches, cached);
criterion_main!(benches);
