//! The audit trail through the API (redb; the store's suite runs both backends): every kind of
//! entry names its actor (subject and tid, or the issuer), its target, the client address, the
//! request id and the user agent; refusals are noted (exchange refused, management refused, a
//! budget spent once per window); a successful verification writes nothing; no token text ever
//! appears in an entry; `GET /v1/audit` filters and pages with its cursor, and is the admin's;
//! `GET /v1/audit/mine` shows a person the entries about their own tokens and nobody else's; the
//! housekeeping round prunes by `--audit-retention` and the rest still verifies.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::*;
use serde_json::{json, Value};
use tessera_core::envelope::{Algorithm, SigningKey};
use tessera_store::{AuditFilter, AuditVerdict};

const ISS: &str = "https://idp.test";
const AUD: &str = "tessera-client";
const AGENT: &str = "audit-test/1.0";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A trusted issuer whose keys are in a file, and ID tokens it signs.
struct Idp {
    key: SigningKey,
    dir: tempfile::TempDir,
}

impl Idp {
    fn new() -> Idp {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [key.public_key().unwrap().jwk()]}).to_string()).unwrap();
        let issuers = json!({"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": jwks,
            "algorithms": ["ES256"], "subject_prefix": "idp:", "template": {"operations": ["read"], "ttl": "1h"}}]});
        std::fs::write(dir.path().join("issuers.json"), issuers.to_string()).unwrap();
        Idp { key, dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("issuers.json")
    }

    fn id_token(&self, aud: &str, sub: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header =
            json!({"alg": "ES256", "typ": "JWT", "kid": self.key.public_key().unwrap().thumbprint()});
        let claims = json!({"iss": ISS, "aud": aud, "sub": sub, "iat": now, "exp": now + 600});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        format!("{input}.{}", b64(&self.key.sign(input.as_bytes())))
    }
}

/// A request as a browser or client sends it: a user agent and a request id of its own.
fn as_client(req: TestRequest, id: &str) -> TestRequest {
    req.insert_header(("User-Agent", AGENT)).insert_header(("X-Request-Id", id))
}

async fn call(e: &Env, req: TestRequest, id: &str) -> Answer {
    send(e, as_client(req, id)).await
}

