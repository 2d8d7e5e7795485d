//! The Unix socket listener (`--listen unix:PATH`) of the real `tessera-server` process: served
//! beside the TCP address, its file's mode, a stale file replaced and a live socket or another
//! file refused, removed on SIGTERM; flag combinations that cannot work refused; the client
//! address over the socket: none unless `--trusted-proxy unix`, then the forwarding header's;
//! the per-address limits counting the socket's requests without an address as one client; and a
//! refused, trickled body closing its connection as on TCP.

#![cfg(unix)]
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

#[allow(dead_code)] // its `command` is for the TCP-only tests; this file starts its own
mod binary;

struct Server {
    child: Child,
    /// The TCP URL, when there is one.
    url: Option<String>,
    /// The first-start admin token (empty on a later start).
    admin: String,
    /// The line naming the socket, when there is one.
    socket_line: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera-server"));
    c.args(args).arg("--data-dir").arg(data).env_remove("TESSERA_MASTER_KEY").env_remove("TESSERA_LISTEN");
    c
}

/// Start and read standard output up to the last `listening on` line (the socket's when there
/// is one, printed after the TCP one).
#[allow(clippy::zombie_processes)] // the child is owned by `Server`, whose Drop waits for it
fn start(data: &Path, args: &[&str]) -> Server {
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let mut child = command(data, args).stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let socket = args.iter().any(|a| a.starts_with("unix:"));
    let mut server = Server { child, url: None, admin: String::new(), socket_line: None };
    loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if line.starts_with("Tessera admin token") {
            server.admin = lines.next().unwrap().unwrap();
        } else if let Some(at) = line.strip_prefix("tessera listening on ") {
            if at.starts_with("unix:") {
                server.socket_line = Some(line.clone());
            } else {
                assert!(server.url.is_none() && server.socket_line.is_none(), "the TCP line comes first");
                server.url = Some(at.to_owned());
            }
            if server.socket_line.is_some() || !socket {
                std::thread::spawn(move || lines.for_each(drop));
                return server;
            }
        }
    }
}

/// A start that must fail: its standard error. A server that starts instead is killed after
/// 10 s and the test fails (rather than waiting for it for ever).
fn refused(data: &Path, args: &[&str]) -> String {
    let mut child = command(data, args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "started with {args:?}");
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return err;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("started with {args:?} (still running after 10 s)");
}

