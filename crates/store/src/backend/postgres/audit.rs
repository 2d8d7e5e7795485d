//! The audit trail on PostgreSQL (migration `0008_audit.sql`).
//!
//! Writing costs no round trip of its own: the entries of every operation of a batch that
//! succeeded go as one prepared `INSERT` (every value a bind parameter, so no text from a request
//! is ever parsed as SQL), pipelined in front of the `COMMIT` (see `PgTx::finish`). Sealing, pruning and reading run on their own connections, never on the
//! write path.

use tessera_core::{SessionId, TokenId};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::rows::{bytes, db, pool_err};
use super::PostgresBackend;
use crate::audit::{
    prune_walk, Actor, AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditKey, AuditRow, Only, Target,
};
use crate::error::Result;

/// Key of the advisory lock the sealer (and pruning) hold ("tessaudt" in ASCII).
const SEAL_LOCK: i64 = 0x7465_7373_6175_6474;
/// Entries sealed per transaction.
const SEAL_PAGE: i64 = 1000;

const COLUMNS: &str = "id, seq, mac, at_ms, kind, outcome, actor_subject, actor_tid, issuer, address, request_id, \
                       user_agent, target_tid, target_kid, target_sid, target_app, target_subject, reason, detail";

/// Writes the entries of [`Pending`], one array per column, in their order (so their ids are in
/// the order the writer produced them). Prepared once per connection: planned once, not parsed
/// per write. The target's subject is read from its record only when the writer did not give
/// it, and an entry marked `only_link` is written only when its target token has a grant.
pub(super) const INSERT_SQL: &str = "INSERT INTO tessera_audit (at_ms, kind, outcome, actor_subject, actor_tid, \
    issuer, address, request_id, user_agent, target_tid, target_kid, target_sid, target_app, target_subject, reason, \
    detail) \
    SELECT e.at_ms, e.kind, e.outcome, e.actor_subject, e.actor_tid, e.issuer, e.address, e.request_id, \
    e.user_agent, e.target_tid, e.target_kid, e.target_sid, e.target_app, \
    COALESCE(e.target_subject, (SELECT t.subject FROM tessera_tokens t WHERE t.tid = e.target_tid)), e.reason, e.detail \
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::text[], \
    $9::text[], $10::bytea[], $11::text[], $12::bytea[], $13::text[], $14::text[], $15::text[], $16::text[], \
    $17::boolean[]) WITH ORDINALITY AS e (at_ms, kind, outcome, actor_subject, actor_tid, issuer, address, \
    request_id, user_agent, target_tid, target_kid, target_sid, target_app, target_subject, reason, detail, \
    only_link, n) \
    WHERE NOT e.only_link \
    OR EXISTS (SELECT 1 FROM tessera_tokens t WHERE t.tid = e.target_tid AND t.grant_json IS NOT NULL) \
    ORDER BY e.n";

type Text = Vec<Option<String>>;
type Blobs = Vec<Option<Vec<u8>>>;

/// The audit entries of the running operation, column by column: the parameters of
/// [`INSERT_SQL`].
#[derive(Default)]
pub(super) struct Pending {
    at_ms: Vec<i64>,
    kind: Vec<&'static str>,
    outcome: Vec<&'static str>,
    actor_subject: Text,
    actor_tid: Blobs,
    issuer: Text,
    address: Text,
    request_id: Text,
    user_agent: Text,
    target_tid: Blobs,
    target_kid: Text,
    target_sid: Blobs,
    target_app: Text,
    target_subject: Text,
    reason: Text,
    detail: Text,
    only_link: Vec<bool>,
}

impl Pending {
    /// Add `row` (its target's subject, when missing, and the condition are the statement's).
    pub(super) fn push(&mut self, row: &AuditRow, only: Only) {
        let e = &row.entry;
        let target_tid = e.target.tid.map(|t| t.as_bytes().to_vec());
        self.at_ms.push(e.at_ms);
        self.kind.push(e.kind.as_str());
        self.outcome.push(e.outcome.as_str());
        self.actor_subject.push(e.actor.subject.clone());
        self.actor_tid.push(e.actor.tid.map(|t| t.as_bytes().to_vec()));
        self.issuer.push(e.actor.issuer.clone());
        self.address.push(e.actor.address.clone());
        self.request_id.push(e.actor.request_id.clone());
        self.user_agent.push(e.actor.user_agent.clone());
        // Without a target token there is no link to check: the entry is written, as on redb.
        self.only_link.push(only == Only::TargetIsLink && target_tid.is_some());
        self.target_tid.push(target_tid);
        self.target_kid.push(e.target.kid.clone());
        self.target_sid.push(e.target.sid.map(|s| s.as_bytes().to_vec()));
        self.target_app.push(e.target.app.clone());
        self.target_subject.push(row.target_subject.clone());
        self.reason.push(e.reason.clone());
        self.detail.push(e.detail.clone());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.at_ms.is_empty()
    }

