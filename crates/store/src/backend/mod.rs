//! The seam between the store and its databases.
//!
//! A backend does durable operations and keeps an ordered change log; nothing else. Everything
//! above it — sealing, validation and the meaning of each operation (`writer`), group commit,
//! the in-memory key cache and revocation set (`memory`), the change follower (`follow`) and the
//! `KeyProvider` impl — is written once in the modules above and shared by both backends.
//!
//! - [`redb`](self::redb): the embedded default, one process.
//! - [`postgres`]: a shared database for a cluster of nodes.

pub(crate) mod postgres;
pub(crate) mod redb;

use std::time::{Duration, Instant};

use tessera_core::{KeyId, SessionId, TokenId};

use crate::codec::{KeyState, Notice, StoredApp, StoredKey, StoredSession, StoredSigningKey, StoredToken};
use crate::error::{Error, Result};

/// What a change-log entry records. The log is gap-free and in commit order: a follower that
/// has applied every entry up to `seq` has seen every change committed before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A token family was revoked.
    TokenRevoked(TokenId),
    /// A key was revoked (neither signs nor verifies).
    KeyRevoked(KeyId),
    /// A key was added, or its state changed (activated, retired): reload it.
    KeyChanged(KeyId),
    /// A JWT signing key was added or changed state: reload them.
    SigningKeys,
    /// An application was registered or disabled: reload them.
    Apps,
}

/// One change-log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// Position in the log, from 1, without gaps.
    pub(crate) seq: u64,
    /// When (seconds since the epoch).
    pub(crate) at: i64,
    /// What.
    pub(crate) event: Event,
}

