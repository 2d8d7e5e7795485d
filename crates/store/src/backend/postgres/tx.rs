//! One write transaction on a pooled connection: the [`Tx`] primitives in SQL, and the batch
//! around them (savepoints per operation, `NOTIFY` when the change log grew).

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

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

/// `BEGIN`, each operation under its own savepoint (a failed one is rolled back alone), the
/// audit entries of the operations that succeeded, a `NOTIFY` if the change log grew, `COMMIT`.
///
/// Round trips are what a batch costs on a shared database, so nothing that needs no answer is
/// sent alone. The transaction statements (`BEGIN`, `SAVEPOINT`, `RELEASE SAVEPOINT`,
/// `ROLLBACK TO SAVEPOINT`) and the writes whose only possible failure is the database's own
/// (a session's new record, a last use, a notice's progress) wait in `tx.queue` and go pipelined
/// in front of the next statement that does need an answer; the audit entries wait for the
/// `COMMIT` and go, as one `INSERT`, in front of it. So an operation that is one statement
/// (recording a token, a single use) costs one round trip, and the batch one more. An operation
/// that sent nothing needs no savepoint: its `SAVEPOINT` (and anything it queued) is taken back
/// unsent. A batch of one operation needs none at all: its failure rolls back the whole
/// transaction. A queued request that fails fails the whole batch: it may belong to an operation
/// already done, which must not be rolled back alone.
pub(super) fn run_batch(tx: &mut PgTx<'_>, n: usize, apply: &mut ApplyOp<'_>) -> Result<Vec<Result<()>>> {
    let single = n == 1;
    tx.control("BEGIN");
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let mark = tx.mark();
        let entries = tx.audit.len();
        if !single {
            tx.control("SAVEPOINT op");
        }
        tx.sent = false;
        let outcome = apply(tx, i);
        if let Some(e) = tx.broken.take() {
            return Err(e);
        }
        match outcome {
            Ok(()) => {
                if !tx.sent && tx.mark() == tx.after_savepoint(mark, single) {
                    tx.back_to(mark); // it neither sent nor queued anything
                } else if !single {
                    tx.control("RELEASE SAVEPOINT op");
                }
                results.push(Ok(()));
            }
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(e) if single => {
                if tx.sent {
                    tx.exec("ROLLBACK".into())?;
                }
                return Ok(vec![Err(e)]);
            }
            Err(e) => {
                tx.audit.truncate(entries); // the failed operation's entries are not written
                tx.keys.clear(); // what the failed operation read or wrote is gone
                if tx.sent {
                    tx.control("ROLLBACK TO SAVEPOINT op");
                } else {
                    tx.back_to(mark);
                }
                results.push(Err(e));
            }
        }
    }
    if tx.mark() == (1, "BEGIN".len()) && tx.audit.is_empty() {
        // Nothing was sent and nothing is to be written (every operation failed its checks).
        return Ok(results);
    }
    // Once COMMIT is sent, a deadline cannot undo it: the outcome is unknown, not "nothing".
    tx.finish().map_err(|e| match e {
        Error::Unavailable(m) => Error::Unconfirmed(m),
        other => other,
    })?;
    Ok(results)
}

