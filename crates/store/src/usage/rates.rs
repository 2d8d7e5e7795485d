//! Rate-limit counters: one per budget (`rate-limit N/P`) of a token family, in fixed windows
//! aligned to the epoch.
//!
//! What a holder controls is bounded (issue 19, finding 3). A family holds at most
//! [`MAX_FAMILY_BUDGETS`] budgets whose window has not ended (a token that would add more is
//! refused and creates nothing); a node holds at most its capacity of counters
//! ([`DEFAULT_RATE_CAPACITY`]; when full, a token that needs a new counter is refused: no live
//! counter is ever evicted, so no budget can be reset by filling the table). A use costs work in
//! the number of the token's budgets plus at most [`PRUNE_PER_TAKE`] expiry checks, never in the
//! number of counters: families are filed in per-minute buckets by the end of their last window,
//! and each use (and each housekeeping round, for all that are due) drops families whose buckets
//! have passed.
//!
//! A use takes one unit from every budget of the token or from none (finding 4): a refusal spends
//! nothing, and a use refused afterwards (a replayed `once` token, a failed management call) gives
//! its units back. Neither holds a slot: the counters only a refused use needed are forgotten.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tessera_core::{RateLimit, TokenId};

use crate::error::{Error, Result};

mod take;

/// Distinct budgets (whose window has not ended) one token family may hold at once.
pub const MAX_FAMILY_BUDGETS: usize = 8;

/// Counters one node holds at most, by default (about 45 MiB when full: see docs/LIMITS.md).
pub const DEFAULT_RATE_CAPACITY: usize = 1 << 18;

/// Expiry checks a use makes at most (amortised: each filing is checked once).
pub const PRUNE_PER_TAKE: usize = 16;

/// Width of an expiry bucket, in seconds.
const BUCKET: i64 = 60;

/// The answer of a rate check for one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// The budget.
    pub limit: RateLimit,
    /// Whether this budget had room for the use. The use is counted only when every budget of
    /// the token had room ([`RateTake::Taken`]).
    pub allowed: bool,
    /// Uses left in the current window (on a cluster, as this node last learned it).
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
    /// This budget is spent and this is its first refusal in the window (on a cluster: the first
    /// the shared counter saw): what the audit trail records once per token and window
    /// (`budget.exhausted`), not per request.
    pub first_refusal: bool,
}

impl RateTake {
    /// A spent budget's first refusal in its window (see [`RateDecision::first_refusal`]).
    pub fn first(&self) -> bool {
        matches!(self, RateTake::Spent(d) if d.iter().any(|d| d.first_refusal))
    }
}

/// What taking one use from every budget of a token did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateTake {
    /// Every budget had room: one use was taken from each.
    Taken(Vec<RateDecision>),
    /// A budget is spent (`allowed: false`): nothing was taken from any.
    Spent(Vec<RateDecision>),
    /// The token would make its family hold more than [`MAX_FAMILY_BUDGETS`] distinct budgets:
    /// nothing was taken and no counter created.
    TooManyBudgets {
        /// Budgets the family holds now.
        held: usize,
        /// New budgets this token would add.
        adding: usize,
        /// The limit ([`MAX_FAMILY_BUDGETS`]).
        limit: usize,
    },
    /// This node holds its capacity of counters and the token needs a new one: nothing was taken
    /// and no counter created (a live counter is never evicted).
    Full {
        /// The node's capacity.
        capacity: usize,
    },
}

/// One budget's state on this node for its current window.
#[derive(Debug)]
struct Counter {
    limit: RateLimit,
    window: i64,
    /// Uses counted here this window.
    used_here: u64,
    /// Shared databases: units leased from the shared counter and not yet used.
    leased: u64,
    /// Shared databases: the shared counter's value after the last lease.
    used_seen: u64,
    /// One node: the budget is spent and a use was refused this window already.
    refused: bool,
}

impl Counter {
    fn new(limit: RateLimit, window: i64) -> Counter {
        Counter { limit, window, used_here: 0, leased: 0, used_seen: 0, refused: false }
    }

