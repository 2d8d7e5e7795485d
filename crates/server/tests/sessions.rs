//! Sessions: an access token (JWT with `sid`) and a refresh token that can only refresh; every
//! renew strategy; rotation with the same answer inside the grace window and the whole session
//! revoked on reuse after it; revocation of the session or of its refresh token; claims and
//! restrictions carried into every access token; applications; bad input.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use tessera_core::Context;

async fn create(e: &Env, by: &str, body: Value) -> Answer {
    send(e, auth(post("/v1/sessions", body), by)).await
}

async fn refresh(e: &Env, token: &str, strategy: Option<&str>) -> Answer {
    let mut body = json!({"refresh_token": token});
    if let Some(s) = strategy {
        body["strategy"] = json!(s);
    }
    send(e, post("/v1/sessions/refresh", body)).await
}

fn ok(a: &Answer, status: StatusCode) -> &Value {
    assert_eq!(a.status, status, "{}", a.raw);
    &a.body
}

/// The access token, checked with nothing but the service's JWKS.
async fn access(e: &Env, body: &Value) -> tessera_core::envelope::Claims {
    let jwks = get(e, "/.well-known/jwks.json").await.body;
    let ctx = Context::now().operation("read").resource("docs/1");
    verify_with_jwks(&jwks, body["access_token"].as_str().unwrap(), None, &ctx).unwrap()
}

async fn alice_session(e: &Env, strategy: &str) -> Value {
    let a = create(
        e,
        &e.admin,
        json!({"subject": "alice", "operations": ["read"], "resources": ["docs/*"], "strategy": strategy,
               "claims": {"role": "editor"}}),
    )
    .await;
    ok(&a, StatusCode::CREATED).clone()
}

#[test]
fn a_session_is_an_access_token_and_a_refresh_token_that_can_only_refresh() {
    run(async {
        let e = env();
        let s = alice_session(&e, "noRefresh").await;
        let sid = s["session_id"].as_str().unwrap();
        let claims = access(&e, &s).await;
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.sid.as_deref(), Some(sid));
        assert_eq!(claims.exp - claims.iat, 900, "15 minutes by default");
        assert_eq!(claims.cap.allow, Some(vec!["read".to_owned()]));
        assert_eq!(claims.custom.unwrap().get("role"), Some(&json!("editor")));
        assert_eq!(s["token_type"], "Bearer");
        assert_eq!(s["expires_in"], 900);

        // The refresh token does nothing but refresh.
        let rt = s["refresh_token"].as_str().unwrap();
        let v = verify(&e, rt, json!({"operation": "read", "resource": "docs/1"})).await;
        assert_problem(&v, StatusCode::FORBIDDEN);
        assert_problem(&mint(&e, rt, json!({})).await, StatusCode::FORBIDDEN);
        // Two access tokens of one session have distinct jti and the same sid.
        let r = refresh(&e, rt, None).await;
        let again = access(&e, ok(&r, StatusCode::OK)).await;
        assert_eq!(again.sid.as_deref(), Some(sid));
        assert_ne!(again.jti, access(&e, &s).await.jti);
        assert_eq!(again.custom.unwrap().get("role"), Some(&json!("editor")), "claims carried");
        assert_eq!(again.cap.resource, Some(vec!["docs/*".to_owned()]), "restrictions carried");
    })
}

#[test]
fn no_refresh_keeps_the_refresh_token_refresh_both_rotates_it() {
    run(async {
        let e = env();
        let s = alice_session(&e, "noRefresh").await;
        let rt = s["refresh_token"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let r = refresh(&e, &rt, None).await;
            let b = ok(&r, StatusCode::OK);
            assert_eq!(b["refresh_rotated"], false);
            assert!(b["refresh_token"].is_null());
            assert_eq!(b["strategy"], "noRefresh");
        }
        // refreshBoth: a new refresh token each time.
        let s = alice_session(&e, "refreshBoth").await;
        let rt = s["refresh_token"].as_str().unwrap().to_owned();
        let r1 = refresh(&e, &rt, None).await;
        let rt2 = ok(&r1, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rt2, rt);
        let r2 = refresh(&e, &rt2, None).await;
        let rt3 = ok(&r2, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rt3, rt2);
        assert_eq!(r2.body["session_id"], s["session_id"]);
    })
}

