//! The master key: 32 bytes that seal every root-key secret at rest.
//!
//! Sealing uses XSalsa20-Poly1305 (RustCrypto `crypto_secretbox`) under a per-purpose key
//! `H(master, "tessera/seal/v1" ‖ label)`, where the label is the key id (or `check` for the
//! database's check value), so a sealed secret only opens for the kid it was sealed for.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crypto_secretbox::aead::{Aead, KeyInit as _};
use crypto_secretbox::XSalsa20Poly1305;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Environment variable that may carry the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "TESSERA_MASTER_KEY";
const NONCE: usize = 24;
const CHECK_LABEL: &[u8] = b"check";
const CHECK_VALUE: &[u8] = b"tessera master key check v1";

/// The 32-byte master key. `Debug` prints `[redacted]`; zeroized on drop; no equality.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|_| Error::Random)?;
        Ok(MasterKey(k))
    }

    /// Raw bytes (exactly 32).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// Parse 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self> {
        let t = text.trim().as_bytes();
        if t.len() != 64 {
            return Err(Error::BadMasterKey(format!("{} characters", t.len())));
        }
        let mut k = [0u8; 32];
        for (i, pair) in t.chunks_exact(2).enumerate() {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(h), Some(l)) => k[i] = h << 4 | l,
                _ => return Err(Error::BadMasterKey("not hex".into())),
            }
        }
        Ok(MasterKey(k))
    }

    /// The hex form (for writing the key file; never log it).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64));
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    /// Read the key from `path`, or create the file (mode 0600) with a fresh key when it does
    /// not exist. Refuses a file readable by group or others. Returns the key and whether the
    /// file was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        let io = |source| Error::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_permissions(path)?;
                let text = Zeroizing::new(text);
                Ok((Self::from_hex(&text)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(path).map_err(io)?;
                f.write_all(key.to_hex().as_bytes()).map_err(io)?;
                f.write_all(b"\n").map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok((key, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key from `TESSERA_MASTER_KEY` if set, else from (or created at) `path`.
    pub fn from_env_or_file(path: &Path) -> Result<(Self, bool)> {
        match std::env::var(MASTER_KEY_ENV) {
            Ok(v) => Ok((Self::from_hex(&Zeroizing::new(v))?, false)),
            Err(_) => Self::load_or_create(path),
        }
    }

    /// The key for the database at `db`: from `TESSERA_MASTER_KEY` if set, else from `path`. A
    /// new key file is created only when the database does not exist yet: a lost key file next
    /// to an existing database is an error, never silently replaced.
    pub fn for_database(path: &Path, db: &Path) -> Result<(Self, bool)> {
        if std::env::var_os(MASTER_KEY_ENV).is_none() && db.exists() && !path.exists() {
            return Err(Error::MissingMasterKey {
                key: path.display().to_string(),
                db: db.display().to_string(),
            });
        }
        Self::from_env_or_file(path)
    }

    /// The sealed check value a new database stores, so that a wrong key is recognised before
    /// anything is written.
    pub(crate) fn check_value(&self) -> Result<Vec<u8>> {
        self.seal(CHECK_LABEL, CHECK_VALUE)
    }

    /// Whether `sealed` is this key's check value.
    pub(crate) fn opens_check(&self, sealed: &[u8]) -> bool {
        self.open(CHECK_LABEL, sealed).is_some_and(|v| v.as_slice() == CHECK_VALUE)
    }

    fn cipher(&self, label: &[u8]) -> XSalsa20Poly1305 {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(b"tessera/seal/v1");
        m.update(label);
        let k = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
        XSalsa20Poly1305::new(k.as_slice().into())
    }

    /// A key for another purpose than sealing: `H(master, purpose)`, where `purpose` is a label
    /// no sealing label starts like (`tessera/audit/v1` for the audit chain).
    pub(crate) fn derive(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(purpose);
        Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()))
    }

    /// Seal `secret` for `label`: `nonce(24) ‖ ciphertext+tag`.
    pub(crate) fn seal(&self, label: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|_| Error::Random)?;
        let ct = self
            .cipher(label)
            .encrypt((&nonce).into(), secret)
            .map_err(|_| Error::Corrupt("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open a sealed value; `None` when the key (or label) is wrong or the value was altered.
    pub(crate) fn open(&self, label: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE {
            return None;
        }
        let nonce: &[u8; NONCE] = sealed[..NONCE].try_into().ok()?;
        self.cipher(label).decrypt(nonce.into(), &sealed[NONCE..]).ok().map(Zeroizing::new)
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::MasterKeyPermissions(path.display().to_string()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let m = MasterKey::generate().unwrap();
        let sealed = m.seal(b"kid-1", b"secret bytes").unwrap();
        assert_eq!(m.open(b"kid-1", &sealed).unwrap().as_slice(), b"secret bytes");
        assert!(m.open(b"kid-2", &sealed).is_none(), "bound to its label");
        assert!(MasterKey::generate().unwrap().open(b"kid-1", &sealed).is_none(), "wrong master key");
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert!(m.open(b"kid-1", &tampered).is_none());
        assert!(m.open(b"kid-1", &sealed[..10]).is_none());
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let m = MasterKey::generate().unwrap();
        let again = MasterKey::from_hex(&m.to_hex()).unwrap();
        let sealed = m.seal(b"x", b"y").unwrap();
        assert!(again.open(b"x", &sealed).is_some());
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(format!("{m:?}").contains("redacted"));
    }

    #[test]
    fn key_file_is_created_0600_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_hex(), k2.to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(MasterKey::load_or_create(&path), Err(Error::MasterKeyPermissions(_))));
        }
    }
}
