//! Revoking a root key, on both backends: the active key is replaced in the same transaction,
//! so concurrent revocations of it (one node's threads, or two nodes) make exactly one new key.
//! (The review of round 3 found three concurrent `POST /v1/keys/{kid}/revoke` rotating twice
//! and naming a retired key as the active one: the handler listed, rotated and revoked in three
//! operations.)

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_store::{KeyState, Store};

fn active(store: &Store) -> Vec<tessera_core::KeyId> {
    store.list_keys().unwrap().into_iter().filter(|k| k.state == KeyState::Active).map(|k| k.kid).collect()
}

on_both!(revoking_the_active_key_replaces_it_once, |db| {
    let a = db.open();
    a.rotate().unwrap();
    // On PostgreSQL a second node revokes too; redb has one process, so two of its threads.
    let b = match &db {
        Db::Postgres(_) => Some(db.open()),
        Db::File(_) => None,
    };
    let old = active(&a)[0];
    let answers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let store = if i % 2 == 1 { b.as_ref().unwrap_or(&a) } else { &a };
                s.spawn(move || store.revoke_key_replacing(old).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let made: Vec<_> = answers.iter().filter_map(|(_, new)| *new).collect();
    assert_eq!(made.len(), 1, "one new active key, not {made:?}");
    assert_eq!(answers.iter().filter(|(entry, _)| entry.is_some()).count(), 1, "one log entry");
    assert!(answers.iter().all(|(entry, new)| entry.is_some() == new.is_some()));
    assert_eq!(active(&a), made, "the new key is the one active key");
    let old_state = a.list_keys().unwrap().into_iter().find(|k| k.kid == old).unwrap().state;
    assert_eq!(old_state, KeyState::Revoked);
    // A key that is not active is revoked without a replacement.
    a.rotate().unwrap();
    let retired = made[0];
    assert_eq!(a.revoke_key_replacing(retired).unwrap().1, None);
    assert_eq!(active(&a).len(), 1);
    // Minting goes on under the active key.
    assert!(a.active_key().is_some());
});