/// The primitives of one write transaction. An error from any of them fails the operation that
/// called it; the backend then makes sure nothing that operation wrote is committed.
pub(crate) trait Tx {
    /// One key.
    fn key(&mut self, kid: &KeyId) -> Result<Option<StoredKey>>;
    /// Every key.
    fn keys(&mut self) -> Result<Vec<(KeyId, StoredKey)>>;
    /// Insert or replace a key.
    fn put_key(&mut self, kid: &KeyId, key: &StoredKey) -> Result<()>;
    /// One token record.
    fn token(&mut self, tid: &TokenId) -> Result<Option<StoredToken>>;
    /// The record of a token a child is about to be recorded under, held until commit against
    /// a concurrent revocation (on a shared database a row lock that the revocation's own locks
    /// wait for), so the child is either refused or revoked with its parent.
    fn parent(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        self.token(tid)
    }
    /// Insert a new token record with its subject and lineage indexes.
    fn insert_token(&mut self, tid: &TokenId, token: &StoredToken) -> Result<()>;
    /// Record a freshly minted token, all checks and the insert as one step: its key must exist
    /// and not be revoked, its id must be new, and its parent (if any) must be recorded and not
    /// revoked, held against a concurrent revocation as [`Tx::parent`] says. Nothing is written
    /// when a check fails. A shared database does it in one statement (one round trip); this
    /// default is the same checks on the other primitives.
    fn record_token(&mut self, tid: &TokenId, token: &StoredToken) -> Result<()> {
        let kid = KeyId::from_bytes(token.kid);
        let key = self.key(&kid)?.ok_or(Error::UnknownKey(kid))?;
        if key.state == KeyState::Revoked {
            return Err(Error::KeyRevoked(kid));
        }
        if self.token(tid)?.is_some() {
            return Err(Error::DuplicateToken(*tid));
        }
        if let Some(parent) = token.parent.map(TokenId::from_bytes) {
            // In the same transaction as a revocation would be: a child is never recorded under
            // a parent whose revocation has committed.
            let p = self.parent(&parent)?.ok_or(Error::UnknownToken(parent))?;
            if p.revoked_at.is_some() {
                return Err(Error::ParentRevoked(parent));
            }
        }
        self.insert_token(tid, token)
    }
    /// Record several freshly minted tokens, in order, each as [`Tx::record_token`] would: one
    /// outcome each, a refused one having written nothing. An error of the database itself (not
    /// a refusal) fails them all. A shared database sends them together (one round trip).
    fn record_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<Vec<Result<()>>> {
        rows.iter()
            .map(|(tid, t)| match self.record_token(tid, t) {
                Err(e) if e.is_refusal() => Ok(Err(e)),
                other => other.map(Ok),
            })
            .collect()
    }
    /// Mark a token record revoked at `at`.
    fn revoke_token(&mut self, tid: &TokenId, at: i64) -> Result<()>;
    /// Record the single use of a token at `at`: `None` when this is it, `Some(when)` when it
    /// was used before (nothing changes).
    fn mark_used(&mut self, tid: &TokenId, at: i64) -> Result<Option<i64>>;
    /// Move a token's last use forward to `at` (never back). Unknown tokens are skipped.
    fn touch(&mut self, tid: &TokenId, at: i64) -> Result<()>;
    /// Insert a notice unless one exists for its token and threshold: whether it was inserted.
    fn claim_notice(&mut self, notice: &Notice) -> Result<bool>;
    /// Replace a notice (delivery progress).
    fn put_notice(&mut self, notice: &Notice) -> Result<()>;
    /// One notice, locked until the transaction ends.
    fn notice(&mut self, tid: &TokenId, threshold: i64) -> Result<Option<Notice>>;
    /// The tokens minted from `tid`.
    fn children(&mut self, tid: &TokenId) -> Result<Vec<TokenId>>;
    /// Every JWT signing key, by kid.
    fn signing_keys(&mut self) -> Result<Vec<(String, StoredSigningKey)>>;
    /// Insert or replace a JWT signing key.
    fn put_signing_key(&mut self, kid: &str, key: &StoredSigningKey) -> Result<()>;
    /// Every application, by name.
    fn apps(&mut self) -> Result<Vec<(String, StoredApp)>>;
    /// Insert or replace an application.
    fn put_app(&mut self, name: &str, app: &StoredApp) -> Result<()>;
    /// One session, locked until the transaction ends (concurrent refreshes of one session on
    /// several nodes take turns).
    fn session(&mut self, sid: &SessionId) -> Result<Option<StoredSession>>;
    /// Insert or replace a session.
    fn put_session(&mut self, sid: &SessionId, session: &StoredSession) -> Result<()>;
    /// Write an audit entry in this transaction (rolled back with the operation that wrote it).
    /// A missing `target_subject` is filled from the target token's record; with
    /// [`Only::TargetIsLink`](crate::audit::Only), nothing is written unless that record is a
    /// link's.
    fn insert_audit(&mut self, row: &crate::audit::AuditRow, only: crate::audit::Only) -> Result<()>;
    /// Append to the change log; returns the entry's sequence number. Appends are serialized
    /// across every writer of the database, so sequence order is commit order.
    fn append(&mut self, at: i64, event: Event) -> Result<u64>;
    /// Whether this transaction may have appended to the change log (so memory has something
    /// to follow once it commits). A database in the same process just says yes: following it
    /// costs no round trip.
    fn appended(&self) -> bool {
        true
    }

    /// Append several entries, in order, as [`Tx::append`] would one by one; their sequence
    /// numbers. Nothing (and no lock) for none.
    fn append_all(&mut self, at: i64, events: &[Event]) -> Result<Vec<u64>> {
        events.iter().map(|e| self.append(at, *e)).collect()
    }

