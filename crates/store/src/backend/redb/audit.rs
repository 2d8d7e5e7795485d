//! The audit trail on redb: table `audit` (seq → entry, CBOR) and the anchor in `meta`.
//!
//! One writer thread per file, so an entry is sealed as it is written, in the same transaction:
//! its `seq` is the last entry's plus one, its link `HMAC(k_audit, previous link ‖ entry)`. After
//! pruning, `meta["audit_anchor"]` holds the last deleted entry's `seq` and link, and (since schema
//! 10) when it was pruned and the anchor's own MAC; an anchor written before has neither.
//!
//! An entry written here has its id equal to its seq, and the entry keeps no id of its own. An
//! entry copied from PostgreSQL by a migration keeps its id there (ids have gaps and, sealed by
//! commit, need not follow seq order): the link covers it, so the entry stores it, and
//! `meta["audit_last_id"]` holds the largest copied id so that later entries get larger ones.
//!
//! What the next entry chains from ([`Tail`]: the newest entry's seq and link, the copied-id floor)
//! is kept by the backend from one commit to the next, so that writing an entry neither decodes
//! the newest entry nor opens `meta`: it is used only while the table's newest key is its seq
//! (else read again from the tables), and only a committed transaction's tail is kept. Entries are
//! encoded by [`super::entry`].

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::entry::{self, row_of, StoredEntry};
use super::tables::Tables;
use super::{get_token, META};
use crate::audit::{prune_walk, AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditKey, AuditRow, Only};
use crate::codec;
use crate::error::{storage, Error, Result};

/// Audit entries by seq (schema version 9; the same as by id for every entry written here).
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ANCHOR: &str = "audit_anchor";
/// The largest id a migration copied, when some copied id differs from its seq.
const LAST_ID: &str = "audit_last_id";

/// The anchor as stored (CBOR). `pruned_at_ms` and `anchor_mac` since schema 10: absent in an
/// anchor written before (decoded as `None`, reported unauthenticated).
#[derive(Serialize, Deserialize)]
struct StoredAnchor {
    seq: u64,
    mac: [u8; 32],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pruned_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anchor_mac: Option<[u8; 32]>,
}

impl StoredAnchor {
    fn of(a: &AuditAnchor) -> StoredAnchor {
        StoredAnchor {
            seq: a.seq,
            mac: a.link,
            pruned_at_ms: a.sealed.map(|(at, _)| at),
            anchor_mac: a.sealed.map(|(_, m)| m),
        }
    }

    fn anchor(self) -> AuditAnchor {
        let sealed = match (self.pruned_at_ms, self.anchor_mac) {
            (Some(at), Some(m)) => Some((at, m)),
            _ => None,
        };
        AuditAnchor { seq: self.seq, link: self.mac, sealed }
    }
}

