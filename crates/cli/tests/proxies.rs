//! Forward auth through real proxies: Debian's nginx (`auth_request`, with the configuration of
//! docs/proxies/nginx.conf, to Tessera over loopback TCP and over its Unix socket) and Debian's Caddy (`forward_auth`, docs/proxies/Caddyfile), each
//! started by the test with its own configuration and temporary directories, in front of a tiny
//! upstream that echoes the request head it receives, and `tessera serve --authz-policy`; and
//! nginx in front of one node of a two-node cluster on PostgreSQL, refusing a token revoked on
//! the other node.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
#[path = "proxies/fixtures.rs"]
mod fixtures;

use common::serve;
use fixtures::{
    attenuate, mint, post, request, start_caddy, start_nginx, KeepAlive, Upstream, CADDY_SITE, NGINX_SITE,
};
use serde_json::{json, Value};
use tessera_testpg::PgServer;

const POLICY: &str = r#"
[[rule]]
host = "*"
prefix = "/files"

[[rule]]
host = "*"
prefix = "/other"

[[rule]]
host = "*"
prefix = "/health"
public = true
"#;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proxy {
    Nginx,
    Caddy,
}

/// How the proxy reaches Tessera.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Link {
    /// Loopback TCP, the proxy trusted as `--trusted-proxy 127.0.0.1/32`.
    Tcp,
    /// Tessera's Unix socket (`--listen unix:PATH`), trusted as `--trusted-proxy unix`; the
    /// documented nginx configuration with `TESSERA_ADDR` = `unix:PATH`.
    Socket,
}

