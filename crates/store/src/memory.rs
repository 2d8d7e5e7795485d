//! What every node holds in memory: the unsealed keys, the active key, the revocation set and
//! how far it has followed the change log. Verification reads only this; it changes only
//! through the follower, after the commit that justifies it.

mod revoked;

pub use revoked::{Merged, RevokedSet};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tessera_core::envelope::{Algorithm, SigningKey};
use tessera_core::{ChainKeyCache, KeyId, RootKey, TokenId, TokenKey};

use crate::codec::{
    AppRecord, KeyState, SigningKeyInfo, SigningKeyState, StoredApp, StoredKey, StoredSigningKey,
};
use crate::error::{Error, Result};
use crate::master::MasterKey;

struct KeyEntry {
    secret: RootKey,
    state: KeyState,
}

/// A JWT signing key, unsealed, with what is published about it.
#[derive(Clone)]
pub(crate) struct SigningEntry {
    pub(crate) key: Arc<SigningKey>,
    pub(crate) info: SigningKeyInfo,
}

/// The label a signing key's secret is sealed under (bound to its kid).
pub(crate) fn signing_label(kid: &str) -> Vec<u8> {
    [b"sig:".as_slice(), kid.as_bytes()].concat()
}

/// The in-memory state.
pub(crate) struct Memory {
    keys: RwLock<HashMap<KeyId, KeyEntry>>,
    /// Chain keys of recently verified families (cleared whenever the keys change).
    chain_keys: ChainKeyCache,
    /// A fresh generation (`new_key_generation`) whenever the keys change, set under the keys' lock
    /// (for the signature memo).
    key_generation: AtomicU64,
    signing: RwLock<Vec<SigningEntry>>,
    apps: RwLock<Vec<AppRecord>>,
    active: RwLock<Option<KeyId>>,
    /// Revoked token families: about 17 bytes an id (see [`RevokedSet`]).
    revoked: RwLock<RevokedSet>,
    /// The last change-log entry applied.
    last_seq: AtomicU64,
    /// When the database last answered the follower, in microseconds since [`epoch`] (an atomic,
    /// not a lock: the verify path reads it).
    last_contact_us: AtomicU64,
    /// Set by the store's watchdog when the database has been unheard for too long: the verify
    /// path reads this flag, not the clock.
    stale: AtomicBool,
}