/// Issue 19, finding 9: the strategy of a refresh request may be as strict as the session's or
/// stricter (noRefresh, then refreshOnExpire, then refreshBoth), never looser, so a noRefresh
/// session ends when its refresh token does.
#[test]
fn a_refresh_request_may_only_choose_a_strategy_as_strict_as_its_sessions() {
    run(async {
        let e = env();
        let s = alice_session(&e, "noRefresh").await;
        let rt = s["refresh_token"].as_str().unwrap().to_owned();
        for looser in ["refreshBoth", "refreshOnExpire"] {
            let r = refresh(&e, &rt, Some(looser)).await;
            assert_problem(&r, StatusCode::FORBIDDEN);
            assert!(r.body["detail"].as_str().unwrap().contains("noRefresh"), "{}", r.raw);
        }
        let r = refresh(&e, &rt, Some("noRefresh")).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], false);

        let s = alice_session(&e, "refreshOnExpire").await;
        let rt = s["refresh_token"].as_str().unwrap().to_owned();
        assert_problem(&refresh(&e, &rt, Some("refreshBoth")).await, StatusCode::FORBIDDEN);
        let r = refresh(&e, &rt, Some("noRefresh")).await;
        assert_eq!(ok(&r, StatusCode::OK)["strategy"], "noRefresh");

        // A refreshBoth session may be renewed with any strategy.
        let s = alice_session(&e, "refreshBoth").await;
        let rt = s["refresh_token"].as_str().unwrap().to_owned();
        let r = refresh(&e, &rt, Some("noRefresh")).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], false);
        let r = refresh(&e, &rt, Some("refreshBoth")).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], true);

        // An application's refresh_strategy bounds the sessions created for it.
        let app = send(
            &e,
            auth(
                post(
                    "/v1/apps",
                    json!({"name": "web", "audience": "https://web.example",
                                        "refresh_strategy": "refreshOnExpire"}),
                ),
                &e.admin,
            ),
        )
        .await;
        assert_eq!(app.status, StatusCode::CREATED, "{}", app.raw);
        let looser =
            create(&e, &e.admin, json!({"subject": "dana", "app": "web", "strategy": "refreshBoth"})).await;
        assert_problem(&looser, StatusCode::FORBIDDEN);
        let s = create(&e, &e.admin, json!({"subject": "dana", "app": "web", "strategy": "noRefresh"})).await;
        let rt = ok(&s, StatusCode::CREATED)["refresh_token"].as_str().unwrap().to_owned();
        assert_problem(&refresh(&e, &rt, Some("refreshOnExpire")).await, StatusCode::FORBIDDEN);
    })
}

/// Issue 20: "less than a quarter of its life left" is of the refresh token's own life. A
/// refresh token capped at its creator's 1 h does not rotate on its first refresh.
#[test]
fn refresh_on_expire_measures_the_refresh_tokens_own_life() {
    run(async {
        let e = env();
        let alice = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "alice", "ttl": "1h", "operations": ["read", "sessions.create"]}),
        )
        .await;
        let s = create(&e, &alice, json!({"strategy": "refreshOnExpire"})).await;
        let rt = ok(&s, StatusCode::CREATED)["refresh_token"].as_str().unwrap().to_owned();
        let r = refresh(&e, &rt, None).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], false, "1 h of 1 h left: {}", r.raw);
    })
}

#[test]
fn refresh_on_expire_rotates_only_near_the_end_of_the_refresh_tokens_life() {
    run(async {
        let e = env();
        let s = alice_session(&e, "refreshOnExpire").await;
        let r = refresh(&e, s["refresh_token"].as_str().unwrap(), None).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], false, "fresh: 72 h of 72 h left");
        // A service that rotates in the whole last 100% of the life: always near the end.
        let e = env_with(|c| c.refresh_rotate_fraction = 1.0);
        let s = alice_session(&e, "refreshOnExpire").await;
        let r = refresh(&e, s["refresh_token"].as_str().unwrap(), None).await;
        assert_eq!(ok(&r, StatusCode::OK)["refresh_rotated"], true);
    })
}

