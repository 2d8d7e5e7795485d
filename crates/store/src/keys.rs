//! The store's keys: the root keys that sign tokens, the signing keys of JWT envelopes, and the
//! applications' records (each registered with its credential token). Reads come from memory;
//! writes go through the writer's group commit like every other.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::envelope::{Algorithm, PublicKey, SigningKey};
use tessera_core::{KeyId, RootKey};

use crate::codec::{AppRecord, KeyInfo, NewToken, Revocation, SigningKeyInfo};
use crate::error::{Error, Result};
use crate::store::check_len;
use crate::writer::{Done, Op};
use crate::Store;

impl Store {
    /// Create a fresh random key and make it the active signing key; the previous active key
    /// becomes retired (it still verifies). Returns the new key's metadata.
    pub fn rotate(&self) -> Result<KeyInfo> {
        let secret = RootKey::generate().map_err(|_| Error::Random)?;
        self.import_key(secret.expose_secret(), true)
    }

    /// Create the first key, unless the database has one already (on a cluster, exactly one of
    /// the nodes starting together creates it). Returns its metadata when this call created it.
    pub fn create_first_key(&self) -> Result<Option<KeyInfo>> {
        let secret = RootKey::generate().map_err(|_| Error::Random)?;
        let kid = KeyId::generate().map_err(|_| Error::Random)?;
        match self.submit(Op::AddKey { kid, secret, activate: true, only_if_none: true }) {
            Ok(Done::Key(info)) => Ok(info),
            Err(Error::KeysExist) => Ok(None),
            Ok(_) => Err(Error::Corrupt("unexpected writer reply".into())),
            Err(e) => Err(e),
        }
    }

