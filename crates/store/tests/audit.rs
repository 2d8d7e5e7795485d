//! The audit trail on both backends (issue 22): every change the store makes has its entry, in
//! its transaction, with the actor and the target; nothing of a rolled-back change; the chain
//! seals every committed entry, verifies, and names the first entry that an edit or a deletion
//! broke; pruning keeps it verifiable; no token text in any entry; refusals never block.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tessera_core::envelope::Algorithm;
use tessera_core::{SessionId, TokenId};
use tessera_store::audit::MAX_PENDING_NOTES;
use tessera_store::{
    Actor, AppRecord, AuditEntry, AuditFilter, AuditHead, AuditKind, AuditNote, AuditVerdict, Error, Outcome,
    Refreshed, SessionRecord, Store, Target,
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

fn session_of(subject: &str) -> SessionRecord {
    SessionRecord {
        subject: subject.into(),
        app: None,
        created: 0,
        alg: "ES256".into(),
        access_ttl: 900,
        refresh_ttl: 3600,
        strategy: "refreshBoth".into(),
        caveats: vec![],
        refresh_caveats: vec![],
        claims: None,
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
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

fn sealed(store: &Store) {
    store.seal_audit().unwrap();
    assert_eq!(store.audit(&AuditFilter::default()).unwrap().iter().filter(|e| e.seq == 0).count(), 0);
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
    assert_eq!((revoke[0].target.tid, revoke[0].detail.as_deref()), (Some(parent.tid), Some("descendants=1")));
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
    assert_eq!((register[0].target.app.as_deref(), register[0].target.tid), (Some("shop"), Some(credential.tid)));
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
    let carol = store.audit(&AuditFilter { subject: Some("carol".into()), ..AuditFilter::default() }).unwrap();
    let kinds: HashSet<_> = carol.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&AuditKind::SessionCreate) && kinds.contains(&AuditKind::SessionReuse), "{kinds:?}");
    let of_parent = store.audit(&AuditFilter { tids: vec![parent.tid], ..AuditFilter::default() }).unwrap();
    assert_eq!(of_parent.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![AuditKind::TokenMint, AuditKind::TokenRevoke]);
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