    /// The families `roots` and every family minted from them, transitively, each once, with
    /// whether it is revoked: the roots first, then breadth first. An unknown root is
    /// [`Error::UnknownToken`](crate::error::Error::UnknownToken).
    fn descendants(&mut self, roots: &[TokenId]) -> Result<Vec<(TokenId, bool)>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut queue = std::collections::VecDeque::new();
        for root in roots {
            if seen.insert(*root) {
                queue.push_back(*root);
            }
        }
        while let Some(t) = queue.pop_front() {
            let record = self.token(&t)?.ok_or(crate::error::Error::UnknownToken(t))?;
            out.push((t, record.revoked_at.is_some()));
            for child in self.children(&t)? {
                if seen.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        Ok(out)
    }

    /// Mark unrevoked token records revoked at `at`; returns those this call marked, in the
    /// given order (a record another writer revoked meanwhile is not among them).
    fn revoke_tokens(&mut self, tids: &[TokenId], at: i64) -> Result<Vec<TokenId>> {
        for tid in tids {
            self.revoke_token(tid, at)?;
        }
        Ok(tids.to_vec())
    }

    /// Copy token records as they are (every field, with their subject and lineage indexes) into
    /// a database being filled by a migration; a parent comes before its children.
    fn copy_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<()> {
        // The embedded backend's insert writes the whole record.
        rows.iter().try_for_each(|(tid, t)| self.insert_token(tid, t))
    }

    /// Copy change-log entries keeping their numbers, into a log that ends just before the
    /// first of them.
    fn copy_changes(&mut self, rows: &[Change]) -> Result<()> {
        for c in rows {
            let seq = self.append(c.at, c.event)?;
            if seq != c.seq {
                return Err(crate::error::Error::Corrupt(format!(
                    "change-log entry {} would be copied as {seq}: the source log has a gap",
                    c.seq
                )));
            }
        }
        Ok(())
    }

    /// Copy sealed audit entries as they are (id, seq, link and every field) and the anchor
    /// they chain from, into a database with no audit trail yet (a migration).
    fn copy_audit(
        &mut self,
        anchor: Option<crate::audit::AuditAnchor>,
        rows: &[crate::audit::AuditRow],
    ) -> Result<()>;

    /// Copy expiry notices as they are.
    fn copy_notices(&mut self, rows: &[Notice]) -> Result<()> {
        for n in rows {
            if !self.claim_notice(n)? {
                self.put_notice(n)?;
            }
        }
        Ok(())
    }
}

/// One operation of a batch, applied by the writer inside the backend's transaction.
pub(crate) type ApplyOp<'a> = dyn FnMut(&mut dyn Tx, usize) -> Result<()> + 'a;

/// A database the store keeps its state in.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Run operations `0..n` in one durable transaction: `apply(tx, i)` performs operation `i`.
    /// Each operation is all-or-nothing: one that fails leaves no trace in the commit, and the
    /// others still commit. `Ok` holds each operation's outcome, returned only once the
    /// transaction is durable; `Err` means nothing was committed. A database that may not
    /// answer gives up at `deadline` (`Unavailable`, nothing committed) instead of waiting.
    fn batch(&self, n: usize, deadline: Instant, apply: &mut ApplyOp<'_>) -> Result<Vec<Result<()>>>;
    /// Exchanges with the database server that write transactions made, ever: what the
    /// one-round-trip operations are held to in tests. A database in the same process makes
    /// none.
    fn write_round_trips(&self) -> u64 {
        0
    }
    /// Every key.
    fn keys(&self) -> Result<Vec<(KeyId, StoredKey)>>;
    /// Every JWT signing key, by kid.
    fn signing_keys(&self) -> Result<Vec<(String, StoredSigningKey)>>;
    /// Every application, by name.
    fn apps(&self) -> Result<Vec<(String, StoredApp)>>;
    /// One session.
    fn session(&self, sid: &SessionId) -> Result<Option<StoredSession>>;
    /// Unrevoked tokens whose expiry is at or before `until`.
    fn tokens_expiring(&self, until: i64) -> Result<Vec<(TokenId, StoredToken)>>;
    /// Unrevoked tokens last used (or, never used, created) before `cutoff`.
    fn tokens_unused_since(&self, cutoff: i64) -> Result<Vec<(TokenId, StoredToken)>>;
    /// Notices not yet delivered whose next attempt is due at `now`.
    fn due_notices(&self, now: i64) -> Result<Vec<Notice>>;
    /// Every notice of a token.
    fn notices_of(&self, tid: &TokenId) -> Result<Vec<Notice>>;
    /// Lease units of several budgets of the family `tid` at `now`, all or none: each budget in
    /// `wants` must have room for a unit, and the family may hold at most `max_budgets` budgets
    /// whose window has not ended. Only a shared database has shared counters.
    fn take_rates(
        &self,
        _tid: &TokenId,
        _now: i64,
        _wants: &[crate::usage::RateWant],
        _max_budgets: usize,
    ) -> Result<crate::usage::RateLease> {
        Err(crate::error::Error::Corrupt("this database keeps no shared rate counters".into()))
    }
    /// Return units a node held of shared rate counters of the family `tid` (a use given back
    /// left it none), dropping a counter no node holds any of.
    fn give_back_rates(&self, _tid: &TokenId, _returns: &[crate::usage::RateReturn]) -> Result<()> {
        Ok(())
    }
    /// Drop a batch of shared rate counters whose window ended by `now`; how many.
    fn prune_rates(&self, _now: i64) -> Result<u64> {
        Ok(0)
    }
    /// One token record.
    fn token(&self, tid: &TokenId) -> Result<Option<StoredToken>>;
    /// Every token record of a subject.
    fn tokens_of(&self, subject: &str) -> Result<Vec<(TokenId, StoredToken)>>;
    /// The tokens minted from `tid`.
    fn children_of(&self, tid: &TokenId) -> Result<Vec<TokenId>>;
    /// Change-log entries after `after`, in order, at most `limit`.
    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>>;
    /// The number of the last change-log entry (0 when empty): an upper bound on how many
    /// entries the log holds, which sizes the revocation set before it is loaded at open.
    fn last_change_seq(&self) -> Result<u64>;
    /// Other processes write to this database: a follower must watch the change log, and
    /// memory can go stale when the database cannot be reached.
    fn shared(&self) -> bool;
    /// Block until the database announces a change or `timeout` passes.
    fn wait_for_change(&self, timeout: Duration);

    /// Token records with an id after `after`, in id order, at most `limit` (a copy of the
    /// whole store: `migrate`).
    fn tokens_page(&self, after: Option<TokenId>, limit: usize) -> Result<Vec<(TokenId, StoredToken)>>;
    /// Sessions with an id after `after`, in id order, at most `limit`.
    fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, StoredSession)>>;
    /// Every expiry notice, delivered or not.
    fn all_notices(&self) -> Result<Vec<Notice>>;
    /// A consistent snapshot of the whole database, taken while it serves, written to a new
    /// file at `path`; the snapshot's last change-log number.
    fn backup_to(&self, _path: &std::path::Path) -> Result<u64> {
        Err(crate::error::Error::Unsupported(
            "a PostgreSQL store is backed up with the database's own tools (pg_dump, or \
             pg_basebackup for a running cluster): see docs/CLUSTER.md"
                .into(),
        ))
    }

