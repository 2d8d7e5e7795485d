//! A real `tessera-server` for the guard's tests: built once per test binary (cargo is already
//! done building when tests run, so this is quick when it is fresh), started on a free port with
//! a fresh data directory, killed when dropped.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_testserver::TestServer;

/// The server binary, built from this workspace.
fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test> → target/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let target_dir = profile_dir.parent().unwrap().to_owned();
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "tessera-server", "--bin", "tessera-server", "--target-dir"])
            .arg(&target_dir)
            .current_dir(workspace)
            .status()
            .unwrap();
        assert!(status.success(), "building tessera-server failed");
        profile_dir.join("tessera-server")
    })
    .clone()
}

/// A `tessera-server` process and its data directory (removed after the process is gone).
pub(crate) struct Server {
    process: TestServer,
    pub(crate) url: String,
    pub(crate) admin: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Started with heartbeats every 200 ms (so a silent stream is noticed quickly), without a
    /// per-client rate limit.
    pub(crate) fn start() -> Server {
        Server::start_with(&["--rate-limit", "0"])
    }

    /// Started with heartbeats every 200 ms and `flags` (which must name `--rate-limit`).
    pub(crate) fn start_with(flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let process = TestServer::start(
            Command::new(server_bin())
                .args(["--listen", "127.0.0.1:0", "--stream-heartbeat", "200ms"])
                .args(flags)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env_remove("TESSERA_MASTER_KEY")
                .stderr(Stdio::null()),
        );
        let (url, admin) = (process.url().to_owned(), process.admin().unwrap().to_owned());
        Server { process, url, admin, _dir: dir }
    }

    /// Stop the process now (SIGKILL): the service goes away.
    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    pub(crate) async fn mint(&self, body: Value) -> (String, String) {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/tokens", self.url))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        (v["token"].as_str().unwrap().to_owned(), v["tid"].as_str().unwrap().to_owned())
    }

    pub(crate) async fn revoke(&self, tid: &str) {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/tokens/{tid}/revoke", self.url))
            .bearer_auth(&self.admin)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// Poll `cond` until it holds or `limit` passes; whether it held (a deadline, not a measurement).
pub(crate) async fn until(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
