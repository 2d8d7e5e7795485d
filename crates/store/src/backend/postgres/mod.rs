//! The shared backend: PostgreSQL, for a cluster of nodes.
//!
//! tokio-postgres with a deadpool pool, driven by a small runtime owned by the backend; the
//! store's synchronous API hands each query to that runtime and waits for the answer, so it is
//! safe to call from any thread. Migrations are the SQL files in `migrations/`, applied at open
//! under an advisory lock. Change-log appends serialize on one counter row (see the migration),
//! and each committing writer sends `NOTIFY tessera_changes`, which a listening connection turns
//! into a wake-up for this node's follower.

use std::future::Future;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tessera_core::{KeyId, SessionId, TokenId};
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

mod audit;
mod rates;
mod rows;
mod tls;

pub use self::tls::SslMode;

/// `SELECT` of the columns `rows::token_of` reads, with the rest of the statement.
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT tid, kid, subject, description, created, expires, caveats, revoked_at, parent, used_at, \
             last_used, grant_json, session FROM tessera_tokens ",
            $rest
        )
    };
}

mod pipeline;
mod tx;

mod bulk;

use self::pipeline::{p, run_batch, Params, PgTx};
use self::rows::{
    app_of, bytes, change_of, db, key_of, notice_of, pool_err, session_of, signing_key_of, token_of,
    unavailable, SELECT_APPS, SELECT_SIGNING,
};
use super::{ApplyOp, Backend, Change};
use crate::codec::{
    Notice, StoredApp, StoredKey, StoredSession, StoredSigningKey, StoredToken, SCHEMA_VERSION,
};
use crate::error::{Error, Result};
use crate::master::MasterKey;
use crate::usage::{RateLease, RateReturn, RateWant};

/// Migrations, in order: (schema version reached, SQL).
const MIGRATIONS: &[(u32, &str)] = &[
    (2, include_str!("../migrations/0001_init.sql")),
    (3, include_str!("../migrations/0002_signing_keys.sql")),
    (4, include_str!("../migrations/0003_apps.sql")),
    (5, include_str!("../migrations/0004_sessions.sql")),
    (6, include_str!("../migrations/0005_limits.sql")),
    (7, include_str!("../migrations/0006_rates.sql")),
    (8, include_str!("../migrations/0007_session_tokens.sql")),
    (9, include_str!("../migrations/0008_audit.sql")),
    (10, include_str!("../migrations/0009_audit_anchor_mac.sql")),
];
/// Key of the advisory lock migrations run under ("tessera" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6573_7365_7261;
/// The channel committing writers notify.
const CHANNEL: &str = "tessera_changes";
/// The longest one database call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What a call that timed out says.
const NO_ANSWER: &str = "no answer within 10 s";

/// Connection settings of the shared database.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Connections in the pool (the writer uses one per batch; reads share the rest).
    pub pool_size: usize,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// TLS mode (`--database-sslmode`); the URL's `sslmode` must agree. Neither: see [`SslMode`]
    /// and docs/CLUSTER.md for the default (never `prefer`).
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA that signed the server's certificate (`--database-ca`); the URL's
    /// `sslrootcert` must agree.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            sslmode: None,
            ca_file: None,
        }
    }
}

/// The PostgreSQL database.
pub(crate) struct PostgresBackend {
    /// Owned only to be shut down on drop (see the `Drop` impl); tasks go through `handle`.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    notified: Mutex<Receiver<()>>,
    /// Exchanges with the server made by write transactions, ever (see
    /// [`Backend::write_round_trips`]).
    round_trips: std::sync::atomic::AtomicU64,
}

