//! Registered applications: admin-only registration with checked inputs; an application's
//! envelopes carry its audience, lifetime and narrowed `cap`, are signed with its own keys when
//! it has them (published in its JWKS only), and it cannot get envelopes for another's audience
//! or algorithm; nobody else can get envelopes for its audience; its key rotation touches no one
//! else; disabling it stops its credential.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::*;
use serde_json::{json, Value};
use tessera_core::Context;

const BILLING_AUD: &str = "https://billing.example";
const REPORTS_AUD: &str = "https://reports.example";

async fn register(e: &Env, by: &str, body: Value) -> Answer {
    send(e, auth(post("/v1/apps", body), by)).await
}

/// billing: own keys, ES256 and EdDSA, `read` only, 10 minutes. reports: the service's keys.
async fn two_apps(e: &Env) -> (String, String) {
    let b = register(
        e,
        &e.admin,
        json!({"name": "billing", "audience": BILLING_AUD, "ttl": "10m", "algorithms": ["ES256", "EdDSA"],
               "own_keys": true, "operations": ["read"], "resources": ["invoices/*"]}),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.raw);
    assert_eq!(b.body["jwks_uri"], "http://tessera.test/v1/apps/billing/jwks.json");
    let r = register(e, &e.admin, json!({"name": "reports", "audience": REPORTS_AUD})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    assert_eq!(r.body["algorithms"], json!(["ES256"]), "the service's default algorithm");
    assert_eq!(r.body["ttl_seconds"], 300, "the service's default lifetime");
    (b.body["credential"].as_str().unwrap().to_owned(), r.body["credential"].as_str().unwrap().to_owned())
}

async fn envelope(e: &Env, credential: Option<&str>, body: Value) -> Answer {
    let req = post("/v1/jwt", body);
    send(
        e,
        match credential {
            Some(c) => auth(req, c),
            None => req,
        },
    )
    .await
}

fn jwt_of(a: &Answer) -> &str {
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    a.body["jwt"].as_str().unwrap()
}

#[test]
fn registration_is_for_the_admin_and_checks_what_it_is_given() {
    run(async {
        let e = env();
        two_apps(&e).await;
        let alice = alice(&e).await;
        let a = register(&e, &alice, json!({"name": "mine", "audience": "https://mine.example"})).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        assert_problem(
            &send(&e, auth(TestRequest::get().uri("/v1/apps"), &alice)).await,
            StatusCode::FORBIDDEN,
        );

        for (body, status) in [
            (json!({"name": "Bad Name", "audience": "x"}), StatusCode::BAD_REQUEST),
            (json!({"name": "-dash", "audience": "x"}), StatusCode::BAD_REQUEST),
            (json!({"name": "x".repeat(65), "audience": "x"}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": ""}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "ttl": "48h"}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "ttl": "soon"}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "algorithms": []}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "algorithms": ["none"]}), StatusCode::BAD_REQUEST),
            (
                json!({"name": "ok", "audience": "x", "algorithms": ["ES256", "ES256"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"name": "ok", "audience": "x", "algorithms": ["HS256"], "own_keys": true}),
                StatusCode::BAD_REQUEST,
            ),
            (json!({"name": "ok", "audience": "x", "operations": ["two words"]}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "resources": ["a/../b"]}), StatusCode::BAD_REQUEST),
            (json!({"name": "ok", "audience": "x", "colour": "red"}), StatusCode::BAD_REQUEST),
            (json!({"name": "billing", "audience": "https://new.example"}), StatusCode::CONFLICT),
            (json!({"name": "billing2", "audience": BILLING_AUD}), StatusCode::CONFLICT),
        ] {
            let a = register(&e, &e.admin, body.clone()).await;
            assert_problem(&a, status);
            assert!(!a.raw.contains("credential\""), "{body}: {}", a.raw);
        }
        let list = send(&e, auth(TestRequest::get().uri("/v1/apps"), &e.admin)).await;
        let names: Vec<&str> =
            list.body["apps"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["billing", "reports"], "refused registrations wrote nothing");
        assert!(!list.raw.contains("\"credential\""), "the credential is shown once, at registration");
        let one = send(&e, auth(TestRequest::get().uri("/v1/apps/billing"), &e.admin)).await;
        assert_eq!(one.body["audience"], BILLING_AUD);
        assert_problem(
            &send(&e, auth(TestRequest::get().uri("/v1/apps/nobody"), &e.admin)).await,
            StatusCode::NOT_FOUND,
        );
        // The app: namespace belongs to credentials.
        assert_problem(&mint(&e, &e.admin, json!({"subject": "app:billing"})).await, StatusCode::BAD_REQUEST);
    })
}

#[test]
fn an_application_gets_envelopes_for_its_audience_signed_with_its_own_keys() {
    run(async {
        let e = env();
        let (billing, reports) = two_apps(&e).await;
        let token = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["read", "write"]})).await;
        let service_jwks = get(&e, "/.well-known/jwks.json").await.body;
        let billing_jwks = get(&e, "/v1/apps/billing/jwks.json").await.body;
        let reports_jwks = get(&e, "/v1/apps/reports/jwks.json").await.body;
        assert_eq!(billing_jwks["keys"].as_array().unwrap().len(), 4, "active + next, ES256 + EdDSA");
        assert_eq!(reports_jwks, service_jwks, "an application without keys of its own uses the service's");
        let kids = |jwks: &Value| -> Vec<String> {
            jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
        };
        assert!(kids(&billing_jwks).iter().all(|k| !kids(&service_jwks).contains(k)), "separate keys");

        let a = envelope(&e, Some(&billing), json!({"token": token})).await;
        let jwt = jwt_of(&a);
        assert_eq!(a.body["alg"], "ES256");
        let read = Context::now().operation("read").resource("invoices/7");
        let claims = verify_with_jwks(&billing_jwks, jwt, Some(BILLING_AUD), &read).unwrap();
        assert_eq!(claims.exp - claims.iat, 600, "the application's lifetime");
        assert_eq!(claims.cap.allow, Some(vec!["read".to_owned()]), "narrowed to what billing may request");
        assert_eq!(claims.cap.resource, Some(vec!["invoices/*".to_owned()]));
        assert_eq!(claims.sub, "carol");
        // A gateway holding another JWKS refuses it: a kid of another application.
        for other in [&service_jwks, &reports_jwks] {
            let err = verify_with_jwks(other, jwt, Some(BILLING_AUD), &read).unwrap_err();
            assert!(err.to_string().contains("not in the JWKS"), "{err}");
        }
        let eddsa =
            envelope(&e, Some(&billing), json!({"token": token, "alg": "EdDSA", "aud": BILLING_AUD})).await;
        verify_with_jwks(&billing_jwks, jwt_of(&eddsa), Some(BILLING_AUD), &read).unwrap();

        // reports: the service's keys, its audience.
        let r = envelope(&e, Some(&reports), json!({"token": token})).await;
        let claims = verify_with_jwks(&service_jwks, jwt_of(&r), Some(REPORTS_AUD), &read).unwrap();
        assert_eq!(claims.cap.allow, Some(vec!["read".to_owned(), "write".to_owned()]), "no narrowing");
        assert!(
            verify_with_jwks(&service_jwks, jwt_of(&r), Some(BILLING_AUD), &read).is_err(),
            "wrong audience"
        );
    })
}

