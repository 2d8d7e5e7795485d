//! The audit trail on PostgreSQL (migration `0008_audit.sql`).
//!
//! Writing costs no round trip of its own: the writer's entry is rendered as one `INSERT`
//! (values as hex literals, so no text from a request is ever parsed as SQL) and sent in the same
//! exchange as the savepoint release or the `COMMIT` that ends its operation. Sealing, pruning
//! and reading run on their own connections, never on the write path.

use tessera_core::{SessionId, TokenId};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::rows::{bytes, db, pool_err};
use super::PostgresBackend;
use crate::audit::{Actor, AuditEntry, AuditFilter, AuditHead, AuditKey, AuditRow, Only, Target};
use crate::error::Result;

/// Key of the advisory lock the sealer (and pruning) hold ("tessaudt" in ASCII).
const SEAL_LOCK: i64 = 0x7465_7373_6175_6474;
/// Entries sealed per transaction.
const SEAL_PAGE: i64 = 1000;

const COLUMNS: &str = "id, seq, mac, at_ms, kind, outcome, actor_subject, actor_tid, issuer, address, request_id, \
                       user_agent, target_tid, target_kid, target_sid, target_app, target_subject, reason, detail";

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bytea literal that holds no quote or backslash whatever the value.
fn lit_bytes(b: Option<&[u8]>) -> String {
    b.map_or_else(|| "NULL::bytea".into(), |b| format!("decode('{}', 'hex')", hex(b)))
}

/// A text literal built from hex, so no character of the value (a user agent, a reason) reaches
/// the SQL parser.
fn lit_text(t: Option<&str>) -> String {
    t.map_or_else(
        || "NULL::text".into(),
        |t| format!("convert_from(decode('{}', 'hex'), 'UTF8')", hex(t.as_bytes())),
    )
}

/// The statement that writes `row` (subject of the target token filled in, and the condition,
/// in the same statement).
pub(super) fn insert_sql(row: &AuditRow, only: Only) -> String {
    let e = &row.entry;
    let target_tid = e.target.tid.map(|t| lit_bytes(Some(t.as_bytes())));
    let target_subject = match (&row.target_subject, &target_tid) {
        (Some(s), _) => lit_text(Some(s)),
        (None, Some(t)) => format!("(SELECT subject FROM tessera_tokens WHERE tid = {t})"),
        (None, None) => lit_text(None),
    };
    let only = match (only, &target_tid) {
        (Only::TargetIsLink, Some(t)) => {
            format!(" WHERE EXISTS (SELECT 1 FROM tessera_tokens WHERE tid = {t} AND grant_json IS NOT NULL)")
        }
        _ => String::new(),
    };
    format!(
        "INSERT INTO tessera_audit (at_ms, kind, outcome, actor_subject, actor_tid, issuer, address, request_id, \
         user_agent, target_tid, target_kid, target_sid, target_app, target_subject, reason, detail) \
         SELECT {}::bigint, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}{only}",
        e.at_ms,
        lit_text(Some(e.kind.as_str())),
        lit_text(Some(e.outcome.as_str())),
        lit_text(e.actor.subject.as_deref()),
        lit_bytes(e.actor.tid.as_ref().map(|t| t.as_bytes().as_slice())),
        lit_text(e.actor.issuer.as_deref()),
        lit_text(e.actor.address.as_deref()),
        lit_text(e.actor.request_id.as_deref()),
        lit_text(e.actor.user_agent.as_deref()),
        target_tid.unwrap_or_else(|| lit_bytes(None)),
        lit_text(e.target.kid.as_deref()),
        lit_bytes(e.target.sid.as_ref().map(|s| s.as_bytes().as_slice())),
        lit_text(e.target.app.as_deref()),
        target_subject,
        lit_text(e.reason.as_deref()),
        lit_text(e.detail.as_deref()),
    )
}

