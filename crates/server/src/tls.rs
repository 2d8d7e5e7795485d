//! TLS on the listener (`--tls-cert`, `--tls-key`): rustls 0.23 on ring, TLS 1.2 and 1.3 only,
//! HTTP/1.1 as without TLS.
//!
//! The certificate is served through a resolver that holds the current chain and key; a thread
//! reads the two files every [`RELOAD_CHECK`] and, when either differs from what was last read
//! (compared by SHA-256 of the bytes: a modification time can stay the same across two quick
//! writes of a file of the same size), makes a certificate of them again, so an ACME client's
//! renewal, a replaced symlink or a remounted secret takes effect without a restart. A
//! reload that fails (a half-written file, a key that does not match) keeps the certificate
//! being served and logs why; it is tried again when the files change again. Handshakes read
//! the current certificate under a read lock, never a file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::Config;

/// How often the certificate and key files are read (a few KiB each).
pub(crate) const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// What a file held when last read: the digest of its bytes (`None`: unreadable).
type Stamp = Option<[u8; 32]>;

fn stamp(path: &Path) -> Stamp {
    use sha2::Digest as _;
    std::fs::read(path).ok().map(|bytes| sha2::Sha256::digest(&bytes).into())
}

/// The certificate and key served, and where they come from.
#[derive(Debug)]
pub(crate) struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when they were last read, successfully or not.
    seen: RwLock<(Stamp, Stamp)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

impl Reloading {
    /// Read both files (an error names the file and what is wrong with it).
    pub(crate) fn open(cert: &Path, key: &Path) -> Result<Arc<Reloading>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Stamps first: a change made while the files are being read is seen by the next check.
        let seen = (stamp(cert), stamp(key));
        let first = load(cert, key, &provider)?;
        Ok(Arc::new(Reloading {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(first)),
            seen: RwLock::new(seen),
        }))
    }

    /// Read the files again if they changed since last read: `Ok(true)` when a new certificate
    /// is served from now on, `Ok(false)` when nothing changed, `Err` (the certificate served
    /// is kept) when the changed files do not make a certificate.
    pub(crate) fn check(&self) -> Result<bool, String> {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let fresh = load(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(true)
    }

    /// The end-entity certificate served now (DER).
    #[cfg(test)]
    pub(crate) fn serving(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

/// The listener's TLS configuration when `--tls-cert` and `--tls-key` are given (both or
/// neither), with its reload thread running.
pub(crate) fn from_config(config: &Config) -> Result<Option<ServerConfig>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => server_config(cert, key).map(Some),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together: give both, or neither for plain HTTP".into()),
    }
}

/// The listener's rustls configuration, and a thread that reloads the certificate when its
/// files change (it ends once the configuration is dropped).
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let resolver = Reloading::open(cert, key)?;
    let config = ServerConfig::builder_with_provider(resolver.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    let weak = Arc::downgrade(&resolver);
    std::thread::Builder::new()
        .name("tessera-tls-reload".into())
        .spawn(move || watch(weak))
        .map_err(|e| format!("TLS: cannot start the certificate reload thread: {e}"))?;
    Ok(config)
}

fn watch(resolver: Weak<Reloading>) {
    loop {
        std::thread::sleep(RELOAD_CHECK);
        let Some(r) = resolver.upgrade() else { return };
        match r.check() {
            Ok(true) => tracing::info!(cert = %r.cert.display(), "TLS certificate reloaded"),
            Ok(false) => {}
            Err(why) => tracing::warn!("TLS certificate not reloaded, still serving the previous one: {why}"),
        }
    }
}

/// The chain of `cert` and the key of `key`, checked to belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert_err = |what: String| format!("--tls-cert {}: {what}", cert.display());
    let key_err = |what: String| format!("--tls-key {}: {what}", key.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(read_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE in it (a PEM certificate chain, the server's first)".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        key_err(match e {
            pem::Error::NoItemsFound => {
                "no private key in it (PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
            }
            other => read_error(other),
        })
    })?;
    warn_if_readable_by_others(key);
    let signing =
        provider.key_provider.load_private_key(der).map_err(|e| key_err(format!("not a usable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not belong to the certificate of --tls-cert {} ({e})",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

fn read_error(e: pem::Error) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM: {other}"),
    }
}

/// A private key others may read is worth a word (refusing it would break setups that share
/// it with a group, or mount it 0644 from a secret store).
fn warn_if_readable_by_others(key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(key).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
            tracing::warn!(key = %key.display(), "the TLS private key is readable by every user: chmod o-r it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testpg::TestCa;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let a = ca.issue(&["localhost"]);
        let b = ca.issue(&["localhost"]);
        let cert = write(dir.path(), "cert.pem", &a.cert_pem);
        let key = write(dir.path(), "key.pem", &a.key_pem);
        let other_key = write(dir.path(), "other.pem", &b.key_pem);
        let garbage = write(dir.path(), "garbage.pem", "hello\n");
        let broken =
            write(dir.path(), "broken.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let missing = dir.path().join("missing.pem");
        let cases: [(&Path, &Path, &str); 7] = [
            (&missing, &key, "--tls-cert"),
            (&garbage, &key, "no CERTIFICATE"),
            (&broken, &key, "not valid PEM"),
            (&key, &key, "no CERTIFICATE"),
            (&cert, &missing, "--tls-key"),
            (&cert, &cert, "no private key"),
            (&cert, &other_key, "does not belong to the certificate"),
        ];
        for (c, k, says) in cases {
            let err = Reloading::open(c, k).unwrap_err();
            assert!(err.contains(says), "{err}");
            let named = if says == "--tls-key" || says == "no private key" { k } else { c };
            assert!(err.contains(&named.display().to_string()), "{err}");
        }
        assert!(Reloading::open(&cert, &key).is_ok());
    }

    #[test]
    fn changed_files_are_served_and_a_bad_change_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let first = ca.issue(&["localhost"]);
        let cert = write(dir.path(), "cert.pem", &first.cert_pem);
        let key = write(dir.path(), "key.pem", &first.key_pem);
        let r = Reloading::open(&cert, &key).unwrap();
        assert_eq!(r.check(), Ok(false));
        assert_eq!(r.serving(), first.cert_der);

        // Half a renewal: the new certificate with the old key. Refused, the old one served.
        let second = ca.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(&cert, &second.cert_pem).unwrap();
        let err = r.check().unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        assert_eq!(r.serving(), first.cert_der);
        // Not tried again until the files change again.
        assert_eq!(r.check(), Ok(false));

        // The key follows: the new certificate is served.
        std::fs::write(&key, &second.key_pem).unwrap();
        assert_eq!(r.check(), Ok(true));
        assert_eq!(r.serving(), second.cert_der);

        // A file that is being written (empty for now) keeps the current one.
        std::fs::write(&cert, "").unwrap();
        assert!(r.check().unwrap_err().contains("no CERTIFICATE"));
        assert_eq!(r.serving(), second.cert_der);
    }
}
