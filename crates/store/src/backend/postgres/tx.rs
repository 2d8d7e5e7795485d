//! One write transaction on a pooled connection: the [`Tx`] primitives in SQL, and the batch
//! around them (savepoints per operation, `NOTIFY` when the change log grew).

use std::sync::Arc;

use deadpool_postgres::Object;
use tessera_core::{KeyId, SessionId, TokenId};
use tokio_postgres::Row;

use super::audit::{Pending, INSERT_SQL};
use super::rows::{
    app_of, bytes, db, key_of, kind_of, notice_of, session_of, signing_key_of, signing_state_name,
    state_name, token_of, SELECT_APPS, SELECT_SIGNING,
};
use super::PostgresBackend;
use crate::backend::{ApplyOp, Event, Tx};
use crate::codec::{Notice, StoredApp, StoredKey, StoredSession, StoredSigningKey, StoredToken};
use crate::error::{Error, Result};

/// `BEGIN`, each operation under its own savepoint (a failed one is rolled back alone), a
/// `NOTIFY` if the change log grew, `COMMIT`. The transaction statements between operations go
/// in one exchange with the server (`RELEASE SAVEPOINT op; SAVEPOINT op`), and a batch of one
/// operation needs no savepoint: its failure rolls back the whole transaction.
pub(super) fn run_batch(tx: &mut PgTx<'_>, n: usize, apply: &mut ApplyOp<'_>) -> Result<Vec<Result<()>>> {
    let single = n == 1;
    let mut pending = String::from("BEGIN");
    // The finished operation's audit entries, sent in front of `pending` (see `exec_with`).
    let mut entries = Pending::default();
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        if !single {
            pending.push_str("; SAVEPOINT op");
        }
        tx.exec_with(std::mem::take(&mut pending), std::mem::take(&mut entries))?;
        match apply(tx, i) {
            Ok(()) => {
                // The operation's audit entries go with the next exchange, inside its savepoint
                // (or, alone in the batch, before the COMMIT): no round trip of their own.
                entries = std::mem::take(&mut tx.audit);
                if !single {
                    pending.push_str("RELEASE SAVEPOINT op");
                }
                results.push(Ok(()));
            }
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(e) if single => {
                tx.audit = Pending::default();
                tx.exec("ROLLBACK".into())?;
                return Ok(vec![Err(e)]);
            }
            Err(e) => {
                tx.audit = Pending::default();
                tx.keys.clear(); // what the failed operation read or wrote is gone
                pending = "ROLLBACK TO SAVEPOINT op".into();
                results.push(Err(e));
            }
        }
    }
    if tx.appended {
        pending.push_str("; NOTIFY tessera_changes");
    }
    pending.push_str("; COMMIT");
    // Once COMMIT is sent, a deadline cannot undo it: the outcome is unknown, not "nothing".
    tx.exec_with(pending.trim_start_matches("; ").to_owned(), entries).map_err(|e| match e {
        Error::Unavailable(m) => Error::Unconfirmed(m),
        other => other,
    })?;
    Ok(results)
}

/// One write transaction on a pooled connection.
pub(super) struct PgTx<'a> {
    pub(super) backend: &'a PostgresBackend,
    pub(super) client: Arc<Object>,
    pub(super) appended: bool,
    /// Keys read or written in this transaction (most operations of a batch use the same one).
    pub(super) keys: std::collections::HashMap<KeyId, Option<StoredKey>>,
    /// When every call of the transaction gives up (the earliest deadline of its operations).
    pub(super) deadline: std::time::Instant,
    /// Audit entries of the running operation, sent with the exchange that ends it.
    pub(super) audit: Pending,
}

