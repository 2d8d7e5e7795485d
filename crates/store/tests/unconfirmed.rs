//! A write whose deadline passes after its `COMMIT` was sent: the second review of round 3 found
//! it answered "nothing written" although the database applied it once it could. Such a write is
//! now `Unconfirmed` (the service says the write may have been applied), never "nothing written".
//! Its own server: making commits wait (a synchronous standby that never comes) is server-wide.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use tessera_store::{Error, Freshness, Location, PostgresOptions, Store};
use tessera_testpg::PgServer;

#[test]
fn a_commit_the_database_did_not_confirm_is_not_called_nothing_written() {
    let pg = PgServer::start();
    let url = pg.create_database();
    let location = Location::Postgres { url: url.clone(), options: PostgresOptions::default() };
    let store =
        Store::open_at(&location, tessera_store::MasterKey::from_bytes([7; 32]), Freshness::default())
            .unwrap();
    store.rotate().unwrap();
    // Every COMMIT now waits for a standby that does not exist (the statements before it do not).
    pg.sql(&url, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    pg.sql(&url, "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let new = common::new_token(&store, "hangtest", None);
    let answer = store.record_token(new);
    match &answer {
        Err(Error::Unconfirmed(_)) => {}
        other => panic!("expected Unconfirmed, got {other:?}"),
    }
    assert!(!answer.unwrap_err().to_string().contains("nothing written"));
    // And indeed: once commits go through again, the write is there.
    pg.sql(&url, "ALTER SYSTEM RESET synchronous_standby_names");
    pg.sql(&url, "SELECT pg_reload_conf()");
    let mut found = false;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if pg.sql(&url, "SELECT count(*) FROM tessera_tokens WHERE subject = 'hangtest'").trim() == "1" {
            found = true;
            break;
        }
    }
    assert!(found, "the unconfirmed write was applied after all, which is why it may not say otherwise");
}