/// Every case of issue 23 through one proxy.
fn through(proxy: Proxy, link: Link) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let socket = format!("unix:{}", dir.path().join("tessera.sock").display());
    let trust = match link {
        Link::Tcp => vec!["--trusted-proxy", "127.0.0.1/32"],
        Link::Socket => vec!["--listen", &socket, "--trusted-proxy", "unix"],
    };
    let (_serve, url, admin) =
        serve(dir.path(), &[&["--authz-policy", policy.to_str().unwrap()], &trust[..]].concat());
    // The management calls below go over TCP (the first `listening on` line); the proxy's over
    // the link under test.
    let tessera = match link {
        Link::Tcp => url.trim_start_matches("http://").to_owned(),
        Link::Socket => socket.clone(),
    };
    let upstream = Upstream::start();
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir(&proxy_dir).unwrap();
    let (_proxy, front) = match proxy {
        Proxy::Nginx => start_nginx(&proxy_dir, &tessera, &upstream.addr),
        Proxy::Caddy => start_caddy(&proxy_dir, &tessera, &upstream.addr),
    };
    let get = |path: &str, headers: &[(&str, &str)]| request(&front, "GET", path, headers);
    let bearer = |t: &str| format!("Bearer {t}");

    // Allowed: the upstream gets the identity.
    let (reader, reader_tid) = mint(
        &url,
        &admin,
        json!({"subject": "alice", "operations": ["read"], "resources": ["files/*"], "claims": {"team": "blúe"}}),
    );
    let a = get("/files/a?x=1", &[("Authorization", &bearer(&reader))]);
    assert_eq!(a.status, 200, "{proxy:?} allowed: {a:?}");
    assert!(a.body.starts_with("GET /files/a?x=1 "), "{proxy:?}: {a:?}");
    assert_eq!(
        a.upstream_header("Host").as_deref(),
        Some("app.example"),
        "{proxy:?}: the host the policy judged"
    );
    assert_eq!(a.upstream_header("X-Tessera-Subject").as_deref(), Some("alice"), "{proxy:?}: {}", a.body);
    assert_eq!(a.upstream_header("X-Tessera-Tid"), Some(reader_tid.clone()), "{proxy:?}");
    let claims: Value = serde_json::from_str(&a.upstream_header("X-Tessera-Claims").unwrap()).unwrap();
    assert_eq!(claims, json!({"team": "blúe"}), "{proxy:?}");

    // Refusals never reach the upstream.
    let before = upstream.count();
    let a = get("/files/a", &[]);
    assert_eq!(a.status, 401, "{proxy:?} no token: {a:?}");
    assert_eq!(a.header("WWW-Authenticate"), Some("Bearer"), "{proxy:?}");
    let a = get("/files/a", &[("Authorization", "Bearer not-a-token")]);
    assert_eq!(a.status, 401, "{proxy:?} malformed: {a:?}");
    let a = request(&front, "PUT", "/files/a", &[("Authorization", &bearer(&reader))]);
    assert_eq!(a.status, 403, "{proxy:?} read-only writing: {a:?}");
    let a = get("/other/a", &[("Authorization", &bearer(&reader))]);
    assert_eq!(a.status, 403, "{proxy:?} wrong resource: {a:?}");
    let a = get("/unruled", &[("Authorization", &bearer(&reader))]);
    assert_eq!(a.status, 403, "{proxy:?} unmatched: {a:?}");
    for sneaky in ["/health/../files/a", "/health/%2e%2e/files/a", "/health%2F..%2Ffiles%2Fa", "/health//x"] {
        let a = get(sneaky, &[]);
        assert!(a.status == 403 || a.status == 400, "{proxy:?} {sneaky}: {a:?}");
    }
    assert_eq!(upstream.count(), before, "{proxy:?}: a refused request reached the upstream");

    // Public: no token, every identity header empty or absent.
    let a = get("/health/live", &[]);
    assert_eq!(a.status, 200, "{proxy:?} public: {a:?}");
    assert_eq!(a.upstream_header("X-Tessera-Subject").unwrap_or_default(), "", "{proxy:?}");

    // Client network: the proxy names the client; a client's own X-Forwarded-For changes nothing.
    // (Over the socket, `near` passes only because `--trusted-proxy unix` believes nginx's
    // X-Forwarded-For: the socket itself has no address.)
    let (far, _) = mint(&url, &admin, json!({"subject": "bob", "client_ips": ["10.0.0.0/8"]}));
    let a = get("/files/a", &[("Authorization", &bearer(&far))]);
    assert_eq!(a.status, 403, "{proxy:?} wrong network: {a:?}");
    let a = get("/files/a", &[("Authorization", &bearer(&far)), ("X-Forwarded-For", "10.1.2.3")]);
    assert_eq!(a.status, 403, "{proxy:?} forged X-Forwarded-For: {a:?}");
    let (near, _) = mint(&url, &admin, json!({"subject": "bob", "client_ips": ["127.0.0.1"]}));
    assert_eq!(get("/files/a", &[("Authorization", &bearer(&near))]).status, 200, "{proxy:?}");

    // Revoked.
    let (doomed, doomed_tid) = mint(&url, &admin, json!({"subject": "carol"}));
    assert_eq!(get("/files/a", &[("Authorization", &bearer(&doomed))]).status, 200, "{proxy:?}");
    let (status, v) = post(&format!("{url}/v1/tokens/{doomed_tid}/revoke"), &admin, json!({}));
    assert_eq!(status, 200, "{v}");
    let a = get("/files/a", &[("Authorization", &bearer(&doomed))]);
    assert_eq!(a.status, 401, "{proxy:?} revoked: {a:?}");

    // Budget spent: the 429 reaches the client with its headers, not the upstream.
    let (budget, _) = mint(&url, &admin, json!({"subject": "dave", "rate_limit": "2/1m"}));
    for _ in 0..2 {
        let a = get("/files/a", &[("Authorization", &bearer(&budget))]);
        assert_eq!(a.status, 200, "{proxy:?} budget: {a:?}");
    }
    let before = upstream.count();
    let a = get("/files/a", &[("Authorization", &bearer(&budget))]);
    assert_eq!(a.status, 429, "{proxy:?} budget spent: {a:?}");
    let retry: u64 = a.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{proxy:?}: {a:?}");
    assert!(a.header("RateLimit").unwrap().contains("remaining=0"), "{proxy:?}: {a:?}");
    assert!(a.header("RateLimit-Policy").unwrap().contains("2;w=60"), "{proxy:?}: {a:?}");
    assert_eq!(upstream.count(), before, "{proxy:?}");

    // An attenuated copy: narrower, and exactly as narrow.
    let (writer, _) = mint(
        &url,
        &admin,
        json!({"subject": "erin", "operations": ["read", "write"], "resources": ["files/*"]}),
    );
    let narrow = attenuate(&writer, &["--read-only", "--resource", "files/a"]);
    let with = |t: &str| vec![("Authorization".to_owned(), bearer(t))];
    let call = |m: &str, p: &str, t: &str| {
        let h = with(t);
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        request(&front, m, p, &h).status
    };
    assert_eq!(call("GET", "/files/a", &narrow), 200, "{proxy:?}");
    assert_eq!(call("GET", "/files/b", &narrow), 403, "{proxy:?}");
    assert_eq!(call("PUT", "/files/a", &narrow), 403, "{proxy:?}");
    assert_eq!(call("PUT", "/files/a", &writer), 200, "{proxy:?}");

    // Forged identity headers: refused, or dropped by the proxy; never seen by the upstream.
    for name in ["X-Tessera-Subject", "X_Tessera_Subject", "x-tessera-tid", "X-Tessera-Claims"] {
        for path in ["/files/a", "/health"] {
            let a = get(path, &[("Authorization", &bearer(&reader)), (name, "mallory")]);
            match (proxy, name.contains('_')) {
                // nginx drops header names with underscores before anyone sees them.
                (Proxy::Nginx, true) => assert_eq!(a.status, 200, "{proxy:?} {name} {path}: {a:?}"),
                _ => assert_eq!(a.status, 403, "{proxy:?} {name} {path}: {a:?}"),
            }
        }
    }
    let heads = upstream.heads.lock().unwrap();
    assert!(!heads.iter().any(|h| h.contains("mallory")), "{proxy:?}: a forged header reached the upstream");
}

