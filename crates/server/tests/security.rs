//! Regressions for the security review's findings against the HTTP service: each test fails on
//! the code before the fix (lineage of minted tokens, strict client address, rate limit by any
//! path spelling, no token-id oracle on revoke).

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, TestRequest};
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tessera_core::{Caveat, RootKey, Token};
use tessera_server::{app, ForwardedHeader, DISCHARGE_HEADER};

/// A fresh discharge of the service's own ticket in `token`, bound to it (optionally narrowed by
/// the holder before binding).
async fn discharge(e: &Env, token: &str) -> Answer {
    let t = Token::decode(token).unwrap();
    let ticket = t
        .caveats()
        .find_map(|c| match c {
            Caveat::ThirdParty { id, .. } => {
                Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id))
            }
            Caveat::FirstParty(_) => None,
        })
        .expect("a revocable token has a ticket");
    send(e, post("/v1/discharge", json!({ "ticket": ticket }))).await
}

async fn bound_discharge(e: &Env, token: &str, narrow: Option<&str>) -> String {
    let a = discharge(e, token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    let mut d = Token::decode(a.body["discharge"].as_str().unwrap()).unwrap();
    if let Some(c) = narrow {
        d = d.attenuate(c).unwrap();
    }
    Token::decode(token).unwrap().bind(&d).encode()
}

async fn mint_with(e: &Env, token: &str, discharge: &str, body: Value) -> Answer {
    send(e, auth(post("/v1/tokens", body), token).insert_header((DISCHARGE_HEADER, discharge.to_owned())))
        .await
}

async fn verify_with(e: &Env, token: &str, discharges: &[&str], context: Value) -> Answer {
    send(e, post("/v1/verify", json!({"token": token, "discharges": discharges, "context": context}))).await
}

async fn revoke(e: &Env, by: &str, tid: &str) -> Answer {
    send(e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), by)).await
}

