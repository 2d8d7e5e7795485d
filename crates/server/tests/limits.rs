//! Limits that need the service: a token's `rate-limit` budget (exact on one node, with the
//! `RateLimit` headers and a 429 with `Retry-After` when spent; a holder's tighter budget wins;
//! management calls count), single use (`once`), and single-use links (redeemed once, expired,
//! replayed).

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use common::*;
use serde_json::{json, Value};
use tessera_core::{Caveat, Token};

/// Verify through the real app, keeping the response headers.
async fn verify_with_headers(e: &Env, token: &str) -> (StatusCode, Vec<(String, String)>, Value) {
    let svc = init_service(tessera_server::app(e.state.clone())).await;
    let req = post("/v1/verify", json!({"token": token, "context": {"operation": "read"}}))
        .peer_addr("127.0.0.1:40000".parse().unwrap())
        .to_request();
    let res = call_service(&svc, req).await;
    let status = res.status();
    let headers =
        res.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    let body = serde_json::from_slice(&read_body(res).await).unwrap_or(Value::Null);
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn a_token_budget_is_exact_on_one_node_and_says_so_in_headers() {
    run(async {
        let e = env();
        let token =
            mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"], "rate_limit": "3/1m"}))
                .await;
        for left in [2, 1, 0] {
            let (status, h, _) = verify_with_headers(&e, &token).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(header(&h, "ratelimit-limit"), Some("3"));
            assert_eq!(header(&h, "ratelimit-remaining"), Some(left.to_string().as_str()));
            assert_eq!(header(&h, "ratelimit-policy"), Some("3;w=60"));
            let rl = header(&h, "ratelimit").unwrap();
            assert!(rl.starts_with(&format!("limit=3, remaining={left}, reset=")), "{rl}");
        }
        let (status, h, body) = verify_with_headers(&e, &token).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let retry: u64 = header(&h, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        // Always on a budget's 429: what tells it from the per-client limiter's (docs/API.md).
        assert_eq!(header(&h, "ratelimit-policy"), Some("3;w=60"));
        assert!(body["detail"].as_str().unwrap().contains("3/1m"), "{body}");
        // Tokens without a budget answer without the headers.
        let plain = mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"]})).await;
        let (status, h, _) = verify_with_headers(&e, &plain).await;
        assert_eq!(status, StatusCode::OK);
        assert!(header(&h, "ratelimit-limit").is_none());
        let m = get(&e, "/metrics").await;
        assert!(m.raw.contains("tessera_token_rate_limited_total 1"), "{}", m.raw);
    })
}

#[test]
fn a_holders_tighter_budget_wins_and_management_calls_count() {
    run(async {
        let e = env();
        let token = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["read", "tokens.list"], "rate_limit": "100/1m"}),
        )
        .await;
        let tight = Token::decode(&token).unwrap().attenuate("rate-limit 2/1h").unwrap().encode();
        for _ in 0..2 {
            assert_eq!(verify_with_headers(&e, &tight).await.0, StatusCode::OK);
        }
        let (status, h, _) = verify_with_headers(&e, &tight).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&h, "ratelimit-policy"), Some("100;w=60, 2;w=3600"));
        // The family's 100/1m budget counted the two successful uses (the refused one took
        // nothing: all or nothing); the untightened token still works.
        let (status, h, _) = verify_with_headers(&e, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("97"), "2 counted, this one too");
        // Management calls made with a budgeted token count against it.
        let list = |t: String| {
            let e = &e;
            async move { send(e, auth(TestRequest::get().uri("/v1/tokens"), &t)).await.status }
        };
        let small = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["tokens.list"], "rate_limit": "2/1m"}),
        )
        .await;
        assert_eq!(list(small.clone()).await, StatusCode::OK);
        assert_eq!(list(small.clone()).await, StatusCode::OK);
        assert_eq!(list(small).await, StatusCode::TOO_MANY_REQUESTS);
        // A budgeted token cannot mint (a child family would get a fresh budget).
        let minter = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["tokens.mint"], "rate_limit": "10/1m"}),
        )
        .await;
        let a = mint(&e, &minter, json!({})).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        assert!(a.body["detail"].as_str().unwrap().contains("rate-limit"), "{}", a.raw);
        assert_problem(
            &mint(&e, &e.admin, json!({"subject": "x", "rate_limit": "0/1m"})).await,
            StatusCode::BAD_REQUEST,
        );
        assert_problem(
            &mint(&e, &e.admin, json!({"subject": "x", "rate_limit": "5/1w"})).await,
            StatusCode::BAD_REQUEST,
        );
    })
}

