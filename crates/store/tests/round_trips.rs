//! The write path on the shared database in round trips (issue 25): recording a token and a
//! single use are one exchange with the server each, and a batch's commit (with every audit
//! entry of the batch) one more. The outcomes are the embedded database's, for operations alone
//! and for failing and succeeding operations that share one transaction; a single use stays
//! exactly once across nodes.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use tessera_core::{KeyId, SessionId, TokenId};
use tessera_store::{AuditFilter, Error, NewToken, Refreshed, Store};

/// The name of an outcome, for comparing them across backends.
fn outcome<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Error::KeyRevoked(_)) => "key revoked",
        Err(Error::UnknownKey(_)) => "unknown key",
        Err(Error::DuplicateToken(_)) => "duplicate",
        Err(Error::UnknownToken(_)) => "unknown parent",
        Err(Error::ParentRevoked(_)) => "parent revoked",
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Audit entries that name `tid` (as actor or target).
fn entries_of(store: &Store, tid: TokenId) -> usize {
    store.audit(&AuditFilter { tids: vec![tid], ..AuditFilter::default() }).unwrap().len()
}

#[test]
fn a_record_and_a_single_use_are_one_round_trip_each_and_the_commit_one_more() {
    let store = Db::postgres().open();
    store.rotate().unwrap();
    // Statements are prepared once per connection: warm the writer's connection first.
    let warm = store.record_token(new_token(&store, "warm", None)).unwrap().tid;
    store.consume(warm).unwrap();

    let before = store.write_round_trips();
    let tids: Vec<TokenId> =
        (0..20).map(|i| store.record_token(new_token(&store, &format!("s{i}"), None)).unwrap().tid).collect();
    assert_eq!(
        store.write_round_trips() - before,
        40,
        "20 records, one client: a statement and a commit each"
    );

    let before = store.write_round_trips();
    for tid in &tids {
        assert_eq!(store.consume(*tid).unwrap(), None);
    }
    assert!(store.consume(tids[0]).unwrap().is_some(), "the second use sees the first");
    assert_eq!(store.write_round_trips() - before, 42, "21 single uses: a statement and a commit each");

    // A child: the parent's check is in the same statement.
    let before = store.write_round_trips();
    store.record_token(new_token(&store, "child", Some(tids[1]))).unwrap();
    assert_eq!(store.write_round_trips() - before, 2);
}

/// A rotating refresh: the session (`FOR UPDATE`), its current token, the successor's record;
/// the session's new record is queued and goes with the commit. Four exchanges, at the 1st
/// rotation as at the 50th.
#[test]
fn a_refresh_is_three_round_trips_and_the_commit_at_any_age() {
    let store = Db::postgres().open();
    store.rotate().unwrap();
    let sid = SessionId::generate().unwrap();
    let first = new_token(&store, "alice", None);
    store.create_session(sid, session_of("alice"), first.clone()).unwrap();
    let mut current = first.tid;
    for i in 0..50 {
        let next = new_token(&store, "alice", Some(current));
        let before = store.write_round_trips();
        let r = store.refresh_session(sid, current, Some(next.clone()), Duration::from_secs(60)).unwrap();
        assert!(matches!(r, Refreshed::Current { rotated_to: Some(t), .. } if t == next.tid), "{r:?}");
        if i > 0 {
            assert_eq!(store.write_round_trips() - before, 4, "rotation {i}");
        }
        current = next.tid;
    }
    assert_eq!(store.session(&sid).unwrap().unwrap().current, current, "the queued record was written");
}