/// Finding 1: a token minted from a revocable token is its revocable child, inherits the caveats
/// of the caller's token and discharges, and dies with it, transitively.
#[test]
fn minted_tokens_die_with_their_parent() {
    run(async {
        let e = env();
        let p = mint(
            &e,
            &e.admin,
            json!({"subject": "alice", "operations": ["read", "tokens.mint", "tokens.list"], "revocable": true}),
        )
        .await;
        assert_eq!(p.status, StatusCode::CREATED, "{}", p.raw);
        let (parent, parent_tid) = (p.body["token"].as_str().unwrap(), p.body["tid"].as_str().unwrap());

        // Alice narrows her discharge before binding it: the child inherits that too.
        let d = bound_discharge(&e, parent, Some("client-ip 127.0.0.0/8")).await;
        let c = mint_with(&e, parent, &d, json!({"description": "child", "revocable": false})).await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.raw);
        assert_eq!(c.body["revocable"], true, "the child of a revocable token is revocable");
        assert_eq!(c.body["parent"], parent_tid);
        let caveats: Vec<&str> =
            c.body["caveats"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(caveats.contains(&"allow read tokens.mint tokens.list"), "{caveats:?}");
        assert!(caveats.contains(&"client-ip 127.0.0.0/8"), "discharge caveats are inherited: {caveats:?}");
        // The service's own freshness bound on the discharge is not (the child has its own ticket).
        let expires = time::OffsetDateTime::parse(
            c.body["expires"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(expires > time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        let child = c.body["token"].as_str().unwrap().to_owned();
        let child_tid = c.body["tid"].as_str().unwrap().to_owned();
        assert!(Token::decode(&child).unwrap().caveats().any(|c| matches!(c, Caveat::ThirdParty { .. })));

        // The child mints a grandchild.
        let cd = bound_discharge(&e, &child, None).await;
        let g = mint_with(&e, &child, &cd, json!({"description": "grandchild"})).await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.raw);
        let grandchild = g.body["token"].as_str().unwrap().to_owned();
        let grandchild_tid = g.body["tid"].as_str().unwrap().to_owned();
        let gd = bound_discharge(&e, &grandchild, None).await;
        let ok =
            verify_with(&e, &child, &[&cd], json!({"operation": "read", "client_ip": "127.0.0.1"})).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);

        // Revoke the parent: child and grandchild die with it, each listed in the feed.
        let r = revoke(&e, &e.admin, parent_tid).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        let mut descendants: Vec<String> = r.body["descendants_revoked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().into())
            .collect();
        descendants.sort();
        let mut expected = vec![child_tid.clone(), grandchild_tid.clone()];
        expected.sort();
        assert_eq!(descendants, expected);
        for (t, d) in [(&child, &cd), (&grandchild, &gd)] {
            let dead = verify_with(&e, t, &[d], json!({"operation": "read", "client_ip": "127.0.0.1"})).await;
            assert_problem(&dead, StatusCode::UNAUTHORIZED);
            assert_problem(&discharge(&e, t).await, StatusCode::FORBIDDEN);
        }
        let again = mint_with(&e, &child, &cd, json!({"description": "after revocation"})).await;
        assert_problem(&again, StatusCode::UNAUTHORIZED);
        let feed = send(&e, TestRequest::get().uri("/v1/revocations?after=0")).await;
        let ids: Vec<&str> =
            feed.body["revocations"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3, "{}", feed.raw);
        for tid in [parent_tid, &child_tid, &grandchild_tid] {
            assert!(ids.contains(&tid), "{tid} not in the feed");
        }
        // Records keep the lineage.
        let list = send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=alice"), &e.admin)).await;
        let rec = list.body["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tid"] == grandchild_tid.as_str())
            .unwrap()
            .clone();
        assert_eq!(rec["parent"], child_tid.as_str());
        assert_eq!(rec["revoked"], true);
    })
}

/// Finding 1: a token with someone else's third-party caveat cannot mint (the service cannot copy
/// a condition it cannot discharge); and a non-revocable parent still takes its children along.
#[test]
fn foreign_third_party_caveats_cannot_mint() {
    run(async {
        let e = env();
        let a = alice(&e).await;
        let key = RootKey::new(&[5u8; 32]).unwrap();
        let t = Token::decode(&a)
            .unwrap()
            .add_third_party_caveat("https://idp.example", &key, b"is-employee")
            .unwrap();
        let d = t.bind(&Token::discharge(Some("https://idp.example"), &key, b"is-employee").unwrap());
        let ok = verify_with(&e, &t.encode(), &[&d.encode()], json!({"operation": "read"})).await;
        assert_eq!(ok.status, StatusCode::OK, "the token itself is valid: {}", ok.raw);
        let m = mint_with(&e, &t.encode(), &d.encode(), json!({"description": "laundered"})).await;
        assert_problem(&m, StatusCode::FORBIDDEN);
        assert!(m.body["detail"].as_str().unwrap().contains("cannot mint"), "{}", m.raw);

        // Non-revocable parent: the child is recorded under it and revoked with it.
        let child = mint(&e, &a, json!({"description": "plain child"})).await;
        assert_eq!(child.status, StatusCode::CREATED, "{}", child.raw);
        assert_eq!(child.body["revocable"], false);
        let child_token = child.body["token"].as_str().unwrap();
        assert_eq!(verify(&e, child_token, json!({"operation": "read"})).await.status, StatusCode::OK);
        let parent_tid = Token::decode(&a).unwrap();
        let parent_tid = tessera_core::Identifier::decode(parent_tid.identifier()).unwrap().tid.to_string();
        let r = revoke(&e, &e.admin, &parent_tid).await;
        assert_eq!(r.body["descendants_revoked"], json!([child.body["tid"]]));
        assert_problem(
            &verify(&e, child_token, json!({"operation": "read"})).await,
            StatusCode::UNAUTHORIZED,
        );
    })
}

/// Finding 2: every X-Forwarded-For line counts, in order; an entry that is not an address is a
/// 400 naming the header, never the proxy's own address. RFC 7239 `Forwarded` when configured.
#[test]
fn client_address_from_proxies_fails_closed() {
    run(async {
        let e = env_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]);
        let in_10 = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "erin", "operations": ["tokens.list"], "client_ips": ["10.0.0.0/8"]}),
        )
        .await;
        let at_proxy = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "erin", "operations": ["tokens.list"], "client_ips": ["127.0.0.0/8"]}),
        )
        .await;
        let svc = init_service(app(e.state.clone())).await;
        let list = |token: &str, name: &str, lines: &[&str]| {
            let mut r = TestRequest::get()
                .uri("/v1/tokens")
                .peer_addr("127.0.0.1:1".parse().unwrap())
                .insert_header(("Authorization", format!("Bearer {token}")));
            for l in lines {
                r = r.append_header((name.to_owned(), l.to_string()));
            }
            r.to_request()
        };
        // A client-sent line first, the proxy's appended line second: the proxy's wins.
        let two_lines = list(&in_10, "X-Forwarded-For", &["10.1.2.3", "8.8.8.8"]);
        assert_eq!(call_service(&svc, two_lines).await.status(), StatusCode::FORBIDDEN);
        let two_lines = list(&in_10, "X-Forwarded-For", &["8.8.8.8", "10.1.2.3"]);
        assert_eq!(call_service(&svc, two_lines).await.status(), StatusCode::OK);
        // Unparsable entries never fall back to the proxy's address.
        for bad in ["10.1.2.3:5555", "[::1]:80", "unknown", "10.1.2.3, junk", ""] {
            let res = call_service(&svc, list(&at_proxy, "X-Forwarded-For", &[bad])).await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
            let body: Value = actix_web::test::read_body_json(res).await;
            assert!(body["detail"].as_str().unwrap().contains("X-Forwarded-For"), "{body}");
        }
        // Forwarded is ignored unless configured.
        let res = call_service(&svc, list(&at_proxy, "Forwarded", &["for=unknown"])).await;
        assert_eq!(res.status(), StatusCode::OK);

        let e = env_with(|c| {
            c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            c.forwarded_header = ForwardedHeader::Forwarded;
        });
        let in_10 = mint_ok(&e, &e.admin, json!({"subject": "erin", "operations": ["tokens.list"], "client_ips": ["10.0.0.0/8", "2001:db8::/32"]})).await;
        let svc = init_service(app(e.state.clone())).await;
        for (lines, status) in [
            (&["for=10.1.2.3;proto=https"][..], StatusCode::OK),
            (&["for=\"10.1.2.3:8443\""][..], StatusCode::OK),
            (&["for=\"[2001:db8::17]:4711\""][..], StatusCode::OK),
            (&["For=8.8.8.8"][..], StatusCode::FORBIDDEN),
            (&["for=10.1.2.3", "for=8.8.8.8;by=127.0.0.1"][..], StatusCode::FORBIDDEN),
            (&["for=10.1.2.3, for=127.0.0.5"][..], StatusCode::OK),
            (&["for=unknown"][..], StatusCode::BAD_REQUEST),
            (&["for=_hidden"][..], StatusCode::BAD_REQUEST),
            (&["proto=https"][..], StatusCode::BAD_REQUEST),
            (&["for=[2001:db8::17]:x"][..], StatusCode::BAD_REQUEST),
        ] {
            let res = call_service(&svc, list(&in_10, "Forwarded", lines)).await;
            assert_eq!(res.status(), status, "{lines:?}");
        }
        // With Forwarded configured, X-Forwarded-For is not read.
        let res = call_service(&svc, list(&in_10, "X-Forwarded-For", &["10.1.2.3"])).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    })
}

