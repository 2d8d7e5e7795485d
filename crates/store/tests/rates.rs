//! Rate-limit budgets on both backends (issue 19, findings 3 and 4): taken all or nothing; at
//! most 8 distinct budgets per token family; at most the node's capacity of counters, refused
//! (never evicted) when full; a use costs the same work however many counters exist; ended
//! counters are dropped; the schema-6 counters of PostgreSQL migrate.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_core::{RateLimit, TokenId};
use tessera_store::{RateTake, Store, MAX_FAMILY_BUDGETS, PRUNE_PER_TAKE};

/// Inside a day's window (and an hour's): 100 s after midnight UTC.
const NOW: i64 = 86_400 * 20_000 + 100;

fn limit(text: &str) -> RateLimit {
    RateLimit::parse(text).unwrap()
}

fn tid() -> TokenId {
    TokenId::generate().unwrap()
}

fn taken(t: &RateTake) -> bool {
    matches!(t, RateTake::Taken(_))
}

/// The uses left of `l` as the store reports them after one more use of `l` alone.
fn remaining_after_one_more(store: &Store, tid: TokenId, l: RateLimit, now: i64) -> Option<u64> {
    match store.take_rates(tid, &[l], now).unwrap() {
        RateTake::Taken(d) => Some(d[0].remaining),
        _ => None,
    }
}

// Finding 4: a use takes from every budget or from none.
on_both!(budgets_are_taken_all_or_nothing, |db| {
    let store = db.open();
    let family = tid();
    let (hour, day) = (limit("6/1h"), limit("3/1d"));
    let outcomes: Vec<bool> =
        (0..6).map(|_| taken(&store.take_rates(family, &[hour, day], NOW).unwrap())).collect();
    assert_eq!(outcomes, [true, true, true, false, false, false]);
    match store.take_rates(family, &[hour, day], NOW).unwrap() {
        RateTake::Spent(d) => {
            let spent: Vec<_> = d.iter().filter(|d| !d.allowed).map(|d| d.limit).collect();
            assert_eq!(spent, [day]);
        }
        other => panic!("{other:?}"),
    }
    // The refusals spent nothing of 6/1h: three successful uses, three left.
    assert_eq!(remaining_after_one_more(&store, family, hour, NOW), Some(2));
    assert_eq!(remaining_after_one_more(&store, family, hour, NOW), Some(1));
    assert_eq!(remaining_after_one_more(&store, family, hour, NOW), Some(0));
    assert!(!taken(&store.take_rates(family, &[hour], NOW).unwrap()));
    // A use refused afterwards (a `once` token used already) gives its units back.
    let other = tid();
    assert!(taken(&store.take_rates(other, &[limit("2/1m")], NOW).unwrap()));
    store.give_back_rates(other, &[limit("2/1m")], NOW).unwrap();
    assert_eq!(remaining_after_one_more(&store, other, limit("2/1m"), NOW), Some(1));
    assert_eq!(remaining_after_one_more(&store, other, limit("2/1m"), NOW), Some(0));
});

// Finding 3: a family holds at most 8 distinct budgets; a 9th is refused and creates nothing.
on_both!(a_family_holds_at_most_eight_distinct_budgets, |db| {
    let store = db.open();
    let family = tid();
    for n in 1..=MAX_FAMILY_BUDGETS as u64 {
        assert!(taken(&store.take_rates(family, &[limit(&format!("{n}/1h"))], NOW).unwrap()));
    }
    assert_eq!(store.rate_counters(), 8);
    let refused = store.take_rates(family, &[limit("1/1h"), limit("9/1h")], NOW).unwrap();
    assert_eq!(refused, RateTake::TooManyBudgets { held: 8, adding: 1, limit: 8 });
    assert_eq!(store.rate_counters(), 8, "no counter created");
    // Nothing was taken from 1/1h either: it has its one use... spent by the first loop.
    assert!(!taken(&store.take_rates(family, &[limit("1/1h")], NOW).unwrap()));
    assert!(taken(&store.take_rates(family, &[limit("2/1h")], NOW).unwrap()), "2/1h had one left");
    // The same budget spelled otherwise is the same budget.
    assert!(taken(&store.take_rates(family, &[limit("3/60m")], NOW).unwrap()));
    // A token with more budgets than the limit is refused whole.
    let nine: Vec<RateLimit> = (1..=9).map(|n| limit(&format!("{n}/1d"))).collect();
    assert!(matches!(store.take_rates(tid(), &nine, NOW).unwrap(), RateTake::TooManyBudgets { .. }));
    assert_eq!(store.rate_counters(), 8);
    // Once the hour's windows end, the family may hold new budgets.
    assert!(taken(&store.take_rates(family, &[limit("9/1h")], NOW + 3600).unwrap()));
    assert_eq!(store.rate_counters(), 1);
    // Other families are not affected by this one's budgets.
    assert!(taken(&store.take_rates(tid(), &[limit("9/1h")], NOW).unwrap()));
});