impl PostgresBackend {
    /// Connect, check the schema version and the master key (before writing anything), migrate
    /// under the advisory lock, and start listening for changes.
    pub(crate) fn open(url: &str, master: &MasterKey, options: &PostgresOptions) -> Result<Self> {
        // TLS settings taken out of the URL and decided with the flags (tokio-postgres alone
        // would default to `prefer` and refuse verify-full).
        let tls::Connection { mut config, tls } = tls::connection(url, options)?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("tessera");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-postgres")
            .enable_all()
            .build()
            .map_err(|source| Error::Io { path: "postgres runtime".into(), source })?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = {
            let _enter = rt.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(2))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .create_timeout(Some(options.connect_timeout))
                .wait_timeout(Some(CALL_TIMEOUT))
                .build()
                .map_err(|e| Error::Database(format!("pool: {e}")))?
        };
        let (tx, rx) = mpsc::channel();
        let handle = rt.handle().clone();
        let backend = PostgresBackend {
            rt: Some(rt),
            handle,
            pool,
            notified: Mutex::new(rx),
            round_trips: Default::default(),
        };
        let check = master.check_value()?;
        let opens = {
            let master = master.clone();
            move |sealed: &[u8]| master.opens_check(sealed)
        };
        let pool = backend.pool.clone();
        backend.call(async move { migrate(&pool, &check, opens).await })?;
        backend.handle.spawn(listen(config, tls, tx));
        Ok(backend)
    }

    /// Run `fut` on the backend's runtime and wait for it (from any thread), at most
    /// [`CALL_TIMEOUT`].
    fn call<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.call_until(Instant::now() + CALL_TIMEOUT, fut)
    }

    /// [`PostgresBackend::call`], giving up at `deadline` (or after [`CALL_TIMEOUT`], if sooner):
    /// a write's calls share the deadline of the write.
    fn call_until<T: Send + 'static>(
        &self,
        deadline: Instant,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let left = deadline.saturating_duration_since(Instant::now()).min(CALL_TIMEOUT);
        if left.is_zero() {
            return Err(unavailable(NO_ANSWER));
        }
        let timed = async move {
            match tokio::time::timeout(left, fut).await {
                Ok(out) => out,
                Err(_) => Err(unavailable(NO_ANSWER)),
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // A thread of no runtime (the writer, the follower): the future runs right here,
            // its I/O driven by the backend's runtime, with no task to start and no hand-off
            // back (two thread wake-ups less per exchange with the server).
            return self.handle.block_on(timed);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(timed.await);
        });
        rx.recv().map_err(|_| Error::Closed)?
    }

    fn query<T: Send + 'static>(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
        map: fn(&[Row]) -> Result<T>,
    ) -> Result<T> {
        let pool = self.pool.clone();
        self.call(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached(sql).await.map_err(db)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            let rows = client.query(&stmt, &refs).await.map_err(db)?;
            map(&rows)
        })
    }
}

impl Drop for PostgresBackend {
    /// Without blocking: the store may be dropped on an async runtime's thread, where waiting for
    /// a runtime to finish is not allowed.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Apply what is missing of [`MIGRATIONS`], under the advisory lock; the schema version and the
/// master key are checked before anything is written.
async fn migrate(pool: &Pool, check: &[u8], opens: impl Fn(&[u8]) -> bool) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_err)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    let result = async {
        let exists: bool =
            client.query_one("SELECT to_regclass('tessera_meta') IS NOT NULL", &[]).await.map_err(db)?.get(0);
        let mut version = 0u32;
        if exists {
            let rows = client
                .query("SELECT name, value FROM tessera_meta WHERE name IN ('schema', 'check')", &[])
                .await
                .map_err(db)?;
            for r in &rows {
                let name: String = r.get(0);
                let value: Vec<u8> = r.get(1);
                match name.as_str() {
                    "schema" => {
                        version = u32::from_be_bytes(bytes(value, "schema version")?);
                    }
                    _ if !opens(&value) => return Err(Error::WrongMasterKey),
                    _ => {}
                }
            }
            if version > SCHEMA_VERSION {
                return Err(Error::NewerSchema { found: version, supported: SCHEMA_VERSION });
            }
        }
        for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
            let txn = client.transaction().await.map_err(db)?;
            txn.batch_execute(sql).await.map_err(db)?;
            txn.execute(
                "INSERT INTO tessera_meta (name, value) VALUES ('schema', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&to.to_be_bytes().to_vec()],
            )
            .await
            .map_err(db)?;
            txn.commit().await.map_err(db)?;
        }
        client
            .execute(
                "INSERT INTO tessera_meta (name, value) VALUES ('check', $1) ON CONFLICT (name) DO NOTHING",
                &[&check.to_vec()],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    .await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result
}