    fn ends(&self) -> i64 {
        self.window.saturating_add(period(self.limit))
    }

    /// Start the window `window` if it is a later one.
    fn roll(&mut self, window: i64) {
        if window > self.window {
            *self = Counter::new(self.limit, window);
        }
    }
}

/// One token family's budgets.
#[derive(Debug, Default)]
struct Family {
    budgets: Vec<Counter>,
    /// The expiry bucket the family is filed under: at or after the end of its last window.
    bucket: i64,
}

/// The counters of one node.
#[derive(Debug)]
struct Table {
    families: HashMap<TokenId, Family>,
    /// Families by expiry bucket (a family may have stale filings under earlier buckets).
    wheel: BTreeMap<i64, Vec<TokenId>>,
    /// Counters held (the sum of the families' budgets).
    counters: usize,
    capacity: usize,
    /// Counters and filings looked at, in all (work, for tests and benchmarks).
    examined: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            families: HashMap::new(),
            wheel: BTreeMap::new(),
            counters: 0,
            capacity: DEFAULT_RATE_CAPACITY,
            examined: 0,
        }
    }
}

/// Rate counters by token family and budget.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    table: Mutex<Table>,
}

/// Units a node asks the shared counter for at a time: 1% of the budget, at least one.
fn lease_size(limit: RateLimit) -> u64 {
    (limit.count / 100).max(1)
}

fn period(limit: RateLimit) -> i64 {
    // At most 30 days (the caveat's own limit).
    i64::try_from(limit.period).unwrap_or(30 * 86_400)
}

fn window_of(limit: RateLimit, now: i64) -> i64 {
    now - now.rem_euclid(period(limit))
}

fn reset_of(c: &Counter, now: i64) -> u64 {
    u64::try_from(c.ends() - now).unwrap_or(0)
}

/// What a node asks of the shared database for one budget.
#[derive(Clone, Debug)]
pub(crate) struct RateWant {
    pub(crate) limit: RateLimit,
    /// The budget in canonical text (the row's key with the family).
    pub(crate) spec: String,
    pub(crate) window: i64,
    /// When `window` ends.
    pub(crate) ends: i64,
    /// Units to lease.
    pub(crate) want: u64,
}

/// The shared database's answer to a lease of several budgets of one family, all or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RateLease {
    /// Each budget's grant (at least one unit) and the counter's value after it, in order.
    Granted(Vec<(u64, u64)>),
    /// A budget is spent: nothing was granted; each counter's value, and for each budget whether
    /// this is the first refusal its shared counter saw this window.
    Spent {
        /// Each counter's value.
        used: Vec<u64>,
        /// Whether this refusal is the budget's first in its window.
        first: Vec<bool>,
    },
    /// The family would hold more than the limit of distinct budgets; nothing was written.
    TooManyBudgets {
        /// Budgets the family holds in the database.
        held: usize,
        /// New budgets the lease would have added.
        adding: usize,
    },
}

/// Units a node returns to the shared counter of one budget: all it held of the window, when a
/// use given back leaves it none (the row goes when no node holds any).
#[derive(Clone, Debug)]
pub(crate) struct RateReturn {
    /// The budget in canonical text.
    pub(crate) spec: String,
    pub(crate) window: i64,
    pub(crate) units: u64,
}

impl Table {
    /// Drop families whose last window has ended, looking at no more than `max` filings.
    fn prune(&mut self, now: i64, max: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..max {
            let Some(mut first) = self.wheel.first_entry() else { break };
            if *first.key() > now {
                break;
            }
            let tid = first.get_mut().pop();
            if first.get().is_empty() {
                first.remove();
            }
            let Some(tid) = tid else { continue };
            self.examined += 1;
            if self.families.get(&tid).is_some_and(|f| f.bucket <= now) {
                if let Some(f) = self.families.remove(&tid) {
                    self.counters -= f.budgets.len();
                    dropped += f.budgets.len();
                }
            }
        }
        dropped
    }