#[test]
fn audiences_algorithms_and_credentials_are_not_shared() {
    run(async {
        let e = env();
        let (billing, reports) = two_apps(&e).await;
        let token = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["read"]})).await;
        let refused = |a: &Answer, words: &str| {
            assert_problem(a, StatusCode::FORBIDDEN);
            assert!(a.body["detail"].as_str().unwrap().contains(words), "{}", a.raw);
        };
        // Another application's audience: refused to the application and to anonymous callers.
        refused(
            &envelope(&e, Some(&reports), json!({"token": token, "aud": BILLING_AUD})).await,
            "own audience",
        );
        refused(
            &envelope(&e, None, json!({"token": token, "aud": BILLING_AUD})).await,
            "belongs to application",
        );
        // An algorithm it was not given.
        refused(&envelope(&e, Some(&billing), json!({"token": token, "alg": "HS256"})).await, "may use");
        refused(&envelope(&e, Some(&reports), json!({"token": token, "alg": "EdDSA"})).await, "may use");
        // A token with nothing billing may carry.
        let writer = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["write"]})).await;
        refused(&envelope(&e, Some(&billing), json!({"token": writer})).await, "none of the operations");
        // A user's token is no application credential, and a credential narrowed to another
        // application's resource does not verify.
        refused(&envelope(&e, Some(&token), json!({"token": token})).await, "not an application credential");
        let narrowed =
            tessera_core::Token::decode(&billing).unwrap().attenuate("client-ip 10.0.0.0/8").unwrap();
        let a = envelope(&e, Some(&narrowed.encode()), json!({"token": token})).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        // Without a registered audience, anyone holding a token still gets an envelope.
        jwt_of(&envelope(&e, None, json!({"token": token, "aud": "https://elsewhere.example"})).await);
    })
}

