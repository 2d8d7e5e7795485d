//! The store suite, run against both backends: every case is a `redb` test and a `postgres`
//! test (a throwaway PostgreSQL server per test binary, a fresh database per test). Persistence,
//! rotation, master key, concurrency, bad input, lineage, and the store as a core `KeyProvider`.
//! Backend specifics are in `redb.rs` and `postgres.rs`.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_core::{Context, Error as CoreError, Identifier, KeyId, SignatureMemo, Token, TokenId, Verifier};
use tessera_store::{
    Error, KeyState, MasterKey, NewToken, RevocationTarget, Store, MAX_CAVEAT_SUMMARY, MAX_DESCRIPTION,
};

fn new_token(kid: KeyId, subject: &str) -> NewToken {
    NewToken {
        tid: TokenId::generate().unwrap(),
        kid,
        subject: subject.into(),
        description: format!("token of {subject}"),
        expires: Some(1_900_000_000),
        caveats: vec!["allow read".into()],
        parent: None,
    }
}

fn mint(store: &Store, subject: &str) -> (Token, TokenId) {
    let (kid, secret) = store.active_key().unwrap();
    let tid = TokenId::generate().unwrap();
    let token = Token::mint_tessera(None, &secret, &Identifier::new(kid, tid, subject).unwrap()).unwrap();
    store.record_token(NewToken { tid, ..new_token(kid, subject) }).unwrap();
    (token, tid)
}

fn verify(store: &Store, t: &Token) -> Result<(), CoreError> {
    Verifier::with_keys(store).verify(t, &[], &Context::now()).map(|_| ())
}

/// Everything the store holds, as text (keys, records, revocations).
fn snapshot(db: &Db) -> String {
    let store = db.open();
    format!(
        "{:?}\n{:?}\n{:?}",
        store.list_keys().unwrap(),
        store.tokens_of("alice").unwrap(),
        store.revocations_after(0, 1000).unwrap()
    )
}

on_both!(everything_persists_across_reopen, |db: Db| {
    let (token, tid, revoked_tid, kid) = {
        let store = db.open();
        let k = store.rotate().unwrap();
        let (token, tid) = mint(&store, "alice");
        let (_, revoked_tid) = mint(&store, "alice");
        assert_eq!(store.revoke_token(revoked_tid).unwrap().len(), 1);
        (token, tid, revoked_tid, k.kid)
    };
    let store = db.open();
    assert_eq!(store.active_key().unwrap().0, kid);
    verify(&store, &token).unwrap();
    let records = store.tokens_of("alice").unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(store.token(&tid).unwrap().unwrap().description, "token of alice");
    assert!(store.is_token_revoked(&revoked_tid), "revocation set rebuilt at open");
    assert!(!store.is_token_revoked(&tid));
    assert!(store.token(&revoked_tid).unwrap().unwrap().revoked_at.is_some());
    let log = store.revocations_after(0, 100).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].target, RevocationTarget::Token(revoked_tid));
});

on_both!(rotation_one_signs_retired_verify_revoked_do_not, |db: Db| {
    let store = db.open();
    assert!(store.active_key().is_none());
    let k1 = store.rotate().unwrap();
    let (t1, _) = mint(&store, "alice");
    let k2 = store.rotate().unwrap();
    assert_eq!(store.active_key().unwrap().0, k2.kid);
    let keys = store.list_keys().unwrap();
    let state = |kid| keys.iter().find(|k| k.kid == kid).unwrap().state;
    assert_eq!(state(k1.kid), KeyState::Retired);
    assert_eq!(state(k2.kid), KeyState::Active);
    assert_eq!(keys.iter().filter(|k| k.state == KeyState::Active).count(), 1);
    verify(&store, &t1).unwrap();
    // Remembered by a signature memo (twice: the second is a hit).
    let memo = SignatureMemo::default();
    let text = t1.encode();
    let remembered =
        |s: &Store| Verifier::with_keys(s).memo(&memo).verify_text(&text, &Context::now()).map(|_| ());
    remembered(&store).unwrap();
    remembered(&store).unwrap();
    assert_eq!(memo.len(), 1);

    // Revoking the retired key kills its tokens (remembered ones too) and stops records under it.
    let rev = store.revoke_key(k1.kid).unwrap().unwrap();
    assert_eq!(rev.target, RevocationTarget::Key(k1.kid));
    assert_eq!(verify(&store, &t1), Err(CoreError::UnknownKey(k1.kid)));
    assert_eq!(remembered(&store), Err(CoreError::UnknownKey(k1.kid)));
    assert!(matches!(store.record_token(new_token(k1.kid, "bob")), Err(Error::KeyRevoked(_))));
    assert_eq!(store.revoke_key(k1.kid).unwrap(), None, "revoking twice changes nothing");

    // Revoking the active key leaves nothing to sign with until the next rotation.
    store.revoke_key(k2.kid).unwrap();
    assert!(store.active_key().is_none());
    let k3 = store.rotate().unwrap();
    assert_eq!(store.active_key().unwrap().0, k3.kid);
    drop(store);
    let store = db.open();
    assert_eq!(store.active_key().unwrap().0, k3.kid);
    assert_eq!(verify(&store, &t1), Err(CoreError::UnknownKey(k1.kid)));
});

