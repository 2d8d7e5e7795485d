//! Last uses written by several nodes at once: issue 20 found `40P01: deadlock detected` in the
//! logs of three nodes using the same tokens, because each node's batch locked the token rows in
//! the order of a hash map. Batches are written in one order (by token id), so nodes whose
//! batches overlap wait for each other and never deadlock.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_core::TokenId;
use tessera_store::Store;

fn record(store: &Store, n: usize) -> Vec<TokenId> {
    (0..n).map(|_| store.record_token(new_token(store, "alice", None)).unwrap().tid).collect()
}

#[test]
fn three_nodes_flushing_the_same_tokens_never_deadlock() {
    let db = Db::postgres();
    let nodes: Vec<Store> = (0..3).map(|_| db.open()).collect();
    nodes[0].rotate().unwrap();
    let tids = record(&nodes[0], 64);
    std::thread::scope(|s| {
        for (i, node) in nodes.iter().enumerate() {
            let tids = &tids;
            s.spawn(move || {
                for round in 0..60_i64 {
                    // Every node uses every token; each notes them in its own order.
                    for (k, tid) in tids.iter().enumerate() {
                        node.note_use(*tid, 1_000 + round * 10 + ((k + i) % 7) as i64);
                    }
                    node.flush_uses().expect("a flush of overlapping last uses failed");
                }
            });
        }
    });
    let latest = nodes[0].token(&tids[0]).unwrap().unwrap().last_used.unwrap();
    assert!(latest >= 1_000 + 59 * 10, "{latest}");
}

#[test]
fn a_use_noted_again_by_one_thread_is_noted_once_per_store_and_second() {
    let (da, db) = (Db::file(), Db::file());
    let (a, b) = (da.open(), db.open());
    a.rotate().unwrap();
    let tid = record(&a, 1)[0];
    a.note_use(tid, 1_900_000_000);
    assert_eq!(a.flush_uses().unwrap(), 1);
    // Noted last by this thread and written: not noted again.
    a.note_use(tid, 1_900_000_000);
    assert_eq!(a.flush_uses().unwrap(), 0);
    // Another second is.
    a.note_use(tid, 1_900_000_001);
    assert_eq!(a.flush_uses().unwrap(), 1);
    assert_eq!(a.token(&tid).unwrap().unwrap().last_used, Some(1_900_000_001));
    // So is the same use on another store (the thread's last use names its store).
    b.note_use(tid, 1_900_000_001);
    assert_eq!(b.flush_uses().unwrap(), 1);
    // And another thread notes its own.
    a.note_use(tid, 1_900_000_002);
    std::thread::scope(|s| {
        s.spawn(|| a.note_use(tid, 1_900_000_002));
    });
    assert_eq!(a.flush_uses().unwrap(), 1);
    assert_eq!(a.token(&tid).unwrap().unwrap().last_used, Some(1_900_000_002));
}
