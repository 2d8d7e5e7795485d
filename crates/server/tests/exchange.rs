//! Login exchange (RFC 8693 shape): an ID token of a trusted test issuer, whose JWKS this test
//! serves on loopback, becomes a Tessera token or a session for its subject, with claims copied
//! by name; refused for a wrong `iss` or `aud`, expired, `alg: none`, HS256 keyed with the
//! issuer's public key, an unknown `kid`, an unconfigured issuer, and malformed requests. Bad
//! trusted-issuer files stop the service at start with a clear error.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use common::*;
use serde_json::{json, Value};
use tessera_core::envelope::{Algorithm, SigningKey};
use tessera_server::{AppState, Config};

const ISS: &str = "https://idp.test";
const AUD: &str = "tessera-client";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Idp {
    es: SigningKey,
    ed: SigningKey,
    url: String,
    fetches: Arc<AtomicUsize>,
}

/// How the test issuer's JWKS endpoint behaves.
#[derive(Clone, Copy)]
enum Jwks {
    /// Answers at once.
    Serve,
    /// Answers after a pause (so concurrent requests overlap one fetch).
    ServeAfter(Duration),
    /// Answers 500 with an upstream detail in the body.
    Fail,
    /// Accepts, reads the request, never answers.
    Hang,
    /// Answers a JWKS larger than the service reads.
    Huge,
}

impl Idp {
    /// An issuer with an ES256 and an EdDSA key, its JWKS served on loopback.
    fn start() -> Idp {
        Idp::serving(Jwks::Serve)
    }

    /// The same, its JWKS endpoint behaving as `how`; every connection is counted as a fetch.
    fn serving(how: Jwks) -> Idp {
        let es = SigningKey::generate(Algorithm::Es256).unwrap();
        let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let mut doc = json!({"keys": [es.public_key().unwrap().jwk(), ed.public_key().unwrap().jwk()]});
        if let Jwks::Huge = how {
            doc["padding"] = json!("x".repeat(300 * 1024));
        }
        let jwks = doc.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let jwks = jwks.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = match how {
                        Jwks::Serve | Jwks::Huge => ("200 OK", jwks),
                        Jwks::ServeAfter(pause) => {
                            std::thread::sleep(pause);
                            ("200 OK", jwks)
                        }
                        Jwks::Fail => {
                            ("500 Internal Server Error", "upstream detail: db-7 is down".to_owned())
                        }
                        Jwks::Hang => {
                            std::thread::sleep(Duration::from_secs(3600));
                            return;
                        }
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Idp { es, ed, url, fetches }
    }

    fn fetched(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn kid(key: &SigningKey) -> String {
        key.public_key().unwrap().thumbprint()
    }

    fn sign(key: &SigningKey, header: Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        format!("{input}.{}", b64(&key.sign(input.as_bytes())))
    }

    fn token(&self, claims: &Value) -> String {
        Self::sign(&self.es, json!({"alg": "ES256", "typ": "JWT", "kid": Self::kid(&self.es)}), claims)
    }
}

fn claims() -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({"iss": ISS, "aud": AUD, "sub": "248289761001", "email": "ada@example.com", "groups": ["eng"],
           "name": "Ada", "iat": now, "exp": now + 600})
}

fn config_file(dir: &std::path::Path, issuers: Value) -> std::path::PathBuf {
    let path = dir.join("issuers.json");
    std::fs::write(&path, json!({"issuers": issuers}).to_string()).unwrap();
    path
}

fn issuer(idp: &Idp) -> Value {
    json!({"issuer": ISS, "audience": AUD, "jwks_url": idp.url, "algorithms": ["ES256", "EdDSA"],
           "subject_prefix": "idp:",
           "template": {"operations": ["read", "sessions.create"], "resources": ["docs/*"], "ttl": "8h",
                        "claims": ["email", "groups"]}})
}

fn env_for(idp: &Idp) -> (Env, tempfile::TempDir) {
    env_of(json!([issuer(idp)]))
}

/// The test issuer, its template issuing `issue` (`token` or `session`).
fn env_issuing(idp: &Idp, issue: &str) -> (Env, tempfile::TempDir) {
    let mut i = issuer(idp);
    i["template"]["issue"] = json!(issue);
    env_of(json!([i]))
}

fn env_of(issuers: Value) -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), issuers);
    (env_with(|c| c.exchange_config = Some(path)), dir)
}

