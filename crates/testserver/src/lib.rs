//! A Tessera server process for tests: `tessera-server` or `tessera serve`, started from a
//! `Command` the test builds (binary, flags, environment, stderr), held until it says where it
//! listens, and killed (and waited for) when dropped.
//!
//! The server prints, on stdout, `Tessera admin token …` followed by the token on the next line
//! (first start only), then `tessera listening on <scheme>://<addr>`. [`TestServer::start`] reads
//! up to that line, then keeps draining stdout on a thread so the server never blocks on a full
//! pipe. A process that exits before listening is a panic that quotes what it printed.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

/// What the server prints before the admin token (the token is the next line).
const ADMIN_TOKEN: &str = "Tessera admin token";
/// What the server prints before its URL, once it accepts connections.
const LISTENING: &str = "tessera listening on ";
/// How long [`TestServer::terminate`] waits for the process to exit.
const TERMINATE_WITHIN: Duration = Duration::from_secs(10);

/// A running server process: its URL, its admin token when this start made one, and the child,
/// killed and waited for on drop (no process or zombie outlives the test).
pub struct TestServer {
    child: Child,
    url: String,
    admin: Option<String>,
}

impl TestServer {
    /// Start `command` with stdout piped (whatever else the command says is kept) and wait until
    /// it prints its listening line.
    ///
    /// # Panics
    /// When the process cannot be started, or exits (closes stdout) before listening; the message
    /// quotes its exit status and everything it printed on stdout.
    pub fn start(command: &mut Command) -> TestServer {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {:?}: {e}", command.get_program()));
        let stdout = child.stdout.take().expect("stdout is piped");
        // Owned from here on: a panic below kills and waits for the process.
        let mut server = TestServer { child, url: String::new(), admin: None };
        let mut out = BufReader::new(stdout);
        let mut said = Vec::new();
        loop {
            let Some(line) = next_line(&mut out) else { server.exited_before_listening(&said) };
            if line.starts_with(ADMIN_TOKEN) {
                said.push(line);
                let Some(token) = next_line(&mut out) else { server.exited_before_listening(&said) };
                said.push(token.clone());
                server.admin = Some(token);
            } else if let Some(url) = line.strip_prefix(LISTENING) {
                server.url = url.to_owned();
                // Keep draining stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return server;
            } else {
                said.push(line);
            }
        }
    }

    /// The URL as the server printed it, e.g. `http://127.0.0.1:41234` or `https://…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its scheme: `127.0.0.1:41234`, what a raw `TcpStream` connects to.
    pub fn addr(&self) -> &str {
        self.url.split_once("://").map_or(self.url.as_str(), |(_, addr)| addr)
    }

    /// The admin token the server printed: only on the start that created its first key.
    pub fn admin(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// Send SIGTERM (a graceful shutdown) and wait for the exit, at most 10 s.
    ///
    /// # Panics
    /// When the signal cannot be sent or the process is still running after 10 s.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let started = std::time::Instant::now();
        while started.elapsed() < TERMINATE_WITHIN {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not stop within {TERMINATE_WITHIN:?} of SIGTERM");
    }

    /// Stop the process now (SIGKILL) and wait for it: the service goes away mid-whatever.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited_before_listening(&mut self, said: &[String]) -> ! {
        self.kill();
        let status = self.child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
        panic!("the server exited before listening ({status}); its stdout:\n{}", said.join("\n"))
    }
}

/// Kill and wait: a failed assertion must not leave a server running (a no-op after an exit).
impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next line of `out` without its line ending (bytes that are not UTF-8 replaced), or `None`
/// at the end of the stream or on a read error.
fn next_line(out: &mut BufReader<ChildStdout>) -> Option<String> {
    let mut line = Vec::new();
    match out.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let text = String::from_utf8_lossy(&line);
            Some(text.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn reads_the_admin_token_and_the_url_then_keeps_draining() {
        // 1 MiB after the listening line, more than a pipe holds: the marker file appears only if
        // stdout is drained.
        let marker = std::env::temp_dir().join(format!("tessera-testserver-drained-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!(
            "echo starting; echo 'Tessera admin token (shown once):'; echo tok-123; \
             echo 'tessera listening on https://127.0.0.1:4444'; \
             head -c 1048576 /dev/zero && touch '{}'; exec sleep 30",
            marker.display()
        );
        let mut s = TestServer::start(&mut sh(&script));
        assert_eq!(s.url(), "https://127.0.0.1:4444");
        assert_eq!(s.addr(), "127.0.0.1:4444");
        assert_eq!(s.admin(), Some("tok-123"));
        let started = std::time::Instant::now();
        while !marker.exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(marker.exists(), "stdout was not drained after the listening line");
        std::fs::remove_file(&marker).unwrap();
        let status = s.terminate();
        assert!(!status.success(), "sleep ends by the signal: {status}");
    }

    #[test]
    fn no_admin_token_on_a_later_start() {
        let s = TestServer::start(&mut sh("echo 'tessera listening on http://[::1]:80'; exec sleep 30"));
        assert_eq!(s.admin(), None);
        assert_eq!(s.addr(), "[::1]:80");
    }

    #[test]
    fn exiting_before_listening_quotes_stdout() {
        let got = std::panic::catch_unwind(|| TestServer::start(&mut sh("echo no database here; exit 3")));
        let err = got.err().expect("a panic");
        let msg = err.downcast_ref::<String>().expect("a message");
        assert!(msg.contains("exited before listening"), "{msg}");
        assert!(msg.contains("no database here"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn drop_kills_the_process_and_reaps_it() {
        let s = TestServer::start(&mut sh("echo 'tessera listening on http://x'; exec sleep 30"));
        let pid = s.child.id();
        drop(s);
        // Reaped: no /proc entry (a zombie would still have one).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
