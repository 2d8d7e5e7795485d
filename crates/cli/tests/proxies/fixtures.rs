//! The fixtures of the proxy tests (`proxies.rs`): processes killed when dropped, an upstream
//! that echoes the request head it receives, raw HTTP/1.1 requests, and nginx and Caddy started
//! in the foreground with the documented configurations (docs/proxies/).

#![allow(dead_code)] // not every test uses every fixture
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub(crate) const NGINX_SITE: &str = include_str!("../../../../docs/proxies/nginx.conf");
pub(crate) const CADDY_SITE: &str = include_str!("../../../../docs/proxies/Caddyfile");

/// A process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The upstream: answers every request with the head it received; keeps every head.
pub(crate) struct Upstream {
    pub(crate) addr: String,
    pub(crate) heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub(crate) fn start() -> Upstream {
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

    pub(crate) fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// A server that keeps its connections alive (HTTP/1.1, no `Connection: close`): answers every
/// request 200 with `headers` (each line ending in CRLF) and `body`, and counts the connections
/// it accepted and the requests it answered. Requests must have no body.
pub(crate) struct KeepAlive {
    pub(crate) addr: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl KeepAlive {
    pub(crate) fn start(headers: &'static str, body: &'static str) -> KeepAlive {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        // One request head, then its answer; the connection stays open.
                        let mut lines = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            lines += 1;
                        }
                        if lines == 0 {
                            return;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{headers}\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        KeepAlive { addr, connections, requests }
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An answer as the client sees it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A header of the request the upstream received (its echo in the body).
    pub(crate) fn upstream_header(&self, name: &str) -> Option<String> {
        self.body.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection, headers as given (so any spelling can be sent).
pub(crate) fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
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

pub(crate) fn dechunk(mut s: &str) -> String {
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

pub(crate) fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

pub(crate) fn wait_for(addr: &str, proc: &mut Proc, what: &str) {
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

pub(crate) fn site(template: &str, tessera: &str, upstream: &str, listen: &str) -> String {
    template
        .replace("TESSERA_ADDR", tessera)
        .replace("UPSTREAM_ADDR", upstream)
        .replace("LISTEN_ADDR", listen)
}

/// nginx as a foreground process under `dir`, with docs/proxies/nginx.conf as its only site.
pub(crate) fn start_nginx(dir: &Path, tessera: &str, upstream: &str) -> (Proc, String) {
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

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// Caddy in the foreground with docs/proxies/Caddyfile as its only site, no admin endpoint, its
/// state in `dir` (never the system service's).
pub(crate) fn start_caddy(dir: &Path, tessera: &str, upstream: &str) -> (Proc, String) {
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

pub(crate) fn post(url: &str, bearer: &str, body: Value) -> (u16, Value) {
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
pub(crate) fn mint(url: &str, admin: &str, body: Value) -> (String, String) {
    let (status, v) = post(&format!("{url}/v1/tokens"), admin, body);
    assert_eq!(status, 201, "{v}");
    (v["token"].as_str().unwrap().to_owned(), v["tid"].as_str().unwrap().to_owned())
}

pub(crate) fn attenuate(token: &str, args: &[&str]) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tessera")).arg("attenuate").args(args).arg(token).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
