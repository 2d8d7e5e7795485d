//! The log of the real binary: one access line per request (JSON mode, every field), text mode
//! by default, and no token, refresh token or secret anywhere in a debug-level log of a realistic
//! session of requests.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod binary;

use std::path::Path;

use serde_json::{json, Value};
use tessera_core::Token;
use tessera_testserver::TestServer;

/// The file in the test's directory that the server's stderr, its log, goes to.
fn log_file(dir: &Path) -> std::path::PathBuf {
    dir.join("stderr.log")
}

fn start(dir: &Path, extra: &[&str]) -> TestServer {
    TestServer::start(
        binary::command(&dir.join("data"), extra)
            .env_remove("RUST_LOG")
            .env_remove("TESSERA_LOG_LEVEL")
            .env_remove("TESSERA_LOG_FORMAT")
            .stderr(std::fs::File::create(log_file(dir)).unwrap()),
    )
}

/// SIGTERM, wait, and the whole log.
fn stop(mut server: TestServer, dir: &Path) -> String {
    server.terminate();
    std::fs::read_to_string(log_file(dir)).unwrap()
}

struct Client {
    agent: ureq::Agent,
    base: String,
    sent: usize,
}

impl Client {
    fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        Client { agent, base: base.to_owned(), sent: 0 }
    }

    /// (status, X-Request-Id, JSON body)
    fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, String)>,
    ) -> (u16, String, Value) {
        self.sent += 1;
        let url = format!("{}{path}", self.base);
        let mut res = match body {
            Some((ct, b)) => {
                let mut r = self.agent.post(&url).header("Content-Type", ct);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(b).unwrap()
            }
            None => {
                assert_eq!(method, "GET");
                let mut r = self.agent.get(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call().unwrap()
            }
        };
        let status = res.status().as_u16();
        let id = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        let text = res.body_mut().read_to_string().unwrap();
        (status, id, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post(&mut self, path: &str, bearer: Option<&str>, body: Value) -> (u16, String, Value) {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        self.call("POST", path, &headers, Some(("application/json", body.to_string())))
    }
}

fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .filter(|v| v["target"] == "tessera::access")
        .collect()
}

#[test]
fn one_json_access_line_per_request_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--log-format", "json"]);
    let admin = server.admin().unwrap().to_owned();
    let mut c = Client::new(server.url());
    let (s, id, _) = c.call("GET", "/health", &[("X-Request-Id", "probe-1")], None);
    assert_eq!((s, id.as_str()), (200, "probe-1"));
    let (s, mint_id, minted) =
        c.post("/v1/tokens", Some(&admin), json!({"subject": "alice", "operations": ["read"]}));
    assert_eq!(s, 201, "{minted}");
    let tid = minted["tid"].as_str().unwrap().to_owned();
    let (s, revoke_id, _) = c.post(&format!("/v1/tokens/{tid}/revoke?reason=abc"), Some(&admin), json!({}));
    assert_eq!(s, 200);
    let (s, missing_id, _) = c.call("GET", "/nothing/here?x=1", &[], None);
    assert_eq!(s, 404);
    let log = stop(server, dir.path());
    let lines = access_lines(&log);
    assert_eq!(lines.len(), c.sent, "one line per request:\n{log}");
    for l in &lines {
        assert_eq!(l["level"], "INFO", "{l}");
        for field in ["timestamp", "method", "route", "status", "duration_ms", "request_id", "client"] {
            assert!(!l[field].is_null(), "{field} missing: {l}");
        }
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    let by_id =
        |id: &str| lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("{id}: {log}"));
    let health = by_id("probe-1");
    assert_eq!(
        (&health["method"], &health["route"], &health["status"]),
        (&json!("GET"), &json!("/health"), &json!(200))
    );
    assert!(
        health.get("subject").is_none() && health.get("tid").is_none(),
        "no credential, no subject: {health}"
    );
    let mint = by_id(&mint_id);
    assert_eq!(
        (&mint["method"], &mint["route"], &mint["status"]),
        (&json!("POST"), &json!("/v1/tokens"), &json!(201))
    );
    assert_eq!(mint["subject"], "admin");
    assert!(mint["tid"].as_str().is_some_and(|t| t.len() == 32), "{mint}");
    let revoke = by_id(&revoke_id);
    assert_eq!(revoke["route"], "/v1/tokens/{tid}/revoke", "the template, not the path: {revoke}");
    assert!(!revoke.to_string().contains(&tid), "the path's id is not in the line: {revoke}");
    assert!(!log.contains("reason=abc") && !log.contains("x=1"), "no query string: {log}");
    let missing = by_id(&missing_id);
    assert_eq!((&missing["route"], &missing["status"]), (&json!("unmatched"), &json!(404)));
    assert!(!log.contains("/nothing/here"), "no raw path: {log}");
}

