//! The public store: one API over either backend. Reads of keys and revocations come from
//! memory; records and the revocation feed from the backend; every write goes through the
//! writer's group commit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_core::{KeyId, KeyProvider, SessionId, TokenId, TokenKey, MAX_SUBJECT};
use time::OffsetDateTime;

use crate::backend::postgres::{PostgresBackend, PostgresOptions};
use crate::backend::redb::RedbBackend;
use crate::backend::{Backend, Event};
use crate::codec::{
    NewToken, Refreshed, Revocation, RevocationTarget, SessionRecord, TokenRecord, MAX_CAVEAT_SUMMARY,
    MAX_DESCRIPTION,
};
use crate::error::{Error, Result};
use crate::follow::Follower;
use crate::master::MasterKey;
use crate::memory::Memory;
use crate::writer::{Done, Job, Op, Writer};

/// How often the watchdog re-evaluates staleness (its resolution).
const WATCHDOG: Duration = Duration::from_millis(100);

/// How long a write may take, from its submission to its answer: queued for the writer, then
/// its transaction. A write still queued then is not run; on PostgreSQL, a transaction still
/// running then is abandoned. Either way the answer is `Unavailable` with nothing written.
pub(crate) const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Where the store keeps its state.
#[derive(Clone, Debug)]
pub enum Location {
    /// The embedded redb file (one process).
    File(std::path::PathBuf),
    /// A PostgreSQL database shared by a cluster of nodes (`postgres://...`).
    Postgres {
        /// The connection URL.
        url: String,
        /// Pool and timeouts.
        options: PostgresOptions,
    },
}

/// How a node treats a shared database it cannot hear.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// After this long without an answer from the database, the node's memory counts as stale:
    /// [`Store::check_fresh`] fails and, as a `KeyProvider`, the store refuses every token.
    pub max_staleness: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness { max_staleness: Duration::from_secs(10) }
    }
}

/// The key store. Cheap to clone (shared); safe to use from many threads.
///
/// Every call that returns `Ok` after writing has committed durably. Concurrent writers share
/// commits: one writer thread drains every queued operation into one transaction, so eight
/// concurrent mints cost about one commit, not eight.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) mem: Arc<Memory>,
    /// Rate counters (leases of the shared ones on a cluster).
    pub(crate) rates: crate::usage::Rates,
    /// Last uses not yet written (flushed in batches).
    pub(crate) touched: crate::usage::Touched,
    freshness: Freshness,
    /// Shared with the writer: token records its revocation walks visited.
    visits: Arc<std::sync::atomic::AtomicU64>,
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    /// The audit chain's key (derived from the master key).
    pub(crate) audit_key: crate::audit::AuditKey,
    /// Audit notes queued for the writer and not yet done with.
    pub(crate) audit_pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Summaries of collapsed refusals queued for the writer and not yet done with: a place of
    /// their own, so that a queue full of notes does not throw their counts away.
    pub(crate) audit_summaries_pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Audit notes dropped because the queue was full.
    pub(crate) audit_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Identical refusals being collapsed ([`crate::audit::Repeats`]).
    pub(crate) audit_repeats: crate::audit::Repeats,
    /// The follower's announcement of each applied entry.
    applied: tokio::sync::watch::Receiver<u64>,
}