    /// File `tid` under the bucket at or after `ends`, if that is later than where it is filed.
    fn file(&mut self, tid: TokenId, ends: i64) {
        let bucket = ends.div_euclid(BUCKET).saturating_add(1).saturating_mul(BUCKET);
        if let Some(f) = self.families.get_mut(&tid) {
            if bucket > f.bucket {
                f.bucket = bucket;
                self.wheel.entry(bucket).or_default().push(tid);
            }
        }
    }

    /// The family of `tid` with a counter for each of `limits` (distinct) in the window
    /// of `now`, creating what is missing within both caps; or why not. Budgets whose window has
    /// ended are dropped first. Returns the indices of the counters, in the order of `limits`,
    /// the budgets whose counters were created (the caller forgets them unless the use is taken:
    /// a refusal must hold no slot) and the end of the latest window (the caller files the family
    /// by it once the use is taken).
    fn prepare(&mut self, tid: TokenId, limits: &[RateLimit], now: i64) -> Result<Prepared, RateTake> {
        let capacity = self.capacity;
        let family = self.families.entry(tid).or_default();
        let before = family.budgets.len();
        family.budgets.retain(|c| c.ends() > now);
        let ended = before - family.budgets.len();
        self.examined += before as u64;
        let created: Vec<RateLimit> =
            limits.iter().filter(|l| !family.budgets.iter().any(|c| c.limit == **l)).copied().collect();
        let (held, adding) = (family.budgets.len(), created.len());
        self.counters -= ended;
        let refusal = if held + adding > MAX_FAMILY_BUDGETS {
            Some(RateTake::TooManyBudgets { held, adding, limit: MAX_FAMILY_BUDGETS })
        } else if adding > 0 && self.counters + adding > capacity {
            Some(RateTake::Full { capacity })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if held == 0 {
                self.families.remove(&tid);
            }
            return Err(refusal);
        }
        // Exactly (a first push would make room for four): memory is per counter.
        family.budgets.reserve_exact(adding);
        let mut at = Vec::with_capacity(limits.len());
        let mut ends = i64::MIN;
        for l in limits {
            let window = window_of(*l, now);
            let i = match family.budgets.iter().position(|c| c.limit == *l) {
                Some(i) => i,
                None => {
                    family.budgets.push(Counter::new(*l, window));
                    family.budgets.len() - 1
                }
            };
            family.budgets[i].roll(window);
            ends = ends.max(family.budgets[i].ends());
            at.push(i);
        }
        self.counters += adding;
        Ok(Prepared { at, created, ends })
    }

    /// Forget the counters of `created` that hold nothing (made for a use that was refused), and
    /// the family if that leaves it none.
    fn forget(&mut self, tid: TokenId, created: &[RateLimit]) {
        let Some(family) = self.families.get_mut(&tid) else { return };
        let before = family.budgets.len();
        family.budgets.retain(|c| !created.contains(&c.limit) || c.used_here > 0 || c.leased > 0);
        self.counters -= before - family.budgets.len();
        if family.budgets.is_empty() {
            self.families.remove(&tid);
        }
    }

    fn budgets(&mut self, tid: &TokenId) -> Option<&mut Vec<Counter>> {
        self.families.get_mut(tid).map(|f| &mut f.budgets)
    }
}

/// What [`Table::prepare`] readied for a use.
struct Prepared {
    /// The counters of the token's budgets, in order.
    at: Vec<usize>,
    /// The budgets whose counters it created.
    created: Vec<RateLimit>,
    /// The end of the latest of their windows.
    ends: i64,
}

/// Without repeats (`3/120m` and `3/2h` are one budget), in the token's order.
fn distinct(limits: &[RateLimit]) -> Vec<RateLimit> {
    let mut l: Vec<RateLimit> = Vec::with_capacity(limits.len());
    for limit in limits {
        if !l.contains(limit) {
            l.push(*limit);
        }
    }
    l
}