#[test]
fn a_once_token_works_exactly_once() {
    run(async {
        let e = env();
        let token = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["read"]})).await;
        let once = Token::decode(&token).unwrap().attenuate("once").unwrap().encode();
        assert_eq!(verify(&e, &once, json!({"operation": "read"})).await.status, StatusCode::OK);
        let again = verify(&e, &once, json!({"operation": "read"})).await;
        assert_problem(&again, StatusCode::UNAUTHORIZED);
        assert!(again.body["detail"].as_str().unwrap().contains("used already"), "{}", again.raw);
        // A use denied for another reason does not spend it.
        let fresh = mint_ok(&e, &e.admin, json!({"subject": "carol", "operations": ["read"]})).await;
        let fresh_once = Token::decode(&fresh).unwrap().attenuate("once").unwrap().encode();
        assert_problem(&verify(&e, &fresh_once, json!({"operation": "write"})).await, StatusCode::FORBIDDEN);
        assert_eq!(verify(&e, &fresh_once, json!({"operation": "read"})).await.status, StatusCode::OK);
    })
}

async fn link(e: &Env, body: Value) -> Answer {
    send(e, auth(post("/v1/links", body), &e.admin)).await
}

async fn redeem(e: &Env, token: &str) -> Answer {
    send(e, post("/v1/links/redeem", json!({"token": token}))).await
}

#[test]
fn a_link_is_redeemed_once_for_what_it_was_minted_to_give() {
    run(async {
        let e = env();
        let l =
            link(&e, json!({"subject": "dana", "issue": "token", "operations": ["read"], "token_ttl": "1h"}))
                .await;
        assert_eq!(l.status, StatusCode::CREATED, "{}", l.raw);
        let lt = l.body["link_token"].as_str().unwrap().to_owned();
        // The link itself grants nothing but its redemption.
        assert_problem(&verify(&e, &lt, json!({"operation": "read"})).await, StatusCode::FORBIDDEN);
        let r = redeem(&e, &lt).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        assert_eq!(r.body["issued"], "token");
        let t = r.body["token"].as_str().unwrap();
        assert_eq!(verify(&e, t, json!({"operation": "read"})).await.status, StatusCode::OK);
        assert_problem(&verify(&e, t, json!({"operation": "write"})).await, StatusCode::FORBIDDEN);
        // Replayed: refused, clearly.
        let again = redeem(&e, &lt).await;
        assert_problem(&again, StatusCode::UNAUTHORIZED);
        assert!(again.body["detail"].as_str().unwrap().contains("used already"), "{}", again.raw);

        // A session, by default.
        let l = link(&e, json!({"subject": "dana"})).await;
        let s = redeem(&e, l.body["link_token"].as_str().unwrap()).await;
        assert_eq!(s.status, StatusCode::OK, "{}", s.raw);
        assert_eq!(s.body["issued"], "session");
        assert!(s.body["refresh_token"].is_string() && s.body["access_token"].is_string());

        // Expired.
        let l = link(&e, json!({"subject": "dana", "ttl": "1s"})).await;
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let x = redeem(&e, l.body["link_token"].as_str().unwrap()).await;
        assert_problem(&x, StatusCode::FORBIDDEN);
        assert!(x.body["detail"].as_str().unwrap().contains("expired"), "{}", x.raw);
        // Limits and bad input.
        assert_problem(&link(&e, json!({"subject": "dana", "ttl": "16m"})).await, StatusCode::BAD_REQUEST);
        assert_problem(&link(&e, json!({"subject": "dana", "issue": "pony"})).await, StatusCode::BAD_REQUEST);
        let plain = mint_ok(&e, &e.admin, json!({"subject": "dana"})).await;
        assert_problem(&redeem(&e, &plain).await, StatusCode::BAD_REQUEST);
        let once = Token::decode(&plain).unwrap().attenuate("once").unwrap().encode();
        let a = redeem(&e, &once).await;
        assert_problem(&a, StatusCode::BAD_REQUEST);
        assert!(a.body["detail"].as_str().unwrap().contains("not minted as a link"), "{}", a.raw);
        assert_eq!(verify(&e, &once, json!({})).await.status, StatusCode::OK, "not spent by the refusal");
        let reader = mint_ok(&e, &e.admin, json!({"subject": "dana", "operations": ["read"]})).await;
        assert_problem(&redeem(&e, &reader).await, StatusCode::FORBIDDEN);
        // Only who may act for the subject creates links for it.
        let dana = mint_ok(&e, &e.admin, json!({"subject": "dana", "operations": ["links.create"]})).await;
        let a = send(&e, auth(post("/v1/links", json!({"subject": "erin"})), &dana)).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        let own = send(&e, auth(post("/v1/links", json!({"issue": "token"})), &dana)).await;
        assert_eq!(own.status, StatusCode::CREATED, "{}", own.raw);
    })
}