/// A fixed instant of this process that contact times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Memory {
    pub(crate) fn new() -> Self {
        Memory {
            keys: RwLock::new(HashMap::new()),
            chain_keys: ChainKeyCache::default(),
            key_generation: AtomicU64::new(tessera_core::new_key_generation()),
            signing: RwLock::new(Vec::new()),
            apps: RwLock::new(Vec::new()),
            active: RwLock::new(None),
            revoked: RwLock::new(RevokedSet::new()),
            last_seq: AtomicU64::new(0),
            last_contact_us: AtomicU64::new(now_us()),
            stale: AtomicBool::new(false),
        }
    }

    /// Replace the keys with `stored`, unsealed with `master`.
    pub(crate) fn set_keys(&self, stored: Vec<(KeyId, StoredKey)>, master: &MasterKey) -> Result<()> {
        let mut keys = HashMap::with_capacity(stored.len());
        let mut active = None;
        for (kid, k) in stored {
            let secret = master.open(kid.as_bytes(), &k.sealed).ok_or(Error::WrongMasterKey)?;
            let secret =
                RootKey::new(&secret).map_err(|_| Error::Corrupt(format!("key {kid} is too short")))?;
            if k.state == KeyState::Active {
                active = Some(kid);
            }
            keys.insert(kid, KeyEntry { secret, state: k.state });
        }
        // Swap both under their locks; a reader never sees an active kid without its key.
        let mut keys_guard = self.keys.write().map_err(|_| Error::Closed)?;
        *keys_guard = keys;
        self.chain_keys.clear();
        self.key_generation.store(tessera_core::new_key_generation(), Ordering::Release);
        *self.active.write().map_err(|_| Error::Closed)? = active;
        Ok(())
    }

    /// Replace the signing keys with `stored`, unsealed with `master`.
    pub(crate) fn set_signing_keys(
        &self,
        stored: Vec<(String, StoredSigningKey)>,
        master: &MasterKey,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(stored.len());
        for (kid, k) in stored {
            let alg = Algorithm::from_name(&k.alg)
                .ok_or_else(|| Error::Corrupt(format!("signing key alg {}", k.alg)))?;
            let secret = master.open(&signing_label(&kid), &k.sealed).ok_or(Error::WrongMasterKey)?;
            let key = SigningKey::from_secret_bytes(alg, &secret)
                .map_err(|e| Error::Corrupt(format!("signing key {kid}: {e}")))?;
            out.push(SigningEntry { key: Arc::new(key), info: k.info(&kid) });
        }
        *self.signing.write().map_err(|_| Error::Closed)? = out;
        Ok(())
    }

    /// Every signing key, oldest first.
    pub(crate) fn signing_keys(&self) -> Vec<SigningEntry> {
        self.signing.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The signing key of `alg` that signs now for `owner` (`None`: the service).
    pub(crate) fn active_signing_key(&self, alg: Algorithm, owner: Option<&str>) -> Option<SigningEntry> {
        let s = self.signing.read().ok()?;
        s.iter()
            .find(|e| {
                e.info.state == SigningKeyState::Active
                    && e.info.alg == alg.name()
                    && e.info.owner.as_deref() == owner
            })
            .cloned()
    }

    /// Replace the applications.
    pub(crate) fn set_apps(&self, stored: Vec<(String, StoredApp)>) -> Result<()> {
        let apps = stored.into_iter().map(|(name, a)| a.into_record(name)).collect();
        *self.apps.write().map_err(|_| Error::Closed)? = apps;
        Ok(())
    }

    /// Every application, by name.
    pub(crate) fn apps(&self) -> Vec<AppRecord> {
        self.apps.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Add a revoked family. Now and then this rebuilds one 256th of the set with the ids added
    /// since it was built: made under the read lock, beside verification, and swapped in under
    /// the write lock, so verification waits for a swap, never for a rebuild.
    pub(crate) fn revoke(&self, tid: TokenId) {
        let Some(segment) = self.revoked.write().ok().and_then(|mut r| r.insert(tid)) else { return };
        let Some(merged) = self.revoked.read().ok().and_then(|r| r.merged(segment)) else { return };
        if let Ok(mut r) = self.revoked.write() {
            // Refused only when another rebuild of that segment won: its ids stay in the delta.
            r.install(merged);
        }
    }

    /// Before the whole log is applied at open: the set takes about `expected` ids (an upper
    /// bound: the log's length) into space reserved for them, so loading copies nothing and
    /// never holds two copies. Only an empty set is prepared (a no-op otherwise).
    pub(crate) fn begin_revoked_load(&self, expected: u64) {
        if let Ok(mut r) = self.revoked.write() {
            if r.is_empty() {
                *r = RevokedSet::loading(usize::try_from(expected).unwrap_or(usize::MAX));
            }
        }
    }

    /// After the log is applied at open: sort and index what was loaded.
    pub(crate) fn finish_revoked_load(&self) {
        if let Ok(mut r) = self.revoked.write() {
            r.finish_loading();
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    pub(crate) fn set_last_seq(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Release);
    }

    /// The database answered now.
    pub(crate) fn touch(&self) {
        self.last_contact_us.store(now_us(), Ordering::Release);
    }

    /// How long since the database last answered.
    pub(crate) fn since_contact(&self) -> Duration {
        Duration::from_micros(now_us().saturating_sub(self.last_contact_us.load(Ordering::Acquire)))
    }

    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Re-evaluate the stale flag against `limit` (the watchdog, and every check that reports).
    pub(crate) fn update_stale(&self, limit: Duration) -> bool {
        let stale = self.since_contact() > limit;
        self.stale.store(stale, Ordering::Release);
        stale
    }

    pub(crate) fn active_key(&self) -> Option<(KeyId, RootKey)> {
        let kid = (*self.active.read().ok()?)?;
        let keys = self.keys.read().ok()?;
        keys.get(&kid).map(|e| (kid, e.secret.clone()))
    }

    pub(crate) fn verifying_key(&self, kid: &KeyId) -> Option<RootKey> {
        let keys = self.keys.read().ok()?;
        keys.get(kid).filter(|e| e.state != KeyState::Revoked).map(|e| e.secret.clone())
    }

    /// Changes whenever the keys do.
    pub(crate) fn key_generation(&self) -> u64 {
        self.key_generation.load(Ordering::Acquire)
    }

    pub(crate) fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        let keys = self.keys.read().ok()?;
        keys.get(kid).filter(|e| e.state != KeyState::Revoked).map(|e| e.secret.token_key(tid))
    }

    /// The chain key of `tid`, cached; the key must still be usable (checked on every call, so a
    /// cached entry never outlives its key's revocation).
    pub(crate) fn chain_key(&self, kid: &KeyId, tid: &TokenId) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let keys = self.keys.read().ok()?;
        let entry = keys.get(kid).filter(|e| e.state != KeyState::Revoked)?;
        self.chain_keys.get_or(kid, tid, || Some(entry.secret.token_key(tid)))
    }

    pub(crate) fn is_revoked(&self, tid: &TokenId) -> bool {
        self.revoked.read().map(|r| r.contains(tid)).unwrap_or(true)
    }

    pub(crate) fn revoked_count(&self) -> usize {
        self.revoked.read().map(|r| r.len()).unwrap_or(0)
    }
}