#[test]
fn rotation_is_per_application_and_disabling_stops_the_credential() {
    run(async {
        let e = env();
        let (billing, _) = two_apps(&e).await;
        let token = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["read"]})).await;
        let service_before = get(&e, "/.well-known/jwks.json").await.body;
        let billing_before = get(&e, "/v1/apps/billing/jwks.json").await.body;
        let old = envelope(&e, Some(&billing), json!({"token": token})).await;
        let old_jwt = jwt_of(&old).to_owned();

        let rotate = |body: Value| send(&e, auth(post("/v1/keys/signing/rotate", body), &e.admin));
        let a = rotate(json!({"alg": "ES256", "app": "billing", "force": true})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert!(a.body["keys"].as_array().unwrap().iter().all(|k| k["app"] == "billing"), "{}", a.raw);
        assert_eq!(
            get(&e, "/.well-known/jwks.json").await.body,
            service_before,
            "the service's keys untouched"
        );
        let billing_after = get(&e, "/v1/apps/billing/jwks.json").await.body;
        assert_ne!(billing_after, billing_before);
        let new = envelope(&e, Some(&billing), json!({"token": token})).await;
        assert_ne!(new.body["kid"], old.body["kid"], "the next key signs now");
        let read = Context::now().operation("read").resource("invoices/1");
        verify_with_jwks(&billing_after, &old_jwt, Some(BILLING_AUD), &read)
            .expect("retired key still published");
        verify_with_jwks(&billing_before, jwt_of(&new), Some(BILLING_AUD), &read)
            .expect("a JWKS cached before the rotation already had the new key");
        assert_problem(
            &rotate(json!({"alg": "ES256", "app": "reports", "force": true})).await,
            StatusCode::CONFLICT,
        );
        assert_problem(&rotate(json!({"alg": "ES256", "app": "nobody"})).await, StatusCode::NOT_FOUND);

        let d = send(&e, auth(TestRequest::delete().uri("/v1/apps/billing"), &e.admin)).await;
        assert_eq!(d.status, StatusCode::OK, "{}", d.raw);
        assert_eq!(d.body["disabled"], true);
        let after = envelope(&e, Some(&billing), json!({"token": token})).await;
        assert_problem(&after, StatusCode::UNAUTHORIZED);
        assert!(after.body["detail"].as_str().unwrap().contains("revoked"), "{}", after.raw);
        // Its audience stays its own, and its keys stay published for what they signed.
        assert_problem(
            &envelope(&e, None, json!({"token": token, "aud": BILLING_AUD})).await,
            StatusCode::FORBIDDEN,
        );
        assert_eq!(get(&e, "/v1/apps/billing/jwks.json").await.body, billing_after);
        let again = send(&e, auth(TestRequest::delete().uri("/v1/apps/billing"), &e.admin)).await;
        assert_eq!(again.body["disabled_at"], d.body["disabled_at"], "disabling twice changes nothing");
        assert_problem(
            &send(&e, auth(TestRequest::delete().uri("/v1/apps/nobody"), &e.admin)).await,
            StatusCode::NOT_FOUND,
        );
    })
}
