//! The audit trail on both backends (issue 22): every change the store makes has its entry, in
//! its transaction, with the actor and the target; nothing of a rolled-back change; the chain
//! seals every committed entry, verifies, and names the first entry that an edit or a deletion
//! broke; pruning keeps it verifiable; no token text in any entry; refusals never block.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use redb::{ReadableDatabase, ReadableTable};

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tessera_core::envelope::Algorithm;
use tessera_core::{Identifier, RateLimit, SessionId, Token, TokenId};
use tessera_store::audit::MAX_PENDING_NOTES;
use tessera_store::{
    Actor, AppRecord, AuditEntry, AuditFilter, AuditHead, AuditKind, AuditNote, AuditVerdict, Error, Outcome,
    RateTake, Refreshed, Store, Target,
};

fn alice() -> Actor {
    Actor {
        subject: Some("alice".into()),
        tid: Some(TokenId::from_bytes([0xa1; 16])),
        issuer: None,
        address: Some("192.0.2.7".into()),
        request_id: Some("req-1".into()),
        user_agent: Some("test-agent/1.0".into()),
    }
}

fn all(store: &Store) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit(&AuditFilter { after, ..AuditFilter::default() }).unwrap();
        match page.last() {
            Some(last) => after = last.id,
            None => return out,
        }
        out.extend(page);
    }
}

fn app(name: &str, credential: TokenId) -> AppRecord {
    AppRecord {
        name: name.into(),
        audience: format!("https://{name}.example"),
        ttl: 300,
        algorithms: vec!["ES256".into()],
        own_keys: false,
        refresh_strategy: None,
        operations: None,
        resources: None,
        credential,
        created: 0,
        disabled_at: None,
    }
}