// Finding 3: a node holds at most its capacity of counters; when full, a token that needs a new
// counter is refused and no live counter is evicted; ended ones make room.
on_both!(a_node_holds_at_most_its_capacity_of_counters, |db| {
    let store = db.open();
    store.set_rate_capacity(20);
    let minute = limit("1/1m");
    let families: Vec<TokenId> = (0..20).map(|_| tid()).collect();
    for f in &families {
        assert!(taken(&store.take_rates(*f, &[minute], NOW).unwrap()));
    }
    assert_eq!(store.rate_counters(), 20);
    assert_eq!(store.take_rates(tid(), &[minute], NOW).unwrap(), RateTake::Full { capacity: 20 });
    assert_eq!(store.rate_counters(), 20);
    // The families held keep their counts: each spent its one use.
    for f in &families {
        assert!(matches!(store.take_rates(*f, &[minute], NOW).unwrap(), RateTake::Spent(_)));
    }
    // A family that already holds a budget needs no new counter for it.
    assert!(matches!(
        store.take_rates(families[0], &[minute, limit("5/1h")], NOW).unwrap(),
        RateTake::Full { .. }
    ));
    // Once their windows end, new families get counters (the use itself drops ended ones).
    let later = NOW + 120;
    assert!(taken(&store.take_rates(tid(), &[minute], later).unwrap()));
    assert!(store.rate_counters() <= 20);
    // The housekeeping round drops every ended counter.
    store.prune_rates(later + 120).unwrap();
    assert_eq!(store.rate_counters(), 0);
});

/// Finding 3: the work of a budgeted use does not grow with the counters held (it was a rescan
/// of all of them above 100,000): counted in counters and filings looked at, never timed.
#[test]
fn a_use_costs_the_same_work_however_many_counters_exist() {
    let store = Db::file().open();
    let hour = limit("100/1h");
    let mine = tid();
    let work_of_one_use = |store: &Store, now: i64| {
        let before = store.rate_work();
        assert!(taken(&store.take_rates(mine, &[hour], now).unwrap()));
        store.rate_work() - before
    };
    work_of_one_use(&store, NOW);
    let few = work_of_one_use(&store, NOW);
    for _ in 0..150_000 {
        store.take_rates(tid(), &[limit("1/1m")], NOW).unwrap();
    }
    assert_eq!(store.rate_counters(), 150_001);
    let many = work_of_one_use(&store, NOW);
    assert_eq!(few, many, "one budget looked at, with 1 or 150,001 counters held");
    assert!(many <= 1, "{many}");
    // When 150,000 of them have ended, a use looks at no more than PRUNE_PER_TAKE of them.
    let later = NOW + 300;
    let work = work_of_one_use(&store, later);
    assert!(work <= (1 + PRUNE_PER_TAKE) as u64, "{work}");
    assert!(store.rate_counters() >= 150_001 - PRUNE_PER_TAKE);
    // The housekeeping round drops them all.
    store.prune_rates(later).unwrap();
    assert_eq!(store.rate_counters(), 1);
}