#[test]
fn forward_auth_through_nginx() {
    through(Proxy::Nginx, Link::Tcp);
}

#[test]
fn forward_auth_through_nginx_over_a_unix_socket() {
    through(Proxy::Nginx, Link::Socket);
}

#[test]
fn forward_auth_through_caddy() {
    through(Proxy::Caddy, Link::Tcp);
}

/// Revoked on another cluster node: two nodes on one PostgreSQL, nginx (the documented
/// configuration) in front of node A only; a token revoked on node B is refused through nginx
/// within a second of B's answer.
#[test]
fn forward_auth_through_nginx_refuses_a_token_revoked_on_another_node() {
    let pg = PgServer::start();
    let db = pg.create_database();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    // Every node of a cluster has the same master key: here one key file, made by A's first start.
    let key = dir.path().join("master.key");
    let node = |name: &str, extra: &[&str]| {
        let node_dir = dir.path().join(name);
        std::fs::create_dir(&node_dir).unwrap();
        let mut args = vec!["--database", &db, "--master-key-file", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        serve(&node_dir, &args)
    };
    let (_a, url_a, admin) =
        node("a", &["--authz-policy", policy.to_str().unwrap(), "--trusted-proxy", "127.0.0.1/32"]);
    let (_b, url_b, _) = node("b", &[]);
    assert!(!admin.is_empty(), "node A made the cluster's first key and admin token");
    let upstream = Upstream::start();
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir(&proxy_dir).unwrap();
    let (_nginx, front) = start_nginx(&proxy_dir, url_a.trim_start_matches("http://"), &upstream.addr);

    let (token, tid) = mint(&url_b, &admin, json!({"subject": "carol", "resources": ["files/*"]}));
    let auth = format!("Bearer {token}");
    let get = || request(&front, "GET", "/files/a", &[("Authorization", &auth)]);
    // Allowed through A (minted on B: A learns of it from the database), and again (A's
    // signature memo now holds the token).
    for _ in 0..2 {
        let a = get();
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.upstream_header("X-Tessera-Tid"), Some(tid.clone()));
    }
    let (status, v) = post(&format!("{url_b}/v1/tokens/{tid}/revoke"), &admin, json!({}));
    assert_eq!(status, 200, "{v}");
    let revoked = Instant::now();
    loop {
        let a = get();
        if a.status == 401 {
            break;
        }
        assert_eq!(a.status, 200, "{a:?}");
        // A deadline, not a measurement.
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "still allowed through nginx 1 s after B revoked it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // From then on, refused every time, and never at the upstream.
    let before = upstream.count();
    for _ in 0..3 {
        assert_eq!(get().status, 401);
    }
    assert_eq!(upstream.count(), before);
}

/// The documented nginx configuration keeps its connections to Tessera and to the upstream
/// alive: twenty client requests, each on a connection of its own, reuse one connection to each
/// (issue 23's cost: without the upstream's pool every request paid a new TCP connection, and
/// forward auth measured 0.27 of nginx alone). Stand-ins that count connections play both parts.
#[test]
fn nginx_keeps_its_connections_to_tessera_and_the_upstream_alive() {
    let dir = tempfile::tempdir().unwrap();
    let authorizer =
        KeepAlive::start("X-Tessera-Subject: s\r\nX-Tessera-Tid: 1\r\nX-Tessera-Claims: \r\n", "");
    let upstream = KeepAlive::start("Content-Type: text/plain\r\n", "ok\n");
    let (_nginx, front) = start_nginx(dir.path(), &authorizer.addr, &upstream.addr);
    for _ in 0..20 {
        let a = request(&front, "GET", "/files/a", &[("Authorization", "Bearer t")]);
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "{a:?}");
    }
    assert_eq!((authorizer.requests(), upstream.requests()), (20, 20));
    // nginx runs one worker here: one connection each, a second at most should one be cut.
    assert!(
        authorizer.connections() <= 2,
        "{} connections to Tessera for 20 requests",
        authorizer.connections()
    );
    assert!(
        upstream.connections() <= 2,
        "{} connections to the upstream for 20 requests",
        upstream.connections()
    );
}