/// Finding 4: a percent-encoded spelling of a /v1 path is served, so it must be counted too.
#[test]
fn rate_limit_counts_every_spelling_of_a_path() {
    run(async {
        let e = env_with(|c| c.rate_limit = 1);
        let token = mint_ok(&e, &e.admin, json!({"subject": "zed"})).await;
        let svc = init_service(app(e.state.clone())).await;
        let req = |uri: &str| {
            TestRequest::post()
                .uri(uri)
                .peer_addr("10.9.9.9:1234".parse().unwrap())
                .set_json(json!({"token": token}))
                .to_request()
        };
        // The encoded path really reaches the verify handler...
        assert_eq!(call_service(&svc, req("/%761/verify")).await.status(), StatusCode::OK);
        // ...and is counted: the burst is two.
        assert_eq!(call_service(&svc, req("/%761/verify")).await.status(), StatusCode::OK);
        assert_eq!(call_service(&svc, req("/%761/verify")).await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(call_service(&svc, req("/v1/%76erify")).await.status(), StatusCode::TOO_MANY_REQUESTS);
        let health =
            TestRequest::get().uri("/health").peer_addr("10.9.9.9:1234".parse().unwrap()).to_request();
        assert_eq!(call_service(&svc, health).await.status(), StatusCode::OK, "health is not limited");
    })
}

/// Finding 5: revoke says nothing about a token id before the credential is checked, and answers
/// "unknown" and "not yours" alike, naming nobody.
#[test]
fn revoke_is_no_token_id_oracle() {
    run(async {
        let e = env();
        let a = mint(&e, &e.admin, json!({"subject": "alice", "description": "secret project"})).await;
        let real = a.body["tid"].as_str().unwrap().to_owned();
        let unknown = "00112233445566778899aabbccddeeff";
        for cred in ["garbage", "AgEAAA"] {
            let x = revoke(&e, cred, &real).await;
            let y = revoke(&e, cred, unknown).await;
            assert_problem(&x, StatusCode::UNAUTHORIZED);
            assert_eq!((x.status, x.body["detail"].clone()), (y.status, y.body["detail"].clone()));
        }
        let bob = mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["tokens.revoke"]})).await;
        let x = revoke(&e, &bob, &real).await;
        let y = revoke(&e, &bob, unknown).await;
        assert_problem(&x, StatusCode::NOT_FOUND);
        assert_problem(&y, StatusCode::NOT_FOUND);
        assert_eq!(
            x.body["detail"].as_str().unwrap().replace(&real, "T"),
            y.body["detail"].as_str().unwrap().replace(unknown, "T")
        );
        assert!(!x.raw.contains("alice"), "{}", x.raw);
        // Nothing was revoked, and the owner still can.
        assert_eq!(verify(&e, a.body["token"].as_str().unwrap(), json!({})).await.status, StatusCode::OK);
        assert_eq!(revoke(&e, &e.admin, &real).await.status, StatusCode::OK);
    })
}