fn row_of(r: &Row) -> Result<AuditRow> {
    let id: i64 = r.try_get(0).map_err(db)?;
    let seq: Option<i64> = r.try_get(1).map_err(db)?;
    let mac: Option<Vec<u8>> = r.try_get(2).map_err(db)?;
    let tid = |i: usize| -> Result<Option<TokenId>> {
        let v: Option<Vec<u8>> = r.try_get(i).map_err(db)?;
        v.map(|v| bytes(v, "audit tid").map(TokenId::from_bytes)).transpose()
    };
    let text = |i: usize| -> Result<Option<String>> { r.try_get(i).map_err(db) };
    let sid: Option<Vec<u8>> = r.try_get(14).map_err(db)?;
    Ok(AuditRow {
        entry: AuditEntry {
            seq: seq.map_or(0, |s| s as u64),
            id: id as u64,
            at_ms: r.try_get(3).map_err(db)?,
            kind: r.try_get::<_, String>(4).map_err(db)?.parse()?,
            outcome: r.try_get::<_, String>(5).map_err(db)?.parse()?,
            actor: Actor {
                subject: text(6)?,
                tid: tid(7)?,
                issuer: text(8)?,
                address: text(9)?,
                request_id: text(10)?,
                user_agent: text(11)?,
            },
            target: Target {
                tid: tid(12)?,
                kid: text(13)?,
                sid: sid.map(|v| bytes(v, "audit sid").map(SessionId::from_bytes)).transpose()?,
                app: text(15)?,
            },
            reason: text(17)?,
            detail: text(18)?,
        },
        target_subject: text(16)?,
        mac: mac.map(|m| bytes(m, "audit mac")).transpose()?,
    })
}

type Params = Vec<Box<dyn ToSql + Send + Sync>>;

fn head_of(rows: &[Row]) -> Result<Option<AuditHead>> {
    rows.first()
        .map(|r| {
            let seq: i64 = r.try_get(0).map_err(db)?;
            Ok(AuditHead { seq: seq as u64, mac: bytes(r.try_get(1).map_err(db)?, "audit mac")? })
        })
        .transpose()
}

const HEAD_SQL: &str = "SELECT seq, mac FROM tessera_audit WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1";
const ANCHOR_SQL: &str = "SELECT seq, mac FROM tessera_audit_anchor";