/// A request waiting to be sent in front of the next one that needs an answer.
pub(super) enum Queued {
    /// Transaction statements (simple query protocol; never values).
    Control(String),
    /// A prepared statement whose answer is not needed.
    Write(&'static str, Params),
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
    /// Audit entries of the operations so far that succeeded (and of the running one), written
    /// in front of the `COMMIT`.
    pub(super) audit: Pending,
    /// Requests not sent yet, in order: they go in front of the next statement.
    pub(super) queue: Vec<Queued>,
    /// Whether the running operation sent anything (so needs its savepoint).
    pub(super) sent: bool,
    /// A queued request failed: the batch fails whatever the running operation says.
    pub(super) broken: Option<Error>,
}

/// A request's failure and whether it was one of the queued ones (not the statement sent with
/// them).
type Failed = (bool, tokio_postgres::Error);

impl PgTx<'_> {
    /// One more exchange with the server.
    fn count(&self) {
        self.backend.round_trips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queue transaction statements (joined to the last queued ones when those are statements
    /// too: one simple query).
    fn control(&mut self, sql: &str) {
        match self.queue.last_mut() {
            Some(Queued::Control(last)) => {
                last.push_str("; ");
                last.push_str(sql);
            }
            _ => self.queue.push(Queued::Control(sql.to_owned())),
        }
    }

    /// Queue a write whose answer is not needed.
    fn defer(&mut self, sql: &'static str, params: Params) {
        self.queue.push(Queued::Write(sql, params));
    }

    /// Where the queue ends now (requests, and the length of the last one's text).
    fn mark(&self) -> (usize, usize) {
        match self.queue.last() {
            Some(Queued::Control(sql)) => (self.queue.len(), sql.len()),
            _ => (self.queue.len(), 0),
        }
    }

    /// Where the queue ends once an operation started at `mark` has queued its savepoint.
    fn after_savepoint(&self, mark: (usize, usize), single: bool) -> (usize, usize) {
        match (single, mark) {
            (true, _) => mark,
            (false, (n, 0)) => (n + 1, "SAVEPOINT op".len()),
            (false, (n, len)) => (n, len + "; SAVEPOINT op".len()),
        }
    }

    /// Take back whatever was queued since `mark`.
    fn back_to(&mut self, (n, len): (usize, usize)) {
        self.queue.truncate(n);
        if let Some(Queued::Control(sql)) = self.queue.last_mut() {
            if len > 0 {
                sql.truncate(len);
            }
        }
    }

    /// Send the queued requests and then `last`, pipelined (one round trip), and wait for every
    /// answer. tokio-postgres queues a request when its future is first polled, and the futures
    /// are first polled in order, so the server runs them in that order.
    fn send<T: Send + 'static>(&mut self, last: Vec<Last<T>>) -> Result<std::result::Result<Vec<T>, Failed>> {
        let queue = std::mem::take(&mut self.queue);
        let client = Arc::clone(&self.client);
        self.count();
        self.backend.call_until(self.deadline, async move {
            // Prepared first (once per connection): a preparation is a round trip of its own,
            // and must not come between the queued requests.
            let mut stmts = Vec::new();
            for q in &queue {
                if let Queued::Write(sql, _) = q {
                    stmts.push(client.prepare_cached(sql).await.map_err(db)?);
                }
            }
            let mut futs: Vec<BoxFuture<std::result::Result<(), tokio_postgres::Error>>> = Vec::new();
            let mut stmts = stmts.into_iter();
            for q in queue {
                let client = Arc::clone(&client);
                match q {
                    Queued::Control(sql) => {
                        futs.push(Box::pin(async move { client.batch_execute(&sql).await }))
                    }
                    Queued::Write(_, params) => {
                        let stmt =
                            stmts.next().ok_or_else(|| Error::Corrupt("statement not prepared".into()))?;
                        futs.push(Box::pin(async move {
                            let refs = params
                                .iter()
                                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync));
                            client.execute_raw(&stmt, refs).await.map(|_| ())
                        }));
                    }
                }
            }
            let queued = futs.len();
            let mut last: Vec<BoxFuture<std::result::Result<T, tokio_postgres::Error>>> =
                last.into_iter().map(|l| l(Arc::clone(&client))).collect();
            let mut done: Vec<bool> = vec![false; queued];
            let mut failed: Option<Failed> = None;
            let mut answers: Vec<Option<std::result::Result<T, tokio_postgres::Error>>> =
                last.iter().map(|_| None).collect();
            std::future::poll_fn(|cx| {
                let mut pending = false;
                for (i, f) in futs.iter_mut().enumerate() {
                    if done[i] {
                        continue;
                    }
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(r) => {
                            done[i] = true;
                            if let Err(e) = r {
                                failed.get_or_insert((true, e));
                            }
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
                for (f, answer) in last.iter_mut().zip(answers.iter_mut()) {
                    if answer.is_none() {
                        match f.as_mut().poll(cx) {
                            std::task::Poll::Ready(r) => *answer = Some(r),
                            std::task::Poll::Pending => pending = true,
                        }
                    }
                }
                if pending {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            if let Some(f) = failed {
                return Ok(Err(f));
            }
            let mut out = Vec::with_capacity(answers.len());
            for answer in answers {
                match answer {
                    Some(Ok(t)) => out.push(t),
                    Some(Err(e)) => return Ok(Err((false, e))),
                    None => return Err(Error::Corrupt("pipeline ended without an answer".into())),
                }
            }
            Ok(Ok(out))
        })
    }

    /// The outcome of [`PgTx::send`]: a queued request that failed breaks the batch.
    fn settle<T>(&mut self, out: std::result::Result<T, Failed>) -> Result<T> {
        match out {
            Ok(t) => Ok(t),
            Err((false, e)) => Err(db(e)),
            Err((true, e)) => {
                let e = db(e);
                self.broken = Some(Error::Database(format!("a queued write of the batch failed: {e}")));
                Err(e)
            }
        }
    }

    /// One prepared statement, with the queued requests pipelined in front of it (one round trip
    /// for all).
    pub(super) fn run<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Params,
        map: impl FnOnce(Vec<Row>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let rows = self.run_many(sql, vec![params])?.pop().unwrap_or_default();
        map(rows)
    }

    /// `sql` once per set of parameters, pipelined in that order behind the queued requests (one
    /// round trip for all), and the rows of each. The first failure is returned; after it the
    /// transaction is aborted.
    pub(super) fn run_many(&mut self, sql: &'static str, sets: Vec<Params>) -> Result<Vec<Vec<Row>>> {
        self.sent = true;
        let last: Vec<Last<Vec<Row>>> = sets
            .into_iter()
            .map(|params| -> Last<Vec<Row>> {
                Box::new(move |client: Arc<Object>| -> BoxFuture<std::result::Result<Vec<Row>, tokio_postgres::Error>> {
                    Box::pin(async move {
                        let stmt = client.prepare_cached(sql).await?;
                        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                            .iter()
                            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                            .collect();
                        client.query(&stmt, &refs).await
                    })
                })
            })
            .collect();
        let out = self.send(last)?;
        self.settle(out)
    }

    /// Transaction statements alone (a `ROLLBACK`): whatever is queued is dropped.
    pub(super) fn exec(&mut self, sql: String) -> Result<()> {
        self.queue.clear();
        self.count();
        let client = Arc::clone(&self.client);
        self.backend.call_until(self.deadline, async move { client.batch_execute(&sql).await.map_err(db) })
    }

    /// The end of the batch in one exchange, pipelined in this order: the queued requests, the
    /// audit entries (one prepared `INSERT`), then `NOTIFY` if the change log grew and `COMMIT`.
    /// If anything before the `COMMIT` fails, the transaction is aborted and the `COMMIT` commits
    /// nothing (it rolls back), and the error is returned.
    fn finish(&mut self) -> Result<()> {
        let entries = std::mem::take(&mut self.audit);
        if !entries.is_empty() {
            self.queue.push(Queued::Write(INSERT_SQL, entries.into_params()));
        }
        let end = if self.appended { "NOTIFY tessera_changes; COMMIT" } else { "COMMIT" };
        let last: Last<()> = Box::new(
            move |client: Arc<Object>| -> BoxFuture<std::result::Result<(), tokio_postgres::Error>> {
                Box::pin(async move { client.batch_execute(end).await })
            },
        );
        let out = self.send(vec![last])?;
        self.settle(out).map(|_| ())
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request to send behind the queued ones, given the connection.
type Last<T> =
    Box<dyn FnOnce(Arc<Object>) -> BoxFuture<std::result::Result<T, tokio_postgres::Error>> + Send>;

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
        self.defer(
            "INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, parent, grant_json,
               session)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            params,
        );
        Ok(())
    }

    /// One statement, one round trip: the key, the id, the parent (`FOR SHARE`, as
    /// [`Tx::parent`] holds it) and the insert, which happens only when every check passes; then
    /// the checks' findings say which error, if any, the operation has.
    fn record_token(&mut self, tid: &TokenId, t: &StoredToken) -> Result<()> {
        let rows = self.run_many(RECORD_SQL, vec![record_params(tid, t)])?;
        recorded(tid, t, &rows[0])
    }

    /// The statement of [`Tx::record_token`] once per record, pipelined: one round trip for all.
    /// Each sees the ones before it (one transaction, run in order). None raises an error for a
    /// refusal, so an error is the database's and fails them all.
    fn record_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<Vec<Result<()>>> {
        let sets = rows.iter().map(|(tid, t)| record_params(tid, t)).collect();
        let found = self.run_many(RECORD_SQL, sets)?;
        Ok(rows.iter().zip(&found).map(|((tid, t), found)| recorded(tid, t, found)).collect())
    }

    fn revoke_token(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.defer("UPDATE tessera_tokens SET revoked_at = $2 WHERE tid = $1", params);
        Ok(())
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

    /// One statement, one round trip: the row is locked (`FOR UPDATE`: of two nodes using one
    /// token at once, the second waits and then sees the first's use) and marked used only if
    /// it was not; the answer is the use before this one, if any.
    fn mark_used(&mut self, tid: &TokenId, at: i64) -> Result<Option<i64>> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        let (found, before) = self.run(
            "WITH o AS MATERIALIZED (SELECT used_at FROM tessera_tokens WHERE tid = $1 FOR UPDATE),
             u AS (UPDATE tessera_tokens SET used_at = $2
                   WHERE tid = $1 AND EXISTS (SELECT 1 FROM o WHERE used_at IS NULL) RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM o), (SELECT used_at FROM o), EXISTS (SELECT 1 FROM u)",
            params,
            |rows| {
                let r = rows.first().ok_or_else(|| Error::Corrupt("a single use returned no row".into()))?;
                Ok((r.try_get::<_, bool>(0).map_err(db)?, r.try_get::<_, Option<i64>>(1).map_err(db)?))
            },
        )?;
        if !found {
            return Err(Error::UnknownToken(*tid));
        }
        Ok(before)
    }

    fn touch(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.defer(
            "UPDATE tessera_tokens SET last_used = $2 WHERE tid = $1 AND (last_used IS NULL OR last_used < $2)",
            params,
        );
        Ok(())
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
        self.defer(
            "UPDATE tessera_notices SET delivered_at = $3, attempts = $4, next_attempt = $5
             WHERE tid = $1 AND threshold = $2",
            params,
        );
        Ok(())
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
        // Queued: it goes with the next statement or the commit (the record was read `FOR
        // UPDATE` before, so nothing else can have changed it).
        self.defer(
            "INSERT INTO tessera_sessions (sid, subject, record) VALUES ($1, $2, $3)
             ON CONFLICT (sid) DO UPDATE SET record = excluded.record",
            params,
        );
        Ok(())
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

    fn appended(&self) -> bool {
        self.appended
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

/// The parameters of [`RECORD_SQL`].
fn record_params(tid: &TokenId, t: &StoredToken) -> Params {
    vec![
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
    ]
}

/// The outcome of recording `tid` from what [`RECORD_SQL`] found: the key's state (none:
/// unknown), whether the id was taken, whether the parent was found and revoked, and whether the
/// row went in; the refusals in the order [`Tx::record_token`] checks them.
fn recorded(tid: &TokenId, t: &StoredToken, rows: &[Row]) -> Result<()> {
    let r = rows.first().ok_or_else(|| Error::Corrupt("recording a token returned no row".into()))?;
    let key_state: Option<String> = r.try_get(0).map_err(db)?;
    let (duplicate, parent_found, parent_revoked, inserted): (bool, bool, bool, bool) = (
        r.try_get(1).map_err(db)?,
        r.try_get(2).map_err(db)?,
        r.try_get(3).map_err(db)?,
        r.try_get(4).map_err(db)?,
    );
    let kid = KeyId::from_bytes(t.kid);
    match key_state.as_deref() {
        None => return Err(Error::UnknownKey(kid)),
        Some("revoked") => return Err(Error::KeyRevoked(kid)),
        Some(_) => {}
    }
    if duplicate {
        return Err(Error::DuplicateToken(*tid));
    }
    if let Some(parent) = t.parent.map(TokenId::from_bytes) {
        if !parent_found {
            return Err(Error::UnknownToken(parent));
        }
        if parent_revoked {
            return Err(Error::ParentRevoked(parent));
        }
    }
    if !inserted {
        // Recorded by a concurrent writer after this statement's snapshot.
        return Err(Error::DuplicateToken(*tid));
    }
    Ok(())
}

/// Recording a new token in one statement (see [`Tx::record_token`]). Every check is a
/// materialized CTE, evaluated before the insert that depends on them; the parent is locked
/// `FOR SHARE` and read in its latest committed version. `ON CONFLICT DO NOTHING` covers an id
/// recorded concurrently after the snapshot.
const RECORD_SQL: &str = "WITH k AS MATERIALIZED (SELECT state FROM tessera_keys WHERE kid = $2::bytea),
    d AS MATERIALIZED (SELECT 1 FROM tessera_tokens WHERE tid = $1::bytea),
    par AS MATERIALIZED (SELECT revoked_at FROM tessera_tokens WHERE tid = $8::bytea FOR SHARE),
    ins AS (
        INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, parent, grant_json,
            session)
        SELECT $1::bytea, $2::bytea, $3::text, $4::text, $5::bigint, $6::bigint, $7::text[], $8::bytea, $9::text,
            $10::bytea
        WHERE EXISTS (SELECT 1 FROM k WHERE state <> 'revoked')
          AND NOT EXISTS (SELECT 1 FROM d)
          AND ($8::bytea IS NULL OR EXISTS (SELECT 1 FROM par WHERE revoked_at IS NULL))
        ON CONFLICT (tid) DO NOTHING
        RETURNING 1)
    SELECT (SELECT state FROM k), EXISTS (SELECT 1 FROM d), EXISTS (SELECT 1 FROM par),
        EXISTS (SELECT 1 FROM par WHERE revoked_at IS NOT NULL), EXISTS (SELECT 1 FROM ins)";