/// docs/PROXIES.md shows the very configurations the tests run.
#[test]
fn proxies_doc_shows_the_tested_configurations() {
    let doc = include_str!("../../../docs/PROXIES.md");
    assert!(
        doc.contains(NGINX_SITE.trim_end()),
        "docs/PROXIES.md must include docs/proxies/nginx.conf verbatim"
    );
    assert!(
        doc.contains(CADDY_SITE.trim_end()),
        "docs/PROXIES.md must include docs/proxies/Caddyfile verbatim"
    );
}

/// Envoy's ext_authz HTTP mode (no Envoy here: its calls as documented, made directly): the
/// original method is the request's, the original path what follows `/v1/authz/envoy`.
#[test]
fn envoy_endpoint_reads_the_request_itself() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (_serve, url, admin) = serve(dir.path(), &["--authz-policy", policy.to_str().unwrap()]);
    let tessera = url.trim_start_matches("http://").to_owned();
    let (reader, tid) =
        mint(&url, &admin, json!({"subject": "alice", "operations": ["read"], "resources": ["files/*"]}));
    let auth = format!("Bearer {reader}");
    let a = request(&tessera, "GET", "/v1/authz/envoy/files/a?x=1", &[("Authorization", &auth)]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("X-Tessera-Subject"), Some("alice"));
    assert_eq!(a.header("X-Tessera-Tid"), Some(tid.as_str()));
    assert_eq!(a.header("X-Tessera-Claims"), Some(""), "every identity header on every 200");
    assert_eq!(request(&tessera, "PUT", "/v1/authz/envoy/files/a", &[("Authorization", &auth)]).status, 403);
    assert_eq!(request(&tessera, "GET", "/v1/authz/envoy/files/a", &[]).status, 401);
    let public = request(&tessera, "GET", "/v1/authz/envoy/health", &[]);
    assert_eq!(public.status, 200, "{public:?}");
    assert_eq!(public.header("X-Tessera-Subject"), Some(""));
    for sneaky in
        ["/v1/authz/envoy/health/%2e%2e/files/a", "/v1/authz/envoy/health//files", "/v1/authz/envoy"]
    {
        let a = request(&tessera, "GET", sneaky, &[]);
        assert_eq!(a.status, 403, "{sneaky}: {a:?}");
    }
    // Each endpoint reads its own family only: the other family's headers are not an answer.
    let forward_headers = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/health")];
    assert_eq!(request(&tessera, "GET", "/v1/authz/nginx", &forward_headers).status, 400);
    let nginx_headers = [("X-Original-Method", "GET"), ("X-Original-URI", "/health")];
    assert_eq!(request(&tessera, "GET", "/v1/authz/forward", &nginx_headers).status, 400);
    assert_eq!(request(&tessera, "GET", "/v1/authz/nginx", &nginx_headers).status, 200);
    assert_eq!(request(&tessera, "GET", "/v1/authz/forward", &forward_headers).status, 200);
    // Two values would let a client choose: refused.
    let twice = [("X-Original-Method", "GET"), ("X-Original-URI", "/health"), ("X-Original-URI", "/files/a")];
    assert_eq!(request(&tessera, "GET", "/v1/authz/nginx", &twice).status, 400);
}