/// Every entry `GET /v1/audit` answers for `query`, page by page (the raw bodies too).
async fn entries(e: &Env, token: &str, query: &str) -> (Vec<Value>, String) {
    let mut all = Vec::new();
    let mut raw = String::new();
    let mut after = 0;
    loop {
        let a = send(
            e,
            auth(TestRequest::get().uri(&format!("/v1/audit?after={after}&limit=1000{query}")), token),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        raw.push_str(&a.raw);
        let page = a.body["entries"].as_array().unwrap().clone();
        after = a.body["next"].as_u64().unwrap();
        if page.is_empty() {
            return (all, raw);
        }
        all.extend(page);
    }
}

/// Refusals are written through the writer's queue: wait (a bounded number of rounds, not a
/// time) until `done` holds of what is recorded.
async fn settled(e: &Env, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..400 {
        let (all, _) = entries(e, &e.admin, "").await;
        if done(&all) {
            return all;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the expected entries never appeared: {:#?}", entries(e, &e.admin, "").await.0);
}

fn of_kind<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|x| x["kind"] == kind).collect()
}

fn tid_of(token: &str) -> String {
    tessera_core::Token::decode(token).unwrap().tessera_identifier().unwrap().tid.to_string()
}

/// The client facts every entry of a request made by [`as_client`] carries.
fn assert_from_client(x: &Value, id: &str) {
    assert_eq!(x["actor"]["address"], "127.0.0.1", "{x:#}");
    assert_eq!(x["actor"]["request_id"], id, "{x:#}");
    assert_eq!(x["actor"]["user_agent"], AGENT, "{x:#}");
}

#[test]
fn every_kind_names_its_actor_target_and_client_and_no_secret() {
    run(async {
        let idp = Idp::new();
        let e = env_with(|c| {
            c.exchange_config = Some(idp.config());
            c.refresh_grace = Duration::ZERO;
        });
        let admin_tid = tid_of(&e.admin);
        let mut secrets: Vec<String> = vec![e.admin.clone()];

        // Mint (admin for alice), mint (alice for herself, a child), revoke (with a descendant).
        let a = call(
            &e,
            auth(
                post(
                    "/v1/tokens",
                    json!({"subject": "alice",
            "operations": ["read", "tokens.mint", "tokens.list", "tokens.revoke"]}),
                ),
                &e.admin,
            ),
            "r-mint",
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        let alice = a.body["token"].as_str().unwrap().to_owned();
        let alice_tid = a.body["tid"].as_str().unwrap().to_owned();
        let c = call(&e, auth(post("/v1/tokens", json!({"description": "child"})), &alice), "r-child").await;
        let child = c.body["token"].as_str().unwrap().to_owned();
        let child_tid = c.body["tid"].as_str().unwrap().to_owned();
        let g =
            call(&e, auth(post("/v1/tokens", json!({"description": "grandchild"})), &child), "r-grand").await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.raw);
        secrets.extend([alice.clone(), child.clone(), g.body["token"].as_str().unwrap().to_owned()]);
        let r =
            call(&e, auth(post(&format!("/v1/tokens/{child_tid}/revoke"), json!({})), &alice), "r-revoke")
                .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);

        // Keys: rotate, revoke the new one (a replacement is made), a signing-key rotation.
        let k = call(&e, auth(post("/v1/keys/rotate", json!({})), &e.admin), "r-rotate").await;
        assert_eq!(k.status, StatusCode::CREATED, "{}", k.raw);
        let kid = k.body["kid"].as_str().unwrap().to_owned();
        let kr =
            call(&e, auth(post(&format!("/v1/keys/{kid}/revoke"), json!({})), &e.admin), "r-keyrevoke").await;
        assert_eq!(kr.status, StatusCode::OK, "{}", kr.raw);
        let s = call(
            &e,
            auth(post("/v1/keys/signing/rotate", json!({"alg": "ES256", "force": true})), &e.admin),
            "r-sign",
        )
        .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.raw);

        // Applications: register, disable.
        let app = call(
            &e,
            auth(post("/v1/apps", json!({"name": "billing", "audience": "https://billing.test"})), &e.admin),
            "r-app",
        )
        .await;
        assert_eq!(app.status, StatusCode::CREATED, "{}", app.raw);
        secrets.push(app.body["credential"].as_str().unwrap().to_owned());
        let d = call(&e, auth(TestRequest::delete().uri("/v1/apps/billing"), &e.admin), "r-appoff").await;
        assert_eq!(d.status, StatusCode::OK, "{}", d.raw);

        // Sessions: create, refresh, the spent refresh token again (reuse), revoke another.
        let sess = call(
            &e,
            auth(post("/v1/sessions", json!({"subject": "fay", "strategy": "refreshBoth"})), &e.admin),
            "r-sess",
        )
        .await;
        assert_eq!(sess.status, StatusCode::CREATED, "{}", sess.raw);
        let sid = sess.body["session_id"].as_str().unwrap().to_owned();
        let r0 = sess.body["refresh_token"].as_str().unwrap().to_owned();
        let r0_tid = tid_of(&r0);
        let re = call(&e, post("/v1/sessions/refresh", json!({"refresh_token": r0})), "r-refresh").await;
        assert_eq!(re.status, StatusCode::OK, "{}", re.raw);
        let reuse = call(&e, post("/v1/sessions/refresh", json!({"refresh_token": r0})), "r-reuse").await;
        assert_eq!(reuse.status, StatusCode::UNAUTHORIZED, "{}", reuse.raw);
        secrets.extend([r0.clone(), re.body["refresh_token"].as_str().unwrap().to_owned()]);
        secrets.extend([
            sess.body["access_token"].as_str().unwrap().to_owned(),
            re.body["access_token"].as_str().unwrap().to_owned(),
        ]);
        let other =
            call(&e, auth(post("/v1/sessions", json!({"subject": "fay"})), &e.admin), "r-sess2").await;
        let sid2 = other.body["session_id"].as_str().unwrap().to_owned();
        secrets.push(other.body["refresh_token"].as_str().unwrap().to_owned());
        let sr =
            call(&e, auth(post(&format!("/v1/sessions/{sid2}/revoke"), json!({})), &e.admin), "r-sessoff")
                .await;
        assert_eq!(sr.status, StatusCode::OK, "{}", sr.raw);

        // Links: create, redeem.
        let l = call(
            &e,
            auth(post("/v1/links", json!({"subject": "dana", "issue": "token"})), &e.admin),
            "r-link",
        )
        .await;
        assert_eq!(l.status, StatusCode::CREATED, "{}", l.raw);
        let link = l.body["link_token"].as_str().unwrap().to_owned();
        let link_tid = l.body["tid"].as_str().unwrap().to_owned();
        let red = call(&e, post("/v1/links/redeem", json!({"token": link})), "r-redeem").await;
        assert_eq!(red.status, StatusCode::OK, "{}", red.raw);
        secrets.extend([link.clone(), red.body["token"].as_str().unwrap().to_owned()]);

        // Exchange: accepted, then refused (another audience).
        let grant = "urn:ietf:params:oauth:grant-type:token-exchange";
        let id_type = "urn:ietf:params:oauth:token-type:id_token";
        let good = idp.id_token(AUD, "ada");
        let x = call(
            &e,
            post(
                "/v1/exchange",
                json!({"grant_type": grant, "subject_token": good, "subject_token_type": id_type}),
            ),
            "r-exch",
        )
        .await;
        assert_eq!(x.status, StatusCode::OK, "{}", x.raw);
        let bad = idp.id_token("someone-else", "mallory");
        let xr = call(
            &e,
            post(
                "/v1/exchange",
                json!({"grant_type": grant, "subject_token": bad, "subject_token_type": id_type}),
            ),
            "r-exch-bad",
        )
        .await;
        assert_eq!(xr.status, StatusCode::UNAUTHORIZED, "{}", xr.raw);
        secrets.extend([good, bad, x.body["access_token"].as_str().unwrap().to_owned()]);

        // A budget of 2 an hour, verified 4 times: two refusals, one entry.
        let helper =
            mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"], "rate_limit": "2/1h"}))
                .await;
        let helper_tid = tid_of(&helper);
        secrets.push(helper.clone());
        let mut refused = 0;
        for i in 0..4 {
            let v = call(
                &e,
                post("/v1/verify", json!({"token": helper, "context": {"operation": "read"}})),
                &format!("r-v{i}"),
            )
            .await;
            refused += usize::from(v.status == StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(refused, 2);

        // Management refused: keys are the admin's; acting for another subject.
        let rk = call(&e, auth(TestRequest::get().uri("/v1/keys"), &alice), "r-nokeys").await;
        assert_eq!(rk.status, StatusCode::FORBIDDEN, "{}", rk.raw);
        let rb = call(&e, auth(post("/v1/tokens", json!({"subject": "bob"})), &alice), "r-other").await;
        assert_eq!(rb.status, StatusCode::FORBIDDEN, "{}", rb.raw);

        let all = settled(&e, |all| {
            [
                "exchange.refuse",
                "budget.exhausted",
                "management.refused",
                "exchange.accept",
                "admin_token.create",
            ]
            .iter()
            .all(|k| !of_kind(all, k).is_empty())
                && of_kind(all, "management.refused").len() >= 2
        })
        .await;

        // The first start's admin token, by the service itself.
        let first = of_kind(&all, "admin_token.create");
        assert_eq!(first.len(), 1, "{first:#?}");
        assert_eq!(first[0]["actor"]["subject"], "system");
        assert_eq!(first[0]["target"]["tid"], admin_tid.as_str());

        // token.mint: the admin's, with its lineage; alice's child; the link's product.
        let mints = of_kind(&all, "token.mint");
        let m = mints.iter().find(|x| x["target"]["tid"] == alice_tid.as_str()).unwrap();
        assert_eq!(m["actor"]["subject"], "admin");
        assert_eq!(m["actor"]["tid"], admin_tid.as_str());
        assert_eq!(m["outcome"], "success");
        assert!(m["detail"].as_str().unwrap().contains(&admin_tid), "{m:#}");
        assert_from_client(m, "r-mint");
        let m = mints.iter().find(|x| x["target"]["tid"] == child_tid.as_str()).unwrap();
        assert_eq!(m["actor"]["subject"], "alice");
        assert_eq!(m["actor"]["tid"], alice_tid.as_str());
        assert_from_client(m, "r-child");

        let rv = of_kind(&all, "token.revoke");
        let rv = rv.iter().find(|x| x["target"]["tid"] == child_tid.as_str()).unwrap();
        assert_eq!(rv["actor"]["tid"], alice_tid.as_str());
        assert_eq!(rv["detail"], "descendants=1", "{rv:#}");
        assert_from_client(rv, "r-revoke");

        let kr = of_kind(&all, "key.rotate");
        let kr = kr.iter().find(|x| x["target"]["kid"] == kid.as_str()).unwrap();
        assert_eq!(kr["actor"]["subject"], "admin");
        assert_from_client(kr, "r-rotate");
        let kv = of_kind(&all, "key.revoke");
        assert_eq!(kv.len(), 1, "{kv:#?}");
        assert_eq!(kv[0]["target"]["kid"], kid.as_str());
        assert_from_client(kv[0], "r-keyrevoke");
        let sk: Vec<&Value> = of_kind(&all, "signing_key.rotate")
            .into_iter()
            .filter(|x| x["actor"]["subject"] == "admin")
            .collect();
        assert_eq!(sk.len(), 1, "{sk:#?}");
        assert!(sk[0]["target"]["kid"].is_string());
        assert_from_client(sk[0], "r-sign");

        let ar = of_kind(&all, "app.register");
        assert_eq!(ar[0]["target"]["app"], "billing");
        assert_from_client(ar[0], "r-app");
        let ad = of_kind(&all, "app.disable");
        assert_eq!(ad[0]["target"]["app"], "billing");
        assert_from_client(ad[0], "r-appoff");

        let sc = of_kind(&all, "session.create");
        let sc = sc.iter().find(|x| x["target"]["sid"] == sid.as_str()).unwrap();
        assert_eq!(sc["actor"]["subject"], "admin");
        assert_from_client(sc, "r-sess");
        let sf = of_kind(&all, "session.refresh");
        assert_eq!(sf.len(), 1, "{sf:#?}");
        assert_eq!(sf[0]["target"]["sid"], sid.as_str());
        assert_eq!(sf[0]["actor"]["subject"], "fay", "the refresh token is the credential");
        assert_eq!(sf[0]["actor"]["tid"], r0_tid.as_str());
        assert_from_client(sf[0], "r-refresh");
        let su = of_kind(&all, "session.reuse");
        assert_eq!(su.len(), 1, "{su:#?}");
        assert_eq!(su[0]["target"]["sid"], sid.as_str());
        assert_eq!(su[0]["target"]["tid"], r0_tid.as_str(), "the spent token presented again");
        assert_from_client(su[0], "r-reuse");
        let so = of_kind(&all, "session.revoke");
        assert_eq!(so[0]["target"]["sid"], sid2.as_str());
        assert_from_client(so[0], "r-sessoff");

        let lc = of_kind(&all, "link.create");
        assert_eq!(lc[0]["target"]["tid"], link_tid.as_str());
        assert_from_client(lc[0], "r-link");
        let lr = of_kind(&all, "link.redeem");
        assert_eq!(lr.len(), 1, "{lr:#?}");
        assert_eq!(lr[0]["target"]["tid"], link_tid.as_str());
        assert_eq!(lr[0]["actor"]["tid"], link_tid.as_str(), "the link token is the credential");
        assert_from_client(lr[0], "r-redeem");

        let xa = of_kind(&all, "exchange.accept");
        assert_eq!(xa[0]["actor"]["issuer"], ISS);
        assert_eq!(xa[0]["detail"], "sub=idp:ada");
        assert_from_client(xa[0], "r-exch");
        let xf = of_kind(&all, "exchange.refuse");
        assert_eq!(xf.len(), 1, "{xf:#?}");
        assert_eq!(xf[0]["actor"]["issuer"], ISS);
        assert_eq!(xf[0]["outcome"], "refused");
        assert!(xf[0]["detail"].as_str().unwrap().contains("sub=mallory"), "{:#}", xf[0]);
        assert!(xf[0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{:#}", xf[0]);
        assert_from_client(xf[0], "r-exch-bad");

        // Spent twice in one window: noted once.
        let be = of_kind(&all, "budget.exhausted");
        assert_eq!(be.len(), 1, "{be:#?}");
        assert_eq!(be[0]["target"]["tid"], helper_tid.as_str());
        assert_eq!(be[0]["actor"]["subject"], "helper");

        let mr = of_kind(&all, "management.refused");
        let keys = mr.iter().find(|x| x["detail"] == "op=keys.list").unwrap();
        assert_eq!(keys["actor"]["subject"], "alice");
        assert_eq!(keys["actor"]["tid"], alice_tid.as_str());
        assert_from_client(keys, "r-nokeys");
        let bob = mr.iter().find(|x| x["detail"] == "op=tokens.mint").unwrap();
        assert_from_client(bob, "r-other");
        assert!(!bob.to_string().contains("bob"), "a refusal names no other subject: {bob:#}");

        // No token text, refresh token, link, ID token or credential in any entry.
        let (_, raw) = entries(&e, &e.admin, "").await;
        for s in &secrets {
            assert!(!raw.contains(s.as_str()), "a token's text is in the audit trail");
            let tail = &s[s.len() - 24..];
            assert!(!raw.contains(tail), "a token's signature is in the audit trail");
        }
        let at = e.state.store.audit(&AuditFilter::default()).unwrap();
        assert!(!format!("{at:?}").contains(&alice), "nor in the stored entries");
    })
}

#[test]
fn a_successful_verification_writes_nothing() {
    run(async {
        let e = env();
        let t = mint_ok(&e, &e.admin, json!({"subject": "svc", "operations": ["read"]})).await;
        let before = e.state.store.audit(&AuditFilter::default()).unwrap().len();
        for _ in 0..5 {
            assert_eq!(verify(&e, &t, json!({"operation": "read"})).await.status, StatusCode::OK);
        }
        // A write after them: anything they had queued would be written before it.
        mint_ok(&e, &e.admin, json!({"subject": "svc"})).await;
        let after = e.state.store.audit(&AuditFilter::default()).unwrap();
        assert_eq!(after.len(), before + 1, "only the last mint: {after:#?}");
    })
}

#[test]
fn the_audit_api_filters_pages_and_belongs_to_the_admin() {
    run(async {
        let e = env();
        let alice = alice(&e).await;
        let bob =
            mint_ok(&e, &e.admin, json!({"subject": "bob", "operations": ["tokens.list", "tokens.mint"]}))
                .await;
        let bob_tid = tid_of(&bob);
        let child = mint(&e, &alice, json!({"description": "child"})).await;
        let child_tid = child.body["tid"].as_str().unwrap().to_owned();
        let r = send(&e, auth(post(&format!("/v1/tokens/{child_tid}/revoke"), json!({})), &alice)).await;
        assert_eq!(r.status, StatusCode::OK);
        // Bob mints one of his own, and is refused the keys.
        mint_ok(&e, &bob, json!({"description": "bob's own"})).await;
        assert_eq!(
            send(&e, auth(TestRequest::get().uri("/v1/keys"), &bob)).await.status,
            StatusCode::FORBIDDEN
        );
        let all = settled(&e, |all| !of_kind(all, "management.refused").is_empty()).await;

        // Filters.
        let (revokes, _) = entries(&e, &e.admin, "&kind=token.revoke").await;
        assert_eq!(revokes.len(), 1, "{revokes:#?}");
        assert_eq!(revokes[0]["target"]["tid"], child_tid.as_str());
        let (refused, _) = entries(&e, &e.admin, "&outcome=refused").await;
        assert!(!refused.is_empty() && refused.iter().all(|x| x["outcome"] == "refused"), "{refused:#?}");
        let (by_alice, _) = entries(&e, &e.admin, "&actor=alice").await;
        assert_eq!(by_alice.len(), 2, "her mint and her revoke: {by_alice:#?}");
        assert!(by_alice.iter().all(|x| x["actor"]["subject"] == "alice"));
        let (by_tid, _) = entries(&e, &e.admin, &format!("&actor={bob_tid}")).await;
        assert!(!by_tid.is_empty() && by_tid.iter().all(|x| x["actor"]["tid"] == bob_tid.as_str()));
        let (about_bob, _) = entries(&e, &e.admin, "&subject=bob").await;
        assert!(
            about_bob.iter().any(|x| x["target"]["tid"] == bob_tid.as_str()),
            "the admin's mint of bob's token"
        );
        assert!(about_bob
            .iter()
            .all(|x| x["actor"]["subject"] == "bob" || x["target"]["tid"] == bob_tid.as_str()));
        let (none, _) = entries(&e, &e.admin, "&until=2000-01-01T00:00:00Z").await;
        assert!(none.is_empty());
        let (none, _) = entries(&e, &e.admin, "&since=2999-01-01T00:00:00Z").await;
        assert!(none.is_empty());
        let (recent, _) =
            entries(&e, &e.admin, "&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z").await;
        assert_eq!(recent.len(), all.len());

        // The cursor: pages of two give every entry once, in order; past the end, the same cursor.
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let a =
                send(&e, auth(TestRequest::get().uri(&format!("/v1/audit?after={after}&limit=2")), &e.admin))
                    .await;
            let page = a.body["entries"].as_array().unwrap().clone();
            assert!(page.len() <= 2);
            let next = a.body["next"].as_u64().unwrap();
            if page.is_empty() {
                assert_eq!(next, after, "nothing new: poll again from the same place");
                break;
            }
            after = next;
            paged.extend(page);
        }
        let ids = |v: &[Value]| v.iter().map(|x| x["id"].as_u64().unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(&paged), ids(&all));
        assert!(ids(&paged).windows(2).all(|w| w[0] < w[1]));

        // Bad filters: a 400 naming them.
        for q in ["kind=token.nope", "outcome=maybe", "since=yesterday", "until=1", "colour=red", "after=-1"]
        {
            let a = send(&e, auth(TestRequest::get().uri(&format!("/v1/audit?{q}")), &e.admin)).await;
            assert_problem(&a, StatusCode::BAD_REQUEST);
        }
        let a =
            send(&e, auth(TestRequest::get().uri(&format!("/v1/audit?actor={}", "x".repeat(300))), &e.admin))
                .await;
        assert_problem(&a, StatusCode::BAD_REQUEST);

        // The admin's: a non-admin is refused, even with `allow audit.read`; an admin token
        // narrowed to `audit.read` reads (and does nothing else).
        for path in ["/v1/audit", "/v1/audit/head"] {
            assert_problem(
                &send(&e, auth(TestRequest::get().uri(path), &alice)).await,
                StatusCode::FORBIDDEN,
            );
        }
        let reader = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["audit.read"]})).await;
        assert_problem(
            &send(&e, auth(TestRequest::get().uri("/v1/audit"), &reader)).await,
            StatusCode::FORBIDDEN,
        );
        let shipper = mint_ok(&e, &e.admin, json!({"operations": ["audit.read"]})).await;
        assert_eq!(
            send(&e, auth(TestRequest::get().uri("/v1/audit"), &shipper)).await.status,
            StatusCode::OK
        );
        assert_problem(
            &send(&e, auth(post("/v1/keys/rotate", json!({})), &shipper)).await,
            StatusCode::FORBIDDEN,
        );
        assert_problem(&send(&e, TestRequest::get().uri("/v1/audit")).await, StatusCode::UNAUTHORIZED);

        // The head: its text form pins it.
        let h = send(&e, auth(TestRequest::get().uri("/v1/audit/head"), &shipper)).await;
        assert_eq!(h.status, StatusCode::OK, "{}", h.raw);
        let seq = h.body["seq"].as_u64().unwrap();
        assert!(seq > 0);
        let pin = h.body["pin"].as_str().unwrap();
        let parsed: tessera_store::AuditHead = pin.parse().unwrap();
        assert_eq!(parsed.seq, seq);
        assert!(matches!(e.state.store.verify_audit(Some(parsed)).unwrap(), AuditVerdict::Intact { .. }));

        // Mine: alice sees her own activity and the admin's on her tokens, nothing of bob's.
        let m = send(&e, auth(TestRequest::get().uri("/v1/audit/mine?limit=1000"), &alice)).await;
        assert_eq!(m.status, StatusCode::OK, "{}", m.raw);
        let mine = m.body["entries"].as_array().unwrap();
        let kinds: Vec<&str> = mine.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"token.mint") && kinds.contains(&"token.revoke"), "{mine:#?}");
        assert!(mine.iter().any(|x| x["target"]["tid"] == child_tid.as_str()));
        assert!(!m.raw.contains("bob") && !m.raw.contains(&bob_tid), "nothing of another subject: {}", m.raw);
        // The admin minted her token: what was done shows, the admin's address does not.
        let by_admin = mine.iter().find(|x| x["actor"]["subject"] == "admin").unwrap();
        assert!(
            by_admin["actor"]["address"].is_null() && by_admin["actor"]["user_agent"].is_null(),
            "{by_admin:#}"
        );
        assert!(mine
            .iter()
            .filter(|x| x["actor"]["subject"] == "alice")
            .all(|x| x["actor"]["address"] == "127.0.0.1"));
        // Bob's view holds his refusal, not alice's entries.
        let b = send(&e, auth(TestRequest::get().uri("/v1/audit/mine?outcome=refused"), &bob)).await;
        let bobs = b.body["entries"].as_array().unwrap();
        assert_eq!(bobs.len(), 1, "{}", b.raw);
        assert_eq!(bobs[0]["kind"], "management.refused");
        assert!(!b.raw.contains(&child_tid));
        // Mine takes no actor or subject, and needs tokens.list for the caller's own subject.
        let a = send(&e, auth(TestRequest::get().uri("/v1/audit/mine?subject=bob"), &alice)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST);
        let reader_only = mint_ok(&e, &e.admin, json!({"subject": "alice", "operations": ["read"]})).await;
        assert_problem(
            &send(&e, auth(TestRequest::get().uri("/v1/audit/mine"), &reader_only)).await,
            StatusCode::FORBIDDEN,
        );
    })
}