on_both!(imported_secrets_are_checked_and_verify_only_unless_activated, |db: Db| {
    let store = db.open();
    assert!(matches!(store.import_key(&[1; 31], true), Err(Error::KeyTooShort(31))));
    assert!(store.list_keys().unwrap().is_empty(), "nothing written");
    let k = store.import_key(&[1; 40], false).unwrap();
    assert_eq!(k.state, KeyState::Retired);
    assert!(store.active_key().is_none());
    assert!(store.verifying_key(&k.kid).is_some());
});

on_both!(wrong_master_key_is_refused_and_changes_nothing, |db: Db| {
    {
        let store = db.open();
        store.rotate().unwrap();
        mint(&store, "alice");
    }
    let before = snapshot(&db);
    let err = db.open_with(MasterKey::from_bytes([8; 32])).unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey), "{err}");
    assert!(err.to_string().contains("wrong master key"));
    assert!(snapshot(&db) == before, "the wrong key changed stored data");
    let store = db.open();
    assert_eq!(store.tokens_of("alice").unwrap().len(), 1);
});

on_both!(bad_inputs_are_refused_without_partial_writes, |db: Db| {
    let store = db.open();
    let k = store.rotate().unwrap();
    let unknown = KeyId::from_bytes([9; 8]);
    assert!(matches!(store.record_token(new_token(unknown, "alice")), Err(Error::UnknownKey(_))));

    let first = new_token(k.kid, "alice");
    store.record_token(first.clone()).unwrap();
    let dup = NewToken { subject: "mallory".into(), description: "overwrite".into(), ..first.clone() };
    assert!(matches!(store.record_token(dup), Err(Error::DuplicateToken(_))));
    assert_eq!(store.token(&first.tid).unwrap().unwrap().subject, "alice", "record unchanged");
    assert!(store.tokens_of("mallory").unwrap().is_empty(), "no index entry written");

    let long = NewToken { description: "x".repeat(MAX_DESCRIPTION + 1), ..new_token(k.kid, "alice") };
    let tid = long.tid;
    assert!(matches!(store.record_token(long), Err(Error::TooLarge { what: "description", .. })));
    assert!(store.token(&tid).unwrap().is_none());
    let many = NewToken { caveats: vec!["y".repeat(MAX_CAVEAT_SUMMARY + 1)], ..new_token(k.kid, "alice") };
    assert!(matches!(store.record_token(many), Err(Error::TooLarge { .. })));
    for nul in [
        NewToken { description: "a\0b".into(), ..new_token(k.kid, "alice") },
        NewToken { caveats: vec!["allow a\0b".into()], ..new_token(k.kid, "alice") },
        NewToken { subject: "al\0ice".into(), ..new_token(k.kid, "alice") },
    ] {
        assert!(matches!(store.record_token(nul), Err(Error::NulInText(_))));
    }
    let sub = NewToken { subject: "s".repeat(300), ..new_token(k.kid, "alice") };
    assert!(matches!(store.record_token(sub), Err(Error::TooLarge { what: "subject", .. })));

    assert!(matches!(store.revoke_token(TokenId::from_bytes([1; 16])), Err(Error::UnknownToken(_))));
    assert!(matches!(store.revoke_key(unknown), Err(Error::UnknownKey(_))));
    assert!(store.revocations_after(0, 10).unwrap().is_empty(), "refusals log nothing");
    assert_eq!(store.tokens_of("alice").unwrap().len(), 1);
});

