//! `X-Request-Id` on every answer and in every problem body, and the latency histogram of
//! `/metrics` (in-process).

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use common::{auth, env, env_with, post, run, Env};
use serde_json::{json, Value};
use tessera_server::app;

/// (status, X-Request-Id, body as JSON or Null, raw body)
async fn call(e: &Env, req: TestRequest) -> (StatusCode, Option<String>, Value, String) {
    let svc = init_service(app(e.state.clone())).await;
    let res = call_service(&svc, req.peer_addr("127.0.0.1:40000".parse().unwrap()).to_request()).await;
    let status = res.status();
    let id = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let raw = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    (status, id, serde_json::from_str(&raw).unwrap_or(Value::Null), raw)
}

fn generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn a_sane_client_id_is_echoed_on_success_and_error_and_in_the_problem() {
    let e = env();
    run(async {
        let sane = "req-01HZX!~\"{}\\end";
        let (status, id, _, _) =
            call(&e, TestRequest::get().uri("/health").insert_header(("X-Request-Id", sane))).await;
        assert_eq!((status, id.as_deref()), (StatusCode::OK, Some(sane)));
        let longest = "x".repeat(64);
        let (_, id, _, _) =
            call(&e, TestRequest::get().uri("/health").insert_header(("X-Request-Id", longest.as_str())))
                .await;
        assert_eq!(id.as_deref(), Some(longest.as_str()));
        let (status, id, body, raw) =
            call(&e, TestRequest::get().uri("/no/such/thing").insert_header(("X-Request-Id", sane))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(id.as_deref(), Some(sane));
        assert_eq!(body["request_id"], sane, "{raw}");
        assert_eq!(body["status"], 404, "the problem keeps its members: {raw}");
    });
}

#[test]
fn an_insane_client_id_is_replaced() {
    let e = env();
    run(async {
        let too_long = "x".repeat(65);
        let bad: Vec<Vec<u8>> = vec![
            too_long.into_bytes(),
            b"".to_vec(),
            b"a\tb".to_vec(),
            b"a b".to_vec(),
            "caf\u{e9}".as_bytes().to_vec(),
            vec![b'a', 0x80, b'b'],
        ];
        for value in bad {
            let header = actix_web::http::header::HeaderValue::from_bytes(&value).unwrap();
            let (status, id, _, _) =
                call(&e, TestRequest::get().uri("/health").insert_header(("X-Request-Id", header))).await;
            assert_eq!(status, StatusCode::OK);
            let id = id.unwrap();
            assert!(generated(&id), "{value:?} was answered with {id:?}");
        }
        // No header at all: one is made, and two requests get two ids.
        let (_, a, _, _) = call(&e, TestRequest::get().uri("/health")).await;
        let (_, b, _, _) = call(&e, TestRequest::get().uri("/health")).await;
        assert!(generated(a.as_deref().unwrap()) && generated(b.as_deref().unwrap()));
        assert_ne!(a, b);
    });
}

/// Every kind of refusal, whichever layer answers it, carries the id in the header and the body.
#[test]
fn every_error_carries_the_id() {
    let e = env_with(|c| c.rate_limit = 1);
    run(async {
        let cases: Vec<(&str, TestRequest)> = vec![
            ("no credential", post("/v1/tokens", json!({"subject": "alice"}))),
            ("bad credential", auth(post("/v1/tokens", json!({"subject": "alice"})), "garbage")),
            ("405", TestRequest::delete().uri("/v1/verify")),
            (
                "bad JSON",
                TestRequest::post()
                    .uri("/v1/verify")
                    .insert_header(("content-type", "application/json"))
                    .set_payload("{"),
            ),
            (
                "415",
                TestRequest::post()
                    .uri("/v1/verify")
                    .insert_header(("content-type", "text/plain"))
                    .set_payload("x"),
            ),
            (
                "413",
                TestRequest::post()
                    .uri("/v1/verify")
                    .insert_header(("content-type", "application/json"))
                    .set_payload(vec![b' '; 70 * 1024]),
            ),
            ("bad query", auth(TestRequest::get().uri("/v1/revocations?after=notanumber"), &e.admin)),
        ];
        let mut statuses = Vec::new();
        for (i, (what, req)) in cases.into_iter().enumerate() {
            let mine = format!("case-{i}");
            // From its own address each, so the limiter (1/s) lets each through once.
            let peer = format!("10.0.0.{}:1000", i + 1);
            let svc = init_service(app(e.state.clone())).await;
            let res = call_service(
                &svc,
                req.insert_header(("X-Request-Id", mine.as_str()))
                    .peer_addr(peer.parse().unwrap())
                    .to_request(),
            )
            .await;
            let status = res.status();
            let id = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
            let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let raw = String::from_utf8(read_body(res).await.to_vec()).unwrap();
            assert!(status.is_client_error(), "{what}: {status} {raw}");
            assert_eq!(id.as_deref(), Some(mine.as_str()), "{what}");
            assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}: {raw}");
            let body: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(body["request_id"], mine.as_str(), "{what}: {raw}");
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [401, 401, 405, 400, 415, 413, 400]);
        // The rate limiter's own refusal (before routing): a burst of two, then refused.
        let svc = init_service(app(e.state.clone())).await;
        let mut answers = Vec::new();
        for i in 0..3 {
            let id = format!("burst-{i}");
            let req = TestRequest::get()
                .uri("/v1/whoami")
                .insert_header(("X-Request-Id", id.as_str()))
                .peer_addr("10.9.9.9:1".parse().unwrap());
            let res = call_service(&svc, req.to_request()).await;
            let status = res.status();
            let echoed = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
            let body: Value = serde_json::from_slice(&read_body(res).await).unwrap();
            assert_eq!((echoed.as_str(), body["request_id"].as_str()), (id.as_str(), Some(id.as_str())));
            answers.push(status.as_u16());
        }
        assert_eq!(answers, [401, 401, 429]);
    });
}