#[test]
fn text_is_the_default_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = Client::new(server.url());
    c.call("GET", "/health", &[("X-Request-Id", "text-probe")], None);
    let log = stop(server, dir.path());
    let line =
        log.lines().find(|l| l.contains("request_id=\"text-probe\"")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(" INFO tessera::access: "), "{line}");
    assert!(line.contains("route=\"/health\"") && line.contains("status=200"), "{line}");
    assert!(serde_json::from_str::<Value>(line).is_err());
    assert!(log.lines().any(|l| l.contains("config: listen=")), "{log}");
}

/// Every `window`-byte piece of `secret` (overlapping), so a log holding part of one is caught.
fn pieces(secret: &str) -> Vec<&str> {
    const WINDOW: usize = 20;
    if secret.len() <= WINDOW {
        return vec![secret];
    }
    (0..=secret.len() - WINDOW).step_by(WINDOW / 2).map(|i| &secret[i..i + WINDOW]).collect()
}

/// A realistic run at debug level: tokens in `Authorization`, in bodies, in discharge headers;
/// secrets in query strings; refusals. Nothing the client sent as a credential or secret, and
/// nothing the service issued as one, is anywhere in the log.
#[test]
fn no_token_or_secret_reaches_the_log_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        start(dir.path(), &["--log-format", "json", "--log-level", "debug", "--refresh-grace", "0s"]);
    let admin = server.admin().unwrap().to_owned();
    let mut c = Client::new(server.url());
    let mut secrets: Vec<String> = vec![admin.clone()];

    // Mint, attenuate offline, verify (token in the body; another in a query string).
    let (s, _, minted) = c.post(
        "/v1/tokens",
        Some(&admin),
        json!({"subject": "alice", "operations": ["read", "links.create", "sessions.create"], "ttl": "1h"}),
    );
    assert_eq!(s, 201, "{minted}");
    let alice = minted["token"].as_str().unwrap().to_owned();
    let narrow = Token::decode(&alice).unwrap().attenuate("allow read").unwrap().encode();
    let (s, _, _) = c.post("/v1/verify", None, json!({"token": narrow, "context": {"operation": "read"}}));
    assert_eq!(s, 200);
    let q_secret = "qs-Secret-7f3a9c1e55d2";
    let (s, _, _) = c.post(
        &format!("/v1/verify?token={alice}&api_key={q_secret}"),
        None,
        json!({"token": alice, "context": {"operation": "write"}}),
    );
    assert_eq!(s, 403);
    secrets.extend([alice.clone(), narrow.clone(), q_secret.to_owned()]);

    // Management with the token in Authorization, a discharge header, and a bad credential.
    let auth = format!("Bearer {alice}");
    let (s, _, _) = c.call("GET", "/v1/whoami", &[("Authorization", auth.as_str())], None);
    assert_eq!(s, 200);
    let bogus = "Bearer not-a-token-Secret-b84e1f0a";
    let (s, _, _) = c.call("GET", "/v1/whoami", &[("Authorization", bogus)], None);
    assert_eq!(s, 401);
    let discharge = "discharge-Secret-0c5d2e9a77";
    let (s, _, _) = c.call(
        "GET",
        &format!("/v1/tokens?access_token={admin}"),
        &[("Authorization", auth.as_str()), ("X-Tessera-Discharge", discharge)],
        None,
    );
    assert!(s == 400 || s == 401, "{s}");
    secrets.extend([bogus.to_owned(), discharge.to_owned()]);

    // A session, refreshed twice.
    let (s, _, session) = c.post(
        "/v1/sessions",
        Some(&admin),
        json!({"subject": "fay", "operations": ["read"], "strategy": "refreshBoth"}),
    );
    assert_eq!(s, 201, "{session}");
    let mut refresh = session["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([session["access_token"].as_str().unwrap().to_owned(), refresh.clone()]);
    for _ in 0..2 {
        let (s, _, next) = c.post("/v1/sessions/refresh", None, json!({"refresh_token": refresh}));
        assert_eq!(s, 200, "{next}");
        secrets.push(next["access_token"].as_str().unwrap().to_owned());
        refresh = next["refresh_token"].as_str().unwrap_or(&refresh).to_owned();
        secrets.push(refresh.clone());
    }
    // The first refresh token again: spent (reuse detected, the session revoked).
    let first = secrets.iter().find(|s| **s == session["refresh_token"]).unwrap().clone();
    let (s, _, spent) = c.post("/v1/sessions/refresh", None, json!({"refresh_token": first}));
    assert_eq!(s, 401, "{spent}");

    // The login exchange, refused (no trusted issuer): the ID token stays out of the log.
    let id_token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJpZC1TZWNyZXQtOWQ0NGFhIn0.c2lnLVNlY3JldC0xMjM0NTY3OA";
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={id_token}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
    );
    let (s, _, _) = c.call("POST", "/v1/exchange", &[], Some(("application/x-www-form-urlencoded", form)));
    assert!(s >= 400, "{s}");
    secrets.push(id_token.to_owned());

    // A link for a token, redeemed.
    let (s, _, link) = c.post(
        "/v1/links",
        Some(&alice),
        json!({"subject": "alice", "issue": "token", "operations": ["read"]}),
    );
    assert_eq!(s, 201, "{link}");
    let link_token = link["link_token"].as_str().unwrap().to_owned();
    let (s, _, redeemed) = c.post("/v1/links/redeem", None, json!({"token": link_token}));
    assert_eq!(s, 200, "{redeemed}");
    secrets.extend([link_token.clone(), redeemed["token"].as_str().unwrap().to_owned()]);

    // Revoke alice's family, then use her token again.
    let tid = minted["tid"].as_str().unwrap();
    let (s, _, _) = c.post(&format!("/v1/tokens/{tid}/revoke"), Some(&admin), json!({}));
    assert_eq!(s, 200);
    let (s, _, _) = c.post("/v1/verify", None, json!({"token": narrow, "context": {"operation": "read"}}));
    assert_eq!(s, 401);

    let log = stop(server, dir.path());
    assert_eq!(access_lines(&log).len(), c.sent, "every request logged:\n{log}");
    for secret in &secrets {
        for piece in pieces(secret) {
            assert!(!log.contains(piece), "a piece of a secret ({piece}) is in the log:\n{log}");
        }
    }
    for word in ["Bearer", "Authorization", "authorization", "api_key", "access_token=", "Secret"] {
        assert!(!log.contains(word), "{word} in the log:\n{log}");
    }
}