/// PostgreSQL: a database of schema 6 keeps the counters of running windows (one row per family
/// and budget now, with the end of its window), and drops the others.
#[test]
fn schema_6_rate_counters_migrate() {
    let db = Db::postgres();
    let Db::Postgres(url) = &db else { unreachable!() };
    drop(db.open());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let hour = now - now.rem_euclid(3600);
    // Back to what schema 6 had: one row per window (and nothing of schema 8's sessions, nor the
    // audit trail of schemas 9 and 10).
    pg().sql(
        url,
        &format!(
            "DROP TABLE tessera_rates;
             CREATE TABLE tessera_rates (tid bytea NOT NULL, spec text NOT NULL, win bigint NOT NULL,
               used bigint NOT NULL, last_grant bigint NOT NULL, PRIMARY KEY (tid, spec, win));
             INSERT INTO tessera_rates VALUES
               ('\\x{one}', '5/1h', {old}, 5, 1), ('\\x{one}', '5/1h', {hour}, 4, 1),
               ('\\x{two}', '5/1m', 60, 1, 1);
             ALTER TABLE tessera_tokens DROP COLUMN session;
             DROP FUNCTION tessera_family(bytea[]);
             DROP TABLE tessera_audit, tessera_audit_anchor;
             DROP FUNCTION tessera_audit_anchor_unsealed();
             UPDATE tessera_meta SET value = '\\x00000006'::bytea WHERE name = 'schema';",
            old = hour - 3600,
            one = "01".repeat(16),
            two = "02".repeat(16),
        ),
    );
    let store = db.open();
    let rows = pg().sql(url, "SELECT encode(tid, 'hex'), spec, win, ends, used FROM tessera_rates");
    assert_eq!(rows.trim(), format!("{}|5/1h|{hour}|{}|4", "01".repeat(16), hour + 3600));
    // The family's running window kept its count: one use left.
    let family = TokenId::from_bytes([1; 16]);
    assert_eq!(remaining_after_one_more(&store, family, limit("5/1h"), now), Some(0));
    assert!(matches!(store.take_rates(family, &[limit("5/1h")], now).unwrap(), RateTake::Spent(_)));
}

/// Rows of the shared rate counters, on PostgreSQL (`None` on redb).
fn shared_rows(db: &Db) -> Option<String> {
    match db {
        Db::Postgres(url) => Some(pg().sql(url, "SELECT count(*) FROM tessera_rates").trim().to_owned()),
        Db::File(_) => None,
    }
}

// Security review round 3, finding 3: a refused take creates no counter, on this node or in the
// shared counters, so copies of a spent token cannot fill the family's 8 slots.
on_both!(a_refused_take_creates_no_counter, |db| {
    let a = db.open();
    let family = tid();
    let spent = limit("1/1h");
    assert!(taken(&a.take_rates(family, &[spent], NOW).unwrap()));
    for days in 1..=9 {
        let r = a.take_rates(family, &[spent, limit(&format!("9/{days}d"))], NOW).unwrap();
        assert!(matches!(r, RateTake::Spent(_)), "copy {days}: {r:?}");
    }
    assert_eq!(a.rate_counters(), 1, "only the budget that was used");
    assert_eq!(shared_rows(&db).as_deref().unwrap_or("1"), "1");
    // A token with more budgets than a family holds is told what the family holds.
    let nine: Vec<RateLimit> = (1..=9).map(|n| limit(&format!("{n}/2d"))).collect();
    assert_eq!(
        a.take_rates(family, &nine, NOW).unwrap(),
        RateTake::TooManyBudgets { held: 1, adding: 9, limit: 8 }
    );
    // The 7 slots left are the family's, on any node.
    let b = if matches!(db, Db::Postgres(_)) { db.open() } else { a };
    for n in 1..=7 {
        assert!(taken(&b.take_rates(family, &[limit(&format!("{n}/1d"))], NOW).unwrap()), "budget {n}");
    }
    assert_eq!(shared_rows(&db).as_deref().unwrap_or("8"), "8");
});

// Security review round 3, findings 3 and 4: a use given back (refused after it was taken: a
// replayed `once` token, a management call that failed) is whole again, exactly, on one node and
// across nodes, and the counter it created is gone (here and in the shared counters).
on_both!(a_given_back_use_is_whole_again_and_leaves_no_counter, |db| {
    let a = db.open();
    let family = tid();
    let l = limit("200/1h");
    assert!(taken(&a.take_rates(family, &[l], NOW).unwrap()));
    assert!(taken(&a.take_rates(family, &[l], NOW).unwrap()));
    a.give_back_rates(family, &[l], NOW).unwrap();
    assert_eq!(a.rate_counters(), 1, "one use still taken");
    a.give_back_rates(family, &[l], NOW).unwrap();
    assert_eq!(a.rate_counters(), 0);
    assert_eq!(shared_rows(&db).as_deref().unwrap_or("0"), "0");
    // Giving back what was not taken gives nothing.
    a.give_back_rates(family, &[l], NOW).unwrap();
    let b = if matches!(db, Db::Postgres(_)) { db.open() } else { a };
    let admitted = (0..201).filter(|_| taken(&b.take_rates(family, &[l], NOW).unwrap())).count();
    assert_eq!(admitted, 200, "the whole budget, not one unit more");
});
