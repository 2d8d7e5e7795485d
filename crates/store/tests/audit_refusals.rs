//! Identical refusals collapsed (review of issue 22, finding 2), on both backends: within a
//! window the first is written and the rest counted, one summary entry records how many; other
//! addresses are other keys; the map of keys is bounded and a new key past the bound is written
//! uncollapsed, never dropped.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_core::TokenId;
use tessera_store::audit::{MAX_REPEAT_KEYS, REPEAT_WINDOW};
use tessera_store::{
    Actor, AuditEntry, AuditFilter, AuditKind, AuditNote, AuditVerdict, Outcome, Store, Target,
};

fn refusal(address: &str) -> AuditNote {
    AuditNote {
        kind: AuditKind::Refused,
        outcome: Outcome::Refused,
        actor: Actor {
            subject: Some("mallory".into()),
            tid: Some(TokenId::from_bytes([0x66; 16])),
            address: Some(address.into()),
            request_id: Some("req".into()),
            ..Actor::default()
        },
        target: Target::default(),
        reason: Some("the administrator's area".into()),
        detail: Some("op=keys.rotate".into()),
    }
}

/// Every refused entry, once the writer has written what was queued before (a write queued
/// after the notes is answered after them).
fn refused(store: &Store) -> Vec<AuditEntry> {
    store.record_token(new_token(store, "bob", None)).unwrap();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let f = AuditFilter { after, outcome: Some(Outcome::Refused), ..AuditFilter::default() };
        let page = store.audit(&f).unwrap();
        let Some(last) = page.last() else { return out };
        after = last.id;
        out.extend(page);
    }
}

// The finding: each refused call wrote a durable entry (about 140 a second per address within
// the rate limit, kept for the whole retention).
on_both!(a_hundred_identical_refusals_are_two_entries_that_count_a_hundred, |db| {
    let store = db.open();
    store.rotate().unwrap();
    for _ in 0..100 {
        assert!(store.audit_note(refusal("192.0.2.1")));
    }
    assert_eq!(refused(&store).len(), 1, "the first at once, the rest counted while the window runs");
    assert_eq!(store.audit_repeat_keys(), 1);
    // The window is 60 s: the service's housekeeping writes the summary once it ended; closing
    // (the service stopping) writes it now.
    assert_eq!(REPEAT_WINDOW.as_secs(), 60);
    assert_eq!(store.flush_audit_repeats(), 0, "the window still runs");
    assert_eq!(store.close_audit_repeats(), 1);
    let entries = refused(&store);
    assert!(entries.len() <= 2, "{entries:?}");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].detail.as_deref(), Some("op=keys.rotate"));
    assert_eq!(entries[1].detail.as_deref(), Some("repeated=99 total=100 within 60s; op=keys.rotate"));
    assert_eq!(entries[1].actor, refusal("192.0.2.1").actor);
    assert_eq!(entries[1].reason, entries[0].reason);
    assert_eq!(store.audit_repeat_keys(), 0);
    // Ordinary entries of the chain: sealed and verified like any other.
    for _ in 0..3000 {
        store.seal_audit().unwrap();
        if let AuditVerdict::Intact { unsealed: 0, .. } = store.verify_audit(None).unwrap() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("not sealed");
});

on_both!(refusals_from_different_addresses_are_not_merged, |db| {
    let store = db.open();
    store.rotate().unwrap();
    for _ in 0..10 {
        store.audit_note(refusal("192.0.2.1"));
        store.audit_note(refusal("192.0.2.2"));
    }
    // A budget refusal is never collapsed here (once per token and window already).
    let budget = AuditNote { kind: AuditKind::BudgetExhausted, ..refusal("192.0.2.1") };
    store.audit_note(budget.clone());
    store.audit_note(budget);
    store.close_audit_repeats();
    let entries = refused(&store);
    let of = |a: &str, k: AuditKind| -> Vec<Option<String>> {
        entries
            .iter()
            .filter(|e| e.actor.address.as_deref() == Some(a) && e.kind == k)
            .map(|e| e.detail.clone())
            .collect()
    };
    for a in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(
            of(a, AuditKind::Refused),
            vec![
                Some("op=keys.rotate".into()),
                Some("repeated=9 total=10 within 60s; op=keys.rotate".into())
            ],
            "{a}"
        );
    }
    assert_eq!(of("192.0.2.1", AuditKind::BudgetExhausted).len(), 2);
});

on_both!(the_map_of_refusals_is_bounded_and_a_new_key_past_it_is_written, |db| {
    let store = db.open();
    store.rotate().unwrap();
    for i in 0..MAX_REPEAT_KEYS + 20 {
        store.audit_note(refusal(&format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)));
        if i % 1000 == 999 {
            refused(&store); // let the writer keep up: its queue holds 4,096 notes
        }
    }
    assert_eq!(store.audit_repeat_keys(), MAX_REPEAT_KEYS);
    for _ in 0..3 {
        store.audit_note(refusal("192.0.2.200"));
    }
    assert_eq!(store.audit_repeat_keys(), MAX_REPEAT_KEYS);
    let entries = refused(&store);
    assert_eq!(entries.len(), MAX_REPEAT_KEYS + 20 + 3, "every refusal of a key past the bound is written");
    assert_eq!(store.audit_dropped(), 0);
});