#[test]
fn revoking_what_is_not_yours_is_noted_like_revoking_nothing() {
    run(async {
        let e = env();
        let alice = alice(&e).await;
        let bob = mint_ok(&e, &e.admin, json!({"subject": "bob"})).await;
        let bob_tid = tid_of(&bob);
        let unknown = "0".repeat(32);
        for tid in [&bob_tid, &unknown] {
            let a = send(&e, auth(post(&format!("/v1/tokens/{tid}/revoke"), json!({})), &alice)).await;
            assert_problem(&a, StatusCode::NOT_FOUND);
        }
        // Alike but for their targets: two entries of the same shape, each naming what was asked
        // for (the target is part of what makes refusals identical, so a prober cannot hide the
        // ids it tried behind one entry for a decoy).
        e.state.store.close_audit_repeats();
        let all = settled(&e, |all| of_kind(all, "management.refused").len() >= 2).await;
        let refused = of_kind(&all, "management.refused");
        assert_eq!(refused.len(), 2, "{refused:#?}");
        let shape = |x: &Value| (x["reason"].clone(), x["actor"]["subject"].clone(), x["detail"].clone());
        assert_eq!(shape(refused[0]), shape(refused[1]), "{refused:#?}");
        assert_eq!(refused[0]["target"]["tid"], json!(bob_tid));
        assert_eq!(refused[1]["target"]["tid"], json!(unknown));
        assert_eq!(refused[0]["detail"], "op=tokens.revoke");
    })
}

