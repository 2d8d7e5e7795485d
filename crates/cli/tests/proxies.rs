//! Forward auth through real proxies: Debian's nginx (`auth_request`, with the configuration of
//! docs/proxies/nginx.conf) and Debian's Caddy (`forward_auth`, docs/proxies/Caddyfile), each
//! started by the test with its own configuration and temporary directories, in front of a tiny
//! upstream that echoes the request head it receives, and `tessera serve --authz-policy`; and
//! nginx in front of one node of a two-node cluster on PostgreSQL, refusing a token revoked on
//! the other node.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::serve;
use serde_json::{json, Value};
use tessera_testpg::PgServer;

const NGINX_SITE: &str = include_str!("../../../docs/proxies/nginx.conf");
const CADDY_SITE: &str = include_str!("../../../docs/proxies/Caddyfile");

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

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The upstream: answers every request with the head it received; keeps every head.
struct Upstream {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&heads);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    // One request per connection is enough: the answer closes it.
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    kept.lock().unwrap().push(head.clone());
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                        head.len()
                    );
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        Upstream { addr, heads }
    }

    fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// An answer as the client sees it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A header of the request the upstream received (its echo in the body).
    fn upstream_header(&self, name: &str) -> Option<String> {
        self.body.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection, headers as given (so any spelling can be sent).
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n");
    for (n, v) in headers {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        text.push_str("Content-Length: 0\r\n");
    }
    text.push_str("\r\n");
    conn.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Answer { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap();
    }
    out
}

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

fn wait_for(addr: &str, proc: &mut Proc, what: &str) {
    for _ in 0..300 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!("{what} exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} does not listen on {addr}");
}

fn site(template: &str, tessera: &str, upstream: &str, listen: &str) -> String {
    template
        .replace("TESSERA_ADDR", tessera)
        .replace("UPSTREAM_ADDR", upstream)
        .replace("LISTEN_ADDR", listen)
}

/// nginx as a foreground process under `dir`, with docs/proxies/nginx.conf as its only site.
fn start_nginx(dir: &Path, tessera: &str, upstream: &str) -> (Proc, String) {
    let listen = free_addr();
    std::fs::write(dir.join("site.conf"), site(NGINX_SITE, tessera, upstream, &listen)).unwrap();
    let d = dir.display();
    // Run as the user running the test (as root, workers would otherwise switch to nobody and
    // lose access to the private temporary directory).
    let user = if is_root() { "user root;\n" } else { "" };
    let main = format!(
        "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    #[allow(clippy::zombie_processes)] // owned by `Proc`, whose Drop waits
    let child = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (make test installs it: apt-get install nginx-light)");
    let mut proc = Proc(child);
    wait_for(&listen, &mut proc, "nginx");
    (proc, listen)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// Caddy in the foreground with docs/proxies/Caddyfile as its only site, no admin endpoint, its
/// state in `dir` (never the system service's).
fn start_caddy(dir: &Path, tessera: &str, upstream: &str) -> (Proc, String) {
    let listen = free_addr();
    // The site answers any host name on its port (`:port`), bound to loopback only.
    let port = listen.rsplit(':').next().unwrap();
    let text = format!(
        "{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}}\n\n{}",
        site(CADDY_SITE, tessera, upstream, &format!(":{port}"))
    );
    std::fs::write(dir.join("Caddyfile"), text).unwrap();
    #[allow(clippy::zombie_processes)] // owned by `Proc`, whose Drop waits
    let child = Command::new("/usr/bin/caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
        .spawn()
        .expect("caddy (make test installs it: apt-get install caddy)");
    let mut proc = Proc(child);
    wait_for(&listen, &mut proc, "caddy");
    (proc, listen)
}

fn post(url: &str, bearer: &str, body: Value) -> (u16, Value) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut res = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {bearer}"))
        .send(body.to_string())
        .unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
}

/// A token minted by the admin: (token, tid).
fn mint(url: &str, admin: &str, body: Value) -> (String, String) {
    let (status, v) = post(&format!("{url}/v1/tokens"), admin, body);
    assert_eq!(status, 201, "{v}");
    (v["token"].as_str().unwrap().to_owned(), v["tid"].as_str().unwrap().to_owned())
}

fn attenuate(token: &str, args: &[&str]) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tessera")).arg("attenuate").args(args).arg(token).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proxy {
    Nginx,
    Caddy,
}

/// Every case of issue 23 through one proxy.
fn through(proxy: Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (_serve, url, admin) =
        serve(dir.path(), &["--authz-policy", policy.to_str().unwrap(), "--trusted-proxy", "127.0.0.1/32"]);
    let tessera = url.trim_start_matches("http://").to_owned();
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
    through(Proxy::Nginx);
}

#[test]
fn forward_auth_through_caddy() {
    through(Proxy::Caddy);
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
