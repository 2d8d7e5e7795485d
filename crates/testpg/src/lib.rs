//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, `postgres` on a
//! free loopback port with password authentication, stopped (and its files removed) on drop.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI), the server runs as the
//! `postgres` system user that Debian's package creates. The binaries come from
//! `/usr/lib/postgresql/<newest>/bin`, or `TESSERA_PG_BIN`. A missing PostgreSQL is a failure
//! that says how to install it, never a skipped test.
//!
//! [`PgServer::start_tls`] starts one with `ssl=on` and a server certificate from a [`TestCa`]
//! (the TLS tests of the store and the service use the same CA helper).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ca;

pub use ca::{Issued, TestCa};

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The user tests connect as, and its password.
pub const USER: &str = "tessera";
/// The password of [`USER`].
pub const PASSWORD: &str = "test-password-7";

/// A running (or stopped) throwaway server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    durable: bool,
    /// `ssl=on` with these certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: apt-get install postgresql (make test and .ci/run do this)")
    })
}

/// uid and gid of the `postgres` user when we are root (from /etc/passwd), else `None`.
fn owner() -> Option<(u32, u32)> {
    let uid = std::fs::metadata("/proc/self").ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the postgres user (apt-get install postgresql creates it)");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().expect("uid"), f[3].parse().expect("gid")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl PgServer {
    /// initdb and start a server tuned for tests (`fsync=off`: nothing here survives a power cut,
    /// and the tests kill nodes, never the server).
    pub fn start() -> PgServer {
        Self::start_with(false, None)
    }

    /// initdb and start a server with `ssl=on`, serving a certificate for `names` signed by
    /// `ca` (its key file mode 0600, owned by the server's user, as PostgreSQL requires).
    /// Connections without TLS are still accepted (`host` lines of `pg_hba.conf`), so
    /// [`PgServer::create_database`] and [`PgServer::sql`] work as on any other server.
    pub fn start_tls(ca: &TestCa, names: &[&str]) -> PgServer {
        Self::start_with(false, Some(ca.issue(names)))
    }

    /// initdb and start a server that syncs every commit to disk, as in production (benchmarks
    /// compare it with redb, which does).
    pub fn start_durable() -> PgServer {
        Self::start_with(true, None)
    }

    fn start_with(durable: bool, tls: Option<Issued>) -> PgServer {
        let dir = tempfile::Builder::new().prefix("tessera-pg-").tempdir().expect("temp dir");
        let owner = owner();
        let mut pg =
            PgServer { dir, bin: bin_dir(), port: free_port(), owner, child: None, durable, tls: None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(pg.dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        if let Some(issued) = tls {
            pg.tls = Some(pg.write_tls_files(&issued));
        }
        let pwfile = pg.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("password file");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown the password file");
        }
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-U", USER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's certificate and key files, owned by the server's user; the key 0600
    /// (PostgreSQL refuses a key file others can read).
    fn write_tls_files(&self, issued: &Issued) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.dir.path().join("server.crt");
        let key = self.dir.path().join("server.key");
        std::fs::write(&cert, &issued.cert_pem).expect("server certificate file");
        std::fs::write(&key, &issued.key_pem).expect("server key file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
        if let Some((uid, gid)) = self.owner {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown a TLS file");
            }
        }
        (cert, key)
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.env("PGPASSWORD", PASSWORD).current_dir(self.dir.path());
        c
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Start the server again after [`PgServer::stop`] (same data, same port).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        // A watchdog shell runs the server and stops it when this test process is gone, so a
        // server held in a `static` (never dropped) does not outlive its test binary.
        let script = format!(
            "\"$0\" \"$@\" & pid=$!; while kill -0 $pid 2>/dev/null && [ -d /proc/{parent} ]; do sleep 0.2; done; \
             kill -INT $pid 2>/dev/null; wait $pid; [ -d /proc/{parent} ] || rm -rf '{dir}'",
            parent = std::process::id(),
            dir = self.dir.path().display(),
        );
        let mut c = Command::new("sh");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let child = c
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(script)
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            .args(if self.durable {
                ["-c", "fsync=on", "-c", "full_page_writes=on", "-c", "max_connections=200"]
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"]
            })
            .args(self.tls.iter().flat_map(|(cert, key)| {
                [
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!("ssl_cert_file={}", cert.display()),
                    "-c".to_owned(),
                    format!("ssl_key_file={}", key.display()),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (fast shutdown) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w"])
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The URL of database `db` with the test user's credentials.
    pub fn url(&self, db: &str) -> String {
        self.url_via("127.0.0.1", db)
    }

    /// The URL of database `db` naming the server as `host` (`localhost`, `127.0.0.1`; the TLS
    /// tests check the certificate against it).
    pub fn url_via(&self, host: &str, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@{host}:{}/{db}", self.port)
    }

    /// Create a fresh, empty database and return its URL.
    pub fn create_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, &name])
            .output()
            .expect("run createdb");
        assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }

    /// Run SQL in the database at `url` with `psql` (used by tests that tamper with the schema).
    pub fn sql(&self, url: &str, sql: &str) -> String {
        let local = self.bin.join("psql");
        let psql = if local.exists() { local } else { PathBuf::from("psql") };
        let out = Command::new(psql)
            .args([url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql (apt-get install postgresql-client)");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
