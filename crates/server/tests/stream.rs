//! `GET /v1/revocations/stream` in-process: a revocation reaches a client as the polling feed's
//! entry; a client resuming with `Last-Event-ID` (or `?after=`) misses nothing and gets nothing
//! twice; one too far behind (or ahead) gets `reset`; a client that does not read is disconnected
//! once it falls `--stream-buffer` behind; `--max-streams` is a cap, and so is
//! `--max-streams-per-address` (one address cannot hold every slot); a plain GET holds no stream.
//! (Across cluster nodes: crates/cli/tests/stream.rs.)

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::pin::Pin;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, TestRequest};
use common::*;
use serde_json::{json, Value};
use tessera_server::app;

/// How long a test waits for a chunk before it calls the stream stuck (a failure bound, not a
/// measurement).
const STUCK: Duration = Duration::from_secs(10);

/// One SSE event as read: its name (`message` when none), id and data.
#[derive(Debug, PartialEq)]
struct Event {
    name: String,
    id: Option<u64>,
    data: String,
}

/// A stream client: the response body and what was read of it.
struct Client {
    body: BoxBody,
    buf: String,
    ended: bool,
}

async fn open(e: &Env, req: TestRequest) -> Result<Client, Answer> {
    open_from(e, req, "127.0.0.1").await
}

/// A stream request from the connection peer `peer`.
async fn open_from(e: &Env, req: TestRequest, peer: &str) -> Result<Client, Answer> {
    let svc = init_service(app(e.state.clone())).await;
    let peer = std::net::SocketAddr::new(peer.parse().unwrap(), 40000);
    let req = req.insert_header(("Accept", "text/event-stream")).peer_addr(peer);
    let res = call_service(&svc, req.to_request()).await;
    if res.status() != StatusCode::OK {
        let status = res.status();
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let content_type = header("content-type").unwrap_or_default();
        // A refusal that asks the client to come back says when.
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(header("retry-after").is_some(), "{status} without Retry-After");
        }
        let raw = String::from_utf8(actix_web::test::read_body(res).await.to_vec()).unwrap();
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        return Err(Answer { status, content_type, body, raw });
    }
    assert_eq!(res.headers().get("content-type").unwrap(), "text/event-stream");
    Ok(Client { body: res.into_body().boxed(), buf: String::new(), ended: false })
}

async fn stream(e: &Env, path: &str) -> Client {
    open(e, TestRequest::get().uri(path)).await.map_err(|a| a.raw).unwrap()
}

impl Client {
    /// Read one chunk into the buffer; false once the stream ended.
    async fn read(&mut self) -> bool {
        let chunk =
            tokio::time::timeout(STUCK, std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_next(cx)))
                .await
                .expect("the stream sent nothing");
        match chunk {
            Some(Ok(bytes)) => {
                self.buf.push_str(std::str::from_utf8(&bytes).unwrap());
                true
            }
            _ => {
                self.ended = true;
                false
            }
        }
    }

    /// The next block (up to a blank line), read as needed; `None` when the stream ended.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block = self.buf[..i].to_owned();
                self.buf.drain(..i + 2);
                return Some(block);
            }
            if !self.read().await {
                return None;
            }
        }
    }

    /// The next event (comments and field-only blocks skipped).
    async fn event(&mut self) -> Option<Event> {
        loop {
            let block = self.block().await?;
            let (mut name, mut id, mut data) = ("message".to_owned(), None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let Some(data) = data {
                return Some(Event { name, id, data });
            }
        }
    }
}

async fn revoke_new(e: &Env) -> String {
    let a = mint(e, &e.admin, json!({"subject": "alice"})).await;
    let tid = a.body["tid"].as_str().unwrap().to_owned();
    let r = send(e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    tid
}

async fn feed(e: &Env, after: u64) -> Vec<Value> {
    get(e, &format!("/v1/revocations?after={after}")).await.body["revocations"].as_array().unwrap().clone()
}

#[test]
fn a_revocation_reaches_a_client_as_the_feeds_entry() {
    run(async {
        let e = env();
        let mut c = stream(&e, "/v1/revocations/stream").await;
        let tid = revoke_new(&e).await;
        let ev = c.event().await.unwrap();
        assert_eq!(ev.name, "revocation");
        let entry = &feed(&e, 0).await[0];
        assert_eq!(entry["id"], tid.as_str());
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), *entry, "the same JSON as the feed");
        assert_eq!(ev.id, entry["seq"].as_u64());
        assert_eq!(e.state.streams.open(), 1);
        drop(c);
        assert_eq!(e.state.streams.open(), 0, "a closed stream gives its place back");
    })
}