/// A subject with quotes, a backslash, control characters and non-ASCII text: the JSON line
/// still parses and gives the subject back exactly; the text line quotes and escapes it on one
/// line.
#[test]
fn a_subject_needing_escapes_keeps_json_lines_valid() {
    let subject = "al\"ice\\ \u{1}tab\tnl\n é 日本 😀";
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--log-format", "json", "--admin-subject", subject]);
    let admin = server.admin().unwrap().to_owned();
    let mut c = Client::new(server.url());
    let (s, id, minted) =
        c.post("/v1/tokens", Some(&admin), json!({"subject": "bob", "operations": ["read"]}));
    assert_eq!(s, 201, "{minted}");
    let log = stop(server, dir.path());
    let lines = access_lines(&log);
    let line = lines.iter().find(|l| l["request_id"] == id.as_str()).unwrap_or_else(|| panic!("{log}"));
    assert_eq!(line["subject"], subject, "{line}");
    assert_eq!(line["status"], 201);

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--admin-subject", subject]);
    let admin = server.admin().unwrap().to_owned();
    let mut c = Client::new(server.url());
    let (s, id, _) = c.post("/v1/tokens", Some(&admin), json!({"subject": "bob", "operations": ["read"]}));
    assert_eq!(s, 201);
    let log = stop(server, dir.path());
    let line =
        log.lines().find(|l| l.contains(&format!("request_id=\"{id}\""))).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!(" subject={subject:?} ")), "{line}");
}

/// The access line follows the filter: off for `tessera::access`, none is written while the
/// other info lines still are.
#[test]
fn the_filter_turns_the_access_line_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--log-format", "json", "--log-level", "info,tessera::access=off"]);
    let mut c = Client::new(server.url());
    c.call("GET", "/health", &[], None);
    c.call("GET", "/nothing", &[], None);
    let log = stop(server, dir.path());
    assert!(access_lines(&log).is_empty(), "{log}");
    assert!(log.contains("config: listen="), "{log}");
}
