//! Taking uses from the budgets: the `Store`'s rate methods, exact on one process and by leases
//! of the shared counters on a cluster (the counters themselves are in `usage/rates.rs`).

use tessera_core::{RateLimit, TokenId};

use super::*;
use crate::Store;

impl Store {
    /// Take one use of the token family `tid` from every budget in `limits` at `now` (seconds),
    /// or from none. Fixed windows aligned to the epoch.
    ///
    /// One process: exact. A shared database: each node leases units from the shared counters
    /// (1% of a budget at a time, at least one; the budgets a use needs are leased together, all
    /// or none), and a lease never takes a counter past its budget, so the cluster as a whole
    /// never admits more than a budget; it may refuse up to a lease per node early.
    pub fn take_rates(&self, tid: TokenId, limits: &[RateLimit], now: i64) -> Result<RateTake> {
        let limits = distinct(limits);
        if limits.is_empty() {
            return Ok(RateTake::Taken(Vec::new()));
        }
        let shared = self.inner.backend.shared();
        let (wants, reserved, prepared) = {
            let mut t = self.inner.rates.table.lock().map_err(|_| Error::Closed)?;
            if limits.len() > MAX_FAMILY_BUDGETS {
                let held =
                    t.families.get(&tid).map_or(0, |f| f.budgets.iter().filter(|c| c.ends() > now).count());
                return Ok(RateTake::TooManyBudgets {
                    held,
                    adding: limits.len(),
                    limit: MAX_FAMILY_BUDGETS,
                });
            }
            t.prune(now, PRUNE_PER_TAKE);
            let prepared = match t.prepare(tid, &limits, now) {
                Ok(p) => p,
                Err(refusal) => return Ok(refusal),
            };
            let budgets = t.budgets(&tid).ok_or(Error::Closed)?;
            if !shared {
                let at = &prepared.at;
                let all = at.iter().all(|&i| budgets[i].used_here < budgets[i].limit.count);
                if all {
                    for &i in at {
                        budgets[i].used_here += 1;
                    }
                }
                let decisions = at
                    .iter()
                    .map(|&i| {
                        let c = &mut budgets[i];
                        let allowed = c.used_here < c.limit.count || all;
                        // The bit lives with the counter, which a spent budget keeps (it holds
                        // this window's uses); a budget of 0 has no counter to keep it in, and
                        // is never reported as a first refusal.
                        let first_refusal = !allowed && c.used_here > 0 && !c.refused;
                        c.refused |= !allowed;
                        RateDecision {
                            limit: c.limit,
                            allowed,
                            remaining: c.limit.count - c.used_here,
                            reset: reset_of(c, now),
                            first_refusal,
                        }
                    })
                    .collect();
                // Only a use taken holds a slot: a refused one forgets the counters it made.
                return Ok(if all {
                    t.file(tid, prepared.ends);
                    RateTake::Taken(decisions)
                } else {
                    t.forget(tid, &prepared.created);
                    RateTake::Spent(decisions)
                });
            }
            // Units this node holds are taken at once (given back if the use is refused); the
            // budgets without any are leased together.
            let mut wants = Vec::new();
            let mut reserved = Vec::new();
            for &i in &prepared.at {
                let c = &mut budgets[i];
                if c.leased > 0 {
                    c.leased -= 1;
                    c.used_here += 1;
                    reserved.push(c.limit);
                } else {
                    wants.push(RateWant {
                        limit: c.limit,
                        spec: c.limit.to_string(),
                        window: c.window,
                        ends: c.ends(),
                        want: lease_size(c.limit),
                    });
                }
            }
            (wants, reserved, prepared)
        };
        let lease = if wants.is_empty() {
            Ok(RateLease::Granted(Vec::new()))
        } else {
            // Outside the table's lock: other families go on while this one waits.
            self.inner.backend.take_rates(&tid, now, &wants, MAX_FAMILY_BUDGETS)
        };
        let mut t = self.inner.rates.table.lock().map_err(|_| Error::Closed)?;
        if !matches!(lease, Ok(RateLease::Granted(_))) {
            // Nothing is taken: give back what was reserved.
            if let Some(budgets) = t.budgets(&tid) {
                for c in budgets.iter_mut().filter(|c| reserved.contains(&c.limit)) {
                    if c.window == window_of(c.limit, now) && c.used_here > 0 {
                        c.used_here -= 1;
                        c.leased += 1;
                    }
                }
            }
        }
        let outcome = match lease {
            Err(e) => {
                t.forget(tid, &prepared.created);
                return Err(e);
            }
            Ok(RateLease::Granted(grants)) => {
                if let Some(budgets) = t.budgets(&tid) {
                    for (w, (grant, used)) in wants.iter().zip(grants) {
                        // The window may have moved on meanwhile: a lease of an ended window is
                        // worth only this use.
                        if let Some(c) = budgets.iter_mut().find(|c| c.limit == w.limit) {
                            if c.window == w.window {
                                c.leased += grant.saturating_sub(1);
                                c.used_here += 1;
                                c.used_seen = c.used_seen.max(used);
                            }
                        }
                    }
                }
                t.file(tid, prepared.ends);
                RateTake::Taken(self.cluster_decisions(&mut t, tid, &limits, now, None))
            }
            Ok(RateLease::Spent { used, first }) => {
                if let Some(budgets) = t.budgets(&tid) {
                    for (w, used) in wants.iter().zip(&used) {
                        if let Some(c) = budgets.iter_mut().find(|c| c.limit == w.limit) {
                            if c.window == w.window {
                                c.used_seen = c.used_seen.max(*used);
                            }
                        }
                    }
                }
                let spent: Vec<RateLimit> = wants
                    .iter()
                    .zip(&used)
                    .filter(|(w, u)| **u >= w.limit.count)
                    .map(|(w, _)| w.limit)
                    .collect();
                let mut decisions = self.cluster_decisions(&mut t, tid, &limits, now, Some(&spent));
                for (w, _) in wants.iter().zip(&used).zip(&first).filter(|(_, f)| **f).map(|(wu, _)| wu) {
                    if let Some(d) = decisions.iter_mut().find(|d| d.limit == w.limit) {
                        d.first_refusal = true;
                    }
                }
                RateTake::Spent(decisions)
            }
            Ok(RateLease::TooManyBudgets { held, adding }) => {
                RateTake::TooManyBudgets { held, adding, limit: MAX_FAMILY_BUDGETS }
            }
        };
        if !matches!(outcome, RateTake::Taken(_)) {
            // A refused use holds no slot, here or (the lease wrote nothing) in the database.
            t.forget(tid, &prepared.created);
        }
        Ok(outcome)
    }

