//! The embedded backend: one redb file, one process.
//!
//! Tables: `meta` (schema version, sealed check value), `keys`, `tokens`, `tokens_by_subject`,
//! `token_children` and `revocations`, which is the change log (its name is from schema 1, when
//! it held only revocations; key changes are entries too since schema 2), `signing_keys` (schema
//! 3), `apps` (schema 4), `sessions` (schema 5) and `notices` (schema 6).

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tessera_core::{KeyId, SessionId, TokenId};

use super::{ApplyOp, Backend, Change, Event, Tx};
use crate::audit::{AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditKey, AuditRow, Only};
use crate::codec::{
    self, Notice, StoredApp, StoredKey, StoredRevocation, StoredSession, StoredSigningKey, StoredTarget,
    StoredToken, SCHEMA_VERSION,
};
use crate::error::{storage, Error, Result};
use crate::master::MasterKey;
use tables::Tables;

mod audit;
mod entry;
mod tables;
mod tx;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<[u8; 8], &[u8]> = TableDefinition::new("keys");
const TOKENS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("tokens");
const BY_SUBJECT: TableDefinition<(&str, [u8; 16]), ()> = TableDefinition::new("tokens_by_subject");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");
/// Lineage: (parent tid, child tid) for tokens minted from a token (schema version 2).
const CHILDREN: TableDefinition<([u8; 16], [u8; 16]), ()> = TableDefinition::new("token_children");
/// JWT signing keys by kid (thumbprint), created when first written.
const SIGNING: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");
/// Registered applications by name (schema version 4).
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Sessions by id (schema version 5).
const SESSIONS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("sessions");
/// Expiry notices by (tid, threshold) (schema version 6).
const NOTICES: TableDefinition<([u8; 16], i64), &[u8]> = TableDefinition::new("notices");

/// redb's page cache (its default is 1 GiB). Open reads the whole change log, which would
/// otherwise stay in it: about 70 bytes per revocation, four times what the revocation set costs
/// (docs/BENCHMARKS.md). Reads that miss it are served by the OS page cache.
const CACHE_BYTES: usize = 8 << 20;

/// The redb database.
pub(crate) struct RedbBackend {
    db: Database,
    /// Entries are sealed as they are written (one writer per file).
    audit_key: AuditKey,
    /// The audit trail's tail as the last commit left it (`None`: read it from the tables), set
    /// only after a commit succeeded; checked against the table before use (see `audit::insert`).
    audit_tail: Mutex<Option<audit::Tail>>,
}

impl RedbBackend {
    /// Open or create the file; check the schema version and the master key before writing
    /// anything, then migrate an older schema.
    pub(crate) fn open(path: &Path, master: &MasterKey) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
        }
        let new_file = !path.exists();
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
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
        match check_existing(&db, master)? {
            Some(found) if found < SCHEMA_VERSION => migrate(&db)?,
            Some(_) => {}
            None => init(&db, master)?,
        }
        Ok(RedbBackend { db, audit_key: AuditKey::from_master(master), audit_tail: Mutex::new(None) })
    }
}

/// An existing database's schema version, once it is known to be one this build reads and to
/// open with `master`; `None` for a new database. Writes nothing.
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
    if !master.opens_check(check.value()) {
        return Err(Error::WrongMasterKey);
    }
    Ok(Some(found))
}