/// Seal until every entry is: on PostgreSQL an entry is sealed once no transaction older than its
/// own runs (in the whole server: other tests' too), so this may take more than one round.
fn sealed(store: &Store) {
    for _ in 0..3000 {
        store.seal_audit().unwrap();
        if all(store).iter().all(|e| e.seq > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("entries left unsealed");
}

on_both!(every_change_the_store_makes_is_recorded_with_its_actor_and_target, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let a = store.audited(&alice());
    let parent = new_token(&store, "bob", None);
    a.record_token(parent.clone()).unwrap();
    let child = new_token(&store, "bob", Some(parent.tid));
    a.record_token(child.clone()).unwrap();
    a.revoke_token(parent.tid).unwrap();
    let rotated = a.rotate().unwrap();
    let imported = a.import_key(&[9u8; 32], false).unwrap();
    let (_, replacement) = a.revoke_key_replacing(rotated.kid).unwrap();
    store.ensure_signing_keys(Algorithm::Es256).unwrap();
    a.rotate_signing_key(Algorithm::Es256, Duration::ZERO, None).unwrap();
    let credential = new_token(&store, "app:shop", None);
    a.register_app(app("shop", credential.tid), credential.clone()).unwrap();
    a.disable_app("shop").unwrap();
    let sid = SessionId::generate().unwrap();
    let first = new_token(&store, "carol", None);
    a.create_session(sid, session_of("carol"), first.clone()).unwrap();
    let second = new_token(&store, "carol", None);
    a.refresh_session(sid, first.tid, Some(second.clone()), Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(5)); // past the zero grace window
    assert_eq!(a.refresh_session(sid, first.tid, None, Duration::ZERO).unwrap(), Refreshed::ReuseDetected);
    let sid2 = SessionId::generate().unwrap();
    a.create_session(sid2, session_of("carol"), new_token(&store, "carol", None)).unwrap();
    a.revoke_session(sid2).unwrap();
    let link = new_token(&store, "dave", None);
    a.record_link(link.clone(), "{}".into()).unwrap();
    assert_eq!(a.consume(link.tid).unwrap(), None);
    assert!(a.consume(link.tid).unwrap().is_some(), "a second use changes nothing");
    let once = new_token(&store, "dave", None);
    a.record_token(once.clone()).unwrap();
    assert_eq!(a.consume(once.tid).unwrap(), None); // a `once` token that is no link: no link.redeem
                                                    // The store's own methods record the system.
    let by_system = new_token(&store, "erin", None);
    store.record_token(by_system.clone()).unwrap();

    let entries = all(&store);
    let of = |kind: AuditKind| entries.iter().filter(|e| e.kind == kind).collect::<Vec<_>>();
    for e in entries.iter().filter(|e| e.actor.subject.as_deref() == Some("alice")) {
        assert_eq!(e.actor, alice(), "{e:?}");
        assert_eq!(e.outcome, Outcome::Success);
    }
    let mints = of(AuditKind::TokenMint);
    let minted: Vec<_> = mints.iter().filter(|e| e.actor == alice()).map(|e| e.target.tid.unwrap()).collect();
    assert_eq!(minted, vec![parent.tid, child.tid, once.tid]);
    assert_eq!(mints[1].detail.as_deref(), Some(format!("parent={}", parent.tid).as_str()));
    assert_eq!(mints.last().unwrap().actor, Actor::system());
    assert_eq!(mints.last().unwrap().target.tid, Some(by_system.tid));
    let revoke = of(AuditKind::TokenRevoke);
    assert_eq!(revoke.len(), 1);
    assert_eq!(
        (revoke[0].target.tid, revoke[0].detail.as_deref()),
        (Some(parent.tid), Some("descendants=1"))
    );
    let rotations = of(AuditKind::KeyRotate);
    assert!(rotations.iter().any(|e| e.actor == alice() && e.target.kid == Some(rotated.kid.to_string())));
    assert_eq!(of(AuditKind::KeyImport)[0].target.kid, Some(imported.kid.to_string()));
    let key_revoke = of(AuditKind::KeyRevoke);
    assert_eq!(key_revoke[0].target.kid, Some(rotated.kid.to_string()));
    assert_eq!(key_revoke[0].detail, Some(format!("replacement={}", replacement.unwrap())));
    let signing = of(AuditKind::SigningKeyRotate);
    let active = store.active_signing_key(Algorithm::Es256, None).unwrap().0;
    assert_eq!(signing.last().unwrap().target.kid.as_deref(), Some(active.as_str()));
    assert_eq!(signing.last().unwrap().actor, alice());
    let register = of(AuditKind::AppRegister);
    assert_eq!(
        (register[0].target.app.as_deref(), register[0].target.tid),
        (Some("shop"), Some(credential.tid))
    );
    assert_eq!(of(AuditKind::AppDisable)[0].target.app.as_deref(), Some("shop"));
    let creates = of(AuditKind::SessionCreate);
    assert_eq!((creates[0].target.sid, creates[0].target.tid), (Some(sid), Some(first.tid)));
    let refresh = of(AuditKind::SessionRefresh);
    assert_eq!((refresh[0].target.sid, refresh[0].target.tid), (Some(sid), Some(second.tid)));
    let reuse = of(AuditKind::SessionReuse);
    assert_eq!((reuse.len(), reuse[0].target.sid, reuse[0].target.tid), (1, Some(sid), Some(first.tid)));
    assert_eq!(of(AuditKind::SessionRevoke)[0].target.sid, Some(sid2));
    assert_eq!(of(AuditKind::LinkCreate)[0].target.tid, Some(link.tid));
    let redeem = of(AuditKind::LinkRedeem);
    assert_eq!((redeem.len(), redeem[0].target.tid), (1, Some(link.tid)));

    // Filters: by the subject a target token belongs to, by tid, by kind, by actor.
    let carol =
        store.audit(&AuditFilter { subject: Some("carol".into()), ..AuditFilter::default() }).unwrap();
    let kinds: HashSet<_> = carol.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&AuditKind::SessionCreate) && kinds.contains(&AuditKind::SessionReuse),
        "{kinds:?}"
    );
    let of_parent = store.audit(&AuditFilter { tids: vec![parent.tid], ..AuditFilter::default() }).unwrap();
    assert_eq!(
        of_parent.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![AuditKind::TokenMint, AuditKind::TokenRevoke]
    );
    let by_tid = AuditFilter { actor: Some(alice().tid.unwrap().to_string()), ..AuditFilter::default() };
    let by_subject = AuditFilter { actor: Some("alice".into()), ..AuditFilter::default() };
    assert_eq!(store.audit(&by_tid).unwrap(), store.audit(&by_subject).unwrap());
    let filter = AuditFilter { kind: Some(AuditKind::TokenMint), limit: 2, ..AuditFilter::default() };
    let page = store.audit(&filter).unwrap();
    assert_eq!(page.len(), 2);
    let next = store.audit(&AuditFilter { after: page[1].id, ..filter }).unwrap();
    assert_eq!(next[0].target.tid, Some(once.tid), "the cursor goes on after the page");
    sealed(&store);
    assert!(matches!(store.verify_audit(None).unwrap(), AuditVerdict::Intact { .. }));
});

