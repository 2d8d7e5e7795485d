//! The store: redb tables, in-memory key and revocation caches, and a group-committing writer.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, TableDefinition};
use tessera_core::{KeyId, KeyProvider, RootKey, TokenId, TokenKey, MAX_SUBJECT};
use time::OffsetDateTime;

use crate::codec::{
    self, KeyInfo, KeyState, NewToken, Revocation, RevocationTarget, StoredKey, StoredRevocation,
    StoredToken, TokenRecord, MAX_CAVEAT_SUMMARY, MAX_DESCRIPTION, SCHEMA_VERSION,
};
use crate::error::{storage, Error, Result};
use crate::master::MasterKey;
use crate::writer::{Done, Job, Op, Writer};

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const KEYS: TableDefinition<[u8; 8], &[u8]> = TableDefinition::new("keys");
pub(crate) const TOKENS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("tokens");
pub(crate) const BY_SUBJECT: TableDefinition<(&str, [u8; 16]), ()> =
    TableDefinition::new("tokens_by_subject");
pub(crate) const REVOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");
/// Lineage: (parent tid, child tid) for tokens minted from a token (schema version 2).
pub(crate) const CHILDREN: TableDefinition<([u8; 16], [u8; 16]), ()> = TableDefinition::new("token_children");

const CHECK_LABEL: &[u8] = b"check";
const CHECK_VALUE: &[u8] = b"tessera master key check v1";

pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) struct KeyEntry {
    pub(crate) secret: RootKey,
    pub(crate) state: KeyState,
}

/// In-memory state, changed only after the commit that justifies it.
pub(crate) struct Memory {
    pub(crate) keys: RwLock<HashMap<KeyId, KeyEntry>>,
    pub(crate) active: RwLock<Option<KeyId>>,
    pub(crate) revoked: RwLock<HashSet<TokenId>>,
}