fn init(db: &Database, master: &MasterKey) -> Result<()> {
    let sealed = master.check_value()?;
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert("schema", codec::encode(&SCHEMA_VERSION).as_slice()).map_err(storage)?;
        meta.insert("check", sealed.as_slice()).map_err(storage)?;
        txn.open_table(KEYS).map_err(storage)?;
        txn.open_table(TOKENS).map_err(storage)?;
        txn.open_table(BY_SUBJECT).map_err(storage)?;
        txn.open_table(CHANGES).map_err(storage)?;
        txn.open_table(CHILDREN).map_err(storage)?;
        txn.open_table(SIGNING).map_err(storage)?;
        txn.open_table(APPS).map_err(storage)?;
        txn.open_table(SESSIONS).map_err(storage)?;
        txn.open_table(NOTICES).map_err(storage)?;
        txn.open_table(audit::AUDIT).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Bring an older database to [`SCHEMA_VERSION`] in one transaction: 1 → 2 adds the children
/// index (existing records have no parent), 2 → 3 the signing keys, 3 → 4 the applications
/// (existing signing keys have no owner: they are the service's), 4 → 5 the sessions, 5 → 6 the notices
/// (token records gain their new fields as they are read: absent means none), 8 → 9 the audit
/// trail, 9 → 10 the anchor's time and MAC (an anchor written before has neither: it stays as it
/// is, reported unauthenticated by verification until the next pruning replaces it).
fn migrate(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(CHILDREN).map_err(storage)?;
        txn.open_table(SIGNING).map_err(storage)?;
        txn.open_table(APPS).map_err(storage)?;
        txn.open_table(SESSIONS).map_err(storage)?;
        txn.open_table(NOTICES).map_err(storage)?;
        txn.open_table(audit::AUDIT).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert("schema", codec::encode(&SCHEMA_VERSION).as_slice()).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

fn event_of(t: StoredTarget) -> Event {
    match t {
        StoredTarget::Token(b) => Event::TokenRevoked(TokenId::from_bytes(b)),
        StoredTarget::Key(b) => Event::KeyRevoked(KeyId::from_bytes(b)),
        StoredTarget::KeyChanged(b) => Event::KeyChanged(KeyId::from_bytes(b)),
        StoredTarget::SigningKeys => Event::SigningKeys,
        StoredTarget::Apps => Event::Apps,
    }
}

fn target_of(e: Event) -> StoredTarget {
    match e {
        Event::TokenRevoked(t) => StoredTarget::Token(*t.as_bytes()),
        Event::KeyRevoked(k) => StoredTarget::Key(*k.as_bytes()),
        Event::KeyChanged(k) => StoredTarget::KeyChanged(*k.as_bytes()),
        Event::SigningKeys => StoredTarget::SigningKeys,
        Event::Apps => StoredTarget::Apps,
    }
}

/// One operation's view of the batch's write transaction: its tables (opened once per batch) and
/// the audit trail's tail as the operations before it left it.
struct RedbTx<'a, 't> {
    tables: &'a mut Tables<'t>,
    audit_key: &'a AuditKey,
    audit_tail: &'a mut Option<audit::Tail>,
}

fn get_token(
    table: &impl ReadableTable<[u8; 16], &'static [u8]>,
    tid: &TokenId,
) -> Result<Option<StoredToken>> {
    match table.get(tid.as_bytes()).map_err(storage)? {
        None => Ok(None),
        Some(v) => codec::decode(v.value(), "token").map(Some),
    }
}

fn all_keys(table: &impl ReadableTable<[u8; 8], &'static [u8]>) -> Result<Vec<(KeyId, StoredKey)>> {
    let mut out = Vec::new();
    for row in table.range::<[u8; 8]>(..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        out.push((KeyId::from_bytes(k.value()), codec::decode(v.value(), "key")?));
    }
    Ok(out)
}

impl RedbBackend {
    fn committed_tail(&self) -> Option<audit::Tail> {
        self.audit_tail.lock().ok().and_then(|t| *t)
    }

    fn set_committed_tail(&self, tail: Option<audit::Tail>) {
        if let Ok(mut t) = self.audit_tail.lock() {
            *t = tail;
        }
    }

    /// Every token record that `keep` accepts (a full scan: housekeeping, not the hot path).
    fn scan_tokens(&self, keep: impl Fn(&StoredToken) -> bool) -> Result<Vec<(TokenId, StoredToken)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for row in tokens.range::<[u8; 16]>(..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let t: StoredToken = codec::decode(v.value(), "token")?;
            if keep(&t) {
                out.push((TokenId::from_bytes(k.value()), t));
            }
        }
        Ok(out)
    }

    /// Every notice that `keep` accepts.
    fn scan_notices(&self, keep: impl Fn(&Notice) -> bool) -> Result<Vec<Notice>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(NOTICES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.range::<([u8; 16], i64)>(..).map_err(storage)? {
            let n: Notice = codec::decode(row.map_err(storage)?.1.value(), "notice")?;
            if keep(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Every row of a table keyed by name, in a read transaction (none when it does not exist).
    fn read_by_name<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        what: &str,
    ) -> Result<Vec<(String, T)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        match txn.open_table(table) {
            Ok(t) => by_name(&t, what),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(storage(e)),
        }
    }
}

/// Every row of a table keyed by name, decoded.
fn by_name<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &str,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for row in table.range::<&str>(..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        out.push((k.value().to_owned(), codec::decode(v.value(), what)?));
    }
    Ok(out)
}

fn children(table: &impl ReadableTable<([u8; 16], [u8; 16]), ()>, tid: &TokenId) -> Result<Vec<TokenId>> {
    let mut out = Vec::new();
    for row in table.range((*tid.as_bytes(), [0u8; 16])..=(*tid.as_bytes(), [0xffu8; 16])).map_err(storage)? {
        out.push(TokenId::from_bytes(row.map_err(storage)?.0.value().1));
    }
    Ok(out)
}

impl Backend for RedbBackend {
    /// A local file answers or fails: `deadline` is for databases that may hang.
    fn batch(&self, n: usize, _deadline: Instant, apply: &mut ApplyOp<'_>) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Result<()>> = (0..n).map(|_| Ok(())).collect();
        let mut pending: Vec<usize> = (0..n).collect();
        // A failed operation aborts the transaction, which is replayed without it.
        'replay: loop {
            let mut txn = self.db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            let mut tail = self.committed_tail();
            let mut tables = Tables::new(&txn);
            for (at, &i) in pending.iter().enumerate() {
                let mut tx =
                    RedbTx { tables: &mut tables, audit_key: &self.audit_key, audit_tail: &mut tail };
                if let Err(e) = apply(&mut tx, i) {
                    drop(tables);
                    txn.abort().map_err(storage)?;
                    results[i] = Err(e);
                    pending.remove(at);
                    continue 'replay;
                }
            }
            drop(tables);
            // Unknown until the commit answers: read from the tables by the next batch.
            self.set_committed_tail(None);
            txn.commit().map_err(storage)?;
            self.set_committed_tail(tail);
            return Ok(results);
        }
    }

    fn keys(&self) -> Result<Vec<(KeyId, StoredKey)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        all_keys(&txn.open_table(KEYS).map_err(storage)?)
    }

    fn signing_keys(&self) -> Result<Vec<(String, StoredSigningKey)>> {
        self.read_by_name(SIGNING, "signing key")
    }

    fn apps(&self) -> Result<Vec<(String, StoredApp)>> {
        self.read_by_name(APPS, "application")
    }

    fn session(&self, sid: &SessionId) -> Result<Option<StoredSession>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = match txn.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let v = t.get(sid.as_bytes()).map_err(storage)?;
        v.map(|v| codec::decode(v.value(), "session")).transpose()
    }

    fn token(&self, tid: &TokenId) -> Result<Option<StoredToken>> {
        let txn = self.db.begin_read().map_err(storage)?;
        get_token(&txn.open_table(TOKENS).map_err(storage)?, tid)
    }

    fn tokens_of(&self, subject: &str) -> Result<Vec<(TokenId, StoredToken)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let index = txn.open_table(BY_SUBJECT).map_err(storage)?;
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for row in index.range((subject, [0u8; 16])..=(subject, [0xffu8; 16])).map_err(storage)? {
            let tid = TokenId::from_bytes(row.map_err(storage)?.0.value().1);
            if let Some(t) = get_token(&tokens, &tid)? {
                out.push((tid, t));
            }
        }
        Ok(out)
    }

    fn tokens_expiring(&self, until: i64) -> Result<Vec<(TokenId, StoredToken)>> {
        self.scan_tokens(|t| t.revoked_at.is_none() && t.expires.is_some_and(|e| e <= until))
    }

    fn tokens_unused_since(&self, cutoff: i64) -> Result<Vec<(TokenId, StoredToken)>> {
        self.scan_tokens(|t| t.revoked_at.is_none() && t.last_used.unwrap_or(t.created) < cutoff)
    }

    fn due_notices(&self, now: i64) -> Result<Vec<Notice>> {
        self.scan_notices(|n| n.delivered_at.is_none() && n.next_attempt <= now)
    }

    fn notices_of(&self, tid: &TokenId) -> Result<Vec<Notice>> {
        self.scan_notices(|n| n.tid == *tid)
    }

    fn children_of(&self, tid: &TokenId) -> Result<Vec<TokenId>> {
        let txn = self.db.begin_read().map_err(storage)?;
        children(&txn.open_table(CHILDREN).map_err(storage)?, tid)
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let log = txn.open_table(CHANGES).map_err(storage)?;
        let mut out = Vec::new();
        for row in log.range(after.saturating_add(1)..).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            let stored = StoredRevocation::from_cbor(v.value())?;
            out.push(Change { seq: k.value(), at: stored.at, event: event_of(stored.target) });
        }
        Ok(out)
    }

    fn last_change_seq(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(storage)?;
        let log = txn.open_table(CHANGES).map_err(storage)?;
        let last = log.last().map_err(storage)?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    fn shared(&self) -> bool {
        false
    }

    fn wait_for_change(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    fn tokens_page(&self, after: Option<TokenId>, limit: usize) -> Result<Vec<(TokenId, StoredToken)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        let from = after.map_or(Bound::Unbounded, |t| Bound::Excluded(*t.as_bytes()));
        let mut out = Vec::new();
        for row in tokens.range::<[u8; 16]>((from, Bound::Unbounded)).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            out.push((TokenId::from_bytes(k.value()), codec::decode(v.value(), "token")?));
        }
        Ok(out)
    }

    fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, StoredSession)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let from = after.map_or(Bound::Unbounded, |s| Bound::Excluded(*s.as_bytes()));
        let mut out = Vec::new();
        for row in table.range::<[u8; 16]>((from, Bound::Unbounded)).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            out.push((SessionId::from_bytes(k.value()), codec::decode(v.value(), "session")?));
        }
        Ok(out)
    }

    fn all_notices(&self) -> Result<Vec<Notice>> {
        self.scan_notices(|_| true)
    }

    /// One read transaction (it does not block the writer) copied table by table into a new file.
    fn backup_to(&self, path: &Path) -> Result<u64> {
        crate::backup::snapshot(&self.db, path, |from, to| {
            use crate::backup::copy_table as copy;
            let copied = [
                copy(from, to, META)?,
                copy(from, to, KEYS)?,
                copy(from, to, TOKENS)?,
                copy(from, to, BY_SUBJECT)?,
                copy(from, to, CHANGES)?,
                copy(from, to, CHILDREN)?,
                copy(from, to, SIGNING)?,
                copy(from, to, APPS)?,
                copy(from, to, SESSIONS)?,
                copy(from, to, NOTICES)?,
                copy(from, to, audit::AUDIT)?,
            ];
            let copied = copied.into_iter().flatten().collect();
            let last = match from.open_table(CHANGES) {
                Ok(log) => log.last().map_err(storage)?.map_or(0, |(k, _)| k.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(storage(e)),
            };
            Ok((copied, last))
        })
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        audit::query(&self.db, filter)
    }

    fn audit_head(&self) -> Result<Option<AuditHead>> {
        audit::head(&self.db)
    }

    /// Entries are sealed as they are written.
    fn seal_audit(&self, _key: &AuditKey) -> Result<usize> {
        Ok(0)
    }

    fn prune_audit(&self, key: &AuditKey, before_ms: i64, now_ms: i64) -> Result<usize> {
        audit::prune(&self.db, key, before_ms, now_ms)
    }

    fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        audit::anchor(&self.db)
    }

    fn audit_sealed_after(&self, after: u64, limit: usize) -> Result<Vec<AuditRow>> {
        audit::sealed_after(&self.db, after, limit)
    }

    fn audit_unsealed(&self) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
