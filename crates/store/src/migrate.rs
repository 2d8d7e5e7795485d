//! Moving a store between databases: the embedded file to PostgreSQL (a single node growing into
//! a cluster) and back (leaving one).
//!
//! Rows are copied as they are stored: root and signing keys stay sealed under the same master
//! key (nothing is re-sealed, and the master key never changes), token records keep their
//! lineage, uses and revocation, and the change log keeps its numbers and order, so every
//! token verifies the same afterwards and a revocation feed reader continues where it was.
//!
//! Written once above the backends: they only list their rows (`Backend::tokens_page`, ...) and
//! load them with the write-transaction primitives (`Tx::copy_tokens`, ...), which are where the
//! two differ (PostgreSQL takes a thousand rows per statement).
//!
//! The copy is one transaction on the target: a migration that fails leaves the target as
//! empty as it was, and can simply be run again. The source must not be written meanwhile: the
//! embedded file is locked by the copy (a running service refuses to start, and the copy refuses
//! a file the service holds); a PostgreSQL source must have its nodes stopped, and a change to
//! its log during the copy fails the migration. The source is held in memory during the copy
//! (about 300 bytes per token record).
//!
//! The audit trail is copied entry by entry with its ids, places (`seq`), links and anchor, so
//! `tessera audit verify` on the target finds it intact with the same head, and entries written
//! there continue the chain. Only sealed entries can be copied: a PostgreSQL source is sealed
//! first (what its housekeeping does every few seconds), and the migration is refused if entries
//! remain unsealed after that (a transaction still open: a node still running).
//!
//! Not copied: rate-limit counters. The embedded store keeps them in memory only, so they have
//! nothing to give a cluster, and a cluster's shared counters (one window per budget) cannot be
//! held by a single node: budgets start a new window after a move.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::{SessionId, TokenId};

use crate::audit::{AuditAnchor, AuditKey, AuditRow};
use crate::backend::postgres::PostgresBackend;
use crate::backend::redb::RedbBackend;
use crate::backend::{Backend, Change, Tx};
use crate::codec::{Notice, StoredApp, StoredKey, StoredSession, StoredSigningKey, StoredToken};
use crate::error::{Error, Result};
use crate::master::MasterKey;
use crate::memory::signing_label;
use crate::store::Location;

/// Rows read per query from the source.
const PAGE: usize = 5_000;
/// Rows loaded per call into the target (progress is reported between them).
const CHUNK: usize = 5_000;
/// How long the whole copy may take before the target gives up (nothing is then written).
const COPY_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// How long the source's unsealed audit entries may take to seal before the copy is refused.
const SEAL_WAIT: Duration = Duration::from_secs(30);

/// The tables of a migration, in the order they are loaded (each after what it refers to).
pub const TABLES: &[&str] =
    &["keys", "apps", "signing_keys", "tokens", "sessions", "notices", "changes", "audit"];

/// Where a migration is: `done` of `total` rows of `table` are loaded (reported per chunk, and
/// once at the end of each table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// One of [`TABLES`].
    pub table: &'static str,
    /// Rows of it loaded so far.
    pub done: u64,
    /// Rows of it in the source.
    pub total: u64,
}

/// What a migration copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Rows per table, in [`TABLES`] order.
    pub tables: Vec<(&'static str, u64)>,
    /// The last change-log number (the revocation feed continues after it on the target).
    pub last_change: u64,
}

/// Every row of a store, read from its backend.
struct Dump {
    keys: Vec<(tessera_core::KeyId, StoredKey)>,
    apps: Vec<(String, StoredApp)>,
    signing: Vec<(String, StoredSigningKey)>,
    tokens: Vec<(TokenId, StoredToken)>,
    sessions: Vec<(SessionId, StoredSession)>,
    notices: Vec<Notice>,
    changes: Vec<Change>,
    audit_anchor: Option<AuditAnchor>,
    audit: Vec<AuditRow>,
}

fn open_backend(location: &Location, master: &MasterKey, must_exist: bool) -> Result<Arc<dyn Backend>> {
    Ok(match location {
        Location::File(path) => {
            if must_exist && !path.is_file() {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database file"),
                });
            }
            Arc::new(RedbBackend::open(path, master)?)
        }
        Location::Postgres { url, options } => Arc::new(PostgresBackend::open(url, master, options)?),
    })
}