on_both!(a_change_that_fails_or_changes_nothing_leaves_no_entry, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let a = store.audited(&alice());
    let before = all(&store).len();
    let orphan = new_token(&store, "bob", Some(TokenId::generate().unwrap()));
    assert!(matches!(a.record_token(orphan), Err(Error::UnknownToken(_))));
    let t = new_token(&store, "bob", None);
    a.record_token(t.clone()).unwrap();
    assert!(matches!(a.record_token(t.clone()), Err(Error::DuplicateToken(_))));
    a.revoke_token(t.tid).unwrap();
    assert!(a.revoke_token(t.tid).unwrap().is_empty());
    let late = new_token(&store, "bob", Some(t.tid));
    assert!(matches!(a.record_token(late), Err(Error::ParentRevoked(_))));
    assert!(a.disable_app("nobody").is_err());
    let kinds: Vec<_> = all(&store)[before..].iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![AuditKind::TokenMint, AuditKind::TokenRevoke]);
});

/// `n` tokens recorded by the system; the store's entries sealed.
fn with_entries(db: &Db, n: usize) -> Store {
    let store = db.open();
    store.rotate().unwrap();
    for _ in 0..n {
        store.record_token(new_token(&store, "bob", None)).unwrap();
    }
    sealed(&store);
    store
}

fn intact(store: &Store, pinned: Option<AuditHead>) -> (Option<AuditHead>, u64) {
    match store.verify_audit(pinned).unwrap() {
        AuditVerdict::Intact { head, checked, unsealed, .. } => {
            assert_eq!(unsealed, 0);
            (head, checked)
        }
        broken => panic!("{broken:?}"),
    }
}

fn broken_at(store: &Store, pinned: Option<AuditHead>) -> u64 {
    match store.verify_audit(pinned).unwrap() {
        AuditVerdict::Broken { seq, .. } => seq,
        intact => panic!("not detected: {intact:?}"),
    }
}

