//! TLS to PostgreSQL: what a URL and the flags ask for, and the rustls connector that does it.
//!
//! tokio-postgres 0.7 understands only `sslmode=disable|prefer|require`, defaults to `prefer`
//! (TLS if the server offers it, clear text otherwise, the certificate never checked) and
//! refuses `verify-ca`, `verify-full` and `sslrootcert`. So `sslmode` and `sslrootcert` are taken
//! out of the URL here, decided on with the flags, and the driver is handed either `disable` or
//! `require` with a connector whose certificate verifier does what the mode promises:
//!
//! | mode | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | no | no |
//! | `require` | yes (refused if the server has no TLS) | no (with a CA given: yes, as `verify-ca`) | no |
//! | `verify-ca` | yes | yes, against the CA given | no |
//! | `verify-full` | yes | yes, against the CA given, else the public (Mozilla) roots | yes |
//!
//! With no mode named anywhere: `verify-full` when a CA is given or any host is not this
//! machine (clear text to another host needs an explicit `sslmode=disable`), `disable` when
//! every host is `localhost`, a loopback address or a Unix socket. `prefer` and `allow` (which
//! fall back to clear text without a word) are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rows::with_causes;
use super::PostgresOptions;
use crate::error::{Error, Result};

/// How a node's connections to PostgreSQL are protected (`sslmode`, with libpq's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Clear text.
    Disable,
    /// Encrypted, the server's certificate not checked (an active attacker on the path can
    /// still read everything); with a CA given it is checked as by [`SslMode::VerifyCa`].
    Require,
    /// Encrypted, the certificate chain checked against the CA given; the host name is not.
    VerifyCa,
    /// Encrypted, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "prefer" | "allow" => Err(format!(
                "sslmode={s} falls back to clear text without a word: choose disable, require, verify-ca or verify-full"
            )),
            _ => Err(format!("sslmode={s} is not one of disable, require, verify-ca, verify-full")),
        }
    }
}

/// Where the certificates a verifying mode trusts come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// A PEM file of CA certificates (`--database-ca`, `sslrootcert=FILE`).
    File(PathBuf),
    /// The public (Mozilla) roots (`sslrootcert=system`, or `verify-full` with no CA given).
    Public,
}

/// A connection's settings: what tokio-postgres is handed, and its connector.
pub(super) struct Connection {
    /// The URL's settings without `sslmode`/`sslrootcert`, with the driver's mode set.
    pub(super) config: tokio_postgres::Config,
    /// The connector (used by the driver only when the mode is not `disable`).
    pub(super) tls: MakeRustlsConnect,
}

/// Read the TLS settings of `url` and `options`, decide the mode, and build the connector.
/// Errors name the parameter or file at fault, never the URL (it may hold a password).
pub(super) fn connection(url: &str, options: &PostgresOptions) -> Result<Connection> {
    let (mut config, mode, roots) = settings(url, options)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Database(format!("TLS: {e}")))?;
    let path = match &roots {
        Some(Roots::File(path)) => Some(path.as_path()),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Require => Arc::new(NoCheck(provider.clone())),
        SslMode::VerifyCa => Arc::new(ChainOnly(webpki_verifier(root_store(path)?, &provider)?)),
        SslMode::VerifyFull => webpki_verifier(root_store(path)?, &provider)?,
    };
    let client = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Connection { config, tls: MakeRustlsConnect::new(client) })
}

/// The driver's settings (TLS parameters taken out), the mode in effect and the roots it trusts.
fn settings(
    url: &str,
    options: &PostgresOptions,
) -> Result<(tokio_postgres::Config, SslMode, Option<Roots>)> {
    let bad = |what: String| Error::Database(what);
    let (rest, taken) = take_tls_params(url).map_err(bad)?;
    let config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::Database(format!("database URL: {}", with_causes(&e))))?;
    let mut url_mode = None;
    let mut url_roots = None;
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => url_mode = Some(value.parse::<SslMode>().map_err(bad)?),
            _ if value == "system" => url_roots = Some(Roots::Public),
            _ => url_roots = Some(Roots::File(PathBuf::from(value))),
        }
    }
    let mode = match (url_mode, options.sslmode) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(format!("the URL says sslmode={a} and the flag says {b}: name it once")))
        }
        (a, b) => a.or(b),
    };
    let roots = match (url_roots, options.ca_file.clone().map(Roots::File)) {
        (Some(a), Some(b)) if a != b => {
            return Err(
                bad("the URL's sslrootcert and --database-ca name different CAs: name it once".into()),
            )
        }
        (a, b) => a.or(b),
    };
    let mode = match (mode, &roots) {
        (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa, // as libpq does
        (Some(mode), _) => mode,
        (None, Some(_)) => SslMode::VerifyFull,
        (None, None) if all_local(&config) => SslMode::Disable,
        (None, None) => SslMode::VerifyFull,
    };
    if mode == SslMode::VerifyCa && !matches!(roots, Some(Roots::File(_))) {
        return Err(bad(
            "sslmode=verify-ca needs the CA that signed the server's certificate (--database-ca or \
             sslrootcert=FILE): any certificate a public CA issued to anyone would pass it"
                .into(),
        ));
    }
    Ok((config, mode, roots))
}