/// Without `--authz-policy` the endpoints say so (404 problem), whatever the request.
#[test]
fn authz_without_a_policy_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, _) = serve(dir.path(), &[]);
    let tessera = url.trim_start_matches("http://").to_owned();
    for path in ["/v1/authz/nginx", "/v1/authz/forward", "/v1/authz/envoy/files/a"] {
        let a = request(&tessera, "GET", path, &[("X-Original-Method", "GET"), ("X-Original-URI", "/a")]);
        assert_eq!(a.status, 404, "{path}: {a:?}");
        assert!(a.body.contains("--authz-policy"), "{path}: {a:?}");
    }
    // A policy that does not load stops the start, naming the line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nhost = \"*\"\nprefx = \"/a\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--authz-policy"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("prefx"), "{err}");
}

/// A method-override header (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`)
/// would make a framework run a POST as another method while the policy judged the POST:
/// refused (403), on every endpoint, public paths included.
#[test]
fn authz_refuses_method_override_headers() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (_serve, url, admin) = serve(dir.path(), &["--authz-policy", policy.to_str().unwrap()]);
    let tessera = url.trim_start_matches("http://").to_owned();
    let (writer, _) = mint(
        &url,
        &admin,
        json!({"subject": "w", "operations": ["read", "write"], "resources": ["files/*"]}),
    );
    let auth = format!("Bearer {writer}");
    let plain = request(&tessera, "POST", "/v1/authz/envoy/files/a", &[("Authorization", &auth)]);
    assert_eq!(plain.status, 200, "{plain:?}");
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "x-http-method-override",
        // CGI, FastCGI and WSGI upstreams read these as the same variable.
        "X_HTTP_METHOD_OVERRIDE",
        "X_HTTP_METHOD",
        "X_METHOD_OVERRIDE",
    ] {
        let a = request(
            &tessera,
            "POST",
            "/v1/authz/envoy/files/a",
            &[("Authorization", &auth), (name, "DELETE")],
        );
        assert_eq!(a.status, 403, "{name}: {a:?}");
        let n = request(
            &tessera,
            "GET",
            "/v1/authz/nginx",
            &[("X-Original-Method", "GET"), ("X-Original-URI", "/health"), (name, "DELETE")],
        );
        assert_eq!(n.status, 403, "{name} on a public path: {n:?}");
    }
    for q in [
        "_method=DELETE",
        "%5Fmethod=DELETE",
        "%5fmethod=DELETE",
        ".method=DELETE",
        "[method=DELETE",
        "a=1;_method=DELETE",
    ] {
        let path = format!("/v1/authz/envoy/files/a?{q}");
        let r = request(&tessera, "POST", &path, &[("Authorization", &auth)]);
        assert_eq!(r.status, 403, "{q}: {r:?}");
    }
    let ok = request(&tessera, "POST", "/v1/authz/envoy/files/a?a=1;b=2", &[("Authorization", &auth)]);
    assert_eq!(ok.status, 200, "{ok:?}");
}

/// A claim holding DEL (0x7f) or a C1 control character comes back escaped in
/// `X-Tessera-Claims` (a valid header value), never a 500.
#[test]
fn authz_claims_with_control_characters_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (_serve, url, admin) = serve(dir.path(), &["--authz-policy", policy.to_str().unwrap()]);
    let tessera = url.trim_start_matches("http://").to_owned();
    let claims = json!({"note": "a\u{7f}b\u{85}c\u{1}d"});
    let (reader, _) = mint(
        &url,
        &admin,
        json!({"subject": "r", "operations": ["read"], "resources": ["files/*"], "claims": claims}),
    );
    let auth = format!("Bearer {reader}");
    let a = request(&tessera, "GET", "/v1/authz/envoy/files/a", &[("Authorization", &auth)]);
    assert_eq!(a.status, 200, "{a:?}");
    let got: Value = serde_json::from_str(a.header("X-Tessera-Claims").unwrap()).unwrap();
    assert_eq!(got, claims);
}
