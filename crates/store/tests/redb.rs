//! What only the embedded backend has: a file (private, locked to one process), the schema
//! history of redb (version 1 databases are migrated) and the master key file beside it.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use common::*;
use tessera_core::{Identifier, Token, TokenId};
use tessera_store::{Error, MasterKey, NewToken, Store};

fn mint(store: &Store, subject: &str) -> TokenId {
    let (kid, secret) = store.active_key().unwrap();
    let tid = TokenId::generate().unwrap();
    Token::mint_tessera(None, &secret, &Identifier::new(kid, tid, subject).unwrap()).unwrap();
    store
        .record_token(NewToken {
            tid,
            kid,
            subject: subject.into(),
            description: String::new(),
            expires: None,
            caveats: vec![],
            parent: None,
        })
        .unwrap();
    tid
}

#[test]
fn the_database_file_is_private_and_held_by_one_process() {
    use std::os::unix::fs::PermissionsExt;
    let db = Db::file();
    let store = db.open();
    let mode = std::fs::metadata(db.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the database file is private");
    assert!(matches!(db.open_with(master()), Err(Error::InUse(_))));
    drop(store);
    db.open();
}

fn set_schema(db: &Db, version: u32) {
    let raw = redb::Database::create(db.path()).unwrap();
    let txn = raw.begin_write().unwrap();
    {
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let mut meta = txn.open_table(def).unwrap();
        let mut v = Vec::new();
        ciborium::into_writer(&version, &mut v).unwrap();
        meta.insert("schema", v.as_slice()).unwrap();
    }
    if version == 1 {
        let children: redb::TableDefinition<([u8; 16], [u8; 16]), ()> =
            redb::TableDefinition::new("token_children");
        assert!(txn.delete_table(children).unwrap());
    }
    txn.commit().unwrap();
}

#[test]
fn a_newer_schema_is_refused() {
    let db = Db::file();
    drop(db.open());
    set_schema(&db, 99);
    let err = db.open_with(master()).unwrap_err();
    assert!(matches!(err, Error::NewerSchema { found: 99, .. }), "{err}");
}

#[test]
fn a_version_1_database_is_migrated_at_open() {
    let db = Db::file();
    let (kid, old) = {
        let store = db.open();
        let k = store.rotate().unwrap();
        (k.kid, mint(&store, "alice"))
    };
    // Make it what version 1 wrote: schema 1 and no children index.
    set_schema(&db, 1);
    // A wrong master key migrates nothing.
    assert!(matches!(db.open_with(MasterKey::from_bytes([8; 32])), Err(Error::WrongMasterKey)));
    let store = db.open();
    assert_eq!(store.token(&old).unwrap().unwrap().parent, None, "old records have no parent");
    let child = TokenId::generate().unwrap();
    store
        .record_token(NewToken {
            tid: child,
            kid,
            subject: "alice".into(),
            description: String::new(),
            expires: None,
            caveats: vec![],
            parent: Some(old),
        })
        .unwrap();
    assert_eq!(store.revoke_token(old).unwrap().len(), 2);
}

#[test]
fn a_lost_master_key_file_is_an_error_not_a_new_key() {
    let db = Db::file();
    let key = db.path().with_file_name("master.key");
    {
        let (m, created) = MasterKey::for_database(&key, &db.path()).unwrap();
        assert!(created);
        Store::open(db.path(), m).unwrap().rotate().unwrap();
    }
    std::fs::remove_file(&key).unwrap();
    let err = MasterKey::for_database(&key, &db.path()).unwrap_err();
    assert!(matches!(err, Error::MissingMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("restore the key file"), "{err}");
    assert!(!key.exists(), "no new key file was written");
}