#[test]
fn a_spent_refresh_token_gets_the_same_answer_in_the_grace_window_and_kills_the_session_after() {
    run(async {
        let e = env_with(|c| c.refresh_grace = std::time::Duration::from_secs(1));
        let s = alice_session(&e, "refreshBoth").await;
        let rt1 = s["refresh_token"].as_str().unwrap().to_owned();
        let r = refresh(&e, &rt1, None).await;
        let rt2 = ok(&r, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        // The client lost that answer and retries at once: the same refresh token again.
        let retry = refresh(&e, &rt1, None).await;
        assert_eq!(ok(&retry, StatusCode::OK)["refresh_token"], json!(rt2), "same successor");
        access(&e, &retry.body).await;
        // Later, the spent token is presented again: reuse. The whole session is revoked.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let stolen = refresh(&e, &rt1, None).await;
        assert_problem(&stolen, StatusCode::UNAUTHORIZED);
        assert!(stolen.body["detail"].as_str().unwrap().contains("reuse"), "{}", stolen.raw);
        for t in [&rt2, &rt1] {
            let after = refresh(&e, t, None).await;
            assert_problem(&after, StatusCode::UNAUTHORIZED);
        }
        let m = send(&e, actix_web::test::TestRequest::get().uri("/metrics")).await;
        assert!(m.raw.contains("tessera_sessions_reuse_detected_total 1"), "{}", m.raw);
    })
}

#[test]
fn revoking_the_session_or_its_refresh_token_stops_renewal() {
    run(async {
        let e = env();
        let alice = alice(&e).await;
        let own = create(&e, &alice, json!({"operations": ["read"]})).await;
        assert_problem(&own, StatusCode::FORBIDDEN); // alice's token may not create sessions
        let alice = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "alice", "operations": ["read", "sessions.create", "sessions.revoke"]}),
        )
        .await;
        let s = ok(&create(&e, &alice, json!({"operations": ["read"]})).await, StatusCode::CREATED).clone();
        let sid = s["session_id"].as_str().unwrap();
        let rt = s["refresh_token"].as_str().unwrap();
        ok(&refresh(&e, rt, None).await, StatusCode::OK);
        // Bob cannot revoke it, and cannot tell it exists.
        let bob = mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["sessions.revoke"]})).await;
        let path = format!("/v1/sessions/{sid}/revoke");
        assert_problem(&send(&e, auth(post(&path, json!({})), &bob)).await, StatusCode::NOT_FOUND);
        let unknown = format!("/v1/sessions/{}/revoke", "ab".repeat(16));
        assert_problem(&send(&e, auth(post(&unknown, json!({})), &bob)).await, StatusCode::NOT_FOUND);
        let r = send(&e, auth(post(&path, json!({})), &alice)).await;
        assert_eq!(ok(&r, StatusCode::OK)["revoked_tokens"], 1);
        assert_problem(&refresh(&e, rt, None).await, StatusCode::UNAUTHORIZED);

        // Revoking the refresh token as a token (tokens.revoke) stops its session too.
        let s = alice_session(&e, "noRefresh").await;
        let rt = s["refresh_token"].as_str().unwrap();
        let tid = tessera_core::Token::decode(rt).unwrap().tessera_identifier().unwrap().tid;
        let r = send(&e, auth(post(&format!("/v1/tokens/{tid}/revoke"), json!({})), &e.admin)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        let after = refresh(&e, rt, None).await;
        assert_problem(&after, StatusCode::UNAUTHORIZED);
        assert!(after.body["detail"].as_str().unwrap().contains("revoked"), "{}", after.raw);
    })
}