/// A management call through the real app, keeping the response headers.
async fn send_with_headers(e: &Env, req: TestRequest) -> (StatusCode, Vec<(String, String)>, Value) {
    let svc = init_service(tessera_server::app(e.state.clone())).await;
    let res = call_service(&svc, req.peer_addr("127.0.0.1:40000".parse().unwrap()).to_request()).await;
    let status = res.status();
    let headers =
        res.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    let body = serde_json::from_slice(&read_body(res).await).unwrap_or(Value::Null);
    (status, headers, body)
}

/// Issue 19, finding 4: budgets are taken all-or-nothing. A copy whose tighter budget is spent is
/// refused without spending the family's other budgets (they count successful uses only).
#[test]
fn a_refused_use_spends_none_of_the_familys_other_budgets() {
    run(async {
        let e = env();
        let token =
            mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"], "rate_limit": "6/1h"}))
                .await;
        let tight = Token::decode(&token).unwrap().attenuate("rate-limit 3/1d").unwrap().encode();
        let statuses: Vec<u16> =
            futures_statuses(&e, &tight, 6).await.into_iter().map(|s| s.as_u16()).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
        // Three successful uses of the 6/1h budget: three left, and the untightened token has them.
        for left in ["2", "1", "0"] {
            let (status, h, body) = verify_with_headers(&e, &token).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(header(&h, "ratelimit-remaining"), Some(left));
        }
        assert_eq!(verify_with_headers(&e, &token).await.0, StatusCode::TOO_MANY_REQUESTS);
    })
}

async fn futures_statuses(e: &Env, token: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(verify_with_headers(e, token).await.0);
    }
    out
}

/// Issue 19, finding 4: a replayed, already-used `once` copy is refused without spending the
/// family's budget.
#[test]
fn a_replayed_once_copy_spends_no_budget() {
    run(async {
        let e = env();
        let token =
            mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"], "rate_limit": "3/1h"}))
                .await;
        let once = Token::decode(&token).unwrap().attenuate("once").unwrap().encode();
        let (status, h, _) = verify_with_headers(&e, &once).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("2"));
        for _ in 0..3 {
            let (status, _, body) = verify_with_headers(&e, &once).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(body["detail"].as_str().unwrap().contains("used already"), "{body}");
        }
        for left in ["1", "0"] {
            let (status, h, body) = verify_with_headers(&e, &token).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(header(&h, "ratelimit-remaining"), Some(left));
        }
    })
}