#[test]
fn resuming_misses_nothing_and_repeats_nothing() {
    run(async {
        let e = env();
        let mut tids = Vec::new();
        for _ in 0..3 {
            tids.push(revoke_new(&e).await);
        }
        let entries = feed(&e, 0).await;
        let first = entries[0]["seq"].as_u64().unwrap();
        // Header form (what a reconnecting EventSource sends) and query form.
        for req in [
            TestRequest::get()
                .uri("/v1/revocations/stream")
                .insert_header(("Last-Event-ID", first.to_string())),
            TestRequest::get().uri(&format!("/v1/revocations/stream?after={first}")),
        ] {
            let expected = feed(&e, first).await;
            assert!(expected.len() >= 2);
            let mut c = open(&e, req).await.map_err(|a| a.raw).unwrap();
            let mut replayed = Vec::new();
            for _ in 0..expected.len() {
                replayed.push(serde_json::from_str::<Value>(&c.event().await.unwrap().data).unwrap());
            }
            assert_eq!(replayed, expected, "the replay is the feed after the id");
            // Then live, from after the replay: the next revocation exactly once, nothing before it.
            let live = revoke_new(&e).await;
            let ev = c.event().await.unwrap();
            assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap()["id"], live.as_str());
            tids.push(live);
        }
        // The header wins over the query (a reconnecting EventSource keeps the URL's `after`).
        let last = feed(&e, 0).await.last().unwrap()["seq"].as_u64().unwrap();
        let mut c = open(
            &e,
            TestRequest::get()
                .uri("/v1/revocations/stream?after=0")
                .insert_header(("Last-Event-ID", last.to_string())),
        )
        .await
        .map_err(|a| a.raw)
        .unwrap();
        let live = revoke_new(&e).await;
        let ev = c.event().await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap()["id"], live.as_str(), "nothing replayed");
    })
}

#[test]
fn too_far_behind_or_ahead_gets_a_reset() {
    run(async {
        let e = env_with(|c| c.stream_replay_limit = 2);
        for _ in 0..3 {
            revoke_new(&e).await;
        }
        let last = e.state.store.last_applied();
        let first = feed(&e, 0).await[0]["seq"].as_u64().unwrap();
        // Two behind: replayed.
        let mut c = stream(&e, &format!("/v1/revocations/stream?after={first}")).await;
        assert_eq!(c.event().await.unwrap().name, "revocation");
        // Three behind, over the replay limit of 2: reset, then live from the node's position.
        let mut c = stream(&e, "/v1/revocations/stream?after=0").await;
        let reset = c.event().await.unwrap();
        assert_eq!(reset.name, "reset");
        assert_eq!(reset.id, Some(last));
        assert_eq!(serde_json::from_str::<Value>(&reset.data).unwrap(), json!({"last_seq": last}));
        let live = revoke_new(&e).await;
        let ev = c.event().await.unwrap();
        assert_eq!(
            (ev.name.as_str(), serde_json::from_str::<Value>(&ev.data).unwrap()["id"].clone()),
            ("revocation", json!(live))
        );
        // An id this node never reached (another database, a restored backup): reset.
        let mut c = stream(&e, "/v1/revocations/stream?after=999999").await;
        assert_eq!(c.event().await.unwrap().name, "reset");
    })
}

#[test]
fn a_client_that_does_not_read_is_disconnected() {
    run(async {
        let e = env_with(|c| {
            c.stream_buffer = 4;
            c.stream_heartbeat = Duration::from_millis(20);
        });
        let mut slow = stream(&e, "/v1/revocations/stream").await;
        // A heartbeat comes only once the client is live (its replay done).
        loop {
            let block = slow.block().await.unwrap();
            if block.starts_with(": heartbeat") {
                break;
            }
        }
        let mut fast = stream(&e, "/v1/revocations/stream").await;
        // The reading client gets every one, in order.
        let mut tids = Vec::new();
        for _ in 0..10 {
            let tid = revoke_new(&e).await;
            let ev = fast.event().await.unwrap();
            assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap()["id"], tid.as_str());
            tids.push(tid);
        }
        // The other fell 10 behind a buffer of 4: it ends without them, its place given back.
        let mut got = 0;
        while let Some(ev) = slow.event().await {
            assert_eq!(ev.name, "revocation");
            got += 1;
        }
        assert!(slow.ended);
        assert!(got < tids.len(), "a client behind the buffer was still served everything");
        assert_eq!(e.state.streams.open(), 1);
    })
}

