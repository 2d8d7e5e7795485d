//! Store behaviour: persistence, rotation, master key, schema, concurrency, bad input, and the
//! store as a core `KeyProvider`.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::path::{Path, PathBuf};

use tessera_core::{Context, Error as CoreError, Identifier, KeyId, Token, TokenId, Verifier};
use tessera_store::{
    Error, KeyState, MasterKey, NewToken, RevocationTarget, Store, MAX_CAVEAT_SUMMARY, MAX_DESCRIPTION,
};

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data/tessera.redb")
}

fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

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

#[test]
fn everything_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tid, revoked_tid, kid) = {
        let store = Store::open(db(&dir), master()).unwrap();
        let k = store.rotate().unwrap();
        let (token, tid) = mint(&store, "alice");
        let (_, revoked_tid) = mint(&store, "alice");
        assert_eq!(store.revoke_token(revoked_tid).unwrap().len(), 1);
        (token, tid, revoked_tid, k.kid)
    };
    let store = Store::open(db(&dir), master()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(db(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the database file is private");
    }
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
}

#[test]
fn rotation_one_signs_retired_verify_revoked_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
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

    // Revoking the retired key kills its tokens and stops records under it.
    let rev = store.revoke_key(k1.kid).unwrap().unwrap();
    assert_eq!(rev.target, RevocationTarget::Key(k1.kid));
    assert_eq!(verify(&store, &t1), Err(CoreError::UnknownKey(k1.kid)));
    assert!(matches!(store.record_token(new_token(k1.kid, "bob")), Err(Error::KeyRevoked(_))));
    assert_eq!(store.revoke_key(k1.kid).unwrap(), None, "revoking twice changes nothing");

    // Revoking the active key leaves nothing to sign with until the next rotation.
    store.revoke_key(k2.kid).unwrap();
    assert!(store.active_key().is_none());
    let k3 = store.rotate().unwrap();
    assert_eq!(store.active_key().unwrap().0, k3.kid);
    drop(store);
    let store = Store::open(db(&dir), master()).unwrap();
    assert_eq!(store.active_key().unwrap().0, k3.kid);
    assert_eq!(verify(&store, &t1), Err(CoreError::UnknownKey(k1.kid)));
}

#[test]
fn imported_secrets_are_checked_and_verify_only_unless_activated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
    assert!(matches!(store.import_key(&[1; 31], true), Err(Error::KeyTooShort(31))));
    assert!(store.list_keys().unwrap().is_empty(), "nothing written");
    let k = store.import_key(&[1; 40], false).unwrap();
    assert_eq!(k.state, KeyState::Retired);
    assert!(store.active_key().is_none());
    assert!(store.verifying_key(&k.kid).is_some());
}

/// Everything the store holds, as text (keys, records, revocations).
fn snapshot(path: &Path) -> String {
    let store = Store::open(path, master()).unwrap();
    format!(
        "{:?}\n{:?}\n{:?}",
        store.list_keys().unwrap(),
        store.tokens_of("alice").unwrap(),
        store.revocations_after(0, 1000).unwrap()
    )
}

#[test]
fn wrong_master_key_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(db(&dir), master()).unwrap();
        store.rotate().unwrap();
        mint(&store, "alice");
    }
    let before = snapshot(&db(&dir));
    let err = Store::open(db(&dir), MasterKey::from_bytes([8; 32])).unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey), "{err}");
    assert!(err.to_string().contains("wrong master key"));
    assert!(snapshot(&db(&dir)) == before, "the wrong key changed stored data");
    let store = Store::open(db(&dir), master()).unwrap();
    assert_eq!(store.tokens_of("alice").unwrap().len(), 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(db(&dir), master()).unwrap());
    {
        let raw = redb::Database::create(db(&dir)).unwrap();
        let txn = raw.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(def).unwrap();
            let mut v = Vec::new();
            ciborium::into_writer(&99u32, &mut v).unwrap();
            meta.insert("schema", v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(db(&dir), master()).unwrap_err();
    assert!(matches!(err, Error::NewerSchema { found: 99, .. }), "{err}");
}

#[test]
fn bad_inputs_are_refused_without_partial_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
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
    let sub = NewToken { subject: "s".repeat(300), ..new_token(k.kid, "alice") };
    assert!(matches!(store.record_token(sub), Err(Error::TooLarge { what: "subject", .. })));

    assert!(matches!(store.revoke_token(TokenId::from_bytes([1; 16])), Err(Error::UnknownToken(_))));
    assert!(matches!(store.revoke_key(unknown), Err(Error::UnknownKey(_))));
    assert!(store.revocations_after(0, 10).unwrap().is_empty(), "refusals log nothing");
    assert_eq!(store.tokens_of("alice").unwrap().len(), 1);
}

