//! The shared rate counters (`tessera_rates`): one row per token family and budget, reused
//! across windows, with the end of its window.
//!
//! A lease runs in one transaction under a per-family advisory lock, so nodes taking units of one
//! family serialise while other families go on: it reads the family's rows (through the primary
//! key; at most the cap of live ones plus those that ended since), refuses a budget that would
//! exceed the per-family cap, grants all of the wanted budgets or none, and drops the family's
//! ended rows. The housekeeping round drops ended rows in batches through the index on `ends`.

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Transaction};

use super::rows::db;
use crate::error::Result;
use crate::usage::{RateLease, RateReturn, RateWant};

/// The class of the per-family advisory locks (`pg_advisory_xact_lock(int4, int4)`, a key space
/// apart from the migrations' one-`bigint` lock): "rate" in ASCII.
const LOCK_CLASS: i32 = 0x7261_7465;

/// Ended rows the housekeeping round drops at most per call.
const PRUNE_BATCH: i64 = 10_000;

/// Lease units of `wants` for the family `tid` at `now` in `txn`: all or none. The caller commits
/// only a grant.
pub(super) async fn take(
    txn: &Transaction<'_>,
    tid: &[u8],
    now: i64,
    wants: &[RateWant],
    max_budgets: usize,
) -> Result<RateLease> {
    lock_family(txn, tid).await?;
    let select = txn
        .prepare_cached("SELECT spec, win, ends, used FROM tessera_rates WHERE tid = $1")
        .await
        .map_err(db)?;
    let mut live: HashMap<String, (i64, i64, i64)> = HashMap::new();
    let mut ended = 0usize;
    for row in txn.query(&select, &[&tid]).await.map_err(db)? {
        let spec: String = row.try_get(0).map_err(db)?;
        let (win, ends, used): (i64, i64, i64) =
            (row.try_get(1).map_err(db)?, row.try_get(2).map_err(db)?, row.try_get(3).map_err(db)?);
        if ends > now {
            live.insert(spec, (win, ends, used));
        } else {
            ended += 1;
        }
    }
    let adding = wants.iter().filter(|w| !live.contains_key(&w.spec)).count();
    if live.len() + adding > max_budgets {
        return Ok(RateLease::TooManyBudgets { held: live.len(), adding });
    }
    // Each budget's window and count: a row of a later window (a node whose clock is ahead)
    // counts, so clock skew never lets a budget be spent twice.
    let state: Vec<(i64, i64, u64)> = wants
        .iter()
        .map(|w| match live.get(&w.spec) {
            Some(&(win, ends, used)) if win >= w.window => (win, ends, u64::try_from(used).unwrap_or(0)),
            _ => (w.window, w.ends, 0),
        })
        .collect();
    if wants.iter().zip(&state).any(|(w, s)| s.2 >= w.limit.count) {
        // The first refusal of a spent budget in its window marks the counter one past the
        // budget (`used = count + 1`, a value no grant makes): the bit "refused already" kept
        // in the counter itself, written once per budget and window (the caller commits it).
        let first: Vec<bool> = wants
            .iter()
            .zip(&state)
            .map(|(w, s)| s.2 == w.limit.count && live.get(&w.spec).is_some_and(|l| l.0 == s.0))
            .collect();
        if first.iter().any(|f| *f) {
            let mark = txn
                .prepare_cached("UPDATE tessera_rates SET used = used + 1 WHERE tid = $1 AND spec = ANY($2) AND used = $3")
                .await
                .map_err(db)?;
            for (w, _) in wants.iter().zip(&first).filter(|(_, f)| **f) {
                let count = i64::try_from(w.limit.count).unwrap_or(i64::MAX);
                txn.execute(&mark, &[&tid, &vec![w.spec.as_str()], &count]).await.map_err(db)?;
            }
        }
        return Ok(RateLease::Spent { used: state.iter().map(|s| s.2).collect(), first });
    }
    let grants: Vec<(u64, u64)> = wants
        .iter()
        .zip(&state)
        .map(|(w, s)| {
            let grant = w.want.min(w.limit.count - s.2);
            (grant, s.2 + grant)
        })
        .collect();
    if ended > 0 {
        let drop = txn
            .prepare_cached("DELETE FROM tessera_rates WHERE tid = $1 AND ends <= $2")
            .await
            .map_err(db)?;
        txn.execute(&drop, &[&tid, &now]).await.map_err(db)?;
    }
    let upsert = txn
        .prepare_cached(
            "INSERT INTO tessera_rates (tid, spec, win, ends, used)
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
             ON CONFLICT (tid, spec) DO UPDATE
               SET win = excluded.win, ends = excluded.ends, used = excluded.used",
        )
        .await
        .map_err(db)?;
    let specs: Vec<&str> = wants.iter().map(|w| w.spec.as_str()).collect();
    let wins: Vec<i64> = state.iter().map(|s| s.0).collect();
    let ends: Vec<i64> = state.iter().map(|s| s.1).collect();
    let used: Vec<i64> = grants.iter().map(|g| i64::try_from(g.1).unwrap_or(i64::MAX)).collect();
    txn.execute(&upsert, &[&tid, &specs, &wins, &ends, &used]).await.map_err(db)?;
    Ok(RateLease::Granted(grants))
}