impl PgTx<'_> {
    pub(super) fn run<T: Send + 'static>(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
        map: impl FnOnce(Vec<Row>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = Arc::clone(&self.client);
        self.backend.call_until(self.deadline, async move {
            let stmt = client.prepare_cached(sql).await.map_err(db)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            map(client.query(&stmt, &refs).await.map_err(db)?)
        })
    }

    pub(super) fn exec(&self, sql: String) -> Result<()> {
        let client = Arc::clone(&self.client);
        self.backend.call_until(self.deadline, async move { client.batch_execute(&sql).await.map_err(db) })
    }

    /// `sql` (transaction statements, never values), after the audit `entries` written by one
    /// prepared `INSERT` in the same exchange. Pipelined, in order: tokio-postgres queues a
    /// request when its future is first polled (the statement is already prepared, so the
    /// `INSERT` needs no round trip first), and `biased` polls the `INSERT` before the batch, so
    /// the entries reach the server ahead of the savepoint release or `COMMIT` behind them, in
    /// the same transaction. If the `INSERT` fails, the transaction is aborted and commits
    /// nothing (a `COMMIT` then rolls back), and its error is returned.
    pub(super) fn exec_with(&self, sql: String, entries: Pending) -> Result<()> {
        if entries.is_empty() {
            return self.exec(sql);
        }
        let client = Arc::clone(&self.client);
        self.backend.call_until(self.deadline, async move {
            let stmt = client.prepare_cached(INSERT_SQL).await.map_err(db)?;
            tokio::try_join!(biased; client.execute_raw(&stmt, entries.params()), client.batch_execute(&sql))
                .map_err(db)?;
            Ok(())
        })
    }

    /// The family of `ids` as the statement's snapshot sees it (the migration's `tessera_family`).
    fn family(&mut self, ids: &[Vec<u8>]) -> Result<Vec<(TokenId, bool)>> {
        self.run(
            "SELECT tid, revoked FROM tessera_family($1) ORDER BY depth, tid",
            vec![p(ids.to_vec())],
            |rows| {
                rows.iter()
                    .map(|r| {
                        let tid = TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?);
                        Ok((tid, r.try_get(1).map_err(db)?))
                    })
                    .collect()
            },
        )
    }
}

pub(super) type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>;

pub(super) fn p<T: tokio_postgres::types::ToSql + Send + Sync + 'static>(
    v: T,
) -> Box<dyn tokio_postgres::types::ToSql + Send + Sync> {
    Box::new(v)
}

