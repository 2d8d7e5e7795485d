//! A revocation racing a child's recording on another node (PostgreSQL): the review of round 3
//! found that a successor recorded while its parent's revocation was in flight escaped it (the
//! walk read the family from one snapshot and took no lock a recording also took), so a session
//! went on renewing after its creator was revoked. Whatever the interleaving, a child recorded
//! under a parent is revoked with it, or refused because the parent is revoked.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::sync::Barrier;

use common::*;
use tessera_store::Error;

#[test]
fn a_child_recorded_during_its_parents_revocation_never_escapes_it() {
    let db = Db::postgres();
    let a = db.open();
    a.rotate().unwrap();
    let b = db.open();
    let mut escaped = Vec::new();
    for round in 0..60 {
        // A chain, so the walk has depth and the child lands under its deepest member.
        let root = new_token(&a, "alice", None);
        let root_tid = root.tid;
        a.record_token(root).unwrap();
        let mut parent = root_tid;
        for _ in 0..3 {
            let t = new_token(&a, "alice", Some(parent));
            parent = t.tid;
            a.record_token(t).unwrap();
        }
        let child = new_token(&a, "alice", Some(parent));
        let child_tid = child.tid;
        let barrier = Barrier::new(2);
        let recorded = std::thread::scope(|s| {
            let rec = s.spawn(|| {
                barrier.wait();
                b.record_token(child)
            });
            s.spawn(|| {
                barrier.wait();
                a.revoke_token(root_tid).unwrap();
            });
            rec.join().unwrap()
        });
        match recorded {
            Ok(_) => {
                let record = a.token(&child_tid).unwrap().unwrap();
                if record.revoked_at.is_none() {
                    escaped.push(round);
                }
            }
            Err(Error::ParentRevoked(_)) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert!(escaped.is_empty(), "children recorded under a revoked family escaped it in rounds {escaped:?}");
}
