//! What the service counts and records about the use of tokens: rate-limit counters, the single
//! use of `once` tokens, the last use (kept in memory, written in batches), link grants, and
//! expiry notices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tessera_core::{RateLimit, TokenId};

use crate::codec::{NewToken, Notice, TokenRecord};
use crate::error::{Error, Result};
use crate::writer::{Done, Op};
use crate::Store;

/// The answer of a rate check for one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// The budget.
    pub limit: RateLimit,
    /// Whether this use fits in it (it was counted).
    pub allowed: bool,
    /// Uses left in the current window (on a cluster, as this node last learned it).
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

/// One budget's state on this node for the current window.
#[derive(Debug, Default)]
struct Counter {
    window: i64,
    /// Uses counted here this window.
    used_here: u64,
    /// Shared databases: units leased from the shared counter and not yet used.
    leased: u64,
    /// Shared databases: the shared counter's value after the last lease.
    used_seen: u64,
}

/// One budget of one token family.
type Budget = (TokenId, RateLimit);

/// Rate counters by token family and budget.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    counters: Mutex<HashMap<Budget, Arc<Mutex<Counter>>>>,
}

/// Longest a window's counters are kept (the longest period allowed).
const MAX_PERIOD: i64 = 30 * 86_400;

impl Store {
    /// Count one use of the token family `tid` against `limit` at `now` (seconds). Fixed windows
    /// aligned to the epoch. One process: exact. A shared database: each node leases units from
    /// the shared counter (1% of the budget at a time, at least one), and a lease never takes the
    /// counter past the budget, so the cluster as a whole never admits more than the budget; it may
    /// refuse up to a lease per node early.
    pub fn take_rate(&self, tid: TokenId, limit: RateLimit, now: i64) -> Result<RateDecision> {
        let period = i64::try_from(limit.period).unwrap_or(MAX_PERIOD);
        let window = now - now.rem_euclid(period);
        let reset = u64::try_from(window + period - now).unwrap_or(0);
        let counter = {
            let mut all = self.inner.rates.counters.lock().map_err(|_| Error::Closed)?;
            if all.len() > 100_000 {
                // Forget counters of ended windows.
                all.retain(|_, c| c.lock().map(|c| c.window + MAX_PERIOD > now).unwrap_or(false));
            }
            Arc::clone(all.entry((tid, limit)).or_default())
        };
        let mut c = counter.lock().map_err(|_| Error::Closed)?;
        if c.window != window {
            *c = Counter { window, ..Counter::default() };
        }
        let shared = self.inner.backend.shared();
        if !shared {
            let allowed = c.used_here < limit.count;
            if allowed {
                c.used_here += 1;
            }
            return Ok(RateDecision { limit, allowed, remaining: limit.count - c.used_here, reset });
        }
        if c.leased == 0 {
            let want = (limit.count / 100).max(1);
            let (granted, used) =
                self.inner.backend.take_rate(&tid, &limit.to_string(), window, limit.count, want)?;
            c.leased = granted;
            c.used_seen = used;
            if now % 97 == 0 {
                let _ = self.inner.backend.prune_rates(now - 2 * MAX_PERIOD);
            }
        }
        let allowed = c.leased > 0;
        if allowed {
            c.leased -= 1;
            c.used_here += 1;
        }
        // What the cluster has counted, less what this node holds unused.
        let counted = c.used_seen.saturating_sub(c.leased);
        Ok(RateDecision { limit, allowed, remaining: limit.count.saturating_sub(counted), reset })
    }

    /// Record the single use of a `once` token, durably and exactly once across the cluster:
    /// `None` when this is it, `Some(when)` when it was used before.
    pub fn consume(&self, tid: TokenId) -> Result<Option<i64>> {
        match self.submit(Op::Consume(tid))? {
            Done::Used(u) => Ok(u),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Note a successful use of `tid` at `at` in memory (no disk write); [`Store::flush_uses`]
    /// writes them.
    pub fn note_use(&self, tid: TokenId, at: i64) {
        if let Ok(mut t) = self.inner.touched.lock() {
            let e = t.entry(tid).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Write the last uses noted since the previous flush, in one batch. Returns how many.
    pub fn flush_uses(&self) -> Result<usize> {
        let mut batch: Vec<(TokenId, i64)> = match self.inner.touched.lock() {
            Ok(mut t) => t.drain().collect(),
            Err(_) => return Err(Error::Closed),
        };
        // Rows are locked in one order on every node (by token id): two nodes whose batches
        // overlap then wait for each other instead of deadlocking (PostgreSQL's 40P01).
        batch.sort_unstable_by_key(|(tid, _)| *tid.as_bytes());
        let n = batch.len();
        if n > 0 {
            if let Err(e) = self.submit(Op::Touch(batch.clone())) {
                // Keep them for the next flush.
                for (tid, at) in batch {
                    self.note_use(tid, at);
                }
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Record a link token, with what it grants when redeemed (JSON), durably.
    pub fn record_link(&self, token: NewToken, grant: String) -> Result<TokenRecord> {
        match self.submit(Op::CreateLink { token, grant })? {
            Done::Token(r) => Ok(r),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Unrevoked tokens that expire at or before `until` (seconds).
    pub fn tokens_expiring(&self, until: i64) -> Result<Vec<TokenRecord>> {
        let mut out: Vec<TokenRecord> = self
            .inner
            .backend
            .tokens_expiring(until)?
            .into_iter()
            .map(|(tid, t)| t.into_record(tid))
            .collect();
        out.sort_by_key(|r| (r.expires, *r.tid.as_bytes()));
        Ok(out)
    }

    /// Unrevoked tokens last used (or, never used, created) before `cutoff` (seconds).
    pub fn tokens_unused_since(&self, cutoff: i64) -> Result<Vec<TokenRecord>> {
        Ok(self
            .inner
            .backend
            .tokens_unused_since(cutoff)?
            .into_iter()
            .map(|(tid, t)| t.into_record(tid))
            .collect())
    }

    /// Claim the notice of `tid` at `threshold`: true for the one caller (of every node) that
    /// claims it first.
    pub fn claim_notice(&self, notice: Notice) -> Result<bool> {
        match self.submit(Op::ClaimNotice(notice))? {
            Done::Claimed(c) => Ok(c),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Record a notice's delivery progress.
    pub fn put_notice(&self, notice: Notice) -> Result<()> {
        match self.submit(Op::PutNotice(notice))? {
            Done::Nothing => Ok(()),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Take a due notice for delivery until `until`: true for the one node that gets it (it is
    /// not due again before `until` unless it is recorded undelivered sooner).
    pub fn lease_notice(&self, notice: &Notice, now: i64, until: i64) -> Result<bool> {
        match self.submit(Op::LeaseNotice { tid: notice.tid, threshold: notice.threshold, now, until })? {
            Done::Claimed(c) => Ok(c),
            _ => Err(Error::Corrupt("unexpected writer reply".into())),
        }
    }

    /// Undelivered notices due at `now`.
    pub fn due_notices(&self, now: i64) -> Result<Vec<Notice>> {
        self.inner.backend.due_notices(now)
    }

    /// Every notice of a token.
    pub fn notices_of(&self, tid: &TokenId) -> Result<Vec<Notice>> {
        self.inner.backend.notices_of(tid)
    }
}