/// Change the stored entry at `seq` behind the store's back (its actor `system` → `sysTem`), or
/// delete it. The store must be closed (redb allows one process).
fn tamper(db: &Db, seq: u64, delete: bool) {
    match db {
        Db::Postgres(url) => {
            let sql = if delete {
                format!("DELETE FROM tessera_audit WHERE seq = {seq}")
            } else {
                format!("UPDATE tessera_audit SET actor_subject = 'sysTem' WHERE seq = {seq}")
            };
            pg().sql(url, &sql);
        }
        Db::File(_) => {
            const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
            let file = redb::Database::create(db.path()).unwrap();
            let txn = file.begin_write().unwrap();
            {
                let mut table = txn.open_table(AUDIT).unwrap();
                if delete {
                    assert!(table.remove(seq).unwrap().is_some());
                } else {
                    let mut value = table.get(seq).unwrap().unwrap().value().to_vec();
                    let at = value.windows(6).position(|w| w == b"system").unwrap();
                    value[at + 3] = b'T';
                    table.insert(seq, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
    }
}

on_both!(editing_any_entry_is_detected_and_named, |db| {
    let store = with_entries(&db, 5);
    let (head, checked) = intact(&store, None);
    assert_eq!((head.unwrap().seq, checked), (6, 6)); // the first key's rotation, then 5 mints
    drop(store);
    tamper(&db, 1, false);
    assert_eq!(broken_at(&db.open(), None), 1);
    // Each other place, on a database of its own.
    for seq in [2, 4, 6] {
        let db = match &db {
            Db::File(_) => Db::file(),
            Db::Postgres(_) => Db::postgres(),
        };
        drop(with_entries(&db, 5));
        tamper(&db, seq, false);
        assert_eq!(broken_at(&db.open(), None), seq, "an edit of entry {seq}");
    }
});

on_both!(deleting_a_middle_entry_is_detected, |db| {
    drop(with_entries(&db, 5));
    tamper(&db, 3, true);
    let store = db.open();
    assert_eq!(broken_at(&store, None), 3);
});

on_both!(editing_the_newest_entry_is_detected, |db| {
    drop(with_entries(&db, 5));
    tamper(&db, 6, false);
    let store = db.open();
    assert_eq!(broken_at(&store, None), 6);
});

on_both!(deleting_the_newest_entries_is_caught_against_a_pinned_head, |db| {
    let store = with_entries(&db, 5);
    let pinned = store.audit_head().unwrap().unwrap();
    assert_eq!(pinned.seq, 6);
    assert_eq!(pinned.to_string().parse::<AuditHead>().unwrap(), pinned);
    drop(store);
    tamper(&db, 6, true);
    tamper(&db, 5, true);
    let store = db.open();
    // Without an outside copy the shorter chain is a valid one: what a pinned head is for.
    assert_eq!(intact(&store, None).0.unwrap().seq, 4);
    assert_eq!(broken_at(&store, Some(pinned)), 5);
    // A pin the chain passes through with another link is caught too.
    let forged = AuditHead { seq: 3, mac: [0; 32] };
    assert_eq!(broken_at(&store, Some(forged)), 3);
});

on_both!(pruning_keeps_the_rest_verifiable, |db| {
    let store = with_entries(&db, 3);
    std::thread::sleep(Duration::from_millis(5));
    let cut = store.audit(&AuditFilter::default()).unwrap().last().unwrap().at_ms + 1;
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..3 {
        store.record_token(new_token(&store, "bob", None)).unwrap();
    }
    sealed(&store);
    let pinned = store.audit_head().unwrap().unwrap();
    assert_eq!(store.prune_audit(cut).unwrap(), 4);
    assert_eq!(store.prune_audit(cut).unwrap(), 0, "nothing more to prune");
    match store.verify_audit(Some(pinned)).unwrap() {
        AuditVerdict::Intact { anchor, head, checked, .. } => {
            assert_eq!((anchor.unwrap().seq, head, checked), (4, Some(pinned), 3));
        }
        broken => panic!("{broken:?}"),
    }
    let kept: Vec<u64> = all(&store).iter().map(|e| e.seq).collect();
    assert_eq!(kept, vec![5, 6, 7]);
    // Everything pruned: the head is the anchor, and new entries chain on from it.
    assert_eq!(store.prune_audit(i64::MAX).unwrap(), 3);
    assert_eq!(store.audit_head().unwrap(), Some(pinned));
    store.record_token(new_token(&store, "bob", None)).unwrap();
    sealed(&store);
    assert_eq!(intact(&store, Some(pinned)).0.unwrap().seq, 8);
    drop(store);
    tamper(&db, 8, false);
    assert_eq!(broken_at(&db.open(), None), 8);
});

on_both!(entries_of_concurrent_writers_are_all_sealed_and_chained, |db| {
    let a = db.open();
    a.rotate().unwrap();
    // On PostgreSQL two nodes write and seal at once; redb has one process, so its threads.
    let b = match &db {
        Db::Postgres(_) => db.open(),
        Db::File(_) => a.clone(),
    };
    let writers = 4;
    let per = 25;
    let tids: Vec<TokenId> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|w| {
                let store = if w % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    let actor = Actor { subject: Some(format!("writer-{w}")), ..Actor::default() };
                    (0..per)
                        .map(|i| {
                            let t = new_token(store, "bob", None);
                            store.audited(&actor).record_token(t.clone()).unwrap();
                            if i % 5 == 0 {
                                store.seal_audit().unwrap();
                            }
                            t.tid
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let sealer = s.spawn(|| (0..20).map(|_| b.seal_audit().unwrap()).sum::<usize>());
        let tids = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        sealer.join().unwrap();
        tids
    });
    sealed(&a);
    let entries = all(&a);
    let minted: HashSet<TokenId> =
        entries.iter().filter(|e| e.kind == AuditKind::TokenMint).map(|e| e.target.tid.unwrap()).collect();
    assert_eq!(minted, tids.iter().copied().collect::<HashSet<_>>());
    let mut seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>(), "gap-free, each once");
    let (head, checked) = intact(&a, None);
    assert_eq!((head.unwrap().seq, checked), (entries.len() as u64, entries.len() as u64));
});

on_both!(no_token_text_or_key_in_any_entry, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let (kid, secret) = store.active_key().unwrap();
    let mut texts = Vec::new();
    let a = store.audited(&alice());
    for i in 0..5 {
        let new = new_token(&store, "bob", None);
        let token =
            Token::mint_tessera(None, &secret, &Identifier::new(kid, new.tid, "bob").unwrap()).unwrap();
        texts.push(token.encode());
        a.record_token(new.clone()).unwrap();
        if i % 2 == 0 {
            a.revoke_token(new.tid).unwrap();
        }
    }
    let sid = SessionId::generate().unwrap();
    a.create_session(sid, session_of("bob"), new_token(&store, "bob", None)).unwrap();
    sealed(&store);
    let secret_hex: String = secret.expose_secret().iter().map(|b| format!("{b:02x}")).collect();
    drop(store);
    let dump: Vec<u8> = match &db {
        Db::Postgres(url) => pg().sql(url, "SELECT t::text FROM tessera_audit t").into_bytes(),
        Db::File(_) => {
            const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
            let file = redb::Database::create(db.path()).unwrap();
            let txn = file.begin_read().unwrap();
            let table = txn.open_table(AUDIT).unwrap();
            table.range::<u64>(..).unwrap().flat_map(|r| r.unwrap().1.value().to_vec()).collect()
        }
    };
    assert!(dump.len() > 500, "the dump holds the entries");
    let has = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    for text in &texts {
        assert!(!has(text.as_bytes()) && !has(&text.as_bytes()[..24]), "token text in the audit table");
    }
    assert!(!has(secret_hex.as_bytes()) && !has(secret.expose_secret()), "a root key in the audit table");
});

on_both!(a_refusal_is_noted_without_waiting_and_a_full_queue_counts_instead, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let note = |i: usize| AuditNote {
        kind: AuditKind::Refused,
        outcome: Outcome::Refused,
        actor: alice(),
        target: Target { tid: Some(TokenId::from_bytes([0xb0; 16])), ..Target::default() },
        reason: Some(format!("not allowed {i}")),
        detail: None,
    };
    assert!(store.audit_note(note(0)));
    // A write queued after the note is answered after it: the note is in by then.
    store.record_token(new_token(&store, "bob", None)).unwrap();
    let refused =
        store.audit(&AuditFilter { outcome: Some(Outcome::Refused), ..AuditFilter::default() }).unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].kind, &refused[0].actor, refused[0].reason.as_deref()),
        (AuditKind::Refused, &alice(), Some("not allowed 0"))
    );
    let Db::Postgres(url) = &db else { return };
    // Hold the writer: a transaction elsewhere locks the audit table until told to stop.
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let url2 = url.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut client, conn) = tokio_postgres::connect(&url2, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let txn = client.transaction().await.unwrap();
            txn.batch_execute("LOCK TABLE tessera_audit IN EXCLUSIVE MODE").await.unwrap();
            locked_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || released.recv()).await.unwrap().unwrap();
            txn.rollback().await.unwrap();
        });
    });
    locked.recv().unwrap();
    let calls = 2 * MAX_PENDING_NOTES + 100;
    // Each note differs from the others (and from the first): identical refusals are collapsed.
    let queued = (1..=calls).filter(|i| store.audit_note(note(*i))).count();
    let dropped = calls - queued;
    assert!(dropped >= MAX_PENDING_NOTES, "{dropped} dropped of {calls}");
    assert_eq!(store.audit_dropped(), dropped as u64, "every note not queued is counted");
    release.send(()).unwrap();
    holder.join().unwrap();
    // Every note queued is written, or (on a machine too slow to write them by their deadline)
    // counted with the dropped: none is lost without a count.
    let count = || {
        let mut written = 0;
        let mut after = 0;
        loop {
            let f = AuditFilter { after, outcome: Some(Outcome::Refused), ..AuditFilter::default() };
            let page = store.audit(&f).unwrap();
            let Some(last) = page.last() else { return written };
            after = last.id;
            written += page.len();
        }
    };
    for _ in 0..6000 {
        let missed = store.audit_dropped() as usize - dropped;
        if count() + missed == 1 + queued {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{} written and {} missed of {} queued",
        count(),
        store.audit_dropped() as usize - dropped,
        1 + queued
    );
});