async fn exchange(e: &Env, body: Value) -> Answer {
    send(e, post("/v1/exchange", body)).await
}

fn request(token: &str) -> Value {
    json!({"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN})
}

#[test]
fn an_id_token_becomes_a_tessera_token_or_a_session() {
    run(async {
        let idp = Idp::start();
        let (e, _dir) = env_for(&idp);
        let a = exchange(&e, request(&idp.token(&claims()))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        assert_eq!(a.body["issued_token_type"], "urn:tessera:params:oauth:token-type:tessera");
        assert_eq!(a.body["subject"], "idp:248289761001");
        assert_eq!(a.body["expires_in"], 8 * 3600);
        let token = a.body["access_token"].as_str().unwrap();
        let v = verify(&e, token, json!({"operation": "read", "resource": "docs/1"})).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.raw);
        assert_eq!(
            v.body["claims"],
            json!({"email": "ada@example.com", "groups": ["eng"]}),
            "copied by name only"
        );
        assert_problem(&verify(&e, token, json!({"operation": "write"})).await, StatusCode::FORBIDDEN);
        // The JWKS was fetched once and is cached.
        let b = exchange(&e, request(&idp.token(&claims()))).await;
        assert_eq!(b.status, StatusCode::OK, "{}", b.raw);
        assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

        // A session, from an issuer whose template issues sessions, asked for with RFC 8693's
        // form encoding.
        let (e, _dir) = env_issuing(&idp, "session");
        let form = format!(
            "grant_type={}&subject_token={}&subject_token_type={}&requested_token_type={}",
            urlencode(GRANT),
            idp.token(&claims()),
            urlencode(ID_TOKEN),
            urlencode("urn:ietf:params:oauth:token-type:access_token")
        );
        let req = TestRequest::post()
            .uri("/v1/exchange")
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .set_payload(form);
        let s = send(&e, req).await;
        assert_eq!(s.status, StatusCode::OK, "{}", s.raw);
        assert_eq!(s.body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
        let jwks = get(&e, "/.well-known/jwks.json").await.body;
        let ctx = tessera_core::Context::now().operation("read").resource("docs/2");
        let c = verify_with_jwks(&jwks, s.body["access_token"].as_str().unwrap(), None, &ctx).unwrap();
        assert_eq!(c.sub, "idp:248289761001");
        assert_eq!(c.custom.unwrap().get("email"), Some(&json!("ada@example.com")));
        let r =
            send(&e, post("/v1/sessions/refresh", json!({"refresh_token": s.body["refresh_token"]}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        // EdDSA ID tokens too.
        let ed = Idp::sign(&idp.ed, json!({"alg": "EdDSA", "kid": Idp::kid(&idp.ed)}), &claims());
        assert_eq!(exchange(&e, request(&ed)).await.status, StatusCode::OK);
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn bad_subject_tokens_are_refused() {
    run(async {
        let idp = Idp::start();
        let (e, _dir) = env_for(&idp);
        let refused = |a: &Answer, words: &str| {
            assert_problem(a, StatusCode::UNAUTHORIZED);
            assert!(a.body["detail"].as_str().unwrap().contains(words), "expected \"{words}\": {}", a.raw);
        };
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            idp.token(&c)
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        refused(&exchange(&e, request(&with("iss", json!("https://evil.test")))).await, "not trusted");
        refused(&exchange(&e, request(&with("aud", json!("other-client")))).await, "audience");
        refused(&exchange(&e, request(&with("exp", json!(now - 3600)))).await, "expired");
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
        refused(&exchange(&e, request(&none)).await, "not allowed");
        // HS256 with the issuer's public key (its JWK text) as the HMAC secret.
        let jwk = idp.es.public_key().unwrap().jwk().to_string();
        let hs = SigningKey::from_secret_bytes(Algorithm::Hs256, &jwk.as_bytes()[..32]).unwrap();
        let confused = Idp::sign(&hs, json!({"alg": "HS256", "kid": Idp::kid(&idp.es)}), &claims());
        refused(&exchange(&e, request(&confused)).await, "not allowed");
        let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
        let unknown = Idp::sign(&stranger, json!({"alg": "ES256", "kid": "no-such-kid"}), &claims());
        refused(&exchange(&e, request(&unknown)).await, "not in the JWKS");
        // The right kid, another key: a bad signature.
        let forged = Idp::sign(&stranger, json!({"alg": "ES256", "kid": Idp::kid(&idp.es)}), &claims());
        refused(&exchange(&e, request(&forged)).await, "signature");
        refused(&exchange(&e, request("not-a-jwt")).await, "not a JWT");

        for (body, words) in [
            (
                json!({"grant_type": "password", "subject_token": "x", "subject_token_type": ID_TOKEN}),
                "grant_type",
            ),
            (
                json!({"grant_type": GRANT, "subject_token": "x", "subject_token_type": "urn:x:saml"}),
                "subject_token_type",
            ),
            (
                json!({"grant_type": GRANT, "subject_token": idp.token(&claims()), "subject_token_type": ID_TOKEN,
                    "requested_token_type": "urn:ietf:params:oauth:token-type:saml2"}),
                "requested_token_type",
            ),
            (json!({"grant_type": GRANT}), "invalid JSON"),
        ] {
            let a = exchange(&e, body).await;
            assert_problem(&a, StatusCode::BAD_REQUEST);
            assert!(a.body["detail"].as_str().unwrap().contains(words), "{}", a.raw);
        }
        // Without trusted issuers the endpoint says so.
        let plain = env();
        assert_problem(&exchange(&plain, request(&idp.token(&claims()))).await, StatusCode::NOT_FOUND);
    })
}

#[test]
fn a_jwks_file_works_and_bad_issuer_files_stop_the_start() {
    run(async {
        let idp = Idp::start();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("idp-jwks.json");
        std::fs::write(&jwks, json!({"keys": [idp.es.public_key().unwrap().jwk()]}).to_string()).unwrap();
        let mut from_file = issuer(&idp);
        from_file.as_object_mut().unwrap().remove("jwks_url");
        from_file["jwks_file"] = json!(jwks);
        let path = config_file(dir.path(), json!([from_file]));
        let e = env_with(|c| c.exchange_config = Some(path));
        assert_eq!(exchange(&e, request(&idp.token(&claims()))).await.status, StatusCode::OK);
        assert_eq!(idp.fetches.load(Ordering::SeqCst), 0, "no fetch with a file");

        let start = |issuers: Value| {
            let dir = tempfile::tempdir().unwrap();
            let path = config_file(dir.path(), issuers);
            let mut config = Config::for_data_dir(dir.path().join("data"));
            config.exchange_config = Some(path);
            AppState::open(config).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let with = |k: &str, v: Value| {
            let mut i = issuer(&idp);
            i[k] = v;
            json!([i])
        };
        assert!(start(with("algorithms", json!(["RS256"]))).contains("RS256"));
        assert!(start(with("algorithms", json!(["HS256"]))).contains("HS256"));
        assert!(start(with("algorithms", json!([]))).contains("at least one"));
        assert!(start(with("jwks_file", json!("/nonexistent"))).contains("exactly one"));
        assert!(start(with("audience", json!(""))).contains("audience"));
        assert!(start(with("template", json!({"claims": ["sub"]}))).contains("registered"));
        assert!(start(with("template", json!({"operations": ["two words"]}))).contains("one non-empty word"));
        assert!(start(with("colour", json!("red"))).contains("unknown field"));
        assert!(start(json!([issuer(&idp), issuer(&idp)])).contains("listed once"));
    })
}

const ISS2: &str = "https://idp2.test";

fn claims_with(k: &str, v: Value) -> Value {
    let mut c = claims();
    c[k] = v;
    c
}

/// What starting the service with these issuers says (empty: it started).
fn start_error(issuers: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), issuers);
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.exchange_config = Some(path);
    AppState::open(config).err().map(|e| e.to_string()).unwrap_or_default()
}

/// Security review 3, finding 2: an ID token never becomes the admin or an application. With
/// no prefix, `sub: "admin"` was given a token that `GET /v1/keys` accepted; the final subject
/// is what is checked, so a prefix that spells it with the `sub` ("ad" + "min") is refused too,
/// as is a renamed admin subject; sessions alike.
#[test]
fn an_exchanged_subject_is_never_the_admin_or_an_application() {
    run(async {
        let idp = Idp::start();
        let refused = |a: &Answer| {
            assert_problem(a, StatusCode::FORBIDDEN);
            assert!(a.body["detail"].as_str().unwrap().contains("reserved"), "{}", a.raw);
            assert!(a.body.get("access_token").is_none());
        };
        for (prefix, issue, sub) in [
            ("", "token", "admin"),
            ("", "session", "admin"),
            ("", "token", "app:billing"),
            ("", "session", "app:billing"),
            ("ad", "token", "min"),
            ("app", "token", ":billing"),
        ] {
            let mut i = issuer(&idp);
            i["subject_prefix"] = json!(prefix);
            i["template"]["issue"] = json!(issue);
            let (e, _dir) = env_of(json!([i]));
            let a = exchange(&e, request(&idp.token(&claims_with("sub", json!(sub))))).await;
            refused(&a);
            // Any other subject of the same issuer is fine.
            let ok = exchange(&e, request(&idp.token(&claims_with("sub", json!("ada"))))).await;
            assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
        }
        // A renamed admin subject is the reserved one; "admin" is then an ordinary subject.
        let dir = tempfile::tempdir().unwrap();
        let mut i = issuer(&idp);
        i["subject_prefix"] = json!("");
        let path = config_file(dir.path(), json!([i]));
        let e = env_with(|c| {
            c.exchange_config = Some(path);
            c.admin_subject = "root".into();
        });
        refused(&exchange(&e, request(&idp.token(&claims_with("sub", json!("root"))))).await);
        let a = exchange(&e, request(&idp.token(&claims_with("sub", json!("admin"))))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        let t = a.body["access_token"].as_str().unwrap();
        assert_problem(&send(&e, auth(TestRequest::get().uri("/v1/keys"), t)).await, StatusCode::FORBIDDEN);
    })
}

/// Finding 2, namespaces: two issuers never share subjects, with each other or with local ones.
/// With more than one issuer, each needs a non-empty prefix that is no other's prefix; no
/// prefix may start an application's subject; the service refuses to start otherwise.
#[test]
fn issuers_need_subject_prefixes_of_their_own() {
    let idp = Idp::start();
    let two = |a: &str, b: &str| {
        let mut first = issuer(&idp);
        first["subject_prefix"] = json!(a);
        let mut second = issuer(&idp);
        second["issuer"] = json!(ISS2);
        second["subject_prefix"] = json!(b);
        json!([first, second])
    };
    for (a, b) in [("", "idp2:"), ("idp:", ""), ("idp:", "idp:"), ("idp:", "idp:2:"), ("i", "idp2:")] {
        let e = start_error(two(a, b));
        assert!(e.contains("subject_prefix"), "{a:?} {b:?}: {e}");
    }
    assert_eq!(start_error(two("idp:", "idp2:")), "", "distinct prefixes start");
    for prefix in ["app:", "app:x"] {
        let mut one = issuer(&idp);
        one["subject_prefix"] = json!(prefix);
        let e = start_error(json!([one]));
        assert!(e.contains("subject_prefix") && e.contains("app:"), "{prefix}: {e}");
    }
    // Alone, an issuer may share the local namespace (documented).
    let mut alone = issuer(&idp);
    alone["subject_prefix"] = json!("");
    assert_eq!(start_error(json!([alone])), "");
}

/// Security review 3, finding 9 (exchange): the request chooses nothing looser than the issuer's
/// template. The only choice it has is the issued type, and neither type is stricter than the
/// other (a session renews; a token outlives an access token and is not revocable through a
/// session), so it may only name the template's.
#[test]
fn a_request_cannot_ask_for_more_than_the_template() {
    run(async {
        let idp = Idp::start();
        const SESSION: &str = "urn:ietf:params:oauth:token-type:access_token";
        const TOKEN: &str = "urn:tessera:params:oauth:token-type:tessera";
        for (issue, own, other) in [("token", TOKEN, SESSION), ("session", SESSION, TOKEN)] {
            let (e, _dir) = env_issuing(&idp, issue);
            let mut ask = request(&idp.token(&claims()));
            ask["requested_token_type"] = json!(other);
            let a = exchange(&e, ask.clone()).await;
            assert_problem(&a, StatusCode::FORBIDDEN);
            assert!(a.body["detail"].as_str().unwrap().contains("template"), "{}", a.raw);
            ask["requested_token_type"] = json!(own);
            let a = exchange(&e, ask).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
            assert_eq!(a.body["issued_token_type"], own);
            assert_eq!(a.body.get("refresh_token").is_some(), issue == "session", "{}", a.raw);
        }
        // A request cannot carry a lifetime or a strategy at all.
        let (e, _dir) = env_issuing(&idp, "session");
        for (name, value) in
            [("strategy", json!("refreshBoth")), ("refresh_ttl", json!("72h")), ("ttl", json!("90d"))]
        {
            let mut ask = request(&idp.token(&claims()));
            ask[name] = value;
            assert_problem(&exchange(&e, ask).await, StatusCode::BAD_REQUEST);
        }
    })
}

/// Security review 3, finding 12: an ID token that expires on 9999-12-31 made the exchange panic
/// (500). The far future is a valid expiry; past the calendar is a 401.
#[test]
fn an_id_token_expiring_at_the_end_of_the_calendar_is_no_500() {
    run(async {
        let idp = Idp::start();
        let (e, _dir) = env_for(&idp);
        let last: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let a = exchange(&e, request(&idp.token(&claims_with("exp", json!(last))))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        assert_eq!(a.body["expires_in"], 8 * 3600, "the template decides the token's life");
        for v in [json!(last + 1), json!(i64::MAX), json!(-1e300)] {
            let a = exchange(&e, request(&idp.token(&claims_with("exp", v))).clone()).await;
            assert_problem(&a, StatusCode::UNAUTHORIZED);
        }
        let a = exchange(&e, request(&idp.token(&claims_with("nbf", json!(last))))).await;
        assert_problem(&a, StatusCode::UNAUTHORIZED);
        // A leeway the calendar cannot hold stops the start.
        let mut i = issuer(&idp);
        i["leeway"] = json!("10000years");
        assert!(start_error(json!([i])).contains("leeway"));
    })
}

/// An answer's text holds nothing about where the issuer's keys live or what the upstream said.
/// (The request id is left out of the check: a random hex id may contain "500".)
fn generic(a: &Answer, idp: &Idp) {
    let mut body = a.body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    let text = if body.is_null() { a.raw.clone() } else { body.to_string() };
    let host = idp.url.trim_start_matches("http://").split('/').next().unwrap();
    for secret in [idp.url.as_str(), host, "jwks.json", "db-7", "500"] {
        assert!(!text.contains(secret), "\"{secret}\" leaked: {}", a.raw);
    }
}

/// Security review 3, finding 5: 20 concurrent exchanges naming an unknown kid while the JWKS
/// is slow made 20 fetches; one fetch is in flight per issuer and every waiter shares it.
#[test]
fn concurrent_exchanges_for_an_unknown_kid_share_one_fetch() {
    let idp = Idp::serving(Jwks::ServeAfter(Duration::from_millis(300)));
    let (e, _dir) = env_for(&idp);
    let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
    let unknown = Idp::sign(&stranger, json!({"alg": "ES256", "kid": "no-such-kid"}), &claims());
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let waiting: Vec<_> = (0..20).map(|_| s.spawn(|| run(exchange(&e, request(&unknown))))).collect();
        waiting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_problem(a, StatusCode::UNAUTHORIZED);
        assert!(a.body["detail"].as_str().unwrap().contains("not in the JWKS"), "{}", a.raw);
        generic(a, &idp);
    }
    assert_eq!(idp.fetched(), 1, "one fetch shared by 20 waiters");
    // The keys it brought serve the known kid with no further fetch; the unknown kid again,
    // within 30 s, fetches nothing.
    run(async {
        assert_eq!(exchange(&e, request(&idp.token(&claims()))).await.status, StatusCode::OK);
        assert_problem(&exchange(&e, request(&unknown)).await, StatusCode::UNAUTHORIZED);
    });
    assert_eq!(idp.fetched(), 1);
}

/// Finding 5: failures are throttled like successes (each failing exchange fetched again), and
/// the caller sees a generic 503 while the URL and the upstream's answer go to the log only.
#[test]
fn failed_key_fetches_are_throttled_and_not_told_to_the_caller() {
    for how in [Jwks::Fail, Jwks::Huge] {
        let idp = Idp::serving(how);
        let (e, _dir) = env_for(&idp);
        run(async {
            for _ in 0..5 {
                let a = exchange(&e, request(&idp.token(&claims()))).await;
                assert_problem(&a, StatusCode::SERVICE_UNAVAILABLE);
                generic(&a, &idp);
            }
        });
        assert_eq!(idp.fetched(), 1, "one attempt per 30 s, failed or not");
    }
}

/// Finding 5: a JWKS server that accepts and never answers holds nobody past the fetch's
/// deadline (connect, read and body together): the exchange answers 503. The bound below is
/// only generous insurance against hanging the suite; the outcome is what is asserted.
#[test]
fn a_jwks_server_that_never_answers_is_cut_off_at_the_deadline() {
    let idp = Idp::serving(Jwks::Hang);
    let (e, dir) = env_for(&idp);
    let token = idp.token(&claims());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _dir = dir;
        let answers = std::thread::scope(|s| {
            let two: Vec<_> = (0..2).map(|_| s.spawn(|| run(exchange(&e, request(&token))))).collect();
            two.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        let _ = tx.send(answers);
    });
    let answers = rx.recv_timeout(Duration::from_secs(60)).expect("the exchange answers within its deadline");
    for a in &answers {
        assert_problem(a, StatusCode::SERVICE_UNAVAILABLE);
        generic(a, &idp);
    }
    assert_eq!(idp.fetched(), 1);
}

/// Issue 20, with trusted issuers configured (tests/errors.rs walks the route without them): an
/// over-limit body is a 413 and a body of another type than form or JSON a 415, each as
/// problem+json, never "invalid form body".
#[test]
fn body_errors_at_the_exchange_are_problem_json() {
    run(async {
        let idp = Idp::start();
        let dir = tempfile::tempdir().unwrap();
        let path = config_file(dir.path(), json!([issuer(&idp)]));
        let e = env_with(|c| {
            c.exchange_config = Some(path);
            c.body_limit = 1024;
        });
        let big = "x".repeat(4096);
        for (content_type, body, status) in [
            ("application/json", format!("{{\"pad\":\"{big}\"}}"), StatusCode::PAYLOAD_TOO_LARGE),
            ("application/x-www-form-urlencoded", format!("pad={big}"), StatusCode::PAYLOAD_TOO_LARGE),
            ("text/plain", "grant_type=x".to_owned(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("application/xml", "<x/>".to_owned(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ] {
            let req = TestRequest::post()
                .uri("/v1/exchange")
                .insert_header(("Content-Type", content_type))
                .set_payload(body);
            assert_problem(&send(&e, req).await, status);
        }
        // Without a Content-Type the body is read as RFC 8693's form.
        let req = TestRequest::post().uri("/v1/exchange").set_payload("grant_type=password");
        let a = send(&e, req).await;
        assert_problem(&a, StatusCode::BAD_REQUEST);
        assert!(a.body["detail"].as_str().unwrap().contains("form"), "{}", a.raw);
    })
}