impl Inner {
    /// Queue a write without waiting for it (nobody reads its answer); whether it was queued.
    pub(crate) fn queue(&self, op: Op) -> bool {
        let (reply, _) = mpsc::sync_channel(1);
        let job = Job { op, deadline: std::time::Instant::now() + WRITE_DEADLINE, reply };
        match self.tx.lock() {
            Ok(tx) => tx.as_ref().is_some_and(|tx| tx.send(job).is_ok()),
            Err(_) => false,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The counts of refusals still collapsed are written before the writer stops.
        crate::audit::close_repeats(self);
        self.stop.store(true, Ordering::Release);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut threads) = self.threads.lock() {
            for h in threads.drain(..) {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("shared", &self.inner.backend.shared()).finish_non_exhaustive()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| Error::Io { path: format!("{name} thread"), source })
}

impl Store {
    /// Open (or create) the redb database at `path`, sealed with `master`.
    ///
    /// A new database records its schema version and a sealed check value; an existing one must
    /// have a schema this build understands and must open with `master`, or nothing is written.
    pub fn open(path: impl AsRef<Path>, master: MasterKey) -> Result<Store> {
        Self::open_at(&Location::File(path.as_ref().to_owned()), master, Freshness::default())
    }

    /// Open the store at `location`. On PostgreSQL, migrations run under an advisory lock after
    /// the schema version and the master key are checked; then a follower thread keeps this
    /// node's memory up with every other node's writes.
    pub fn open_at(location: &Location, master: MasterKey, freshness: Freshness) -> Result<Store> {
        let backend: Arc<dyn Backend> = match location {
            Location::File(path) => Arc::new(RedbBackend::open(path, &master)?),
            Location::Postgres { url, options } => Arc::new(PostgresBackend::open(url, &master, options)?),
        };
        let mem = Arc::new(Memory::new());
        let follower = Arc::new(Follower::new(Arc::clone(&backend), Arc::clone(&mem), master.clone()));
        follower.load()?;
        let applied = follower.applied();
        let stop = Arc::new(AtomicBool::new(false));
        let audit_key = crate::audit::AuditKey::from_master(&master);
        let (tx, rx) = mpsc::channel::<Job>();
        let mut threads = Vec::new();
        let visits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer {
            backend: Arc::clone(&backend),
            follower: Arc::clone(&follower),
            master,
            visits: Arc::clone(&visits),
        };
        threads.push(spawn("tessera-store-writer", move || writer.run(rx))?);
        if backend.shared() {
            let follow_stop = Arc::clone(&stop);
            threads.push(spawn("tessera-store-follower", move || follower.run(&follow_stop))?);
            // The watchdog keeps the stale flag current even while the follower waits on a
            // database that does not answer.
            let (mem, stop, limit) = (Arc::clone(&mem), Arc::clone(&stop), freshness.max_staleness);
            threads.push(spawn("tessera-store-watchdog", move || {
                while !stop.load(Ordering::Acquire) {
                    mem.update_stale(limit);
                    std::thread::sleep(WATCHDOG);
                }
            })?);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                mem,
                rates: crate::usage::Rates::default(),
                touched: crate::usage::Touched::default(),
                freshness,
                visits,
                tx: Mutex::new(Some(tx)),
                threads: Mutex::new(threads),
                stop,
                audit_key,
                audit_pending: Default::default(),
                audit_summaries_pending: Default::default(),
                audit_dropped: Default::default(),
                audit_repeats: Default::default(),
                applied,
            }),
        })
    }

    /// Queue a write and wait for its answer, which the writer gives by the write's deadline
    /// ([`WRITE_DEADLINE`] from now), having run it or not.
    pub(crate) fn submit(&self, op: Op) -> Result<Done> {
        let op = crate::audit::with_actor(op);
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job { op, deadline: std::time::Instant::now() + WRITE_DEADLINE, reply };
        {
            let tx = self.inner.tx.lock().map_err(|_| Error::Closed)?;
            tx.as_ref().ok_or(Error::Closed)?.send(job).map_err(|_| Error::Closed)?;
        }
        // No timeout of its own here: an answer given up on while the write may still commit
        // would be a lie either way.
        answer.recv().map_err(|_| Error::Closed)?
    }

    // ---- freshness -----------------------------------------------------------------------

    /// Whether other processes share this store's database (a cluster on PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.inner.backend.shared()
    }

    /// `Ok` while this node's memory may be trusted: always for an embedded database; on a
    /// shared one, while the database answered within `max_staleness`. Otherwise
    /// [`Error::Stale`], which says for how long it has not.
    pub fn check_fresh(&self) -> Result<()> {
        // One atomic load on the verify path; the clock is read only to report.
        if !self.inner.mem.is_stale() {
            return Ok(());
        }
        let limit = self.inner.freshness.max_staleness;
        if !self.inner.mem.update_stale(limit) {
            return Ok(()); // the database answered since the watchdog last looked
        }
        Err(Error::Stale { seconds: self.inner.mem.since_contact().as_secs(), limit: limit.as_secs() })
    }

    /// The last change-log entry this node has applied.
    pub fn last_applied(&self) -> u64 {
        self.inner.mem.last_seq()
    }

    /// A receiver that sees the sequence number of the last change-log entry this node applied,
    /// changed after memory has the entry (on a cluster, other nodes' writes too): what the
    /// revocation stream waits on instead of polling.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// How long since the database last answered this node's follower (zero for an embedded
    /// database, which is never behind).
    pub fn follower_lag(&self) -> Duration {
        if self.inner.backend.shared() {
            self.inner.mem.since_contact()
        } else {
            Duration::ZERO
        }
    }

    // ---- sessions ------------------------------------------------------------------------

    /// Start a session, durably, with the record of its first refresh token (`refresh`, checked
    /// like any minted token). The session's `created`, `current`, `first` and `last_spent` are
    /// set here.
    pub fn create_session(
        &self,
        sid: SessionId,
        session: SessionRecord,
        refresh: NewToken,
    ) -> Result<SessionRecord> {
        self.check_new_token(&refresh)?;
        match self.submit(Op::CreateSession { sid, session: Box::new(session), refresh })? {
            Done::Session(s) => Ok(*s),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Renew a session with the refresh token family `presented`, rotating to `successor` when
    /// given (the presented token is then spent, and `successor` is recorded as its child). In
    /// one transaction, locked against every other refresh of the session on every node: see
    /// [`Refreshed`] for the outcomes. The last spent token presented again within `grace` (to
    /// the millisecond) gets the same successor; later, or any earlier spent token, revokes the
    /// whole session. Once the current refresh token is revoked, every refresh is refused
    /// ([`Error::SessionRevoked`]). The cost does not depend on the session's age.
    pub fn refresh_session(
        &self,
        sid: SessionId,
        presented: TokenId,
        successor: Option<NewToken>,
        grace: Duration,
    ) -> Result<Refreshed> {
        if let Some(new) = &successor {
            self.check_new_token(new)?;
        }
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        match self.submit(Op::RefreshSession { sid, presented, successor, grace_ms })? {
            Done::Refreshed(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Revoke a session: every refresh token it issued (and what was minted from them), at once,
    /// on every node, in one walk from its first refresh token (each visited once). Empty when
    /// it was revoked already.
    pub fn revoke_session(&self, sid: SessionId) -> Result<Vec<Revocation>> {
        match self.submit(Op::RevokeSession(sid))? {
            Done::Revocations(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// One session.
    pub fn session(&self, sid: &SessionId) -> Result<Option<SessionRecord>> {
        Ok(self.inner.backend.session(sid)?.map(|s| s.into_record()))
    }

    // ---- tokens --------------------------------------------------------------------------

    /// Record a minted token, durably. Refuses unknown or revoked keys, duplicate ids, a revoked
    /// or unknown parent and oversized fields, writing nothing.
    pub fn record_token(&self, new: NewToken) -> Result<TokenRecord> {
        self.check_new_token(&new)?;
        match self.submit(Op::Record(new))? {
            Done::Token(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// The limits of a token record, checked before anything is queued.
    pub(crate) fn check_new_token(&self, new: &NewToken) -> Result<()> {
        check_len("subject", new.subject.len(), MAX_SUBJECT)?;
        check_len("description", new.description.len(), MAX_DESCRIPTION)?;
        check_len("caveat summary", new.caveats.iter().map(String::len).sum(), MAX_CAVEAT_SUMMARY)?;
        // Text fields hold no NUL (PostgreSQL's text cannot; the same rule on both backends).
        for (what, text) in [("subject", &new.subject), ("description", &new.description)]
            .into_iter()
            .chain(new.caveats.iter().map(|c| ("caveat", c)))
        {
            if text.contains('\0') {
                return Err(Error::NulInText(what));
            }
        }
        Ok(())
    }

    /// One token record.
    pub fn token(&self, tid: &TokenId) -> Result<Option<TokenRecord>> {
        Ok(self.inner.backend.token(tid)?.map(|t| t.into_record(*tid)))
    }

    /// Every token record of a subject (metadata only), oldest first.
    pub fn tokens_of(&self, subject: &str) -> Result<Vec<TokenRecord>> {
        let mut out: Vec<TokenRecord> =
            self.inner.backend.tokens_of(subject)?.into_iter().map(|(tid, t)| t.into_record(tid)).collect();
        out.sort_by_key(|r| (r.created, *r.tid.as_bytes()));
        Ok(out)
    }

    /// Revoke a token family (the token and all its attenuations) and, transitively, every
    /// token minted from it. Returns one log entry per newly revoked family, the given one first
    /// (then descendants, breadth first); empty when it was already revoked (revoking twice
    /// changes nothing). All of them commit together or none does.
    pub fn revoke_token(&self, tid: TokenId) -> Result<Vec<Revocation>> {
        match self.submit(Op::RevokeToken(tid))? {
            Done::Revocations(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// The token ids minted directly from `tid` (its children), in id order.
    pub fn children_of(&self, tid: &TokenId) -> Result<Vec<TokenId>> {
        self.inner.backend.children_of(tid)
    }

    /// Revocations (of tokens and keys) with a sequence number above `after`, at most `limit`,
    /// in order: what a verifier cache polls. Sequence numbers are those of the change log, so
    /// they increase but may skip (key rotations are entries too).
    pub fn revocations_after(&self, after: u64, limit: usize) -> Result<Vec<Revocation>> {
        let mut out = Vec::new();
        let mut from = after;
        loop {
            let page = self.inner.backend.changes_after(from, limit.max(1))?;
            for c in &page {
                let target = match c.event {
                    Event::TokenRevoked(tid) => RevocationTarget::Token(tid),
                    Event::KeyRevoked(kid) => RevocationTarget::Key(kid),
                    Event::KeyChanged(_) | Event::SigningKeys | Event::Apps => continue,
                };
                out.push(Revocation { seq: c.seq, at: c.at, target });
                if out.len() == limit {
                    return Ok(out);
                }
            }
            match page.last() {
                Some(last) if page.len() == limit.max(1) => from = last.seq,
                _ => return Ok(out),
            }
        }
    }

    /// How many token records this store's revocation walks have visited since it opened: the
    /// work revocations cost, counted so tests can hold it to the number of tokens revoked
    /// (not a stable API).
    #[doc(hidden)]
    pub fn revocation_visits(&self) -> u64 {
        self.inner.visits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Exchanges with a shared database's server that write transactions made since the store
    /// opened (0 on the embedded database): counted so tests can hold each operation to its
    /// round trips (not a stable API).
    #[doc(hidden)]
    pub fn write_round_trips(&self) -> u64 {
        self.inner.backend.write_round_trips()
    }

    /// Whether a token family is revoked (in-memory set, O(1)).
    pub fn is_token_revoked(&self, tid: &TokenId) -> bool {
        self.inner.mem.is_revoked(tid)
    }

    /// Number of revoked token families held in memory.
    pub fn revoked_count(&self) -> usize {
        self.inner.mem.revoked_count()
    }
}

impl KeyProvider for Store {
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        self.inner.mem.token_key(kid, tid)
    }

    fn chain_key(&self, kid: &KeyId, tid: &TokenId) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        self.inner.mem.chain_key(kid, tid)
    }

    /// Fails closed: a stale node (a shared database unheard past `max_staleness`) treats every
    /// token as revoked.
    fn is_revoked(&self, tid: &TokenId) -> bool {
        self.inner.mem.is_revoked(tid) || self.inner.mem.is_stale()
    }

    fn generation(&self) -> Option<u64> {
        Some(self.inner.mem.key_generation())
    }
}

pub(crate) fn check_len(what: &'static str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge { what, size, limit });
    }
    Ok(())
}