/// The key store. Cheap to clone (shared); safe to use from many threads.
///
/// Every call that returns `Ok` after writing has committed durably (`Durability::Immediate`).
/// Concurrent writers share commits: one writer thread drains every queued operation into one
/// transaction, so eight concurrent mints cost about one fsync, not eight.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    mem: Arc<Memory>,
    tx: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the database at `path`, sealed with `master`.
    ///
    /// A new database records its schema version and a sealed check value; an existing one must
    /// have a schema this build understands and must open with `master`, or nothing is written.
    pub fn open(path: impl AsRef<Path>, master: MasterKey) -> Result<Store> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
        }
        let new_file = !path.exists();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse(path.display().to_string()),
            other => storage(other),
        })?;
        #[cfg(unix)]
        if new_file {
            // Records and sealed secrets: readable by the service's user only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        }
        #[cfg(not(unix))]
        let _ = new_file;
        check_or_init(&db, &master)?;
        let (mem, next_seq) = load(&db, &master)?;
        let db = Arc::new(db);
        let mem = Arc::new(mem);
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = {
            let db = Arc::clone(&db);
            let mem = Arc::clone(&mem);
            std::thread::Builder::new()
                .name("tessera-store-writer".into())
                .spawn(move || Writer { db, mem, master, next_seq }.run(rx))
                .map_err(|source| Error::Io { path: "writer thread".into(), source })?
        };
        Ok(Store {
            inner: Arc::new(Inner { db, mem, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) }),
        })
    }

    fn submit(&self, op: Op) -> Result<Done> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let tx = self.inner.tx.lock().map_err(|_| Error::Closed)?;
            tx.as_ref().ok_or(Error::Closed)?.send((op, reply)).map_err(|_| Error::Closed)?;
        }
        answer.recv().map_err(|_| Error::Closed)?
    }

    // ---- keys ----------------------------------------------------------------------------

    /// Create a fresh random key and make it the active signing key; the previous active key
    /// becomes retired (it still verifies). Returns the new key's metadata.
    pub fn rotate(&self) -> Result<KeyInfo> {
        let secret = RootKey::generate().map_err(|_| Error::Random)?;
        self.import_key(secret.expose_secret(), true)
    }

    /// Import a configured secret (at least 32 bytes). With `activate`, it becomes the signing key
    /// (the previous one retires); otherwise it only verifies.
    pub fn import_key(&self, secret: &[u8], activate: bool) -> Result<KeyInfo> {
        let secret = RootKey::new(secret).map_err(|_| Error::KeyTooShort(secret.len()))?;
        let kid = KeyId::generate().map_err(|_| Error::Random)?;
        match self.submit(Op::AddKey { kid, secret, activate })? {
            Done::Key(info) => Ok(info),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Revoke a key: it neither signs nor verifies again, so every token it signed is dead.
    pub fn revoke_key(&self, kid: KeyId) -> Result<Option<Revocation>> {
        match self.submit(Op::RevokeKey(kid))? {
            Done::Revocation(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Metadata of every key (never secrets), by creation time (seconds; ties by key id).
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KEYS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.range::<[u8; 8]>(..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let stored: StoredKey = codec::decode(v.value(), "key")?;
            out.push(stored.info(KeyId::from_bytes(k.value())));
        }
        out.sort_by_key(|k| (k.created, *k.kid.as_bytes()));
        Ok(out)
    }

    /// The active signing key, if any.
    pub fn active_key(&self) -> Option<(KeyId, RootKey)> {
        let kid = (*self.inner.mem.active.read().ok()?)?;
        let keys = self.inner.mem.keys.read().ok()?;
        keys.get(&kid).map(|e| (kid, e.secret.clone()))
    }

    /// The secret of a key that can still verify (active or retired).
    pub fn verifying_key(&self, kid: &KeyId) -> Option<RootKey> {
        let keys = self.inner.mem.keys.read().ok()?;
        keys.get(kid).filter(|e| e.state != KeyState::Revoked).map(|e| e.secret.clone())
    }

    // ---- tokens --------------------------------------------------------------------------

    /// Record a minted token, durably. Refuses unknown or revoked keys, duplicate ids and
    /// oversized fields, writing nothing.
    pub fn record_token(&self, new: NewToken) -> Result<TokenRecord> {
        check_len("subject", new.subject.len(), MAX_SUBJECT)?;
        check_len("description", new.description.len(), MAX_DESCRIPTION)?;
        check_len("caveat summary", new.caveats.iter().map(String::len).sum(), MAX_CAVEAT_SUMMARY)?;
        match self.submit(Op::Record(new))? {
            Done::Token(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// One token record.
    pub fn token(&self, tid: &TokenId) -> Result<Option<TokenRecord>> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        match table.get(tid.as_bytes()).map_err(storage)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode::<StoredToken>(v.value(), "token")?.into_record(*tid))),
        }
    }

    /// Every token record of a subject (metadata only), oldest first.
    pub fn tokens_of(&self, subject: &str) -> Result<Vec<TokenRecord>> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let index = txn.open_table(BY_SUBJECT).map_err(storage)?;
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for row in index.range((subject, [0u8; 16])..=(subject, [0xffu8; 16])).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            let tid = TokenId::from_bytes(k.value().1);
            if let Some(v) = tokens.get(tid.as_bytes()).map_err(storage)? {
                out.push(codec::decode::<StoredToken>(v.value(), "token")?.into_record(tid));
            }
        }
        out.sort_by_key(|r| (r.created, *r.tid.as_bytes()));
        Ok(out)
    }

    /// Revoke a token family (the token and all its attenuations) and, transitively, every
    /// token minted from it. Returns one log entry per newly revoked family, the given one first
    /// (then descendants, breadth first); empty when it was already revoked (revoking twice
    /// changes nothing). All of them commit together or none does.
    pub fn revoke_token(&self, tid: TokenId) -> Result<Vec<Revocation>> {
        match self.submit(Op::RevokeToken(tid))? {
            Done::Revocations(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// The token ids minted directly from `tid` (its children), in id order.
    pub fn children_of(&self, tid: &TokenId) -> Result<Vec<TokenId>> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(CHILDREN).map_err(storage)?;
        let mut out = Vec::new();
        for row in
            table.range((*tid.as_bytes(), [0u8; 16])..=(*tid.as_bytes(), [0xffu8; 16])).map_err(storage)?
        {
            out.push(TokenId::from_bytes(row.map_err(storage)?.0.value().1));
        }
        Ok(out)
    }

    /// Revocations with a sequence number above `after`, at most `limit`, in order: what a
    /// verifier cache polls.
    pub fn revocations_after(&self, after: u64, limit: usize) -> Result<Vec<Revocation>> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(REVOCATIONS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            let stored: StoredRevocation = codec::decode(v.value(), "revocation")?;
            out.push(Revocation { seq: k.value(), at: stored.at, target: stored.target.into() });
        }
        Ok(out)
    }

    /// Whether a token family is revoked (in-memory set, O(1)).
    pub fn is_token_revoked(&self, tid: &TokenId) -> bool {
        self.inner.mem.revoked.read().map(|r| r.contains(tid)).unwrap_or(true)
    }

    /// Number of revoked token families held in memory.
    pub fn revoked_count(&self) -> usize {
        self.inner.mem.revoked.read().map(|r| r.len()).unwrap_or(0)
    }
}

impl KeyProvider for Store {
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        let keys = self.inner.mem.keys.read().ok()?;
        keys.get(kid).filter(|e| e.state != KeyState::Revoked).map(|e| e.secret.token_key(tid))
    }

    fn is_revoked(&self, tid: &TokenId) -> bool {
        self.is_token_revoked(tid)
    }
}