on_both!(a_spent_budget_reports_its_first_refusal_once_per_window, |db| {
    let store = db.open();
    let other = match &db {
        Db::Postgres(_) => db.open(),
        Db::File(_) => store.clone(),
    };
    let now = 86_400 * 20_000 + 100;
    let budget = RateLimit::parse("2/1h").unwrap();
    let family = TokenId::generate().unwrap();
    for _ in 0..2 {
        assert!(matches!(store.take_rates(family, &[budget], now).unwrap(), RateTake::Taken(_)));
    }
    let first = store.take_rates(family, &[budget], now).unwrap();
    assert!(matches!(first, RateTake::Spent(_)) && first.first(), "{first:?}");
    for node in [&store, &other, &store] {
        let again = node.take_rates(family, &[budget], now + 1).unwrap();
        assert!(matches!(again, RateTake::Spent(_)) && !again.first(), "{again:?}");
    }
    // The next window starts over.
    let later = now + 3600;
    for _ in 0..2 {
        assert!(matches!(store.take_rates(family, &[budget], later).unwrap(), RateTake::Taken(_)));
    }
    assert!(store.take_rates(family, &[budget], later).unwrap().first());
    assert!(!store.take_rates(family, &[budget], later).unwrap().first());
});

// Review finding F1: a pin older than the anchor was skipped silently, so deleting the whole
// trail and copying the newest row into the anchor verified as Intact against an old pin. The
// state that raw edit leaves (no entry, the anchor = the newest entry's seq and link) is the one
// pruning everything leaves; on PostgreSQL the raw edit itself is made too.
on_both!(a_pin_older_than_the_anchor_is_not_reported_intact, |db| {
    let store = with_entries(&db, 3);
    let pinned = store.audit_head().unwrap().unwrap();
    for _ in 0..2 {
        store.record_token(new_token(&store, "bob", None)).unwrap();
    }
    sealed(&store);
    let newest = store.audit_head().unwrap().unwrap();
    assert!(newest.seq > pinned.seq);
    match &db {
        Db::Postgres(url) => {
            drop(store);
            let hex = newest.to_string().split_once(':').unwrap().1.to_owned();
            pg().sql(
                url,
                &format!(
                    "DELETE FROM tessera_audit; DELETE FROM tessera_audit_anchor; \
                     INSERT INTO tessera_audit_anchor (one, seq, mac) VALUES (true, {}, '\\x{hex}')",
                    newest.seq
                ),
            );
        }
        Db::File(_) => {
            store.prune_audit(i64::MAX).unwrap();
            drop(store);
        }
    }
    let store = db.open();
    match store.verify_audit(Some(pinned)).unwrap() {
        AuditVerdict::Broken { seq, reason } => {
            assert_eq!(seq, pinned.seq);
            assert!(reason.contains("pruned"), "{reason}");
        }
        intact => panic!("a pin below the anchor verified as {intact:?}"),
    }
});