/// Issue 19, finding 3: one token family holds at most 8 distinct budgets. A copy that would add a
/// 9th is refused (403) and creates no counter; the family's other copies keep working.
#[test]
fn a_family_holds_at_most_eight_distinct_budgets() {
    run(async {
        let e = env();
        let token = mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"]})).await;
        let copy = |n: u64| {
            Token::decode(&token).unwrap().attenuate(&format!("rate-limit {n}/1h")).unwrap().encode()
        };
        for n in 1..=8 {
            let (status, _, body) = verify_with_headers(&e, &copy(100 + n)).await;
            assert_eq!(status, StatusCode::OK, "budget {n}: {body}");
        }
        assert_eq!(e.state.store.rate_counters(), 8);
        let (status, h, body) = verify_with_headers(&e, &copy(200)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("too many distinct budgets"), "{body}");
        assert!(header(&h, "ratelimit-limit").is_none());
        assert_eq!(e.state.store.rate_counters(), 8, "the refusal created no counter");
        // The same budget spelled another way is the same budget, not a 9th.
        let respelled = Token::decode(&token).unwrap().attenuate("rate-limit 101/60m").unwrap().encode();
        assert_eq!(verify_with_headers(&e, &respelled).await.0, StatusCode::OK);
        // A single token with 9 budgets is refused whole.
        let mut nine = Token::decode(&token).unwrap();
        for n in 0..9 {
            nine = nine.attenuate(&format!("rate-limit {}/1d", 10 + n)).unwrap();
        }
        let (status, _, body) = verify_with_headers(&e, &nine.encode()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        // The family's budgets were not spent by the refusals: 101/1h has used 2.
        let (status, h, _) = verify_with_headers(&e, &copy(101)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("98"));
    })
}

/// Issue 19, finding 3: a node holds a bounded number of counters. When full, a token that needs
/// a new one is refused (503, `Retry-After`) and no live counter is evicted (evicting would reset
/// a budget); tokens whose counters exist go on.
#[test]
fn a_full_node_refuses_new_budgets_and_keeps_the_ones_it_has() {
    run(async {
        let e = env();
        e.state.store.set_rate_capacity(2);
        let budget = json!({"subject": "helper", "operations": ["read"], "rate_limit": "2/1h"});
        let first = mint_ok(&e, &e.admin, budget.clone()).await;
        let second = mint_ok(&e, &e.admin, budget.clone()).await;
        let third = mint_ok(&e, &e.admin, budget).await;
        assert_eq!(verify_with_headers(&e, &first).await.0, StatusCode::OK);
        assert_eq!(verify_with_headers(&e, &second).await.0, StatusCode::OK);
        let (status, h, body) = verify_with_headers(&e, &third).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("rate-limit counters"), "{body}");
        assert!(header(&h, "retry-after").is_some());
        assert_eq!(e.state.store.rate_counters(), 2);
        // The budgets held are not reset by the pressure: the first token has one use left.
        let (status, h, _) = verify_with_headers(&e, &first).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        assert_eq!(verify_with_headers(&e, &first).await.0, StatusCode::TOO_MANY_REQUESTS);
        // Tokens without a budget need no counter.
        let plain = mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"]})).await;
        assert_eq!(verify_with_headers(&e, &plain).await.0, StatusCode::OK);
    })
}

/// Issue 20: a management answer that spent a budget carries the `RateLimit` fields.
#[test]
fn management_answers_that_spend_a_budget_carry_its_headers() {
    run(async {
        let e = env();
        let small = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["tokens.list"], "rate_limit": "2/1h"}),
        )
        .await;
        let list = || auth(TestRequest::get().uri("/v1/tokens?subject=helper"), &small);
        for left in ["1", "0"] {
            let (status, h, body) = send_with_headers(&e, list()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(header(&h, "ratelimit-limit"), Some("2"));
            assert_eq!(header(&h, "ratelimit-remaining"), Some(left));
            assert_eq!(header(&h, "ratelimit-policy"), Some("2;w=3600"));
            assert!(header(&h, "ratelimit").unwrap().starts_with(&format!("limit=2, remaining={left}, ")));
        }
        let (status, h, _) = send_with_headers(&e, list()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(header(&h, "retry-after").is_some());
        assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        // A call refused before the budget is counted (another subject's tokens) spends nothing
        // and says nothing about it.
        let other = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["tokens.list"], "rate_limit": "2/1h"}),
        )
        .await;
        let (status, h, _) =
            send_with_headers(&e, auth(TestRequest::get().uri("/v1/tokens?subject=someone"), &other)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(header(&h, "ratelimit-limit").is_none());
        let (status, h, _) =
            send_with_headers(&e, auth(TestRequest::get().uri("/v1/tokens?subject=helper"), &other)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("1"));
    })
}

/// Issue 20: mint writes a budget in its canonical form (`3/120m` is `rate-limit 3/2h`).
#[test]
fn mint_writes_a_budget_canonically() {
    run(async {
        let e = env();
        let token = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "helper", "operations": ["read"], "rate_limit": "3/120m"}),
        )
        .await;
        let caveats: Vec<String> = Token::decode(&token)
            .unwrap()
            .caveats()
            .filter_map(|c| match c {
                Caveat::FirstParty(id) => Some(String::from_utf8(id.to_vec()).unwrap()),
                Caveat::ThirdParty { .. } => None,
            })
            .collect();
        assert!(caveats.contains(&"rate-limit 3/2h".to_owned()), "{caveats:?}");
        assert!(!caveats.iter().any(|c| c.contains("120m")), "{caveats:?}");
        let (_, h, body) = verify_with_headers(&e, &token).await;
        assert_eq!(body["restrictions"]["rate_limits"], json!(["3/2h"]));
        assert_eq!(header(&h, "ratelimit-policy"), Some("3;w=7200"));
        // The record lists it the same way.
        let listed = send(&e, auth(TestRequest::get().uri("/v1/tokens?subject=helper"), &e.admin)).await;
        assert!(listed.raw.contains("rate-limit 3/2h") && !listed.raw.contains("120m"), "{}", listed.raw);
    })
}