/// Whether every host the settings name is this machine: `localhost`, a loopback address or a
/// Unix socket (and every `hostaddr` a loopback address).
fn all_local(config: &tokio_postgres::Config) -> bool {
    let host_local = |h: &Host| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    };
    config.get_hosts().iter().all(host_local) && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

/// The CA certificates of `path`, or the public roots.
fn root_store(path: Option<&Path>) -> Result<RootCertStore> {
    let Some(path) = path else {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let file = |what: String| Error::Database(format!("database CA file {}: {what}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| file(e.to_string()))? {
        let cert = cert.map_err(|e| file(format!("not PEM: {e}")))?;
        roots.add(cert).map_err(|e| file(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file("no CERTIFICATE in it".into()));
    }
    Ok(roots)
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Database(format!("TLS: {e}")))
}

/// `verify-ca`: the chain must lead to the CA; the host name is not compared (webpki checks the
/// name last, after the chain, so a name mismatch means the chain itself passed).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate is taken (libpq's meaning: encryption against a passive
/// eavesdropper only); the handshake's signatures are still checked against it.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS parameters this module reads.
const TLS_PARAMS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Split `url` into what tokio-postgres is handed and the TLS parameters taken out of it
/// (decoded), in order. Both forms: `postgres://…?k=v&…` (keys and values percent-encoded) and
/// `k=v k='quoted \' value'`.
fn take_tls_params(url: &str) -> std::result::Result<(String, Vec<(String, String)>), String> {
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), taken)) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if TLS_PARAMS.contains(&key.as_str()) {
                taken.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, taken));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(url)? {
        if TLS_PARAMS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), taken))
}

/// `%XX` escapes decoded (as tokio-postgres decodes URL parts).
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("database URL: a bad %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "database URL: a %-escape that is not UTF-8".to_owned())
}