fn series<'a>(metrics: &'a str, name: &str, labels: &str) -> Option<&'a str> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[test]
fn the_latency_histogram_counts_by_route_template_and_status_class() {
    let e = env();
    run(async {
        for _ in 0..3 {
            assert_eq!(call(&e, TestRequest::get().uri("/health")).await.0, StatusCode::OK);
        }
        // Two different ids, one template.
        for tid in ["00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"] {
            let req = auth(post(&format!("/v1/tokens/{tid}/revoke"), json!({})), &e.admin);
            assert_eq!(call(&e, req).await.0, StatusCode::NOT_FOUND);
        }
        // Paths no route serves: one label, whatever the path.
        for p in ["/nope", "/secret-in-path-abc", "/v1/tokens/x/y/z"] {
            assert_eq!(call(&e, TestRequest::get().uri(p)).await.0, StatusCode::NOT_FOUND);
        }
        let (status, _, _, metrics) = call(&e, TestRequest::get().uri("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        let name = "http_server_request_duration_seconds";
        assert!(metrics.contains(&format!("# TYPE {name} histogram")), "{metrics}");
        let health = r#"route="/health",status_class="2xx""#;
        assert_eq!(series(&metrics, &format!("{name}_count"), health), Some("3"), "{metrics}");
        assert_eq!(series(&metrics, &format!("{name}_bucket"), &format!("{health},le=\"+Inf\"")), Some("3"));
        assert!(series(&metrics, &format!("{name}_bucket"), &format!("{health},le=\"0.0005\"")).is_some());
        assert!(
            series(&metrics, &format!("{name}_sum"), health).is_some_and(|s| s.parse::<f64>().unwrap() > 0.0)
        );
        let revoke = r#"route="/v1/tokens/{tid}/revoke",status_class="4xx""#;
        assert_eq!(series(&metrics, &format!("{name}_count"), revoke), Some("2"), "{metrics}");
        let unmatched = r#"route="unmatched",status_class="4xx""#;
        assert_eq!(series(&metrics, &format!("{name}_count"), unmatched), Some("3"), "{metrics}");
        assert!(!metrics.contains("secret-in-path") && !metrics.contains("x/y/z"), "{metrics}");
        // Buckets are cumulative and end at the count.
        let buckets: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{{health}")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 15);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]) && buckets[14] == 3, "{buckets:?}");
    });
}