fn check_len(what: &'static str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge { what, size, limit });
    }
    Ok(())
}

/// An existing database's schema version, once it is known to be one this build reads and to
/// open with `master`; `None` for a new database.
fn check_existing(db: &Database, master: &MasterKey) -> Result<Option<u32>> {
    let txn = db.begin_read().map_err(storage)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let (Some(version), Some(check)) =
        (meta.get("schema").map_err(storage)?, meta.get("check").map_err(storage)?)
    else {
        return Ok(None);
    };
    let found: u32 = codec::decode(version.value(), "schema version")?;
    if found > SCHEMA_VERSION {
        return Err(Error::NewerSchema { found, supported: SCHEMA_VERSION });
    }
    match master.open(CHECK_LABEL, check.value()) {
        Some(v) if v.as_slice() == CHECK_VALUE => Ok(Some(found)),
        _ => Err(Error::WrongMasterKey),
    }
}

/// New database: write schema version and check value. Existing: verify both, and migrate an
/// older schema (after the master key check, so a wrong key writes nothing).
pub(crate) fn check_or_init(db: &Database, master: &MasterKey) -> Result<()> {
    if let Some(found) = check_existing(db, master)? {
        // Every read guard is gone before the migration writes.
        return if found < SCHEMA_VERSION { migrate(db) } else { Ok(()) };
    }
    let sealed = master.seal(CHECK_LABEL, CHECK_VALUE)?;
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert("schema", codec::encode(&SCHEMA_VERSION).as_slice()).map_err(storage)?;
        meta.insert("check", sealed.as_slice()).map_err(storage)?;
        txn.open_table(KEYS).map_err(storage)?;
        txn.open_table(TOKENS).map_err(storage)?;
        txn.open_table(BY_SUBJECT).map_err(storage)?;
        txn.open_table(REVOCATIONS).map_err(storage)?;
        txn.open_table(CHILDREN).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Bring an older database to [`SCHEMA_VERSION`] (after the master key check), in one
/// transaction: version 1 → 2 adds the children index (existing records have no parent).
fn migrate(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(CHILDREN).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert("schema", codec::encode(&SCHEMA_VERSION).as_slice()).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Unseal every key and rebuild the revocation set from the log.
pub(crate) fn load(db: &Database, master: &MasterKey) -> Result<(Memory, u64)> {
    let txn = db.begin_read().map_err(storage)?;
    let mut keys = HashMap::new();
    let mut active = None;
    for row in txn.open_table(KEYS).map_err(storage)?.range::<[u8; 8]>(..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        let kid = KeyId::from_bytes(k.value());
        let stored: StoredKey = codec::decode(v.value(), "key")?;
        let secret = master.open(kid.as_bytes(), &stored.sealed).ok_or(Error::WrongMasterKey)?;
        let secret = RootKey::new(&secret).map_err(|_| Error::Corrupt(format!("key {kid} is too short")))?;
        if stored.state == KeyState::Active {
            active = Some(kid);
        }
        keys.insert(kid, KeyEntry { secret, state: stored.state });
    }
    let mut revoked = HashSet::new();
    let mut next_seq = 1;
    for row in txn.open_table(REVOCATIONS).map_err(storage)?.range::<u64>(..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        next_seq = k.value() + 1;
        let stored: StoredRevocation = codec::decode(v.value(), "revocation")?;
        if let RevocationTarget::Token(tid) = stored.target.into() {
            revoked.insert(tid);
        }
    }
    let mem = Memory { keys: RwLock::new(keys), active: RwLock::new(active), revoked: RwLock::new(revoked) };
    Ok((mem, next_seq))
}
