//! The housekeeping round: last uses written in a batch; expiring-token gauges; expiry notices
//! delivered to a webhook the test runs on loopback (signed; a forced failure retried with
//! backoff; not sent again after a restart); unused tokens revoked when asked; the expiring list;
//! tokens without expiry only when allowed.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tessera_server::housekeeping::tick;
use tessera_server::{AppState, Config};

const SECRET: &str = "a-webhook-secret-of-at-least-32-bytes!";

/// What the receiver got: (signature header, body), in order.
type Deliveries = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver: records (signature header, body) and answers 500 to the first request.
fn receiver() -> (String, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signature) = (0usize, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse().unwrap(),
                    "x-tessera-signature" => signature = v.to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let first = {
                let mut g = seen.lock().unwrap();
                g.push((signature, String::from_utf8(body).unwrap()));
                g.len() == 1
            };
            let status = if first { "500 Internal Server Error" } else { "204 No Content" };
            let mut s = stream;
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn signed(signature: &str, body: &str) -> bool {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    signature == format!("sha256={hex}")
}

fn config(dir: &std::path::Path, url: &str) -> Config {
    let secret = dir.join("notify.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut c = Config::for_data_dir(dir.join("data"));
    c.public_url = Some("http://tessera.test".into());
    c.rate_limit = 0;
    c.notify_webhook = Some(url.into());
    c.notify_secret_file = Some(secret);
    c
}

#[test]
fn notices_are_signed_retried_and_not_sent_twice() {
    run(async {
        let (url, got) = receiver();
        let dir = tempfile::tempdir().unwrap();
        let opened = AppState::open(config(dir.path(), &url)).unwrap();
        let e = Env {
            _dir: tempfile::tempdir().unwrap(),
            state: opened.state,
            admin: opened.admin_token.unwrap(),
        };
        let long = mint(&e, &e.admin, json!({"subject": "hana", "description": "ci", "ttl": "10d"})).await;
        let short = mint(&e, &e.admin, json!({"subject": "hana", "ttl": "1h"})).await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;

        let hour = 3600;

        // Two hours on: the 1-hour token has expired (its notice is due; it never had 7 or 1 days
        // left, so it gets no such notice). The receiver fails the first delivery.
        let r = tick(&e.state, now + 2 * hour);
        assert_eq!((r.claimed, r.delivered, r.failed), (1, 0, 1));
        let r = tick(&e.state, now + 2 * hour + 1);
        assert_eq!((r.claimed, r.delivered, r.failed), (0, 0, 0), "backing off");
        let r = tick(&e.state, now + 2 * hour + 10);
        assert_eq!((r.claimed, r.delivered), (0, 1), "retried");
        // Four days on: 7 days left for the 10-day token.
        let r = tick(&e.state, now + 4 * day);
        assert_eq!((r.claimed, r.delivered), (1, 1));
        {
            let g = got.lock().unwrap();
            assert_eq!(g.len(), 3);
            for (sig, body) in g.iter() {
                assert!(signed(sig, body), "signature over the body: {body}");
            }
            let (first, retry) = (&g[0].1, &g[1].1);
            let v: Value = serde_json::from_str(retry).unwrap();
            assert_eq!(v["type"], "token.expired");
            assert_eq!(v["token"]["tid"], short.body["tid"]);
            assert_eq!(
                serde_json::from_str::<Value>(first).unwrap()["id"],
                v["id"],
                "the same event, retried"
            );
            let v: Value = serde_json::from_str(&g[2].1).unwrap();
            assert_eq!(v["type"], "token.expiring");
            assert_eq!(v["threshold"], "7d");
            assert_eq!(v["token"]["tid"], long.body["tid"]);
            assert_eq!(v["token"]["description"], "ci");
        }
        let m = get(&e, "/metrics").await;
        assert!(m.raw.contains("tessera_tokens_expiring{within=\"7d\"} 1"), "{}", m.raw);

        // A restart (or a second node) does not send it again.
        drop(e);
        let opened = AppState::open(config(dir.path(), &url)).unwrap();
        let r = tick(&opened.state, now + 4 * day + 20);
        assert_eq!((r.claimed, r.delivered), (0, 0));
        // 1 day before expiry, then at expiry.
        assert_eq!(tick(&opened.state, now + 9 * day + 5).delivered, 1);
        assert_eq!(tick(&opened.state, now + 10 * day + 5).delivered, 1);
        assert_eq!(tick(&opened.state, now + 10 * day + 50).delivered, 0);
        let g = got.lock().unwrap();
        let seen: Vec<(String, String)> = g
            .iter()
            .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap())
            .map(|v| {
                (v["threshold"].as_str().unwrap().to_owned(), v["token"]["tid"].as_str().unwrap().to_owned())
            })
            .collect();
        let long_tid = long.body["tid"].as_str().unwrap().to_owned();
        assert_eq!(seen[3..], [("1d".to_owned(), long_tid.clone()), ("0s".to_owned(), long_tid)]);
    })
}

#[test]
fn last_use_is_written_in_batches_and_unused_tokens_can_be_revoked() {
    run(async {
        let e = env_with(|c| c.revoke_unused_after = Some(std::time::Duration::from_secs(30 * 86_400)));
        let used =
            mint_ok(&e, &e.admin, json!({"subject": "ivan", "operations": ["read"], "ttl": "90d"})).await;
        let idle = mint(&e, &e.admin, json!({"subject": "ivan", "ttl": "90d"})).await;
        assert_eq!(verify(&e, &used, json!({"operation": "read"})).await.status, StatusCode::OK);
        let list = || send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=ivan"), &e.admin));
        let before = list().await;
        assert!(
            before.body["tokens"].as_array().unwrap().iter().all(|t| t["last_used"].is_null()),
            "not written yet"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(tick(&e.state, now).flushed >= 1);
        let after = list().await;
        let last: Vec<&Value> =
            after.body["tokens"].as_array().unwrap().iter().map(|t| &t["last_used"]).collect();
        assert_eq!(last.iter().filter(|l| l.is_string()).count(), 1, "{}", after.raw);
        // 31 days later the idle token is revoked; the used one (used "now") also idles by then,
        // so use it then first; the admin's token is kept whatever.
        assert_eq!(verify(&e, &used, json!({"operation": "read"})).await.status, StatusCode::OK);
        tick(&e.state, now);
        let r = tick(&e.state, now + 31 * 86_400);
        assert!(r.revoked >= 1, "{r:?}");
        let idle_tid = idle.body["tid"].as_str().unwrap();
        let after = list().await;
        let idle_now =
            after.body["tokens"].as_array().unwrap().iter().find(|t| t["tid"] == idle_tid).unwrap().clone();
        assert_eq!(idle_now["revoked"], true);
        assert_eq!(
            verify(&e, &e.admin, json!({})).await.status,
            StatusCode::OK,
            "the admin is never locked out"
        );
    })
}

#[test]
fn the_expiring_list_and_tokens_without_expiry() {
    run(async {
        let e = env();
        mint_ok(&e, &e.admin, json!({"subject": "jo", "ttl": "2d", "description": "soon"})).await;
        mint_ok(&e, &e.admin, json!({"subject": "jo", "ttl": "20d", "description": "later"})).await;
        let a = send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=jo&expiring_within=7d"), &e.admin))
            .await;
        let d: Vec<&str> =
            a.body["tokens"].as_array().unwrap().iter().map(|t| t["description"].as_str().unwrap()).collect();
        assert_eq!(d, ["soon"]);
        let bad =
            send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=jo&expiring_within=soon"), &e.admin))
                .await;
        assert_problem(&bad, StatusCode::BAD_REQUEST);
        assert_problem(
            &mint(&e, &e.admin, json!({"subject": "jo", "ttl": "never"})).await,
            StatusCode::BAD_REQUEST,
        );
        let e = env_with(|c| c.allow_no_expiry = true);
        let a = mint(&e, &e.admin, json!({"subject": "jo", "ttl": "never"})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert!(a.body["expires"].is_null());
    })
}

#[test]
fn a_webhook_needs_a_real_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "http://127.0.0.1:9/hook");
    std::fs::write(c.notify_secret_file.as_ref().unwrap(), "short").unwrap();
    assert!(AppState::open(c.clone()).err().unwrap().to_string().contains("32 bytes"));
    c.notify_secret_file = None;
    assert!(AppState::open(c.clone()).err().unwrap().to_string().contains("secret"));
    c.notify_webhook = Some("ftp://x".into());
    assert!(AppState::open(c).err().unwrap().to_string().contains("http"));
}

/// Security review round 3, finding 10: `--revoke-unused-after` revoked an unused parent and the
/// revocation cascaded to its children in daily use (a child verified every 0.3 s died). A
/// family is unused only if no member of it (the token, its attenuations, every descendant) was
/// used or created within the period; an idle family beside it still goes.
#[test]
fn revoke_unused_keeps_a_family_whose_descendant_is_in_use() {
    run(async {
        let e = env_with(|c| c.revoke_unused_after = Some(std::time::Duration::from_secs(1)));
        let parent = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "kim", "operations": ["read", "tokens.mint"], "ttl": "1d"}),
        )
        .await;
        let child = mint_ok(&e, &parent, json!({"subject": "kim", "ttl": "1h"})).await;
        let grandchild = mint_ok(&e, &child, json!({"subject": "kim", "ttl": "1h"})).await;
        let idle = mint_ok(&e, &e.admin, json!({"subject": "kim", "ttl": "1d"})).await;
        // Times are whole seconds: the parent and the idle token are now older than the period.
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        assert_eq!(verify(&e, &grandchild, json!({"operation": "read"})).await.status, StatusCode::OK);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let round = tick(&e.state, now);
        assert!(round.flushed >= 1, "{round:?}");
        for (name, token) in [("parent", &parent), ("child", &child), ("grandchild", &grandchild)] {
            let a = verify(&e, token, json!({"operation": "read"})).await;
            assert_eq!(a.status, StatusCode::OK, "{name} of a family in use was revoked: {}", a.raw);
        }
        assert_problem(&verify(&e, &idle, json!({})).await, StatusCode::UNAUTHORIZED);
        assert!(round.revoked >= 1, "{round:?}");
    })
}