// Review of issue 22, finding 2: each refused call wrote a durable entry (about 140 a second per
// address within the rate limit, kept for --audit-retention).
#[test]
fn a_flood_of_identical_refused_calls_is_one_entry_and_a_count() {
    run(async {
        let e = env();
        let alice = alice(&e).await;
        for i in 0..100 {
            let a = call(&e, auth(TestRequest::get().uri("/v1/keys"), &alice), &format!("r-flood-{i}")).await;
            assert_problem(&a, StatusCode::FORBIDDEN);
        }
        let all = settled(&e, |all| !of_kind(all, "management.refused").is_empty()).await;
        assert_eq!(
            of_kind(&all, "management.refused").len(),
            1,
            "the rest are counted while the window runs"
        );
        // When the window ends the housekeeping round writes the summary; stopping writes it now.
        e.state.store.close_audit_repeats();
        let all = settled(&e, |all| of_kind(all, "management.refused").len() >= 2).await;
        let refused = of_kind(&all, "management.refused");
        assert_eq!(refused.len(), 2, "{refused:#?}");
        let summary = refused[1]["detail"].as_str().unwrap();
        assert!(summary.starts_with("repeated=99 total=100 within 60s; "), "{summary}");
        assert_from_client(refused[1], "r-flood-99");
        assert!(matches!(e.state.store.verify_audit(None).unwrap(), AuditVerdict::Intact { .. }));
    })
}

