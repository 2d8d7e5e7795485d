//! `POST /v1/backup` (issue 24 §2): the admin gets a snapshot that opens with the master key and
//! holds what was written before; anyone else is refused and nothing is written on the node; a
//! client that stops reading holds the node's one backup place only until the answer's deadline;
//! what a crashed backup left in the data directory is removed at the next start.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod binary;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use common::*;
use serde_json::json;
use tessera_core::TokenId;
use tessera_core::{Context, Token, Verifier};
use tessera_server::{app, AppState, Config};
use tessera_store::{MasterKey, NewToken, Store};
use tessera_testserver::TestServer;

#[test]
fn the_admin_gets_a_snapshot_that_opens_with_the_master_key() {
    let e = env();
    run(async {
        let token = mint_ok(&e, &e.admin, json!({"subject": "alice", "operations": ["read"]})).await;
        let svc = init_service(app(e.state.clone())).await;
        let req = auth(TestRequest::post().uri("/v1/backup"), &e.admin)
            .peer_addr("127.0.0.1:40000".parse().unwrap());
        let res = call_service(&svc, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get("content-type").unwrap(), "application/octet-stream");
        let last: u64 = res.headers().get("tessera-last-change").unwrap().to_str().unwrap().parse().unwrap();
        let body = read_body(res).await;
        let data_dir = e.state.config.data_dir.clone();
        // The node kept no copy.
        let left: Vec<_> = std::fs::read_dir(&data_dir)
            .unwrap()
            .filter_map(|d| d.ok())
            .filter(|d| d.file_name().to_string_lossy().starts_with(".backup-"))
            .collect();
        assert!(left.is_empty(), "the snapshot was left on the node");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.redb");
        std::fs::write(&path, &body).unwrap();
        let (master, _) = MasterKey::load_or_create(&data_dir.join("master.key")).unwrap();
        let copy = Store::open(&path, master).unwrap();
        assert_eq!(copy.last_applied(), last);
        let t = Token::decode(&token).unwrap();
        let ctx = Context::now().operation("read");
        Verifier::with_keys(&copy).service_caveats().verify(&t, &[], &ctx).unwrap();
    });
}

#[test]
fn only_the_admin_may_take_a_backup() {
    let e = env();
    run(async {
        let alice = alice(&e).await;
        let a = send(&e, auth(TestRequest::post().uri("/v1/backup"), &alice)).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        let a = send(&e, TestRequest::post().uri("/v1/backup")).await;
        assert_problem(&a, StatusCode::UNAUTHORIZED);
        // An admin token narrowed to other operations does not back up either.
        let narrowed = Token::decode(&e.admin).unwrap().attenuate("allow keys.list").unwrap().encode();
        let a = send(&e, auth(TestRequest::post().uri("/v1/backup"), &narrowed)).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        let a = send(&e, TestRequest::get().uri("/v1/backup")).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    });
}

/// Start the server on `data` on a free port (it prints the admin token on first start).
fn start(data: &Path, extra: &[&str]) -> TestServer {
    TestServer::start(binary::command(data, extra).stderr(Stdio::null()))
}

/// Records of ~4 KiB each, so that the snapshot is larger than what the kernel's socket buffers
/// and the answer's read-ahead hold between the node and a client that stopped reading.
fn fill_large(data: &Path, records: usize) {
    let (master, _) = MasterKey::load_or_create(&data.join("master.key")).unwrap();
    let store = Store::open(data.join("tessera.redb"), master).unwrap();
    let kid = store.active_key().unwrap().0;
    let hex = |n: usize| (0..n).map(|_| TokenId::generate().unwrap().to_string()).collect::<String>();
    std::thread::scope(|s| {
        for w in 0..16 {
            let store = &store;
            s.spawn(move || {
                for _ in 0..records / 16 {
                    let new = NewToken {
                        tid: TokenId::generate().unwrap(),
                        kid,
                        subject: format!("bulk{w}"),
                        description: hex(31),
                        expires: None,
                        caveats: (0..60).map(|_| format!("resource docs/{}", hex(1))).collect(),
                        parent: None,
                    };
                    store.record_token(new).unwrap();
                }
            });
        }
    });
}

/// `POST /v1/backup` on a new connection: the connection, with the answer's status and
/// `Content-Length` read (and nothing of its body).
fn ask_backup(addr: &str, admin: &str, recv_buffer: Option<usize>) -> (TcpStream, u16, u64) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n).unwrap();
    }
    socket.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let mut conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        conn,
        "POST /v1/backup HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The head, a byte at a time: nothing of the body is taken.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(conn.read(&mut b).unwrap(), 1, "the connection closed in the head");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    (conn, status, length)
}

