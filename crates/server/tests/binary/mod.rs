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
