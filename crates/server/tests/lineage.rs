//! Every issuing path keeps the lineage (../shared/DESIGN.md section 16, issue 19 findings 6
//! and 7): whatever the service issues from a credential (mint, link → token, link → session,
//! session create → refresh token, refresh → next refresh token and access token, envelope) keeps
//! that credential's first-party caveats, the holder-added ones included, is revocable if it was,
//! and dies with it; an envelope carries the restrictions and outlives its token by at most its
//! own lifetime. One test per path. (The login exchange starts a new root family: its tests are in
//! `exchange.rs`.)

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tessera_core::{Caveat, Context, Error, Identifier, StaticKeys, Token, Verifier};
use tessera_server::DISCHARGE_HEADER;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn ok(a: &Answer, status: StatusCode) -> &Value {
    assert_eq!(a.status, status, "{}", a.raw);
    &a.body
}

fn id_of(token: &str) -> Identifier {
    Identifier::decode(Token::decode(token).unwrap().identifier()).unwrap()
}

fn tid_of(token: &str) -> String {
    id_of(token).tid.to_string()
}

/// The first-party caveats of a token, as text.
fn caveats_of(token: &str) -> Vec<String> {
    Token::decode(token)
        .unwrap()
        .caveats()
        .filter_map(|c| match c {
            Caveat::FirstParty(cid) => Some(String::from_utf8(cid.to_vec()).unwrap()),
            Caveat::ThirdParty { .. } => None,
        })
        .collect()
}

fn assert_keeps(token: &str, expected: &[&str]) {
    let have = caveats_of(token);
    for c in expected {
        assert!(have.iter().any(|h| h == c), "{c:?} is not among {have:?}");
    }
}

/// The service's `not-revoked` ticket in `token`, if it has one.
fn ticket_of(token: &str) -> Option<String> {
    Token::decode(token).unwrap().caveats().find_map(|c| match c {
        Caveat::ThirdParty { id, .. } => Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)),
        Caveat::FirstParty(_) => None,
    })
}

async fn discharge(e: &Env, token: &str) -> Answer {
    let ticket = ticket_of(token).expect("a revocable token has a ticket");
    send(e, post("/v1/discharge", json!({ "ticket": ticket }))).await
}

/// A fresh discharge for `token`, optionally narrowed by the holder, bound to it.
async fn bound_discharge(e: &Env, token: &str, narrow: Option<&str>) -> String {
    let a = discharge(e, token).await;
    let mut d = Token::decode(ok(&a, StatusCode::OK)["discharge"].as_str().unwrap()).unwrap();
    if let Some(c) = narrow {
        d = d.attenuate(c).unwrap();
    }
    Token::decode(token).unwrap().bind(&d).encode()
}

/// An offline verifier: the root key, no revocation list, no service.
fn offline(e: &Env, token: &str, discharges: &[&str], ctx: &Context) -> tessera_core::Result<()> {
    let t = Token::decode(token).unwrap();
    let kid = id_of(token).kid;
    let mut keys = StaticKeys::new();
    keys.insert(kid, e.state.store.verifying_key(&kid).unwrap());
    let ds: Vec<Token> = discharges.iter().map(|d| Token::decode(d).unwrap()).collect();
    let verified = Verifier::with_keys(&keys).verify(&t, &ds, ctx).map(|_| ());
    verified
}

/// Revocable offline: it carries the service's ticket, so an offline verifier needs a fresh
/// discharge, which the service gives only while the family is not revoked.
async fn assert_revocable(e: &Env, token: &str, ctx: &Context) -> String {
    assert!(ticket_of(token).is_some(), "no not-revoked ticket: an offline verifier could never refuse it");
    let without = offline(e, token, &[], ctx);
    assert!(matches!(without, Err(Error::MissingDischarge { .. })), "{without:?}");
    let d = bound_discharge(e, token, None).await;
    offline(e, token, &[&d], ctx).unwrap();
    d
}

async fn verify_with(e: &Env, token: &str, discharges: &[&str], context: Value) -> Answer {
    send(e, post("/v1/verify", json!({"token": token, "discharges": discharges, "context": context}))).await
}

async fn revoke(e: &Env, tid: &str) -> Answer {
    let a = send(e, auth(TestRequest::post().uri(&format!("/v1/tokens/{tid}/revoke")), &e.admin)).await;
    ok(&a, StatusCode::OK);
    a
}

/// After its issuer is revoked: /v1/verify refuses it (even with a discharge fetched before), and
/// an offline verifier can get no new discharge.
async fn assert_dead(e: &Env, token: &str, old_discharge: &str, context: Value) {
    let v = verify_with(e, token, &[old_discharge], context).await;
    assert_problem(&v, StatusCode::UNAUTHORIZED);
    assert!(v.body["detail"].as_str().unwrap().contains("revoked"), "{}", v.raw);
    assert_problem(&discharge(e, token).await, StatusCode::FORBIDDEN);
}