fn terminate(mut s: Server) {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for _ in 0..100 {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not stop within 10 s of SIGTERM");
}

/// One HTTP/1.1 request over the socket: (status, head, body).
fn over(socket: &Path, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n");
    for (n, v) in headers {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    text.push_str("\r\n");
    conn.write_all(text.as_bytes()).unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn mint(url: &str, admin: &str, body: Value) -> String {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut res = agent
        .post(&format!("{url}/v1/tokens"))
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {admin}"))
        .send(body.to_string())
        .unwrap();
    let v: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(res.status().as_u16(), 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_socket_is_served_replaced_when_stale_refused_when_live_and_removed_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tessera.sock");
    let at = format!("unix:{}", sock.display());
    let data = dir.path().join("data");
    let args = ["--listen", "127.0.0.1:0", "--listen", &at];

    // Beside TCP: the TCP line unchanged, then the socket's; 0660 by default; gone after SIGTERM.
    let s = start(&data, &args);
    assert!(s.url.as_deref().unwrap().starts_with("http://127.0.0.1:"), "{:?}", s.url);
    assert_eq!(s.socket_line.as_deref(), Some(format!("tessera listening on {at}").as_str()));
    assert_eq!(mode(&sock), 0o660);
    let (status, _, body) = over(&sock, "GET", "/health", &[]);
    assert_eq!(status, 200, "{body}");
    let tcp = s.url.clone().unwrap().trim_start_matches("http://").to_owned();
    terminate(s);
    assert!(!sock.exists(), "a clean stop removes the socket file");
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains(&format!("config: listen={tcp},{at} ")), "what is bound: {log}");

    // A socket file nobody listens on (a process that died) is replaced; --listen-mode applies.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut with_mode = args.to_vec();
    with_mode.extend(["--listen-mode", "0600"]);
    let live = start(&data, &with_mode);
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(over(&sock, "GET", "/health", &[]).0, 200);

    // A socket another server listens on is refused, and that server keeps it.
    let err = refused(&dir.path().join("data2"), &["--listen", &at, "--public-url", "http://t.example"]);
    assert!(err.contains("another server is listening"), "{err}");
    assert_eq!(over(&sock, "GET", "/health", &[]).0, 200, "the live server still answers");
    drop(live);

    // A path that is not a socket is never replaced.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let not_socket = format!("unix:{}", file.display());
    let err =
        refused(&dir.path().join("data3"), &["--listen", &not_socket, "--public-url", "http://t.example"]);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // Only a socket: no TCP line, the public URL as given.
    let only = ["--listen", &at, "--public-url", "https://tokens.example"];
    let s = start(&dir.path().join("data4"), &only);
    assert_eq!(s.url, None);
    let (status, _, body) = over(&sock, "GET", "/.well-known/openid-configuration", &[]);
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], "https://tokens.example");
    terminate(s);
    assert!(!sock.exists());
}

#[test]
fn listener_combinations_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let at = format!("unix:{}", dir.path().join("t.sock").display());
    let long = format!("unix:{}/{}.sock", dir.path().display(), "s".repeat(120));
    let cases: [(&[&str], &str); 7] = [
        (&["--listen", &long, "--public-url", "https://t.example"], "more than a socket address holds"),
        (&["--listen", &at], "give --public-url"),
        (
            &[
                "--listen",
                &at,
                "--public-url",
                "https://t.example",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ],
            "--tls-cert serves HTTPS on a TCP address",
        ),
        (
            &["--listen", "127.0.0.1:0", "--listen-mode", "0600"],
            "--listen-mode sets the mode of the Unix socket",
        ),
        (&["--listen", "127.0.0.1:0", "--trusted-proxy", "unix"], "--trusted-proxy unix trusts"),
        (&["--listen", "127.0.0.1:0,127.0.0.1:0"], "one TCP address at most"),
        (&["--listen", "127.0.0.1:0", "--trusted-proxy", "unix:/x"], "neither a network"),
    ];
    for (args, says) in cases {
        let err = refused(&data, args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.path().join("t.sock").exists(), "no socket left behind");
}

/// Issue 23's socket: a request on it has no client address unless `--trusted-proxy unix`, so a
/// `client-ip` caveat fails and X-Forwarded-For is ignored; with it, the header is believed (and
/// checked: an entry that is not an address is a 400), and the rate limiter counts per client.
#[test]
fn forwarding_header_over_the_socket_is_believed_only_with_trusted_proxy_unix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\nhost = \"*\"\nprefix = \"/files\"\n").unwrap();
    let sock = dir.path().join("t.sock");
    let at = format!("unix:{}", sock.display());
    let base = ["--listen", "127.0.0.1:0", "--listen", &at, "--authz-policy", policy.to_str().unwrap()];
    let authz = |token: &str, xff: Option<&str>| {
        let auth = format!("Bearer {token}");
        let mut h =
            vec![("X-Original-Method", "GET"), ("X-Original-URI", "/files/a"), ("Authorization", &auth)];
        if let Some(x) = xff {
            h.push(("X-Forwarded-For", x));
        }
        over(&sock, "GET", "/v1/authz/nginx", &h).0
    };

    let s = start(&data, &[&base[..], &["--rate-limit", "1"]].concat());
    let url = s.url.clone().unwrap();
    let near = mint(&url, &s.admin, json!({"subject": "a", "client_ips": ["10.0.0.0/8"]}));
    let anywhere = mint(&url, &s.admin, json!({"subject": "b"}));
    // Untrusted socket: the header changes nothing, the caveat fails closed.
    assert_eq!(authz(&near, Some("10.1.2.3")), 403);
    assert_eq!(authz(&anywhere, Some("unknown")), 200, "an untrusted header is not even read");
    // No client address: the socket's requests are one client to the limiter (rate 1, burst 2),
    // whatever address their header names (review: they were not counted at all).
    assert_eq!(authz(&anywhere, Some("10.7.7.7")), 429);
    assert_eq!(authz(&anywhere, None), 429);
    terminate(s);

    let s = start(&data, &[&base[..], &["--trusted-proxy", "unix", "--rate-limit", "1"]].concat());
    assert_eq!(authz(&near, Some("10.1.2.3")), 200, "the trusted socket's header is believed");
    assert_eq!(authz(&near, Some("192.0.2.1")), 403);
    assert_eq!(authz(&near, None), 403, "no header: no client address, fails closed");
    assert_eq!(authz(&near, Some("10.1.2.3:80")), 400, "an entry that is not an address");
    // The socket's own key for the per-address limits (100::/48) cannot be named.
    assert_eq!(authz(&near, Some("100::5")), 400);
    assert_eq!(authz(&near, Some("100:0:0:1::9")), 400);
    // Counted per client named by the header: 10.9.9.9's burst of 2 is spent, 10.8.8.8 has its own.
    assert_eq!(authz(&anywhere, Some("10.9.9.9")), 200);
    assert_eq!(authz(&anywhere, Some("10.9.9.9")), 200);
    assert_eq!(authz(&anywhere, Some("10.9.9.9")), 429);
    assert_eq!(authz(&anywhere, Some("10.8.8.8")), 200);
    drop(s);
}

