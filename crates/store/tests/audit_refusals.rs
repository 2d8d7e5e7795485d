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

/// What `POST /v1/tokens/{tid}/revoke` notes for an id the credential may not revoke: the same
/// reason whatever the id, the id asked for as the target.
fn revoke_refusal(actor_tid: TokenId, target: TokenId, request_id: &str) -> AuditNote {
    AuditNote {
        kind: AuditKind::Refused,
        outcome: Outcome::Refused,
        actor: Actor {
            subject: Some("mallory".into()),
            tid: Some(actor_tid),
            address: Some("198.51.100.7".into()),
            request_id: Some(request_id.into()),
            user_agent: Some("curl/8".into()),
            ..Actor::default()
        },
        target: Target { tid: Some(target), ..Target::default() },
        reason: Some("nothing by this id that this credential may revoke".into()),
        detail: Some("op=tokens.revoke".into()),
    }
}

// Review of the collapsing: a decoy refusal, then attempts on alice's tokens within the window:
// only the decoy's target was written, the summary said "targets differ" and named none, so
// neither a search by her token ids nor by her subject found the attempts. The target is part
// of the key now.
on_both!(attempts_on_a_victims_tokens_are_entries_naming_them, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let mallory = TokenId::generate().unwrap();
    let mut victims = Vec::new();
    for _ in 0..5 {
        let t = new_token(&store, "alice", None);
        victims.push(t.tid);
        store.record_token(t).unwrap();
    }
    assert!(store.audit_note(revoke_refusal(mallory, TokenId::generate().unwrap(), "decoy")));
    for (i, v) in victims.iter().enumerate() {
        assert!(store.audit_note(revoke_refusal(mallory, *v, &format!("attack-{i}"))));
    }
    store.close_audit_repeats();
    refused(&store);
    let by_victim = store
        .audit(&AuditFilter {
            tids: victims.clone(),
            outcome: Some(Outcome::Refused),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(by_victim.len(), 5, "each attempt on one of alice's tokens names it");
    let about_alice = store
        .audit(&AuditFilter {
            subject: Some("alice".into()),
            outcome: Some(Outcome::Refused),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(about_alice.len(), 5, "and is found by her subject");
});

// Review of the collapsing: two callers of one token family behind one address shared a key, so
// the victim's refusals were counted under a summary naming only the other caller's request and
// user agent. The user agent is part of the key now.
on_both!(callers_with_other_user_agents_are_not_merged, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let family = TokenId::generate().unwrap();
    let target = TokenId::generate().unwrap();
    let mut victim = revoke_refusal(family, target, "victim-0");
    victim.actor.user_agent = Some("victim-app/1.0".into());
    let mut attacker = revoke_refusal(family, target, "attacker-1");
    attacker.actor.user_agent = Some("attacker/6.6".into());
    store.audit_note(attacker.clone());
    for i in 0..10 {
        let mut v = victim.clone();
        v.actor.request_id = Some(format!("victim-{i}"));
        store.audit_note(v);
    }
    attacker.actor.request_id = Some("attacker-2".into());
    store.audit_note(attacker);
    store.close_audit_repeats();
    let all = refused(&store);
    let victims: Vec<_> =
        all.iter().filter(|e| e.actor.user_agent.as_deref() == Some("victim-app/1.0")).collect();
    assert_eq!(victims.len(), 2, "the victim's first refusal and its summary: {all:#?}");
    assert!(victims[1].detail.as_deref().unwrap().starts_with("repeated=9 total=10"), "{victims:#?}");
});

// Review of the collapsing: summaries were queued in the notes' 4,096 places, so a flush of many
// windows while the queue was busy dropped their counts. Summaries have places of their own.
on_both!(summaries_are_not_dropped_when_the_notes_queue_is_busy, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let mallory = TokenId::generate().unwrap();
    let targets: Vec<TokenId> = (0..MAX_REPEAT_KEYS).map(|_| TokenId::generate().unwrap()).collect();
    for _round in 0..2 {
        for (i, t) in targets.iter().enumerate() {
            let mut n = revoke_refusal(mallory, *t, "x");
            n.reason = Some(format!("caveat \"junk-{i}\" not met"));
            store.audit_note(n);
        }
    }
    // Other notes arriving at that moment (budget.exhausted is never collapsed).
    for _ in 0..1000 {
        let mut n = revoke_refusal(mallory, TokenId::generate().unwrap(), "y");
        n.kind = AuditKind::BudgetExhausted;
        store.audit_note(n);
    }
    let before = store.audit_dropped();
    let queued = store.close_audit_repeats();
    assert_eq!(queued, MAX_REPEAT_KEYS, "every window's summary queued");
    assert_eq!(store.audit_dropped(), before, "no summary dropped");
});