    /// Import a configured secret (at least 32 bytes). With `activate`, it becomes the signing key
    /// (the previous one retires); otherwise it only verifies.
    pub fn import_key(&self, secret: &[u8], activate: bool) -> Result<KeyInfo> {
        let secret = RootKey::new(secret).map_err(|_| Error::KeyTooShort(secret.len()))?;
        let kid = KeyId::generate().map_err(|_| Error::Random)?;
        match self.submit(Op::AddKey { kid, secret, activate, only_if_none: false })? {
            Done::Key(Some(info)) => Ok(info),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Revoke a key: it neither signs nor verifies again, so every token it signed is dead.
    /// Revoking the active key leaves none active (see [`Store::revoke_key_replacing`]).
    pub fn revoke_key(&self, kid: KeyId) -> Result<Option<Revocation>> {
        match self.submit(Op::RevokeKey { kid, replacement: None })? {
            Done::KeyRevoked(r, _) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Revoke a key and, when it was the active key, make a new key active in the same
    /// transaction: minting goes on, and concurrent revocations of the active key (on any node)
    /// make exactly one new key. Returns the log entry (none when the key was revoked already)
    /// and the new active key, if one was made.
    pub fn revoke_key_replacing(&self, kid: KeyId) -> Result<(Option<Revocation>, Option<KeyId>)> {
        let secret = RootKey::generate().map_err(|_| Error::Random)?;
        let new_kid = KeyId::generate().map_err(|_| Error::Random)?;
        match self.submit(Op::RevokeKey { kid, replacement: Some((new_kid, secret)) })? {
            Done::KeyRevoked(r, active) => Ok((r, active)),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Metadata of every key (never secrets), by creation time (seconds; ties by key id).
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out: Vec<KeyInfo> = self.inner.backend.keys()?.iter().map(|(kid, k)| k.info(*kid)).collect();
        out.sort_by_key(|k| (k.created, *k.kid.as_bytes()));
        Ok(out)
    }

    /// The active signing key, if any.
    pub fn active_key(&self) -> Option<(KeyId, RootKey)> {
        self.inner.mem.active_key()
    }

    /// The secret of a key that can still verify (active or retired).
    pub fn verifying_key(&self, kid: &KeyId) -> Option<RootKey> {
        self.inner.mem.verifying_key(kid)
    }

    // ---- JWT signing keys ----------------------------------------------------------------

    /// Create the first signing keys of `alg` (ES256 or EdDSA): one active, and one published
    /// as the next (so verifiers' JWKS caches hold it before it signs). Nothing when `alg` has
    /// keys already (also on a cluster, where nodes start together). Returns whether this call
    /// created them.
    pub fn ensure_signing_keys(&self, alg: Algorithm) -> Result<bool> {
        let gen = || SigningKey::generate(alg).map_err(|e| Error::Corrupt(e.to_string()));
        match self.submit(Op::EnsureSigning { active: Box::new(gen()?), next: Box::new(gen()?) }) {
            Ok(Done::Signing(_)) => Ok(true),
            Err(Error::KeysExist) => Ok(false),
            Ok(_) => Err(Error::Corrupt("unexpected writer reply".into())),
            Err(e) => Err(e),
        }
    }

    /// Rotate the signing keys of `alg`: the next key (published at least `min_published` ago,
    /// or [`Error::TooEarly`]) starts signing, the active one retires (it stays published while
    /// envelopes it signed may be valid; the service decides how long), and a new next key is
    /// published. Returns the keys that changed.
    /// With `owner`, the keys of that application rotate, and nobody else's.
    pub fn rotate_signing_key(
        &self,
        alg: Algorithm,
        min_published: Duration,
        owner: Option<&str>,
    ) -> Result<Vec<SigningKeyInfo>> {
        let next = SigningKey::generate(alg).map_err(|e| Error::Corrupt(e.to_string()))?;
        let min_published = i64::try_from(min_published.as_secs()).unwrap_or(i64::MAX);
        let owner = owner.map(str::to_owned);
        match self.submit(Op::RotateSigning { next: Box::new(next), min_published, owner })? {
            Done::Signing(keys) => Ok(keys),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Every signing key (metadata and public JWK), oldest first.
    pub fn signing_keys(&self) -> Vec<SigningKeyInfo> {
        self.inner.mem.signing_keys().into_iter().map(|e| e.info).collect()
    }

    /// The key of `alg` that signs now for `owner` (an application with keys of its own; `None`
    /// for the service), with its kid.
    pub fn active_signing_key(
        &self,
        alg: Algorithm,
        owner: Option<&str>,
    ) -> Option<(String, Arc<SigningKey>)> {
        self.inner.mem.active_signing_key(alg, owner).map(|e| (e.info.kid, e.key))
    }

    // ---- applications --------------------------------------------------------------------

    /// Register an application, durably and atomically with its credential's record and, when
    /// it has keys of its own, an active and a next signing key for each public-key algorithm it
    /// allows. Names and audiences are unique ([`Error::AppExists`]).
    pub fn register_app(&self, app: AppRecord, credential: NewToken) -> Result<AppRecord> {
        check_len("application name", app.name.len(), 64)?;
        check_len("audience", app.audience.len(), 256)?;
        let mut keys = Vec::new();
        if app.own_keys {
            for alg in app.algorithms.iter().filter_map(|a| Algorithm::from_name(a)) {
                if alg != Algorithm::Hs256 {
                    let gen = || SigningKey::generate(alg).map_err(|e| Error::Corrupt(e.to_string()));
                    keys.push((gen()?, gen()?));
                }
            }
        }
        match self.submit(Op::CreateApp { app: Box::new(app), credential, keys })? {
            Done::App(a) => Ok(*a),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Disable an application: its credential (and every token minted from it) is revoked, and
    /// it gets no more envelopes. Its public keys stay published until what they signed expires.
    /// Disabling twice changes nothing.
    pub fn disable_app(&self, name: &str) -> Result<AppRecord> {
        match self.submit(Op::DisableApp(name.to_owned()))? {
            Done::App(a) => Ok(*a),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Every application, by name (from memory: every node follows registrations).
    pub fn apps(&self) -> Vec<AppRecord> {
        self.inner.mem.apps()
    }

    /// One application.
    pub fn app(&self, name: &str) -> Option<AppRecord> {
        self.inner.mem.apps().into_iter().find(|a| a.name == name)
    }

    /// The public key of a signing key by kid (any state), to verify envelopes locally.
    pub fn signing_public_key(&self, kid: &str) -> Option<PublicKey> {
        self.inner.mem.signing_keys().into_iter().find(|e| e.info.kid == kid).and_then(|e| e.key.public_key())
    }
}