impl PostgresBackend {
    /// A statement built here (the filter's conditions) with its parameters.
    fn query_dynamic<T: Send + 'static>(
        &self,
        sql: String,
        params: Params,
        map: fn(&[Row]) -> Result<T>,
    ) -> Result<T> {
        let pool = self.pool.clone();
        self.call(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            map(&client.query(&sql, &refs).await.map_err(db)?)
        })
    }

    pub(super) fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut params: Params = vec![Box::new(f.after.min(i64::MAX as u64) as i64)];
        let mut conds = vec!["id > $1".to_owned()];
        let add = |params: &mut Params, p: Box<dyn ToSql + Send + Sync>| {
            params.push(p);
            params.len()
        };
        if let Some(a) = &f.actor {
            let n = add(&mut params, Box::new(a.clone()));
            let t = TokenId::from_hex(a).map(|t| t.as_bytes().to_vec());
            let m = add(&mut params, Box::new(t));
            conds.push(format!("(actor_subject = ${n} OR issuer = ${n} OR actor_tid = ${m})"));
        }
        if let Some(s) = &f.subject {
            let n = add(&mut params, Box::new(s.clone()));
            conds.push(format!("(actor_subject = ${n} OR target_subject = ${n})"));
        }
        if !f.tids.is_empty() {
            let ids: Vec<Vec<u8>> = f.tids.iter().map(|t| t.as_bytes().to_vec()).collect();
            let n = add(&mut params, Box::new(ids));
            conds.push(format!("(actor_tid = ANY(${n}) OR target_tid = ANY(${n}))"));
        }
        if let Some(k) = f.kind {
            let n = add(&mut params, Box::new(k.as_str().to_owned()));
            conds.push(format!("kind = ${n}"));
        }
        if let Some(o) = f.outcome {
            let n = add(&mut params, Box::new(o.as_str().to_owned()));
            conds.push(format!("outcome = ${n}"));
        }
        if let Some(s) = f.since_ms {
            let n = add(&mut params, Box::new(s));
            conds.push(format!("at_ms >= ${n}"));
        }
        if let Some(u) = f.until_ms {
            let n = add(&mut params, Box::new(u));
            conds.push(format!("at_ms < ${n}"));
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM tessera_audit WHERE {} ORDER BY id LIMIT {}",
            conds.join(" AND "),
            f.page()
        );
        self.query_dynamic(sql, params, |rows| rows.iter().map(|r| row_of(r).map(|r| r.entry)).collect())
    }

    pub(super) fn audit_head_now(&self) -> Result<Option<AuditHead>> {
        match self.query(HEAD_SQL, vec![], head_of)? {
            Some(h) => Ok(Some(h)),
            None => self.query(ANCHOR_SQL, vec![], head_of),
        }
    }

    pub(super) fn audit_anchor_now(&self) -> Result<Option<AuditHead>> {
        self.query(ANCHOR_SQL, vec![], head_of)
    }

    pub(super) fn audit_sealed(&self, after: u64, limit: usize) -> Result<Vec<AuditRow>> {
        let sql = format!("SELECT {COLUMNS} FROM tessera_audit WHERE seq > $1 ORDER BY seq LIMIT $2");
        self.query_dynamic(
            sql,
            vec![Box::new(after.min(i64::MAX as u64) as i64), Box::new(limit as i64)],
            |rows| rows.iter().map(row_of).collect(),
        )
    }

    pub(super) fn audit_unsealed_now(&self) -> Result<u64> {
        self.query("SELECT count(*) FROM tessera_audit WHERE seq IS NULL", vec![], |rows| {
            Ok(rows.first().map(|r| r.try_get::<_, i64>(0)).transpose().map_err(db)?.unwrap_or(0) as u64)
        })
    }

    /// Seal, a page per transaction, until no committed entry is left unsealed; 0 at once when
    /// another node holds the sealer's lock.
    pub(super) fn audit_seal(&self, key: &AuditKey) -> Result<usize> {
        let mut total = 0;
        loop {
            let pool = self.pool.clone();
            let key = key.clone();
            let n = self.call(async move {
                let mut client = pool.get().await.map_err(pool_err)?;
                let txn = client.transaction().await.map_err(db)?;
                let locked: bool =
                    txn.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEAL_LOCK]).await.map_err(db)?.get(0);
                if !locked {
                    return Ok(None);
                }
                let mut head = head_of(&txn.query(HEAD_SQL, &[]).await.map_err(db)?)?;
                if head.is_none() {
                    head = head_of(&txn.query(ANCHOR_SQL, &[]).await.map_err(db)?)?;
                }
                let (mut seq, mut prev) = head.map_or((0, [0u8; 32]), |h| (h.seq, h.mac));
                // Only entries whose inserting transaction has ended: none can commit later with
                // a smaller id than one sealed now, so the chain never needs an insertion.
                let rows = txn
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM tessera_audit WHERE seq IS NULL \
                             AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY id LIMIT {SEAL_PAGE}"
                        ),
                        &[],
                    )
                    .await
                    .map_err(db)?;
                let (mut ids, mut seqs, mut macs) = (Vec::new(), Vec::new(), Vec::new());
                for r in &rows {
                    let mut row = row_of(r)?;
                    seq += 1;
                    row.entry.seq = seq;
                    prev = key.link(&prev, &row);
                    ids.push(row.entry.id as i64);
                    seqs.push(seq as i64);
                    macs.push(prev.to_vec());
                }
                if !ids.is_empty() {
                    txn.execute(
                        "UPDATE tessera_audit a SET seq = u.seq, mac = u.mac
                         FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u (id, seq, mac) WHERE a.id = u.id",
                        &[&ids, &seqs, &macs],
                    )
                    .await
                    .map_err(db)?;
                }
                txn.commit().await.map_err(db)?;
                Ok(Some(ids.len()))
            })?;
            match n {
                Some(n) => {
                    total += n;
                    if (n as i64) < SEAL_PAGE {
                        return Ok(total);
                    }
                }
                None => return Ok(total),
            }
        }
    }

    /// Delete sealed entries older than `before_ms` from the start of the chain (under the
    /// sealer's lock, so the two never interleave), keeping the last one deleted as the anchor.
    pub(super) fn audit_prune(&self, before_ms: i64) -> Result<usize> {
        let mut total = 0;
        loop {
            let pool = self.pool.clone();
            let n = self.call(async move {
                let mut client = pool.get().await.map_err(pool_err)?;
                let txn = client.transaction().await.map_err(db)?;
                txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SEAL_LOCK]).await.map_err(db)?;
                let rows = txn
                    .query(
                        &format!("SELECT seq, mac, at_ms FROM tessera_audit WHERE seq IS NOT NULL ORDER BY seq LIMIT {SEAL_PAGE}"),
                        &[],
                    )
                    .await
                    .map_err(db)?;
                let mut last: Option<(i64, Vec<u8>)> = None;
                let mut n = 0usize;
                for r in &rows {
                    let at: i64 = r.try_get(2).map_err(db)?;
                    if at >= before_ms {
                        break;
                    }
                    last = Some((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?));
                    n += 1;
                }
                let Some((seq, mac)) = last else { return Ok(0) };
                txn.execute("DELETE FROM tessera_audit WHERE seq <= $1", &[&seq]).await.map_err(db)?;
                txn.execute(
                    "INSERT INTO tessera_audit_anchor (one, seq, mac) VALUES (true, $1, $2)
                     ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, mac = excluded.mac",
                    &[&seq, &mac],
                )
                .await
                .map_err(db)?;
                txn.commit().await.map_err(db)?;
                Ok(n)
            })?;
            total += n;
            if (n as i64) < SEAL_PAGE {
                return Ok(total);
            }
        }
    }
}
