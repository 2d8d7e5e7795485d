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

impl Idp {
    /// An issuer with an ES256 and an EdDSA key, its JWKS served on loopback.
    fn start() -> Idp {
        let es = SigningKey::generate(Algorithm::Es256).unwrap();
        let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let jwks =
            json!({"keys": [es.public_key().unwrap().jwk(), ed.public_key().unwrap().jwk()]}).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
            }
        });
        Idp { es, ed, url, fetches }
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
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), json!([issuer(idp)]));
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

        // A session, asked for with RFC 8693's form encoding.
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
