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

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tessera_core::{SessionId, TokenId};

use super::{get_token, META, TOKENS};
use crate::audit::{
    prune_walk, Actor, AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditKey, AuditRow, Only, Target,
};
use crate::codec;
use crate::error::{storage, Error, Result};

/// Audit entries by seq (schema version 9; the same as by id for every entry written here).
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ANCHOR: &str = "audit_anchor";
/// The largest id a migration copied, when some copied id differs from its seq.
const LAST_ID: &str = "audit_last_id";

/// An entry as stored (CBOR).
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    seq: u64,
    at_ms: i64,
    kind: String,
    outcome: String,
    actor_subject: Option<String>,
    actor_tid: Option<[u8; 16]>,
    issuer: Option<String>,
    address: Option<String>,
    request_id: Option<String>,
    user_agent: Option<String>,
    target_tid: Option<[u8; 16]>,
    target_kid: Option<String>,
    target_sid: Option<[u8; 16]>,
    target_app: Option<String>,
    target_subject: Option<String>,
    reason: Option<String>,
    detail: Option<String>,
    mac: [u8; 32],
    /// The id, when it is not the seq (an entry copied from PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

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

fn stored(row: &AuditRow, mac: [u8; 32]) -> StoredEntry {
    let e = &row.entry;
    StoredEntry {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.as_str().to_owned(),
        outcome: e.outcome.as_str().to_owned(),
        actor_subject: e.actor.subject.clone(),
        actor_tid: e.actor.tid.map(|t| *t.as_bytes()),
        issuer: e.actor.issuer.clone(),
        address: e.actor.address.clone(),
        request_id: e.actor.request_id.clone(),
        user_agent: e.actor.user_agent.clone(),
        target_tid: e.target.tid.map(|t| *t.as_bytes()),
        target_kid: e.target.kid.clone(),
        target_sid: e.target.sid.map(|s| *s.as_bytes()),
        target_app: e.target.app.clone(),
        target_subject: row.target_subject.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
        mac,
        id: (e.id != e.seq).then_some(e.id),
    }
}

fn row_of(s: StoredEntry) -> Result<AuditRow> {
    Ok(AuditRow {
        entry: AuditEntry {
            seq: s.seq,
            id: s.id.unwrap_or(s.seq),
            at_ms: s.at_ms,
            kind: s.kind.parse()?,
            outcome: s.outcome.parse()?,
            actor: Actor {
                subject: s.actor_subject,
                tid: s.actor_tid.map(TokenId::from_bytes),
                issuer: s.issuer,
                address: s.address,
                request_id: s.request_id,
                user_agent: s.user_agent,
            },
            target: Target {
                tid: s.target_tid.map(TokenId::from_bytes),
                kid: s.target_kid,
                sid: s.target_sid.map(SessionId::from_bytes),
                app: s.target_app,
            },
            reason: s.reason,
            detail: s.detail,
        },
        target_subject: s.target_subject,
        mac: Some(s.mac),
    })
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

/// Write and seal one entry in the operation's transaction.
pub(super) fn insert(txn: &WriteTransaction, key: &AuditKey, row: &AuditRow, only: Only) -> Result<()> {
    let mut row = row.clone();
    if row.target_subject.is_none() || only == Only::TargetIsLink {
        if let Some(tid) = row.entry.target.tid {
            let token = get_token(&txn.open_table(TOKENS).map_err(storage)?, &tid)?;
            if only == Only::TargetIsLink && token.as_ref().is_none_or(|t| t.grant.is_none()) {
                return Ok(());
            }
            if row.target_subject.is_none() {
                row.target_subject = token.map(|t| t.subject);
            }
        }
    }
    let mut audit = txn.open_table(AUDIT).map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    let prev = head_in(&audit, &meta)?;
    let (seq, prev_mac) = prev.map_or((0, [0u8; 32]), |h| (h.seq, h.mac));
    row.entry.seq = seq + 1;
    row.entry.id = seq + 1;
    if let Some(floor) = last_id_in(&meta)? {
        // After a copy from PostgreSQL: above every copied id and the newest entry's.
        let newest = match audit.last().map_err(storage)? {
            Some((_, v)) => row_of(codec::decode(v.value(), "audit entry")?)?.entry.id,
            None => 0,
        };
        row.entry.id = row.entry.id.max(floor + 1).max(newest + 1);
    }
    let mac = key.link(&prev_mac, &row);
    audit.insert(row.entry.seq, codec::encode(&stored(&row, mac)).as_slice()).map_err(storage)?;
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
pub(super) fn copy(txn: &WriteTransaction, anchor: Option<AuditAnchor>, rows: &[AuditRow]) -> Result<()> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let mut audit = txn.open_table(AUDIT).map_err(storage)?;
    if head_in(&audit, &meta)?.is_some() {
        return Err(Error::Corrupt("the target already has an audit trail".into()));
    }
    if let Some(a) = anchor {
        meta.insert(ANCHOR, codec::encode(&StoredAnchor::of(&a)).as_slice()).map_err(storage)?;
    }
    for row in rows {
        let mac =
            row.mac.ok_or_else(|| Error::Corrupt(format!("audit entry {} is not sealed", row.entry.id)))?;
        audit.insert(row.entry.seq, codec::encode(&stored(row, mac)).as_slice()).map_err(storage)?;
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
                meta.insert(ANCHOR, codec::encode(&StoredAnchor::of(&anchor)).as_slice()).map_err(storage)?;
                n
            }
        }
    };
    txn.commit().map_err(storage)?;
    Ok(n)
}