/// Subject binding: the verifying service names the requester it authenticated; a capability
/// leaked to another user is refused for them (Uclusion's case).
#[test]
fn a_leaked_token_is_refused_for_another_requester() {
    run(async {
        let e = env();
        let token = mint_ok(&e, &e.admin, json!({"subject": "alice", "operations": ["read"]})).await;
        let ok = verify(&e, &token, json!({"operation": "read", "subject": "alice"})).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
        let leaked = verify(&e, &token, json!({"operation": "read", "subject": "mallory"})).await;
        assert_problem(&leaked, StatusCode::FORBIDDEN);
        assert_eq!(leaked.body["caveat"], "subject", "{}", leaked.raw);
        let without = verify(&e, &token, json!({"operation": "read"})).await;
        assert_eq!(without.status, StatusCode::OK, "no subject named: no binding");
    })
}

/// Security review round 3, finding 13: a compromised root key could only be rotated while its
/// tokens kept verifying; there was no HTTP route to revoke it. `POST /v1/keys/{kid}/revoke` is
/// the admin's (`keys.revoke`); revoking the active key makes a new one active first.
#[test]
fn a_root_key_is_revoked_over_http() {
    run(async {
        let e = env();
        let alice_token = alice(&e).await;
        // Rotate so the admin's own token is signed by a key that is not the one revoked.
        let rotated = send(&e, auth(TestRequest::post().uri("/v1/keys/rotate"), &e.admin)).await;
        assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.raw);
        let kid = rotated.body["kid"].as_str().unwrap().to_owned();
        let victim = mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["read"]})).await;
        let ctx = json!({"operation": "read", "resource": "x"});
        assert_eq!(verify(&e, &victim, ctx.clone()).await.status, StatusCode::OK);

        let path = format!("/v1/keys/{kid}/revoke");
        // Only the admin; nothing is said about the id before the credential is checked.
        assert_problem(&send(&e, TestRequest::post().uri(&path)).await, StatusCode::UNAUTHORIZED);
        assert_problem(
            &send(&e, auth(TestRequest::post().uri(&path), &alice_token)).await,
            StatusCode::FORBIDDEN,
        );
        let bad = send(&e, auth(TestRequest::post().uri("/v1/keys/xyz/revoke"), &e.admin)).await;
        assert_problem(&bad, StatusCode::BAD_REQUEST);
        let unknown =
            send(&e, auth(TestRequest::post().uri("/v1/keys/00112233445566ff/revoke"), &e.admin)).await;
        assert_problem(&unknown, StatusCode::NOT_FOUND);

        let r = send(&e, auth(TestRequest::post().uri(&path), &e.admin)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        assert_eq!(r.body["already_revoked"], false);
        let active = r.body["active"].as_str().expect("the active key was replaced").to_owned();
        assert_ne!(active, kid);
        assert_problem(&verify(&e, &victim, ctx.clone()).await, StatusCode::UNAUTHORIZED);
        // Minting goes on under the new active key.
        let a = mint(&e, &e.admin, json!({"subject": "carol"})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert_eq!(a.body["kid"], active.as_str());
        let keys = send(&e, auth(TestRequest::get().uri("/v1/keys"), &e.admin)).await;
        let state = keys.body["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap()
            ["state"]
            .clone();
        assert_eq!(state, "revoked");
        // The revocation feed names the key; a second revoke changes nothing.
        let feed = send(&e, auth(TestRequest::get().uri("/v1/revocations"), &e.admin)).await;
        assert!(feed.raw.contains(&kid), "{}", feed.raw);
        let again = send(&e, auth(TestRequest::post().uri(&path), &e.admin)).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.raw);
        assert_eq!(again.body["already_revoked"], true);
        assert!(again.body["active"].is_null());
    })
}