/// A connection on the socket gets the handle that stops reading a refused body, as a TCP one
/// does (e2e.rs): a chunked body trickled past `--body-timeout` gets its 408 and the server
/// closes the connection while the client is still sending, instead of draining it.
#[test]
fn a_trickled_body_over_the_socket_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let at = format!("unix:{}", sock.display());
    let _s = start(
        &dir.path().join("data"),
        &["--listen", &at, "--public-url", "http://t.example", "--body-timeout", "1s"],
    );
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = "POST /v1/verify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let trickle = binary::Trickle::start(s.try_clone().unwrap());
    let began = std::time::Instant::now();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // ends when the server closes its side
    let took = began.elapsed();
    trickle.stop();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(took < Duration::from_secs(8), "the connection stayed open {took:?} while the client trickled");
}

/// Open a revocation stream on `conn`: its status (the connection stays open, holding the slot).
fn open_stream(conn: &mut impl ReadWrite) -> u16 {
    conn.write_all(b"GET /v1/revocations/stream HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).unwrap().parse().unwrap()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Review of the socket listener: a local process on the socket (no forwarding header, or an
/// untrusted one) was counted by no per-address limit, so one of them could hold every
/// revocation stream (and every descriptor). Its requests are now one client: at most
/// `--max-streams-per-address` streams and `--max-connections-per-address` connections, and a
/// TCP client keeps its own.
#[test]
fn the_sockets_clients_without_an_address_are_one_client_to_the_per_address_limits() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let at = format!("unix:{}", sock.display());
    let data = dir.path().join("data");
    let both = ["--listen", "127.0.0.1:0", "--listen", &at];
    let s = start(&data, &[&both[..], &["--max-streams", "16", "--max-streams-per-address", "4"]].concat());
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        statuses.push(open_stream(&mut c));
        held.push(c);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "four streams per address");
    let tcp_addr = s.url.as_deref().unwrap().trim_start_matches("http://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&tcp_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(open_stream(&mut tcp), 200, "a TCP client has its own");
    drop((held, tcp, s));

    // Connections: three at most from the socket; the fourth is shut as it is accepted, and a
    // place comes back when one closes.
    let caps = ["--max-connections-per-address", "3", "--head-timeout", "30s"];
    let s = start(&data, &[&both[..], &caps].concat());
    let shut_at_once = |mut c: UnixStream| {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut buf = [0u8; 64];
        matches!(c.read(&mut buf), Ok(0) | Err(_))
    };
    let mut idle: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    // The server may need a moment to accept the three before it counts them.
    std::thread::sleep(Duration::from_millis(300));
    assert!(shut_at_once(UnixStream::connect(&sock).unwrap()), "the fourth connection is shut");
    drop(idle.pop());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!shut_at_once(UnixStream::connect(&sock).unwrap()), "a closed connection gave its place back");
    drop((idle, s));
}