on_both!(revocation_log_is_ordered_pollable_and_idempotent, |db: Db| {
    let store = db.open();
    store.rotate().unwrap();
    let tids: Vec<TokenId> = (0..5).map(|_| mint(&store, "alice").1).collect();
    for tid in &tids {
        assert_eq!(store.revoke_token(*tid).unwrap().len(), 1);
    }
    assert_eq!(store.revoke_token(tids[0]).unwrap(), vec![], "second revocation is a no-op");
    let all = store.revocations_after(0, 100).unwrap();
    // The feed's numbers are the change log's: increasing, here right after the key's entry.
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
    assert_eq!(
        all.iter().map(|r| r.target).collect::<Vec<_>>(),
        tids.iter().map(|t| RevocationTarget::Token(*t)).collect::<Vec<_>>()
    );
    let tail = store.revocations_after(seqs[2], 100).unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[3..].to_vec());
    assert_eq!(store.revocations_after(0, 2).unwrap().len(), 2);
    assert!(store.revocations_after(seqs[4], 100).unwrap().is_empty());
    // A rotation is in the change log but not in the revocation feed.
    store.rotate().unwrap();
    assert!(store.revocations_after(seqs[4], 100).unwrap().is_empty());
    let rev = store.revoke_token(mint(&store, "alice").1).unwrap();
    assert_eq!(store.revocations_after(seqs[4], 100).unwrap(), rev);
});

on_both!(revoked_tokens_fail_verification_with_all_attenuations, |db: Db| {
    let store = db.open();
    store.rotate().unwrap();
    let (token, tid) = mint(&store, "alice");
    let narrow = token.attenuate("allow read").unwrap();
    verify(&store, &narrow).unwrap_err(); // no operation in the context: unmet, not revoked
    let ctx = Context::now().operation("read");
    Verifier::with_keys(&store).verify(&narrow, &[], &ctx).unwrap();
    store.revoke_token(tid).unwrap();
    assert_eq!(verify(&store, &token), Err(CoreError::Revoked));
    let r = Verifier::with_keys(&store).verify(&narrow, &[], &ctx).map(|_| ());
    assert_eq!(r, Err(CoreError::Revoked));
});

on_both!(concurrent_writers_from_many_threads, |db: Db| {
    let store = db.open();
    let kid = store.rotate().unwrap().kid;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut tids = Vec::new();
                for _ in 0..40 {
                    let n = new_token(kid, &format!("user{t}"));
                    tids.push(n.tid);
                    store.record_token(n).unwrap();
                }
                store.revoke_token(tids[0]).unwrap();
                tids
            })
        })
        .collect();
    let tids: Vec<TokenId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(tids.len(), 320);
    for t in 0..8 {
        assert_eq!(store.tokens_of(&format!("user{t}")).unwrap().len(), 40);
    }
    assert_eq!(store.revocations_after(0, 100).unwrap().len(), 8);
    drop(store);
    let store = db.open();
    for tid in &tids {
        assert!(store.token(tid).unwrap().is_some());
    }
    assert_eq!(store.revoked_count(), 8);
});

