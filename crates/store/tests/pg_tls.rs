//! TLS to PostgreSQL against a real server started with `ssl=on` and a certificate from a test
//! CA: `verify-full` connects (and the connections are encrypted), a wrong host name or a wrong
//! CA is refused, `require` is refused by a server without TLS, and a node that names another
//! host without saying `sslmode` gets `verify-full`, never clear text.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tessera_store::{Error, Freshness, Location, MasterKey, PostgresOptions, SslMode, Store};
use tessera_testpg::{PgServer, TestCa};

/// The server's certificate names `localhost` and `pg.test`, never `127.0.0.1`.
struct Tls {
    pg: PgServer,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let ca = TestCa::new("Tessera PostgreSQL test CA");
        let pg = PgServer::start_tls(&ca, &["localhost", "pg.test"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let other_ca_file = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca_file, TestCa::new("another CA").cert_pem()).unwrap();
        Tls { pg, ca_file, other_ca_file, _dir: dir }
    })
}

fn options(sslmode: Option<SslMode>, ca_file: Option<&PathBuf>) -> PostgresOptions {
    PostgresOptions {
        connect_timeout: Duration::from_secs(5),
        sslmode,
        ca_file: ca_file.cloned(),
        ..PostgresOptions::default()
    }
}

fn open(url: &str, options: PostgresOptions) -> Result<Store, Error> {
    let location = Location::Postgres { url: url.into(), options };
    Store::open_at(&location, MasterKey::from_bytes([7; 32]), Freshness::default())
}

/// A fresh database's URL naming the server as `host`, with `params` (`?a=b&c=d` or empty).
fn url(pg: &PgServer, host: &str, params: &str) -> String {
    let plain = pg.create_database();
    let db = plain.rsplit('/').next().unwrap();
    format!("{}{params}", pg.url_via(host, db))
}

/// Whether the connections the store holds (application_name `tessera`) to the database of
/// `url` are encrypted, as the server sees them (`pg_stat_ssl`).
fn encrypted(pg: &PgServer, url: &str) -> Vec<bool> {
    let db = url.split('?').next().unwrap().rsplit('/').next().unwrap();
    let out = pg.sql(
        &pg.url("postgres"),
        &format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'tessera' AND a.datname = '{db}'"
        ),
    );
    out.lines().map(|l| l == "t").collect()
}

fn refused(result: Result<Store, Error>) -> String {
    let Err(err) = result else { panic!("the connection should be refused") };
    let err = err.to_string();
    assert!(!err.contains(tessera_testpg::PASSWORD), "the password leaked: {err}");
    err
}

#[test]
fn verify_full_connects_and_encrypts() {
    let t = tls();
    let u = url(&t.pg, "localhost", "?sslmode=verify-full");
    let store = open(&u, options(None, Some(&t.ca_file))).unwrap();
    store.create_first_key().unwrap();
    assert!(store.active_key().is_some());
    let seen = encrypted(&t.pg, &u);
    assert!(!seen.is_empty() && seen.iter().all(|&s| s), "{seen:?}");
    // The same through the URL alone (libpq's parameter names).
    let u = url(&t.pg, "localhost", &format!("?sslmode=verify-full&sslrootcert={}", t.ca_file.display()));
    assert!(open(&u, options(None, None)).is_ok());
}

#[test]
fn a_wrong_host_name_is_refused_by_verify_full_and_taken_by_verify_ca() {
    let t = tls();
    // The certificate names localhost and pg.test, not the address.
    let u = url(&t.pg, "127.0.0.1", "");
    let err = refused(open(&u, options(Some(SslMode::VerifyFull), Some(&t.ca_file))));
    assert!(err.contains("certificate") && err.contains("TLS"), "{err}");
    // verify-ca checks the chain only.
    let store = open(&u, options(Some(SslMode::VerifyCa), Some(&t.ca_file))).unwrap();
    assert!(encrypted(&t.pg, &u).iter().all(|&s| s));
    drop(store);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let t = tls();
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let u = url(&t.pg, "localhost", "");
        let err = refused(open(&u, options(Some(mode), Some(&t.other_ca_file))));
        assert!(err.contains("certificate"), "{mode}: {err}");
    }
    // verify-full without a CA checks against the public roots, which do not know the test CA.
    let u = url(&t.pg, "localhost", "?sslmode=verify-full");
    assert!(refused(open(&u, options(None, None))).contains("certificate"));
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let t = tls();
    let u = url(&t.pg, "127.0.0.1", "?sslmode=require");
    let _store = open(&u, options(None, None)).unwrap();
    assert!(encrypted(&t.pg, &u).iter().all(|&s| s));
    // With a CA given, require checks the chain (as libpq does): another CA is refused.
    let u = url(&t.pg, "127.0.0.1", "?sslmode=require");
    refused(open(&u, options(None, Some(&t.other_ca_file))));
}

/// The default is never `prefer`: a host that is not this machine gets verify-full (here
/// `pg.test`, reached through `hostaddr`, as through a tunnel or a private DNS name); loopback
/// gets clear text, as documented.
#[test]
fn another_host_gets_verify_full_unless_told_otherwise() {
    let t = tls();
    let u = url(&t.pg, "pg.test", "?hostaddr=127.0.0.1");
    let _store = open(&u, options(None, Some(&t.ca_file))).unwrap();
    assert!(encrypted(&t.pg, &u).iter().all(|&s| s));
    // Without the CA: verified against the public roots, refused (prefer would have connected).
    let u = url(&t.pg, "pg.test", "?hostaddr=127.0.0.1");
    refused(open(&u, options(None, None)));
    // Loopback without a word: clear text.
    let u = url(&t.pg, "127.0.0.1", "");
    let _local = open(&u, options(None, None)).unwrap();
    let seen = encrypted(&t.pg, &u);
    assert!(!seen.is_empty() && seen.iter().all(|&s| !s), "{seen:?}");
}

/// A server without TLS: `require` is refused, and so is a node that names another host
/// without `sslmode` (tokio-postgres's own default, `prefer`, would have gone on in clear
/// text); `sslmode=disable` is the explicit way to clear text.
#[test]
fn a_server_without_tls_is_refused_unless_clear_text_is_asked_for() {
    let pg = PgServer::start();
    let err = refused(open(&url(&pg, "127.0.0.1", "?sslmode=require"), options(None, None)));
    assert!(err.contains("does not support TLS"), "{err}");
    let err = refused(open(&url(&pg, "pg.test", "?hostaddr=127.0.0.1"), options(None, None)));
    assert!(err.contains("does not support TLS"), "{err}");
    assert!(open(&url(&pg, "pg.test", "?hostaddr=127.0.0.1&sslmode=disable"), options(None, None)).is_ok());
}