// Review finding F2: text a caller controls (an unverified issuer or subject, a user agent)
// carried terminal escapes and line breaks into the trail raw.
on_both!(control_characters_in_entry_text_are_replaced, |db| {
    let store = db.open();
    store.rotate().unwrap();
    let evil = "x\n2026-01-01 #1 token.mint ok by admin\x1b[2J\u{7f}\u{9b}31m\r\0";
    let actor = Actor {
        subject: Some(evil.into()),
        tid: None,
        issuer: Some(evil.into()),
        address: Some("192.0.2.9".into()),
        request_id: Some(evil.into()),
        user_agent: Some(evil.into()),
    };
    assert!(store.audit_note(AuditNote {
        kind: AuditKind::ExchangeRefuse,
        outcome: Outcome::Refused,
        actor,
        target: Target { app: Some(evil.into()), kid: Some(evil.into()), ..Target::default() },
        reason: Some(evil.into()),
        detail: Some(evil.into()),
    }));
    store.record_token(new_token(&store, "bob", None)).unwrap();
    let e = store
        .audit(&AuditFilter { outcome: Some(Outcome::Refused), ..AuditFilter::default() })
        .unwrap()
        .pop()
        .unwrap();
    let a = &e.actor;
    for text in [
        &a.subject,
        &a.issuer,
        &a.request_id,
        &a.user_agent,
        &e.target.app,
        &e.target.kid,
        &e.reason,
        &e.detail,
    ] {
        let text = text.as_deref().unwrap();
        assert!(!text.chars().any(char::is_control), "a control character kept: {text:?}");
        assert!(text.contains("token.mint ok by admin"), "the rest kept: {text:?}");
    }
    sealed(&store);
    assert!(matches!(store.verify_audit(None).unwrap(), AuditVerdict::Intact { .. }));
});