    /// How many entries are pending.
    pub(super) fn len(&self) -> usize {
        self.at_ms.len()
    }

    /// Forget every entry past the first `n` (those of an operation that failed).
    pub(super) fn truncate(&mut self, n: usize) {
        self.at_ms.truncate(n);
        self.kind.truncate(n);
        self.outcome.truncate(n);
        self.actor_subject.truncate(n);
        self.actor_tid.truncate(n);
        self.issuer.truncate(n);
        self.address.truncate(n);
        self.request_id.truncate(n);
        self.user_agent.truncate(n);
        self.target_tid.truncate(n);
        self.target_kid.truncate(n);
        self.target_sid.truncate(n);
        self.target_app.truncate(n);
        self.target_subject.truncate(n);
        self.reason.truncate(n);
        self.detail.truncate(n);
        self.only_link.truncate(n);
    }

    /// The parameters of [`INSERT_SQL`], in order, owned.
    pub(super) fn into_params(self) -> super::pipeline::Params {
        vec![
            Box::new(self.at_ms),
            Box::new(self.kind),
            Box::new(self.outcome),
            Box::new(self.actor_subject),
            Box::new(self.actor_tid),
            Box::new(self.issuer),
            Box::new(self.address),
            Box::new(self.request_id),
            Box::new(self.user_agent),
            Box::new(self.target_tid),
            Box::new(self.target_kid),
            Box::new(self.target_sid),
            Box::new(self.target_app),
            Box::new(self.target_subject),
            Box::new(self.reason),
            Box::new(self.detail),
            Box::new(self.only_link),
        ]
    }
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
/// The anchor with its time and MAC (schema 10; NULL in an anchor written before).
const ANCHOR_FULL_SQL: &str = "SELECT seq, mac, pruned_at_ms, anchor_mac FROM tessera_audit_anchor";

fn anchor_of(rows: &[Row]) -> Result<Option<AuditAnchor>> {
    rows.first()
        .map(|r| {
            let seq: i64 = r.try_get(0).map_err(db)?;
            let at: Option<i64> = r.try_get(2).map_err(db)?;
            let mac: Option<Vec<u8>> = r.try_get(3).map_err(db)?;
            let sealed = match (at, mac) {
                (Some(at), Some(m)) => Some((at, bytes(m, "audit anchor mac")?)),
                _ => None,
            };
            Ok(AuditAnchor { seq: seq as u64, link: bytes(r.try_get(1).map_err(db)?, "audit mac")?, sealed })
        })
        .transpose()
}

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

    pub(super) fn audit_anchor_now(&self) -> Result<Option<AuditAnchor>> {
        self.query(ANCHOR_FULL_SQL, vec![], anchor_of)
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
    /// sealer's lock, so the two never interleave), a page per transaction, once the anchor and
    /// each of them verify ([`prune_walk`]); the last one deleted becomes the anchor, with its MAC
    /// and `now_ms`.
    pub(super) fn audit_prune(&self, key: &AuditKey, before_ms: i64, now_ms: i64) -> Result<usize> {
        let mut total = 0;
        loop {
            let pool = self.pool.clone();
            let key = key.clone();
            let n = self.call(async move {
                let mut client = pool.get().await.map_err(pool_err)?;
                let txn = client.transaction().await.map_err(db)?;
                txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SEAL_LOCK]).await.map_err(db)?;
                let anchor = anchor_of(&txn.query(ANCHOR_FULL_SQL, &[]).await.map_err(db)?)?;
                let rows = txn
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM tessera_audit WHERE seq IS NOT NULL ORDER BY seq LIMIT {SEAL_PAGE}"
                        ),
                        &[],
                    )
                    .await
                    .map_err(db)?
                    .iter()
                    .map(row_of)
                    .collect::<Result<Vec<_>>>()?;
                let Some((n, a)) = prune_walk(&key, anchor, &rows, before_ms, now_ms)? else { return Ok(0) };
                let (at, mac) = a.sealed.unwrap_or_else(|| unreachable!("prune_walk seals the anchor"));
                txn.execute("DELETE FROM tessera_audit WHERE seq <= $1", &[&(a.seq as i64)]).await.map_err(db)?;
                txn.execute(
                    "INSERT INTO tessera_audit_anchor (one, seq, mac, pruned_at_ms, anchor_mac) \
                     VALUES (true, $1, $2, $3, $4) ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, \
                     mac = excluded.mac, pruned_at_ms = excluded.pruned_at_ms, anchor_mac = excluded.anchor_mac",
                    &[&(a.seq as i64), &a.link.to_vec(), &at, &mac.to_vec()],
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