fn anchor_in(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<AuditAnchor>> {
    match meta.get(ANCHOR).map_err(storage)? {
        None => Ok(None),
        Some(v) => Ok(Some(codec::decode::<StoredAnchor>(v.value(), "audit anchor")?.anchor())),
    }
}

/// The newest entry, or else the anchor.
fn head_in(
    audit: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<AuditHead>> {
    match audit.last().map_err(storage)? {
        Some((_, v)) => {
            let s: StoredEntry = codec::decode(v.value(), "audit entry")?;
            Ok(Some(AuditHead { seq: s.seq, mac: s.mac }))
        }
        None => Ok(anchor_in(meta)?.map(|a| a.head())),
    }
}

fn last_id_in(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<u64>> {
    match meta.get(LAST_ID).map_err(storage)? {
        None => Ok(None),
        Some(v) => Ok(Some(codec::decode(v.value(), "audit last id")?)),
    }
}

/// What the next entry is chained from and numbered after: the newest entry's seq and link (else
/// the anchor's), `meta["audit_last_id"]` and the newest entry's id. The backend keeps the tail
/// of the last commit, so that writing an entry reads neither the newest entry back nor `meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tail {
    seq: u64,
    mac: [u8; 32],
    /// After a copy from PostgreSQL, the largest copied id: new ids are above it.
    floor: Option<u64>,
    /// The newest entry's id (0: none); read only under a floor.
    newest_id: u64,
}

/// The tail as the tables hold it.
fn tail_in(
    audit: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Tail> {
    let (seq, mac) = head_in(audit, meta)?.map_or((0, [0u8; 32]), |h| (h.seq, h.mac));
    let floor = last_id_in(meta)?;
    let newest_id = match (floor, audit.last().map_err(storage)?) {
        (Some(_), Some((_, v))) => row_of(codec::decode(v.value(), "audit entry")?)?.entry.id,
        _ => 0,
    };
    Ok(Tail { seq, mac, floor, newest_id })
}

/// Write and seal one entry in the operation's transaction: its seq is the tail's plus one, its
/// id the same (after a copy from PostgreSQL: above every copied id and the newest entry's), its
/// link `HMAC(k_audit, tail's link ‖ entry)`. `tail` is this transaction's (`None`: not known
/// yet); it is used only while the table's newest entry is the one it names, else read again, so
/// a tail that does not match the table is never chained from.
pub(super) fn insert(
    tables: &mut Tables<'_>,
    tail: &mut Option<Tail>,
    key: &AuditKey,
    row: &AuditRow,
    only: Only,
) -> Result<()> {
    let mut row = row.clone();
    if row.target_subject.is_none() || only == Only::TargetIsLink {
        if let Some(tid) = row.entry.target.tid {
            let token = get_token(tables.tokens()?, &tid)?;
            if only == Only::TargetIsLink && token.as_ref().is_none_or(|t| t.grant.is_none()) {
                return Ok(());
            }
            if row.target_subject.is_none() {
                row.target_subject = token.map(|t| t.subject);
            }
        }
    }
    let newest = tables.audit()?.last().map_err(storage)?.map(|(k, _)| k.value());
    let t = match *tail {
        Some(t) if newest == Some(t.seq) => t,
        _ => {
            let (audit, meta) = tables.audit_and_meta()?;
            tail_in(audit, meta)?
        }
    };
    let seq = t.seq + 1;
    row.entry.seq = seq;
    row.entry.id = match t.floor {
        None => seq,
        Some(floor) => seq.max(floor + 1).max(t.newest_id + 1),
    };
    let mac = key.link(&t.mac, &row);
    let previous = tables.audit()?.insert(seq, entry::encode(&row, &mac).as_slice()).map_err(storage)?;
    if previous.is_some() {
        // Never over an entry (the operation fails, its transaction writes nothing).
        *tail = None;
        return Err(Error::Corrupt(format!("audit entry {seq} exists already")));
    }
    *tail = Some(Tail { seq, mac, floor: t.floor, newest_id: row.entry.id });
    Ok(())
}

/// Entries that pass `filter`, by id (a scan from the cursor: the embedded database serves one
/// process, and an operator; see docs/AUDIT.md).
pub(super) fn query(db: &Database, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
    let txn = db.begin_read().map_err(storage)?;
    let audit = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    if last_id_in(&txn.open_table(META).map_err(storage)?)?.is_some() {
        return query_copied(&audit, filter);
    }
    let mut out = Vec::new();
    for r in audit.range(filter.after.saturating_add(1)..).map_err(storage)? {
        let (_, v) = r.map_err(storage)?;
        let row = row_of(codec::decode(v.value(), "audit entry")?)?;
        if filter.admits(&row.entry, row.target_subject.as_deref()) {
            out.push(row.entry);
            if out.len() == filter.page() {
                break;
            }
        }
    }
    Ok(out)
}

/// [`query`] on a trail copied from PostgreSQL, where id order is not key (seq) order: the
/// whole table is read and sorted by id.
fn query_copied(
    audit: &impl ReadableTable<u64, &'static [u8]>,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>> {
    let mut out = Vec::new();
    for r in audit.range::<u64>(..).map_err(storage)? {
        let (_, v) = r.map_err(storage)?;
        let row = row_of(codec::decode(v.value(), "audit entry")?)?;
        if row.entry.id > filter.after && filter.admits(&row.entry, row.target_subject.as_deref()) {
            out.push(row.entry);
        }
    }
    out.sort_by_key(|e| e.id);
    out.truncate(filter.page());
    Ok(out)
}

/// Load a migration's copy: `anchor`, then `rows` (sealed, in seq order, following it) with
/// their ids, seqs and links as they are, into a file with no audit trail yet.
pub(super) fn copy(tables: &mut Tables<'_>, anchor: Option<AuditAnchor>, rows: &[AuditRow]) -> Result<()> {
    let (audit, meta) = tables.audit_and_meta()?;
    if head_in(audit, meta)?.is_some() {
        return Err(Error::Corrupt("the target already has an audit trail".into()));
    }
    if let Some(a) = anchor {
        meta.insert(ANCHOR, codec::encode(&StoredAnchor::of(&a)).as_slice()).map_err(storage)?;
    }
    for row in rows {
        let mac =
            row.mac.ok_or_else(|| Error::Corrupt(format!("audit entry {} is not sealed", row.entry.id)))?;
        audit.insert(row.entry.seq, entry::encode(row, &mac).as_slice()).map_err(storage)?;
    }
    if rows.iter().any(|r| r.entry.id != r.entry.seq) {
        let id = rows.iter().map(|r| r.entry.id).max().unwrap_or(0);
        meta.insert(LAST_ID, codec::encode(&id).as_slice()).map_err(storage)?;
    }
    Ok(())
}

pub(super) fn head(db: &Database) -> Result<Option<AuditHead>> {
    let txn = db.begin_read().map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    match txn.open_table(AUDIT) {
        Ok(audit) => head_in(&audit, &meta),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(anchor_in(&meta)?.map(|a| a.head())),
        Err(e) => Err(storage(e)),
    }
}

pub(super) fn anchor(db: &Database) -> Result<Option<AuditAnchor>> {
    let txn = db.begin_read().map_err(storage)?;
    anchor_in(&txn.open_table(META).map_err(storage)?)
}

/// Entries with `seq > after`, by seq (the table's key), at most `limit`.
pub(super) fn sealed_after(db: &Database, after: u64, limit: usize) -> Result<Vec<AuditRow>> {
    let txn = db.begin_read().map_err(storage)?;
    let audit = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let mut out = Vec::new();
    for r in audit.range(after.saturating_add(1)..).map_err(storage)?.take(limit) {
        let (_, v) = r.map_err(storage)?;
        out.push(row_of(codec::decode(v.value(), "audit entry")?)?);
    }
    Ok(out)
}

/// Entries [`prune`] checks and deletes per transaction.
const PRUNE_PAGE: usize = 1000;

/// Delete entries from the start while they are older than `before_ms`, once the anchor and
/// each of them verify ([`prune_walk`]); the last one deleted becomes the anchor, with its MAC and
/// `now_ms`. A durable transaction per [`PRUNE_PAGE`] entries.
pub(super) fn prune(db: &Database, key: &AuditKey, before_ms: i64, now_ms: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let n = prune_page(db, key, before_ms, now_ms)?;
        total += n;
        if n < PRUNE_PAGE {
            return Ok(total);
        }
    }
}

fn prune_page(db: &Database, key: &AuditKey, before_ms: i64, now_ms: i64) -> Result<usize> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let n = {
        let mut audit = txn.open_table(AUDIT).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let mut rows = Vec::new();
        for r in audit.range::<u64>(..).map_err(storage)?.take(PRUNE_PAGE) {
            let (_, v) = r.map_err(storage)?;
            let row = row_of(codec::decode(v.value(), "audit entry")?)?;
            if row.entry.at_ms >= before_ms {
                break;
            }
            rows.push(row);
        }
        match prune_walk(key, anchor_in(&meta)?, &rows, before_ms, now_ms)? {
            None => 0,
            Some((n, anchor)) => {
                for row in &rows[..n] {
                    audit.remove(row.entry.seq).map_err(storage)?;
                }
                // Ids copied from another database run ahead of the seqs, and so do the ones
                // written after them: the floor must cover every id pruned, or an empty table
                // would hand them out again (a reader following by cursor would skip the new
                // entries).
                if let Some(floor) = last_id_in(&meta)? {
                    let pruned = rows[..n].iter().map(|r| r.entry.id).max().unwrap_or(0);
                    if pruned > floor {
                        meta.insert(LAST_ID, codec::encode(&pruned).as_slice()).map_err(storage)?;
                    }
                }
                meta.insert(ANCHOR, codec::encode(&StoredAnchor::of(&anchor)).as_slice()).map_err(storage)?;
                n
            }
        }
    };
    txn.commit().map_err(storage)?;
    Ok(n)
}