/// Review of the socket listener: the socket's directory and mode. A directory every user may
/// write without the sticky bit is refused (anyone could replace the socket); a trusted socket
/// that every local user may reach is refused (anyone could name any client address); abstract
/// and nameless paths are refused; the mode is set on the socket, never on what a symbolic link
/// at the path points to.
#[test]
fn unsafe_socket_places_and_modes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let both = |at: &str| vec!["--listen".to_owned(), "127.0.0.1:0".into(), "--listen".into(), at.into()];
    let refused_at = |at: &str| refused(&data, &both(at).iter().map(String::as_str).collect::<Vec<_>>());
    let at = format!("unix:{}", open.join("t.sock").display());
    // Every user may write the directory: with or without the sticky bit (it keeps others from
    // removing a file, not from making one at a free path).
    for m in [0o777, 0o1777] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(m)).unwrap();
        let e = refused_at(&at);
        assert!(e.contains("writable by every user"), "{m:o}: {e}");
    }
    // A directory above it that every user may write without the sticky bit (anyone could move
    // the socket's directory away and put theirs in its place).
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let inner = open.join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = refused_at(&format!("unix:{}", inner.join("t.sock").display()));
    assert!(e.contains("without the sticky bit") && e.contains("open"), "{e}");

    let at = format!("unix:{}", dir.path().join("t.sock").display());
    let e = refused(
        &data,
        &["--listen", "127.0.0.1:0", "--listen", &at, "--trusted-proxy", "unix", "--listen-mode", "0666"],
    );
    assert!(e.contains("every local user"), "{e}");
    for bad in ["unix:@tessera", "unix:/tmp/", "unix: "] {
        let e = refused_at(bad);
        assert!(e.contains(bad.trim_end()), "{bad}: {e}");
    }
    // A private directory left by a process killed while making its socket (0700, a dead socket
    // in it) is removed at the next start; none of this start's is left behind.
    let leftover = dir.path().join(".t0a1b");
    std::fs::create_dir(&leftover).unwrap();
    std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(UnixListener::bind(leftover.join("s")).unwrap());
    let s = start(&data, &both(&at).iter().map(String::as_str).collect::<Vec<_>>());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".t")), "{names:?}");
    assert_eq!(mode(&dir.path().join("t.sock")), 0o660);
    drop(s);
}

/// Review of the socket fix: the private directory the socket is made in made paths that fit the
/// kernel's limit too long. A 95-byte directory (a 102-byte socket path) is accepted; a path the
/// kernel cannot hold is refused naming the limit.
#[test]
fn a_socket_path_that_fits_the_kernel_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().as_os_str().len();
    let deep = dir.path().join("d".repeat(95 - base - 1));
    std::fs::create_dir(&deep).unwrap();
    assert_eq!(deep.as_os_str().len(), 95);
    let at = format!("unix:{}", deep.join("t.sock").display());
    let s = start(&dir.path().join("data"), &["--listen", "127.0.0.1:0", "--listen", &at]);
    assert_eq!(over(&deep.join("t.sock"), "GET", "/health", &[]).0, 200);
    drop(s);
    let at = format!("unix:{}", deep.join("x".repeat(20)).display());
    let e = refused(&dir.path().join("data"), &["--listen", "127.0.0.1:0", "--listen", &at]);
    assert!(e.contains("107 bytes"), "{e}");
}