/// The source's every row. Its log must run from 1 without gaps (it always does: a gap would be
/// corruption, and copying it would shift the numbers readers know).
fn dump(source: &dyn Backend, master: &MasterKey) -> Result<Dump> {
    let mut tokens = Vec::new();
    loop {
        let page = source.tokens_page(tokens.last().map(|(t, _)| *t), PAGE)?;
        let full = page.len() == PAGE;
        tokens.extend(page);
        if !full {
            break;
        }
    }
    let mut sessions: Vec<(SessionId, StoredSession)> = Vec::new();
    loop {
        let page = source.sessions_page(sessions.last().map(|(s, _)| *s), PAGE)?;
        let full = page.len() == PAGE;
        sessions.extend(page);
        if !full {
            break;
        }
    }
    let mut changes: Vec<Change> = Vec::new();
    loop {
        let page = source.changes_after(changes.last().map_or(0, |c| c.seq), PAGE)?;
        let full = page.len() == PAGE;
        changes.extend(page);
        if !full {
            break;
        }
    }
    if let Some((i, c)) = changes.iter().enumerate().find(|(i, c)| c.seq != *i as u64 + 1) {
        return Err(Error::Corrupt(format!(
            "the source's change log has a gap before entry {} (at {i})",
            c.seq
        )));
    }
    // Seal what is committed but not chained yet; what stays unsealed belongs to a transaction
    // still open on the source.
    // (PostgreSQL seals an entry once no older transaction runs on the server, any database's:
    // a few rounds.)
    let key = AuditKey::from_master(master);
    let until = Instant::now() + SEAL_WAIT;
    while source.audit_unsealed()? > 0 && Instant::now() < until {
        source.seal_audit(&key)?;
        if source.audit_unsealed()? > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    {
        let left = source.audit_unsealed()?;
        if left > 0 {
            return Err(Error::Database(format!(
                "{left} audit entries of the source cannot be sealed (a transaction is still open): \
                 stop every node using it, then run the migration again"
            )));
        }
    }
    let audit_anchor = source.audit_anchor()?;
    let mut audit: Vec<AuditRow> = Vec::new();
    loop {
        let after = audit.last().map_or(audit_anchor.map_or(0, |a| a.seq), |r| r.entry.seq);
        let page = source.audit_sealed_after(after, PAGE)?;
        let full = page.len() == PAGE;
        audit.extend(page);
        if !full {
            break;
        }
    }
    Ok(Dump {
        audit_anchor,
        audit,
        keys: source.keys()?,
        apps: source.apps()?,
        signing: source.signing_keys()?,
        tokens: parents_first(tokens)?,
        sessions,
        notices: source.all_notices()?,
        changes,
    })
}

/// The records reordered so that every parent comes before its children (the lineage is a
/// forest: each record names at most one parent, recorded before it).
fn parents_first(tokens: Vec<(TokenId, StoredToken)>) -> Result<Vec<(TokenId, StoredToken)>> {
    let parent_of: HashMap<TokenId, Option<TokenId>> =
        tokens.iter().map(|(tid, t)| (*tid, t.parent.map(TokenId::from_bytes))).collect();
    let mut order = Vec::with_capacity(tokens.len());
    let mut placed: HashSet<TokenId> = HashSet::with_capacity(tokens.len());
    for (tid, _) in &tokens {
        // Climb to the first ancestor already placed, then place the way back down.
        let mut chain = vec![*tid];
        let mut at = *tid;
        while let Some(Some(parent)) = parent_of.get(&at) {
            if placed.contains(parent) {
                break;
            }
            if !parent_of.contains_key(parent) {
                return Err(Error::Corrupt(format!("token {at}'s parent {parent} has no record")));
            }
            if chain.len() > tokens.len() {
                return Err(Error::Corrupt(format!("token {tid}'s lineage is a cycle")));
            }
            chain.push(*parent);
            at = *parent;
        }
        for t in chain.into_iter().rev() {
            if placed.insert(t) {
                order.push(t);
            }
        }
    }
    let mut by_id: HashMap<TokenId, StoredToken> = tokens.into_iter().collect();
    Ok(order.into_iter().filter_map(|t| by_id.remove(&t).map(|r| (t, r))).collect())
}

/// The master key opens the source's sealed secrets: one root key and one signing key are
/// unsealed (the check value was already verified when the source opened).
fn check_master(dump: &Dump, master: &MasterKey) -> Result<()> {
    if let Some((kid, key)) = dump.keys.first() {
        master.open(kid.as_bytes(), &key.sealed).ok_or(Error::WrongMasterKey)?;
    }
    if let Some((kid, key)) = dump.signing.first() {
        master.open(&signing_label(kid), &key.sealed).ok_or(Error::WrongMasterKey)?;
    }
    Ok(())
}

/// Whether a database holds anything a migration would copy.
fn holds_data(b: &dyn Backend) -> Result<bool> {
    Ok(!b.keys()?.is_empty()
        || !b.apps()?.is_empty()
        || !b.signing_keys()?.is_empty()
        || !b.tokens_page(None, 1)?.is_empty()
        || !b.sessions_page(None, 1)?.is_empty()
        || !b.changes_after(0, 1)?.is_empty()
        || !b.all_notices()?.is_empty()
        || b.audit_head()?.is_some()
        || b.audit_unsealed()? > 0)
}

/// What a location is called in messages (never a database URL: it may hold a password).
fn name_of(location: &Location) -> String {
    match location {
        Location::File(p) => p.display().to_string(),
        Location::Postgres { .. } => "PostgreSQL database".into(),
    }
}

/// Copy every row of the store at `from` into the empty database at `to`.
///
/// In order: the source opens with `master` (its check value, then one root key and one signing
/// key unsealed), the source is read, the target opens (its schema is created if it has none)
/// and must hold no data ([`Error::TargetNotEmpty`]); only then is anything written, in one
/// transaction. `progress` is told how far each table is.
pub fn migrate(
    from: &Location,
    to: &Location,
    master: &MasterKey,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let source = open_backend(from, master, true)?;
    let dump = dump(source.as_ref(), master)?;
    check_master(&dump, master)?;
    let target = open_backend(to, master, false)?;
    if holds_data(target.as_ref())? {
        return Err(Error::TargetNotEmpty(name_of(to)));
    }
    let last_change = dump.changes.last().map_or(0, |c| c.seq);
    let tables: Vec<(&'static str, u64)> = vec![
        ("keys", dump.keys.len() as u64),
        ("apps", dump.apps.len() as u64),
        ("signing_keys", dump.signing.len() as u64),
        ("tokens", dump.tokens.len() as u64),
        ("sessions", dump.sessions.len() as u64),
        ("notices", dump.notices.len() as u64),
        ("changes", dump.changes.len() as u64),
        ("audit", dump.audit.len() as u64),
    ];
    let audit_head = source.audit_head()?;
    let deadline = Instant::now() + COPY_DEADLINE;
    let results = target.batch(1, deadline, &mut |tx: &mut dyn Tx, _| {
        load(tx, &dump, &tables, progress)?;
        // A source that changed during the copy (a PostgreSQL node still running) fails it.
        // (An embedded source cannot change: the copy holds its lock.)
        if source.shared()
            && (!source.changes_after(last_change, 1)?.is_empty()
                || source.tokens_page(None, usize::MAX)?.len() != dump.tokens.len()
                || source.audit_head()? != audit_head
                || source.audit_unsealed()? > 0)
        {
            return Err(Error::Database(
                "the source changed during the migration: stop every node using it, then run it again".into(),
            ));
        }
        Ok(())
    })?;
    for r in results {
        r?;
    }
    Ok(Migrated { tables, last_change })
}

/// Every group in order, inside the target's one transaction.
fn load(
    tx: &mut dyn Tx,
    dump: &Dump,
    totals: &[(&'static str, u64)],
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = |table| totals.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n);
    let mut report = |table: &'static str, done: usize| {
        progress(Progress { table, done: done as u64, total: total(table) })
    };
    for (kid, key) in &dump.keys {
        tx.put_key(kid, key)?;
    }
    report("keys", dump.keys.len());
    for (name, app) in &dump.apps {
        tx.put_app(name, app)?;
    }
    report("apps", dump.apps.len());
    for (kid, key) in &dump.signing {
        tx.put_signing_key(kid, key)?;
    }
    report("signing_keys", dump.signing.len());
    let mut done = 0;
    for chunk in dump.tokens.chunks(CHUNK) {
        tx.copy_tokens(chunk)?;
        done += chunk.len();
        report("tokens", done);
    }
    if dump.tokens.is_empty() {
        report("tokens", 0);
    }
    for (i, (sid, session)) in dump.sessions.iter().enumerate() {
        tx.put_session(sid, session)?;
        if (i + 1) % CHUNK == 0 {
            report("sessions", i + 1);
        }
    }
    report("sessions", dump.sessions.len());
    tx.copy_notices(&dump.notices)?;
    report("notices", dump.notices.len());
    let mut done = 0;
    for chunk in dump.changes.chunks(CHUNK) {
        tx.copy_changes(chunk)?;
        done += chunk.len();
        report("changes", done);
    }
    if dump.changes.is_empty() {
        report("changes", 0);
    }
    tx.copy_audit(dump.audit_anchor, &dump.audit)?;
    report("audit", dump.audit.len());
    Ok(())
}