on_both!(revoking_a_token_revokes_its_descendants_transitively, |db: Db| {
    let store = db.open();
    let k = store.rotate().unwrap();
    let record = |parent: Option<TokenId>| {
        let tid = TokenId::generate().unwrap();
        store.record_token(NewToken { tid, parent, ..new_token(k.kid, "alice") }).unwrap();
        tid
    };
    let p = record(None);
    let c1 = record(Some(p));
    let c2 = record(Some(p));
    let g = record(Some(c1));
    let unrelated = record(None);
    assert_eq!(store.token(&g).unwrap().unwrap().parent, Some(c1));
    let mut children = store.children_of(&p).unwrap();
    children.sort_by_key(|t| *t.as_bytes());
    let mut expected = vec![c1, c2];
    expected.sort_by_key(|t| *t.as_bytes());
    assert_eq!(children, expected);

    let entries = store.revoke_token(p).unwrap();
    let revoked: Vec<RevocationTarget> = entries.iter().map(|e| e.target).collect();
    assert_eq!(revoked.len(), 4);
    assert_eq!(revoked[0], RevocationTarget::Token(p), "the named token first");
    assert_eq!(revoked[3], RevocationTarget::Token(g), "breadth first: the grandchild last");
    for t in [p, c1, c2, g] {
        assert!(store.is_token_revoked(&t));
        assert!(store.token(&t).unwrap().unwrap().revoked_at.is_some());
    }
    assert!(!store.is_token_revoked(&unrelated));
    // Every one is in the feed, once, with consecutive sequence numbers (one operation).
    let feed = store.revocations_after(0, 100).unwrap();
    assert_eq!(feed, entries);
    assert!(feed.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{feed:?}");
    assert_eq!(store.revoke_token(p).unwrap(), vec![]);
    assert_eq!(store.revoke_token(c1).unwrap(), vec![], "descendants were revoked already");

    // Nothing new can be recorded under a revoked parent, nor under an unknown one.
    let orphan = TokenId::generate().unwrap();
    let err = store.record_token(NewToken { tid: orphan, parent: Some(c2), ..new_token(k.kid, "alice") });
    assert!(matches!(err, Err(Error::ParentRevoked(t)) if t == c2));
    assert!(store.token(&orphan).unwrap().is_none());
    let err = store.record_token(NewToken {
        tid: orphan,
        parent: Some(TokenId::from_bytes([9; 16])),
        ..new_token(k.kid, "alice")
    });
    assert!(matches!(err, Err(Error::UnknownToken(_))));
    // Lineage survives a reopen.
    drop(store);
    let store = db.open();
    assert!(store.is_token_revoked(&g));
    assert_eq!(store.token(&c1).unwrap().unwrap().parent, Some(p));
});

on_both!(signing_keys_are_sealed_published_ahead_and_rotated, |db: Db| {
    use tessera_core::envelope::Algorithm;
    use tessera_store::SigningKeyState;
    let store = db.open();
    assert!(store.signing_keys().is_empty());
    assert!(store.ensure_signing_keys(Algorithm::Es256).unwrap());
    assert!(!store.ensure_signing_keys(Algorithm::Es256).unwrap(), "only once");
    assert!(store.ensure_signing_keys(Algorithm::EdDsa).unwrap());
    let keys = store.signing_keys();
    assert_eq!(keys.len(), 4);
    let states = |alg: &str| {
        let mut v: Vec<SigningKeyState> =
            store.signing_keys().iter().filter(|k| k.alg == alg).map(|k| k.state).collect();
        v.sort_by_key(|s| format!("{s:?}"));
        v
    };
    assert_eq!(states("ES256"), vec![SigningKeyState::Active, SigningKeyState::Next]);
    let (active_kid, active) = store.active_signing_key(Algorithm::Es256, None).unwrap();
    assert_eq!(active.public_key().unwrap().thumbprint(), active_kid);
    let next_kid =
        keys.iter().find(|k| k.alg == "ES256" && k.state == SigningKeyState::Next).unwrap().kid.clone();

    // The next key must have been published long enough before it may sign.
    let err =
        store.rotate_signing_key(Algorithm::Es256, std::time::Duration::from_secs(3600), None).unwrap_err();
    assert!(matches!(err, Error::TooEarly { required: 3600, .. }), "{err}");
    assert_eq!(store.active_signing_key(Algorithm::Es256, None).unwrap().0, active_kid, "nothing changed");
    let changed = store.rotate_signing_key(Algorithm::Es256, std::time::Duration::ZERO, None).unwrap();
    assert_eq!(changed.len(), 3);
    assert_eq!(
        store.active_signing_key(Algorithm::Es256, None).unwrap().0,
        next_kid,
        "the published next key signs"
    );
    let old = store.signing_keys().into_iter().find(|k| k.kid == active_kid).unwrap();
    assert_eq!(old.state, SigningKeyState::Retired);
    assert!(old.retired_at.is_some());
    assert!(store.signing_public_key(&active_kid).is_some(), "a retired key still verifies");
    assert_eq!(
        states("EdDSA"),
        vec![SigningKeyState::Active, SigningKeyState::Next],
        "other algorithms untouched"
    );

    // Sealed at rest: after a reopen the same keys sign.
    let before: Vec<_> = store.signing_keys();
    drop(store);
    let store = db.open();
    assert_eq!(store.signing_keys(), before);
    let (kid, key) = store.active_signing_key(Algorithm::Es256, None).unwrap();
    assert_eq!(key.public_key().unwrap().thumbprint(), kid);
});

fn app(name: &str, audience: &str, own_keys: bool, credential: TokenId) -> tessera_store::AppRecord {
    tessera_store::AppRecord {
        name: name.into(),
        audience: audience.into(),
        ttl: 300,
        algorithms: vec!["ES256".into(), "EdDSA".into()],
        own_keys,
        refresh_strategy: None,
        operations: Some(vec!["read".into()]),
        resources: None,
        credential,
        created: 0,
        disabled_at: None,
    }
}

on_both!(applications_are_unique_own_their_keys_and_disable_with_their_credential, |db: Db| {
    use tessera_core::envelope::Algorithm;
    let store = db.open();
    let kid = store.rotate().unwrap().kid;
    store.ensure_signing_keys(Algorithm::Es256).unwrap();
    let service_kid = store.active_signing_key(Algorithm::Es256, None).unwrap().0;
    let register = |name: &str, aud: &str, own: bool| {
        let cred = new_token(kid, &format!("app:{name}"));
        store.register_app(app(name, aud, own, cred.tid), cred)
    };
    let billing = register("billing", "https://billing.example", true).unwrap();
    assert!(billing.created > 0 && billing.disabled_at.is_none());
    assert!(store.token(&billing.credential).unwrap().is_some(), "credential recorded with the app");
    register("reports", "https://reports.example", false).unwrap();

    // Names and audiences are unique; a refused registration writes nothing, not even its
    // credential's record.
    let dup_cred = new_token(kid, "app:billing");
    let dup =
        store.register_app(app("billing", "https://other.example", false, dup_cred.tid), dup_cred.clone());
    assert!(matches!(dup, Err(Error::AppExists(_))), "{dup:?}");
    assert!(store.token(&dup_cred.tid).unwrap().is_none());
    let same_aud = register("billing2", "https://billing.example", false);
    assert!(matches!(same_aud, Err(Error::AppExists(ref m)) if m.contains("billing")), "{same_aud:?}");
    assert_eq!(store.apps().len(), 2);

    // Its own keys: an active and a next per public-key algorithm, owned by it.
    let own: Vec<_> =
        store.signing_keys().into_iter().filter(|k| k.owner.as_deref() == Some("billing")).collect();
    assert_eq!(own.len(), 4, "{own:?}");
    let (billing_kid, _) = store.active_signing_key(Algorithm::Es256, Some("billing")).unwrap();
    assert_ne!(billing_kid, service_kid);
    assert!(store.active_signing_key(Algorithm::Es256, Some("reports")).is_none(), "no keys of its own");

    // Rotating the application's keys leaves the service's alone, and the other way round.
    store.rotate_signing_key(Algorithm::Es256, std::time::Duration::ZERO, Some("billing")).unwrap();
    assert_ne!(store.active_signing_key(Algorithm::Es256, Some("billing")).unwrap().0, billing_kid);
    assert_eq!(store.active_signing_key(Algorithm::Es256, None).unwrap().0, service_kid);
    let billing_now = store.active_signing_key(Algorithm::Es256, Some("billing")).unwrap().0;
    store.rotate_signing_key(Algorithm::Es256, std::time::Duration::ZERO, None).unwrap();
    assert_eq!(store.active_signing_key(Algorithm::Es256, Some("billing")).unwrap().0, billing_now);

    // Disabling revokes the credential; twice changes nothing; unknown names are an error.
    let disabled = store.disable_app("billing").unwrap();
    let at = disabled.disabled_at.unwrap();
    assert!(store.is_token_revoked(&billing.credential));
    assert_eq!(store.disable_app("billing").unwrap().disabled_at, Some(at));
    assert!(matches!(store.disable_app("nobody"), Err(Error::UnknownApp(_))));

    // Durable: after a reopen, the same applications and owners.
    let apps = store.apps();
    drop(store);
    let store = db.open();
    assert_eq!(store.apps(), apps);
    assert_eq!(store.active_signing_key(Algorithm::Es256, Some("billing")).unwrap().0, billing_now);
});

on_both!(single_use_last_use_expiry_and_notices, |db: Db| {
    use tessera_core::RateLimit;
    use tessera_store::Notice;
    let store = db.open();
    let kid = store.rotate().unwrap().kid;
    let once = new_token(kid, "alice");
    store.record_token(once.clone()).unwrap();
    // Exactly one of many concurrent uses wins.
    let wins: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| store.consume(once.tid).unwrap().is_none())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).filter(|w| *w).count()
    });
    assert_eq!(wins, 1);
    let used_at = store.token(&once.tid).unwrap().unwrap().used_at.unwrap();
    assert_eq!(store.consume(once.tid).unwrap(), Some(used_at));
    assert!(matches!(store.consume(TokenId::generate().unwrap()), Err(Error::UnknownToken(_))));

    // Last use: in memory until flushed, never moved back.
    store.note_use(once.tid, 1_800_000_000);
    store.note_use(once.tid, 1_700_000_000);
    assert_eq!(store.token(&once.tid).unwrap().unwrap().last_used, None, "no write before the flush");
    assert_eq!(store.flush_uses().unwrap(), 1);
    assert_eq!(store.flush_uses().unwrap(), 0);
    assert_eq!(store.token(&once.tid).unwrap().unwrap().last_used, Some(1_800_000_000));
    store.note_use(once.tid, 1_750_000_000);
    store.flush_uses().unwrap();
    assert_eq!(store.token(&once.tid).unwrap().unwrap().last_used, Some(1_800_000_000));

    // Expiring and unused tokens.
    let soon = NewToken { expires: Some(1_000), ..new_token(kid, "bob") };
    store.record_token(soon.clone()).unwrap();
    let expiring: Vec<TokenId> = store.tokens_expiring(2_000).unwrap().iter().map(|r| r.tid).collect();
    assert_eq!(expiring, vec![soon.tid]);
    let unused: Vec<TokenId> =
        store.tokens_unused_since(1_800_000_001).unwrap().iter().map(|r| r.tid).collect();
    assert!(unused.contains(&soon.tid) && unused.contains(&once.tid));
    assert!(!store.tokens_unused_since(1_800_000_000).unwrap().iter().any(|r| r.tid == once.tid));

    // A notice is claimed once; its progress is recorded; delivered ones are not due.
    let n = Notice {
        tid: soon.tid,
        threshold: 86_400,
        created: 10,
        delivered_at: None,
        attempts: 0,
        next_attempt: 10,
    };
    assert!(store.claim_notice(n.clone()).unwrap());
    assert!(!store.claim_notice(n.clone()).unwrap(), "claimed once");
    assert_eq!(store.due_notices(10).unwrap(), vec![n.clone()]);
    assert!(store.due_notices(9).unwrap().is_empty());
    store.put_notice(Notice { delivered_at: Some(11), attempts: 1, ..n.clone() }).unwrap();
    assert!(store.due_notices(100).unwrap().is_empty());
    assert_eq!(store.notices_of(&soon.tid).unwrap()[0].delivered_at, Some(11));

    // Rate budgets on one node: exact; windows reset.
    let limit = RateLimit::parse("3/1m").unwrap();
    let d: Vec<bool> = (0..5).map(|_| store.take_rate(once.tid, limit, 600).unwrap().allowed).collect();
    assert_eq!(d, [true, true, true, false, false]);
    let r = store.take_rate(once.tid, limit, 610).unwrap();
    assert_eq!((r.allowed, r.remaining, r.reset), (false, 0, 50));
    assert!(store.take_rate(once.tid, limit, 660).unwrap().allowed, "next window");

    // Links keep their grant.
    let link = new_token(kid, "carol");
    store.record_link(link.clone(), r#"{"issue":"token"}"#.into()).unwrap();
    assert_eq!(store.token(&link.tid).unwrap().unwrap().grant.as_deref(), Some(r#"{"issue":"token"}"#));
    drop(store);
    let store = db.open();
    assert_eq!(store.token(&once.tid).unwrap().unwrap().used_at, Some(used_at), "durable");
});