/// Review finding (issue 24): a client that opens the backup's answer and stops reading held the
/// node's one backup place forever (every later backup: 409). Now the answer is cut once the
/// client has not taken the next chunk within `--backup-stall-timeout`, and the next backup runs.
#[test]
fn a_client_that_stops_reading_holds_the_backup_place_only_until_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--backup-stall-timeout", "2s", "--backup-timeout", "1h"];
    let admin = start(&data, &flags).admin().unwrap().to_owned();
    fill_large(&data, 5_000);
    let server = start(&data, &flags);
    let (mut stuck, status, length) = ask_backup(server.addr(), &admin, Some(4096));
    assert_eq!(status, 200);
    assert!(length > 12 << 20, "the snapshot ({length} bytes) would fit in the buffers: no stall");
    let opened = Instant::now();
    // While the first answer waits for its client, the place is taken.
    let (_, second, _) = ask_backup(server.addr(), &admin, None);
    assert_eq!(second, 409, "the first backup had already ended: the test proves nothing");
    // After the stall bound the place is free: the next backup is served whole.
    let served = loop {
        let (mut conn, status, length) = ask_backup(server.addr(), &admin, None);
        if status == 200 {
            let mut got = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match conn.read(&mut buf).unwrap() {
                    0 => break,
                    n => got += n as u64,
                }
            }
            assert_eq!(got, length, "the second backup's answer was not whole");
            break opened.elapsed();
        }
        assert_eq!(status, 409);
        assert!(
            opened.elapsed() < Duration::from_secs(60),
            "the stalled client still holds the backup place"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served >= Duration::from_secs(2), "the place came back before the bound ({served:?})");
    // The stalled client's connection was cut: it ends before the announced length.
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stuck.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < length, "the cut answer was read whole ({got} of {length} bytes)");
}

/// Review finding (issue 24): a crash during a backup left the snapshot (`.backup-<id>.redb`, or
/// its `.partial`) in the data directory for good. The next start removes exactly those names.
#[test]
fn a_start_removes_what_a_crashed_backup_left_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let id = TokenId::generate().unwrap();
    let stale =
        [format!(".backup-{id}.redb.partial"), format!(".backup-{}.redb", TokenId::generate().unwrap())];
    let kept = [
        format!(".backup-{id}.redb.partial.keep"),
        format!("backup-{id}.redb.partial"),
        format!(".backup-{}.redb.partial", id.to_string().to_uppercase()),
        format!(".backup-{}.redb.partial", &id.to_string()[1..]),
        ".backup-notanid.redb.partial".to_owned(),
        "tessera.redb.partial".to_owned(),
        "snapshot.redb".to_owned(),
    ];
    for name in stale.iter().chain(&kept) {
        std::fs::write(data.join(name), b"left over").unwrap();
    }
    // A directory and a symbolic link under a stale name are not files the service wrote.
    let as_dir = format!(".backup-{}.redb.partial", TokenId::generate().unwrap());
    std::fs::create_dir(data.join(&as_dir)).unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"not the service's").unwrap();
    let as_link = format!(".backup-{}.redb", TokenId::generate().unwrap());
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, data.join(&as_link)).unwrap();
    let mut config = Config::for_data_dir(&data);
    config.rate_limit = 0;
    let opened = AppState::open(config).unwrap();
    for name in &stale {
        assert!(!data.join(name).exists(), "{name} was left");
    }
    for name in kept.iter().chain([&as_dir]) {
        assert!(data.join(name).exists(), "{name} was removed");
    }
    #[cfg(unix)]
    assert!(data.join(&as_link).symlink_metadata().is_ok(), "a symbolic link was removed");
    assert!(target.exists());
    drop(opened);
}

/// Review of issue 24: a client that went away (closed its connection) while the pump waited for
/// room held the node's backup place until `--backup-stall-timeout`: the pump was parked and
/// nothing woke it when the answer's stream was dropped; every backup asked meanwhile was a 409.
#[test]
fn a_client_that_left_gives_the_backup_place_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--backup-stall-timeout", "30s", "--backup-timeout", "1h"];
    let admin = start(&data, &flags).admin().unwrap().to_owned();
    fill_large(&data, 5_000);
    let server = start(&data, &flags);
    let (gone, status, _) = ask_backup(server.addr(), &admin, Some(4096));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500)); // the pump fills the read-ahead and parks
    drop(gone); // the client leaves
    let left = Instant::now();
    loop {
        let (_conn, status, _) = ask_backup(server.addr(), &admin, None);
        if status == 200 {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(5),
            "{:?} after the only client left, the backup place is still held (409)",
            left.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