/// Take the family's advisory lock for the rest of `txn`: its leases and returns serialise.
async fn lock_family(txn: &Transaction<'_>, tid: &[u8]) -> Result<()> {
    let key = i32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]);
    let lock = txn.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)").await.map_err(db)?;
    txn.execute(&lock, &[&LOCK_CLASS, &key]).await.map_err(db)?;
    Ok(())
}

/// Return units a node held of the family's budgets (`returns`, each for the window it was
/// leased in: a row that has moved to another window keeps its count), in `txn`, under the
/// family's lock (a lease reads and rewrites a count, so a return between would be lost), and
/// drop the rows no node holds a unit of: a use given back holds no slot. The caller commits.
pub(super) async fn give_back(txn: &Transaction<'_>, tid: &[u8], returns: &[RateReturn]) -> Result<()> {
    lock_family(txn, tid).await?;
    let update = txn
        .prepare_cached(
            "UPDATE tessera_rates r SET used = GREATEST(r.used - g.units, 0)
             FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS g(spec, win, units)
             WHERE r.tid = $1 AND r.spec = g.spec AND r.win = g.win",
        )
        .await
        .map_err(db)?;
    let specs: Vec<&str> = returns.iter().map(|r| r.spec.as_str()).collect();
    let wins: Vec<i64> = returns.iter().map(|r| r.window).collect();
    let units: Vec<i64> = returns.iter().map(|r| i64::try_from(r.units).unwrap_or(i64::MAX)).collect();
    txn.execute(&update, &[&tid, &specs, &wins, &units]).await.map_err(db)?;
    // Through the primary key: the family's rows only.
    let drop = txn
        .prepare_cached("DELETE FROM tessera_rates WHERE tid = $1 AND spec = ANY($2) AND used <= 0")
        .await
        .map_err(db)?;
    txn.execute(&drop, &[&tid, &specs]).await.map_err(db)?;
    Ok(())
}

/// Drop up to [`PRUNE_BATCH`] rows whose window ended by `now`; how many.
pub(super) async fn prune(client: &impl GenericClient, now: i64) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM tessera_rates r USING (
                 SELECT tid, spec FROM tessera_rates WHERE ends <= $1 ORDER BY ends LIMIT $2
             ) d
             WHERE r.tid = d.tid AND r.spec = d.spec AND r.ends <= $1",
        )
        .await
        .map_err(db)?;
    client.execute(&stmt, &[&now, &PRUNE_BATCH]).await.map_err(db)
}