/// Security review round 3, finding 3: a refused use creates no counter and so takes none of the
/// family's 8 budget slots. Copies of a spent token with new budgets (429), and replays of a used
/// `once` copy with new budgets (401, refused after the budgets were taken), leave the family
/// free to hold 8 budgets of its owner's choosing.
#[test]
fn a_refused_use_occupies_none_of_the_familys_budget_slots() {
    run(async {
        let e = env();
        let token =
            mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"], "rate_limit": "1/1h"}))
                .await;
        assert_eq!(verify_with_headers(&e, &token).await.0, StatusCode::OK);
        for days in 1..=9 {
            let copy =
                Token::decode(&token).unwrap().attenuate(&format!("rate-limit 9/{days}d")).unwrap().encode();
            let (status, h, body) = verify_with_headers(&e, &copy).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "copy {days}: {body}");
            assert!(body["detail"].as_str().unwrap().contains("1/1h"), "{body}");
            assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        }
        assert_eq!(e.state.store.rate_counters(), 1, "only the budget that was used");
        // Refused after its budgets were taken: a replayed `once` copy gives them back whole.
        let plain = mint_ok(&e, &e.admin, json!({"subject": "helper", "operations": ["read"]})).await;
        let once = Token::decode(&plain).unwrap().attenuate("once").unwrap();
        assert_eq!(verify_with_headers(&e, &once.encode()).await.0, StatusCode::OK);
        for hours in 1..=8 {
            let replay = once.attenuate(&format!("rate-limit 5/{hours}h")).unwrap().encode();
            let (status, _, body) = verify_with_headers(&e, &replay).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "replay {hours}: {body}");
        }
        assert_eq!(e.state.store.rate_counters(), 1);
        // The family's slots are all still free for copies that are used.
        for n in 1..=8 {
            let copy =
                Token::decode(&plain).unwrap().attenuate(&format!("rate-limit {n}/1d")).unwrap().encode();
            let (status, _, body) = verify_with_headers(&e, &copy).await;
            assert_eq!(status, StatusCode::OK, "budget {n}: {body}");
        }
        assert_eq!(e.state.store.rate_counters(), 9);
        // A token carrying more budgets than a family may hold is told so, truly.
        let mut nine = Token::decode(&token).unwrap();
        for n in 0..9 {
            nine = nine.attenuate(&format!("rate-limit {}/2d", 10 + n)).unwrap();
        }
        let (status, _, body) = verify_with_headers(&e, &nine.encode()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("too many distinct budgets"), "{body}");
        assert!(detail.contains("carries 10 distinct"), "{body}");
        assert!(!detail.contains("holds 0"), "{body}");
    })
}

/// Security review round 3, finding 4: a management call that is authorized but then fails (a
/// bad query: 400) spends no budget and creates no counter; its answer carries no budget fields.
#[test]
fn a_management_call_that_fails_spends_nothing() {
    run(async {
        let e = env();
        let small = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "erin", "operations": ["tokens.list"], "rate_limit": "2/1h"}),
        )
        .await;
        let bad = || auth(TestRequest::get().uri("/v1/tokens?subject=erin&expiring_within=bogus"), &small);
        let good = || auth(TestRequest::get().uri("/v1/tokens?subject=erin"), &small);
        for _ in 0..3 {
            let (status, h, body) = send_with_headers(&e, bad()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(header(&h, "ratelimit-remaining").is_none(), "{h:?}");
        }
        assert_eq!(e.state.store.rate_counters(), 0, "a failed call leaves no counter");
        let (status, h, _) = send_with_headers(&e, good()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("1"));
        assert_eq!(send_with_headers(&e, bad()).await.0, StatusCode::BAD_REQUEST);
        let (status, h, _) = send_with_headers(&e, good()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        assert_eq!(send_with_headers(&e, good()).await.0, StatusCode::TOO_MANY_REQUESTS);
    })
}