#[test]
fn sessions_for_an_application_carry_its_audience_and_keys() {
    run(async {
        let e = env();
        let app = send(
            &e,
            auth(
                post(
                    "/v1/apps",
                    json!({"name": "web", "audience": "https://web.example", "own_keys": true,
                           "algorithms": ["EdDSA"], "ttl": "2m", "refresh_strategy": "refreshBoth"}),
                ),
                &e.admin,
            ),
        )
        .await;
        assert_eq!(app.body["refresh_strategy"], "refreshBoth", "{}", app.raw);
        let s =
            ok(&create(&e, &e.admin, json!({"subject": "dana", "app": "web"})).await, StatusCode::CREATED)
                .clone();
        assert_eq!(s["alg"], "EdDSA");
        assert_eq!(s["strategy"], "refreshBoth", "the application's default");
        let jwks = get(&e, "/v1/apps/web/jwks.json").await.body;
        let jwt = s["access_token"].as_str().unwrap();
        let c = verify_with_jwks(&jwks, jwt, Some("https://web.example"), &Context::now()).unwrap();
        assert_eq!(c.exp - c.iat, 120, "the application's lifetime");
        let service = get(&e, "/.well-known/jwks.json").await.body;
        assert!(verify_with_jwks(&service, jwt, Some("https://web.example"), &Context::now()).is_err());
        // A subject cannot name an application for itself.
        let dana = mint_ok(&e, &e.admin, json!({"subject": "dana", "operations": ["sessions.create"]})).await;
        assert_problem(&create(&e, &dana, json!({"app": "web"})).await, StatusCode::FORBIDDEN);
        assert_problem(
            &create(&e, &e.admin, json!({"subject": "dana", "app": "nope"})).await,
            StatusCode::NOT_FOUND,
        );
        assert_problem(
            &create(&e, &e.admin, json!({"subject": "dana", "app": "web", "alg": "ES256"})).await,
            StatusCode::FORBIDDEN,
        );
    })
}

#[test]
fn bad_session_input_is_refused_and_writes_nothing() {
    run(async {
        let e = env();
        for (body, status) in [
            (json!({"subject": "alice", "strategy": "sometimes"}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "access_ttl": "48h"}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "refresh_ttl": "0s"}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "alg": "none"}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "operations": []}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "claims": {"sid": "x"}}), StatusCode::BAD_REQUEST),
            (json!({"subject": "alice", "colour": "red"}), StatusCode::BAD_REQUEST),
            (json!({"subject": "app:web"}), StatusCode::BAD_REQUEST),
        ] {
            assert_problem(&create(&e, &e.admin, body).await, status);
        }
        let list =
            send(&e, auth(actix_web::test::TestRequest::get().uri("/v1/tokens?subject=alice"), &e.admin))
                .await;
        assert_eq!(list.body["tokens"].as_array().unwrap().len(), 0, "{}", list.raw);
        // Refresh with something that is not a refresh token.
        let plain = mint_ok(&e, &e.admin, json!({"subject": "alice"})).await;
        assert_problem(&refresh(&e, &plain, None).await, StatusCode::UNAUTHORIZED);
        assert_problem(&refresh(&e, "garbage", None).await, StatusCode::BAD_REQUEST);
        let r =
            send(&e, post("/v1/sessions/refresh", json!({"refresh_token": plain, "strategy": "x"}))).await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
        // A token that names a session in its resource caveat but is no refresh token of it.
        let forged = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "alice", "operations": ["sessions.refresh"], "resources": [format!("sessions/{}", "cd".repeat(16))]}),
        )
        .await;
        assert_problem(&refresh(&e, &forged, None).await, StatusCode::UNAUTHORIZED);
    })
}

/// Security review round 3, finding 8: after R1 → R2 and R2's revocation (`POST
/// /v1/tokens/{tid}/revoke`), R1 replayed within the grace window was answered 200 with a fresh
/// access token and the revoked R2 rebuilt. Revoking the current refresh token stops renewal at
/// once, the grace replay included.
#[test]
fn revoking_the_current_refresh_token_also_stops_the_grace_replay() {
    run(async {
        let e = env_with(|c| c.refresh_grace = std::time::Duration::from_secs(60));
        let s = alice_session(&e, "refreshBoth").await;
        let rt1 = s["refresh_token"].as_str().unwrap().to_owned();
        let rt2 =
            ok(&refresh(&e, &rt1, None).await, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        let tid = tessera_core::Token::decode(&rt2).unwrap().tessera_identifier().unwrap().tid;
        let r = send(&e, auth(post(&format!("/v1/tokens/{tid}/revoke"), json!({})), &e.admin)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        let replay = refresh(&e, &rt1, None).await;
        assert_problem(&replay, StatusCode::UNAUTHORIZED);
        assert!(replay.body.get("access_token").is_none(), "{}", replay.raw);
        assert_problem(&refresh(&e, &rt2, None).await, StatusCode::UNAUTHORIZED);
    })
}