    /// The decisions of a cluster node from its counters (`spent`: the budgets found spent).
    fn cluster_decisions(
        &self,
        t: &mut Table,
        tid: TokenId,
        limits: &[RateLimit],
        now: i64,
        spent: Option<&[RateLimit]>,
    ) -> Vec<RateDecision> {
        let budgets = t.budgets(&tid);
        limits
            .iter()
            .map(|l| {
                let c = budgets.as_ref().and_then(|b| b.iter().find(|c| c.limit == *l));
                // What the cluster has counted, less what this node holds unused.
                let counted = c.map_or(0, |c| c.used_seen.saturating_sub(c.leased).max(c.used_here));
                let allowed = spent.is_none_or(|s| !s.contains(l));
                let window = window_of(*l, now);
                RateDecision {
                    limit: *l,
                    allowed,
                    remaining: if allowed { l.count.saturating_sub(counted) } else { 0 },
                    reset: u64::try_from(window + period(*l) - now).unwrap_or(0),
                    first_refusal: false,
                }
            })
            .collect()
    }

    /// Give back the use [`Store::take_rates`] took at `now` from each of `limits`, when the use
    /// was refused afterwards (a `once` token used already, a management call that failed).
    /// Exact: nothing if the window has moved on or nothing is taken. A counter left with no use
    /// on this node is forgotten, so a refused use holds none of the family's slots; on a
    /// cluster, the node then returns every unit it holds of that budget to the shared counter,
    /// whose row goes when no node holds any (otherwise the unit returns to the node's lease).
    pub fn give_back_rates(&self, tid: TokenId, limits: &[RateLimit], now: i64) -> Result<()> {
        let shared = self.inner.backend.shared();
        let mut returns = Vec::new();
        {
            let mut t = self.inner.rates.table.lock().map_err(|_| Error::Closed)?;
            let Table { families, counters, .. } = &mut *t;
            let Some(family) = families.get_mut(&tid) else { return Ok(()) };
            for l in distinct(limits) {
                let window = window_of(l, now);
                let Some(i) =
                    family.budgets.iter().position(|c| c.limit == l && c.window == window && c.used_here > 0)
                else {
                    continue;
                };
                let c = &mut family.budgets[i];
                c.used_here -= 1;
                if shared {
                    c.leased += 1;
                }
                if c.used_here == 0 {
                    if shared {
                        returns.push(RateReturn { spec: l.to_string(), window, units: c.leased });
                    }
                    family.budgets.swap_remove(i);
                    *counters -= 1;
                }
            }
            if family.budgets.is_empty() {
                families.remove(&tid);
            }
        }
        if returns.is_empty() {
            return Ok(());
        }
        self.inner.backend.give_back_rates(&tid, &returns)
    }

    /// Count one use of `tid` against the one budget `limit` (see [`Store::take_rates`]); a
    /// refusal for either cap reads as not allowed.
    pub fn take_rate(&self, tid: TokenId, limit: RateLimit, now: i64) -> Result<RateDecision> {
        let refused = RateDecision { limit, allowed: false, remaining: 0, reset: 0, first_refusal: false };
        Ok(match self.take_rates(tid, &[limit], now)? {
            RateTake::Taken(d) | RateTake::Spent(d) => d.first().copied().unwrap_or(refused),
            RateTake::TooManyBudgets { .. } | RateTake::Full { .. } => refused,
        })
    }

    /// Drop the counters of families whose windows have all ended by `now` (the housekeeping
    /// round; the work is in what is due, not in what is held) and, on a shared database, its
    /// ended counter rows (a batch through the index on their end). Returns counters dropped here.
    pub fn prune_rates(&self, now: i64) -> Result<usize> {
        let dropped = {
            let mut t = self.inner.rates.table.lock().map_err(|_| Error::Closed)?;
            t.prune(now, usize::MAX)
        };
        if self.inner.backend.shared() {
            self.inner.backend.prune_rates(now)?;
        }
        Ok(dropped)
    }

    /// Rate counters this node holds.
    pub fn rate_counters(&self) -> usize {
        self.inner.rates.table.lock().map_or(0, |t| t.counters)
    }

    /// Rate counters and expiry filings looked at so far, in all: the work budgets cost (a use
    /// looks at its family's budgets and at most [`PRUNE_PER_TAKE`] filings).
    pub fn rate_work(&self) -> u64 {
        self.inner.rates.table.lock().map_or(0, |t| t.examined)
    }

    /// Set how many rate counters this node holds at most (default [`DEFAULT_RATE_CAPACITY`]).
    /// Lowering it below what is held drops nothing: new counters are refused until enough end.
    pub fn set_rate_capacity(&self, capacity: usize) {
        if let Ok(mut t) = self.inner.rates.table.lock() {
            t.capacity = capacity;
        }
    }
}
