//! What idle revocation stream clients cost the server: starts a fresh `tessera-server` process,
//! reads its resident memory (`VmRSS` in /proc/<pid>/status, from outside), opens N streams
//! (default 1,000), waits for them to settle, reads it again and prints both.
//!
//!     cargo build --release -p tessera-server --bin tessera-server --example stream_clients
//!     target/release/examples/stream_clients [N] [path/to/tessera-server]
//!
//! Linux only (procfs). Numbers are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a panic is its report
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1000, |a| a.parse().expect("N: a number of clients"));
    let bin = args.next().unwrap_or_else(|| {
        let me = std::env::current_exe().unwrap();
        me.parent().unwrap().parent().unwrap().join("tessera-server").display().to_string()
    });
    let dir = std::env::temp_dir().join(format!("tessera-stream-clients-{}", std::process::id()));
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--rate-limit", "0", "--max-connections-per-address", "0"])
        .args(["--max-streams", &(n + 1).to_string(), "--max-streams-per-address", "0", "--workers", "2"])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited").unwrap();
        if let Some(url) = line.strip_prefix("tessera listening on http://") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    // One stream first, so the hub and its pump exist before the baseline.
    let open = |addr: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /v1/revocations/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        // Read the head and the first block, so the stream is open on the server.
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("id: ") {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..k]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        s
    };
    let first = open(&addr);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let clients: Vec<TcpStream> = (0..n).map(|_| open(&addr)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) * 1024) / n.max(1) as u64;
    println!(
        "{n} idle stream clients: VmRSS {before} KiB before, {after} KiB after: +{:.1} MiB ({per} bytes per client)",
        after.saturating_sub(before) as f64 / 1024.0
    );
    drop(clients);
    drop(first);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