    /// Audit entries that pass `filter`, by id, after its cursor, at most its page.
    fn audit(&self, filter: &crate::audit::AuditFilter) -> Result<Vec<crate::audit::AuditEntry>>;
    /// The newest sealed audit entry, or else the anchor.
    fn audit_head(&self) -> Result<Option<crate::audit::AuditHead>>;
    /// Chain committed entries not sealed yet (one sealer at a time); how many.
    fn seal_audit(&self, key: &crate::audit::AuditKey) -> Result<usize>;
    /// Delete sealed entries older than `before_ms` from the start of the chain, having checked
    /// the anchor and each of them against `key` ([`crate::audit::prune_walk`]), keeping the last
    /// one deleted as the anchor, with its MAC and `now_ms`; how many.
    fn prune_audit(&self, key: &crate::audit::AuditKey, before_ms: i64, now_ms: i64) -> Result<usize>;
    /// The last pruned entry (where the kept chain starts), if any.
    fn audit_anchor(&self) -> Result<Option<crate::audit::AuditAnchor>>;
    /// Sealed entries with `seq > after`, in seq order, at most `limit`.
    fn audit_sealed_after(&self, after: u64, limit: usize) -> Result<Vec<crate::audit::AuditRow>>;
    /// Entries not sealed yet.
    fn audit_unsealed(&self) -> Result<u64>;
}