/// A queued write that the database refuses (here a trigger of the test's own on the sessions
/// table) fails the whole batch, the operations before it included: the queued write may
/// belong to an operation already done, which must not be rolled back alone.
#[test]
fn a_queued_write_that_fails_fails_its_whole_batch() {
    let url = pg().create_database();
    let store = Db::Postgres(url.clone()).open();
    store.rotate().unwrap();
    let sid = SessionId::generate().unwrap();
    let first = new_token(&store, "boom", None);
    store.create_session(sid, session_of("boom"), first.clone()).unwrap();
    let parent = store.record_token(new_token(&store, "parent", None)).unwrap().tid;
    let lock = RowLock::take(&url, &parent);
    lock.run(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           IF NEW.subject = 'boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER boom BEFORE UPDATE ON tessera_sessions FOR EACH ROW EXECUTE FUNCTION boom();",
    );
    let next = new_token(&store, "boom", Some(first.tid));
    let after = new_token(&store, "after", None);
    let before = store.write_round_trips();
    let (refresh, record) = std::thread::scope(|scope| {
        let blocker = scope.spawn(|| store.record_token(new_token(&store, "blocker", Some(parent))));
        wait_until(|| store.write_round_trips() > before);
        let refresh = scope
            .spawn(|| store.refresh_session(sid, first.tid, Some(next.clone()), Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(100));
        let record = scope.spawn(|| store.record_token(after.clone()));
        std::thread::sleep(Duration::from_millis(300));
        lock.release();
        assert!(blocker.join().unwrap().is_ok());
        (refresh.join().unwrap(), record.join().unwrap())
    });
    assert!(refresh.is_err(), "{refresh:?}");
    assert!(record.is_err(), "the record after the refused write shares its batch's fate: {record:?}");
    assert!(store.token(&next.tid).unwrap().is_none());
    assert!(store.token(&after.tid).unwrap().is_none());
    assert_eq!(store.session(&sid).unwrap().unwrap().current, first.tid);
    // The store goes on: the next batch is a new transaction.
    store.record_token(new_token(&store, "later", None)).unwrap();
}

/// Keys and tokens that make each outcome of recording a token.
struct Setup {
    revoked_kid: KeyId,
    parent: TokenId,
    revoked_parent: TokenId,
    /// A recorded token no case is a child of.
    other: TokenId,
}

fn setup(store: &Store) -> Setup {
    let revoked_kid = store.rotate().unwrap().kid;
    store.rotate().unwrap();
    store.revoke_key(revoked_kid).unwrap();
    let parent = store.record_token(new_token(store, "parent", None)).unwrap().tid;
    let revoked_parent = store.record_token(new_token(store, "revoked", None)).unwrap().tid;
    store.revoke_token(revoked_parent).unwrap();
    let other = store.record_token(new_token(store, "other", None)).unwrap().tid;
    Setup { revoked_kid, parent, revoked_parent, other }
}

/// One record of each outcome, in this order: fine, under a revoked key, under an unknown key,
/// the id `taken` (recorded before), under an unknown parent, under a revoked parent, a child of
/// a live parent.
fn cases(store: &Store, s: &Setup, taken_id: TokenId) -> Vec<NewToken> {
    let mut under_revoked_key = new_token(store, "a", None);
    under_revoked_key.kid = s.revoked_kid;
    let mut unknown_key = new_token(store, "b", None);
    unknown_key.kid = KeyId::from_bytes([9; 8]);
    let mut taken = new_token(store, "c", None);
    taken.tid = taken_id;
    // Caveats on the two that go in, none between them: each record's own come back.
    let mut fine = new_token(store, "fine", None);
    fine.caveats = vec!["allow read".into(), "resource issues/*".into()];
    let mut child = new_token(store, "f", Some(s.parent));
    child.caveats = vec!["allow write".into()];
    vec![
        fine,
        under_revoked_key,
        unknown_key,
        taken,
        new_token(store, "d", Some(TokenId::generate().unwrap())),
        new_token(store, "e", Some(s.revoked_parent)),
        child,
    ]
}

const EXPECTED: [&str; 7] =
    ["ok", "key revoked", "unknown key", "duplicate", "unknown parent", "parent revoked", "ok"];

/// Each case alone (a batch of one) on both backends: the same outcomes, and only the records
/// that went in have an audit entry.
#[test]
fn each_outcome_alone_is_the_embedded_databases() {
    for db in [Db::file(), Db::postgres()] {
        let store = db.open();
        let s = setup(&store);
        let cases = cases(&store, &s, s.parent);
        let got: Vec<&str> = cases.iter().map(|c| outcome(&store.record_token(c.clone()))).collect();
        assert_eq!(got, EXPECTED, "{}", if store.is_shared() { "postgres" } else { "redb" });
        for (c, want) in cases.iter().zip(EXPECTED) {
            if c.tid != s.parent {
                assert_eq!(entries_of(&store, c.tid), usize::from(want == "ok"), "{want}");
            }
        }
    }
}

/// Every case in one transaction on PostgreSQL: the writer is held on a row lock while the
/// cases queue behind it, so they share the next batch. Refused records between accepted ones
/// write nothing, not even their audit entries, and the others commit; the records of the batch
/// cost one round trip together, and the commit one more. The taken id is the live parent's, so
/// one record's parent is another's id.
#[test]
fn failing_and_succeeding_records_in_one_batch_keep_their_own_outcomes() {
    one_batch(|s| s.parent);
}

/// The same with records that are strangers to each other (the usual batch of concurrent
/// mints: no id twice, no parent among them).
#[test]
fn failing_and_succeeding_strangers_in_one_batch_keep_their_own_outcomes() {
    one_batch(|s| s.other);
}

fn one_batch(taken: fn(&Setup) -> TokenId) {
    let url = pg().create_database();
    let store = Db::Postgres(url.clone()).open();
    let s = setup(&store);
    let taken_id = taken(&s);
    let cases = cases(&store, &s, taken_id);

    // Hold the parent's row: a child of it blocks the writer in its statement (`FOR SHARE`).
    let lock = RowLock::take(&url, &s.parent);
    let before = store.write_round_trips();
    let got = std::thread::scope(|scope| {
        let blocker = scope.spawn(|| store.record_token(new_token(&store, "blocker", Some(s.parent))));
        wait_until(|| store.write_round_trips() > before);
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let store = &store;
                scope.spawn(move || {
                    // In order, so the batch holds them in the order of the cases.
                    std::thread::sleep(Duration::from_millis(40 * i as u64));
                    store.record_token(c.clone())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(40 * cases.len() as u64 + 300));
        lock.release();
        assert!(blocker.join().unwrap().is_ok());
        handles.into_iter().map(|h| outcome(&h.join().unwrap())).collect::<Vec<_>>()
    });
    assert_eq!(got, EXPECTED);
    // The blocker: its statement and its commit; the batch: the records' statements together,
    // then the commit.
    assert_eq!(store.write_round_trips() - before, 2 + 1 + 1);
    for (c, want) in cases.iter().zip(EXPECTED) {
        if c.tid != taken_id {
            assert_eq!(entries_of(&store, c.tid), usize::from(want == "ok"), "{want}");
            let record = store.token(&c.tid).unwrap();
            assert_eq!(record.is_some(), want == "ok", "{want}");
            if let Some(r) = record {
                assert_eq!((r.subject.as_str(), r.parent), (c.subject.as_str(), c.parent), "{want}");
                assert_eq!(r.caveats, c.caveats, "{want}");
            }
        }
    }
}

/// Two nodes, sixteen concurrent uses of one token: exactly one is the first, and every other
/// one names the same instant.
#[test]
fn a_single_use_is_exactly_once_across_nodes() {
    let db = Db::postgres();
    let a = db.open();
    let b = db.open();
    a.rotate().unwrap();
    wait_until(|| b.active_key().is_some());
    for round in 0..5 {
        let tid = a.record_token(new_token(&a, &format!("once{round}"), None)).unwrap().tid;
        let uses: Vec<Option<i64>> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let node = if i % 2 == 0 { &a } else { &b };
                    scope.spawn(move || node.consume(tid).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(uses.iter().filter(|u| u.is_none()).count(), 1, "round {round}: {uses:?}");
        let when: Vec<i64> = uses.iter().flatten().copied().collect();
        assert!(when.windows(2).all(|w| w[0] == w[1]), "round {round}: {uses:?}");
    }
    assert!(matches!(a.consume(TokenId::generate().unwrap()), Err(Error::UnknownToken(_))));
}

fn wait_until(mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "condition not reached");
        std::thread::sleep(Duration::from_millis(5));
    }
}
