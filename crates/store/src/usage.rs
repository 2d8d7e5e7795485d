//! What the service counts and records about the use of tokens: rate-limit counters (in
//! `rates`), the single use of `once` tokens, the last use (kept in memory, written in batches), link grants, and
//! expiry notices.

mod rates;

pub use rates::{RateDecision, RateTake, DEFAULT_RATE_CAPACITY, MAX_FAMILY_BUDGETS, PRUNE_PER_TAKE};
pub(crate) use rates::{RateLease, RateReturn, RateWant, Rates};

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tessera_core::TokenId;

use crate::codec::{NewToken, Notice, TokenRecord};
use crate::error::{Error, Result};
use crate::writer::{Done, Op};
use crate::Store;

/// Last uses not yet written (flushed in batches), and the store's identity in this process
/// (never reused), which names it in each thread's last noted use.
pub(crate) struct Touched {
    id: u64,
    map: Mutex<HashMap<TokenId, i64>>,
}

impl Default for Touched {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Touched { id: NEXT.fetch_add(1, Ordering::Relaxed), map: Mutex::default() }
    }
}

thread_local! {
    /// The use this thread noted last: store, token, second.
    static LAST_NOTED: Cell<Option<(u64, [u8; 16], i64)>> = const { Cell::new(None) };
}

impl Touched {
    fn note(&self, tid: TokenId, at: i64) {
        if let Ok(mut t) = self.map.lock() {
            let e = t.entry(tid).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

impl Store {
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
    ///
    /// A thread that noted the same use last (this store, this token, this second) does not
    /// note it again: it is in memory, or in a batch taken from it (written, or put back when
    /// the write failed). A token verified again and again then takes no lock shared by the
    /// threads: each would pass the lock's cache line between the cores on every request.
    pub fn note_use(&self, tid: TokenId, at: i64) {
        let touched = &self.inner.touched;
        let key = (touched.id, *tid.as_bytes(), at);
        if LAST_NOTED.try_with(|l| l.get() == Some(key)).unwrap_or(false) {
            return;
        }
        touched.note(tid, at);
        let _ = LAST_NOTED.try_with(|l| l.set(Some(key)));
    }

    /// Write the last uses noted since the previous flush, in one batch. Returns how many.
    pub fn flush_uses(&self) -> Result<usize> {
        let mut batch: Vec<(TokenId, i64)> = match self.inner.touched.map.lock() {
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
                    self.inner.touched.note(tid, at);
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