#[test]
fn housekeeping_prunes_by_retention_and_the_rest_verifies() {
    run(async {
        let e = env_with(|c| c.audit_retention = Duration::from_secs(86_400));
        for i in 0..5 {
            mint_ok(&e, &e.admin, json!({"subject": format!("s{i}")})).await;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let total = e.state.store.audit(&AuditFilter::default()).unwrap().len();
        // Today: nothing is older than a day.
        let round = tessera_server::housekeeping::tick(&e.state, now);
        assert_eq!(round.pruned, 0);
        // Two days on: every entry is older than a day; the chain that is kept still verifies.
        let round = tessera_server::housekeeping::tick(&e.state, now + 2 * 86_400);
        assert!(round.pruned > 0 && round.pruned <= total, "{round:?}");
        let left = e.state.store.audit(&AuditFilter::default()).unwrap().len();
        assert_eq!(left, total - round.pruned);
        assert!(matches!(e.state.store.verify_audit(None).unwrap(), AuditVerdict::Intact { .. }));

        // Retention off: nothing is pruned, however old.
        let e = env_with(|c| c.audit_retention = Duration::ZERO);
        mint_ok(&e, &e.admin, json!({"subject": "s"})).await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(tessera_server::housekeeping::tick(&e.state, now + 3650 * 86_400).pruned, 0);
    })
}