/// The `key=value` form's pairs, values unquoted (libpq's rules: whitespace around `=` allowed,
/// a value in single quotes may hold spaces, `\'` and `\\`).
fn key_values(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("database settings: `{key}` has no `=`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or("database settings: a value ends in `\\`")?),
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!("database settings: the value of `{key}` has no closing quote"))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(url: &str, options: &PostgresOptions) -> std::result::Result<SslMode, String> {
        settings(url, options).map(|(_, mode, _)| mode).map_err(|e| e.to_string())
    }

    #[test]
    fn prefer_is_never_the_default_and_another_host_needs_tls() {
        let none = PostgresOptions::default();
        for (url, want) in [
            ("postgres://t:pw@db.internal/tessera", SslMode::VerifyFull),
            ("postgres://t:pw@10.0.0.5:5432/tessera", SslMode::VerifyFull),
            // The name the certificate is checked against is db.internal, the address loopback:
            // a tunnel, not this machine's own database.
            ("postgres://t:pw@db.internal/tessera?hostaddr=127.0.0.1", SslMode::VerifyFull),
            ("postgres://t:pw@localhost,db.internal/tessera", SslMode::VerifyFull),
            ("postgres://t:pw@localhost/tessera", SslMode::Disable),
            ("postgres://t:pw@127.0.0.1:5433/tessera", SslMode::Disable),
            ("postgres://t:pw@[::1]:5433/tessera", SslMode::Disable),
            ("postgres://t:pw@%2Frun%2Fpostgresql/tessera", SslMode::Disable),
            ("host=/run/postgresql dbname=tessera user=t", SslMode::Disable),
            ("host=db.internal dbname=tessera user=t", SslMode::VerifyFull),
            ("postgres://t:pw@db.internal/tessera?sslmode=disable", SslMode::Disable),
            ("postgres://t:pw@db.internal/tessera?sslmode=require", SslMode::Require),
            ("postgres://t:pw@localhost/tessera?sslmode=verify-full", SslMode::VerifyFull),
            ("host=db.internal sslmode = 'require' user=t", SslMode::Require),
        ] {
            assert_eq!(mode_of(url, &none), Ok(want), "{url}");
        }
        let c = connection("postgres://t:pw@db.internal/tessera", &none).unwrap();
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = connection("postgres://t:pw@localhost/tessera", &none).unwrap();
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn prefer_allow_and_unknown_modes_are_refused_however_spelled() {
        let none = PostgresOptions::default();
        for url in [
            "postgres://t:pw@db.internal/tessera?sslmode=prefer",
            "postgres://t:pw@localhost/tessera?sslmode=allow",
            "postgres://t:pw@localhost/tessera?ssl%6Dode=prefer",
            "postgres://t:pw@localhost/tessera?sslmode=%70refer",
            "host=localhost sslmode=prefer",
            "host=localhost sslmode='prefer'",
        ] {
            let err = mode_of(url, &none).unwrap_err();
            assert!(err.contains("clear text"), "{url}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        let err = mode_of("postgres://t:s3cret@db/x?sslmode=verify", &none).unwrap_err();
        assert!(err.contains("sslmode=verify is not one of"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn flags_and_url_agree_or_the_start_fails() {
        let flag = PostgresOptions { sslmode: Some(SslMode::Require), ..PostgresOptions::default() };
        assert_eq!(mode_of("postgres://t@db.internal/x", &flag), Ok(SslMode::Require));
        assert_eq!(mode_of("postgres://t@db.internal/x?sslmode=require", &flag), Ok(SslMode::Require));
        let err = mode_of("postgres://t@db.internal/x?sslmode=disable", &flag).unwrap_err();
        assert!(err.contains("sslmode=disable") && err.contains("require"), "{err}");
        let ca = PostgresOptions { ca_file: Some("/a.pem".into()), ..PostgresOptions::default() };
        let err = mode_of("postgres://t@db.internal/x?sslrootcert=/b.pem", &ca).unwrap_err();
        assert!(err.contains("different CAs"), "{err}");
    }

    #[test]
    fn a_ca_makes_verify_full_the_default_and_require_checks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, tessera_testpg::TestCa::new("Tessera test CA").cert_pem()).unwrap();
        let with_ca = PostgresOptions { ca_file: Some(ca.clone()), ..PostgresOptions::default() };
        assert_eq!(mode_of("postgres://t@localhost/x", &with_ca), Ok(SslMode::VerifyFull));
        assert!(connection("postgres://t@localhost/x", &with_ca).is_ok());
        assert_eq!(mode_of("postgres://t@db/x?sslmode=require", &with_ca), Ok(SslMode::VerifyCa));
        assert_eq!(mode_of("postgres://t@db/x?sslmode=verify-ca", &with_ca), Ok(SslMode::VerifyCa));
        let url = format!("postgres://t@db/x?sslrootcert={}", ca.display());
        assert_eq!(mode_of(&url, &PostgresOptions::default()), Ok(SslMode::VerifyFull));
        let url = format!("host=db sslrootcert='{}' sslmode=verify-ca", ca.display());
        assert_eq!(mode_of(&url, &PostgresOptions::default()), Ok(SslMode::VerifyCa));
        // verify-ca against the public roots would take any publicly issued certificate.
        let err = mode_of("postgres://t@db/x?sslmode=verify-ca", &PostgresOptions::default()).unwrap_err();
        assert!(err.contains("verify-ca needs"), "{err}");
        let err =
            mode_of("postgres://t@db/x?sslmode=verify-ca&sslrootcert=system", &PostgresOptions::default())
                .unwrap_err();
        assert!(err.contains("verify-ca needs"), "{err}");
        assert_eq!(
            mode_of("postgres://t@db/x?sslrootcert=system", &PostgresOptions::default()),
            Ok(SslMode::VerifyFull)
        );
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .unwrap();
        for (path, says) in [(missing, "No such file"), (empty, "no CERTIFICATE"), (broken, "")] {
            let options = PostgresOptions { ca_file: Some(path.clone()), ..PostgresOptions::default() };
            let err = connection("postgres://t@db/x", &options).err().unwrap().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_driver_gets_everything_but_the_tls_parameters() {
        let (rest, taken) =
            take_tls_params("postgres://t:p%40w@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=3")
                .unwrap();
        assert_eq!(rest, "postgres://t:p%40w@h:5/db?application_name=a&connect_timeout=3");
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/ca.pem".to_owned())
            ]
        );
        let (rest, _) = take_tls_params("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert!(take_tls_params("host=h password='unclosed").unwrap_err().contains("no closing quote"));
        assert!(take_tls_params("host=h sslmode").unwrap_err().contains("has no `=`"));
        let (rest, taken) =
            take_tls_params(r"host = h password='it\'s a \\ pw' user=t sslmode=verify-full dbname='my db'")
                .unwrap();
        assert_eq!(rest, r"host='h' password='it\'s a \\ pw' user='t' dbname='my db'");
        assert_eq!(taken, vec![("sslmode".to_owned(), "verify-full".to_owned())]);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&br"it's a \ pw"[..]));
        assert_eq!(config.get_dbname(), Some("my db"));
    }
}