fn seconds(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

fn time_of(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn localhost() -> std::net::IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A JWT's claims as JSON. The signatures of access tokens and envelopes are checked in
/// `sessions.rs` and `jwt.rs`; here only what they say matters.
fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

/// A revocable token for alice that may do `ops`, narrowed by alice (offline) with
/// `client-ip 127.0.0.0/8`, and a discharge she narrowed with a `time-before` two hours out.
async fn alices_revocable(e: &Env, ops: &[&str]) -> (String, String, String, String) {
    let m = mint(e, &e.admin, json!({"subject": "alice", "operations": ops, "revocable": true})).await;
    let parent = ok(&m, StatusCode::CREATED)["token"].as_str().unwrap().to_owned();
    let tid = m.body["tid"].as_str().unwrap().to_owned();
    let narrowed = Token::decode(&parent).unwrap().attenuate("client-ip 127.0.0.0/8").unwrap().encode();
    let bound = format!("time-before {}", seconds(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let d = bound_discharge(e, &narrowed, Some(&bound)).await;
    (narrowed, d, tid, bound)
}

fn with_discharge(req: TestRequest, d: &str) -> TestRequest {
    req.insert_header((DISCHARGE_HEADER, d.to_owned()))
}

#[test]
fn mint_a_child_keeps_its_parents_caveats_and_dies_with_it() {
    run(async {
        let e = env();
        let (parent, d, parent_tid, bound) = alices_revocable(&e, &["read", "tokens.mint"]).await;
        let c = send(&e, with_discharge(auth(post("/v1/tokens", json!({"revocable": false})), &parent), &d))
            .await;
        let child = ok(&c, StatusCode::CREATED)["token"].as_str().unwrap().to_owned();
        assert_eq!(c.body["revocable"], true);
        assert_keeps(&child, &["allow read tokens.mint", "client-ip 127.0.0.0/8", &bound]);
        let ctx = Context::now().operation("read").client_ip(localhost());
        let cd = assert_revocable(&e, &child, &ctx).await;

        revoke(&e, &parent_tid).await;
        assert_dead(&e, &child, &cd, json!({"operation": "read", "client_ip": "127.0.0.1"})).await;
    })
}

async fn link(e: &Env, by: &str, d: &str, body: Value) -> String {
    let a = send(e, with_discharge(auth(post("/v1/links", body), by), d)).await;
    ok(&a, StatusCode::CREATED)["link_token"].as_str().unwrap().to_owned()
}

async fn redeem(e: &Env, token: &str) -> Answer {
    send(e, post("/v1/links/redeem", json!({"token": token}))).await
}

/// The link holder's narrowing: two minutes and this one address.
fn holders_narrowing() -> (String, &'static str) {
    (
        format!("time-before {}", seconds(OffsetDateTime::now_utc() + time::Duration::seconds(120))),
        "client-ip 127.0.0.1/32",
    )
}

#[test]
fn a_link_redeems_for_a_token_that_keeps_every_caveat_and_dies_with_the_links_creator() {
    run(async {
        let e = env();
        let (alice, d, alice_tid, bound) = alices_revocable(&e, &["read", "write", "links.create"]).await;
        let body = json!({"issue": "token", "operations": ["read"], "token_ttl": "1h"});
        let lt = link(&e, &alice, &d, body.clone()).await;
        // A holder-added condition the product cannot carry refuses the redemption, and leaves
        // the link unspent.
        let budget = Token::decode(&lt).unwrap().attenuate("rate-limit 5/1m").unwrap().encode();
        assert_problem(&redeem(&e, &budget).await, StatusCode::FORBIDDEN);
        // The holder narrows the link to two minutes and one address before redeeming it.
        let (soon, here) = holders_narrowing();
        let narrowed =
            Token::decode(&lt).unwrap().attenuate(&soon).unwrap().attenuate(here).unwrap().encode();
        let r = redeem(&e, &narrowed).await;
        let token = ok(&r, StatusCode::OK)["token"].as_str().unwrap().to_owned();
        assert_keeps(
            &token,
            &["allow read write links.create", "client-ip 127.0.0.0/8", &bound, "allow read"],
        );
        assert_keeps(&token, &[&soon, here]);
        assert!(time_of(&r.body["expires"]) <= OffsetDateTime::now_utc() + time::Duration::seconds(121));
        let ctx = Context::now().operation("read").client_ip(localhost());
        let td = assert_revocable(&e, &token, &ctx).await;
        let elsewhere =
            verify_with(&e, &token, &[&td], json!({"operation": "read", "client_ip": "127.0.0.2"})).await;
        assert_problem(&elsewhere, StatusCode::FORBIDDEN);
        assert_eq!(
            verify_with(&e, &token, &[&td], json!({"operation": "read", "client_ip": "127.0.0.1"}))
                .await
                .status,
            StatusCode::OK
        );

        revoke(&e, &alice_tid).await;
        assert_dead(&e, &token, &td, json!({"operation": "read", "client_ip": "127.0.0.1"})).await;
    })
}

#[test]
fn a_link_redeems_for_a_session_bound_by_the_links_caveats_that_dies_with_the_links_creator() {
    run(async {
        let e = env();
        let (alice, d, alice_tid, bound) = alices_revocable(&e, &["read", "write", "links.create"]).await;
        let lt = link(&e, &alice, &d, json!({"issue": "session", "operations": ["read"]})).await;
        // An access token (a JWT) cannot carry `once`: refused, and the link is not spent.
        let once = Token::decode(&lt).unwrap().attenuate("once").unwrap().encode();
        assert_problem(&redeem(&e, &once).await, StatusCode::FORBIDDEN);
        let (soon, here) = holders_narrowing();
        let narrowed =
            Token::decode(&lt).unwrap().attenuate(&soon).unwrap().attenuate(here).unwrap().encode();
        let s = redeem(&e, &narrowed).await;
        let body = ok(&s, StatusCode::OK).clone();
        let rt = body["refresh_token"].as_str().unwrap().to_owned();
        // The refresh token keeps every time and network bound, the holder's included.
        assert_keeps(&rt, &["client-ip 127.0.0.0/8", &bound, &soon, here]);
        let access = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(access["cap"]["allow"], json!(["read"]));
        assert_eq!(access["cap"]["client-ip"], json!(["127.0.0.1/32"]));
        assert!(
            access["exp"].as_i64().unwrap()
                <= time_of(&json!(soon.strip_prefix("time-before ").unwrap())).unix_timestamp()
        );
        // The session's credential is only ever checked by the service, which checks revocation.
        let refresh_ctx = json!({"operation": "sessions.refresh",
            "resource": format!("sessions/{}", body["session_id"].as_str().unwrap()), "client_ip": "127.0.0.1"});
        assert_eq!(verify(&e, &rt, refresh_ctx.clone()).await.status, StatusCode::OK);
        let offline_read = offline(&e, &rt, &[], &Context::now().operation("read").client_ip(localhost()));
        assert!(
            matches!(offline_read, Err(Error::CaveatNotMet { .. })),
            "grants nothing offline: {offline_read:?}"
        );

        revoke(&e, &alice_tid).await;
        assert_problem(&verify(&e, &rt, refresh_ctx).await, StatusCode::UNAUTHORIZED);
        let r = send(&e, post("/v1/sessions/refresh", json!({"refresh_token": rt}))).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED);
    })
}

#[test]
fn a_session_keeps_its_creators_caveats_and_dies_with_the_creators_token() {
    run(async {
        let e = env();
        let (alice, d, alice_tid, bound) = alices_revocable(&e, &["read", "sessions.create"]).await;
        let a = send(
            &e,
            with_discharge(auth(post("/v1/sessions", json!({"resources": ["docs/*"]})), &alice), &d),
        )
        .await;
        let body = ok(&a, StatusCode::CREATED).clone();
        let rt = body["refresh_token"].as_str().unwrap().to_owned();
        assert_keeps(&rt, &["client-ip 127.0.0.0/8", &bound]);
        assert!(
            time_of(&body["refresh_expires"]) <= time_of(&json!(bound.strip_prefix("time-before ").unwrap()))
        );
        let access = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(access["cap"]["allow"], json!(["read", "sessions.create"]));
        assert_eq!(access["cap"]["resource"], json!(["docs/*"]));
        assert_eq!(access["cap"]["client-ip"], json!(["127.0.0.0/8"]));
        let refresh_ctx = json!({"operation": "sessions.refresh",
            "resource": format!("sessions/{}", body["session_id"].as_str().unwrap()), "client_ip": "127.0.0.1"});
        assert_eq!(verify(&e, &rt, refresh_ctx.clone()).await.status, StatusCode::OK);

        revoke(&e, &alice_tid).await;
        assert_problem(&verify(&e, &rt, refresh_ctx).await, StatusCode::UNAUTHORIZED);
        let r = send(&e, post("/v1/sessions/refresh", json!({"refresh_token": rt}))).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED);
    })
}

async fn refresh(e: &Env, token: &str) -> Answer {
    send(e, post("/v1/sessions/refresh", json!({"refresh_token": token}))).await
}

#[test]
fn a_refresh_passes_the_holders_caveats_to_the_next_refresh_token_and_the_access_token() {
    run(async {
        let e = env();
        let a = send(
            &e,
            auth(
                post(
                    "/v1/sessions",
                    json!({"subject": "alice", "operations": ["read", "write"], "resources": ["docs/*"],
                           "strategy": "refreshBoth"}),
                ),
                &e.admin,
            ),
        )
        .await;
        let s = ok(&a, StatusCode::CREATED).clone();
        let sid = s["session_id"].as_str().unwrap().to_owned();
        let r1 = s["refresh_token"].as_str().unwrap().to_owned();
        // The holder narrows the refresh token: two minutes, one address, read only, public docs.
        let (soon, here) = holders_narrowing();
        let held = [
            soon.clone(),
            here.to_owned(),
            "allow sessions.refresh read".to_owned(),
            format!("resource sessions/{sid} docs/public/*"),
        ];
        let mut narrowed = Token::decode(&r1).unwrap();
        for c in &held {
            narrowed = narrowed.attenuate(c).unwrap();
        }
        let r = refresh(&e, &narrowed.encode()).await;
        let body = ok(&r, StatusCode::OK).clone();
        let r2 = body["refresh_token"].as_str().unwrap().to_owned();
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        assert_keeps(&r2, &held);
        let access = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(access["cap"]["allow"], json!(["read"]));
        assert_eq!(access["cap"]["resource"], json!(["docs/public/*"]));
        assert_eq!(access["cap"]["client-ip"], json!(["127.0.0.1/32"]));
        let until = time_of(&json!(soon.strip_prefix("time-before ").unwrap())).unix_timestamp();
        assert!(access["exp"].as_i64().unwrap() <= until, "{} > {until}", access["exp"]);
        // The next rotation keeps them too.
        let r = refresh(&e, &r2).await;
        let r3 = ok(&r, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        assert_keeps(&r3, &held);
        let access = claims_of(r.body["access_token"].as_str().unwrap());
        assert_eq!(access["cap"]["allow"], json!(["read"]));
        assert_eq!(access["cap"]["client-ip"], json!(["127.0.0.1/32"]));
        // Replayed within the grace window with other narrowing: the same successor, narrowed by
        // what was presented as well.
        let other = Token::decode(&r2).unwrap().attenuate("client-ip 127.0.0.0/30").unwrap().encode();
        let again = refresh(&e, &other).await;
        let r3_again = ok(&again, StatusCode::OK)["refresh_token"].as_str().unwrap().to_owned();
        assert_keeps(&r3_again, &held);
        assert_keeps(&r3_again, &["client-ip 127.0.0.0/30"]);
        // A condition an access token cannot carry refuses the refresh.
        let once = Token::decode(&r3).unwrap().attenuate("once").unwrap().encode();
        assert_problem(&refresh(&e, &once).await, StatusCode::FORBIDDEN);

        // Each refresh token is a child of the one before: revoking r2 ends r3.
        let refresh_ctx = json!({"operation": "sessions.refresh", "resource": format!("sessions/{sid}"),
            "client_ip": "127.0.0.1"});
        assert_eq!(verify(&e, &r3, refresh_ctx.clone()).await.status, StatusCode::OK);
        revoke(&e, &tid_of(&r2)).await;
        assert_problem(&verify(&e, &r3, refresh_ctx).await, StatusCode::UNAUTHORIZED);
        assert_problem(&refresh(&e, &r3).await, StatusCode::UNAUTHORIZED);
    })
}

#[test]
fn an_envelope_carries_the_tokens_restrictions_and_outlives_it_by_at_most_its_lifetime() {
    run(async {
        let e = env();
        let (alice, _, alice_tid, _) = alices_revocable(&e, &["read", "write"]).await;
        let narrowed = Token::decode(&alice).unwrap().attenuate("resource docs/*").unwrap().encode();
        let d = bound_discharge(&e, &narrowed, None).await;
        let a = send(&e, post("/v1/jwt", json!({"token": narrowed, "discharges": [d]}))).await;
        let jwt = ok(&a, StatusCode::OK)["jwt"].as_str().unwrap().to_owned();
        let c = claims_of(&jwt);
        assert_eq!(c["cap"]["allow"], json!(["read", "write"]));
        assert_eq!(c["cap"]["resource"], json!(["docs/*"]));
        assert_eq!(c["cap"]["client-ip"], json!(["127.0.0.0/8"]));
        assert!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
                <= e.state.config.jwt_ttl.as_secs() as i64
        );
        // A discharge is a freshness bound: the envelope does not outlive it either.
        assert!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
                <= e.state.config.discharge_ttl.as_secs() as i64
        );

        revoke(&e, &alice_tid).await;
        let refused = send(&e, post("/v1/jwt", json!({"token": narrowed, "discharges": [d]}))).await;
        assert_problem(&refused, StatusCode::UNAUTHORIZED);
        assert_problem(&discharge(&e, &narrowed).await, StatusCode::FORBIDDEN);
    })
}
