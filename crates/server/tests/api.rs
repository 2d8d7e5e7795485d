//! In-process tests of every endpoint: happy paths, malformed/oversized input, missing, forged,
//! expired and revoked credentials, and subjects acting for others.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, TestRequest};
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tessera_core::{envelope, Caveat, Context, KeyId, Token};
use tessera_server::{app, AppState, DISCHARGE_HEADER, ROUTES};

#[test]
fn health_metrics_and_second_start() {
    run(async {
        let e = env();
        let a = send(&e, TestRequest::get().uri("/health")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["status"], "ok");
        let a = send(&e, TestRequest::get().uri("/metrics")).await;
        assert!(a.raw.contains("tessera_http_responses_total{class=\"2xx\"}"), "{}", a.raw);
        assert!(a.raw.contains("tessera_revoked_tokens 0"));
        // Review finding F3: refusals the audit writer could not take are counted where they show.
        assert!(a.raw.contains("tessera_audit_notes_dropped_total 0"), "{}", a.raw);
        let config = e.state.config.clone();
        drop(e.state);
        let again = AppState::open(config).unwrap();
        assert!(again.admin_token.is_none(), "the admin token is shown only on first start");
    })
}

#[test]
fn mint_verify_list_revoke() {
    run(async {
        let e = env();
        let a = mint(
            &e,
            &e.admin,
            json!({"subject": "alice", "description": "ci", "ttl": "6h",
            "operations": ["read"], "resources": ["issues/*"], "client_ips": ["10.0.0.0/8"]}),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert_eq!(a.body["subject"], "alice");
        let token = a.body["token"].as_str().unwrap().to_owned();
        let tid = a.body["tid"].as_str().unwrap().to_owned();

        let ok = verify(
            &e,
            &token,
            json!({"operation": "read", "resource": "issues/42", "client_ip": "10.1.2.3"}),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
        assert_eq!(ok.body["subject"], "alice");
        assert_eq!(ok.body["tid"], tid.as_str());
        assert_eq!(ok.body["restrictions"]["operations"], json!(["read"]));
        assert!(ok.body["restrictions"]["expires"].is_string());

        let denied = verify(
            &e,
            &token,
            json!({"operation": "write", "resource": "issues/42", "client_ip": "10.1.2.3"}),
        )
        .await;
        assert_problem(&denied, StatusCode::FORBIDDEN);
        assert_eq!(denied.body["caveat"], "allow read");
        let denied = verify(
            &e,
            &token,
            json!({"operation": "read", "resource": "issues/42", "client_ip": "192.168.1.1"}),
        )
        .await;
        assert_eq!(denied.body["caveat"], "client-ip 10.0.0.0/8");

        // Offline attenuation by the holder narrows what the service accepts.
        let narrow = Token::decode(&token).unwrap().attenuate("resource issues/42").unwrap().encode();
        let a = verify(
            &e,
            &narrow,
            json!({"operation": "read", "resource": "issues/7", "client_ip": "10.1.2.3"}),
        )
        .await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        // Verified (and so remembered by the signature memo), then presented again: the same
        // answer; after the revocation below, refused.
        let ctx42 = json!({"operation": "read", "resource": "issues/42", "client_ip": "10.1.2.3"});
        let first = verify(&e, &narrow, ctx42.clone()).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
        assert_eq!(verify(&e, &narrow, ctx42.clone()).await.raw, first.raw);
        assert_eq!(verify(&e, &token, ctx42.clone()).await.raw, ok.raw);
        assert_eq!(e.state.memo.len(), 2, "the two tokens that verified");

        let list = send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=alice"), &e.admin)).await;
        assert_eq!(list.status, StatusCode::OK);
        let tokens = list.body["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0]["description"], "ci");
        assert!(tokens[0].get("token").is_none(), "token text is never listed");
        assert!(!list.raw.contains(&token[..40]));

        let r = send(&e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        assert_eq!(r.body["already_revoked"], false);
        let again =
            send(&e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
        assert_eq!(again.body["already_revoked"], true);
        let dead = verify(
            &e,
            &narrow,
            json!({"operation": "read", "resource": "issues/42", "client_ip": "10.1.2.3"}),
        )
        .await;
        assert_problem(&dead, StatusCode::UNAUTHORIZED);
        assert_problem(&verify(&e, &token, ctx42).await, StatusCode::UNAUTHORIZED);
        let feed = send(&e, TestRequest::get().uri("/v1/revocations?after=0")).await;
        assert_eq!(feed.body["revocations"][0]["id"], tid.as_str());
        // Numbers are the change log's (the first key was entry 1).
        let seq = feed.body["revocations"][0]["seq"].as_u64().unwrap();
        assert_eq!(feed.body["last_seq"], seq);
        let feed = send(&e, TestRequest::get().uri(&format!("/v1/revocations?after={seq}"))).await;
        assert_eq!(feed.body["revocations"], json!([]));
    })
}

#[test]
fn subjects_act_only_for_themselves_and_never_widen() {
    run(async {
        let e = env();
        let alice = alice(&e).await;
        let bob =
            mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["read", "tokens.list"]})).await;

        // Alice mints for herself: the child inherits her caveats.
        let a = mint(&e, &alice, json!({"operations": ["read"], "description": "read-only"})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert_eq!(a.body["subject"], "alice");
        let caveats: Vec<String> = serde_json::from_value(a.body["caveats"].clone()).unwrap();
        assert_eq!(caveats[0], "allow read tokens.mint tokens.list tokens.revoke", "inherited first");
        let child = a.body["token"].as_str().unwrap().to_owned();
        // The child cannot mint (allow read ∩ allow read tokens.* = read).
        assert_problem(&mint(&e, &child, json!({})).await, StatusCode::FORBIDDEN);
        // Asking for more than she has yields nothing more.
        let wide = mint_ok(&e, &alice, json!({"operations": ["write"]})).await;
        let w = verify(&e, &wide, json!({"operation": "write"})).await;
        assert_problem(&w, StatusCode::FORBIDDEN);

        // Alice cannot act for bob.
        assert_problem(&mint(&e, &alice, json!({"subject": "bob"})).await, StatusCode::FORBIDDEN);
        let l = send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=bob"), &alice)).await;
        assert_problem(&l, StatusCode::FORBIDDEN);
        let bob_tid = Token::decode(&bob).unwrap().tessera_identifier().unwrap().tid;
        let r =
            send(&e, auth(TestRequest::post().uri(&format!("/v1/tokens/{bob_tid}/revoke")), &alice)).await;
        // Another subject's token id is answered like an unknown one (no id oracle).
        assert_problem(&r, StatusCode::NOT_FOUND);
        // Bob may list his own, but has no tokens.mint.
        let l = send(&e, auth(TestRequest::get().uri("/v1/tokens"), &bob)).await;
        assert_eq!(l.status, StatusCode::OK, "{}", l.raw);
        assert_problem(&mint(&e, &bob, json!({})).await, StatusCode::FORBIDDEN);
        // Only the admin manages keys.
        assert_problem(
            &send(&e, auth(TestRequest::get().uri("/v1/keys"), &alice)).await,
            StatusCode::FORBIDDEN,
        );
        assert_problem(
            &send(&e, auth(TestRequest::post().uri("/v1/keys/rotate"), &alice)).await,
            StatusCode::FORBIDDEN,
        );
    })
}

#[test]
fn bad_credentials_are_401_and_expired_ones_403() {
    run(async {
        let e = env();
        let a = send(&e, post("/v1/tokens", json!({}))).await;
        assert_problem(&a, StatusCode::UNAUTHORIZED);
        let a = send(&e, post("/v1/tokens", json!({})).insert_header(("Authorization", "Basic abc"))).await;
        assert_problem(&a, StatusCode::UNAUTHORIZED);
        assert_problem(&mint(&e, "garbage!!", json!({})).await, StatusCode::UNAUTHORIZED);
        // Forged: flip a byte of the signature.
        let mut bin = Token::decode(&e.admin).unwrap().to_binary().to_vec();
        let last = bin.len() - 1;
        bin[last] ^= 1;
        let forged = Token::from_binary(&bin).unwrap().encode();
        assert_problem(&mint(&e, &forged, json!({})).await, StatusCode::UNAUTHORIZED);
        // A foreign macaroon.
        let foreign =
            Token::mint(None, &tessera_core::RootKey::new(&[1; 32]).unwrap(), b"x").unwrap().encode();
        assert_problem(&mint(&e, &foreign, json!({})).await, StatusCode::UNAUTHORIZED);
        // Expired: the admin narrows its own token to the past.
        let expired =
            Token::decode(&e.admin).unwrap().attenuate("time-before 2020-01-01T00:00:00Z").unwrap().encode();
        let a = mint(&e, &expired, json!({})).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        assert_eq!(a.body["caveat"], "time-before 2020-01-01T00:00:00Z");
        // Revoked credential.
        let alice = alice(&e).await;
        let tid = Token::decode(&alice).unwrap().tessera_identifier().unwrap().tid;
        send(&e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
        assert_problem(&mint(&e, &alice, json!({})).await, StatusCode::UNAUTHORIZED);
    })
}

#[test]
fn malformed_and_oversized_requests() {
    run(async {
        let e = env_with(|c| c.body_limit = 32 * 1024);
        let bad_json = TestRequest::post()
            .uri("/v1/verify")
            .insert_header(("content-type", "application/json"))
            .set_payload("{not json");
        assert_problem(&send(&e, bad_json).await, StatusCode::BAD_REQUEST);
        assert_problem(&send(&e, post("/v1/verify", json!({"token": 42}))).await, StatusCode::BAD_REQUEST);
        assert_problem(&send(&e, post("/v1/verify", json!({"tokn": "x"}))).await, StatusCode::BAD_REQUEST);
        assert_problem(&send(&e, post("/v1/verify", json!({"token": "@@@"}))).await, StatusCode::BAD_REQUEST);
        let no_ct = TestRequest::post().uri("/v1/verify").set_payload(r#"{"token":"x"}"#);
        assert_problem(&send(&e, no_ct).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let big = json!({"token": "A".repeat(40 * 1024)});
        assert_problem(&send(&e, post("/v1/verify", big)).await, StatusCode::PAYLOAD_TOO_LARGE);
        let long_token = json!({"token": "A".repeat(20 * 1024)});
        assert_problem(&send(&e, post("/v1/verify", long_token)).await, StatusCode::PAYLOAD_TOO_LARGE);
        let ctx = json!({"token": e.admin, "context": {"client_ip": "not-an-ip"}});
        assert_problem(&send(&e, post("/v1/verify", ctx)).await, StatusCode::BAD_REQUEST);
        let ctx = json!({"token": e.admin, "context": {"time": "yesterday"}});
        assert_problem(&send(&e, post("/v1/verify", ctx)).await, StatusCode::BAD_REQUEST);
        for body in [
            json!({"ttl": "forever"}),
            json!({"ttl": "1000d"}),
            json!({"operations": []}),
            json!({"operations": ["two words"]}),
            json!({"client_ips": ["300.0.0.1"]}),
            json!({"subject": ""}),
            json!({"subject": "x".repeat(300)}),
            json!({"description": "d".repeat(2000)}),
            json!({"unknown": true}),
        ] {
            assert_problem(&mint(&e, &e.admin, body.clone()).await, StatusCode::BAD_REQUEST);
        }
        assert!(
            send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=alice"), &e.admin)).await.body["tokens"]
                .as_array()
                .unwrap()
                .is_empty(),
            "refused mints recorded nothing"
        );
        let q = send(&e, TestRequest::get().uri("/v1/revocations?after=-1")).await;
        assert_problem(&q, StatusCode::BAD_REQUEST);
        let p = send(&e, auth(TestRequest::post().uri("/v1/tokens/xyz/revoke"), &e.admin)).await;
        assert_problem(&p, StatusCode::BAD_REQUEST);
        let p = send(
            &e,
            auth(TestRequest::post().uri(&format!("/v1/tokens/{}/revoke", "0".repeat(32))), &e.admin),
        )
        .await;
        assert_problem(&p, StatusCode::NOT_FOUND);
        assert_problem(&send(&e, TestRequest::get().uri("/nope")).await, StatusCode::NOT_FOUND);
        assert_problem(
            &send(&e, TestRequest::delete().uri("/v1/verify")).await,
            StatusCode::METHOD_NOT_ALLOWED,
        );
        let m = send(&e, TestRequest::get().uri("/metrics")).await;
        assert!(m.raw.contains("tessera_http_responses_total{class=\"5xx\"} 0"), "no 500 from bad input");
    })
}

fn ticket_of(token: &str) -> String {
    let t = Token::decode(token).unwrap();
    let id = t
        .caveats()
        .find_map(|c| match c {
            Caveat::ThirdParty { id, location, .. } => {
                assert_eq!(location, "http://tessera.test/v1/discharge");
                Some(id.to_vec())
            }
            Caveat::FirstParty(_) => None,
        })
        .unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

#[test]
fn revocable_tokens_need_a_fresh_discharge() {
    run(async {
        let e = env();
        let a =
            mint(&e, &e.admin, json!({"subject": "carol", "operations": ["read"], "revocable": true})).await;
        assert_eq!(a.body["revocable"], true);
        let token = a.body["token"].as_str().unwrap().to_owned();
        let tid = a.body["tid"].as_str().unwrap().to_owned();
        let missing = verify(&e, &token, json!({"operation": "read"})).await;
        assert_problem(&missing, StatusCode::FORBIDDEN);

        let d = send(&e, post("/v1/discharge", json!({"ticket": ticket_of(&token)}))).await;
        assert_eq!(d.status, StatusCode::OK, "{}", d.raw);
        let discharge = Token::decode(d.body["discharge"].as_str().unwrap()).unwrap();
        let root = Token::decode(&token).unwrap();
        let bound = root.bind(&discharge).encode();
        let body = json!({"token": token, "discharges": [bound], "context": {"operation": "read"}});
        let ok = send(&e, post("/v1/verify", body.clone())).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
        // The discharge is short-lived.
        let late = json!({"token": token, "discharges": [bound], "context": {"operation": "read",
            "time": (time::OffsetDateTime::now_utc() + time::Duration::minutes(6))
                .format(&time::format_description::well_known::Rfc3339).unwrap()}});
        assert_problem(&send(&e, post("/v1/verify", late)).await, StatusCode::FORBIDDEN);
        // The bound discharge also authenticates management calls through the header.
        let carol_list = TestRequest::get().uri("/v1/tokens");
        let a = send(&e, auth(carol_list, &token).insert_header((DISCHARGE_HEADER, bound.clone()))).await;
        assert_problem(&a, StatusCode::FORBIDDEN); // carol's token allows only read

        send(&e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
        let refused = send(&e, post("/v1/discharge", json!({"ticket": ticket_of(&token)}))).await;
        assert_problem(&refused, StatusCode::FORBIDDEN);
        assert_problem(
            &send(&e, post("/v1/discharge", json!({"ticket": "AAAA"}))).await,
            StatusCode::BAD_REQUEST,
        );
        assert_problem(
            &send(&e, post("/v1/discharge", json!({"ticket": "%%%"}))).await,
            StatusCode::BAD_REQUEST,
        );
    })
}

#[test]
fn jwt_exchange_and_keys() {
    run(async {
        let e = env();
        let token = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "dave", "operations": ["read"], "resources": ["docs/*"]}),
        )
        .await;
        let j = send(&e, post("/v1/jwt", json!({"token": token, "alg": "HS256"}))).await;
        assert_eq!(j.status, StatusCode::OK, "{}", j.raw);
        let jwt = j.body["jwt"].as_str().unwrap().to_owned();
        let kid = j.body["kid"].as_str().unwrap().to_owned();
        let k =
            send(&e, auth(TestRequest::get().uri(&format!("/v1/keys/{kid}/envelope-key")), &e.admin)).await;
        assert_eq!(k.status, StatusCode::OK, "{}", k.raw);
        let key_hex = k.body["key_hex"].as_str().unwrap();
        assert_eq!(key_hex.len(), 64);
        // The envelope key is the one tessera-core derives; decode and enforce cap.
        let secret = e.state.store.verifying_key(&kid.parse::<KeyId>().unwrap()).unwrap();
        let ekey = secret.envelope_key();
        let ctx = Context::now().operation("read").resource("docs/a");
        let claims = envelope::decode(&jwt, |_| Some(ekey.clone()), "http://tessera.test", &ctx).unwrap();
        assert_eq!(claims.sub, "dave");
        assert!(envelope::decode(
            &jwt,
            |_| Some(ekey.clone()),
            "http://tessera.test",
            &ctx.clone().operation("write")
        )
        .is_err());
        assert_problem(
            &send(&e, post("/v1/jwt", json!({"token": "garbage"}))).await,
            StatusCode::BAD_REQUEST,
        );

        let keys = send(&e, auth(TestRequest::get().uri("/v1/keys"), &e.admin)).await;
        assert_eq!(keys.body["keys"].as_array().unwrap().len(), 1);
        let r = send(&e, auth(TestRequest::post().uri("/v1/keys/rotate"), &e.admin)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        assert_eq!(r.body["state"], "active");
        let keys = send(&e, auth(TestRequest::get().uri("/v1/keys"), &e.admin)).await;
        let listed = keys.body["keys"].as_array().unwrap();
        let state_of = |kid: &Value| listed.iter().find(|k| k["kid"] == *kid).unwrap()["state"].clone();
        assert_eq!(listed.len(), 2);
        assert_eq!(state_of(&r.body["kid"]), "active");
        assert_eq!(state_of(&json!(kid)), "retired");
        // Tokens of the retired key still verify; new tokens use the new key.
        assert_eq!(
            verify(&e, &token, json!({"operation": "read", "resource": "docs/a"})).await.status,
            StatusCode::OK
        );
        let a = mint(&e, &e.admin, json!({"subject": "dave"})).await;
        assert_eq!(a.body["kid"], r.body["kid"]);
        assert!(!keys.raw.contains("sealed") && !keys.raw.contains("secret"));
    })
}

#[test]
fn rate_limit_answers_429() {
    run(async {
        let e = env_with(|c| c.rate_limit = 1);
        let svc = init_service(app(e.state.clone())).await;
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..4 {
            let req = TestRequest::get()
                .uri("/v1/revocations")
                .peer_addr("10.9.9.9:1234".parse().unwrap())
                .to_request();
            let res = call_service(&svc, req).await;
            statuses.push(res.status());
            last = Some(res);
        }
        assert_eq!(&statuses[..2], &[StatusCode::OK, StatusCode::OK], "burst of two");
        assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
        // The limiter's 429 says when to come back, and never carries RateLimit-Policy: only a
        // token budget's 429 does, which is how the guard tells the two apart (docs/API.md).
        let limited = last.unwrap();
        assert_eq!(limited.headers().get("retry-after").unwrap(), "1");
        assert!(!limited.headers().contains_key("ratelimit-policy"));
        let req = TestRequest::get().uri("/health").peer_addr("10.9.9.9:1234".parse().unwrap()).to_request();
        assert_eq!(call_service(&svc, req).await.status(), StatusCode::OK, "health is not limited");
    })
}

#[test]
fn client_ip_comes_from_trusted_proxies_only() {
    run(async {
        let e = env_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]);
        let token = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "erin", "operations": ["tokens.list"], "client_ips": ["10.0.0.0/8"]}),
        )
        .await;
        let svc = init_service(app(e.state.clone())).await;
        let list = |peer: &str, xff: Option<&str>| {
            let mut r = TestRequest::get()
                .uri("/v1/tokens")
                .peer_addr(peer.parse().unwrap())
                .insert_header(("Authorization", format!("Bearer {token}")));
            if let Some(x) = xff {
                r = r.insert_header(("X-Forwarded-For", x));
            }
            r.to_request()
        };
        assert_eq!(call_service(&svc, list("127.0.0.1:1", Some("10.1.2.3"))).await.status(), StatusCode::OK);
        assert_eq!(
            call_service(&svc, list("127.0.0.1:1", Some("10.1.2.3, 127.0.0.2"))).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            call_service(&svc, list("127.0.0.1:1", Some("8.8.8.8"))).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(call_service(&svc, list("127.0.0.1:1", None)).await.status(), StatusCode::FORBIDDEN);
        // An untrusted peer's X-Forwarded-For is ignored.
        assert_eq!(
            call_service(&svc, list("192.168.1.1:1", Some("10.1.2.3"))).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(call_service(&svc, list("10.5.5.5:1", None)).await.status(), StatusCode::OK);
    })
}

/// The OpenAPI document lists exactly the routes served, and every route is served.
#[test]
fn openapi_matches_the_routes() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml")).unwrap();
    let mut documented = Vec::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            in_paths = false;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  ").filter(|l| l.starts_with('/')) {
            path = p.trim_end_matches(':').trim_matches('\'').to_owned();
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                documented.push((m.to_owned(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    run(async {
        let e = env();
        for (method, path) in ROUTES {
            let uri = path
                .replace("{tid}", &"0".repeat(32))
                .replace("{kid}", &"0".repeat(16))
                .replace("{name}", "x")
                .replace("{sid}", &"0".repeat(32));
            let req = match *method {
                "get" => TestRequest::get(),
                "delete" => TestRequest::delete(),
                _ => TestRequest::post(),
            }
            .uri(&uri);
            let a = send(&e, req).await;
            let unrouted = a.status == StatusCode::NOT_FOUND && a.raw.contains("no such endpoint");
            assert!(!unrouted, "{method} {path} is not served: {}", a.raw);
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(a.status.as_u16() < 500, "{method} {path}: {}", a.raw);
        }
    })
}

#[test]
fn verify_memo_zero_remembers_nothing() {
    run(async {
        let e = env_with(|c| c.verify_memo = 0);
        let a = mint(&e, &e.admin, json!({"subject": "alice", "operations": ["read"]})).await;
        let token = a.body["token"].as_str().unwrap().to_owned();
        for _ in 0..2 {
            let ok = verify(&e, &token, json!({"operation": "read"})).await;
            assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
        }
        assert!(e.state.memo.is_empty());
    });
}