/// Keep a connection listening on [`CHANNEL`]; every notification wakes the follower. Reconnects
/// after a failure (the follower polls meanwhile).
async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, wake: mpsc::Sender<()>) {
    loop {
        if let Ok((client, mut connection)) = config.connect(tls.clone()).await {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    match msg {
                        Ok(AsyncMessage::Notification(_)) => {
                            if tx.send(()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                while rx.recv().await.is_some() {
                    if wake.send(()).is_err() {
                        return; // the store is gone
                    }
                }
            }
            driver.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Backend for PostgresBackend {
    fn batch(&self, n: usize, deadline: Instant, apply: &mut ApplyOp<'_>) -> Result<Vec<Result<()>>> {
        let pool = self.pool.clone();
        let client = Arc::new(self.call_until(deadline, async move { pool.get().await.map_err(pool_err) })?);
        let mut tx = PgTx {
            backend: self,
            client,
            appended: false,
            keys: Default::default(),
            deadline,
            audit: Default::default(),
            queue: Vec::new(),
            sent: false,
            broken: None,
            warm: false,
        };
        let out = run_batch(&mut tx, n, apply);
        // The rollback is bounded by the same deadline: a database that does not answer is not
        // waited for twice. Past it, dropping the connection ends the transaction.
        if out.is_err() && tx.exec("ROLLBACK".into()).is_err() {
            // Never hand a connection in an unknown state back to the pool.
            if let Ok(obj) = Arc::try_unwrap(tx.client) {
                drop(Object::take(obj));
            }
        }
        out
    }

    fn write_round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys(&self) -> Result<Vec<(KeyId, StoredKey)>> {
        self.query(
            "SELECT kid, sealed, state, created, retired_at, revoked_at FROM tessera_keys",
            vec![],
            |rows| rows.iter().map(key_of).collect(),
        )
    }

    fn signing_keys(&self) -> Result<Vec<(String, StoredSigningKey)>> {
        self.query(SELECT_SIGNING, vec![], |rows| rows.iter().map(signing_key_of).collect())
    }

    fn apps(&self) -> Result<Vec<(String, StoredApp)>> {
        self.query(SELECT_APPS, vec![], |rows| rows.iter().map(app_of).collect())
    }

    fn session(&self, sid: &SessionId) -> Result<Option<StoredSession>> {
        let params: Params = vec![p(sid.as_bytes().to_vec())];
        self.query("SELECT record FROM tessera_sessions WHERE sid = $1", params, |rows| {
            rows.first().map(session_of).transpose()
        })
    }

    fn tokens_expiring(&self, until: i64) -> Result<Vec<(TokenId, StoredToken)>> {
        self.query(
            select_tokens!("WHERE expires IS NOT NULL AND revoked_at IS NULL AND expires <= $1"),
            vec![p(until)],
            |rows| rows.iter().map(token_of).collect(),
        )
    }

    fn tokens_unused_since(&self, cutoff: i64) -> Result<Vec<(TokenId, StoredToken)>> {
        self.query(
            select_tokens!("WHERE revoked_at IS NULL AND COALESCE(last_used, created) < $1"),
            vec![p(cutoff)],
            |rows| rows.iter().map(token_of).collect(),
        )
    }

    fn due_notices(&self, now: i64) -> Result<Vec<Notice>> {
        self.query(
            "SELECT tid, threshold, created, delivered_at, attempts, next_attempt FROM tessera_notices
             WHERE delivered_at IS NULL AND next_attempt <= $1 ORDER BY next_attempt",
            vec![p(now)],
            |rows| rows.iter().map(notice_of).collect(),
        )
    }

    fn notices_of(&self, tid: &TokenId) -> Result<Vec<Notice>> {
        self.query(
            "SELECT tid, threshold, created, delivered_at, attempts, next_attempt FROM tessera_notices
             WHERE tid = $1 ORDER BY threshold DESC",
            vec![p(tid.as_bytes().to_vec())],
            |rows| rows.iter().map(notice_of).collect(),
        )
    }

    fn take_rates(
        &self,
        tid: &TokenId,
        now: i64,
        wants: &[RateWant],
        max_budgets: usize,
    ) -> Result<RateLease> {
        let pool = self.pool.clone();
        let tid = tid.as_bytes().to_vec();
        let wants = wants.to_vec();
        self.call(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(db)?;
            let lease = rates::take(&txn, &tid, now, &wants, max_budgets).await?;
            match &lease {
                RateLease::Granted(_) => txn.commit().await.map_err(db)?,
                // A budget's first refusal in its window marks its counter (once).
                RateLease::Spent { first, .. } if first.iter().any(|f| *f) => {
                    txn.commit().await.map_err(db)?
                }
                // Otherwise dropping the transaction rolls it back: a refusal writes nothing.
                _ => {}
            }
            Ok(lease)
        })
    }

    fn give_back_rates(&self, tid: &TokenId, returns: &[RateReturn]) -> Result<()> {
        let pool = self.pool.clone();
        let tid = tid.as_bytes().to_vec();
        let returns = returns.to_vec();
        self.call(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(db)?;
            rates::give_back(&txn, &tid, &returns).await?;
            txn.commit().await.map_err(db)
        })
    }

    fn prune_rates(&self, now: i64) -> Result<u64> {
        let pool = self.pool.clone();
        self.call(async move {
            let client = pool.get().await.map_err(pool_err)?;
            rates::prune(&client, now).await
        })
    }

    fn token(&self, tid: &TokenId) -> Result<Option<StoredToken>> {
        self.query(select_tokens!("WHERE tid = $1"), vec![p(tid.as_bytes().to_vec())], |rows| {
            rows.first().map(token_of).transpose().map(|t| t.map(|(_, t)| t))
        })
    }

    fn tokens_of(&self, subject: &str) -> Result<Vec<(TokenId, StoredToken)>> {
        self.query(select_tokens!("WHERE subject = $1"), vec![p(subject.to_owned())], |rows| {
            rows.iter().map(token_of).collect()
        })
    }

    fn children_of(&self, tid: &TokenId) -> Result<Vec<TokenId>> {
        self.query(
            "SELECT tid FROM tessera_tokens WHERE parent = $1 ORDER BY tid",
            vec![p(tid.as_bytes().to_vec())],
            |rows| {
                rows.iter()
                    .map(|r| Ok(TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?)))
                    .collect()
            },
        )
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>> {
        self.query(
            "SELECT seq, at, kind, id FROM tessera_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            vec![p(after as i64), p(limit as i64)],
            |rows| rows.iter().map(change_of).collect(),
        )
    }

    fn last_change_seq(&self) -> Result<u64> {
        // The primary key's last entry: one index probe.
        self.query("SELECT coalesce(max(seq), 0) FROM tessera_changes", vec![], |rows| {
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn audit(&self, filter: &crate::audit::AuditFilter) -> Result<Vec<crate::audit::AuditEntry>> {
        self.audit_query(filter)
    }

    fn audit_head(&self) -> Result<Option<crate::audit::AuditHead>> {
        self.audit_head_now()
    }

    fn seal_audit(&self, key: &crate::audit::AuditKey) -> Result<usize> {
        self.audit_seal(key)
    }

    fn prune_audit(&self, key: &crate::audit::AuditKey, before_ms: i64, now_ms: i64) -> Result<usize> {
        self.audit_prune(key, before_ms, now_ms)
    }

    fn audit_anchor(&self) -> Result<Option<crate::audit::AuditAnchor>> {
        self.audit_anchor_now()
    }

    fn audit_sealed_after(&self, after: u64, limit: usize) -> Result<Vec<crate::audit::AuditRow>> {
        self.audit_sealed(after, limit)
    }

    fn audit_unsealed(&self) -> Result<u64> {
        self.audit_unsealed_now()
    }

    fn tokens_page(&self, after: Option<TokenId>, limit: usize) -> Result<Vec<(TokenId, StoredToken)>> {
        self.tokens_page_(after, limit)
    }

    fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, StoredSession)>> {
        self.sessions_page_(after, limit)
    }

    fn all_notices(&self) -> Result<Vec<Notice>> {
        self.all_notices_()
    }

    fn wait_for_change(&self, timeout: Duration) {
        let Ok(rx) = self.notified.lock() else { return };
        if rx.recv_timeout(timeout).is_ok() {
            while rx.try_recv().is_ok() {} // one catch-up serves every notification so far
        }
    }
}
