//! The `tessera-server` binary as the end-to-end tests start it (with `tessera_testserver`):
//! on a free loopback port, without a per-client rate limit, on the test's data directory, with
//! no master key from the environment. Each test adds its flags, environment and stderr.

use std::path::Path;
use std::process::Command;

/// The command for `tessera-server` on `data` with `extra` flags.
pub(crate) fn command(data: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera-server"));
    c.args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env_remove("TESSERA_MASTER_KEY");
    c
}

/// A chunked body trickled into a connection: a one-byte chunk every 200 ms (100 at most) until
/// stopped or the connection fails. What `--body-timeout` must cut off.
#[allow(dead_code)] // not every test binary that shares this module trickles
pub(crate) struct Trickle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

#[allow(dead_code)]
impl Trickle {
    /// Start trickling into `to` (a clone of the connection the request's head went on).
    pub(crate) fn start(mut to: impl std::io::Write + Send + 'static) -> Trickle {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for _ in 0..100 {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) || to.write_all(b"1\r\n \r\n").is_err()
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        Trickle { stop, thread }
    }

    /// Stop, and wait for the writing thread.
    pub(crate) fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}