#[test]
fn revocation_log_is_ordered_pollable_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
    store.rotate().unwrap();
    let tids: Vec<TokenId> = (0..5).map(|_| mint(&store, "alice").1).collect();
    for tid in &tids {
        assert_eq!(store.revoke_token(*tid).unwrap().len(), 1);
    }
    assert_eq!(store.revoke_token(tids[0]).unwrap(), vec![], "second revocation is a no-op");
    let all = store.revocations_after(0, 100).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    let tail = store.revocations_after(3, 100).unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(store.revocations_after(0, 2).unwrap().len(), 2);
    assert!(store.revocations_after(5, 100).unwrap().is_empty());
}

#[test]
fn revoked_tokens_fail_verification_with_all_attenuations() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
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
}

#[test]
fn concurrent_writers_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
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
    let store = Store::open(db(&dir), master()).unwrap();
    for tid in &tids {
        assert!(store.token(tid).unwrap().is_some());
    }
    assert_eq!(store.revoked_count(), 8);
}

#[test]
fn revoking_a_token_revokes_its_descendants_transitively() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir), master()).unwrap();
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
    // Every one is in the feed, once, with consecutive sequence numbers.
    let feed = store.revocations_after(0, 100).unwrap();
    assert_eq!(feed.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
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
    let store = Store::open(db(&dir), master()).unwrap();
    assert!(store.is_token_revoked(&g));
    assert_eq!(store.token(&c1).unwrap().unwrap().parent, Some(p));
}

#[test]
fn a_version_1_database_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kid, old) = {
        let store = Store::open(db(&dir), master()).unwrap();
        let k = store.rotate().unwrap();
        (k.kid, mint(&store, "alice").1)
    };
    // Make it what version 1 wrote: schema 1 and no children index.
    {
        let raw = redb::Database::create(db(&dir)).unwrap();
        let txn = raw.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(def).unwrap();
            let mut v = Vec::new();
            ciborium::into_writer(&1u32, &mut v).unwrap();
            meta.insert("schema", v.as_slice()).unwrap();
        }
        let children: redb::TableDefinition<([u8; 16], [u8; 16]), ()> =
            redb::TableDefinition::new("token_children");
        assert!(txn.delete_table(children).unwrap());
        txn.commit().unwrap();
    }
    // A wrong master key migrates nothing.
    assert!(matches!(Store::open(db(&dir), MasterKey::from_bytes([8; 32])), Err(Error::WrongMasterKey)));
    let store = Store::open(db(&dir), master()).unwrap();
    assert_eq!(store.token(&old).unwrap().unwrap().parent, None, "old records have no parent");
    let child = TokenId::generate().unwrap();
    store.record_token(NewToken { tid: child, parent: Some(old), ..new_token(kid, "alice") }).unwrap();
    assert_eq!(store.revoke_token(old).unwrap().len(), 2);
}

#[test]
fn a_lost_master_key_file_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data/master.key");
    {
        let (m, created) = MasterKey::for_database(&key, &db(&dir)).unwrap();
        assert!(created);
        Store::open(db(&dir), m).unwrap().rotate().unwrap();
    }
    std::fs::remove_file(&key).unwrap();
    let err = MasterKey::for_database(&key, &db(&dir)).unwrap_err();
    assert!(matches!(err, Error::MissingMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("restore the key file"), "{err}");
    assert!(!key.exists(), "no new key file was written");
}
