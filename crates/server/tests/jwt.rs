//! Public-key envelopes through the service: `POST /v1/jwt` with ES256, EdDSA and HS256,
//! verified with nothing but the published JWKS; the JWKS and discovery documents and their
//! caching headers; signing-key rotation with pre-publication, seen by a verifier whose JWKS
//! cache predates the rotation.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::*;
use serde_json::{json, Value};
use tessera_core::envelope::PublicKey;
use tessera_core::Context;

async fn jwt(e: &Env, body: Value) -> Answer {
    send(e, post("/v1/jwt", body)).await
}

#[test]
fn jwks_and_discovery_are_public_cached_documents() {
    run(async {
        let e = env();
        let a = send(&e, TestRequest::get().uri("/.well-known/jwks.json")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        let keys = a.body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 4, "an active and a next key for ES256 and for EdDSA: {}", a.raw);
        for k in keys {
            let public = PublicKey::from_jwk(k).unwrap();
            assert_eq!(k["kid"], json!(public.thumbprint()));
            assert_eq!(k["use"], "sig");
            assert!(k.get("d").is_none(), "no private member is ever published");
        }
        let svc = actix_web::test::init_service(tessera_server::app(e.state.clone())).await;
        let res = actix_web::test::call_service(
            &svc,
            TestRequest::get().uri("/.well-known/jwks.json").to_request(),
        )
        .await;
        assert_eq!(res.headers().get("cache-control").unwrap(), "public, max-age=300");
        let etag = res.headers().get("etag").unwrap().to_str().unwrap().to_owned();
        let again =
            TestRequest::get().uri("/.well-known/jwks.json").insert_header(("If-None-Match", etag.clone()));
        let res = actix_web::test::call_service(&svc, again.to_request()).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        let d = send(&e, TestRequest::get().uri("/.well-known/openid-configuration")).await;
        assert_eq!(d.body["issuer"], "http://tessera.test");
        assert_eq!(d.body["jwks_uri"], "http://tessera.test/.well-known/jwks.json");
        assert_eq!(d.body["id_token_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
    })
}

#[test]
fn envelopes_verify_with_nothing_but_the_jwks() {
    run(async {
        let e = env();
        let token = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "dana", "operations": ["read"], "resources": ["docs/*"]}),
        )
        .await;
        let jwks = send(&e, TestRequest::get().uri("/.well-known/jwks.json")).await.body;
        let ctx = Context::now().operation("read").resource("docs/a");
        for (alg, aud) in [(None, None), (Some("ES256"), Some("gw")), (Some("EdDSA"), Some("gw"))] {
            let mut body = json!({"token": token});
            if let Some(a) = alg {
                body["alg"] = json!(a);
            }
            if let Some(a) = aud {
                body["aud"] = json!(a);
            }
            let a = jwt(&e, body).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
            assert_eq!(a.body["alg"], alg.unwrap_or("ES256"));
            let t = a.body["jwt"].as_str().unwrap();
            let claims = verify_with_jwks(&jwks, t, aud, &ctx).unwrap();
            assert_eq!(claims.sub, "dana");
            assert!(
                verify_with_jwks(&jwks, t, aud, &ctx.clone().operation("write")).is_err(),
                "cap enforced"
            );
            assert!(verify_with_jwks(&jwks, t, Some("another"), &ctx).is_err(), "audience enforced");
        }
        // HS256 stays available (its key is not in the JWKS).
        let a = jwt(&e, json!({"token": token, "alg": "HS256"})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        assert!(verify_with_jwks(&jwks, a.body["jwt"].as_str().unwrap(), None, &ctx).is_err());
        for bad in [
            json!({"token": token, "alg": "none"}),
            json!({"token": token, "alg": "RS256"}),
            json!({"token": token, "aud": ""}),
            json!({"token": token, "aud": "x".repeat(300)}),
        ] {
            assert_problem(&jwt(&e, bad).await, StatusCode::BAD_REQUEST);
        }
    })
}

#[test]
fn signing_rotation_waits_for_publication_and_keeps_cached_verifiers_working() {
    run(async {
        // Default pre-publication (24 h): a rotation right after start is refused.
        let e = env();
        let r = send(&e, auth(post("/v1/keys/signing/rotate", json!({"alg": "ES256"})), &e.admin)).await;
        assert_problem(&r, StatusCode::CONFLICT);
        let bob = mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["keys.rotate"]})).await;
        let r = send(&e, auth(post("/v1/keys/signing/rotate", json!({"alg": "ES256"})), &bob)).await;
        assert_problem(&r, StatusCode::FORBIDDEN);
        // No credential, a malformed body, an unknown field or algorithm: refused, nothing rotated.
        assert_problem(
            &send(&e, post("/v1/keys/signing/rotate", json!({"alg": "ES256"}))).await,
            StatusCode::UNAUTHORIZED,
        );
        for bad in [json!({"alg": "none"}), json!({"alg": "ES256", "extra": 1}), json!({"force": "yes"})] {
            let r = send(&e, auth(post("/v1/keys/signing/rotate", bad.clone()), &e.admin)).await;
            assert_problem(&r, StatusCode::BAD_REQUEST);
        }
        let raw = TestRequest::post()
            .uri("/v1/keys/signing/rotate")
            .insert_header(("Content-Type", "application/json"))
            .set_payload("{not json");
        assert_problem(&send(&e, auth(raw, &e.admin)).await, StatusCode::BAD_REQUEST);
        let jwt_bad = send(
            &e,
            TestRequest::post()
                .uri("/v1/jwt")
                .insert_header(("Content-Type", "application/json"))
                .set_payload("[]"),
        )
        .await;
        assert_problem(&jwt_bad, StatusCode::BAD_REQUEST);

        let e = env_with(|c| c.signing_prepublish = std::time::Duration::ZERO);
        let token = mint_ok(&e, &e.admin, json!({"subject": "dana"})).await;
        let cached_jwks = send(&e, TestRequest::get().uri("/.well-known/jwks.json")).await.body;
        let before = jwt(&e, json!({"token": token})).await.body["jwt"].as_str().unwrap().to_owned();
        let r = send(&e, auth(post("/v1/keys/signing/rotate", json!({"alg": "ES256"})), &e.admin)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        let after = jwt(&e, json!({"token": token})).await.body["jwt"].as_str().unwrap().to_owned();
        let ctx = Context::now();
        // A verifier that fetched the JWKS before the rotation verifies both: the new signing key
        // was published ahead as the next key.
        verify_with_jwks(&cached_jwks, &before, None, &ctx).unwrap();
        verify_with_jwks(&cached_jwks, &after, None, &ctx).unwrap();
        // The fresh JWKS still has the retired key (its envelopes may be valid) and a new next key.
        let fresh = send(&e, TestRequest::get().uri("/.well-known/jwks.json")).await.body;
        assert_eq!(fresh["keys"].as_array().unwrap().len(), 5);
        verify_with_jwks(&fresh, &before, None, &ctx).unwrap();
        let keys = send(&e, auth(TestRequest::get().uri("/v1/keys"), &e.admin)).await;
        let states: Vec<&str> = keys.body["signing_keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["alg"] == "ES256")
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.iter().filter(|s| **s == "retired").count(), 1, "{states:?}");
        assert_eq!(states.iter().filter(|s| **s == "active").count(), 1);
        assert_eq!(states.iter().filter(|s| **s == "next").count(), 1);
        let r = send(&e, auth(post("/v1/keys/signing/rotate", json!({"alg": "HS256"})), &e.admin)).await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    })
}
