//! The pipeline of one write transaction on a pooled connection: the batch (savepoints per
//! operation, `NOTIFY` when the change log grew) and the exchanges with the server, in which
//! nothing that needs no answer is sent alone (see [`run_batch`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deadpool_postgres::Object;
use tessera_core::KeyId;
use tokio_postgres::Row;

use super::audit::{Pending, INSERT_SQL};
use super::rows::db;
use super::tx::{INSERT_TOKEN_SQL, PUT_NOTICE_SQL, PUT_SESSION_SQL, REVOKE_ONE_SQL, TOUCH_SQL};
use super::PostgresBackend;
use crate::backend::ApplyOp;
use crate::codec::StoredKey;
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
    tx.control(BEGIN_SQL);
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
    if tx.mark() == (1, BEGIN_SQL.len()) && tx.audit.is_empty() {
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

/// How a write transaction starts. Its statements are prepared once per connection and run by
/// key, so their generic plan is the right one; left to choose, PostgreSQL kept planning the
/// record statement (its CTEs) afresh for every execution, which cost about a tenth of the
/// records a second at 24 clients (docs/BENCHMARKS.md). `SET LOCAL` ends with the transaction:
/// the pool's readers keep the default. (PostgreSQL 12 and later; the store needs 13.)
const BEGIN_SQL: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

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
    /// Whether the queued statements are prepared on this connection (see [`QUEUED_SQL`]).
    pub(super) warm: bool,
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
    pub(super) fn defer(&mut self, sql: &'static str, params: Params) {
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
        let first = !std::mem::replace(&mut self.warm, true);
        self.count();
        self.backend.call_until(self.deadline, async move {
            // A preparation that fails fails the batch like a queued request (the queue is
            // dropped unsent, so nothing of it may be taken as done).
            if first {
                for sql in QUEUED_SQL {
                    if let Err(e) = client.prepare_cached(sql).await {
                        return Ok(Err((true, e)));
                    }
                }
            }
            // Prepared first (once per connection): a preparation is a round trip of its own,
            // and must not come between the queued requests.
            let mut stmts = Vec::new();
            for q in &queue {
                if let Queued::Write(sql, _) = q {
                    match client.prepare_cached(sql).await {
                        Ok(stmt) => stmts.push(stmt),
                        Err(e) => return Ok(Err((true, e))),
                    }
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

/// Every statement that may be queued, and the audit entries' `INSERT`: prepared on the batch's
/// first exchange (a cache lookup once a connection has them). A preparation sent later could
/// meet a transaction aborted by a failed operation whose `ROLLBACK TO SAVEPOINT` is still
/// queued behind it, and fail an operation that did nothing wrong.
const QUEUED_SQL: [&str; 6] =
    [INSERT_TOKEN_SQL, REVOKE_ONE_SQL, TOUCH_SQL, PUT_NOTICE_SQL, PUT_SESSION_SQL, INSERT_SQL];