impl Tx for PgTx<'_> {
    fn key(&mut self, kid: &KeyId) -> Result<Option<StoredKey>> {
        if let Some(k) = self.keys.get(kid) {
            return Ok(k.clone());
        }
        let params: Params = vec![p(kid.as_bytes().to_vec())];
        let key = self.run(
            "SELECT kid, sealed, state, created, retired_at, revoked_at FROM tessera_keys WHERE kid = $1",
            params,
            |rows| rows.first().map(key_of).transpose().map(|k| k.map(|(_, k)| k)),
        )?;
        self.keys.insert(*kid, key.clone());
        Ok(key)
    }

    fn keys(&mut self) -> Result<Vec<(KeyId, StoredKey)>> {
        self.run(
            "SELECT kid, sealed, state, created, retired_at, revoked_at FROM tessera_keys",
            vec![],
            |rows| rows.iter().map(key_of).collect(),
        )
    }

    fn put_key(&mut self, kid: &KeyId, key: &StoredKey) -> Result<()> {
        self.keys.insert(*kid, Some(key.clone()));
        let params: Params = vec![
            p(kid.as_bytes().to_vec()),
            p(key.sealed.clone()),
            p(state_name(key.state)),
            p(key.created),
            p(key.retired_at),
            p(key.revoked_at),
        ];
        self.run(
            "INSERT INTO tessera_keys (kid, sealed, state, created, retired_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (kid) DO UPDATE SET sealed = excluded.sealed, state = excluded.state,
               retired_at = excluded.retired_at, revoked_at = excluded.revoked_at",
            params,
            |_| Ok(()),
        )
    }

    fn token(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run(select_tokens!("WHERE tid = $1"), params, |rows| {
            rows.first().map(token_of).transpose().map(|t| t.map(|(_, t)| t))
        })
    }

    /// `FOR SHARE`: a revocation of this family locks its rows `FOR NO KEY UPDATE` before it
    /// reads the family for the last time, so it waits for this child to commit and then sees it,
    /// or this waits for the revocation and then sees the parent revoked.
    fn parent(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run(select_tokens!("WHERE tid = $1 FOR SHARE"), params, |rows| {
            rows.first().map(token_of).transpose().map(|t| t.map(|(_, t)| t))
        })
    }

    fn insert_token(&mut self, tid: &TokenId, t: &StoredToken) -> Result<()> {
        let params: Params = vec![
            p(tid.as_bytes().to_vec()),
            p(t.kid.to_vec()),
            p(t.subject.clone()),
            p(t.description.clone()),
            p(t.created),
            p(t.expires),
            p(t.caveats.clone()),
            p(t.parent.map(|b| b.to_vec())),
            p(t.grant.clone()),
            p(t.session.map(|b| b.to_vec())),
        ];
        self.run(
            "INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, parent, grant_json,
               session)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            params,
            |_| Ok(()),
        )
    }

    fn revoke_token(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.run("UPDATE tessera_tokens SET revoked_at = $2 WHERE tid = $1", params, |_| Ok(()))
    }

    fn children(&mut self, tid: &TokenId) -> Result<Vec<TokenId>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run("SELECT tid FROM tessera_tokens WHERE parent = $1 ORDER BY tid", params, |rows| {
            rows.iter().map(|r| Ok(TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?))).collect()
        })
    }

    fn signing_keys(&mut self) -> Result<Vec<(String, StoredSigningKey)>> {
        self.run(SELECT_SIGNING, vec![], |rows| rows.iter().map(signing_key_of).collect())
    }

    fn put_signing_key(&mut self, kid: &str, k: &StoredSigningKey) -> Result<()> {
        let state = signing_state_name(k.state);
        let params: Params = vec![
            p(kid.to_owned()),
            p(k.alg.clone()),
            p(k.sealed.clone()),
            p(k.jwk.clone()),
            p(state),
            p(k.created),
            p(k.activated_at),
            p(k.retired_at),
            p(k.owner.clone()),
        ];
        self.run(
            "INSERT INTO tessera_signing_keys (kid, alg, sealed, jwk, state, created, activated_at, retired_at, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (kid) DO UPDATE SET state = excluded.state, activated_at = excluded.activated_at,
               retired_at = excluded.retired_at",
            params,
            |_| Ok(()),
        )
    }

    fn apps(&mut self) -> Result<Vec<(String, StoredApp)>> {
        self.run(SELECT_APPS, vec![], |rows| rows.iter().map(app_of).collect())
    }

    fn put_app(&mut self, name: &str, app: &StoredApp) -> Result<()> {
        let params: Params = vec![p(name.to_owned()), p(app.audience.clone()), p(crate::codec::encode(app))];
        self.run(
            "INSERT INTO tessera_apps (name, audience, record) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            params,
            |_| Ok(()),
        )
    }

    fn mark_used(&mut self, tid: &TokenId, at: i64) -> Result<Option<i64>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        // Locks the row: of two nodes using one token at once, the second sees the first's use.
        self.run("SELECT used_at FROM tessera_tokens WHERE tid = $1 FOR UPDATE", params, move |rows| {
            let row = rows.first().ok_or(crate::error::Error::UnknownToken(TokenId::from_bytes([0; 16])))?;
            row.try_get::<_, Option<i64>>(0).map_err(db)
        })
        .map_err(|e| match e {
            crate::error::Error::UnknownToken(_) => crate::error::Error::UnknownToken(*tid),
            e => e,
        })
        .and_then(|used| match used {
            Some(t) => Ok(Some(t)),
            None => {
                let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
                self.run("UPDATE tessera_tokens SET used_at = $2 WHERE tid = $1", params, |_| Ok(None))
            }
        })
    }

    fn touch(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.run(
            "UPDATE tessera_tokens SET last_used = $2 WHERE tid = $1 AND (last_used IS NULL OR last_used < $2)",
            params,
            |_| Ok(()),
        )
    }

    fn claim_notice(&mut self, n: &Notice) -> Result<bool> {
        let params: Params = vec![
            p(n.tid.as_bytes().to_vec()),
            p(n.threshold),
            p(n.created),
            p(n.delivered_at),
            p(i32::try_from(n.attempts).unwrap_or(i32::MAX)),
            p(n.next_attempt),
        ];
        self.run(
            "INSERT INTO tessera_notices (tid, threshold, created, delivered_at, attempts, next_attempt)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tid, threshold) DO NOTHING RETURNING tid",
            params,
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn notice(&mut self, tid: &TokenId, threshold: i64) -> Result<Option<Notice>> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(threshold)];
        self.run(
            "SELECT tid, threshold, created, delivered_at, attempts, next_attempt FROM tessera_notices
             WHERE tid = $1 AND threshold = $2 FOR UPDATE",
            params,
            |rows| rows.first().map(notice_of).transpose(),
        )
    }

    fn put_notice(&mut self, n: &Notice) -> Result<()> {
        let params: Params = vec![
            p(n.tid.as_bytes().to_vec()),
            p(n.threshold),
            p(n.delivered_at),
            p(i32::try_from(n.attempts).unwrap_or(i32::MAX)),
            p(n.next_attempt),
        ];
        self.run(
            "UPDATE tessera_notices SET delivered_at = $3, attempts = $4, next_attempt = $5
             WHERE tid = $1 AND threshold = $2",
            params,
            |_| Ok(()),
        )
    }

    fn session(&mut self, sid: &SessionId) -> Result<Option<StoredSession>> {
        let params: Params = vec![p(sid.as_bytes().to_vec())];
        // FOR UPDATE: a refresh of this session on another node waits for this transaction.
        self.run("SELECT record FROM tessera_sessions WHERE sid = $1 FOR UPDATE", params, |rows| {
            rows.first().map(session_of).transpose()
        })
    }

    fn put_session(&mut self, sid: &SessionId, session: &StoredSession) -> Result<()> {
        let params: Params =
            vec![p(sid.as_bytes().to_vec()), p(session.subject.clone()), p(crate::codec::encode(session))];
        self.run(
            "INSERT INTO tessera_sessions (sid, subject, record) VALUES ($1, $2, $3)
             ON CONFLICT (sid) DO UPDATE SET record = excluded.record",
            params,
            |_| Ok(()),
        )
    }

    /// One statement (the migration's `tessera_family`): the whole family, each token once (at
    /// its smallest depth), by depth then id.
    ///
    /// The family is locked (`FOR NO KEY UPDATE`, in id order) and read again until no new member
    /// appears: a child recorded concurrently holds its parent `FOR SHARE` until it commits, so
    /// the lock waits for it and the next read (a new snapshot) sees it. Once every member is
    /// locked no child can be added under any of them until this transaction ends.
    fn descendants(&mut self, roots: &[TokenId]) -> Result<Vec<(TokenId, bool)>> {
        let ids: Vec<Vec<u8>> = roots.iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut locked: std::collections::HashSet<TokenId> = std::collections::HashSet::new();
        let found = loop {
            let found = self.family(&ids)?;
            let new: Vec<Vec<u8>> = found
                .iter()
                .filter(|(t, _)| !locked.contains(t))
                .map(|(t, _)| t.as_bytes().to_vec())
                .collect();
            if new.is_empty() {
                break found;
            }
            self.run(
                "SELECT tid FROM tessera_tokens WHERE tid = ANY($1) ORDER BY tid FOR NO KEY UPDATE",
                vec![p(new)],
                |_| Ok(()),
            )?;
            locked.extend(found.iter().map(|(t, _)| *t));
        };
        if let Some(missing) = roots.iter().find(|r| !found.iter().any(|(t, _)| t == *r)) {
            return Err(Error::UnknownToken(*missing));
        }
        // The roots first, in the order given (they are at depth 0, or below another root).
        let (mut first, rest): (Vec<_>, Vec<_>) = found.into_iter().partition(|(t, _)| roots.contains(t));
        first.sort_by_key(|(t, _)| roots.iter().position(|r| r == t));
        first.extend(rest);
        Ok(first)
    }

    /// One statement; a record another writer revoked first is left as it is, and not returned.
    fn revoke_tokens(&mut self, tids: &[TokenId], at: i64) -> Result<Vec<TokenId>> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = tids.iter().map(|t| t.as_bytes().to_vec()).collect();
        let marked: std::collections::HashSet<TokenId> = self.run(
            "UPDATE tessera_tokens SET revoked_at = $2 WHERE tid = ANY($1) AND revoked_at IS NULL RETURNING tid",
            vec![p(ids), p(at)],
            |rows| {
                rows.iter().map(|r| Ok(TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?))).collect()
            },
        )?;
        Ok(tids.iter().filter(|t| marked.contains(t)).copied().collect())
    }

    /// One statement, whatever the number of entries: the counter's lock is taken once, here.
    fn append_all(&mut self, at: i64, events: &[Event]) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (kinds, ids): (Vec<&'static str>, Vec<Vec<u8>>) = events.iter().map(kind_of).unzip();
        let n = events.len() as i64;
        let mut seqs: Vec<u64> = self.run(
            "WITH next AS (UPDATE tessera_change_counter SET last_seq = last_seq + $2 RETURNING last_seq)
             INSERT INTO tessera_changes (seq, at, kind, id)
             SELECT next.last_seq - $2 + e.ord, $1, e.kind, e.id
             FROM next, unnest($3::text[], $4::bytea[]) WITH ORDINALITY AS e (kind, id, ord)
             RETURNING seq",
            vec![p(at), p(n), p(kinds), p(ids)],
            |rows| rows.iter().map(|r| r.try_get::<_, i64>(0).map(|s| s as u64).map_err(db)).collect(),
        )?;
        self.appended = true;
        // seq = first + ord - 1: ascending seq is the order given.
        seqs.sort_unstable();
        if seqs.len() != events.len() {
            return Err(Error::Corrupt("change counter row is missing".into()));
        }
        Ok(seqs)
    }

    fn insert_audit(&mut self, row: &crate::audit::AuditRow, only: crate::audit::Only) -> Result<()> {
        self.audit.push(row, only);
        Ok(())
    }

    fn copy_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<()> {
        super::bulk::copy_tokens(self, rows)
    }

    fn copy_changes(&mut self, rows: &[crate::backend::Change]) -> Result<()> {
        super::bulk::copy_changes(self, rows)
    }

    fn copy_audit(
        &mut self,
        anchor: Option<crate::audit::AuditAnchor>,
        rows: &[crate::audit::AuditRow],
    ) -> Result<()> {
        super::bulk::copy_audit(self, anchor, rows)
    }

    fn append(&mut self, at: i64, event: Event) -> Result<u64> {
        let (kind, id) = kind_of(&event);
        let params: Params = vec![p(at), p(kind), p(id)];
        // The counter row's lock is held until commit: appends are serialized in commit order.
        let seq = self.run(
            "WITH next AS (UPDATE tessera_change_counter SET last_seq = last_seq + 1 RETURNING last_seq)
             INSERT INTO tessera_changes (seq, at, kind, id) SELECT last_seq, $1, $2, $3 FROM next
             RETURNING seq",
            params,
            |rows| rows.first().map(|r| r.try_get::<_, i64>(0).map_err(db)).transpose(),
        )?;
        self.appended = true;
        seq.map(|s| s as u64).ok_or_else(|| Error::Corrupt("change counter row is missing".into()))
    }
}