#[test]
fn streams_are_capped_and_need_an_event_stream_accept() {
    run(async {
        let e = env_with(|c| c.max_streams = 1);
        let first = stream(&e, "/v1/revocations/stream").await;
        let refused = open(&e, TestRequest::get().uri("/v1/revocations/stream")).await.err().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.raw);
        assert!(refused.raw.contains("--max-streams"), "{}", refused.raw);
        drop(first);
        let again = stream(&e, "/v1/revocations/stream").await;
        drop(again);
        // Without Accept: text/event-stream nothing is held open.
        assert_problem(&get(&e, "/v1/revocations/stream").await, StatusCode::BAD_REQUEST);
        assert_eq!(e.state.streams.open(), 0);
        // A Last-Event-ID that is not a sequence number is a 400, not a fresh start.
        let bad =
            open(&e, TestRequest::get().uri("/v1/revocations/stream").insert_header(("Last-Event-ID", "x")))
                .await
                .err()
                .unwrap();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let unknown = open(&e, TestRequest::get().uri("/v1/revocations/stream?limit=3")).await.err().unwrap();
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    })
}

#[test]
fn one_address_cannot_hold_every_stream() {
    run(async {
        let e = env_with(|c| {
            c.max_streams = 10;
            c.max_streams_per_address = 2;
            c.trusted_proxies = vec!["10.0.0.1/32".parse().unwrap()];
        });
        let path = "/v1/revocations/stream";
        let from = |peer: &'static str| open_from(&e, TestRequest::get().uri(path), peer);
        let a1 = from("192.0.2.1").await.map_err(|a| a.raw).unwrap();
        let a2 = from("192.0.2.1").await.map_err(|a| a.raw).unwrap();
        // The third from the same address: 429 problem+json naming the flag; nothing held.
        let refused = from("192.0.2.1").await.err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.raw);
        assert_eq!(refused.content_type, "application/problem+json");
        assert!(refused.raw.contains("--max-streams-per-address"), "{}", refused.raw);
        assert_eq!(e.state.streams.open(), 2);
        assert_eq!(e.state.streams.open_from("192.0.2.1".parse().unwrap()), 2);
        // Another address still gets its streams.
        let b = from("192.0.2.2").await.map_err(|a| a.raw).unwrap();
        // Through a trusted proxy the address is the forwarded client's, not the proxy's: the
        // full address is refused, another one served, though both come from the proxy.
        let via = |client: &str| {
            open_from(
                &e,
                TestRequest::get().uri(path).insert_header(("X-Forwarded-For", client.to_owned())),
                "10.0.0.1",
            )
        };
        assert_eq!(via("192.0.2.1").await.err().unwrap().status, StatusCode::TOO_MANY_REQUESTS);
        let c = via("192.0.2.3").await.map_err(|a| a.raw).unwrap();
        // IPv6 clients count per /48: another /64 of the same /48 is the same client (a home
        // connection's /56 holds 256 /64s, enough to take every slot if each counted alone).
        let v6a = from("2001:db8:1:2::1").await.map_err(|a| a.raw).unwrap();
        let v6b = from("2001:db8:1:3::1").await.map_err(|a| a.raw).unwrap();
        assert_eq!(from("2001:db8:1:ff::1").await.err().unwrap().status, StatusCode::TOO_MANY_REQUESTS);
        let v6c = from("2001:db8:2::1").await.map_err(|a| a.raw).unwrap();
        // A slot is given back when its stream ends.
        drop(a1);
        assert_eq!(e.state.streams.open_from("192.0.2.1".parse().unwrap()), 1);
        let a3 = from("192.0.2.1").await.map_err(|a| a.raw).unwrap();
        drop((a2, a3, b, c, v6a, v6b, v6c));
        assert_eq!(e.state.streams.open(), 0);
        assert_eq!(e.state.streams.open_from("192.0.2.1".parse().unwrap()), 0);
    })
}

/// Review of issue 23: a HEAD request to the stream (routed as GET) opened a stream whose body
/// the connection never sent, so it never saw its client leave and kept its slot for good; a few
/// HEAD requests locked every slot. HEAD gets the headers and holds nothing.
#[test]
fn a_head_request_holds_no_stream_slot() {
    run(async {
        let e = env_with(|c| {
            c.max_streams = 2;
            c.max_streams_per_address = 1;
        });
        let head = || {
            open_from(
                &e,
                TestRequest::default().method(actix_web::http::Method::HEAD).uri("/v1/revocations/stream"),
                "192.0.2.9",
            )
        };
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(head().await.map_err(|a| a.raw).unwrap());
            assert_eq!(e.state.streams.open(), 0);
        }
        // The address's one slot is still free for a real stream.
        let real = open_from(&e, TestRequest::get().uri("/v1/revocations/stream"), "192.0.2.9")
            .await
            .map_err(|a| a.raw)
            .unwrap();
        assert_eq!(e.state.streams.open(), 1);
        drop((held, real));
    })
}
